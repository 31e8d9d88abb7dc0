"""Server-side deltas of cumulative (running-total) profiles, with the state where it belongs.

:mod:`stacks.delta` has the rule (the first push of a series is its baseline; each next push
stores per stack ``value - highest value seen before``; a fall starts a new baseline). This
module applies it to a decoded push's ``cumulative`` profiles, reading the series' highest
values from a :class:`StateBackend` before and saving them after the push's samples are
written:

- :class:`MemoryState` (SQLite: one process): a :class:`stacks.delta.CumulativeDeltas`,
  saved to a JSON file in the data directory at shutdown and read back at start, so a restart is no new baseline;
- ``aggregator.store.clickhouse.cumulative.ClickHouseState``: a table every replica reads,
  so a push is differenced against the series' last push whichever replica took it.

Guarantee (docs/aggregator.md, "Cumulative profiles"): pushes of one series are serialised in
a process (a lock per series, held from the read of the state to its save), so the stored
deltas add up exactly to the growth. Across replicas the state is read before and saved after
each push: exact when a series' pushes do not overlap in time (an SDK pushes a series every
10-15 s and waits for the answer); two pushes of one series in flight at the same moment on two
replicas may both be differenced against the same previous push, storing at most the smaller
one's growth twice. The samples are written before the state is saved: a push that fails
stores nothing and changes no state, so its retry is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Hashable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from aggregator.ingest import Cumulative, Decoded, take_deltas
from stacks.delta import CumulativeDeltas, difference
from stacks.model import Frame, Kind, Labels, Profile

log = logging.getLogger(__name__)

STATE_FILE = "cumulative.json"


class StateBackend(Protocol):
    """Where the highest values of the cumulative series live."""

    def keys(self, profile: Profile) -> list[Hashable]:
        """One key per stack of ``profile`` (aligned with ``profile.ids``), as the state stores it."""

    async def load(self, series: Sequence[Labels]) -> dict[Labels, dict[Any, int]]:
        """The highest values of each of ``series`` that has a baseline (others absent)."""

    async def save(self, after: dict[Labels, dict[Any, int]], before: dict[Labels, dict[Any, int]],
                   baselines: set[Labels]) -> None:
        """Keep ``after`` (the series' highest values after the push): ``baselines`` start anew,
        the others changed from ``before`` only where a value grew or a stack is new."""

    async def forget_before(self, t: int) -> int:
        """Retention: forget series whose state is older than ``t`` (unix seconds)."""


class MemoryState:
    """The state of one process, in memory (bounded by :class:`CumulativeDeltas`' series limit)."""

    def __init__(self, deltas: CumulativeDeltas | None = None) -> None:
        self.deltas = deltas if deltas is not None else CumulativeDeltas()

    def keys(self, profile: Profile) -> list[Hashable]:
        stack = profile.table.stack
        return [stack(int(i)) for i in profile.ids.tolist()]

    async def load(self, series: Sequence[Labels]) -> dict[Labels, dict[Any, int]]:
        out: dict[Labels, dict[Any, int]] = {}
        for s in series:
            h = self.deltas.highest(s)
            if h is not None:
                out[s] = dict(h)
        return out

    async def save(self, after: dict[Labels, dict[Any, int]], before: dict[Labels, dict[Any, int]],
                   baselines: set[Labels]) -> None:
        for s, values in after.items():
            self.deltas.remember(s, values, baseline=s in baselines)

    async def forget_before(self, t: int) -> int:
        return 0  # bounded by CumulativeDeltas.max_series (least recently pushed forgotten first)

    def dump(self, path: Path) -> None:
        """Write the state to ``path`` (atomically: a crash leaves the previous file)."""
        if not len(self.deltas) and not path.exists():
            return  # nothing to keep (no cumulative series ever pushed): leave no file
        rows = [[list(map(list, series.items_)),
                 [[[[f.name, Kind(f.kind).value] for f in stack], v] for stack, v in values.items()]]
                for series, values in self.deltas.snapshot()]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "series": rows}))  # ASCII: lone surrogates survive
        os.replace(tmp, path)

    def restore(self, path: Path) -> int:
        """Read the state written by :meth:`dump` (our own file in the data dir); returns the
        series read. A missing or unreadable file leaves the state empty: the next push of each
        series is a baseline again, as before this file existed."""
        try:
            rows = json.loads(path.read_text())["series"]
            parsed = [(Labels.of((str(k), str(v)) for k, v in series),
                       {tuple(Frame(str(n), Kind(str(k))) for n, k in stack): int(v) for stack, v in values})
                      for series, values in rows]
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.warning("cumulative state %s unreadable (%s); series start new baselines", path, e)
            return 0
        for series, values in parsed:
            self.deltas.remember(series, values, baseline=True)
        return len(parsed)


class Deltas:
    """Applies the state's deltas to pushes; one per process, shared by every push route."""

    def __init__(self, state: StateBackend) -> None:
        self.state = state
        self._locks: dict[Labels, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def _locked(self, series: Sequence[Labels]) -> AsyncIterator[None]:
        """Hold the lock of each of ``series`` (taken in one order: no deadlock)."""
        held: list[Labels] = []
        acquired: list[asyncio.Lock] = []
        try:
            for s in series:
                lock, n = self._locks.get(s) or (asyncio.Lock(), 0)
                self._locks[s] = (lock, n + 1)
                held.append(s)
                await lock.acquire()
                acquired.append(lock)
            yield
        finally:
            for lock in acquired:
                lock.release()
            for s in held:
                lock, n = self._locks[s]
                if n <= 1:
                    del self._locks[s]
                else:
                    self._locks[s] = (lock, n - 1)

    @contextlib.asynccontextmanager
    async def applied(self, decoded: Decoded) -> AsyncIterator[None]:
        """Difference ``decoded.cumulative`` into its items; the body writes them, and the new
        highest values are saved only when it returns without an exception."""
        pending = decoded.cumulative
        if not pending:
            yield
            return
        series = sorted({p.labels for p in pending}, key=lambda lab: lab.items_)
        async with self._locked(series):
            before = await self.state.load(series)
            work = {s: dict(v) for s, v in before.items()}
            baselines: set[Labels] = set()
            # Hashing and differencing are linear in the push's stacks: off the event loop.
            results = await asyncio.to_thread(self._difference, pending, work, baselines)
            take_deltas(decoded, results)
            yield
            await self.state.save({s: work[s] for s in series if s in work}, before, baselines)


    def _difference(self, pending: Sequence[Cumulative], work: dict[Labels, dict[Any, int]],
                    baselines: set[Labels]) -> list[tuple[Profile | None, str]]:
        """Each pending profile's growth over ``work`` (updated in place, as are ``baselines``)."""
        results: list[tuple[Profile | None, str]] = []
        for p in pending:  # in push order: a series twice in one push is differenced in turn
            keys = self.state.keys(p.profile)
            current = dict(zip(keys, p.profile.counts.tolist(), strict=True))
            highest = work.get(p.labels)
            grown, why = difference(highest, current)
            if grown is None or highest is None:
                work[p.labels] = current
                baselines.add(p.labels)
                results.append((None, why))
                continue
            highest.update(current)
            mask = np.fromiter((k in grown for k in keys), dtype=bool, count=len(keys))
            counts = np.fromiter((grown[k] for k in keys if k in grown), dtype=np.int64)
            results.append((Profile(p.profile.table, p.profile.ids[mask], counts), ""))
        return results


def state_path(data_dir: str | Path) -> Path:
    """Where a single process keeps its cumulative state between runs."""
    return Path(data_dir) / STATE_FILE


