# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled half of :mod:`stacks.otlp` (pure: bytes in, arrays out).

The per-stack work of an OTLP request in C: every raw ``Stack`` entry of the
dictionary's ``stack_table`` (field 1 ``location_indices``, packed int32) is
read, its location indices mapped to the cache's global location ids, and
the sequence hashed (SipHash-1-3, 128-bit, keyed per process:
``stacks/_hashing.pxd``) and looked up in an :class:`OtlpIndex` (hash -> stack
id on one ``StackTable``), as ``stacks._pprof_c`` does for pprof samples.
Only stacks never seen before go back to Python to be interned.

Anything unusual (a malformed varint, a negative or out-of-table index, an
unknown wire type) returns None: the caller then takes the message path,
which gives the same result or the exact error.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from stacks._wire cimport skip, varint
from stacks._hashing cimport (
    C_ROUNDS,
    D_ROUNDS,
    Index,
    Sip,
    index_alloc,
    index_find,
    index_free,
    index_put,
    sip_absorb,
    sip_finish,
    sip_init,
)

import numpy as np


# The largest tag protobuf allows: field number 2**29 - 1, wire type 7.
cdef uint64_t MAX_TAG = ((<uint64_t>1 << 29) - 1) << 3 | 7


cdef class OtlpIndex:
    """128-bit hash of a stack's global location ids (leaf first) -> stack id (int64 >= 0)."""

    cdef Index ix
    cdef readonly uint64_t key0, key1

    def __cinit__(self, uint64_t key0, uint64_t key1):
        self.key0 = key0
        self.key1 = key1
        self.ix.slots = NULL
        index_alloc(&self.ix, 1 << 12)

    def __dealloc__(self):
        index_free(&self.ix)

    def __len__(self) -> int:
        return self.ix.n

    def insert(self, uint64_t h1, uint64_t h2, int64_t sid) -> None:
        """Remember that the stack hashing to (h1, h2) has id ``sid``."""
        if sid < 0:
            raise ValueError("stack ids are >= 0")
        if index_find(&self.ix, h1, h2) < 0:
            index_put(&self.ix, h1, h2, sid)

    def lookup(self, uint64_t h1, uint64_t h2) -> int:
        """The id of the stack hashing to (h1, h2), or -1."""
        return index_find(&self.ix, h1, h2)


def stack_ids(list entries, const int32_t[::1] loc_gid, OtlpIndex index):
    """Every raw ``Stack`` entry's stack id: (ids, h1, h2) as arrays, an id being -1 for a stack
    without locations and -2 for one not in ``index`` yet (its (h1, h2) to insert once interned);
    None when an entry is unusual (the message path then reads it or names the error)."""
    cdef Py_ssize_t n = PyList_GET_SIZE(entries)
    cdef Py_ssize_t n_loc = loc_gid.shape[0]
    ids_a = np.empty(n, np.int64)
    h1_a = np.zeros(n, np.uint64)
    h2_a = np.zeros(n, np.uint64)
    cdef int64_t[::1] ids = ids_a
    cdef uint64_t[::1] hs1 = h1_a
    cdef uint64_t[::1] hs2 = h2_a
    cdef Py_ssize_t k, i, end, stop
    cdef uint64_t tag, idx, nloc, h1, h2
    cdef int wire
    cdef bint bad = False
    cdef const uint8_t* b
    cdef object e
    cdef Sip s
    cdef int64_t sid
    for k in range(n):
        e = <object>PyList_GET_ITEM(entries, k)
        if type(e) is not bytes:
            return None
        b = <const uint8_t*>PyBytes_AS_STRING(e)
        end = PyBytes_GET_SIZE(e)
        i = 0
        nloc = 0
        sip_init(&s, index.key0, index.key1)
        while i < end:
            tag = varint(b, &i, end, &bad)
            if bad:
                return None
            wire = tag & 7
            if tag >> 3 == 0 or tag > MAX_TAG:
                return None  # not a field number protobuf allows: the library names the error
            if tag >> 3 == 1 and (wire == 0 or wire == 2):
                if wire == 2:
                    stop = <Py_ssize_t>varint(b, &i, end, &bad)
                    if bad or stop > end - i:
                        return None
                    stop += i
                else:
                    stop = -1  # one varint, which must be there
                while i < stop or stop < 0:
                    idx = varint(b, &i, end if stop < 0 else stop, &bad)
                    if bad or idx >= <uint64_t>n_loc:
                        return None  # negative or outside the location table: the message path names it
                    sip_absorb(&s, <uint64_t>loc_gid[idx], C_ROUNDS)
                    nloc += 1
                    if wire == 0:
                        break
            else:
                i = skip(b, i, wire, end, &bad)
                if bad:
                    return None
        if nloc == 0:
            ids[k] = -1
            continue
        sip_finish(&s, (8 * nloc) << 56, C_ROUNDS, D_ROUNDS, &h1, &h2)
        sid = index_find(&index.ix, h1, h2)
        ids[k] = sid if sid >= 0 else -2
        hs1[k] = h1
        hs2[k] = h2
    return ids_a, h1_a, h2_a


