"""bench/query.py's ClickHouse fill (rows generated inside ClickHouse) has the bench's shape, and
its rollups and window totals are the views' own sums of what was inserted."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

from aggregator.store.clickhouse import ClickHouseStore

ROOT = Path(__file__).resolve().parents[2]


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_query", ROOT / "bench" / "query.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_query"] = mod
    spec.loader.exec_module(mod)
    return mod


async def test_clickhouse_fill_has_the_shape_and_the_views_roll_it_up(clickhouse, tmp_path) -> None:  # type: ignore[no-untyped-def]
    q = _bench()
    db = f"fw_benchfill_{uuid.uuid4().hex[:10]}"
    spec = clickhouse.storage_spec(db)
    hours = 0.5  # 60 windows: two 360-window chunks would be 6 h; this one is a partial chunk
    samples = await q.fill(spec, str(tmp_path), hours, 150, 3000)
    store = ClickHouseStore(spec)
    await store.open()
    try:
        async def one(sql: str) -> dict:  # type: ignore[type-arg]
            return (await store._post_json(sql))[0]

        windows = int(hours * 3600 / q.W)
        series = q.NAMESPACES * q.PODS
        got = await one(f"SELECT sum(count) AS n, count() AS rows, min(count) AS lo, max(count) AS hi, "
                        f"uniqExact(window) AS w, uniqExact(series) AS s FROM {db}.samples WHERE window > {q.T0}")
        # per series window: 150 draws with replacement (duplicates summed by SummingMergeTree later)
        assert int(got["rows"]) <= (windows - 1) * series * 150
        assert int(got["w"]) == windows - 1 and int(got["s"]) == series
        assert int(got["lo"]) >= 1 and int(got["hi"]) <= 29
        first = await one(f"SELECT sum(count) AS n FROM {db}.samples WHERE window = {q.T0}")
        assert samples == int(got["n"]) + int(first["n"])
        # ~146 distinct of the 3,000-stack pool per series window (150 uniform draws)
        distinct = await one(f"SELECT avg(d) AS a, min(d) AS lo FROM (SELECT series, window, uniqExact(stack) AS d "
                             f"FROM {db}.samples WHERE window > {q.T0} GROUP BY series, window)")
        assert 143 < float(distinct["a"]) < 149 and int(distinct["lo"]) > 120
        # every drawn stack is a pool stack written by store.write (its names resolve)
        unknown = await one(f"SELECT count() AS n FROM {db}.samples WHERE stack NOT IN (SELECT hash FROM {db}.stacks)")
        assert int(unknown["n"]) == 0
        sw = await one(f"SELECT count() AS n FROM {db}.series_windows")
        assert int(sw["n"]) == windows * series
        # the materialized views saw every inserted row
        for table in ("samples_1h", "samples_1d", "window_totals", "window_totals_1h", "stacks_1h", "stacks_1d"):
            rolled = await one(f"SELECT sum(count) AS n FROM {db}.{table}")
            assert int(rolled["n"]) == samples, table
        days = await one(f"SELECT count() AS n FROM (SELECT DISTINCT window, series FROM {db}.series_days)")
        assert int(days["n"]) == series  # half an hour: one day
        # merged as a live store's older periods are: one part per rollup partition
        split = await store._post_json(
            f"SELECT table, partition, count() AS n FROM system.parts WHERE database = '{db}' AND active "
            "AND table IN ('samples_1h', 'samples_1d', 'window_totals', 'window_totals_1h', 'stacks_1h', 'stacks_1d', "
            "'series_days') GROUP BY table, partition HAVING n > 1")
        assert split == []
        # the store reads the same total back through its rollup-aware path
        from stacks.model import StackTable
        from stacks.selector import Selector

        merged = await store.read_merged(Selector(), q.T0, q.T0 + windows * q.W, StackTable(), ())
        assert sum(p.total for p in merged.values()) == samples
    finally:
        await store._post(f"DROP DATABASE IF EXISTS {db}")
        await store.close()
