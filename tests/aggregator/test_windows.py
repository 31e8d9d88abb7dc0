"""Window placement, grace, group commit and maintenance, with an injected clock (no sleeping)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from aggregator.store.base import SeriesWindow, StoreError
from aggregator.store.sqlite import SQLiteStore
from aggregator.windows import WindowWriter, window_start
from stacks.folded import parse
from stacks.model import Labels, StackTable
from stacks.selector import Selector

T0 = 1_700_000_010  # 10 s into the window starting 1_700_000_010 - 10


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Recording(SQLiteStore):
    """A real SQLite store that also records each write call's size."""

    def __init__(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **kw)
        self.calls: list[int] = []
        self.fail = False

    async def write(self, windows: Sequence[SeriesWindow]) -> None:
        self.calls.append(len(windows))
        if self.fail:
            raise StoreError("disk full (simulated)")
        await super().write(windows)


@pytest.fixture
async def store(tmp_path):  # type: ignore[no-untyped-def]
    s = Recording(tmp_path / "w.db")
    await s.open()
    yield s
    await s.close()


def test_window_start_is_epoch_aligned() -> None:
    assert window_start(0, 30) == 0
    assert window_start(29.99, 30) == 0
    assert window_start(30, 30) == 30
    assert window_start(1_700_000_015, 30) == 1_700_000_010
    assert window_start(1_700_000_015, 60) == 1_699_999_980


async def test_placement_grace_and_retention(store: Recording) -> None:
    clock = Clock(T0)
    w = WindowWriter(store, window_seconds=30, late_grace_seconds=120, retention_seconds=3600, clock=clock)
    assert w.place(None) == (window_start(T0, 30), None)  # no time: arrival time
    assert w.place(T0 - 95) == (window_start(T0 - 95, 30), None)  # late but kept in its own window
    assert w.place(T0 + 100) == (window_start(T0 + 100, 30), None)  # within grace ahead: trusted
    assert w.place(T0 + 500) == (window_start(T0, 30), None)  # far future: clamped to now
    assert w.place(T0 - 4000) == (None, "older_than_retention")
    start = window_start(T0, 30)
    assert not w.is_closed(start)
    clock.t = start + 30 + 119
    assert not w.is_closed(start)
    clock.t = start + 30 + 120
    assert w.is_closed(start)


async def test_add_writes_through_and_reports(store: Recording) -> None:
    clock = Clock(T0)
    w = WindowWriter(store, window_seconds=30, late_grace_seconds=60, retention_seconds=600, clock=clock)
    table = StackTable()
    a = Labels.of(service_name="a")
    placed = await w.add([(a, T0, parse("x;y 3\n", table)), (a, T0 - 5000, parse("x 9\n", table))])
    assert placed.samples == 3 and placed.dropped == {"older_than_retention": 9}
    got = await store.read(Selector(), 0, 2 * T0, StackTable())
    assert [(x.labels, x.start, x.profile.total) for x in got] == [(a, window_start(T0, 30), 3)]


async def test_group_commit_batches_concurrent_pushes(store: Recording) -> None:
    w = WindowWriter(store, window_seconds=30, commit_interval=0.01, clock=Clock(T0))
    w.start()
    table = StackTable()
    a, b = Labels.of(service_name="a"), Labels.of(service_name="b")
    pushes = [w.add([(a if i % 2 else b, T0, parse(f"main;f{i % 5} {i + 1}\n", table))]) for i in range(40)]
    await asyncio.gather(*pushes)
    await w.close()
    assert sum(store.calls) == 2 * len(store.calls)  # every commit merged to one row per series
    assert len(store.calls) < 40 // 4  # far fewer commits than pushes
    got = {x.labels: x.profile.total for x in await store.read(Selector(), 0, 2 * T0, StackTable())}
    assert got == {a: sum(i + 1 for i in range(40) if i % 2), b: sum(i + 1 for i in range(40) if not i % 2)}


async def test_store_failure_reaches_every_waiter_and_committer_survives(store: Recording) -> None:
    w = WindowWriter(store, window_seconds=30, commit_interval=0.005, clock=Clock(T0))
    w.start()
    table = StackTable()
    a = Labels.of(service_name="a")
    store.fail = True
    results = await asyncio.gather(*[w.add([(a, T0, parse("x 1\n", table))]) for _ in range(5)],
                                   return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
    store.fail = False
    placed = await w.add([(a, T0, parse("x 2\n", table))])
    assert placed.samples == 2
    await w.close()
    got = await store.read(Selector(), 0, 2 * T0, StackTable())
    assert [x.profile.total for x in got] == [2]  # nothing of the failed batch was half-written


async def test_maintain_compacts_only_closed_windows_and_applies_retention(store: Recording) -> None:
    clock = Clock(T0)
    w = WindowWriter(store, window_seconds=30, late_grace_seconds=60, retention_seconds=3600, clock=clock)
    table = StackTable()
    a = Labels.of(service_name="a")
    old = window_start(T0, 30)
    for n in (1, 2, 3):
        await w.add([(a, T0, parse(f"main;f {n}\n", table))])
    assert store.open_windows() == 1
    assert (await w.maintain()).get("compacted") == 0  # still open
    clock.t = old + 30 + 60
    assert (await w.maintain())["compacted"] == 1
    assert store.open_windows() == 0
    got = await store.read(Selector(), 0, 2 * T0, StackTable())
    assert [x.profile.as_dict() for x in got] == [parse("main;f 6\n").as_dict()]
    # late data after compaction is still accepted and merged again
    await w.add([(a, T0, parse("main;f 4\n", table))])
    clock.t += 1
    assert (await w.maintain())["compacted"] == 1
    got = await store.read(Selector(), 0, 2 * T0, StackTable())
    assert [x.profile.total for x in got] == [10]
    clock.t = old + 3600 + 31
    assert (await w.maintain())["deleted"] == 1
    assert await store.read(Selector(), 0, 2 * T0, StackTable()) == []
