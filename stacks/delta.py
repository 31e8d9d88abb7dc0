"""Server-side deltas of cumulative profiles (Pyroscope's rule for pushed Go allocations).

A Go heap profile counts allocations since the process started: each push
holds the running total. Storing those totals and adding windows up would
count the same bytes again and again. Pyroscope turns them into deltas on
the server when a push does not say it already did (label ``__delta__`` is not
``"false"``) and the type is ``memory`` ``alloc_space``/``alloc_objects``:

- the first profile of a series only becomes the baseline: nothing is stored;
- each next profile stores, per stack, ``value - highest value seen before``;
- a stack whose value fell (the process restarted) makes the whole profile a
  new baseline: nothing stored for it.

The state lives in a :class:`CumulativeDeltas` object owned by the caller (the
aggregator's ingest tables); the module holds none. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import TypeVar

from stacks.model import Labels, Profile, Stack
from stacks.profiletype import ProfileType

DELTA_LABEL = "__delta__"
# Pyroscope computes deltas only for these (name, sample type) pairs.
CUMULATIVE_TYPES = frozenset({("memory", "alloc_space"), ("memory", "alloc_objects")})
BASELINE = "cumulative_baseline"  # reason: first profile of a series, kept to subtract from the next
RESET = "cumulative_reset"  # reason: values fell (the process restarted); kept as the new baseline


K = TypeVar("K", bound=Hashable)


def difference(highest: Mapping[K, int] | None, current: Mapping[K, int]) -> tuple[dict[K, int] | None, str]:
    """Pyroscope's rule on one push, on any stack key (a :class:`Stack`, or a stack hash in a
    shared store): ``(growth per key, "")``, or ``(None, reason)`` when ``current`` only becomes
    the baseline (no ``highest``: :data:`BASELINE`; a value fell: :data:`RESET`). Growth keeps
    only the keys that grew; the new highest values are ``highest`` updated with ``current``
    (or ``current`` alone when it is a baseline)."""
    if highest is None:
        return None, BASELINE
    if _fell(highest, current):
        return None, RESET
    grown = {k: v - highest.get(k, 0) for k, v in current.items()}
    return {k: d for k, d in grown.items() if d > 0}, ""


def needs_delta(ptype: ProfileType, delta_label: str | None) -> bool:
    """True when a pushed column of ``ptype`` holds running totals the server must difference."""
    return (ptype.name, ptype.sample_type) in CUMULATIVE_TYPES and (delta_label or "").lower() != "false"


class CumulativeDeltas:
    """Per-series highest values of cumulative profiles; :meth:`delta` turns totals into deltas.

    At most ``max_series`` series are remembered (least recently pushed dropped first), so a
    churning fleet cannot grow it without bound; a forgotten series starts a new baseline.
    """

    def __init__(self, max_series: int = 20_000) -> None:
        self.max_series = max_series
        self._highest: OrderedDict[Labels, dict[Stack, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._highest)

    def delta(self, series: Labels, profile: Profile) -> tuple[Profile | None, str]:
        """``(delta profile, "")``, or ``(None, reason)`` when the push only sets the baseline."""
        current = profile.as_dict()
        highest = self._highest.get(series)
        grown, why = difference(highest, current)
        if grown is None or highest is None:
            self._remember(series, dict(current))
            return None, why
        self._highest.move_to_end(series)
        highest.update(current)
        return Profile.from_pairs(list(grown.items()), profile.table), ""

    def highest(self, series: Labels) -> dict[Stack, int] | None:
        """The highest values remembered for ``series`` (None: no baseline)."""
        return self._highest.get(series)

    def remember(self, series: Labels, values: Mapping[Stack, int], baseline: bool) -> None:
        """Take in a push's values: as the whole new baseline, or raising the highest values."""
        highest = self._highest.get(series)
        if baseline or highest is None:
            self._remember(series, dict(values))
        else:
            highest.update(values)
            self._highest.move_to_end(series)

    def snapshot(self) -> list[tuple[Labels, dict[Stack, int]]]:
        """Every remembered series with its highest values, least recently pushed first."""
        return [(s, dict(h)) for s, h in self._highest.items()]

    def _remember(self, series: Labels, values: dict[Stack, int]) -> None:
        self._highest[series] = values
        self._highest.move_to_end(series)
        while len(self._highest) > self.max_series:
            self._highest.popitem(last=False)


def _fell(highest: Mapping[K, int], current: Mapping[K, int]) -> bool:
    """Any stack below its highest value seen: the counters were reset."""
    return any(value < highest.get(stack, 0) for stack, value in current.items())
