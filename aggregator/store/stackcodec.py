"""Encoding 2 of a SQLite ``stacks`` row: a stack as the shared prefix of an earlier stack
plus its own frames, in varints, each frame carrying its own source location.

Encoding 1 (databases from before) held every frame of a stack as a little-endian uint32
id of a ``frames`` row, and a located frame (a function at one file and line) needed a row
of its own. Kept by line, real stacks (py-spy on the demo and on pytest) have 1.6x as many
distinct stacks as by function, nearly all of them the same function stack at another line,
so encoding 1 cost ~1.5x the bytes per sample. Encoding 2 (docs/aggregator.md):

- ``varint(prefix)``: how many leading frames equal those of stack ``base``;
- ``varint(base)`` (only when ``prefix`` > 0): the id of that earlier stack;
- when the first remaining frame is the base's next frame at another line (same function and
  file: a line variant), ``varint(0)`` and ``varint(zigzag(the difference of the lines))``;
- then each remaining frame: ``varint(function << 2 | mode)``, ``function`` the id of the
  function's (unlocated) ``frames`` row, and by ``mode``: 0 no location; 1 ``varint(file)``
  (a ``files`` id, 0 for none) and ``varint(line)``; 2 ``varint(line)``, the file that of
  the last located frame before it in this blob (a function calls on in its own module);
  3 ``varint(file)`` and ``varint(zigzag(line))`` (a negative line, from bad input kept exactly).

A line variant of a stored stack then costs its id, its hash and a few bytes: the frames
from the first one that differs. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# (function frame id, file id, line): file 0 and line 0 is an unlocated frame.
Located = tuple[int, int, int]
# The function id of a decoded first frame (SAME, 0, d): the base's frame after the prefix,
# its line + d (function ids are rowids, from 1).
SAME = 0


class StackCodecError(ValueError):
    """A blob that is not a valid encoding-2 stack (damaged data)."""


def _varint(out: bytearray, v: int) -> None:
    if v < 0:
        raise ValueError(f"varint of a negative value {v}")
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _zigzag(v: int) -> int:
    return v << 1 if v >= 0 else ((-v) << 1) - 1


def _unzigzag(z: int) -> int:
    return z >> 1 if not z & 1 else -((z + 1) >> 1)


def encode(prefix: int, base: int, frames: Sequence[Located], after: Located | None = None) -> bytes:
    """A stack: its first ``prefix`` frames are those of stack ``base`` (ignored when
    ``prefix`` is 0), then ``frames`` (function ids from 1). ``after`` is the base's frame right
    after the prefix: when the first of ``frames`` is that function in that file at another line
    (a line variant), it is written as ``varint(0)`` and ``varint(zigzag(its line - after's))``."""
    out = bytearray()
    _varint(out, prefix)
    if prefix:
        _varint(out, base)
    if prefix and after is not None and frames and (after[1] or after[2]):
        func, file, line = frames[0]
        if func == after[0] and file == after[1] and (file or line) and abs(line - after[2]) < 1 << 62:
            _varint(out, 0)
            _varint(out, _zigzag(line - after[2]))
            frames = frames[1:]
    last = -1  # the file of the last located frame written
    for func, file, line in frames:
        if func < 1:
            raise ValueError(f"function id {func}: ids start at 1")
        if not (file or line):
            _varint(out, func << 2)
        elif line < 0:
            _varint(out, func << 2 | 3)
            _varint(out, file)
            _varint(out, _zigzag(line))
            last = file
        elif file == last:
            _varint(out, func << 2 | 2)
            _varint(out, line)
        else:
            _varint(out, func << 2 | 1)
            _varint(out, file)
            _varint(out, line)
            last = file
    return bytes(out)


def resolve(base: Sequence[Located], prefix: int, frames: Sequence[Located]) -> list[Located]:
    """The whole stack of a decoded blob whose base's frames are ``base``."""
    out = list(base[:prefix])
    if frames and frames[0][0] == SAME:
        func, file, line = base[prefix]
        out.append((func, file, line + frames[0][2]))
        frames = frames[1:]
    return out + list(frames)


def _varints(blob: bytes) -> list[int]:
    values: list[int] = []
    v = shift = 0
    for b in blob:
        v |= (b & 0x7F) << shift
        if b & 0x80:
            shift += 7
            if shift > 63:
                raise StackCodecError("varint longer than 64 bits")
            continue
        values.append(v)
        v = shift = 0
    if shift:
        raise StackCodecError("blob ends inside a varint")
    return values


def _parse(values: list[int], i: int, n: int) -> tuple[int, int, list[Located]]:
    """One stack from ``values[i:n]``, the varints of its blob."""
    if i >= n:
        raise StackCodecError("empty blob")
    prefix = values[i]
    if prefix and n - i < 2:
        raise StackCodecError("blob ends before its base")
    base = values[i + 1] if prefix else 0
    it = iter(values[i + 2 if prefix else i + 1 : n])
    frames: list[Located] = []
    append = frames.append
    last = -1
    try:
        for head in it:
            mode = head & 3
            if not head:
                if frames or not prefix:
                    raise StackCodecError("a line variant of its base's frame that is not the first after a prefix")
                append((SAME, 0, _unzigzag(next(it))))
            elif not mode:
                append((head >> 2, 0, 0))
            elif mode == 2:
                if last < 0:
                    raise StackCodecError("a frame takes the file of a located frame before it, and there is none")
                append((head >> 2, last, next(it)))
            else:
                last = next(it)
                line = next(it)
                append((head >> 2, last, _unzigzag(line) if mode == 3 else line))
    except StopIteration:
        raise StackCodecError("blob ends inside a located frame") from None
    return prefix, base, frames


def decode(blob: bytes) -> tuple[int, int, list[Located]]:
    """Inverse of :func:`encode`: (prefix, base (0 when prefix is 0), frames)."""
    values = _varints(blob)
    return _parse(values, 0, len(values))


def head(blob: bytes) -> tuple[int, int]:
    """(prefix, base) of a blob, without decoding its frames."""
    got: list[int] = []
    v = shift = 0
    for b in blob:
        v |= (b & 0x7F) << shift
        if b & 0x80:
            shift += 7
            if shift > 63:
                break
            continue
        got.append(v)
        if not got[0]:
            return 0, 0
        if len(got) == 2:
            return got[0], got[1]
        v = shift = 0
    raise StackCodecError("blob ends before its prefix and base")


def decode_many(blobs: Sequence[bytes]) -> list[tuple[int, int, list[Located]]]:
    """:func:`decode` of many blobs, the varints of all of them read at once (numpy): a cold
    read resolves tens of thousands of stacks."""
    if not blobs:
        return []
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
    if not lengths.all():
        raise StackCodecError("empty blob")
    raw = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    ends = raw < 0x80
    bounds = np.cumsum(lengths)
    if not ends[bounds - 1].all():
        raise StackCodecError("blob ends inside a varint")
    last = np.flatnonzero(ends)
    first = np.empty_like(last)
    first[0] = 0
    first[1:] = last[:-1] + 1
    pos = np.arange(raw.size, dtype=np.int64) - np.repeat(first, last - first + 1)
    if int(pos.max()) > 9:
        raise StackCodecError("varint longer than 64 bits")
    parts = (raw & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    values = np.add.reduceat(parts, first).tolist()
    per_blob = np.add.reduceat(ends.astype(np.int64), bounds - lengths).tolist()
    out = []
    i = 0
    for n in per_blob:
        out.append(_parse(values, i, i + n))
        i += n
    return out


def canonical(frames: Sequence[Located]) -> bytes:
    """The bytes a stack is known by (hashed for its ``stacks.hash``): the whole stack,
    whatever its base. A stack without locations is hashed as encoding 1 hashed it (its
    function ids as uint32), so a database's earlier rows are found again."""
    if not any(file or line for _, file, line in frames):
        return b"".join(func.to_bytes(4, "little") for func, _, _ in frames)
    return b"L" + encode(0, 0, frames)
