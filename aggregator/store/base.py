"""The storage Protocol every backend (SQLite, ClickHouse) implements.

Writes are *additive*: writing a profile for a (series, window) that already
has data adds the counts. That lets the aggregator write every acknowledged
push straight through (durable before the 2xx) and lets several stateless
aggregators share one ClickHouse without coordination.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from stacks.model import Frame, Kind, Labels, Profile, StackTable
from stacks.selector import Selector


@dataclass(frozen=True)
class SeriesWindow:
    """One series' profile in one window ``[start, start + window_seconds)``."""

    labels: Labels
    start: int  # unix seconds, a multiple of the window size
    profile: Profile


# ``group_by`` of :meth:`MergedReads.read_merged` / :meth:`MergedReads.totals` that puts every
# series in one group: no series has a label named "", and an absent label reads as "", which
# ``Labels.of`` drops, so every series' group key is ``{}``.
MERGE_ALL: tuple[str, ...] = ("",)


class StoreError(RuntimeError):
    """The backend failed (disk full, read-only, server down). Maps to a 5xx."""


@runtime_checkable
class Store(Protocol):
    """A profile store. All methods are coroutines; errors raise StoreError."""

    async def open(self) -> None:
        """Create schema if needed and connect."""

    async def close(self) -> None:
        """Flush and release resources."""

    async def write(self, windows: Sequence[SeriesWindow]) -> None:
        """Add these profiles. Durable when this returns."""

    async def read(
        self, selector: Selector, start: int, end: int, table: StackTable
    ) -> list[SeriesWindow]:
        """Every stored window with ``start <= window.start < end`` whose labels match,
        one entry per (series, window) with counts summed, profiles on ``table``."""

    async def label_names(self, start: int, end: int, selector: Selector | None = None) -> list[str]:
        """Sorted label names seen in windows overlapping [start, end) (of series matching
        ``selector`` when given: the query routes pass the profile type's matcher)."""

    async def label_values(self, name: str, selector: Selector, start: int, end: int) -> list[str]:
        """Sorted values of label ``name`` among matching series in [start, end)."""

    async def delete_before(self, t: int) -> int:
        """Delete windows with start < t (retention). Returns windows deleted, if known."""


@runtime_checkable
class MergedReads(Protocol):
    """Optional aggregate reads a backend may offer besides :class:`Store` (both SQLite and
    ClickHouse do). ``aggregator.query`` uses them when present, else falls back to
    :meth:`Store.read`; the answers must equal summing what ``read`` returns.

    ``group_by`` picks the groups: empty (the default) means one group per series, keyed by
    its labels; label names mean one group per combination of those labels' values, keyed by
    ``Labels`` of just those (an absent label reads as "" and so is left out of the key);
    :data:`MERGE_ALL` therefore means one group, keyed ``{}``. Grouping belongs in the backend
    because the answer then has one row per (group, stack), not one per (series, stack).
    """

    async def read_merged(
        self, selector: Selector, start: int, end: int, table: StackTable, group_by: Sequence[str] = ()
    ) -> dict[Labels, Profile]:
        """One profile per group over the matching windows with ``start <= window.start < end``;
        groups without samples are absent."""

    async def totals(
        self, selector: Selector, start: int, end: int, group_by: Sequence[str] = ()
    ) -> list[tuple[Labels, int, int]]:
        """(group labels, window start, samples) for each group and window with samples, in no
        particular order; used by the timeline."""


@runtime_checkable
class PrunedMergedReads(Protocol):
    """Optional read for the flame JSON of ``metadata=1`` (ClickHouse offers it): the metadata
    groups' profiles, except that every (group, first frame) cell whose tree node is provably
    lighter than ``min_share`` of the root comes back as ONE one-frame stack ``(first frame,)``
    carrying the cell's total. ``stacks.tree.metadata_tree`` with the same ``min_share`` never
    expands a node under that floor, so it builds the same trie (node for node, same
    ``nodes_before``) from this answer as from :meth:`MergedReads.read_merged`; the answer is
    only fit for that (docs/query-perf.md, "Round 3"). ``min_share`` 0 returns ``read_merged``.
    """

    async def read_merged_pruned(
        self, selector: Selector, start: int, end: int, table: StackTable, levels: Sequence[str], min_share: float
    ) -> dict[Labels, Profile]:
        """``read_merged(..., group_by=levels)`` with the invisible first-frame cells collapsed."""


def invisible_cells(
    paths: Sequence[tuple[str, ...]], firsts: Sequence[Frame], group: np.ndarray, first: np.ndarray,
    counts: np.ndarray, floor: float,
) -> np.ndarray:
    """Which (group, first frame) cells are provably under ``floor`` in the metadata flame tree.

    ``paths[g]`` is group g's metadata path (the label values it is grafted under);
    ``first[i]`` is cell i's first frame, ``firsts[first[i] - 1]`` (0 is the empty stack, never
    cut; ids past ``len(firsts)`` are never cut either). A cell's stacks all pass through the
    node ``paths[g] + (first frame,)``; the true weight W of that node is at most

        U = the cells of every group with the same path and first frame
          + the totals of groups whose path runs through the node (a longer path that continues
            with the first frame's name, when that frame is a metadata frame)
          + the cells of groups with a shorter path whose first frame is the metadata frame that
            continues it toward the node (their stacks may or may not follow the rest of the way).

    Nothing else can reach the node, so ``U < floor`` proves ``W < floor``: the node is never
    kept nor expanded, and its subtree only shows through its total. Returns a bool per cell.
    """
    n_firsts = len(firsts) + 2  # 0 = empty stack, len(firsts) + 1 = unknown
    pid_of: dict[tuple[str, ...], int] = {}
    gp = np.fromiter((pid_of.setdefault(tuple(p), len(pid_of)) for p in paths), dtype=np.int64,
                     count=len(paths))
    first = np.minimum(first.astype(np.int64), n_firsts - 1)
    pc = gp[group]
    key = pc * n_firsts + first
    ukey, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(-1)
    node = np.bincount(inv, weights=counts, minlength=ukey.size)
    extra_path = np.zeros(len(pid_of), dtype=np.float64)
    path_total = np.bincount(pc, weights=counts, minlength=len(pid_of))
    meta_first = {f.name: i + 1 for i, f in enumerate(firsts) if Kind(f.kind) == Kind.METADATA}

    def cell(q: int, fi: int) -> int:
        j = int(np.searchsorted(ukey, q * n_firsts + fi))
        return j if j < ukey.size and ukey[j] == q * n_firsts + fi else -1

    base = node.copy()
    for path, p in pid_of.items():
        for k in range(len(path)):  # shorter paths Q = path[:k] that this path extends
            q = pid_of.get(path[:k])
            fi = meta_first.get(path[k])
            if q is None or fi is None:
                continue
            j = cell(q, fi)
            if j < 0:
                continue
            node[j] += path_total[p]  # every sample of this path passes through Q + (path[k],)
            extra_path[p] += base[j]  # Q's stacks that start with path[k] may follow it down here
    bound = node[inv] + extra_path[pc]
    return (first > 0) & (first <= len(firsts)) & (bound < floor)
