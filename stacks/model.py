"""Frames, interned stacks, labels and profiles.

A profile is two numpy arrays over a shared :class:`StackTable`: unique stack
ids and their counts. Merging many profiles that share a table is a
concatenate plus a sort-and-reduce, which keeps counts exact (int64).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import numpy as np


class Kind(StrEnum):
    """What a frame is; decides its colour in the viewer."""

    USER = "user"
    KERNEL = "kernel"
    METADATA = "metadata"


class Frame(NamedTuple):
    """One frame of a stack: a function name, its kind and, when the source knows it, its
    location (``file`` and 1-based ``line``; "" and 0 when unknown).

    Two frames of one function at different lines are different frames: a stack keeps the
    line each call was made from. Reads aggregate by function unless asked for lines
    (:class:`StackTable` ``lines``), so data without locations reads as it always has.
    """

    name: str
    kind: Kind = Kind.USER
    file: str = ""
    line: int = 0

    @property
    def location(self) -> str:
        """``file:line``, ``file``, ``:line`` (no file known) or "" when nothing is known."""
        if self.line:
            return f"{self.file}:{self.line}"
        return self.file

    @property
    def located(self) -> bool:
        """Whether the frame carries a file or a line."""
        return bool(self.file or self.line)

    def function(self) -> Frame:
        """The frame without its location (the function it is in)."""
        return Frame(self.name, self.kind) if (self.file or self.line) else self

    @staticmethod
    def user(name: str) -> Frame:
        return Frame(name, Kind.USER)

    @staticmethod
    def kernel(name: str) -> Frame:
        return Frame(name, Kind.KERNEL)

    @staticmethod
    def metadata(name: str) -> Frame:
        return Frame(name, Kind.METADATA)


Stack = tuple[Frame, ...]
"""Frames root first."""


def function_stack(stack: Stack) -> Stack:
    """``stack`` with every frame's location dropped (itself when it has none)."""
    if not any(f.file or f.line for f in stack):
        return stack
    return tuple(f.function() for f in stack)


class StackTable:
    """Append-only interner: stack tuple <-> dense integer id.

    Ids never change once given, so profiles built on one table stay valid as
    the table grows. Sharing one table between profiles makes merges cheap.

    ``lines`` is what a store read into this table keeps: False (the default) aggregates by
    function (stored frames lose their locations, so one function's lines merge), True
    keeps every frame's file and line. :meth:`intern` itself never changes a stack.
    """

    __slots__ = ("_ids", "_stacks", "lines")

    def __init__(self, lines: bool = False) -> None:
        self._ids: dict[Stack, int] = {}
        self._stacks: list[Stack] = []
        self.lines = lines

    def intern(self, stack: Iterable[Frame]) -> int:
        """Return the id of ``stack``, adding it if new."""
        key = tuple(stack)
        sid = self._ids.get(key)
        if sid is None:
            sid = len(self._stacks)
            self._ids[key] = sid
            self._stacks.append(key)
        return sid

    def stack(self, sid: int) -> Stack:
        """Frames of stack ``sid``, root first."""
        return self._stacks[sid]

    def __len__(self) -> int:
        return len(self._stacks)


@dataclass(frozen=True)
class Labels(Mapping[str, str]):
    """An immutable, hashable, ordered label set (one series)."""

    items_: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def of(mapping: Mapping[str, str] | Iterable[tuple[str, str]] = (), **kw: str) -> Labels:
        """Build labels from a mapping or pairs; empty values are dropped."""
        d = dict(mapping.items() if isinstance(mapping, Mapping) else mapping)
        d.update(kw)
        return Labels(tuple(sorted((str(k), str(v)) for k, v in d.items() if v != "")))

    def __getitem__(self, key: str) -> str:
        for k, v in self.items_:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self.items_)

    def __len__(self) -> int:
        return len(self.items_)

    def __hash__(self) -> int:
        return hash(self.items_)

    def with_(self, **kw: str) -> Labels:
        """A copy with some labels set (or removed, when set to '')."""
        d = dict(self.items_)
        d.update(kw)
        return Labels.of(d)

    def __repr__(self) -> str:
        inner = ",".join(f'{k}="{v}"' for k, v in self.items_)
        return "{" + inner + "}"


_EMPTY_I64 = np.zeros(0, dtype=np.int64)
COUNT_MAX = (1 << 63) - 1
"""The largest count a stack can hold: sums saturate here rather than wrap."""


