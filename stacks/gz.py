"""Bounded gzip decompression for untrusted bodies (pure: bytes in, bytes out).

A few kilobytes of gzip can expand to gigabytes, so every inflate here stops
as soon as the output would pass ``limit`` instead of inflating first and
checking later.
"""

from __future__ import annotations

import zlib

from stacks.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"

# Inflate in steps of this many output bytes, so a bomb costs at most
# ``limit`` plus one step of memory.
_STEP = 1 << 20


def _too_big(limit: int) -> InputError:
    return InputError(
        f"gzip body decompresses past the limit of {limit} bytes; "
        "send smaller pushes or raise --max-decompressed-bytes"
    )


def gunzip_capped(data: bytes, limit: int) -> bytes:
    """Decompress gzip ``data`` (one or more members) to at most ``limit`` bytes.

    Raises :class:`InputError` when the data is not gzip, is truncated or
    corrupt, has trailing garbage, or decompresses past ``limit``.
    """
    if limit < 0:
        raise ValueError("limit must be >= 0")
    data = bytes(data)
    if not data.startswith(GZIP_MAGIC):
        raise InputError(
            f"body is not gzip (first bytes {data[:4].hex() or 'empty'}, expected 1f8b); "
            "send gzip data or drop the Content-Encoding: gzip header"
        )
    out = bytearray()
    rest = data
    while rest:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk = rest
        try:
            while True:
                room = limit - len(out)
                # Ask for one byte more than fits so that "exactly at the limit"
                # and "past the limit" can be told apart.
                piece = d.decompress(chunk, min(_STEP, room + 1))
                out += piece
                if len(out) > limit:
                    raise _too_big(limit)
                chunk = d.unconsumed_tail
                if d.eof:
                    break
                if not chunk and not piece:
                    # No more input and nothing came out: the stream stops early.
                    raise InputError("gzip body is truncated (the stream ends before its trailer)")
        except zlib.error as e:
            raise InputError(f"gzip body is corrupt: {e}") from None
        rest = d.unused_data
        if rest and not rest.startswith(GZIP_MAGIC):
            if rest.strip(b"\x00"):
                raise InputError(
                    f"gzip body has {len(rest)} bytes of trailing data that is not another gzip member"
                )
            break  # zero padding after the last member is tolerated, as gzip(1) does
    return bytes(out)


def maybe_gunzip(data: bytes, limit: int) -> bytes:
    """Gunzip ``data`` if it starts with the gzip magic, else return it as is.

    Either way the result is at most ``limit`` bytes, or :class:`InputError`.
    """
    if data[:2] == GZIP_MAGIC:
        return gunzip_capped(data, limit)
    if len(data) > limit:
        raise InputError(
            f"body of {len(data)} bytes is past the limit of {limit} bytes; "
            "send smaller pushes or raise --max-decompressed-bytes"
        )
    return bytes(data)
