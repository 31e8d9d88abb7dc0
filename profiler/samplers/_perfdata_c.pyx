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
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.long cimport PyLong_AsSsize_t, PyLong_AsUnsignedLong
from cpython.set cimport PySet_Add
from cpython.unicode cimport PyUnicode_DecodeUTF8, PyUnicode_Tailmatch
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM, PyTuple_GET_ITEM
from cpython cimport array


cdef extern from "Python.h":
    void _incref "Py_INCREF"(PyObject*)
    void _decref "Py_DECREF"(PyObject*)

DEF REC_SAMPLE = 9
DEF REC_FINISHED_ROUND = 68
DEF REC_MMAP = 1
DEF REC_EXIT = 4
DEF REC_FORK = 7
DEF REC_MMAP2 = 10
DEF MISC_MMAP_BUILD_ID = 16384  # 1 << 14
DEF PROT_EXEC = 4


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


cdef uint32_t _generation(dict gens, uint32_t pid, uint64_t t, object gen, const char* pidb) except? 0:
    """``PerfDataReader._gen``: 1 + the last program of ``pid`` started at or before ``t``."""
    cdef PyObject* p = PyDict_GetItem(gens, pid)
    if p is NULL:
        return gen(PyBytes_FromStringAndSize(pidb, 4), t)  # Python says what is wrong
    cdef list programs = <list>p
    cdef Py_ssize_t i = len(programs) - 1
    while i > 0 and <uint64_t>PyLong_AsUnsignedLong(programs[i][0]) > t:
        i -= 1
    return <uint32_t>(i + 1)


cdef object _cstr(const char* b, Py_ssize_t start, Py_ssize_t end):
    """perfdata._cstr: the text up to the first NUL in [start, end), decoded as perf's paths are."""
    if start >= end:
        return ""
    cdef const char* z = <const char*>memchr(b + start, 0, end - start)
    return PyUnicode_DecodeUTF8(b + start, (z - (b + start)) if z is not NULL else end - start, "replace")


cdef int _mmap(const char* b, Py_ssize_t n, Py_ssize_t off, Py_ssize_t end, uint32_t typ, uint32_t misc,
               dict all_maps, set shared, object maps_cls, Py_ssize_t now) except -1:
    """``PerfDataReader._mmap`` + ``_Maps.add`` in C: an executable mapping into its process's rows.

    The caller checked the record holds its fixed fields (MMAP2: 72 bytes, MMAP: 40)."""
    cdef uint32_t pid_u = _u32(b + off + 8)
    if pid_u == 0xFFFFFFFF:  # the kernel's own maps: kallsyms names them
        return 0
    cdef object key, path
    cdef Py_ssize_t size
    cdef uint64_t ino = 1
    if typ == REC_MMAP2:
        if not _u32(b + off + 64) & PROT_EXEC:
            return 0
        if misc & MISC_MMAP_BUILD_ID:
            size = <uint8_t>b[off + 40]
            if off + 44 + size > n:  # as Python's slice: never past the buffer
                size = n - off - 44
            key = PyBytes_FromStringAndSize(b + off + 44, size)
        else:
            ino = _u64(b + off + 48)
            key = (_u32(b + off + 40), _u32(b + off + 44), ino)
        path = _cstr(b, off + 72, end)
    else:
        path = _cstr(b, off + 40, end)
        key = path
    if ino == 0:
        key = path
    cdef object pid = pid_u
    cdef PyObject* p = PyDict_GetItem(all_maps, pid)
    if p is NULL:
        maps = maps_cls(now)
        all_maps[pid] = maps
    elif pid in shared:
        shared.discard(pid)
        maps = (<object>p).copy(now)
        all_maps[pid] = maps
    else:
        maps = <object>p
    # _Maps.add: an mmap over old ones replaces them
    cdef object start = _u64(b + off + 16)
    cdef object stop = start + _u64(b + off + 24)
    cdef uint64_t a = _u64(b + off + 16)
    cdef list starts = maps.starts
    cdef list rows = maps.rows
    cdef Py_ssize_t lo = 0, hi = len(starts), mid, j
    while lo < hi:  # bisect_left
        mid = (lo + hi) >> 1
        if <uint64_t>PyLong_AsUnsignedLong(starts[mid]) < a:
            lo = mid + 1
        else:
            hi = mid
    j = lo
    while j < len(rows) and (<tuple>rows[j])[0] < stop:
        j += 1
    if lo > 0 and (<tuple>rows[lo - 1])[1] > start:
        lo -= 1
    starts[lo:j] = [start]
    rows[lo:j] = [(start, stop, _u64(b + off + 32), path, key)]
    (<dict>maps.names).clear()
    maps.version = maps.version + 1
    maps.changed = now
    return 0


