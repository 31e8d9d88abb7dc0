"""The storage Protocols: :class:`Store`, which every backend (SQLite, ClickHouse) implements,
and the optional capabilities a backend may add (:class:`MergedReads`,
:class:`PrunedMergedReads`, :class:`TopTotals`, :class:`SharedCumulative`, :class:`Compacting`).

Writes are *additive*: writing a profile for a (series, window) that already
has data adds the counts. That lets the aggregator write every acknowledged
push straight through (durable before the 2xx) and lets several stateless
aggregators share one ClickHouse without coordination.

Every method the layers above call on a store is in one of these Protocols. They are
``runtime_checkable``: callers test a capability with ``isinstance(store, MergedReads)``
(which checks that the methods exist) and otherwise take the general path through
:class:`Store`. Backends do not inherit from them (a missing method would then silently
become the Protocol's empty body); ``tests/aggregator/test_store_capabilities.py`` pins
which Protocols each backend satisfies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from stacks.model import Labels, Profile, StackTable
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


def redacted(url: str) -> str:
    """``url`` with its password (and the query's ``password=``) replaced by ``***``: what
    /healthz, logs and error messages may show of a storage URL (issue 24, cause 7)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable storage URL>"
    netloc = parts.netloc
    if "@" in netloc:
        cred, _, host = netloc.rpartition("@")
        user = cred.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in cred else f"{user}@{host}"
    query = "&".join(
        (p.split("=", 1)[0] + "=***") if p.split("=", 1)[0].lower() in ("password", "pass", "pwd") else p
        for p in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class StoreError(RuntimeError):
    """The backend failed (disk full, read-only, server down). Maps to a 5xx."""


class SumOverflow(ValueError):
    """A read whose sums would pass the 64-bit count limit (2^63-1): answered 422, not 5xx."""


class CorruptionError(StoreError):
    """The store met damaged data (a malformed page, a row referring to one that is gone).
    Maps to a 503 naming it, and makes ``/healthz`` report "degraded" until a restart."""


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
        self, selector: Selector, start: int, end: int, group_by: Sequence[str] = (), step: int = 0
    ) -> list[tuple[Labels, int, int]]:
        """(group labels, window start, samples) for each group and window with samples, in no
        particular order; used by the timeline. With ``step``, the caller sums epoch-aligned
        buckets of ``step`` seconds: the store may answer per bucket (its start) and read rollup
        periods that fit in one (:func:`aggregator.store.rollup.max_resolution`)."""


@runtime_checkable
class PrunedMergedReads(Protocol):
    """Optional read for the flame JSON of ``metadata=1`` (ClickHouse offers it): the metadata
    groups' profiles, except that every (group, first frame) cell whose tree node is provably
    lighter than ``min_share`` of the root comes back as ONE one-frame stack ``(first frame,)``
    carrying the cell's total. The metadata flame tree with the same ``min_share`` never
    expands a node under that floor, so it builds the same trie (node for node, same
    ``nodes_before``) from this answer as from :meth:`MergedReads.read_merged`; the answer is
    only fit for that (docs/query-perf.md, "Round 3"). ``min_share`` 0 returns ``read_merged``.
    Which cells are provably invisible is :func:`stacks.metadata.invisible_cells`.
    """

    async def read_merged_pruned(
        self, selector: Selector, start: int, end: int, table: StackTable, levels: Sequence[str], min_share: float
    ) -> dict[Labels, Profile]:
        """``read_merged(..., group_by=levels)`` with the invisible first-frame cells collapsed."""


@runtime_checkable
class TopTotals(Protocol):
    """Optional for the timeline's ``group_by`` (both stores offer it): the ``n`` heaviest
    groups' totals per window, the rest summed per window, read in memory bounded by ``n`` x
    windows rather than groups x windows (issue 24, cause 3). ``aggregator.query.timeline``
    falls back to :meth:`MergedReads.totals` and :func:`aggregator.query.top_groups` without it."""

    async def top_totals(
        self, selector: Selector, start: int, end: int, group_by: str, n: int, step: int = 0
    ) -> tuple[list[tuple[Labels, int, int]], dict[int, int], int, int]:
        """(rows of the kept groups as in ``totals``, the others summed per window, number of
        groups, samples of the others). Groups rank by samples, ties by value; a label absent
        reads as "". With ``step`` the windows are summed per epoch-aligned bucket of ``step``
        seconds (keyed by its start), so the answer is ``n`` x buckets."""


@runtime_checkable
class SharedCumulative(Protocol):
    """Optional for a backend that several processes share (ClickHouse): the highest values of
    cumulative (running-total) profiles kept in the store, so every replica differences a push
    against the series' last push wherever it went (issue 23 item 5). Without it the process
    keeps them (:class:`aggregator.cumulative.MemoryState`)."""

    def cumulative_state(self) -> Any:
        """An :class:`aggregator.cumulative.StateBackend` on this store."""


@runtime_checkable
class Compacting(Protocol):
    """Optional for a backend that appends one fragment per write and merges the fragments of
    closed windows later (SQLite). ``aggregator.windows`` calls :meth:`compact` on every
    maintenance pass; the ``/metrics`` gauge ``flamewatch_open_windows`` reads
    :meth:`open_windows`."""

    async def compact(self, before: int, limit: int = 2000) -> int:
        """Merge the fragments of (up to ``limit``) windows starting before ``before`` into one
        row each; returns how many windows were merged."""

    def open_windows(self) -> int:
        """(series, window) pairs written since they were last compacted."""
