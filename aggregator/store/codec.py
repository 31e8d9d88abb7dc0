"""Compact encoding of one window's (stack id, count) arrays.

Ids are sorted and dense (assigned by the store), so their deltas are small;
both arrays are stored with the narrowest unsigned dtype that fits and then
zlib-compressed. Layout: 1 byte version, 1 byte id dtype code, 1 byte count
dtype code, 4 bytes little-endian length, zlib(delta_ids || counts).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_DTYPES = (np.dtype("<u1"), np.dtype("<u2"), np.dtype("<u4"), np.dtype("<u8"))
_HEADER = struct.Struct("<BBBI")
VERSION = 1


def _narrow(a: np.ndarray) -> tuple[int, np.ndarray]:
    top = int(a.max()) if a.size else 0
    for code, dt in enumerate(_DTYPES):
        if top <= np.iinfo(dt).max:
            return code, a.astype(dt, copy=False)
    raise ValueError("value does not fit in 64 bits")


def encode(ids: np.ndarray, counts: np.ndarray, level: int = 6) -> bytes:
    """Encode sorted unique non-negative ``ids`` with positive ``counts``."""
    ids = np.asarray(ids, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    deltas = np.diff(ids, prepend=0) if ids.size else ids
    icode, d = _narrow(deltas)
    ccode, c = _narrow(counts)
    body = zlib.compress(d.tobytes() + c.tobytes(), level)
    return _HEADER.pack(VERSION, icode, ccode, ids.size) + body


def decode(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode`: (ids int64, counts int64)."""
    version, icode, ccode, n = _HEADER.unpack_from(blob)
    if version != VERSION:
        raise ValueError(f"unknown window encoding version {version}")
    raw = zlib.decompress(memoryview(blob)[_HEADER.size :])
    idt, cdt = _DTYPES[icode], _DTYPES[ccode]
    deltas = np.frombuffer(raw, dtype=idt, count=n)
    counts = np.frombuffer(raw, dtype=cdt, count=n, offset=n * idt.itemsize)
    return np.cumsum(deltas, dtype=np.int64), counts.astype(np.int64)
