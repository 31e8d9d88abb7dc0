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
from collections.abc import Mapping

from stacks.model import Labels, Profile, Stack
from stacks.profiletype import ProfileType

DELTA_LABEL = "__delta__"
# Pyroscope computes deltas only for these (name, sample type) pairs.
CUMULATIVE_TYPES = frozenset({("memory", "alloc_space"), ("memory", "alloc_objects")})
BASELINE = "cumulative_baseline"  # reason: first profile of a series, kept to subtract from the next
RESET = "cumulative_reset"  # reason: values fell (the process restarted); kept as the new baseline


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
        if highest is None or _fell(highest, current):
            self._remember(series, dict(current))
            return None, BASELINE if highest is None else RESET
        self._highest.move_to_end(series)
        pairs = [(stack, value - highest.get(stack, 0)) for stack, value in current.items()]
        highest.update(current)
        kept = [(s, v) for s, v in pairs if v > 0]
        return Profile.from_pairs(kept, profile.table), ""

    def _remember(self, series: Labels, values: dict[Stack, int]) -> None:
        self._highest[series] = values
        self._highest.move_to_end(series)
        while len(self._highest) > self.max_series:
            self._highest.popitem(last=False)


def _fell(highest: Mapping[Stack, int], current: Mapping[Stack, int]) -> bool:
    """Any stack below its highest value seen: the counters were reset."""
    return any(value < highest.get(stack, 0) for stack, value in current.items())
