"""30-second windows, group commit and background maintenance.

Every push is assigned to the epoch-aligned window ``[t - t % W, +W)`` of its
profile time (the midpoint of from/until, or of pprof time/duration; the
arrival time when the sender gives none). Pushes are not acknowledged until
their window data is committed to the store: :meth:`WindowWriter.add` queues
the push in the current batch and waits; one committer task merges each batch
per (series, window) and writes it in a single store transaction, so many
concurrent pushes share one commit (group commit).

Late data and grace: a window stays *open* for ``late_grace_seconds`` after it
ends. Its rows are merged into one per series (compaction) only once it has
closed, and data arriving for it later is still accepted (writes are additive,
the compactor merges again). Profile times more than the grace ahead of the
clock are clamped to the current window (clock skew); data older than the
retention is dropped and counted. The clock is injected for tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aggregator.store.base import Compacting, SeriesWindow, Store, StoreError
from stacks.model import Labels, Profile, merge
from stacks.profiletype import TYPE_LABEL

log = logging.getLogger(__name__)


def window_start(t: float, window: int) -> int:
    """Start of the epoch-aligned window holding unix time ``t``."""
    ti = int(t)
    return ti - ti % window


@dataclass
class Placed:
    """Where a push's data went: accepted samples and dropped samples by reason."""

    samples: int = 0
    windows: set[int] = field(default_factory=set)
    dropped: dict[str, int] = field(default_factory=dict)
    # per profile type id: amount stored, and (reason, type id) -> amount not stored
    by_type: dict[str, int] = field(default_factory=dict)
    dropped_by_type: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass
class _Batch:
    items: list[tuple[Labels, int, Profile]] = field(default_factory=list)
    futures: list[asyncio.Future[None]] = field(default_factory=list)


class WindowWriter:
    """Assigns pushes to windows and writes them through to the store before acknowledging."""

    def __init__(
        self,
        store: Store,
        *,
        window_seconds: int = 30,
        late_grace_seconds: int = 120,
        retention_seconds: int = 0,
        commit_interval: float = 0.005,
        clock: Callable[[], float] = time.time,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self.store = store
        self.window = int(window_seconds)
        self.grace = int(late_grace_seconds)
        self.retention = int(retention_seconds)
        self.commit_interval = commit_interval
        self.clock = clock
        self.on_commit = on_commit  # (windows written, seconds) -> None, for metrics
        self._batch = _Batch()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- pure placement -----------------------------------------------------------------------
    def place(self, t: float | None) -> tuple[int | None, str | None]:
        """Window start for a profile at time ``t`` (None: now), or (None, reason) to drop."""
        now = self.clock()
        if t is None or t <= 0:
            t = now
        if t > now + self.grace:
            t = now  # clock skew: never create windows in the future
        if self.retention and t < now - self.retention:
            return None, "older_than_retention"
        return window_start(t, self.window), None

    def is_closed(self, start: int) -> bool:
        """A window is closed once its end plus the grace has passed."""
        return start + self.window + self.grace <= self.clock()

    # -- group commit -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the committer task (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._committer(), name="window-committer")

    async def add(self, items: Sequence[tuple[Labels, float | None, Profile]]) -> Placed:
        """Queue profiles (labels, time, profile) and return once they are durable."""
        placed = Placed()
        queued = []
        for labels, t, profile in items:
            if len(profile) == 0:
                continue
            start, reason = self.place(t)
            ptype = labels.get(TYPE_LABEL, "")
            if start is None:
                assert reason is not None
                placed.dropped[reason] = placed.dropped.get(reason, 0) + profile.total
                key = (reason, ptype)
                placed.dropped_by_type[key] = placed.dropped_by_type.get(key, 0) + profile.total
                continue
            queued.append((labels, start, profile))
            placed.samples += profile.total
            placed.by_type[ptype] = placed.by_type.get(ptype, 0) + profile.total
            placed.windows.add(start)
        if not queued:
            return placed
        if self._task is None or self._task.done():
            # No committer (tests driving the writer directly): write inline.
            await self._write(queued)
            return placed
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batch.items.extend(queued)
        self._batch.futures.append(fut)
        self._wake.set()
        await fut
        return placed

    @staticmethod
    def merge_batch(items: Sequence[tuple[Labels, int, Profile]]) -> list[SeriesWindow]:
        """One SeriesWindow per (labels, window start), profiles merged."""
        groups: dict[tuple[Labels, int], list[Profile]] = {}
        for labels, start, profile in items:
            groups.setdefault((labels, start), []).append(profile)
        out = []
        for (labels, start), ps in groups.items():
            if len(ps) == 1:
                out.append(SeriesWindow(labels, start, ps[0]))
            elif sum(float(p.counts.sum(dtype="float64")) for p in ps) < 2.0**62:
                out.append(SeriesWindow(labels, start, merge(ps)))
            else:
                # int64 sums could wrap: write them as separate fragments (writes are additive)
                out.extend(SeriesWindow(labels, start, p) for p in ps)
        return out

    async def _write(self, items: Sequence[tuple[Labels, int, Profile]]) -> None:
        windows = self.merge_batch(items)
        t0 = time.perf_counter()
        await self.store.write(windows)
        if self.on_commit:
            self.on_commit(len(windows), time.perf_counter() - t0)

    async def _committer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.commit_interval:
                await asyncio.sleep(self.commit_interval)  # let concurrent pushes join the batch
            batch, self._batch = self._batch, _Batch()
            if not batch.futures:
                if self._closing:
                    return
                continue
            try:
                await self._write(batch.items)
            except Exception as e:  # every waiter gets the error; the committer lives on
                if not isinstance(e, StoreError):
                    log.exception("window commit failed")
                for f in batch.futures:
                    if not f.done():
                        f.set_exception(e)
            else:
                for f in batch.futures:
                    if not f.done():
                        f.set_result(None)
            if self._closing and not self._batch.futures:
                return

    async def close(self) -> None:
        """Commit what is queued, then stop the committer."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 30)
            except Exception:
                self._task.cancel()
            self._task = None

    # -- maintenance ------------------------------------------------------------------------
    async def maintain(self) -> dict[str, Any]:
        """One pass: merge closed windows, apply retention. Returns what was done."""
        now = self.clock()
        done: dict[str, Any] = {}
        if isinstance(self.store, Compacting):
            done["compacted"] = await self.store.compact(int(now) - self.window - self.grace + 1)
        if self.retention:
            done["deleted"] = await self.store.delete_before(int(now - self.retention))
        return done
