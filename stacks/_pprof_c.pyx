# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled pprof reader: the per-sample and per-location work of ``stacks.pprof`` in C.

Pure: bytes in, arrays out; no I/O. Two passes over a plain (gunzipped)
pprof ``Profile`` message:

1. :func:`scan` walks the top-level fields once and returns the positions of
   the samples, the string table (as ``str``), and the mapping, function and
   location tables as flat integer arrays. Python turns locations into runs
   of global frame numbers (a dict hit per function, numpy per location).
2. :func:`sample_columns` reads every sample into the neutral sample columns
   (location ids, value counts, the chosen value, which samples carry labels)
   and, given the runs of frame numbers the shared rules made of the locations,
   hashes each stack on the way: location ids -> frame numbers -> a keyed
   128-bit hash (SipHash-1-3, ``stacks/_hashing.pxd``), looked up in a
   :class:`StackIndex` (hash -> stack id on one ``StackTable``).

Either wire pass returns ``None`` for anything it does not fully understand (odd
wire types, undefined ids, malformed varints...); the caller then uses the
protobuf-library decoder, which gives the same result or the exact error.

Stack identity by hash: SipHash is a keyed pseudo-random function, and the
key is random per process, so colliding stacks cannot be prepared offline;
two given different stacks share a hash with probability ~2**-128. A
collision would count one stack's samples under the other.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8String, PyUnicode_DecodeUTF8
from stacks._wire cimport skip, sub_end, varint
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.string cimport memcpy, memset

from stacks._hashing cimport (
    C_ROUNDS,
    D_ROUNDS,
    Index,
    Sip,
    index_alloc,
    index_find,
    index_find_many,
    index_free,
    index_put,
    sip_absorb,
    sip_finish,
    sip_init,
)

import numpy as np

# -- growable int64 vectors ------------------------------------------------------------------

cdef struct Vec:
    int64_t* d
    Py_ssize_t n
    Py_ssize_t cap


cdef int vec_push(Vec* v, int64_t x) except -1:
    cdef int64_t* nd
    cdef Py_ssize_t cap
    if v.n == v.cap:
        cap = v.cap * 2 if v.cap else 64
        nd = <int64_t*>PyMem_Realloc(v.d, cap * sizeof(int64_t))
        if nd == NULL:
            raise MemoryError()
        v.d = nd
        v.cap = cap
    v.d[v.n] = x
    v.n += 1
    return 0


cdef object vec_array(Vec* v):
    """The vector as a new numpy int64 array (the vector keeps its memory)."""
    out = np.empty(v.n, np.int64)
    cdef int64_t[::1] o = out
    if v.n:
        memcpy(&o[0], v.d, v.n * sizeof(int64_t))
    return out


cdef void vec_free(Vec* v) noexcept:
    PyMem_Free(v.d)
    v.d = NULL
    v.n = v.cap = 0


# -- pass 1: the top level ---------------------------------------------------------------------

cdef struct Tables:
    Vec s_start, s_end                     # samples
    Vec vt_type, vt_unit                   # sample types
    Vec m_id, m_file                       # mappings
    Vec f_id, f_name, f_sys, f_file        # functions
    Vec l_id, l_map, l_addr, l_line0, l_nlines, line_fid, line_no   # locations and their lines
    Vec str_start, str_len                 # string table


cdef void tables_free(Tables* t) noexcept:
    vec_free(&t.s_start); vec_free(&t.s_end); vec_free(&t.vt_type); vec_free(&t.vt_unit)
    vec_free(&t.m_id); vec_free(&t.m_file); vec_free(&t.f_id); vec_free(&t.f_name); vec_free(&t.f_sys)
    vec_free(&t.f_file); vec_free(&t.line_no)
    vec_free(&t.l_id); vec_free(&t.l_map); vec_free(&t.l_addr); vec_free(&t.l_line0); vec_free(&t.l_nlines)
    vec_free(&t.line_fid); vec_free(&t.str_start); vec_free(&t.str_len)


