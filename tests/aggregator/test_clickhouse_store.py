"""ClickHouse-only behaviour: shared database between stateless stores, failures, retention."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import Iterator

import pytest
from aiohttp import web

from aggregator.store.base import SeriesWindow, StoreError
from aggregator.store.clickhouse import ClickHouseStore, parse_url, planner, series_hash, stack_hash, transport
from aggregator.store.clickhouse import store as chstore
from stacks.errors import InputError
from stacks.model import Frame, Labels, Profile, StackTable
from stacks.selector import Matcher, Selector
from tests.support.clickhouse import ClickHouseMissing, ClickHouseServer, clickhouse_server, query

pytestmark = pytest.mark.clickhouse

T0 = 1_700_006_400
ALL = Selector()
A = (Frame.user("main"), Frame.kernel("sys_write"))
B = (Frame.user("main"), Frame.user("work"))


def sw(start: int, pairs: dict, **labels: str) -> SeriesWindow:
    return SeriesWindow(Labels.of(labels), start, Profile.from_pairs(pairs.items()))


def summary(windows: list[SeriesWindow]) -> dict:
    return {(w.labels, w.start): w.profile.as_dict() for w in windows}


@pytest.fixture
def private_clickhouse() -> Iterator[ClickHouseServer]:
    """A ClickHouse of this test's own, which it may stop and start."""
    try:
        with clickhouse_server(private=True) as ch:
            yield ch
    except ClickHouseMissing as e:
        pytest.skip(reason=str(e))


def test_hashes_are_stable_and_distinguish_kinds() -> None:
    # Fixed values: every aggregator process (and version) must agree on them.
    assert stack_hash(A) == stack_hash(tuple(A))
    assert stack_hash((Frame.user("read"),)) != stack_hash((Frame.kernel("read"),))
    assert stack_hash((Frame.user("a;b"),)) != stack_hash((Frame.user("a"), Frame.user("b")))
    assert series_hash(Labels.of(a="b", c="d")) == series_hash(Labels.of(c="d", a="b"))
    assert series_hash(Labels.of(a="bc")) != series_hash(Labels.of(ab="c"))
    assert 0 <= stack_hash(A) < 2**64


@pytest.mark.parametrize(
    ("url", "base", "db", "timeout"),
    [
        ("clickhouse://127.0.0.1:8123/fw", "http://127.0.0.1:8123/", "fw", 30.0),
        ("clickhouse://ch.example/", "http://ch.example:8123/", "flamewatch", 30.0),
        ("clickhouse://u:p%40ss@h:9/db_1?timeout=2.5", "http://h:9/", "db_1", 2.5),
        ("clickhouse://h/db?secure=1", "https://h:8123/", "db", 30.0),
        ("http://[::1]:8123/x", "http://[::1]:8123/", "x", 30.0),
    ],
)
def test_parse_url(url: str, base: str, db: str, timeout: float) -> None:
    got_base, got_db, headers, got_timeout = parse_url(url)
    assert (got_base, got_db, got_timeout) == (base, db, timeout)
    if "u:p" in url:
        assert headers == {"Authorization": "Basic " + base64.b64encode(b"u:p@ss").decode()}
    else:
        assert headers == {}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://h/db", "unknown scheme"),
        ("clickhouse:///db", "no host"),
        ("clickhouse://h:notaport/db", "bad port"),
        ("clickhouse://h/drop;table", "must match"),
        ("clickhouse://h/db?timeout=-1", "timeout must be"),
    ],
)
def test_bad_urls_name_the_problem(url: str, says: str) -> None:
    with pytest.raises(InputError, match=says) as e:
        ClickHouseStore(url)
    assert "clickhouse://" in str(e.value)


