"""Pyroscope's read API in-process: querier.v1 Connect methods in both codecs, /pyroscope/* routes,
errors in Connect's shape, and Bearer/Basic auth (issue 26). Every answer is checked against the
/api/v1 route it stands for. The real clients (Go connect client, Perses) are in
tests/aggregator/test_pyroscope_clients.py."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from google.protobuf import json_format

from aggregator import _proto
from stacks import flamebearer
from stacks.folded import parse
from stacks.model import StackTable
from stacks.pprof import decode_pprof, encode_pprof
from tests.aggregator.test_api import NOW, RANGE, W, ingest_folded, make_client, q

M = _proto.message
CPU = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
PERIOD = 10_000_000  # sampleRate=100
START_MS, END_MS = (W - 300) * 1000, (W + 60) * 1000
PROD_SEL, DEV_SEL = '{env="prod"}', '{env="dev"}'
PROD = q(PROD_SEL)
FOLDED_A = "main;work;compute 10\nmain;idle_[k] 5\nmain;work;io 3\n"
FOLDED_B = "main;serve;parse 7\nmain;work;compute 2\n"


async def _seed(client: TestClient) -> None:
    await ingest_folded(client, "shop.cpu{env=prod,pod=a}", FOLDED_A,
                        **{"from": str(W + 1), "until": str(W + 11), "sampleRate": "100"})
    await ingest_folded(client, "cart.cpu{env=dev,pod=b}", FOLDED_B,
                        **{"from": str(W - 59), "until": str(W - 49), "sampleRate": "100"})


@pytest.fixture
async def client(tmp_path) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    c = await make_client(tmp_path)
    await _seed(c)
    yield c
    await c.close()


@pytest.fixture(params=["sqlite", pytest.param("clickhouse", marks=[pytest.mark.clickhouse, pytest.mark.slow])])
async def any_client(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    """The seeded client on SQLite and on a real ClickHouse (tests/aggregator/conftest.py)."""
    overrides = {}
    if request.param == "clickhouse":
        ch, db = request.getfixturevalue("clickhouse"), request.getfixturevalue("clickhouse_db")
        overrides["storage"] = ch.storage_spec(db)
    c = await make_client(tmp_path, **overrides)
    await _seed(c)
    yield c
    await c.close()


async def call(client: TestClient, method: str, req: dict, resp: str, codec: str = "proto",
               gzipped: bool = False, service: str = "querier.v1.QuerierService"):  # type: ignore[no-untyped-def]
    """One Connect unary call; returns the decoded response message (asserting 200)."""
    status, body, _ = await raw_call(client, method, req, codec, gzipped, service)
    assert status == 200, body
    out = M(resp)()
    if codec == "json":
        json_format.Parse(body, out)
    else:
        out.ParseFromString(body)
    return out


async def raw_call(client: TestClient, method: str, req: dict, codec: str = "proto", gzipped: bool = False,
                   service: str = "querier.v1.QuerierService", headers: dict | None = None):  # type: ignore[no-untyped-def]
    msg = json_format.ParseDict(req, M(_request_of(method))())
    body = json_format.MessageToJson(msg).encode() if codec == "json" else msg.SerializeToString()
    h = {"Content-Type": f"application/{codec}", "Connect-Protocol-Version": "1", **(headers or {})}
    if gzipped:
        body, h["Content-Encoding"] = gzip.compress(body), "gzip"
    r = await client.post(f"/{service}/{method}", data=body, headers=h)
    return r.status, await r.read(), r.headers


def _request_of(method: str) -> str:
    from aggregator.querier import METHODS

    return next(m.request for m in METHODS if m.path.endswith("/" + method))


@pytest.mark.parametrize("codec", ["proto", "json"])
async def test_grafana_calls_answer_as_api_v1(any_client: TestClient, codec: str) -> None:
    client = any_client
    rng = {"start": START_MS, "end": END_MS}
    types = await call(client, "ProfileTypes", rng, "querier.v1.ProfileTypesResponse", codec)
    api_types = await (await client.get(f"/api/v1/profile_types?{RANGE}")).json()
    assert [t.ID for t in types.profile_types] == [t["id"] for t in api_types["profile_types"]] == [CPU]
    assert types.profile_types[0].sample_unit == "nanoseconds"

    names = await call(client, "LabelNames", {"matchers": ["{}"], **rng}, "types.v1.LabelNamesResponse", codec)
    api_names = (await (await client.get(f"/api/v1/labels?{RANGE}")).json())["names"]
    assert [n for n in names.names if not n.startswith("__")] == api_names
    assert "__profile_type__" in names.names and "__period__" not in names.names

    values = await call(client, "LabelValues", {"name": "service_name", "matchers": ['{env="prod"}'], **rng},
                        "types.v1.LabelValuesResponse", codec)
    api_values = await (await client.get(f"/api/v1/label/service_name/values?query={PROD}&{RANGE}")).json()
    assert list(values.names) == api_values["values"] == ["shop"]

    series = await call(client, "Series", {"matchers": ["{}"], "labelNames": ["service_name", "pod"], **rng},
                        "querier.v1.SeriesResponse", codec)
    assert [{p.name: p.value for p in ls.labels} for ls in series.labels_set] == [
        {"pod": "a", "service_name": "shop"}, {"pod": "b", "service_name": "cart"}]

    sel = {"profileTypeID": CPU, "labelSelector": "{}", **rng}
    got = await call(client, "SelectSeries", {**sel, "groupBy": ["service_name"], "step": 15.0},
                     "querier.v1.SelectSeriesResponse", codec)
    tl = await (await client.get(f"/api/v1/timeline?query={q('{}')}&{RANGE}&group_by=service_name")).json()
    assert tl["period_ns"] == PERIOD
    want = {s["group"]: [(t * 1000, n * PERIOD) for t, n in s["points"]] for s in tl["series"]}
    assert {s.labels[0].value: [(p.timestamp, p.value) for p in s.points] for s in got.series} == want
    # step 60 s sums two 30 s windows per point; limit keeps the heaviest series
    got = await call(client, "SelectSeries", {**sel, "groupBy": ["service_name"], "step": 60.0, "limit": 1},
                     "querier.v1.SelectSeriesResponse", codec)
    assert [s.labels[0].value for s in got.series] == ["shop"]
    assert sum(p.value for p in got.series[0].points) == 18 * PERIOD
    assert all((p.timestamp // 1000 - (W - 300) // 30 * 30) % 60 == 0 for p in got.series[0].points)

    # two labels: one series per (service_name, pod) combination
    got = await call(client, "SelectSeries", {**sel, "groupBy": ["service_name", "pod"], "step": 3600.0},
                     "querier.v1.SelectSeriesResponse", codec)
    assert {tuple((p.name, p.value) for p in s.labels): sum(p.value for p in s.points) for s in got.series} == {
        (("service_name", "shop"), ("pod", "a")): 18 * PERIOD, (("service_name", "cart"), ("pod", "b")): 9 * PERIOD}
    assert [len(s.points) for s in got.series] == [1, 1]

    fg = (await call(client, "SelectMergeStacktraces", {**sel, "maxNodes": 3},
                     "querier.v1.SelectMergeStacktracesResponse", codec)).flamegraph
    render = await (await client.get(f"/api/v1/render?query={q('{}')}&{RANGE}&max_nodes=3")).json()
    assert fg.total == render["total"] * PERIOD == 27 * PERIOD
    assert fg.names[0] == "total" and len(fg.levels) == render["max_depth"] + 1
    assert sum(len(lv.values) for lv in fg.levels) == 4 * len(render["nodes"]["name"])
    assert fg.max_self == max(render["nodes"]["self"]) * PERIOD
    full = (await call(client, "SelectMergeStacktraces", sel, "querier.v1.SelectMergeStacktracesResponse", codec))
    totals = flamebearer.node_totals([list(lv.values) for lv in full.flamegraph.levels])
    by_name = {tuple(full.flamegraph.names[int(i)] for i in path): t for path, t in totals.items()}
    assert by_name[("total", "main", "work", "compute")] == 12 * PERIOD
    assert by_name[("total", "main", "serve")] == 7 * PERIOD


@pytest.mark.parametrize("codec", ["proto", "json"])
async def test_pprof_answers_equal_render_pprof(any_client: TestClient, codec: str) -> None:
    client = any_client
    sel = {"profileTypeID": CPU, "labelSelector": '{env="prod"}', "start": START_MS, "end": END_MS}
    want = decode_pprof(gzip.decompress(await (await client.get(
        f"/api/v1/render?query={PROD}&{RANGE}&format=pprof")).read()))
    prof = await call(client, "SelectMergeProfile", sel, "google.v1.Profile", codec)
    st = (await call(client, "SelectMergeStacktraces", {**sel, "format": "PROFILE_FORMAT_PPROF"},
                     "querier.v1.SelectMergeStacktracesResponse", codec)).pprof.profile
    for p in (prof, st):
        got = decode_pprof(p.SerializeToString())
        assert _stacks(got) == _stacks(want) and len(_stacks(got)) == 3
        assert sum(s.value[0] for s in p.sample) == 18 * PERIOD


def _stacks(d) -> dict:  # type: ignore[no-untyped-def]
    return {tuple(f.name for f in stack): n for _, prof in d.series for stack, n in prof.items()}


async def test_empty_stack_trace_selector_is_none(client: TestClient) -> None:
    got = await call(client, "SelectMergeStacktraces", {"profileTypeID": CPU, "start": START_MS, "end": END_MS,
                                                        "stackTraceSelector": {}},
                     "querier.v1.SelectMergeStacktracesResponse", "json")
    assert got.flamegraph.total == 27 * PERIOD


async def test_gzip_request_settings_stats_and_unimplemented(client: TestClient) -> None:
    got = await call(client, "ProfileTypes", {"start": START_MS, "end": END_MS}, "querier.v1.ProfileTypesResponse",
                     gzipped=True)
    assert [t.ID for t in got.profile_types] == [CPU]
    s = await call(client, "Get", {}, "settings.v1.GetSettingsResponse", "json", service="settings.v1.SettingsService")
    assert list(s.settings) == []
    stats = await call(client, "GetProfileStats", {}, "types.v1.GetProfileStatsResponse", "json")
    assert stats.data_ingested and stats.oldest_profile_time == (W - 60) * 1000
    assert stats.newest_profile_time == (W + 30) * 1000
    # Span profiles (tests/aggregator/test_spans.py): without span ids the request is incomplete.
    status, body, _ = await raw_call(client, "SelectMergeSpanProfile",
                                     {"profileTypeID": CPU, "start": START_MS, "end": END_MS})
    assert status == 400 and json.loads(body)["code"] == "invalid_argument", body


@pytest.mark.parametrize("method,req,code,status,needle", [
    ("SelectMergeStacktraces", {"profileTypeID": CPU, "labelSelector": "{env=", "start": 1, "end": 2},
     "invalid_argument", 400, "query"),
    ("SelectMergeStacktraces", {"profileTypeID": "cpu", "start": START_MS, "end": END_MS},
     "invalid_argument", 400, "profile type"),
    ("SelectMergeStacktraces", {"profileTypeID": CPU, "start": END_MS, "end": START_MS},
     "invalid_argument", 400, "increasing"),
    ("SelectMergeStacktraces", {"profileTypeID": CPU, "start": START_MS, "end": END_MS, "maxNodes": 10**9},
     "invalid_argument", 400, "max_nodes"),
    ("SelectSeries", {"profileTypeID": CPU, "start": START_MS, "end": END_MS, "groupBy": ["a"] * 9},
     "invalid_argument", 400, "at most 8"),
    ("LabelNames", {"matchers": ["{}"] * 65, "start": START_MS, "end": END_MS}, "invalid_argument", 400,
     "at most 64"),
    ("SelectMergeStacktraces", {"profileTypeID": CPU, "start": START_MS, "end": END_MS, "spanSelector": ["ab"]},
     "unimplemented", 501, "span_selector"),
    ("SelectMergeStacktraces", {"profileTypeID": CPU, "start": START_MS, "end": END_MS,
                                "stackTraceSelector": {"callSite": [{"name": "main"}]}},
     "unimplemented", 501, "stack_trace_selector"),
    ("LabelValues", {"name": "bad name", "start": START_MS, "end": END_MS}, "invalid_argument", 400, "label name"),
])
async def test_errors_are_connect_errors(client: TestClient, method: str, req: dict, code: str, status: int,
                                         needle: str) -> None:
    for codec in ("proto", "json"):
        got_status, body, headers = await raw_call(client, method, req, codec)
        assert got_status == status, body
        doc = json.loads(body)
        assert doc["code"] == code and needle in doc["message"], doc
        assert headers["Content-Type"].startswith("application/json")


async def test_large_answers_gzipped_when_asked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = await make_client(tmp_path)
    try:
        text = "".join(f"main;handler_{i};leaf_{i % 7} {i + 1}\n" for i in range(1500))
        await ingest_folded(c, "big.cpu", text, **{"from": str(W + 1), "sampleRate": "100"})
        req = M("querier.v1.SelectMergeStacktracesRequest")(profile_typeID=CPU, start=START_MS, end=END_MS)
        path = "/querier.v1.QuerierService/SelectMergeStacktraces"
        sizes = {}
        for enc in ("gzip", "identity"):
            r = await c.post(path, data=req.SerializeToString(), auto_decompress=False,
                             headers={"Content-Type": "application/proto", "Accept-Encoding": enc})
            assert r.status == 200
            raw = await r.read()
            sizes[enc] = len(raw)
            body = gzip.decompress(raw) if r.headers.get("Content-Encoding") == "gzip" else raw
            fg = M("querier.v1.SelectMergeStacktracesResponse").FromString(body).flamegraph
            assert fg.total == sum(range(1, 1501)) * PERIOD
        assert sizes["gzip"] * 2 < sizes["identity"]
    finally:
        await c.close()


async def test_bad_bodies_and_types(client: TestClient) -> None:
    path = "/querier.v1.QuerierService/ProfileTypes"
    for data, ctype, needle in [(b"\xff\xff", "application/proto", "ProfileTypesRequest"),
                                (b"{not json", "application/json", "ProfileTypesRequest"),
                                (b"", "text/plain", "Content-Type")]:
        r = await client.post(path, data=data, headers={"Content-Type": ctype})
        doc = await r.json()
        assert r.status == 400 and doc["code"] == "invalid_argument" and needle in doc["message"], doc
    r = await client.post(path, data=b"xx", headers={"Content-Type": "application/proto", "Content-Encoding": "gzip"})
    assert r.status == 400 and "gzip" in (await r.json())["message"]
    r = await client.post("/querier.v1.QuerierService/Nope", data=b"", headers={"Content-Type": "application/proto"})
    assert r.status == 501 and (await r.json())["code"] == "unimplemented"


async def test_pyroscope_http_routes(client: TestClient) -> None:
    sel = quote(CPU + "{}", safe="")
    # Pyroscope's legacy API takes milliseconds too
    r = await client.get(f"/pyroscope/render?query={sel}&from={START_MS}&until={END_MS}&format=json")
    assert r.status == 200, await r.text()
    doc = await r.json()
    render = await (await client.get(f"/api/v1/render?query={q('{}')}&{RANGE}")).json()
    fb = doc["flamebearer"]
    assert fb["numTicks"] == render["total"] == 27 and fb["names"][0] == "total"
    assert fb["levels"][0] == [0, 27, 0, 0]
    assert doc["metadata"]["units"] == "samples" and doc["metadata"]["sampleRate"] == 100
    assert sum(doc["timeline"]["samples"]) == 27 and doc["timeline"]["durationDelta"] == 30

    d = await client.get(f"/pyroscope/render-diff?leftQuery={quote(CPU + DEV_SEL, safe='')}"
                         f"&rightQuery={quote(CPU + PROD_SEL, safe='')}&leftFrom={W - 300}&leftUntil={W + 60}"
                         f"&rightFrom={W - 300}&rightUntil={W + 60}")
    assert d.status == 200, await d.text()
    diff = await d.json()
    assert (diff["leftTicks"], diff["rightTicks"]) == (9, 18) and diff["metadata"]["format"] == "double"
    assert diff["flamebearer"]["levels"][0] == [0, 9, 0, 0, 18, 0, 0]

    r = await client.get(f"/pyroscope/label-values?label=pod&query={sel}&{RANGE}")
    assert await r.json() == ["a", "b"]
    r = await client.get(f"/pyroscope/labels?query={sel}&{RANGE}")
    assert "service_name" in await r.json()
    r = await client.get(f"/pyroscope/render?query={q('{env=')}&{RANGE}")
    assert r.status == 400 and "query" in (await r.json())["error"]

    r = await client.post(f"/pyroscope/ingest?name=late.cpu&from={W + 2}&sampleRate=100", data=b"x;y 4\n")
    assert r.status == 200, await r.text()
    r = await client.get(f"/pyroscope/label-values?label=service_name&{RANGE}")
    assert "late" in await r.json()


async def test_read_token_as_bearer_and_basic(tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = await make_client(tmp_path, read_token="s3cret", push_token="pushme")
    try:
        req = M("querier.v1.ProfileTypesRequest")(start=START_MS, end=END_MS).SerializeToString()
        path = "/querier.v1.QuerierService/ProfileTypes"
        base = {"Content-Type": "application/proto"}
        basic = "Basic " + base64.b64encode(b"grafana:s3cret").decode()
        bad_basic = "Basic " + base64.b64encode(b"grafana:nope").decode()
        for auth, status in [(None, 401), ("Bearer s3cret", 200), (basic, 200), (bad_basic, 401),
                             ("Basic !!!", 401), ("Bearer pushme", 401)]:
            r = await c.post(path, data=req, headers={**base, **({"Authorization": auth} if auth else {})})
            assert r.status == status, (auth, await r.text())
            if status == 401:
                assert (await r.json())["code"] == "unauthenticated"
        r = await c.get(f"/pyroscope/render?query={q('{}')}&{RANGE}")
        assert r.status == 401 and "error" in await r.json()
        r = await c.get(f"/pyroscope/render?query={q('{}')}&{RANGE}", headers={"Authorization": basic})
        assert r.status == 200
        r = await c.get(f"/api/v1/labels?{RANGE}", headers={"Authorization": basic})
        assert r.status == 200
        # /pyroscope/ingest is a push route: the push token, not the read token
        r = await c.post(f"/pyroscope/ingest?name=x.cpu&from={W}", data=b"a 1\n", headers={"Authorization": basic})
        assert r.status == 401
        r = await c.post(f"/pyroscope/ingest?name=x.cpu&from={W}", data=b"a 1\n",
                         headers={"Authorization": "Bearer pushme"})
        assert r.status == 200
    finally:
        await c.close()


assert NOW  # the injected clock of test_api's clients


async def test_bytes_type_is_not_scaled(client: TestClient) -> None:
    mem = encode_pprof(parse("main;alloc 4096\nmain;buf 1024\n", StackTable()), sample_type=("alloc_space", "bytes"),
                       period_type=("space", "bytes"), period_nanos=512 * 1024)
    r = await client.post(f"/ingest?name=shop&from={W + 1}&format=pprof", data=gzip.compress(mem))
    assert r.status == 200, await r.text()
    types = await call(client, "ProfileTypes", {"start": START_MS, "end": END_MS}, "querier.v1.ProfileTypesResponse")
    mem_id = next(t.ID for t in types.profile_types if t.sample_unit == "bytes")
    sel = {"profileTypeID": mem_id, "labelSelector": "{}", "start": START_MS, "end": END_MS}
    fg = (await call(client, "SelectMergeStacktraces", sel, "querier.v1.SelectMergeStacktracesResponse")).flamegraph
    render = await (await client.get(f"/api/v1/render?query={q(mem_id + '{}')}&{RANGE}")).json()
    assert fg.total == render["total"] == 5120 and render["unit"] == "bytes"
    got = await call(client, "SelectSeries", {**sel, "step": 3600.0}, "querier.v1.SelectSeriesResponse")
    assert [p.value for s in got.series for p in s.points] == [5120.0]
    doc = await (await client.get(f"/pyroscope/render?query={q(mem_id + '{}')}&{RANGE}")).json()
    assert doc["flamebearer"]["numTicks"] == 5120 and doc["metadata"]["units"] == "bytes"


@pytest.mark.parametrize("store", [
    "sqlite", pytest.param("clickhouse", marks=[pytest.mark.clickhouse, pytest.mark.slow])])
async def test_series_over_weeks_reads_in_chunks_and_lists_each_series_once(
        request: pytest.FixtureRequest, tmp_path, store: str) -> None:  # type: ignore[no-untyped-def]
    """``Series`` over 65 days reads bounded chunks of four weeks, summed per week: each series of
    the range appears once, none from outside it, on both stores."""
    overrides: dict = {"retention_seconds": 0}
    if store == "clickhouse":
        ch, db = request.getfixturevalue("clickhouse"), request.getfixturevalue("clickhouse_db")
        overrides["storage"] = ch.storage_spec(db)
    client = await make_client(tmp_path, **overrides)
    try:
        day = 86_400
        for k in range(14):  # one pod every 5 days, back 65 days; pods 0 and 1 twice
            t = W - k * 5 * day
            await ingest_folded(client, f"shop.cpu{{pod=p{k}}}", FOLDED_B,
                                **{"from": str(t + 1), "until": str(t + 11), "sampleRate": "100"})
            if k < 2:
                await ingest_folded(client, f"shop.cpu{{pod=p{k}}}", FOLDED_A,
                                    **{"from": str(t - 3 * day), "until": str(t - 3 * day + 10)})

        async def pods(start: int) -> list[str]:
            got = await call(client, "Series", {"matchers": ["{}"], "labelNames": ["pod"], "start": start * 1000,
                                                "end": END_MS}, "querier.v1.SeriesResponse")
            return [ls.labels[0].value for ls in got.labels_set]

        assert await pods(W - 70 * day) == sorted(f"p{k}" for k in range(14))
        assert await pods(W - 20 * day - 60) == ["p0", "p1", "p2", "p3", "p4"]
        assert await pods(W - 60) == ["p0"]
    finally:
        await client.close()