cdef int read_varints(const uint8_t* b, Py_ssize_t i, Py_ssize_t end, uint64_t* out, int nfields) noexcept nogil:
    """Fields 1..nfields of a message, each a varint, into ``out`` (0 when absent; the last wins).

    1 when read; 0 when the bytes are malformed or one of those fields (or
    field 0) has another wire type: unusual, so the library decides. Other
    fields are skipped, as protobuf skips unknown ones.
    """
    cdef bint bad = False
    cdef uint64_t tag, field
    cdef int k
    for k in range(nfields):
        out[k] = 0
    while i < end:
        tag = varint(b, &i, end, &bad)
        if bad:
            return 0
        field = tag >> 3
        if field == 0:
            return 0
        if field <= <uint64_t>nfields:
            if tag & 7:
                return 0
            out[field - 1] = varint(b, &i, end, &bad)
        else:
            i = skip(b, i, tag & 7, end, &bad)
        if bad:
            return 0
    return 1


cdef int value_type(const uint8_t* b, Py_ssize_t i, Py_ssize_t end, int64_t* typ, int64_t* unit) noexcept nogil:
    """A ValueType message {type = 1, unit = 2}: 1 on success, 0 when unusual."""
    cdef uint64_t f[2]
    if not read_varints(b, i, end, f, 2):
        return 0
    typ[0] = <int64_t>f[0]
    unit[0] = <int64_t>f[1]
    return 1


cdef int read_row(const uint8_t* b, Py_ssize_t i, Py_ssize_t end, int nfields,
                  Vec* v0, int f0, Vec* v1, int f1, Vec* v2, int f2) except -1:
    """A table row: a message of varint fields 1..nfields (<= 5), read as :func:`read_varints` does.

    Pushes field ``f0 + 1`` onto ``v0``, ``f1 + 1`` onto ``v1`` and, unless ``v2`` is
    NULL, ``f2 + 1`` onto ``v2``. 1 when read, 0 when the row is unusual.
    """
    cdef uint64_t f[5]
    if nfields > 5 or not read_varints(b, i, end, f, nfields):
        return 0
    vec_push(v0, <int64_t>f[f0])
    vec_push(v1, <int64_t>f[f1])
    if v2 != NULL:
        vec_push(v2, <int64_t>f[f2])
    return 1


cdef int read_location(const uint8_t* b, Py_ssize_t i, Py_ssize_t end, Tables* t) except -1:
    # Location {id = 1, mapping_id = 2, address = 3, repeated Line line = 4, is_folded = 5};
    # Line {function_id = 1, line = 2, column = 3}.
    cdef bint bad = False
    cdef uint64_t tag, lid = 0, mid = 0, addr = 0
    cdef uint64_t fid[2]
    cdef Py_ssize_t lend
    cdef Py_ssize_t line0 = t.line_fid.n
    while i < end:
        tag = varint(b, &i, end, &bad)
        if bad:
            return 0
        if tag == 8:
            lid = varint(b, &i, end, &bad)
        elif tag == 16:
            mid = varint(b, &i, end, &bad)
        elif tag == 24:
            addr = varint(b, &i, end, &bad)
        elif tag == 34:
            lend = sub_end(b, &i, end, &bad)
            if bad or not read_varints(b, i, lend, fid, 2):
                return 0
            vec_push(&t.line_fid, <int64_t>fid[0])
            vec_push(&t.line_no, <int64_t>fid[1])
            i = lend
        elif (tag >> 3) <= 4:
            return 0
        else:
            i = skip(b, i, tag & 7, end, &bad)
        if bad:
            return 0
    vec_push(&t.l_id, <int64_t>lid)
    vec_push(&t.l_map, <int64_t>mid)
    vec_push(&t.l_addr, <int64_t>addr)
    vec_push(&t.l_line0, line0)
    vec_push(&t.l_nlines, t.line_fid.n - line0)
    return 1


