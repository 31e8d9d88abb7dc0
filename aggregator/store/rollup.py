"""Which rollups and which 30 s windows answer a time range exactly (both stores).

A rollup of resolution ``res`` (an hour, a day) at period ``p`` holds, per series, exactly the
sum of that series' windows starting in ``[p, p + res)``. A period is *rolled* when its rollups
exist and are kept exact (later writes into it are added to them as well; retention that cuts
into it removes them). A read of ``[start, end)`` takes the coarsest rolled periods lying wholly
inside the range and the windows for everything else (the edges, open periods, periods that
are not rolled), so it sums each window exactly once.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

HOUR, DAY = 3600, 86400
RESOLUTIONS = (HOUR, DAY)  # finest first; each divides the next


@dataclass(frozen=True)
class Plan:
    """``periods[res]``: rolled period starts to read at that resolution; ``windows``: the
    ``[a, b)`` ranges still read window by window, ascending and disjoint."""

    periods: dict[int, list[int]]
    windows: list[tuple[int, int]]


def plan(start: int, end: int, rolled: Collection[tuple[int, int]], max_res: int = DAY) -> Plan:
    """Cover ``[start, end)`` with the coarsest rolled periods inside it (resolutions up to
    ``max_res``; a timeline of step S may use a resolution only if it divides S) and windows."""
    allowed = sorted((res for res in RESOLUTIONS if res <= max_res), reverse=True)
    periods: dict[int, list[int]] = {}
    chosen: set[tuple[int, int]] = set()
    covered: list[tuple[int, int]] = []
    for res in allowed:
        for r, p in sorted(rolled):
            if r != res or p < start or p + res > end:
                continue
            # resolutions nest, so a period is inside a chosen coarser one iff that one holds its start
            if any((c, p - p % c) in chosen for c in allowed if c > res):
                continue
            periods.setdefault(res, []).append(p)
            chosen.add((res, p))
            covered.append((p, p + res))
    covered.sort()
    windows: list[tuple[int, int]] = []
    at = start
    for a, b in covered:
        if a > at:
            windows.append((at, a))
        at = max(at, b)
    if at < end:
        windows.append((at, end))
    return Plan(periods, windows)


def max_resolution(step: int) -> int:
    """The coarsest resolution whose periods fall whole into a bucket of ``step`` seconds
    (epoch-aligned): 0 when none does (the timeline then reads windows only)."""
    fit = [res for res in RESOLUTIONS if step >= res and step % res == 0]
    return max(fit, default=0)