cdef int _fork(const char* b, Py_ssize_t off, dict comms, dict all_maps, set shared, object maps_cls,
               Py_ssize_t now) except -1:
    """``PerfDataReader._fork`` in C: the thread's comm from its parent; a new process shares its parent's maps."""
    cdef object pid = _u32(b + off + 8), ppid = _u32(b + off + 12), tid = _u32(b + off + 16)
    cdef PyObject* p = PyDict_GetItem(comms, <object>_u32(b + off + 20))
    if p is not NULL:
        comms[tid] = <object>p
    if pid != ppid and pid == tid:  # a copy of its parent: shared until it maps something
        p = PyDict_GetItem(all_maps, ppid)
        if p is NULL:
            all_maps[pid] = maps_cls(now)
        else:
            all_maps[pid] = <object>p
            shared.add(pid)
    return 0


def scan(bytes buf, Py_ssize_t off, Py_ssize_t tid_off, Py_ssize_t cc_off, Py_ssize_t time_off,
         object counts, set seen, bytes exec_pids, dict gens, object gen, object side, Py_ssize_t round_base,
         dict all_maps, set shared, object maps_cls, dict comms, list exited, object feeds):
    """Count the samples of ``buf`` from ``off`` into ``counts`` (key -> int) until a record Python must read.

    Returns ``(off, records, rounds, stop)``: ``stop`` is False when no whole record is left at
    ``off``, True when the record at ``off`` is one for Python (not counted in ``records``).
    ``seen`` gets the 4 pid bytes of every key new to ``counts``; ``exec_pids`` is the sorted
    u32 pids whose samples carry a generation, read from ``gens`` (pid -> [(since, maps, comm)]) as
    ``gen(pid_bytes, time)`` (Python's ``_gen``) gives it. MMAP, MMAP2, FORK and EXIT records, which change
    nothing this loop reads, are read here as Python's ``_mmap``, ``_fork`` and ``_record`` read them, in
    stream order: mappings into ``all_maps`` (pid -> ``maps_cls`` rows; a pid in ``shared`` copied first),
    comms of forked threads into ``comms``, an exiting process's maps appended to ``exited`` as ``(feeds,
    pid, maps)``; ``round_base`` + the rounds counted before a record is its round (``_Maps.changed``).
    One too short for its fields is handed to ``side(buf, off, end, type, misc, counts, seen, now)``
    (Python's ``_record``, ``now`` its round); at any other record the loop stops.
    """
    cdef const char* b = PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef const char* ep = PyBytes_AS_STRING(exec_pids)
    cdef Py_ssize_t nexec = PyBytes_GET_SIZE(exec_pids) // 4
    cdef Py_ssize_t records = 0, rounds = 0, end, klen, chain
    cdef uint32_t typ, size, g
    cdef bint tagged
    cdef char* k
    cdef object key, v, pid
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
                g = _generation(gens, _u32(b + off + tid_off), _u64(b + off + time_off), gen, b + off + tid_off)
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
        elif (typ == REC_MMAP2 and size >= 72) or (typ == REC_MMAP and size >= 40):
            _mmap(b, n, off, end, typ, <uint16_t>(_u32(b + off + 4) & 0xFFFF), all_maps, shared, maps_cls,
                  round_base + rounds)
        elif typ == REC_FORK and size >= 24:
            _fork(b, off, comms, all_maps, shared, maps_cls, round_base + rounds)
        elif typ == REC_EXIT and size >= 24:
            if _u32(b + off + 8) == _u32(b + off + 16):  # the process, not one of its threads
                pid = _u32(b + off + 8)
                got = PyDict_GetItem(all_maps, pid)
                if got is not NULL:
                    exited.append((feeds, pid, <object>got))
        elif typ == REC_MMAP2 or typ == REC_MMAP or typ == REC_FORK or typ == REC_EXIT:
            side(buf, off, end, typ, <uint16_t>(_u32(b + off + 4) & 0xFFFF), counts, seen, round_base + rounds)
        else:
            return off, records, rounds, True
        records += 1
        off = end
    return off, records, rounds, False


DEF CONTEXT_MAX = 18446744073709547521ULL  # 2**64 - 4095: call chain context markers are >= this
DEF CONTEXT_USER = 18446744073709551104ULL  # 2**64 - 512


cdef struct _Slot:
    # an address of a process: (its address space's serial, address, its version);
    # a kernel address: (0, address, 0); an offset in a file: (FILE_TAG | major << 32 | minor, inode, offset)
    uint64_t k1
    uint64_t k2
    uint64_t k3
    PyObject* v  # a strong reference: the (Frame, runs_python) tuple, or the kernel's Frame