def samples(list entries):
    """(stack index, value total, link index) arrays of raw ``Sample`` entries (fields 1
    ``stack_index``, 3 ``link_index``, 4 ``values``, 5 ``timestamps_unix_nano``); the total is
    the values' sum, or the number of timestamps when there are no values. None when a sample
    has attributes (field 2: they split series) or is unusual (negative index, huge value,
    malformed), for the message path."""
    cdef Py_ssize_t n = PyList_GET_SIZE(entries)
    si_a = np.zeros(n, np.int64)
    tot_a = np.zeros(n, np.int64)
    link_a = np.zeros(n, np.int64)
    cdef int64_t[::1] si = si_a
    cdef int64_t[::1] tot = tot_a
    cdef int64_t[::1] link = link_a
    cdef Py_ssize_t k, i, end, stop
    cdef uint64_t tag, field, v
    cdef int64_t total, nvals, nts
    cdef int wire
    cdef bint bad = False
    cdef const uint8_t* b
    cdef object e
    for k in range(n):
        e = <object>PyList_GET_ITEM(entries, k)
        if type(e) is not bytes:
            return None
        b = <const uint8_t*>PyBytes_AS_STRING(e)
        end = PyBytes_GET_SIZE(e)
        i = 0
        total = 0
        nvals = 0
        nts = 0
        while i < end:
            tag = varint(b, &i, end, &bad)
            if bad:
                return None
            field = tag >> 3
            wire = tag & 7
            if field == 0 or tag > MAX_TAG:
                return None
            if (field == 1 or field == 3) and wire == 0:
                v = varint(b, &i, end, &bad)
                if bad or v >= (<uint64_t>1 << 31):
                    return None
                if field == 1:
                    si[k] = <int64_t>v
                else:
                    link[k] = <int64_t>v
            elif field == 4 and (wire == 0 or wire == 2):
                if wire == 2:
                    stop = <Py_ssize_t>varint(b, &i, end, &bad)
                    if bad or stop > end - i:
                        return None
                    stop += i
                else:
                    stop = -1  # one varint, which must be there
                while i < stop or stop < 0:
                    v = varint(b, &i, end if stop < 0 else stop, &bad)
                    if bad or v >= (<uint64_t>1 << 62):
                        return None  # negative or huge: Python's integers decide
                    total += <int64_t>v
                    if total >= (<int64_t>1 << 62):
                        return None
                    nvals += 1
                    if wire == 0:
                        break
            elif field == 5 and (wire == 1 or wire == 2):
                if wire == 2:
                    stop = <Py_ssize_t>varint(b, &i, end, &bad)
                    if bad or stop > end - i or stop % 8:
                        return None
                    nts += stop // 8
                    i += stop
                else:
                    if end - i < 8:
                        return None
                    nts += 1
                    i += 8
            elif field <= 5:
                return None  # attributes, or a known field with an odd wire type
            else:
                i = skip(b, i, wire, end, &bad)
                if bad:
                    return None
        tot[k] = total if nvals else nts
    return si_a, tot_a, link_a
