# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled fast path of ``stacks.folded``: folded lines in raw UTF-8 bytes -> stack ids.

:class:`StackIndex` maps the exact bytes of a line's stack part (everything
before the last space) to its id on one :class:`stacks.model.StackTable`.
:meth:`StackIndex.scan` walks a body once: it finds each line with
``memchr``, reads the ASCII count backwards from the line end, hashes the
stack bytes and looks them up. A line of the simple shape (``STACK DIGITS``,
non-empty stack, count below 2**63) whose stack is known gives an
(id, count) pair in C. Every other non-empty line (a miss, CR, blanks, signs,
bad or huge counts, no space...) is handed back by line number and byte
range: Python runs the ordinary code on it, so results and errors stay those
of the pure parser.

Stack identity is a 128-bit keyed hash, SipHash-1-3 with 128-bit output and a
random key per index (``os.urandom``). SipHash is a keyed pseudo-random
function: without the key nobody can prepare colliding stacks, or stacks that
pile into one bucket, offline; two given different stacks share a hash with
probability ~2**-128. Storing only the hash keeps the index at 24 bytes per
stack instead of a copy of each stack's text. A hit also proves the line is
valid UTF-8 (its bytes equal those of a stack that was decoded before).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memchr, memcpy

from stacks._hashing cimport (
    C_ROUNDS,
    D_ROUNDS,
    Index,
    index_alloc,
    index_find,
    index_free,
    index_put,
    sip128,
)

import os

cdef enum:
    MIN_CAPACITY = 1024


def siphash128(bytes key, bytes data, int c_rounds=C_ROUNDS, int d_rounds=D_ROUNDS) -> bytes:
    """SipHash-c-d with 128-bit output (for tests against the reference vectors)."""
    cdef uint64_t k0, k1, lo, hi
    cdef uint8_t out[16]
    if PyBytes_GET_SIZE(key) != 16:
        raise ValueError("the key is 16 bytes")
    memcpy(&k0, PyBytes_AS_STRING(key), 8)
    memcpy(&k1, PyBytes_AS_STRING(key) + 8, 8)
    sip128(k0, k1, <const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), c_rounds, d_rounds, &lo, &hi)
    memcpy(out, &lo, 8)
    memcpy(out + 8, &hi, 8)
    return PyBytes_FromStringAndSize(<char*>out, 16)


# -- the index ----------------------------------------------------------------------------------

