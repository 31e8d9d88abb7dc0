# cython: language_level=3
"""Protobuf wire-format reading shared by the compiled readers (``_pprof_c``, ``_otlp_c``):
one varint and one field-skipping rule, so a malformed input means the same in both (``bad``
set: the caller takes the message path, which gives the library's answer or its exact error)."""

from libc.stdint cimport uint8_t, uint64_t


cdef inline uint64_t varint(const uint8_t* b, Py_ssize_t* i, Py_ssize_t end, bint* bad) noexcept nogil:
    """The varint at b[i] (i advances past it); sets *bad when it is cut off or too long."""
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef uint8_t c
    while True:
        if i[0] >= end or shift > 63:
            bad[0] = True
            return 0
        c = b[i[0]]
        i[0] += 1
        if shift == 63 and c > 1:
            bad[0] = True  # more than 64 bits
            return 0
        v |= (<uint64_t>(c & 0x7F)) << shift
        if c < 0x80:
            return v
        shift += 7


cdef inline Py_ssize_t skip(const uint8_t* b, Py_ssize_t i, int wire, Py_ssize_t end, bint* bad) noexcept nogil:
    """The index after an unknown field's payload."""
    cdef uint64_t n
    if wire == 0:
        varint(b, &i, end, bad)
        return i
    if wire == 1:
        i += 8
    elif wire == 5:
        i += 4
    elif wire == 2:
        n = varint(b, &i, end, bad)
        if n > <uint64_t>(end - i):
            bad[0] = True
            return end
        i += <Py_ssize_t>n
    else:  # groups and invalid wire types: the library decides
        bad[0] = True
        return end
    if i > end:
        bad[0] = True
        return end
    return i


cdef inline Py_ssize_t sub_end(const uint8_t* b, Py_ssize_t* i, Py_ssize_t end, bint* bad) noexcept nogil:
    """Read a length prefix at b[i]; the end of that sub-message."""
    cdef uint64_t n = varint(b, i, end, bad)
    if bad[0] or n > <uint64_t>(end - i[0]):
        bad[0] = True
        return end
    return i[0] + <Py_ssize_t>n
