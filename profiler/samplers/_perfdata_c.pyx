# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled record loop of :meth:`profiler.samplers.perfdata.PerfDataReader.feed` (issue 25).

Counts samples (and FINISHED_ROUND records) in C and stops at every other record,
so the Python reader handles mmaps, comms, forks, exits and attributes in stream
order exactly as its pure loop does. A sample's key is the same bytes the pure
loop builds: tid/pid (8 bytes) + the call chain (nr and addresses), plus the
generation (u32 gen, u32 0) for a process that exec'd lately, asked of Python.
Little-endian hosts only (perf writes the host's byte order; the caller checks).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.object cimport PyObject
from cpython.set cimport PySet_Add
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

DEF REC_SAMPLE = 9
DEF REC_FINISHED_ROUND = 68


cdef inline uint32_t _u32(const char* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint64_t _u64(const char* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline bint _has(const char* pids, Py_ssize_t n, uint32_t pid) noexcept nogil:
    """Whether ``pid`` is in the sorted u32 array ``pids`` of ``n`` entries."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    cdef uint32_t v
    while lo < hi:
        mid = (lo + hi) >> 1
        v = _u32(pids + 4 * mid)
        if v == pid:
            return True
        if v < pid:
            lo = mid + 1
        else:
            hi = mid
    return False


def scan(bytes buf, Py_ssize_t off, Py_ssize_t tid_off, Py_ssize_t cc_off, Py_ssize_t time_off,
         object counts, set seen, bytes exec_pids, object gen):
    """Count the samples of ``buf`` from ``off`` into ``counts`` (key -> int) until a record Python must read.

    Returns ``(off, records, rounds, stop)``: ``stop`` is False when no whole record is left at
    ``off``, True when the record at ``off`` is one for Python (not counted in ``records``).
    ``seen`` gets the 4 pid bytes of every key new to ``counts``; ``exec_pids`` is the sorted
    u32 pids whose samples carry a generation, ``gen(pid_bytes, time)`` gives it.
    """
    cdef const char* b = PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef const char* ep = PyBytes_AS_STRING(exec_pids)
    cdef Py_ssize_t nexec = PyBytes_GET_SIZE(exec_pids) // 4
    cdef Py_ssize_t records = 0, rounds = 0, end, klen, chain
    cdef uint32_t typ, size, g
    cdef bint tagged
    cdef char* k
    cdef object key, v
    cdef PyObject* got
    while off + 8 <= n:
        typ = _u32(b + off)
        size = <uint16_t>(_u64(b + off) >> 48)
        if size < 8:
            return off, records, rounds, True  # Python raises for it
        end = off + size
        if end > n:
            break
        if typ == REC_SAMPLE:
            if cc_off < 0 or tid_off + 8 > size or cc_off > size:
                return off, records, rounds, True
            chain = size - cc_off
            tagged = nexec > 0 and time_off > 0 and _has(ep, nexec, _u32(b + off + tid_off))
            if tagged:
                g = gen(PyBytes_FromStringAndSize(b + off + tid_off, 4), _u64(b + off + time_off))
            klen = 8 + chain + (8 if tagged else 0)
            key = PyBytes_FromStringAndSize(NULL, klen)
            k = PyBytes_AS_STRING(key)
            memcpy(k, b + off + tid_off, 8)
            memcpy(k + 8, b + off + cc_off, chain)
            if tagged:
                memcpy(k + 8 + chain, &g, 4)
                g = 0
                memcpy(k + 12 + chain, &g, 4)
            got = PyDict_GetItem(counts, key)
            if got is NULL:
                PyDict_SetItem(counts, key, 1)
                PySet_Add(seen, key[:4])
            else:
                v = <object>got
                PyDict_SetItem(counts, key, v + 1)
        elif typ == REC_FINISHED_ROUND:
            rounds += 1
        else:
            return off, records, rounds, True
        records += 1
        off = end
    return off, records, rounds, False
