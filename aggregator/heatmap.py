"""Pyroscope's ``SelectHeatmap``: how the values of individual profiles (or spans) spread over
time, as counts per (time slot, value bucket).

flamewatch merges pushes into 30 s windows per series, so its *individual profile* is one
series' window: the heatmap counts series windows by their total, scaled to the type's unit
(samples x the series' own period for CPU and wall). The *span* heatmap counts root spans by
their wall time (their CPU time for a CPU type), from the span store.

Value buckets are fixed and logarithmic, :data:`BUCKETS_PER_OCTAVE` to each doubling (each
~19 % wide), so the answer needs no first pass for the range of values, every slot shares one
scale, and memory is one counter per occupied (slot, bucket) cell. A slot lists its occupied
buckets by their lower bound (``y_min``) with their counts, lowest first.

The read is chunked in time, each chunk at most ``cells`` (series, window) rows, so a week of
100,000 series is read a slice at a time, not held at once.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from aggregator.params import Range
from aggregator.store.base import MergedReads, Store
from stacks.model import Labels, StackTable
from stacks.profiletype import PERIOD_LABEL, ProfileType
from stacks.selector import Selector

BUCKETS_PER_OCTAVE = 4
MAX_SLOTS = 2000  # time slots of one answer (a finer step is refused)
GroupKey = tuple[tuple[str, str], ...]


def bucket_of(value: float) -> int:
    """The index of the log bucket holding ``value`` (> 0): bucket k holds [y_min(k), y_min(k+1))."""
    k = math.floor(math.log2(value) * BUCKETS_PER_OCTAVE)
    # log2 rounds: move k so that y_min(k) <= value < y_min(k + 1) holds exactly.
    while y_min(k) > value:
        k -= 1
    while y_min(k + 1) <= value:
        k += 1
    return k


def y_min(k: int) -> float:
    """The lower bound of bucket ``k``."""
    return float(2.0 ** (k / BUCKETS_PER_OCTAVE))


def slot_width(step: float, window: int, span: int) -> int:
    """The slot width for Pyroscope's ``step`` (seconds; 0 picks about 100 slots): a multiple
    of the window, at least one window. Raises ValueError naming the fix when the range would
    need more than :data:`MAX_SLOTS` slots."""
    if not (math.isfinite(step) and step >= 0):
        raise ValueError(f"step={step} is not a number of seconds >= 0")
    if step == 0:
        step = span / 100
    width = max(window, math.ceil(step / window) * window)
    if span / width > MAX_SLOTS:
        need = math.ceil(span / MAX_SLOTS / window) * window
        raise ValueError(f"step={step:g} s gives {math.ceil(span / width)} slots over the range: "
                         f"give step >= {need} s (at most {MAX_SLOTS} slots)")
    return width


@dataclass
class Heatmap:
    """Counts per group, slot start and bucket; :meth:`add` one value at a time."""

    first: int
    width: int
    cells: dict[GroupKey, dict[tuple[int, int], int]] = field(default_factory=dict)

    def add(self, group: GroupKey, t: float, value: float) -> None:
        """Count one profile (or span) of ``value`` at time ``t``; values <= 0 show nothing."""
        if value <= 0:
            return
        slot = self.first + int((t - self.first) // self.width) * self.width
        cell = self.cells.setdefault(group, {})
        key = (slot, bucket_of(value))
        cell[key] = cell.get(key, 0) + 1

    def series(self, limit: int = 0) -> list[tuple[GroupKey, list[tuple[int, list[float], list[int]]]]]:
        """(group, [(slot start, y_min list, counts), ...]) per group, slots in time order; with
        ``limit`` > 0 the ``limit`` groups with the most profiles."""
        groups = sorted(self.cells)
        if limit > 0 and len(groups) > limit:
            weight = {g: sum(self.cells[g].values()) for g in groups}
            groups = sorted(sorted(groups, key=lambda g: -weight[g])[:limit])
        out = []
        for g in groups:
            slots: dict[int, list[tuple[int, int]]] = {}
            for (slot, k), n in self.cells[g].items():
                slots.setdefault(slot, []).append((k, n))
            rows = []
            for slot in sorted(slots):
                ks = sorted(slots[slot])
                rows.append((slot, [y_min(k) for k, _ in ks], [n for _, n in ks]))
            out.append((g, rows))
        return out


def group_key(labels: Mapping[str, str], group_by: Sequence[str]) -> GroupKey:
    """The group of a series: its values of ``group_by`` (labels it lacks are left out)."""
    return tuple((g, labels.get(g, "")) for g in group_by if labels.get(g, ""))


def profile_value(ptype: ProfileType, labels: Mapping[str, str], total: int) -> int:
    """A series window's total in the type's sample unit: samples x the series' period for
    samples-stored types (the count alone when a series has no period)."""
    if ptype.as_samples:
        period = labels.get(PERIOD_LABEL, "")
        if period.isdigit():
            return total * int(period)
    return total


async def series_windows(store: Store, sel: Selector, rng: Range, cells: int
                         ) -> AsyncIterator[list[tuple[Labels, int, int]]]:
    """(labels, window start, total) of every matching series window, a time chunk at a time.

    The first chunk is one window; each next one is sized from the rows per window seen so far
    so that it holds about ``cells`` rows (memory bounded whatever the number of series)."""
    t, window, rows_per_window = rng.first_window, rng.window, 1.0
    while t < rng.end:
        n = max(1, int(cells // max(rows_per_window, 1.0)))
        end = min(rng.end, t + n * window)
        if isinstance(store, MergedReads):
            rows = await store.totals(sel, t, end)
        else:
            rows = [(w.labels, w.start, w.profile.total) for w in await store.read(sel, t, end, StackTable())]
        windows = max(1, -(-(end - t) // window))
        rows_per_window = max(rows_per_window, len(rows) / windows)
        t = end
        yield rows