@dataclass(frozen=True, eq=False)
class Profile:
    """Counts per interned stack. ``ids`` are unique and sorted; ``counts`` > 0."""

    table: StackTable
    ids: np.ndarray
    counts: np.ndarray

    @staticmethod
    def empty(table: StackTable | None = None) -> Profile:
        return Profile(table or StackTable(), _EMPTY_I64, _EMPTY_I64)

    @staticmethod
    def from_pairs(
        pairs: Iterable[tuple[Iterable[Frame], int]], table: StackTable | None = None
    ) -> Profile:
        """Build from (stack, count) pairs; repeated stacks are summed."""
        table = table if table is not None else StackTable()
        ids: list[int] = []
        counts: list[int] = []
        for stack, count in pairs:
            ids.append(table.intern(stack))
            counts.append(int(count))
        return Profile.from_arrays(
            table, np.asarray(ids, dtype=np.int64), np.asarray(counts, dtype=np.int64)
        )

    @staticmethod
    def from_arrays(table: StackTable, ids: np.ndarray, counts: np.ndarray) -> Profile:
        """Normalise raw (maybe repeated, unsorted) id/count arrays into a profile."""
        ids, counts = _reduce(np.asarray(ids, dtype=np.int64), np.asarray(counts, dtype=np.int64))
        return Profile(table, ids, counts)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def __len__(self) -> int:
        return len(self.ids)

    def items(self) -> Iterator[tuple[Stack, int]]:
        """(stack, count) pairs in id order."""
        stack = self.table.stack
        for sid, c in zip(self.ids.tolist(), self.counts.tolist(), strict=True):
            yield stack(sid), c

    def as_dict(self) -> dict[Stack, int]:
        return dict(self.items())

    def rebase(self, table: StackTable) -> Profile:
        """The same profile expressed on another table (interning as needed)."""
        if table is self.table:
            return self
        mapping = np.fromiter(
            (table.intern(self.table.stack(s)) for s in self.ids.tolist()), dtype=np.int64, count=len(self.ids)
        )
        return Profile.from_arrays(table, mapping, self.counts)

    def scale(self, factor: float) -> Profile:
        """Counts multiplied by ``factor`` and rounded; zero counts are dropped."""
        counts = np.rint(self.counts * factor).astype(np.int64)
        keep = counts > 0
        return Profile(self.table, self.ids[keep], counts[keep])

    def map_stacks(self, fn: Callable[[Stack], Stack | None], table: StackTable | None = None) -> Profile:
        """Apply ``fn`` to every stack (None drops it); equal results are merged."""
        table = table if table is not None else self.table
        pairs = ((fn(s), c) for s, c in self.items())
        return Profile.from_pairs(((s, c) for s, c in pairs if s is not None), table)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Profile):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]


def _reduce(ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum counts of equal ids; drop non-positive totals.

    Exact in int64; a total past :data:`COUNT_MAX` (only hostile or corrupt
    input gets there) saturates instead of wrapping negative and vanishing.
    """
    if ids.size == 0:
        return _EMPTY_I64, _EMPTY_I64
    order = np.argsort(ids)  # sums do not need a stable order; introsort beats timsort on ids
    ids = ids[order]
    counts = counts[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    uids = ids[starts]
    if int(np.abs(counts).max()) > COUNT_MAX // counts.size:
        # The int64 sums could wrap: add as Python ints, then clamp.
        exact = np.add.reduceat(counts.astype(object), starts)
        sums = np.fromiter((min(int(s), COUNT_MAX) for s in exact), np.int64, len(exact))
    else:
        sums = np.add.reduceat(counts, starts)
    keep = sums > 0
    return uids[keep], sums[keep]


def merge(profiles: Iterable[Profile], table: StackTable | None = None) -> Profile:
    """Merge any number of profiles into one on ``table`` (default: the first's)."""
    profiles = list(profiles)
    if not profiles:
        return Profile.empty(table)
    table = table if table is not None else profiles[0].table
    parts = [p.rebase(table) for p in profiles]
    ids = np.concatenate([p.ids for p in parts])
    counts = np.concatenate([p.counts for p in parts])
    return Profile.from_arrays(table, ids, counts)


def combine(a: Profile, b: Profile) -> Profile:
    """Merge two profiles into a new one; associative and commutative."""
    return merge([a, b])