def scan(bytes raw):
    """Pass 1 over a plain pprof: a dict of its tables, or None when it is unusual.

    Keys: ``strings`` (list of str), ``sample_start``/``sample_end`` (byte
    ranges of the Sample messages), ``types`` (list of (type, unit) string
    indexes), ``mapping_id``/``mapping_file``, ``function_id``/``function_name``/
    ``function_system_name``, ``location_id``/``location_mapping``/
    ``location_address``/``location_line0``/``location_nlines``, ``line_function``,
    ``function_filename`` and ``line_line`` (numpy int64 arrays; unsigned ids are stored as
    int64 bit patterns), ``period``, ``period_type`` (string index or -1),
    ``default_sample_type``, ``time_nanos``, ``duration_nanos``.
    """
    cdef const uint8_t* b = <const uint8_t*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t i = 0, sub, k
    cdef bint bad = False
    cdef uint64_t tag, field, n
    cdef int wire
    cdef int64_t period = 0, default_type = 0, time_nanos = 0, duration = 0
    cdef int64_t pt_type = -1, pt_unit = 0, a, u
    cdef int period_types = 0
    cdef Tables t
    cdef uint64_t frow[4]
    memset(&t, 0, sizeof(Tables))
    try:
        while i < end:
            tag = varint(b, &i, end, &bad)
            if bad:
                return None
            field = tag >> 3
            wire = tag & 7
            if wire == 2 and (field <= 6 or field == 11):
                sub = sub_end(b, &i, end, &bad)
                if bad:
                    return None
                if field == 2:
                    vec_push(&t.s_start, i)
                    vec_push(&t.s_end, sub)
                elif field == 4:
                    if not read_location(b, i, sub, &t):
                        return None
                elif field == 5:
                    # Function {id = 1, name = 2, system_name = 3, filename = 4, start_line = 5}
                    if not read_varints(b, i, sub, frow, 4):
                        return None
                    vec_push(&t.f_id, <int64_t>frow[0])
                    vec_push(&t.f_name, <int64_t>frow[1])
                    vec_push(&t.f_sys, <int64_t>frow[2])
                    vec_push(&t.f_file, <int64_t>frow[3])
                elif field == 6:
                    vec_push(&t.str_start, i)
                    vec_push(&t.str_len, sub - i)
                elif field == 1:
                    if not value_type(b, i, sub, &a, &u):
                        return None
                    vec_push(&t.vt_type, a)
                    vec_push(&t.vt_unit, u)
                elif field == 3:
                    # Mapping {id = 1, memory_start = 2, memory_limit = 3, file_offset = 4, filename = 5, ...}
                    if not read_row(b, i, sub, 5, &t.m_id, 0, &t.m_file, 4, NULL, 0):
                        return None
                elif field == 11:
                    # A singular message seen twice is merged by protobuf: leave that to it.
                    period_types += 1
                    if period_types > 1 or not value_type(b, i, sub, &pt_type, &pt_unit):
                        return None
                else:  # field 0
                    return None
                i = sub
            elif wire == 0 and field in (7, 8, 9, 10, 12, 13, 14):
                n = varint(b, &i, end, &bad)
                if field == 9:
                    time_nanos = <int64_t>n
                elif field == 10:
                    duration = <int64_t>n
                elif field == 12:
                    period = <int64_t>n
                elif field == 14:
                    default_type = <int64_t>n
            elif field == 13 and wire == 2:  # packed comments
                i = skip(b, i, wire, end, &bad)
            elif field <= 14:
                return None  # a known field with an unexpected wire type
            else:
                i = skip(b, i, wire, end, &bad)
            if bad:
                return None
        strings = [None] * t.str_start.n
        for k in range(t.str_start.n):
            # Symbol names are not always UTF-8: keep them readable, as the library path does.
            strings[k] = PyUnicode_DecodeUTF8(<const char*>b + t.str_start.d[k], t.str_len.d[k], "replace")
        return {
            "strings": strings,
            "sample_start": vec_array(&t.s_start),
            "sample_end": vec_array(&t.s_end),
            "types": [(t.vt_type.d[k], t.vt_unit.d[k]) for k in range(t.vt_type.n)],
            "mapping_id": vec_array(&t.m_id),
            "mapping_file": vec_array(&t.m_file),
            "function_id": vec_array(&t.f_id),
            "function_name": vec_array(&t.f_name),
            "function_system_name": vec_array(&t.f_sys),
            "location_id": vec_array(&t.l_id),
            "location_mapping": vec_array(&t.l_map),
            "location_address": vec_array(&t.l_addr),
            "location_line0": vec_array(&t.l_line0),
            "location_nlines": vec_array(&t.l_nlines),
            "line_function": vec_array(&t.line_fid),
            "function_filename": vec_array(&t.f_file),
            "line_line": vec_array(&t.line_no),
            "period": period,
            "period_type": pt_type,
            "period_unit": pt_unit,
            "default_sample_type": default_type,
            "time_nanos": time_nanos,
            "duration_nanos": duration,
        }
    finally:
        tables_free(&t)