async def test_stateless_stores_share_one_database(clickhouse: ClickHouseServer, clickhouse_db: str) -> None:
    spec = clickhouse.storage_spec(clickhouse_db)
    one, two = ClickHouseStore(spec), ClickHouseStore(spec)
    await one.open()
    await two.open()
    try:
        await one.write([sw(T0, {A: 2}, pod="p")])
        await two.write([sw(T0, {A: 3, B: 1}, pod="p"), sw(T0 + 30, {B: 4}, pod="q")])
        expected = {(Labels.of(pod="p"), T0): {A: 5, B: 1}, (Labels.of(pod="q"), T0 + 30): {B: 4}}
        assert summary(await one.read(ALL, T0, T0 + 60, StackTable())) == expected
        assert summary(await two.read(ALL, T0, T0 + 60, StackTable())) == expected
        # A brand-new process (empty caches) sees the same, stacks and labels included.
        fresh = ClickHouseStore(spec)
        try:
            assert summary(await fresh.read(ALL, T0, T0 + 60, StackTable())) == expected
            assert await fresh.label_values("pod", ALL, T0, T0 + 60) == ["p", "q"]
        finally:
            await fresh.close()
        # Concurrent writers: nothing lost, nothing double counted.
        await asyncio.gather(*(s.write([sw(T0, {A: 1}, pod="p")]) for s in (one, two) * 5))
        got = summary(await one.read(ALL, T0, T0 + 30, StackTable()))
        assert got == {(Labels.of(pod="p"), T0): {A: 15, B: 1}}
    finally:
        await one.close()
        await two.close()


async def test_schema_is_recreated_if_the_database_is_dropped(
    clickhouse: ClickHouseServer, clickhouse_db: str
) -> None:
    store = ClickHouseStore(clickhouse.storage_spec(clickhouse_db))
    await store.open()
    try:
        await store.write([sw(T0, {A: 1}, pod="p")])
        query(clickhouse.url, f"DROP DATABASE {clickhouse_db}")
        # The write-side caches think stack A and series p were sent; they must be re-sent.
        await store.write([sw(T0, {A: 2}, pod="p")])
        assert summary(await store.read(ALL, T0, T0 + 30, StackTable())) == {
            (Labels.of(pod="p"), T0): {A: 2}}
    finally:
        await store.close()


