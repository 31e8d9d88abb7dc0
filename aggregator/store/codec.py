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


def decode_many(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode many windows at once: (ids, counts, lengths), ids/counts concatenated.

    Only the zlib inflate runs per blob; the prefix sums that undo the delta
    coding run once over everything (a render over an hour reads ~10^4 blobs).
    """
    if not blobs:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    unpack = _HEADER.unpack_from
    hsize = _HEADER.size
    deltas: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    lengths = np.empty(len(blobs), dtype=np.int64)
    for i, blob in enumerate(blobs):
        version, icode, ccode, n = unpack(blob)
        if version != VERSION:
            raise ValueError(f"unknown window encoding version {version}")
        raw = zlib.decompress(memoryview(blob)[hsize:])
        idt = _DTYPES[icode]
        deltas.append(np.frombuffer(raw, dtype=idt, count=n))
        counts.append(np.frombuffer(raw, dtype=_DTYPES[ccode], count=n, offset=n * idt.itemsize))
        lengths[i] = n
    d = np.concatenate(deltas).astype(np.int64)
    c = np.concatenate(counts).astype(np.int64)
    ids = np.cumsum(d)
    # Each blob's deltas restart from 0: subtract the running total reached before it.
    ends = np.cumsum(lengths)
    before = np.zeros(len(blobs), dtype=np.int64)
    nonempty_prev = ends[:-1] > 0
    before[1:][nonempty_prev] = ids[ends[:-1][nonempty_prev] - 1]
    ids -= np.repeat(before, lengths)
    return ids, c, lengths