# -- the stack index ---------------------------------------------------------------------------

cdef class StackIndex:
    """128-bit stack hash -> stack id (int64 >= 0), in the shared ``Index`` (``stacks/_hashing.pxd``).

    A stack's hash is SipHash-1-3 (128-bit output) keyed with (key0, key1) of
    its frame numbers, leaf first, as little-endian uint64 words.
    """

    cdef Index ix
    cdef readonly uint64_t key0, key1

    def __cinit__(self, uint64_t key0, uint64_t key1, Py_ssize_t capacity=1 << 16):
        self.key0 = key0
        self.key1 = key1
        self.ix.slots = NULL
        index_alloc(&self.ix, capacity)

    def __dealloc__(self):
        index_free(&self.ix)

    def __len__(self) -> int:
        return self.ix.n

    def clear(self) -> None:
        """Forget every stack (the table it pointed into was replaced)."""
        index_alloc(&self.ix, 1 << 16)

    def insert(self, uint64_t h1, uint64_t h2, int64_t sid) -> None:
        """Remember that the stack hashing to (h1, h2) has id ``sid``."""
        if sid < 0:
            raise ValueError("stack ids are >= 0")
        index_put(&self.ix, h1, h2, sid)

    def lookup(self, uint64_t h1, uint64_t h2) -> int:
        """The id of the stack hashing to (h1, h2), or -1."""
        return index_find(&self.ix, h1, h2)

    def hash_frames(self, const int32_t[::1] frames) -> tuple:
        """The (h1, h2) of a stack given as frame numbers, leaf first."""
        cdef Sip s
        cdef uint64_t h1, h2
        cdef Py_ssize_t k, n = frames.shape[0]
        sip_init(&s, self.key0, self.key1)
        for k in range(n):
            sip_absorb(&s, <uint64_t>frames[k], C_ROUNDS)
        sip_finish(&s, (<uint64_t>(8 * n)) << 56, C_ROUNDS, D_ROUNDS, &h1, &h2)
        return h1, h2


# -- pass 2: the samples, as neutral columns (and, with runs, hashed on the way) ------------------