cdef class StackIndex:
    """Stack bytes -> stack id on one ``StackTable``; at most ``limit`` entries.

    A keyed 128-bit hash of the stack text in the shared ``Index`` (see
    ``stacks/_hashing.pxd``). Ids are only ever added by Python after it
    interned the stack on ``table``, so a hit is always a valid id there.
    """

    cdef Index ix
    cdef uint64_t k0, k1
    cdef readonly object table
    cdef readonly Py_ssize_t limit

    def __cinit__(self, table: object, Py_ssize_t limit):
        if limit < 0:
            raise ValueError(f"limit={limit} must be >= 0")
        key = os.urandom(16)
        memcpy(&self.k0, PyBytes_AS_STRING(key), 8)
        memcpy(&self.k1, PyBytes_AS_STRING(key) + 8, 8)
        self.table = table
        self.limit = limit
        self.ix.slots = NULL
        index_alloc(&self.ix, MIN_CAPACITY)

    def __dealloc__(self):
        index_free(&self.ix)

    def __len__(self) -> int:
        return self.ix.n

    def clear(self) -> None:
        """Forget every stack and shrink back to the initial size."""
        index_alloc(&self.ix, MIN_CAPACITY)

    cdef inline void _hash(self, const uint8_t* p, Py_ssize_t n, uint64_t* lo, uint64_t* hi) noexcept nogil:
        sip128(self.k0, self.k1, p, n, C_ROUNDS, D_ROUNDS, lo, hi)

    cdef inline int64_t _find(self, uint64_t lo, uint64_t hi) noexcept nogil:
        """The stack id, or -1."""
        return index_find(&self.ix, lo, hi)

    def get(self, bytes stack) -> int:
        """The id of the stack whose folded text is ``stack`` (UTF-8), or -1."""
        cdef uint64_t lo, hi
        self._hash(<const uint8_t*>PyBytes_AS_STRING(stack), PyBytes_GET_SIZE(stack), &lo, &hi)
        return self._find(lo, hi)

    def put(self, bytes stack, int64_t sid) -> bool:
        """Remember ``stack`` -> ``sid``; False (and nothing stored) once ``limit`` entries are held."""
        cdef uint64_t lo, hi
        if sid < 0:
            raise ValueError(f"stack id {sid} is negative")
        self._hash(<const uint8_t*>PyBytes_AS_STRING(stack), PyBytes_GET_SIZE(stack), &lo, &hi)
        if self._find(lo, hi) >= 0:
            return True
        if self.ix.n >= self.limit:
            return False
        index_put(&self.ix, lo, hi, sid)
        return True

    def scan(self, bytes body) -> tuple:
        """One pass over folded text.

        Returns ``(hits, ids, counts, rest)``: the first ``hits`` int64s of the
        bytearrays ``ids`` and ``counts`` (native byte order) are the known
        lines; ``rest`` lists ``(lineno, start, end)`` (1-based line number,
        byte range without the newline) of every other non-empty line, in
        order. Empty lines are skipped: they are blank in any parser.
        """
        cdef const uint8_t* b = <const uint8_t*>PyBytes_AS_STRING(body)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
        cdef Py_ssize_t pos = 0, start, end, d, sp, hits = 0, lineno = 0
        cdef const uint8_t* nl
        cdef uint64_t lo, hi, v, c
        cdef int64_t sid
        cdef bint simple
        # Outputs grow by doubling from a guess of 200 bytes a line (a rescan to count lines costs more).
        cdef Py_ssize_t cap = size // 200 + 64
        ids_buf = PyByteArray_FromStringAndSize(NULL, cap * 8)
        counts_buf = PyByteArray_FromStringAndSize(NULL, cap * 8)
        cdef int64_t* ids = <int64_t*>PyByteArray_AS_STRING(ids_buf)
        cdef int64_t* counts = <int64_t*>PyByteArray_AS_STRING(counts_buf)
        rest = []
        while pos <= size:
            start = pos
            nl = <const uint8_t*>memchr(b + pos, 10, size - pos)
            end = nl - b if nl != NULL else size
            pos = end + 1
            lineno += 1
            if end == start:
                continue
            # The count: the digits at the end of the line, then one space, then a non-empty stack.
            d = end
            while d > start and 48 <= b[d - 1] <= 57:
                d -= 1
            sp = d - 1
            simple = d < end and sp > start and b[sp] == 32
            sid = -1
            if simple:
                v = 0
                while d < end:
                    c = b[d] - 48
                    # Counts at or above 2**63 go to Python, which does what the pure parser does.
                    if v > (<uint64_t>0x7FFFFFFFFFFFFFFF - c) // 10:
                        simple = False
                        break
                    v = v * 10 + c
                    d += 1
            if simple:
                self._hash(b + start, sp - start, &lo, &hi)
                sid = self._find(lo, hi)
            if sid >= 0:
                if hits == cap:
                    cap *= 2
                    PyByteArray_Resize(ids_buf, cap * 8)
                    PyByteArray_Resize(counts_buf, cap * 8)
                    ids = <int64_t*>PyByteArray_AS_STRING(ids_buf)
                    counts = <int64_t*>PyByteArray_AS_STRING(counts_buf)
                ids[hits] = sid
                counts[hits] = <int64_t>v
                hits += 1
            else:
                rest.append((lineno, start, end))
        return hits, ids_buf, counts_buf, rest
