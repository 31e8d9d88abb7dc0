# cython: language_level=3
"""Shared C parts of the compiled readers (``_pprof_c``, ``_folded_c``), written once.

- SipHash-1-3 with 128-bit output, streamed a 64-bit word at a time or over
  bytes. SipHash is a keyed pseudo-random function: with a random key per
  process nobody can prepare colliding inputs, or inputs that pile into one
  bucket, offline; two given different inputs share a 128-bit hash with
  probability ~2**-128.
- ``Index``: open addressing with linear probing over one array of
  (hash, hash, id + 1) slots, kept at most half full; a lookup is usually one
  cache line. Ids are stack ids on one ``StackTable``.

Everything here is ``inline``: each module that cimports it compiles its own
copy, so no extra extension module is needed at run time.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy, memset


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define FW_PREFETCH(p) __builtin_prefetch((p), 0, 1)
    #else
    #define FW_PREFETCH(p) ((void)(p))
    #endif
    """
    void FW_PREFETCH(const void* p) noexcept nogil

# Rounds per message word and at finalisation. 1-3 is the variant CPython and
# Rust use for their hash tables; (2, 4) is the reference SipHash-2-4.
cdef enum:
    C_ROUNDS = 1
    D_ROUNDS = 3


cdef struct Sip:
    uint64_t v0, v1, v2, v3