cdef int columns_loop(
    const uint8_t* b, Py_ssize_t size, const int64_t[::1] starts, const int64_t[::1] ends, Py_ssize_t vi,
    int64_t[::1] bound, int64_t[::1] locs, int64_t[::1] nvals_o, int64_t[::1] vals, uint8_t[::1] lab,
    bint do_hash, const int32_t[::1] lut, const int32_t[::1] run_off, const int32_t[::1] run_len,
    const int32_t[::1] run_frames, StackIndex index, int64_t[::1] ids, uint64_t[::1] hs1, uint64_t[::1] hs2,
) noexcept nogil:
    """The per-sample loop of :func:`sample_columns`: 0 when a sample is unusual, 2 when ``do_hash``
    met an undefined location (the caller reads again without hashing), else 1.

    Hashing here, while the bytes are read, costs little (the SipHash rounds overlap the varint
    reads); a second pass over the columns cost ~1.8 ms per 450,000 locations. ``do_hash`` never
    changes in the loop, so the compiler can make two loops of it.
    """
    cdef Py_ssize_t n = starts.shape[0]
    cdef Py_ssize_t cap = locs.shape[0]
    cdef Py_ssize_t n_lut = lut.shape[0] if do_hash else 0
    cdef Py_ssize_t k, i, end, stop, nvals, r, q, nl = 0
    cdef uint64_t tag, v, field, h1, h2, nframes
    cdef int64_t val
    cdef int32_t run
    cdef int wire
    cdef bint bad = False
    cdef uint64_t k0 = index.key0 if do_hash else 0
    cdef uint64_t k1 = index.key1 if do_hash else 0
    cdef Sip s
    memset(&s, 0, sizeof(Sip))  # set per sample when hashing; zeroed so no path reads it unset
    nframes = 0
    bound[0] = 0
    for k in range(n):
        i = starts[k]
        end = ends[k]
        if i < 0 or end > size or i > end:
            return 0
        nvals = 0
        val = 0
        if do_hash:
            sip_init(&s, k0, k1)
            nframes = 0
        while i < end:
            tag = varint(b, &i, end, &bad)
            if bad:
                return 0
            field = tag >> 3
            wire = tag & 7
            if field == 1 and (wire == 0 or wire == 2):
                stop = sub_end(b, &i, end, &bad) if wire == 2 else end
                if bad:
                    return 0
                while i < stop:
                    v = varint(b, &i, stop, &bad)
                    if bad or nl >= cap:  # every id takes a byte: ``cap`` (the samples' bytes) is never reached
                        return 0
                    locs[nl] = <int64_t>v
                    nl += 1
                    if do_hash:
                        if v >= <uint64_t>n_lut or lut[v] < 0:
                            return 2  # an undefined location: the shared check names it
                        run = lut[v]
                        q = run_off[run]
                        for r in range(q, q + run_len[run]):
                            sip_absorb(&s, <uint64_t>run_frames[r], C_ROUNDS)
                        nframes += run_len[run]
                    if wire == 0:
                        break
            elif field == 2 and (wire == 0 or wire == 2):
                stop = sub_end(b, &i, end, &bad) if wire == 2 else end
                if bad:
                    return 0
                while i < stop:
                    v = varint(b, &i, stop, &bad)
                    if bad:
                        return 0
                    if nvals == vi:
                        val = <int64_t>v
                    nvals += 1
                    if wire == 0:
                        break
            elif field == 3 and wire == 2:
                lab[k] = 1
                i = skip(b, i, wire, end, &bad)
            elif field <= 3:
                return 0
            else:
                i = skip(b, i, wire, end, &bad)
            if bad:
                return 0
        bound[k + 1] = nl
        nvals_o[k] = nvals
        vals[k] = val
        if do_hash:
            sip_finish(&s, (8 * nframes) << 56, C_ROUNDS, D_ROUNDS, &h1, &h2)
            hs1[k] = h1
            hs2[k] = h2
    if do_hash and n:
        index_find_many(&index.ix, &hs1[0], &hs2[0], &ids[0], n)
    return 1


