"""Grafana's SelectHeatmap (aggregator/heatmap.py): the log buckets exactly, and over Connect
(both codecs, a real aiohttp server, real SQLite) the counts of individual profiles (series
windows) and of root spans, checked against /api/v1 and the span store."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from aggregator import heatmap
from tests.aggregator.test_api import W, ingest_folded, make_client
from tests.aggregator.test_querier import CPU, PERIOD, call, raw_call
from tests.aggregator.test_spans import CPU_ID, WALL_ID
from tests.aggregator.test_spans import client as span_client  # noqa: F401  (a fixture)

START_MS, END_MS = (W - 300) * 1000, (W + 60) * 1000


@given(st.floats(min_value=1e-6, max_value=1e18, allow_nan=False))
def test_a_value_lies_in_its_bucket(v: float) -> None:
    k = heatmap.bucket_of(v)
    assert heatmap.y_min(k) <= v < heatmap.y_min(k + 1)


def test_buckets_are_a_quarter_octave_and_slots_are_bounded() -> None:
    assert [heatmap.bucket_of(v) for v in (1, 2, 4, 1024)] == [0, 4, 8, 40]
    assert heatmap.y_min(2) == 2 ** 0.5
    assert heatmap.slot_width(0, 30, 3600) == 60  # about 100 slots, a whole number of windows
    assert heatmap.slot_width(45, 30, 3600) == 60
    with pytest.raises(ValueError, match="give step >= 330 s"):
        heatmap.slot_width(30, 30, 7 * 86400)
    hm = heatmap.Heatmap(first=0, width=60)
    for t, v in ((0, 100), (59, 100), (60, 3), (61, 0)):
        hm.add((), t, v)
    k100, k3 = heatmap.bucket_of(100), heatmap.bucket_of(3)
    assert hm.series() == [((), [(0, [heatmap.y_min(k100)], [2]), (60, [heatmap.y_min(k3)], [1])])]


@pytest.fixture
async def client(tmp_path) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    c = await make_client(tmp_path)
    # prod: three windows (10, 10 and 40 samples); dev: one window (9 samples); 10 ms period.
    for start, text in ((W - 59, "main;work 10\n"), (W - 29, "main;work 4\nmain;io 6\n"), (W + 1, "main;work 40\n")):
        await ingest_folded(c, "shop.cpu{env=prod,pod=a}", text,
                            **{"from": str(start), "until": str(start + 10), "sampleRate": "100"})
    await ingest_folded(c, "cart.cpu{env=dev,pod=b}", "main;serve 9\n",
                        **{"from": str(W - 59), "until": str(W - 49), "sampleRate": "100"})
    yield c
    await c.close()


@pytest.mark.parametrize("codec", ["proto", "json"])
async def test_individual_profiles_counted_per_slot_and_bucket(client: TestClient, codec: str) -> None:
    req = {"profileTypeID": CPU, "labelSelector": "{}", "start": START_MS, "end": END_MS, "step": 60,
           "groupBy": ["env"]}
    got = await call(client, "SelectHeatmap", req, "querier.v1.SelectHeatmapResponse", codec)
    series = {tuple((lp.name, lp.value) for lp in s.labels): s for s in got.series}
    assert set(series) == {(("env", "dev"),), (("env", "prod"),)}
    prod = series[(("env", "prod"),)]
    # prod: 10 and 10 samples in the minute from W-60 (one bucket, count 2), 40 in the minute from W.
    ten, forty = heatmap.bucket_of(10 * PERIOD), heatmap.bucket_of(40 * PERIOD)
    assert [(s.timestamp, list(s.y_min), list(s.counts)) for s in prod.slots] == [
        ((W - 60) * 1000, [heatmap.y_min(ten)], [2]), (W * 1000, [heatmap.y_min(forty)], [1])]
    dev = series[(("env", "dev"),)]
    assert [(s.timestamp, list(s.counts)) for s in dev.slots] == [((W - 60) * 1000, [1])]
    # The profiles counted are the series windows /api/v1/timeline shows.
    r = await client.get(f"/api/v1/timeline?from={W - 300}&until={W + 60}&group_by=env")
    points = {s["group"]: [n for _, n in s["points"] if n] for s in (await r.json())["series"]}
    assert sum(sum(s.counts) for s in prod.slots) == len(points["prod"]) == 3
    one = await call(client, "SelectHeatmap", {**req, "groupBy": [], "limit": 1}, "querier.v1.SelectHeatmapResponse")
    assert len(one.series) == 1 and sum(c for s in one.series[0].slots for c in s.counts) == 4


async def test_bad_heatmap_requests_are_invalid_argument(client: TestClient) -> None:
    req = {"profileTypeID": CPU, "start": (W - 7 * 86400) * 1000, "end": END_MS, "step": 30}
    status, body, _ = await raw_call(client, "SelectHeatmap", req)
    assert status == 400 and json.loads(body)["code"] == "invalid_argument" and "give step >=" in body.decode()
    status, body, _ = await raw_call(client, "SelectHeatmap", {**req, "step": 3600, "groupBy": ["5x"]})
    assert status == 400 and "5x" in body.decode(), body


async def test_span_heatmap_counts_root_spans_by_wall_and_cpu_time(span_client: TestClient) -> None:  # noqa: F811
    from tests.aggregator.test_spans import NOW

    rng = {"start": int((NOW - 3600) * 1000), "end": int((NOW + 60) * 1000), "step": 3660}
    wall = await call(span_client, "SelectHeatmap", {"profileTypeID": WALL_ID, "queryType": "HEATMAP_QUERY_TYPE_SPAN",
                                                     "groupBy": ["pod"], **rng}, "querier.v1.SelectHeatmapResponse",
                      "json")
    by_pod = {s.labels[0].value: s for s in wall.series}
    # admin-1: spans a1 (300 ms wall), b2 (100 ms), c3 (50 ms); admin-2: d4 (120 ms)
    cells = sorted((y, c) for s in by_pod["admin-1"].slots for y, c in zip(s.y_min, s.counts, strict=True))
    assert cells == sorted((heatmap.y_min(heatmap.bucket_of(v)), 1) for v in (300e6, 100e6, 50e6))
    assert [list(s.counts) for s in by_pod["admin-2"].slots] == [[1]]
    cpu = await call(span_client, "SelectHeatmap", {"profileTypeID": CPU_ID, "queryType": "HEATMAP_QUERY_TYPE_SPAN",
                                                    **rng}, "querier.v1.SelectHeatmapResponse")
    # only a1 has CPU samples (200 ms); spans without CPU time show nothing
    assert [(list(s.y_min), list(s.counts)) for s in cpu.series[0].slots] == [
        ([heatmap.y_min(heatmap.bucket_of(200e6))], [1])]
