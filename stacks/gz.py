"""Bounded gzip decompression for untrusted bodies (pure: bytes in, bytes out).

A few kilobytes of gzip can expand to gigabytes, so every inflate here stops
as soon as the output would pass ``limit`` instead of inflating first and
checking later.

Inflate runs on ISA-L (the ``isal`` package) when it is importable, about
1.8x the speed of zlib on push bodies (bench/gunzip.py), and on the standard
``zlib`` module otherwise. Both give the same output and accept and reject
the same inputs, with the same messages but for the library's own words after
"corrupt:"; :data:`BACKEND` holds the one in use (tests run every case on both).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

from stacks.errors import InputError, LimitError

GZIP_MAGIC = b"\x1f\x8b"

# Inflate in steps of this many output bytes, so a bomb costs at most
# ``limit`` plus one step of memory. One step covers a typical push
# (~0.3 MB inflated), so the common case is a single inflate call whose
# output is returned without a copy. bench/gunzip.py --steps: larger steps
# or one ``limit + 1`` call gain nothing on push-sized bodies.
_STEP = 1 << 20

# Feed input in slices of at most this many bytes: each call copies what it
# leaves unconsumed into ``unconsumed_tail``, so passing all the remaining
# input every step would copy it again per output step (quadratic in body size).
_IN_STEP = 1 << 20
# Members after the first are fed from slices of this size, doubling up to
# _IN_STEP: what a member leaves of its last slice is copied into
# ``unused_data``, so a body of many tiny members must not copy ~_IN_STEP each.
_MEMBER_FEED = 1 << 12

# Real bodies are one gzip member (a few when streams were concatenated). A
# 16 MiB body of empty members would cost ~2 s of CPU, so more than this many
# is refused.
MAX_MEMBERS = 1024

# 16 + window bits: expect (and check) the gzip header and trailer.
_GZIP_WBITS = 16 + zlib.MAX_WBITS

# FLG bits 5-7 of a member header are reserved and must be zero (RFC 1952).
# zlib rejects them and ISA-L does not, so they are checked here for both.
_FLG_RESERVED = 0xE0


class Backend(NamedTuple):
    """A zlib-compatible inflate implementation."""

    name: str
    decompressobj: Callable[[int], Any]
    error: type[Exception]


ZLIB = Backend("zlib", zlib.decompressobj, zlib.error)


def load_isal() -> Backend | None:
    """The ISA-L backend, or None when the ``isal`` package is not importable."""
    try:
        from isal import isal_zlib
    except ImportError:
        return None
    return Backend("isal", isal_zlib.decompressobj, isal_zlib.error)


ISAL = load_isal()
BACKEND: Backend = ISAL or ZLIB


def _too_big(limit: int) -> LimitError:
    return LimitError(
        f"gzip body decompresses past the limit of {limit} bytes; "
        "send smaller pushes or raise --max-decompressed-bytes", limit
    )


def gunzip_capped(data: bytes, limit: int) -> bytes:
    """Decompress gzip ``data`` (one or more members) to at most ``limit`` bytes.

    Raises :class:`InputError` when the data is not gzip, is truncated or
    corrupt, has trailing garbage, or decompresses past ``limit``.
    """
    if limit < 0:
        raise ValueError("limit must be >= 0")
    data = bytes(data)  # no copy when it is bytes already
    if not data.startswith(GZIP_MAGIC):
        raise InputError(
            f"body is not gzip (first bytes {data[:4].hex() or 'empty'}, expected 1f8b); "
            "send gzip data or drop the Content-Encoding: gzip header"
        )
    backend = BACKEND
    view = memoryview(data)
    n = len(data)
    pieces: list[bytes] = []
    size = 0
    start = 0  # where the current member begins in data
    members = 0
    while start < n:
        members += 1
        if members > MAX_MEMBERS:
            raise InputError(f"gzip body has more than {MAX_MEMBERS} members: send one gzip stream")
        if n - start > 3 and data[start + 3] & _FLG_RESERVED:
            raise InputError("gzip body is corrupt: unknown header flags set")
        d = backend.decompressobj(_GZIP_WBITS)
        pos = start  # how far input has been fed to d
        feed = _IN_STEP if start == 0 else _MEMBER_FEED
        chunk: bytes | memoryview = b""
        try:
            while True:
                if not chunk and pos < n:
                    chunk = view[pos : pos + feed]
                    pos += len(chunk)
                    feed = min(2 * feed, _IN_STEP)
                # Ask for one byte more than fits so that "exactly at the limit"
                # and "past the limit" can be told apart. Never 0: that means "no cap".
                piece = d.decompress(chunk, min(_STEP, limit - size + 1))
                size += len(piece)
                if size > limit:
                    raise _too_big(limit)
                if piece:
                    pieces.append(piece)
                chunk = d.unconsumed_tail
                if d.eof:
                    break
                # ISA-L may take in all input before giving all its output, so an
                # empty tail alone does not mean the end: only no input and no output.
                if not chunk and not piece and pos >= n:
                    # No more input and nothing came out: the stream stops early.
                    raise InputError("gzip body is truncated (the stream ends before its trailer)")
        except backend.error as e:
            raise InputError(f"gzip body is corrupt: {e}") from None
        # At the end of a member the rest of the fed input is unused_data, so the
        # next member starts that far back from pos (offsets, not copies, so that
        # many small members cost no copy of the remaining body each).
        start = pos - len(d.unused_data)
        if start < n and not data.startswith(GZIP_MAGIC, start):
            if data.count(0, start) != n - start:
                raise InputError(
                    f"gzip body has {n - start} bytes of trailing data that is not another gzip member"
                )
            break  # zero padding after the last member is tolerated, as gzip(1) does
    # One piece (one member inflated in one step, the common case) is returned
    # as is: join of a single bytes object does not copy it.
    return b"".join(pieces)


def maybe_gunzip(data: bytes, limit: int) -> bytes:
    """Gunzip ``data`` if it starts with the gzip magic, else return it as is.

    Either way the result is at most ``limit`` bytes, or :class:`InputError`.
    """
    if data[:2] == GZIP_MAGIC:
        return gunzip_capped(data, limit)
    if len(data) > limit:
        raise LimitError(
            f"body of {len(data)} bytes is past the limit of {limit} bytes; "
            "send smaller pushes or raise --max-decompressed-bytes", limit
        )
    return bytes(data)
