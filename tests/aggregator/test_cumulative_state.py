"""aggregator.cumulative: the deltas of a push against a state backend (in memory, or the
ClickHouse table every replica reads), serialised per series inside one process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aggregator.cumulative import Deltas, MemoryState
from aggregator.ingest import Cumulative, Decoded
from aggregator.store.clickhouse import ClickHouseStore
from aggregator.store.clickhouse.cumulative import ClickHouseState
from stacks.folded import parse
from stacks.model import Labels, StackTable
from tests.support.clickhouse import ClickHouseServer

ALLOC = "memory:alloc_space:bytes:space:bytes"
SERIES = Labels.of({"service_name": "app", "__profile_type__": ALLOC})


def pending(table: StackTable, *folded: str, series: Labels = SERIES) -> Decoded:
    return Decoded([], cumulative=[Cumulative(series, None, parse(f, table), ALLOC) for f in folded])


def as_text(decoded: Decoded) -> list[dict[str, int]]:
    return [{";".join(f.name for f in s): v for s, v in p.items()} for _, _, p in decoded.items]


async def test_a_series_twice_in_one_push_is_differenced_in_turn(tmp_path: Path) -> None:
    table = StackTable()
    deltas = Deltas(MemoryState())
    d = pending(table, "main;a 10\n", "main;a 15\nmain;b 4\n", "main;a 21\nmain;b 4\n")
    async with deltas.applied(d):
        pass
    assert as_text(d) == [{"main;a": 5, "main;b": 4}, {"main;a": 6}]
    assert d.not_stored == {("cumulative_baseline", ALLOC): 10} and d.cumulative == []
    # A fall is a reset: stored nothing, the new values are the baseline of the next push.
    d = pending(table, "main;a 3\n", "main;a 8\nmain;b 5\n")
    async with deltas.applied(d):
        pass
    assert as_text(d) == [{"main;a": 5, "main;b": 5}]  # b was not in the new baseline: from 0
    assert d.not_stored == {("cumulative_reset", ALLOC): 3}
    # Saved and read back: a restarted process goes on from the last push.
    state = deltas.state
    assert isinstance(state, MemoryState)
    state.dump(tmp_path / "c.json")
    again = MemoryState()
    assert again.restore(tmp_path / "c.json") == 1
    d = pending(table, "main;a 9\nmain;b 5\n")
    async with Deltas(again).applied(d):
        pass
    assert as_text(d) == [{"main;a": 1}]
    (tmp_path / "bad.json").write_text("{not json")
    assert MemoryState().restore(tmp_path / "bad.json") == 0


async def test_a_failed_write_changes_no_state() -> None:
    table = StackTable()
    deltas = Deltas(MemoryState())
    async with deltas.applied(pending(table, "main;a 10\n")):
        pass
    with pytest.raises(RuntimeError):
        async with deltas.applied(pending(table, "main;a 30\n")):
            raise RuntimeError("store down")
    d = pending(table, "main;a 30\n")  # the client's retry: differenced from 10 again
    async with deltas.applied(d):
        pass
    assert as_text(d) == [{"main;a": 20}]


async def test_concurrent_pushes_of_one_series_wait_for_each_other() -> None:
    table = StackTable()
    deltas = Deltas(MemoryState())
    async with deltas.applied(pending(table, "main;a 10\n")):
        pass
    first, second = pending(table, "main;a 20\n"), pending(table, "main;a 35\n")
    release = asyncio.Event()
    order: list[str] = []

    async def slow_write() -> None:
        async with deltas.applied(first):
            order.append("first read")
            await release.wait()  # its samples are being written
        order.append("first saved")

    async def other() -> None:
        await asyncio.sleep(0)
        async with deltas.applied(second):
            order.append("second read")

    task = asyncio.gather(slow_write(), other())
    for _ in range(500):  # the first read runs on a worker thread: slow on a loaded machine
        if order:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # time enough for the second push to read, were it not waiting
    assert order == ["first read"]  # the second push waits for the first one's save
    release.set()
    await task
    assert order == ["first read", "first saved", "second read"]
    assert as_text(first) == [{"main;a": 10}] and as_text(second) == [{"main;a": 15}]
    assert not deltas._locks  # no lock left behind


@pytest.mark.clickhouse
async def test_clickhouse_state_versions_and_baselines(clickhouse: ClickHouseServer, clickhouse_db: str) -> None:
    store = ClickHouseStore(clickhouse.storage_spec(clickhouse_db))
    await store.open()
    try:
        table = StackTable()
        lagging = ClickHouseState(store, clock_ns=lambda: 1000)  # a replica whose clock is behind
        ahead = ClickHouseState(store, clock_ns=lambda: 10**18)
        d = pending(table, "main;a 10\nmain;old 7\n")
        async with Deltas(ahead).applied(d):
            pass
        # The lagging replica still writes after the push it read (version above 10**18).
        d = pending(table, "main;a 25\nmain;old 7\n")
        async with Deltas(lagging).applied(d):
            pass
        assert as_text(d) == [{"main;a": 15}]
        d = pending(table, "main;a 2\n")  # a restart: new baseline, "old" forgotten
        async with Deltas(ahead).applied(d):
            pass
        assert d.not_stored == {("cumulative_reset", ALLOC): 2}
        d = pending(table, "main;a 4\nmain;old 7\n")
        async with Deltas(lagging).applied(d):
            pass
        assert as_text(d) == [{"main;a": 2, "main;old": 7}]
        got = await ClickHouseState(store).load([SERIES, Labels.of({"service_name": "never"})])
        assert sorted(got[SERIES].values()) == [4, 7] and len(got) == 1
        # Retention: a series whose baseline is older than the cut is forgotten whole (its next
        # push is a baseline); one with a newer baseline keeps all of its state.
        young = Labels.of({"service_name": "young", "__profile_type__": ALLOC})
        async with Deltas(ClickHouseState(store, clock_ns=lambda: 3 * 10**18)).applied(
                pending(table, "main;a 1\n", series=young)):
            pass
        assert await ahead.forget_before(2 * 10**9) == 1  # the cut: 2e18 ns
        assert await ahead.forget_before(2 * 10**9) == 0
        got = await ClickHouseState(store).load([SERIES, young])
        assert list(got) == [young]
        rows = await store._json_rows(f"SELECT count() AS n FROM {clickhouse_db}.cumulative")
        assert int(rows[0]["n"]) == 2  # young's marker and stack: the old series' rows are gone
    finally:
        await store.close()