def sample_columns(
    bytes raw,
    const int64_t[::1] starts,
    const int64_t[::1] ends,
    Py_ssize_t vi,
    const int32_t[::1] lut=None,
    const int32_t[::1] run_off=None,
    const int32_t[::1] run_len=None,
    const int32_t[::1] run_frames=None,
    StackIndex index=None,
):
    """Pass 2: the samples ``raw[starts[k]:ends[k]]`` as the neutral sample columns.

    Returns (bound, locations, value counts, values, labelled, hashed): sample ``k``'s
    location ids (int64 bit patterns, leaf first) are ``locations[bound[k]:bound[k + 1]]``,
    its value ``vi`` is ``values[k]`` (0 when it has fewer), ``labelled[k]`` marks a sample
    with labels (read by the Python reader); or None when a sample is encoded unusually (odd
    wire types, cut varints), for the library to decide.

    With ``index`` (and ``lut[location id]`` -> run, -1: undefined; run ``r`` is
    ``run_frames[run_off[r]:run_off[r] + run_len[r]]``, leaf first), ``hashed`` is every
    sample's (stack id or -1 when new, h1, h2): its frame numbers' keyed 128-bit hash looked
    up in the index; None without an index or when a location is undefined.
    """
    n = starts.shape[0]
    if ends.shape[0] != n:
        raise ValueError("sample_columns: mismatched array lengths")
    cdef bint do_hash = index is not None
    if do_hash and (lut is None or run_off is None or run_len is None or run_frames is None
                    or run_off.shape[0] != run_len.shape[0]):
        raise ValueError("sample_columns: an index needs the lut and the runs")
    total = int(np.subtract(ends, starts).sum()) if n else 0
    # An id takes at least a byte; pages past the ids written are never touched.
    locs_a = np.empty(max(total, 0), np.int64)
    bound_a = np.empty(n + 1, np.int64)
    nvals_a = np.empty(n, np.int64)
    vals_a = np.empty(n, np.int64)
    lab_a = np.zeros(n, np.uint8)
    m = n if do_hash else 0
    ids_a = np.empty(m, np.int64)
    h1_a = np.empty(m, np.uint64)
    h2_a = np.empty(m, np.uint64)
    cdef int64_t[::1] locs = locs_a
    cdef int64_t[::1] bound = bound_a
    cdef int64_t[::1] nvals = nvals_a
    cdef int64_t[::1] vals = vals_a
    cdef uint8_t[::1] lab = lab_a
    cdef int64_t[::1] ids = ids_a
    cdef uint64_t[::1] hs1 = h1_a
    cdef uint64_t[::1] hs2 = h2_a
    cdef const uint8_t* b = <const uint8_t*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(raw)
    cdef int ok
    with nogil:
        ok = columns_loop(b, size, starts, ends, vi, bound, locs, nvals, vals, lab,
                          do_hash, lut, run_off, run_len, run_frames, index, ids, hs1, hs2)
        if ok == 2:  # an undefined location: the columns without the hashes
            do_hash = False
            lab[:] = 0
            ok = columns_loop(b, size, starts, ends, vi, bound, locs, nvals, vals, lab,
                              do_hash, lut, run_off, run_len, run_frames, index, ids, hs1, hs2)
    if not ok:
        return None
    hashed = (ids_a, h1_a, h2_a) if do_hash else None
    return bound_a, locs_a[: bound_a[n]], nvals_a, vals_a, lab_a, hashed


def stack_frames(
    const int64_t[::1] bound,
    const int64_t[::1] locs,
    const int32_t[::1] lut,
    const int32_t[::1] run_off,
    const int32_t[::1] run_len,
    const int32_t[::1] run_frames,
    const int64_t[::1] which,
):
    """The frame numbers of each sample in ``which`` (their stacks :func:`sample_columns` hashed),
    root first: a list of tuples. One call for all new stacks of a decode, not one each."""
    cdef Py_ssize_t m, k, p, r, q
    cdef int32_t run
    cdef uint64_t lid
    stacks = []
    for m in range(which.shape[0]):
        k = which[m]
        out = []
        for p in range(bound[k], bound[k + 1]):
            lid = <uint64_t>locs[p]
            if lid >= <uint64_t>lut.shape[0] or lut[lid] < 0:
                raise ValueError("stack_frames: a sample sample_columns did not hash")
            run = lut[lid]
            q = run_off[run]
            for r in range(q, q + run_len[run]):
                out.append(run_frames[r])
        out.reverse()
        stacks.append(tuple(out))
    return stacks


# -- the writer: a whole Profile ------------------------------------------------------------

cdef struct Buf:
    uint8_t* d
    Py_ssize_t n
    Py_ssize_t cap


cdef int buf_reserve(Buf* b, Py_ssize_t extra) except -1:
    cdef uint8_t* nd
    cdef Py_ssize_t cap
    if b.n + extra > b.cap:
        cap = max(2 * b.cap, b.n + extra, 4096)
        nd = <uint8_t*>PyMem_Realloc(b.d, cap)
        if nd == NULL:
            raise MemoryError()
        b.d = nd
        b.cap = cap
    return 0


cdef inline Py_ssize_t _vsize(uint64_t x) noexcept nogil:
    cdef Py_ssize_t n = 1
    while x >= 0x80:
        x >>= 7
        n += 1
    return n


cdef inline void _vput(Buf* b, uint64_t x) noexcept nogil:
    """A varint into reserved room."""
    while x >= 0x80:
        b.d[b.n] = <uint8_t>(x & 0x7F) | 0x80
        x >>= 7
        b.n += 1
    b.d[b.n] = <uint8_t>x
    b.n += 1


