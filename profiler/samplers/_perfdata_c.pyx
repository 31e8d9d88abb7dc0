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


DEF CONTEXT_MAX = 18446744073709547521ULL  # 2**64 - 4095: call chain context markers are >= this
DEF CONTEXT_USER = 18446744073709551104ULL  # 2**64 - 512


def name_cached(object counts, dict all_maps, dict gens, dict named, dict rest, dict knames, object unmapped):
    """Name, from the reader's caches alone, every key of ``counts`` whose names are all cached.

    A key is answered by the whole-key cache (``named``: key -> (maps, version, frames, python, gen)),
    else by the chain without its leaf (``rest``: the key without the leaf address -> (maps, version,
    frames, python)) plus its leaf from the address caches (``maps.names`` or ``knames``), when the
    entry was named against the process's current ``_Maps`` at its current version. Returns
    ``(out, slow, hits)``: ``out`` maps (pid, tid, generation or -1, id(prefix), id(leaf)) to
    [count, prefix frames, leaf frame or None, python]; ``slow`` the keys (with counts) Python must
    name; ``hits`` the keys the whole-key cache answered.
    """
    cdef dict out = {}
    cdef dict slow = {}
    cdef Py_ssize_t hits = 0, klen, nr, g
    cdef const char* k
    cdef uint32_t pid_u, tid_u
    cdef uint64_t ip0, ip1
    cdef object key, count, pid, tid, maps, glist, entry, hit, got, lg, leaf, prefix, py, okey, rk, names
    cdef list acc
    cdef PyObject* p
    cdef bytes kb
    for key, count in counts.items():
        kb = <bytes>key
        k = PyBytes_AS_STRING(kb)
        klen = PyBytes_GET_SIZE(kb)
        if klen < 32:
            slow[key] = count
            continue
        nr = <Py_ssize_t>_u64(k + 8)
        if nr < 2 or nr > (klen - 16) // 8:
            slow[key] = count
            continue
        pid_u = _u32(k)
        tid_u = _u32(k + 4)
        pid = pid_u
        maps = None
        g = -1
        if klen > 16 + 8 * nr:  # a generation: which program of a process that exec'd lately
            if klen != 24 + 8 * nr:
                slow[key] = count
                continue
            g = <Py_ssize_t>_u32(k + 16 + 8 * nr) - 1
            p = PyDict_GetItem(gens, pid)
            if p is not NULL:
                glist = <object>p
                if g < 0:
                    slow[key] = count
                    continue
                if g < len(glist):
                    entry = glist[g]
                    maps = entry[1]
                else:
                    g = -1
            else:
                g = -1
        if maps is None:
            p = PyDict_GetItem(all_maps, pid)
            if p is NULL:
                slow[key] = count
                continue
            maps = <object>p
        p = PyDict_GetItem(named, key)
        leaf = None
        if p is not NULL:
            hit = <object>p
            if hit[0] is maps and hit[1] == maps.version:
                hits += 1
                prefix, py = hit[2], hit[3]
            else:
                p = NULL
        if p is NULL:
            ip0 = _u64(k + 16)
            ip1 = _u64(k + 24)
            if ip0 < CONTEXT_MAX or ip1 >= CONTEXT_MAX:
                slow[key] = count
                continue
            rk = kb[:24] + kb[32:]
            p = PyDict_GetItem(rest, rk)
            if p is NULL:
                slow[key] = count
                continue
            got = <object>p
            if got[0] is not maps or got[1] != maps.version:
                slow[key] = count
                continue
            if ip0 == CONTEXT_USER:
                names = maps.names
                p = PyDict_GetItem(names, ip1)
                if p is NULL:
                    slow[key] = count
                    continue
                lg = <object>p
                if lg is unmapped:
                    slow[key] = count
                    continue
                leaf = lg[0]
                py = got[3] or lg[1]
            else:
                p = PyDict_GetItem(knames, ip1)
                if p is NULL:
                    slow[key] = count
                    continue
                leaf = <object>p
                py = got[3]
            prefix = got[2]
        tid = tid_u
        okey = (pid, tid, g, id(prefix), id(leaf))
        p = PyDict_GetItem(out, okey)
        if p is NULL:
            out[okey] = [count, prefix, leaf, py]
        else:
            acc = <list>p
            acc[0] = acc[0] + count
    return out, slow, hits