DEF FILE_TAG = 0x8000000000000000ULL


cdef inline uint64_t _mix(uint64_t a, uint64_t b, uint64_t c) noexcept nogil:
    cdef uint64_t h = (a * 0x9E3779B97F4A7C15ULL) ^ (b * 0xC2B2AE3D27D4EB4FULL) ^ (c * 0x165667B19E3779F9ULL)
    h ^= h >> 31
    h *= 0xD6E8FEB86659FD93ULL
    h ^= h >> 29
    return h


cdef class AddrCache:
    """The reader's names in one C table (issue 25): a process's address (its address space's serial and
    version), a kernel address, or an offset in a file (device and inode) -> the name its caches
    (``maps.names``, ``knames``, ``file_names``) gave it. A chain whose every address is here, or in a
    mapped file seen before by any process, is named without a Python object per address (``name_all``).
    Entries are never stale: a new mmap bumps the version, a new address space has a new serial, a file's
    names are settled. Full at half its slots, it takes nothing more until ``trim`` (between batches)
    empties it."""
    cdef _Slot* slots
    cdef Py_ssize_t cap, limit
    cdef public Py_ssize_t n

    def __cinit__(self, int bits=16):
        self.cap = (<Py_ssize_t>1) << bits
        self.limit = self.cap // 2
        self.slots = <_Slot*>calloc(self.cap, sizeof(_Slot))
        if self.slots is NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.slots is not NULL:
            self._empty()
            free(self.slots)

    cdef void _empty(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self.cap):
            if self.slots[i].v is not NULL:
                _decref(self.slots[i].v)
                self.slots[i].v = NULL
        self.n = 0

    def trim(self):
        """Empty the table if it is full (called between batches, when no borrowed entry is in use)."""
        if self.n >= self.limit:
            self._empty()

    def __len__(self):
        return self.n

    cdef inline PyObject* get(self, uint64_t k1, uint64_t k2, uint64_t k3) noexcept:
        cdef Py_ssize_t mask = self.cap - 1
        cdef Py_ssize_t i = <Py_ssize_t>(_mix(k1, k2, k3) & <uint64_t>mask)
        cdef _Slot* s
        while True:
            s = &self.slots[i]
            if s.v is NULL:
                return NULL
            if s.k1 == k1 and s.k2 == k2 and s.k3 == k3:
                return s.v
            i = (i + 1) & mask

    cdef inline void put(self, uint64_t k1, uint64_t k2, uint64_t k3, PyObject* v) noexcept:
        if self.n >= self.limit:
            return
        cdef Py_ssize_t mask = self.cap - 1
        cdef Py_ssize_t i = <Py_ssize_t>(_mix(k1, k2, k3) & <uint64_t>mask)
        while self.slots[i].v is not NULL:
            if self.slots[i].k1 == k1 and self.slots[i].k2 == k2 and self.slots[i].k3 == k3:
                return
            i = (i + 1) & mask
        _incref(v)
        self.slots[i].k1 = k1
        self.slots[i].k2 = k2
        self.slots[i].k3 = k3
        self.slots[i].v = v
        self.n += 1


DEF FAST_MAX = 512  # a longer chain is named the slow way