async def test_retention_drops_whole_partitions(clickhouse: ClickHouseServer, clickhouse_db: str) -> None:
    store = ClickHouseStore(clickhouse.storage_spec(clickhouse_db))
    await store.open()
    try:
        await store.write([sw(T0 + h * 3600 + 30 * i, {A: 1}, pod="p") for h in range(3) for i in (0, 1)])
        assert await store.delete_before(T0 + 3600 + 30) == 3
        parts = query(
            clickhouse.url,
            f"SELECT DISTINCT partition FROM system.parts WHERE database = '{clickhouse_db}' "
            "AND table = 'samples' AND active ORDER BY partition FORMAT TSV",
        ).split()
        assert parts == [str(T0 // 3600 + 1), str(T0 // 3600 + 2)]
        starts = sorted(w.start for w in await store.read(ALL, 0, 2**32 - 1, StackTable()))
        assert starts == [T0 + 3600 + 30, T0 + 7200, T0 + 7200 + 30]
    finally:
        await store.close()


async def test_server_down_raises_store_error_fast_and_recovers(private_clickhouse: ClickHouseServer) -> None:
    store = ClickHouseStore(private_clickhouse.storage_spec("flamewatch_down") + "?timeout=5")
    await store.open()
    try:
        await store.write([sw(T0, {A: 1}, pod="p")])
        private_clickhouse.kill()  # as in a crash; stop() would wait for idle clients
        t = time.monotonic()
        with pytest.raises(StoreError, match=r"clickhouse-server"):
            await store.write([sw(T0, {A: 100}, pod="p")])
        with pytest.raises(StoreError, match="unreachable"):
            await store.read(ALL, T0, T0 + 30, StackTable())
        with pytest.raises(StoreError):
            await store.label_names(T0, T0 + 30)
        assert time.monotonic() - t < 5
        private_clickhouse.start()
        await store.write([sw(T0, {A: 2}, pod="p")])
        # the failed write added nothing; data from before the outage survived
        assert summary(await store.read(ALL, T0, T0 + 30, StackTable())) == {(Labels.of(pod="p"), T0): {A: 3}}
    finally:
        await store.close()


async def test_open_fails_cleanly_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = ClickHouseStore(f"clickhouse://127.0.0.1:{port}/fw")
    try:
        with pytest.raises(StoreError, match=f"127.0.0.1:{port}.*unreachable"):
            await store.open()
    finally:
        await store.close()


async def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)  # accepts connections, never replies
        port = s.getsockname()[1]
        store = ClickHouseStore(f"clickhouse://127.0.0.1:{port}/fw?timeout=0.5")
        t = time.monotonic()
        try:
            with pytest.raises(StoreError, match=r"timed out after 0.5s"):
                await store.open()
        finally:
            await store.close()
        assert time.monotonic() - t < 3


async def _fake_clickhouse(handler) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_error_and_garbage_answers_become_store_errors() -> None:
    async def handler(request: web.Request) -> web.Response:
        sql = (await request.read()).decode(errors="replace") or request.query.get("query", "")
        if sql.startswith(("CREATE", "ALTER")) or any(k in sql for k in ("system.tables", "system.columns",
                                                                          "rollup_meta", "max(window)")):
            return web.Response(text="")  # schema setup (rollup views) answers as an empty server would
        if "series_windows" in sql and "SELECT" in sql and "count()" not in sql:
            return web.Response(text="this is not json\n")
        return web.Response(status=500, text="Code: 241, e.displayText() = DB::Exception: Memory limit "
                                              "exceeded, e.what() = DB::Exception")

    runner, port = await _fake_clickhouse(handler)
    store = ClickHouseStore(f"clickhouse://127.0.0.1:{port}/fw")
    try:
        await store.open()
        with pytest.raises(StoreError, match="malformed JSONEachRow"):
            await store.read(ALL, 0, 10, StackTable())
        with pytest.raises(StoreError, match=r"HTTP 500.*Memory limit exceeded") as e:
            await store.write([sw(T0, {A: 1}, pod="p")])
        assert "e.what()" not in str(e.value)
    finally:
        await store.close()
        await runner.cleanup()


async def test_long_in_lists_are_chunked(
    clickhouse: ClickHouseServer, clickhouse_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:

    monkeypatch.setattr(transport, "_CHUNK", 7)  # force several IN (...) queries for series and stacks
    store = ClickHouseStore(clickhouse.storage_spec(clickhouse_db))
    await store.open()
    try:
        batch = [sw(T0, {(Frame.user("main"), Frame.user(f"f{i}")): i + 1, A: 1}, pod=f"p{i:02d}",
                    parity=str(i % 2)) for i in range(50)]
        await store.write(batch)
        fresh = ClickHouseStore(clickhouse.storage_spec(clickhouse_db))  # empty stack cache
        try:
            even = Selector((Matcher("parity", "=", "0"),))
            got = summary(await fresh.read(even, T0, T0 + 30, StackTable()))
            assert got == {k: v for k, v in summary(batch).items() if k[0]["parity"] == "0"}
            assert len(got) == 25
        finally:
            await fresh.close()
    finally:
        await store.close()


async def test_grouped_reads_over_several_series_chunks(
    clickhouse: ClickHouseServer, clickhouse_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups whose series fall into different chunked queries are summed across the chunks."""
    from aggregator.store.base import MERGE_ALL

    monkeypatch.setattr(chstore, "_GROUP_CHUNK", 7)  # 50 series: 8 grouped queries
    store = ClickHouseStore(clickhouse.storage_spec(clickhouse_db))
    await store.open()
    try:
        batch = [sw(T0 + 30 * (i % 2), {(Frame.user("main"), Frame.user(f"f{i % 5}")): i + 1, A: 1},
                    pod=f"p{i:02d}", parity=str(i % 3)) for i in range(50)]
        await store.write(batch)
        for selector, dense in ((ALL, True), (Selector((Matcher("pod", "!=", "p07"),)), True), (ALL, False)):
            # dense=False: too many (group, stack) cells for a bincount, summed by sorting instead
            monkeypatch.setattr(chstore, "_DENSE_CELLS", 20_000_000 if dense else 0)
            chosen = [w for w in batch if selector.matches(w.labels)]
            for group_by in ((), MERGE_ALL, ("parity",)):
                want: dict = {}
                want_totals: dict = {}
                for w in chosen:
                    key = Labels.of({k: w.labels.get(k, "") for k in group_by}) if group_by else w.labels
                    acc = want.setdefault(key, {})
                    for stack, c in w.profile.items():
                        acc[stack] = acc.get(stack, 0) + c
                    want_totals[key, w.start] = want_totals.get((key, w.start), 0) + w.profile.total
                got = await store.read_merged(selector, T0, T0 + 60, StackTable(), group_by)
                assert {k: p.as_dict() for k, p in got.items()} == want, (selector, group_by)
                totals = await store.totals(selector, T0, T0 + 60, group_by)
                assert sorted((k.items_, t, n) for k, t, n in totals) == sorted(
                    (k.items_, t, n) for (k, t), n in want_totals.items()), (selector, group_by)
    finally:
        await store.close()


async def test_pushdown_over_series_chunks_long_queries_and_late_stacks(
    clickhouse: ClickHouseServer, clickhouse_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read_merged_pruned with groups spread over chunked queries, every query sent with a raised
    max_query_size, and stacks written between its reads (plain read instead): the metadata
    flame JSON always equals the one from the full grouped read."""
    from aggregator import query
    from stacks.tree import METADATA_LEVELS

    monkeypatch.setattr(chstore, "_GROUP_CHUNK", 7)  # 40 series: 6 grouped queries per read
    monkeypatch.setattr(transport, "_CHUNK", 9)  # the DISTINCT stack reads with a selector: 5 chunks
    monkeypatch.setattr(transport, "_DEFAULT_MAX_QUERY", 64)  # every query raises max_query_size
    monkeypatch.setattr(planner, "_PUSHDOWN_MIN_KEYS", 0)  # push down however small the data
    monkeypatch.setattr(planner, "_PUSHDOWN_MIN_GROUPS", 0)
    store = ClickHouseStore(clickhouse.storage_spec(clickhouse_db))
    await store.open()
    try:
        u = Frame.user
        # pod p00 is heavy (its main;serve;hN stacks are drawn); the same pod name in two
        # namespaces and a route label make several series per group, across chunks
        batch = [sw(T0 + 30 * (i % 2), {(u("main"), u("serve"), u(f"h{i % 3}")): 3000 if i % 20 == 0 else 3,
                                        (u(f"f{i % 4}"), u("x")): 1 + i % 5},
                    namespace=f"ns{i % 2}", pod=f"p{i % 10:02d}", route=f"/r{i % 3}") for i in range(40)]
        await store.write(batch)
        rng = query.Range(T0, T0 + 60, 30)
        # every series by a matcher too: the stack list then comes from the every-series rollups
        for selector in (ALL, Selector((Matcher("pod", "!=", "p07"),)), Selector((Matcher("pod", "=~", "p.*"),))):
            for share in (0.0, 0.001, 0.02, 0.2):
                series = await query.query_series(store, selector, rng, StackTable(), True)
                got = await query.flame_series(store, selector, rng, StackTable(), True, share)
                for max_nodes in (2, 6, 20000):
                    assert (query.flame_json_series(got, True, max_nodes, share)
                            == query.flame_json_series(series, True, max_nodes, share)), (selector, share, max_nodes)
                if share == 0.02:
                    assert store.last_pushdown["cut"] > 0 and store.last_pushdown["fetched"] > 0
        # A stack written after the DISTINCT read has no first-frame id in the next query: the
        # read falls back to the plain grouped read, which sees it.
        real = store._binary_rows

        async def late_write(sql: str, dtype):  # type: ignore[no-untyped-def]
            rows = await real(sql, dtype)
            if "DISTINCT stack" in sql:
                await store.write([sw(T0, {(u("late"), u("y")): 7}, namespace="ns0", pod="p00", route="/r0")])
            return rows

        monkeypatch.setattr(store, "_binary_rows", late_write)
        got = await store.read_merged_pruned(ALL, T0, T0 + 60, StackTable(), tuple(METADATA_LEVELS), 0.2)
        assert store.last_pushdown == {"cells": 0, "cut": 0, "fetched": -1}
        prof = got[Labels.of(namespace="ns0", pod="p00")]
        assert prof.as_dict()[(u("late"), u("y"))] == 7
    finally:
        await store.close()
