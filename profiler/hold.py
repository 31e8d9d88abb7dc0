"""Perf samples of Python processes held back until their first py-spy shape arrives.

A Python process's perf samples carry only interpreter frames until py-spy
has given it a *shape* (:mod:`profiler.pyschedule`). For a busy process
that takes a couple of seconds, but a quiet one (a pod at 1 % of a core)
needs a long first run before py-spy has seen it busy at all, so the
intervals before that would be pushed without Python names, forever: at
2 % of a core, the first 10-20 s are a large part of what a short query
shows. Instead, the agent holds such a process's samples (per interval,
with the interval's own times) for up to ``max_seconds``; when the shape
arrives they are named with it and pushed with their original times (the
aggregator merges late data into its windows); when it does not arrive in
time they are pushed as they are. Nothing is ever dropped, and only
unnamed data waits.

Pure bookkeeping: no I/O, the time is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from profiler.collect import PidSamples
from stacks.model import Labels, Stack

Shape = dict[Stack, float]


@dataclass
class Held:
    """One interval's samples of one process, waiting."""

    start_ns: int
    end_ns: int
    samples: PidSamples
    labels: Labels | None  # resolved while the process lived (it may be gone at release)


@dataclass
class _Pid:
    since: float
    chunks: list[Held] = field(default_factory=list)


@dataclass(frozen=True)
class Released:
    """Held samples to push now, named with ``shape`` when there is one."""

    pid: int
    held: Held
    shape: Shape | None


class NameHold:
    """Per-pid queues of intervals waiting for a shape, each bounded in time."""

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds
        self._pids: dict[int, _Pid] = {}
        self.released_named = 0  # samples pushed with names they would otherwise have lacked
        self.released_unnamed = 0  # samples that waited in vain

    @property
    def enabled(self) -> bool:
        return self.max_seconds > 0

    @property
    def samples(self) -> int:
        """Samples waiting now."""
        return sum(h.samples.count for p in self._pids.values() for h in p.chunks)

    def __contains__(self, pid: int) -> bool:
        return pid in self._pids

    def put(self, pid: int, held: Held, now: float) -> None:
        """Hold one interval of ``pid``'s samples (the first one starts its clock)."""
        self._pids.setdefault(pid, _Pid(now)).chunks.append(held)

    def release(self, now: float, shape_of: Callable[[int], Shape | None], *, everything: bool = False
                ) -> Iterator[Released]:
        """What may go now: every pid with a shape, and pids held ``max_seconds`` (all with ``everything``)."""
        for pid in list(self._pids):
            shape = shape_of(pid)
            entry = self._pids[pid]
            if shape is None and not everything and now - entry.since < self.max_seconds:
                continue
            del self._pids[pid]
            for held in entry.chunks:
                if shape is None:
                    self.released_unnamed += held.samples.count
                else:
                    self.released_named += held.samples.count
                yield Released(pid, held, shape)