cdef class _Namer:
    """One call's state: the reader's caches and its ways back into Python for names not cached."""
    cdef dict knames, file_names, tables
    cdef Py_ssize_t file_names_max
    cdef object unmapped, user_miss, kernel_miss, jit_lookup, jit_clock, now
    cdef dict jit_absent  # JitMaps.absent: pid -> clock time until which it has no perf map
    cdef Py_ssize_t addr_max
    cdef public Py_ssize_t unmapped_n  # user addresses named "[unknown]"
    cdef bint saw_unmapped, saw_unsettled  # of the chain being named
    cdef bint saw_unmapped_leaf  # its user leaf (where the task was interrupted) is in no mapping
    cdef bint no_row  # the last address from_file looked up is in no mapping
    cdef bint fast_py  # of the chain ``fast`` named last: whether CPython runs in it
    cdef Py_ssize_t fast_unmapped  # and how many of its user addresses are "[unknown]"

    cdef Py_ssize_t fast(self, AddrCache ac, object pid, object maps, dict names, const char* ips, Py_ssize_t n,
                         PyObject** fr, bint may_hold) except -4:
        """The frames of ``n`` addresses (leaf first, markers included) from the caches alone, as
        ``chain`` names them, into ``fr`` (borrowed, leaf first): how many; -1 when one needs the
        slow path (no cached name and none from the file's), -3 when the user leaf is "[unknown]" and the
        key is to be held (``may_hold``: as the slow path holds it)."""
        cdef uint64_t k1 = PyLong_AsUnsignedLong(maps.serial)  # from 1: never a kernel's or a file's key
        cdef uint64_t k3 = PyLong_AsUnsignedLong(maps.version)
        cdef bint user = False, leaf = True
        cdef Py_ssize_t i, m = 0
        cdef uint64_t ip, a
        cdef PyObject* v
        cdef object addr, got
        self.fast_py = False
        self.fast_unmapped = 0
        for i in range(n):
            ip = _u64(ips + 8 * i)
            if ip >= CONTEXT_MAX:
                user = ip == CONTEXT_USER
                leaf = True
                continue
            if not user:
                v = ac.get(0, ip, 0)
                if v is NULL:
                    v = PyDict_GetItem(self.knames, ip)
                    if v is NULL:
                        return -1
                    ac.put(0, ip, 0, v)
                fr[m] = v
            else:
                a = ip if leaf else ip - 1
                v = ac.get(k1, a, k3)
                if v is NULL:
                    # ``names`` only where the file's names (or no mapping and no JIT map) do not answer:
                    # for those it holds what they give (as ``user`` names it)
                    got = self.from_file(maps, None, a, None, ac)
                    if got is None:
                        if self.no_row and self.no_jit_map(pid):
                            got = self.unmapped
                        else:  # a JIT name, a mapping named by its path ([vdso]): as Python named it before
                            v = PyDict_GetItem(names, a)
                            if v is NULL:
                                return -1  # not yet: the slow path asks Python
                            got = <object>v
                    v = <PyObject*>got
                    ac.put(k1, a, k3, v)
                if v == <PyObject*>self.unmapped:
                    if may_hold and leaf:
                        return -3  # held by the caller, as the slow path would hold it
                    self.fast_unmapped += 1
                elif <object>PyTuple_GET_ITEM(<object>v, 1):
                    self.fast_py = True
                fr[m] = PyTuple_GET_ITEM(<object>v, 0)
            m += 1
            leaf = False
        return m

    cdef object user(self, object pid, object maps, dict names, uint64_t a):
        """``(Frame, runs_python)`` of user address ``a``: the process's names, else its mapping's
        file and offset, else Python (``user_miss``: JIT maps, files read, "[unknown]")."""
        cdef object addr = a
        cdef PyObject* p = PyDict_GetItem(names, addr)
        if p is not NULL:
            got = <object>p
        else:
            got = self.from_file(maps, names, a, addr)
            if got is None and self.no_row and (self.no_jit_map(pid) or not self.jit_lookup(pid, addr)):
                # in no mapping and no JIT map (often a frame-pointer walk through a binary built
                # without them): "[unknown]" for good, as Python names it, without calling it
                got = self.unmapped
                if len(names) <= self.addr_max:
                    names[addr] = got
            if got is None:
                got, settled = self.user_miss(pid, maps, addr)
                if not settled:
                    self.saw_unsettled = True
        if got is self.unmapped:
            self.saw_unmapped = True
            self.unmapped_n += 1
        return got

    cdef bint no_jit_map(self, object pid) except -1:
        """Whether ``pid`` is known to have no perf map now: ``jit_lookup`` would answer None without
        looking (it re-checks a missing map only every few seconds), so it is not called."""
        cdef PyObject* p = PyDict_GetItem(self.jit_absent, pid)
        if p is NULL:
            return False
        if self.now is None:  # read once per call of name_all: a batch is named at one moment
            self.now = self.jit_clock()
        return self.now < <object>p

    cdef object from_file(self, object maps, dict names, uint64_t a, object addr, AddrCache ac=None):
        """The name of ``a`` in its mapping's file from ``file_names`` (None: in no mapping (``no_row``),
        not a plain file, or not named yet), kept in ``names`` (if given) and under the file's device,
        inode and offset in ``ac`` (if given)."""
        cdef list starts = maps.starts
        cdef Py_ssize_t lo = 0, hi = len(starts), mid
        self.no_row = True
        while lo < hi:  # bisect_right
            mid = (lo + hi) >> 1
            if a < <uint64_t>PyLong_AsUnsignedLong(starts[mid]):
                hi = mid
            else:
                lo = mid + 1
        if lo == 0:
            return None
        cdef tuple row = maps.rows[lo - 1]
        cdef uint64_t start = PyLong_AsUnsignedLong(row[0])
        if a >= <uint64_t>PyLong_AsUnsignedLong(row[1]):
            return None
        self.no_row = False
        path = row[3]
        if PyUnicode_Tailmatch(path, "/", 0, PY_SSIZE_T_MAX, -1) != 1 or \
                PyUnicode_Tailmatch(path, "/memfd:", 0, PY_SSIZE_T_MAX, -1) == 1:
            return None  # named by the JIT maps or by its path: Python
        cdef uint64_t off = a - start + <uint64_t>PyLong_AsUnsignedLong(row[2])
        cdef object fk = row[4]
        cdef uint64_t f1 = 0, f2 = 0
        cdef PyObject* p = NULL
        if ac is not None and type(fk) is tuple and len(<tuple>fk) == 3:  # (major, minor, inode)
            f1 = <uint64_t>PyLong_AsUnsignedLong((<tuple>fk)[0])
            if f1 < 0x80000000ULL:
                f1 = FILE_TAG | (f1 << 32) | (<uint64_t>PyLong_AsUnsignedLong((<tuple>fk)[1]) & 0xFFFFFFFFULL)
                f2 = <uint64_t>PyLong_AsUnsignedLong((<tuple>fk)[2])
                p = ac.get(f1, f2, off)
            else:
                f1 = 0
        if p is NULL:
            p = PyDict_GetItem(self.file_names, (fk, off))
            if p is NULL:
                p = self.by_function(fk, off)
                if p is NULL:
                    return None
            if f1:
                ac.put(f1, f2, off, p)
        got = <object>p
        if names is not None and len(names) <= self.addr_max:
            names[addr] = got
        return got

    cdef PyObject* by_function(self, object fk, uint64_t off) except? NULL:
        """A new offset of a file whose table is read: the name of its function if one of its offsets was
        named before (``SymbolTable.frames``, as ``_file_frame`` finds it), kept in ``file_names``; else NULL."""
        cdef PyObject* p = PyDict_GetItem(self.tables, fk)
        if p is NULL or <object>p is None:
            return NULL
        table = <object>p
        cdef array.array starts = table.starts, ends = table.ends
        cdef Py_ssize_t i = -1, lo = 0, hi = len(starts), mid
        cdef uint64_t v = 0, so, size
        cdef bint found = False
        for seg in table.segments:  # SymbolTable.vaddr
            so = PyLong_AsUnsignedLong((<tuple>seg)[0])
            size = PyLong_AsUnsignedLong((<tuple>seg)[1])
            if so <= off < so + size:
                v = off - so + PyLong_AsUnsignedLong((<tuple>seg)[2])
                found = True
                break
        if found:  # SymbolTable.index: bisect_right
            while lo < hi:
                mid = (lo + hi) >> 1
                if v < starts.data.as_ulonglongs[mid]:
                    hi = mid
                else:
                    lo = mid + 1
            i = lo - 1
            if i >= 0 and v >= ends.data.as_ulonglongs[i]:
                i = -1
        p = PyDict_GetItem(<dict>table.frames, i)
        if p is NULL:
            return NULL
        if len(self.file_names) < self.file_names_max:
            self.file_names[(fk, off)] = <object>p
        return p

    cdef object kernel(self, uint64_t ip):
        cdef object addr = ip
        cdef PyObject* p = PyDict_GetItem(self.knames, addr)
        if p is not NULL:
            return <object>p
        return self.kernel_miss(addr)

    cdef tuple chain(self, object pid, const char* ips, Py_ssize_t n, bint user, bint leaf, object maps):
        """``(frames root first, runs_python)`` of ``n`` addresses (context markers included, leaf first)
        as ``PerfDataReader._frames`` names them: ``user``/``leaf`` are the state its first marker
        left (a chain's start: False/True; without its first marker and leaf: that marker's/False)."""
        cdef list frames = []
        cdef dict names = maps.names
        cdef bint python = False
        cdef Py_ssize_t i
        cdef uint64_t ip
        for i in range(n):
            ip = _u64(ips + 8 * i)
            if ip >= CONTEXT_MAX:
                user = ip == CONTEXT_USER
                leaf = True  # the first user address after a marker is where the task was interrupted
                continue
            if not user:
                frames.append(self.kernel(ip))
            else:
                got = self.user(pid, maps, names, ip if leaf else ip - 1)
                if leaf and got is self.unmapped:
                    self.saw_unmapped_leaf = True
                frames.append(got[0])
                if got[1]:
                    python = True
            leaf = False
        frames.reverse()
        return tuple(frames), python