cdef inline Py_ssize_t _fsize(uint64_t v) noexcept nogil:
    """Bytes of a non-repeated varint field (tag < 128): none for zero, as proto3 writes it."""
    return 1 + _vsize(v) if v else 0


cdef inline void _fput(Buf* b, uint8_t tag, uint64_t v) noexcept nogil:
    if v:
        b.d[b.n] = tag
        b.n += 1
        _vput(b, v)


cdef int _bytes_field(Buf* b, uint8_t tag, const char* p, Py_ssize_t n) except -1:
    buf_reserve(b, 1 + 10 + n)
    b.d[b.n] = tag
    b.n += 1
    _vput(b, <uint64_t>n)
    if n:
        memcpy(b.d + b.n, p, n)
        b.n += n
    return 0


cdef int _pair_field(Buf* b, uint8_t tag, uint64_t x, uint64_t y) except -1:
    """A message of two varint fields (1 and 2: ValueType, Label, Line) as field ``tag``."""
    cdef Py_ssize_t body = _fsize(x) + _fsize(y)
    buf_reserve(b, 2 + body + 10)
    b.d[b.n] = tag
    b.n += 1
    _vput(b, <uint64_t>body)
    _fput(b, 0x08, x)
    _fput(b, 0x10, y)
    return 0


cdef Py_ssize_t _sx(dict strings, list order, object text) except -1:
    cdef PyObject* p = PyDict_GetItem(strings, text)
    if p is not NULL:
        return <Py_ssize_t><object>p
    cdef Py_ssize_t i = len(order)
    strings[text] = i
    order.append(text)
    return i