cdef inline uint64_t rotl(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline void sipround(Sip* s) noexcept nogil:
    s.v0 += s.v1
    s.v1 = rotl(s.v1, 13)
    s.v1 ^= s.v0
    s.v0 = rotl(s.v0, 32)
    s.v2 += s.v3
    s.v3 = rotl(s.v3, 16)
    s.v3 ^= s.v2
    s.v0 += s.v3
    s.v3 = rotl(s.v3, 21)
    s.v3 ^= s.v0
    s.v2 += s.v1
    s.v1 = rotl(s.v1, 17)
    s.v1 ^= s.v2
    s.v2 = rotl(s.v2, 32)


cdef inline void sip_init(Sip* s, uint64_t k0, uint64_t k1) noexcept nogil:
    s.v0 = k0 ^ 0x736f6d6570736575ULL
    s.v1 = k1 ^ 0x646f72616e646f6dULL ^ 0xee  # 0xee: the 128-bit output variant
    s.v2 = k0 ^ 0x6c7967656e657261ULL
    s.v3 = k1 ^ 0x7465646279746573ULL


cdef inline void sip_absorb(Sip* s, uint64_t m, int c_rounds) noexcept nogil:
    """One 8-byte message word (little-endian)."""
    cdef int r
    s.v3 ^= m
    for r in range(c_rounds):
        sipround(s)
    s.v0 ^= m


cdef inline void sip_finish(Sip* s, uint64_t last, int c_rounds, int d_rounds,
                            uint64_t* lo, uint64_t* hi) noexcept nogil:
    """Absorb the last word (the 0-7 tail bytes | total length << 56) and give the 128-bit hash."""
    cdef int r
    sip_absorb(s, last, c_rounds)
    s.v2 ^= 0xee
    for r in range(d_rounds):
        sipround(s)
    lo[0] = s.v0 ^ s.v1 ^ s.v2 ^ s.v3
    s.v1 ^= 0xdd
    for r in range(d_rounds):
        sipround(s)
    hi[0] = s.v0 ^ s.v1 ^ s.v2 ^ s.v3


cdef inline void sip128(uint64_t k0, uint64_t k1, const uint8_t* p, Py_ssize_t n,
                        int c_rounds, int d_rounds, uint64_t* lo, uint64_t* hi) noexcept nogil:
    """SipHash-c-d, 128-bit output, of ``p[:n]`` (words read little-endian on x86/ARM hosts)."""
    cdef Sip s
    cdef uint64_t m
    cdef Py_ssize_t i, words = n >> 3
    sip_init(&s, k0, k1)
    for i in range(words):
        memcpy(&m, p + 8 * i, 8)
        sip_absorb(&s, m, c_rounds)
    m = 0
    memcpy(&m, p + 8 * words, n & 7)
    sip_finish(&s, m | ((<uint64_t>n) << 56), c_rounds, d_rounds, lo, hi)


# -- the index ----------------------------------------------------------------------------------

cdef struct Slot:
    uint64_t lo
    uint64_t hi
    int64_t sid1  # stack id + 1; 0 = empty slot


cdef struct Index:
    Slot* slots
    Py_ssize_t mask  # capacity - 1 (a power of two)
    Py_ssize_t n


cdef inline int index_alloc(Index* ix, Py_ssize_t cap) except -1:
    """Empty the index with room for ``cap`` slots (rounded up to a power of two, >= 16)."""
    cdef Py_ssize_t c = 16
    while c < cap:
        c <<= 1
    cdef Slot* s = <Slot*>PyMem_Malloc(c * sizeof(Slot))
    if s == NULL:
        raise MemoryError()
    memset(s, 0, c * sizeof(Slot))
    PyMem_Free(ix.slots)
    ix.slots = s
    ix.mask = c - 1
    ix.n = 0
    return 0


cdef inline void index_free(Index* ix) noexcept:
    PyMem_Free(ix.slots)
    ix.slots = NULL
    ix.mask = -1
    ix.n = 0


cdef inline int64_t index_find(const Index* ix, uint64_t lo, uint64_t hi) noexcept nogil:
    """The stack id stored under (lo, hi), or -1."""
    cdef Py_ssize_t j = <Py_ssize_t>(lo & <uint64_t>ix.mask)
    cdef const Slot* s
    while True:
        s = &ix.slots[j]
        if s.sid1 == 0:
            return -1
        if s.lo == lo and s.hi == hi:
            return s.sid1 - 1
        j = (j + 1) & ix.mask


cdef enum:
    PREFETCH_AHEAD = 16


cdef inline void index_find_many(const Index* ix, const uint64_t* lo, const uint64_t* hi, int64_t* out,
                                 Py_ssize_t n) noexcept nogil:
    """``out[k] = index_find(ix, lo[k], hi[k])`` for every k, with the slots fetched ahead.

    A large index does not fit in the CPU caches, so nearly every lookup is a
    cache miss; asking for the slot of lookup k + PREFETCH_AHEAD while doing
    lookup k lets those misses overlap instead of queueing.
    """
    cdef Py_ssize_t k
    cdef uint64_t mask = <uint64_t>ix.mask
    for k in range(min(n, PREFETCH_AHEAD)):
        FW_PREFETCH(&ix.slots[lo[k] & mask])
    for k in range(n):
        if k + PREFETCH_AHEAD < n:
            FW_PREFETCH(&ix.slots[lo[k + PREFETCH_AHEAD] & mask])
        out[k] = index_find(ix, lo[k], hi[k])


cdef inline void _index_place(Index* ix, uint64_t lo, uint64_t hi, int64_t sid) noexcept nogil:
    cdef Py_ssize_t j = <Py_ssize_t>(lo & <uint64_t>ix.mask)
    while ix.slots[j].sid1 != 0:
        if ix.slots[j].lo == lo and ix.slots[j].hi == hi:
            ix.slots[j].sid1 = sid + 1  # the same key again replaces
            return
        j = (j + 1) & ix.mask
    ix.slots[j].lo = lo
    ix.slots[j].hi = hi
    ix.slots[j].sid1 = sid + 1
    ix.n += 1


cdef inline int index_put(Index* ix, uint64_t lo, uint64_t hi, int64_t sid) except -1:
    """Store (lo, hi) -> sid (replacing an entry with the same key), growing at half load."""
    cdef Index old
    cdef Py_ssize_t j
    if 2 * (ix.n + 1) > ix.mask + 1:
        old = ix[0]
        ix.slots = NULL
        try:
            index_alloc(ix, 2 * (old.mask + 1))
        except MemoryError:
            ix[0] = old
            raise
        for j in range(old.mask + 1):
            if old.slots[j].sid1 != 0:
                _index_place(ix, old.slots[j].lo, old.slots[j].hi, old.slots[j].sid1 - 1)
        PyMem_Free(old.slots)
    _index_place(ix, lo, hi, sid)
    return 0