cdef struct _Group:
    uint64_t h
    uint32_t pid, tid
    Py_ssize_t g, m, off, count
    bint py


cdef class _Groups:
    """The samples ``name_all`` named from the address cache, summed per (pid, tid, generation, frames) in C:
    a key's frames are compared as the pointers of their Frame objects (one object per distinct frame), so a
    key costs no bytes, dict entry or list of its own, only a hash of its pointers. Groups keep their first
    key's order; each holds a reference to its frames until it is emitted."""
    cdef _Group* groups
    cdef Py_ssize_t n, cap_groups
    cdef Py_ssize_t* slots  # index into groups, -1: empty
    cdef Py_ssize_t mask
    cdef PyObject** pool  # the groups' frames, leaf first, one strong reference each
    cdef Py_ssize_t used, cap_pool

    def __cinit__(self, Py_ssize_t expect):
        cdef Py_ssize_t cap = 64, i
        while cap < 2 * expect + 16:
            cap <<= 1
        self.slots = <Py_ssize_t*>malloc(cap * sizeof(Py_ssize_t))
        self.cap_groups = cap // 2
        self.groups = <_Group*>malloc(self.cap_groups * sizeof(_Group))
        self.cap_pool = 4 * self.cap_groups
        self.pool = <PyObject**>malloc(self.cap_pool * sizeof(PyObject*))
        if self.slots is NULL or self.groups is NULL or self.pool is NULL:
            raise MemoryError()
        for i in range(cap):
            self.slots[i] = -1
        self.mask = cap - 1

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.pool is not NULL:
            for i in range(self.used):
                _decref(self.pool[i])
        free(self.pool)
        free(self.groups)
        free(self.slots)

    cdef int add(self, uint32_t pid, uint32_t tid, Py_ssize_t g, PyObject** fr, Py_ssize_t m, Py_ssize_t count,
                 bint py) except -1:
        cdef uint64_t h = _mix(pid | (<uint64_t>tid << 32), <uint64_t>g, <uint64_t>m)
        cdef Py_ssize_t i, j, gi
        cdef _Group* gr
        for j in range(m):
            h = (h ^ <uint64_t>fr[j]) * 0x100000001B3ULL
        h ^= h >> 29
        i = <Py_ssize_t>(h & <uint64_t>self.mask)
        while True:
            gi = self.slots[i]
            if gi < 0:
                break
            gr = &self.groups[gi]
            if gr.h == h and gr.pid == pid and gr.tid == tid and gr.g == g and gr.m == m and \
                    memcmp(self.pool + gr.off, fr, m * sizeof(PyObject*)) == 0:
                gr.count += count
                if py:
                    gr.py = True
                return 0
            i = (i + 1) & self.mask
        if self.n == self.cap_groups:
            self._grow()
            return self.add(pid, tid, g, fr, m, count, py)  # the table was rebuilt: probe again
        cdef Py_ssize_t cap_pool = self.cap_pool
        cdef PyObject** pool
        if self.used + m > cap_pool:
            while self.used + m > cap_pool:
                cap_pool *= 2
            pool = <PyObject**>realloc(self.pool, cap_pool * sizeof(PyObject*))
            if pool is NULL:  # the old pool (and its references) stays for __dealloc__
                raise MemoryError()
            self.pool, self.cap_pool = pool, cap_pool
        gi = self.n
        self.n += 1
        gr = &self.groups[gi]
        gr.h, gr.pid, gr.tid, gr.g, gr.m, gr.off, gr.count, gr.py = h, pid, tid, g, m, self.used, count, py
        for j in range(m):
            _incref(fr[j])
            self.pool[self.used + j] = fr[j]
        self.used += m
        self.slots[i] = gi
        return 0

    cdef int _grow(self) except -1:
        cdef Py_ssize_t cap = 2 * (self.mask + 1), i, gi
        cdef Py_ssize_t* slots = <Py_ssize_t*>malloc(cap * sizeof(Py_ssize_t))
        cdef _Group* groups = <_Group*>realloc(self.groups, (cap // 2) * sizeof(_Group))
        if slots is NULL or groups is NULL:
            free(slots)
            if groups is not NULL:
                self.groups = groups
            raise MemoryError()
        self.groups = groups
        self.cap_groups = cap // 2
        for i in range(cap):
            slots[i] = -1
        for gi in range(self.n):
            i = <Py_ssize_t>(groups[gi].h & <uint64_t>(cap - 1))
            while slots[i] >= 0:
                i = (i + 1) & (cap - 1)
            slots[i] = gi
        free(self.slots)
        self.slots = slots
        self.mask = cap - 1
        return 0

    cdef int emit(self, dict out) except -1:
        """Each group into ``out`` as ``name_all`` returns it: (pid, tid, generation, id(frames), 0) ->
        [count, frames root first, None, python]."""
        cdef Py_ssize_t gi, j
        cdef _Group* gr
        cdef tuple ft
        for gi in range(self.n):
            gr = &self.groups[gi]
            ft = PyTuple_New(gr.m)
            for j in range(gr.m):  # root first
                _incref(self.pool[gr.off + gr.m - 1 - j])
                PyTuple_SET_ITEM(ft, j, <object>self.pool[gr.off + gr.m - 1 - j])
            out[(gr.pid, gr.tid, gr.g, id(ft), 0)] = [gr.count, ft, None, gr.py]
        return 0


def name_all(object counts, dict all_maps, dict gens, dict named, dict rest, dict knames, dict file_names,
             dict tables, Py_ssize_t file_names_max, object unmapped, object user_miss, object kernel_miss,
             object jit_lookup, dict jit_absent,
             object jit_clock, dict held, object retried,
             bint hold, AddrCache ac,
             Py_ssize_t rounds, Py_ssize_t addr_max, Py_ssize_t rest_max, Py_ssize_t key_max,
             Py_ssize_t held_max, Py_ssize_t hold_rounds):
    """``PerfDataReader._name_all``'s per-key work in C, with the same caches and results.

    First, with ``ac``, every address of a key from the address cache (``AddrCache``: the process's
    names, ``knames``, ``file_names``, and for a new offset of a file in ``tables`` the name of its function
    if one was named before, kept in ``file_names`` up to ``file_names_max``): no Python object but one per
    distinct stack; a key with an address in no mapping that may still be mapped is held there. Else the
    key is answered by the whole-key cache (``named``), else by the chain without its leaf
    (``rest``) plus the leaf, else named address by address (``maps.names``, the file and offset in
    ``file_names``, ``knames``; an address in no mapping asks ``jit_lookup(pid, addr)`` (not called
    while ``jit_absent[pid]`` is later than ``jit_clock()``: no perf map) and is "[unknown]" without a
    JIT name; Python's ``user_miss(pid, maps, addr) -> (got, settled)`` /
    ``kernel_miss(addr)`` for the rest), caching as Python does (``rest`` and ``named`` only when every
    name is settled and mapped). A key with an address in no mapping is held (``held``) as Python
    holds it (only while ``maps.changed`` is within ``hold_rounds`` of ``rounds``). Returns ``(out, slow, stats)``: ``out`` maps (pid, tid, generation or -1, id(prefix),
    id(leaf)) to [count, prefix frames, leaf frame or None, python]; ``slow`` the keys (with counts)
    Python names itself (no maps yet, odd generations); ``stats`` (whole-key hits, samples held,
    user addresses named "[unknown]", keys named from the address cache).
    """
    cdef _Namer nm = _Namer.__new__(_Namer)
    nm.knames, nm.file_names, nm.unmapped = knames, file_names, unmapped
    nm.tables, nm.file_names_max = tables, file_names_max
    nm.user_miss, nm.kernel_miss, nm.jit_lookup, nm.addr_max = user_miss, kernel_miss, jit_lookup, addr_max
    nm.jit_absent, nm.jit_clock = jit_absent, jit_clock
    nm.unmapped_n = 0
    cdef dict out = {}
    cdef dict slow = {}
    cdef Py_ssize_t hits = 0, held_n = 0, klen, nr, g, graw
    cdef const char* k
    cdef uint32_t pid_u, tid_u
    cdef uint64_t ip0, ip1
    cdef object key, count, pid, maps, glist, hit, got, lg, leaf, prefix, py, okey, rk, frames
    cdef bint rest_ok
    cdef list acc
    cdef PyObject* p
    cdef bytes kb
    cdef PyObject* fr[FAST_MAX]
    cdef Py_ssize_t m, fast_n = 0
    cdef _Groups fastg = _Groups(len(counts))
    if ac is not None:
        ac.trim()
    for key, count in counts.items():
        kb = <bytes>key
        k = PyBytes_AS_STRING(kb)
        klen = PyBytes_GET_SIZE(kb)
        if klen < 16:
            slow[key] = count
            continue
        nr = <Py_ssize_t>_u64(k + 8)
        if nr > (klen - 16) // 8:
            continue  # a malformed chain: dropped (as Python drops it)
        pid_u = _u32(k)
        tid_u = _u32(k + 4)
        pid = pid_u
        maps = None
        g = graw = -1
        if klen > 16 + 8 * nr:  # a generation: which program of a process that exec'd lately
            if klen != 24 + 8 * nr:
                slow[key] = count
                continue
            g = graw = <Py_ssize_t>_u32(k + 16 + 8 * nr) - 1
            p = PyDict_GetItem(gens, pid)
            if p is not NULL:
                glist = <object>p
                if g < 0:
                    slow[key] = count
                    continue
                if g < len(glist):
                    maps = glist[g][1]
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
        if ac is not None and nr <= FAST_MAX:
            # every address named from the caches: no Python object per key but its bytes
            m = nm.fast(ac, pid, maps, <dict>maps.names, k + 16, nr, fr,
                        hold and rounds - <Py_ssize_t>maps.changed <= hold_rounds and len(held) < held_max
                        and key not in retried)
            if m == -3:  # an address in no mapping while a late mmap is possible: held as below
                p = PyDict_GetItem(held, key)
                if p is NULL:
                    held[key] = [rounds, count]
                else:
                    acc = <list>p
                    acc[1] = acc[1] + count
                held_n += count
                continue
            if m >= 0:
                fastg.add(pid_u, tid_u, g, fr, m, PyLong_AsSsize_t(count), nm.fast_py)
                nm.unmapped_n += nm.fast_unmapped
                fast_n += 1
                continue
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
            nm.saw_unmapped = nm.saw_unsettled = nm.saw_unmapped_leaf = False
            ip0 = _u64(k + 16) if nr >= 1 else 0
            ip1 = _u64(k + 24) if nr >= 2 else 0
            if nr >= 2 and ip0 >= CONTEXT_MAX and ip1 < CONTEXT_MAX:
                # the leaf varies inside one function; the rest of the chain repeats (kept across batches)
                rk = kb[:24] + kb[32:]
                p = PyDict_GetItem(rest, rk)
                got = None if p is NULL else <object>p
                if got is None or got[0] is not maps or got[1] != maps.version:
                    frames, py = nm.chain(pid, k + 32, nr - 2, ip0 == CONTEXT_USER, False, maps)
                    got = (maps, maps.version, frames, py)
                    if not nm.saw_unmapped and not nm.saw_unsettled:  # a late mmap must be able to name it
                        if len(rest) > rest_max:
                            rest.clear()
                        rest[rk] = got
                if ip0 == CONTEXT_USER:
                    lg = nm.user(pid, maps, maps.names, ip1)
                    if lg is nm.unmapped:
                        nm.saw_unmapped_leaf = True
                    leaf = lg[0]
                    py = got[3] or lg[1]
                else:
                    leaf = nm.kernel(ip1)
                    py = got[3]
                prefix = got[2]
            else:
                prefix, py = nm.chain(pid, k + 16, nr, False, True, maps)
            if not nm.saw_unmapped and not nm.saw_unsettled:
                if len(named) > key_max:
                    named.clear()
                named[key] = (maps, maps.version, prefix if leaf is None else (*prefix, leaf), py, graw)
            elif hold and nm.saw_unmapped_leaf and key not in retried and len(held) < held_max and \
                    rounds - <Py_ssize_t>maps.changed <= hold_rounds:  # a late mmap is possible
                p = PyDict_GetItem(held, key)
                if p is NULL:
                    held[key] = [rounds, count]
                else:
                    acc = <list>p
                    acc[1] = acc[1] + count
                held_n += count
                continue
        okey = (pid, tid_u, g, id(prefix), id(leaf))
        p = PyDict_GetItem(out, okey)
        if p is NULL:
            out[okey] = [count, prefix, leaf, py]
        else:
            acc = <list>p
            acc[0] = acc[0] + count
            if py:
                acc[3] = True
    fastg.emit(out)
    return out, slow, (hits, held_n, nm.unmapped_n, fast_n)


def merge(dict fast, dict gens, dict comms, dict merged):
    """``_name_all``'s merge of ``name_all``'s answers by value, in C: each (pid, tid, generation, prefix,
    leaf) entry of ``fast`` added to ``merged`` under (comm, pid, tid, frames) as [count, runs_python]; comm
    from the generation (``gens[pid][gen][2]``) or ``comms`` (thread, else process, else ":tid"). Returns the
    samples added."""
    cdef Py_ssize_t total = 0
    cdef object okey, val, pid, tid, comm, frames, leaf, k
    cdef Py_ssize_t gen
    cdef PyObject* p
    cdef list acc, v
    for okey, val in fast.items():
        pid = (<tuple>okey)[0]
        tid = (<tuple>okey)[1]
        gen = (<tuple>okey)[2]
        v = <list>val
        if gen >= 0:
            comm = gens[pid][gen][2]
        else:
            p = PyDict_GetItem(comms, tid)
            comm = <object>p if p is not NULL else None
            if not comm:
                p = PyDict_GetItem(comms, pid)
                comm = <object>p if p is not NULL else None
                if not comm:
                    comm = f":{tid}"
        leaf = v[2]
        frames = v[1] if leaf is None else (*v[1], leaf)
        k = (comm, pid, tid, frames)
        p = PyDict_GetItem(merged, k)
        if p is NULL:
            merged[k] = [v[0], v[3]]
        else:
            acc = <list>p
            acc[0] = acc[0] + v[0]
            acc[1] = acc[1] or v[3]
        total += v[0]
    return total