def encode_profile(object items, int64_t scale, tuple sample_type, tuple period_type, int64_t period,
                   int64_t time_nanos, int64_t duration_nanos, list label_pairs, object kernel,
                   str kernel_mapping):
    """The pprof ``Profile`` of (stack root first, count) ``items``, as ``stacks.pprof.encode_pprof`` builds
    it through the protobuf library (issue 25: that was the agent's push, a library message per frame and
    per sample): the same message, string table order, ids and all, in other bytes (field order). Frames
    are ``Frame`` tuples (name, kind, file, line); ``kernel`` is the kind whose locations get the
    ``kernel_mapping`` mapping; values are ``count * scale`` (a ValueError past int64, as the library's);
    ``label_pairs`` (key, value) go on every sample. Pure."""
    cdef dict strings = {"": 0}
    cdef list order = [""]
    cdef dict functions = {}, locations = {}
    cdef Buf head, maps, locs, funcs, samples, ids, labels
    cdef Buf* bufs[7]
    bufs[0], bufs[1], bufs[2], bufs[3], bufs[4], bufs[5], bufs[6] = &head, &maps, &locs, &funcs, &samples, &ids, &labels
    cdef Py_ssize_t k, j, n, body, ni, fi, mi, fid, lid, val_len, kmap = 0
    cdef uint64_t val
    cdef PyObject* p
    cdef tuple stack, fr
    cdef bytes raw
    for k in range(7):
        bufs[k].d = NULL
        bufs[k].n = bufs[k].cap = 0
    try:
        st0 = _sx(strings, order, sample_type[0])
        st1 = _sx(strings, order, sample_type[1])
        _pair_field(&head, 0x0A, st0, st1)  # sample_type
        pt0 = _sx(strings, order, period_type[0])
        pt1 = _sx(strings, order, period_type[1])
        _pair_field(&head, 0x5A, pt0, pt1)  # period_type
        buf_reserve(&head, 33)
        _fput(&head, 0x60, <uint64_t>period)
        _fput(&head, 0x48, <uint64_t>time_nanos)
        _fput(&head, 0x50, <uint64_t>duration_nanos)
        for key, value in label_pairs:
            _pair_field(&labels, 0x1A, _sx(strings, order, key), _sx(strings, order, value))
        for stack, count in items:
            n = len(stack)
            ids.n = 0
            for j in range(n - 1, -1, -1):  # leaf first
                fr = <tuple>stack[j]
                p = PyDict_GetItem(locations, fr)
                if p is not NULL:
                    lid = <Py_ssize_t><object>p
                else:
                    fkey = (fr[0], fr[2])
                    p = PyDict_GetItem(functions, fkey)
                    if p is not NULL:
                        fid = <Py_ssize_t><object>p
                    else:
                        fid = len(functions) + 1
                        functions[fkey] = fid
                        ni = _sx(strings, order, fr[0])
                        fi = _sx(strings, order, fr[2])
                        body = _fsize(fid) + 2 * _fsize(ni) + _fsize(fi)
                        buf_reserve(&funcs, 2 + 10 + body)
                        funcs.d[funcs.n] = 0x2A  # Profile.function
                        funcs.n += 1
                        _vput(&funcs, <uint64_t>body)
                        _fput(&funcs, 0x08, fid)  # id
                        _fput(&funcs, 0x10, ni)  # name
                        _fput(&funcs, 0x18, ni)  # system_name
                        _fput(&funcs, 0x20, fi)  # filename
                    lid = len(locations) + 1
                    locations[fr] = lid
                    if fr[1] is kernel and not kmap:
                        kmap = 1
                        mi = _sx(strings, order, kernel_mapping)
                        body = 2 + _fsize(mi) + 2
                        buf_reserve(&maps, 2 + 10 + body)
                        maps.d[maps.n] = 0x1A  # Profile.mapping
                        maps.n += 1
                        _vput(&maps, <uint64_t>body)
                        _fput(&maps, 0x08, 1)  # id
                        _fput(&maps, 0x28, mi)  # filename
                        _fput(&maps, 0x38, 1)  # has_functions
                    val = <uint64_t><int64_t>fr[3]
                    body = _fsize(fid) + _fsize(val)  # the Line
                    body = _fsize(lid) + (2 if fr[1] is kernel else 0) + 1 + _vsize(body) + body
                    buf_reserve(&locs, 2 + 10 + body)
                    locs.d[locs.n] = 0x22  # Profile.location
                    locs.n += 1
                    _vput(&locs, <uint64_t>body)
                    _fput(&locs, 0x08, lid)  # id
                    if fr[1] is kernel:
                        _fput(&locs, 0x10, 1)  # mapping_id
                    locs.d[locs.n] = 0x22  # Location.line
                    locs.n += 1
                    _vput(&locs, <uint64_t>(_fsize(fid) + _fsize(val)))
                    _fput(&locs, 0x08, fid)
                    _fput(&locs, 0x10, val)
                buf_reserve(&ids, 10)
                _vput(&ids, <uint64_t>lid)
            v = count * scale
            if not -(1 << 63) <= v < (1 << 63):
                raise ValueError(f"Value out of range: {v}")  # as the library refuses it
            val = <uint64_t><int64_t>v
            val_len = _vsize(val)
            body = (1 + _vsize(ids.n) + ids.n if ids.n else 0) + 1 + _vsize(val_len) + val_len + labels.n
            buf_reserve(&samples, 1 + 10 + body)
            samples.d[samples.n] = 0x12  # Profile.sample
            samples.n += 1
            _vput(&samples, <uint64_t>body)
            if ids.n:
                samples.d[samples.n] = 0x0A  # Sample.location_id, packed
                samples.n += 1
                _vput(&samples, <uint64_t>ids.n)
                memcpy(samples.d + samples.n, ids.d, ids.n)
                samples.n += ids.n
            samples.d[samples.n] = 0x12  # Sample.value, packed
            samples.n += 1
            _vput(&samples, <uint64_t>val_len)
            _vput(&samples, val)
            if labels.n:
                memcpy(samples.d + samples.n, labels.d, labels.n)
                samples.n += labels.n
        for text in order:  # the string table, in order of first use
            raw = PyUnicode_AsUTF8String(text)
            _bytes_field(&head, 0x32, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
        out = PyBytes_FromStringAndSize(NULL, head.n + maps.n + locs.n + funcs.n + samples.n)
        o = PyBytes_AS_STRING(out)
        n = 0
        for k in range(5):
            if bufs[k].n:
                memcpy(o + n, bufs[k].d, bufs[k].n)
                n += bufs[k].n
        return out
    finally:
        for k in range(7):
            PyMem_Free(bufs[k].d)
