"""Span profiles and slow requests (issue 28 items 2-3) over HTTP: span and trace ids kept beside
the samples (never series labels), flame graphs of one span / one trace / a span name, the
requests table, and the span store's bounds (real aiohttp server, real SQLite, injected clock)."""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.ingest import SpanItem
from aggregator.spans import SpanStore, decode_profile, encode_profile
from stacks.folded import parse
from stacks.model import Frame, Kind, Labels, Profile, StackTable, function_stack
from stacks.pprof import encode_pprof
from stacks.push import PushSeries, RawSample, encode_push_request
from stacks.selector import Selector
from tests.aggregator.test_api import NOW, RANGE, make_client, q

WALL_ID = "wall:wall:nanoseconds:wall:nanoseconds"
CPU_ID = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
T1, T2 = "a" * 32, "b" * 32
ADMIN_NAME = q('{span_name="GET /admin"}')
POD2 = q('{pod="admin-2"}')


def raw(text: str, **span: str) -> RawSample:
    """A pprof of folded ``text`` whose samples all carry the ``span`` labels."""
    return RawSample(encode_pprof(parse(text), sample_labels=span or None, time_nanos=int(NOW * 1e9)))


async def push(client: TestClient, labels: dict[str, str], *samples: RawSample) -> None:
    body = gzip.compress(encode_push_request([PushSeries(tuple(labels.items()), samples)]))
    r = await client.post("/push.v1.PusherService/Push", data=body, headers={"Content-Type": "application/proto"})
    assert r.status == 200, await r.text()


@pytest.fixture
async def client(tmp_path) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    c = await make_client(tmp_path)
    wall = {"__name__": "process_cpu", "service_name": "admin", "pod": "admin-1", "oncpu": "false"}
    cpu = {"__name__": "process_cpu", "service_name": "admin", "pod": "admin-1"}
    await push(c, wall,
               raw("main;handle;createSampleImages;resize 25\nmain;handle 5\n",
                   span_id="00000000000000a1", trace_id=T1, span_name="GET /admin"),
               raw("main;handle;fetch 10\n", span_id="00000000000000b2", trace_id=T2, span_name="GET /admin"),
               raw("main;health 5\n", span_id="00000000000000c3", trace_id=T1, span_name="GET /health"),
               raw("main;idle 7\n"))  # untagged: in the series, in no span
    await push(c, cpu, raw("main;handle;createSampleImages;resize 20\n", span_id="00000000000000a1", trace_id=T1,
                           span_name="GET /admin"))
    await push(c, {**wall, "pod": "admin-2"},
               raw("main;handle;fetch 12\n", span_id="00000000000000d4", trace_id=T2, span_name="GET /admin"))
    yield c
    await c.close()


async def get(client: TestClient, path: str, status: int = 200) -> dict:
    r = await client.get(path)
    assert r.status == status, await r.text()
    return await r.json()


async def test_ids_are_not_labels_and_samples_stay_in_series(client: TestClient) -> None:
    names = (await get(client, f"/api/v1/labels?{RANGE}&profile_type={WALL_ID}"))["names"]
    assert "span_name" in names and "span_id" not in names and "trace_id" not in names
    top = await get(client, f"/api/v1/top?{RANGE}&profile_type={WALL_ID}")
    assert top["total"] == 30 + 10 + 5 + 7 + 12


async def test_span_trace_and_name_flamegraphs(client: TestClient) -> None:
    one = await get(client, "/api/v1/span_profile?span_id=00000000000000a1")
    assert (one["total"], one["profile_type"], one["spans"]) == (30, WALL_ID, 1)  # wall first
    names = [one["names"][i] for i in one["nodes"]["name"]]
    assert "createSampleImages" in names and "fetch" not in names
    cpu = await get(client, f"/api/v1/span_profile?span_id=00000000000000a1&profile_type={CPU_ID}")
    assert cpu["total"] == 20
    trace = await get(client, f"/api/v1/span_profile?trace_id={T1}")
    assert trace["total"] == 35 and trace["spans"] == 2
    named = await get(client, f"/api/v1/span_profile?span_name={quote('GET /admin')}&{RANGE}")
    assert named["total"] == 30 + 10 + 12 and named["spans"] == 3
    # the same as the series label: all root spans of a name are also an ordinary query
    r = await get(client, f"/api/v1/top?{RANGE}&profile_type={WALL_ID}&query={ADMIN_NAME}")
    assert r["total"] == named["total"]
    pod2 = await get(client, f"/api/v1/span_profile?span_name={quote('GET /admin')}&{RANGE}"
                             f"&query={POD2}")
    assert pod2["total"] == 12
    folded = await (await client.get("/api/v1/span_profile?span_id=00000000000000b2&format=folded")).text()
    assert folded == "main;handle;fetch 10\n"


async def test_slow_requests_ranked_by_wall_time(client: TestClient) -> None:
    doc = await get(client, f"/api/v1/requests?{RANGE}")
    rows = doc["rows"]
    assert [(r["span_id"][-2:], r["wall_ns"], r["cpu_ns"]) for r in rows] == [
        ("a1", 300_000_000, 200_000_000), ("d4", 120_000_000, 0), ("b2", 100_000_000, 0), ("c3", 50_000_000, 0)]
    assert rows[0]["span_name"] == "GET /admin" and rows[0]["pod"] == "admin-1" and rows[0]["trace_id"] == T1
    assert rows[1]["pod"] == "admin-2" and doc["spans"] == 4 and not doc["truncated"]
    # each row links to its span's flame graph, whose total is the span's wall samples
    linked = await get(client, rows[0]["flamegraph"])
    assert linked["total"] * 10_000_000 == rows[0]["wall_ns"]
    top2 = await get(client, f"/api/v1/requests?{RANGE}&limit=2&span_name={quote('GET /admin')}")
    assert [r["span_id"][-2:] for r in top2["rows"]] == ["a1", "d4"] and top2["truncated"] and top2["spans"] == 3
    only = await get(client, f"/api/v1/requests?{RANGE}&query={POD2}")
    assert [r["span_id"][-2:] for r in only["rows"]] == ["d4"]
    assert (await get(client, "/api/v1/requests?from=now-2h&until=now-1h"))["rows"] == []  # a range before the spans


@pytest.mark.parametrize(("qs", "words"), [
    ("", ["exactly one of span_id"]),
    ("span_id=a&trace_id=b", ["exactly one"]),
    ("span_id=" + "f" * 65, ["at most 64"]),
    ("span_id=ffff", ["no samples tagged span_id='ffff'"]),
    ("span_id=00000000000000a1&format=pprof", ["json, folded"]),
    ("span_id=00000000000000a1&query={x", ["query"]),
])
async def test_bad_span_queries_are_400(client: TestClient, qs: str, words: list[str]) -> None:
    r = await client.get("/api/v1/span_profile?" + qs)
    text = await r.text()
    assert r.status == 400, text
    for w in words:
        assert w in text
    r = await client.get("/api/v1/requests?limit=5000")
    assert r.status == 400 and "1..1000" in await r.text()


def test_encoding_keeps_any_frame_name() -> None:
    p = Profile.from_pairs([((Frame.user("a;b c"), Frame.kernel("k")), 3), ((Frame.metadata("pod"),), 2)])
    assert decode_profile(encode_profile(p), StackTable()).as_dict() == p.as_dict()


async def test_span_store_is_bounded_by_rows_and_retention(tmp_path) -> None:  # type: ignore[no-untyped-def]
    now = [10_000.0]
    store = SpanStore(tmp_path / "s.sqlite", max_rows=3, retention_seconds=100, clock=lambda: now[0], prune_every=0)
    labels = Labels.of({"service_name": "a", "__profile_type__": WALL_ID, "__period__": "10000000"})

    def item(i: int, t: float) -> SpanItem:
        return SpanItem(f"s{i}", "", labels, t, parse("main 1\n"))

    await store.add([item(i, 9_990.0) for i in range(5)])
    from aggregator.params import Range
    rng = Range(0, 20_000, 30)
    from stacks.selector import Selector
    rows, n = await store.requests(Selector(()), rng, 10)
    assert n == 3 and {r.span_id for r in rows} == {"s2", "s3", "s4"}  # the oldest went first
    now[0] = 10_200.0
    await store.add([item(9, 10_150.0)])
    rows, n = await store.requests(Selector(()), rng, 10)
    assert [r.span_id for r in rows] == ["s9"]  # older than the retention: gone
    off = SpanStore(tmp_path / "off.sqlite", max_rows=0, retention_seconds=0)
    assert await off.add([item(1, 1.0)]) == 0
    await store.close()
    await off.close()


async def test_a_failing_span_database_never_fails_the_push(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The span copy is a convenience: a broken spans.sqlite is logged and counted, the push and its
    samples in the series still succeed."""
    (tmp_path / "spans.sqlite").write_bytes(b"this is not a database" * 100)
    c = await make_client(tmp_path)
    try:
        await push(c, {"__name__": "process_cpu", "service_name": "admin"},
                   raw("main;f 3\n", span_id="00000000000000e5", span_name="GET /x"))
        top = await get(c, f"/api/v1/top?{RANGE}")
        assert top["total"] == 3
        from aggregator.handlers import SPANS
        assert c.server.app[SPANS].failed == 1
    finally:
        await c.close()


async def test_grafana_select_merge_span_profile_equals_span_profile(client: TestClient) -> None:
    """Grafana's SelectMergeSpanProfile (both Connect codecs) merges the named spans' samples:
    the same totals and frames as /api/v1/span_profile, in nanoseconds as Pyroscope shows them."""
    from tests.aggregator.test_querier import call, raw_call

    a1 = await get(client, f"/api/v1/span_profile?span_id=00000000000000a1&profile_type={WALL_ID}")
    b2 = await get(client, f"/api/v1/span_profile?span_id=00000000000000b2&profile_type={WALL_ID}")
    period = a1["period_ns"]
    assert period and b2["period_ns"] == period
    req = {"profileTypeID": WALL_ID, "labelSelector": "{}", "spanSelector": ["00000000000000a1", "00000000000000b2"],
           "start": int((NOW - 3600) * 1000), "end": int((NOW + 60) * 1000)}
    for codec in ("proto", "json"):
        got = await call(client, "SelectMergeSpanProfile", req, "querier.v1.SelectMergeSpanProfileResponse", codec)
        assert got.flamegraph.total == (a1["total"] + b2["total"]) * period == 40 * period
        assert {"createSampleImages", "fetch"} <= set(got.flamegraph.names)
        assert "health" not in got.flamegraph.names  # span c3 was not asked for
    cpu = await call(client, "SelectMergeSpanProfile", {**req, "profileTypeID": CPU_ID},
                     "querier.v1.SelectMergeSpanProfileResponse")
    assert cpu.flamegraph.total == 20 * period  # only a1 has CPU samples
    none = await call(client, "SelectMergeSpanProfile", {**req, "spanSelector": ["ffff"]},
                      "querier.v1.SelectMergeSpanProfileResponse")
    assert none.flamegraph.total == 0
    status, body, _ = await raw_call(client, "SelectMergeSpanProfile", {**req, "spanSelector": []})
    assert status == 400 and b"span_selector" in body


_frames = st.builds(lambda n, k, f, ln: Frame(n, k, f, ln), st.text(min_size=0, max_size=12),
                    st.sampled_from([Kind.USER, Kind.KERNEL, Kind.METADATA]),
                    st.sampled_from(["", "app.py", "/srv/lib/ü.py"]), st.sampled_from([0, 1, 7, 2**31]))
_profiles = st.lists(st.tuples(st.lists(_frames, min_size=1, max_size=6).map(tuple), st.integers(1, 2**40)),
                     min_size=1, max_size=8)


@settings(max_examples=25, deadline=None)
@given(st.lists(_profiles, min_size=1, max_size=5))
def test_interned_span_rows_read_back_exactly(tmp_path_factory, spans) -> None:  # type: ignore[no-untyped-def]
    """Span rows keep their samples as ids of interned stacks and frames (with file and line):
    every span reads back exactly what was added by line (repeated stacks summed), and by function
    with each function's lines merged, from the writing store and from a fresh one."""
    path = tmp_path_factory.mktemp("interned") / "s.sqlite"
    labels = Labels.of({"service_name": "a", "__profile_type__": WALL_ID, "__period__": "10000000"})
    want = {f"s{i}": Profile.from_pairs(pairs).as_dict() for i, pairs in enumerate(spans)}
    by_fn = {f"s{i}": Profile.from_pairs((function_stack(st), c) for st, c in pairs).as_dict()
             for i, pairs in enumerate(spans)}

    async def go() -> None:
        store = SpanStore(path, max_rows=1000, retention_seconds=0, clock=lambda: 100.0)
        assert await store.add([SpanItem(f"s{i}", "", labels, 50.0, Profile.from_pairs(p))
                                for i, p in enumerate(spans)]) == len(spans)
        fresh = SpanStore(path, max_rows=1000, retention_seconds=0, clock=lambda: 100.0)
        for reader in (store, fresh):
            for span_id, expect in want.items():
                _, got, n, _ = await reader.profile("span_id", span_id, None, None, Selector(()), lines=True)
                assert n == 1 and got.as_dict() == expect
                _, got, n, _ = await reader.profile("span_id", span_id, None, None, Selector(()))
                assert n == 1 and got.as_dict() == by_fn[span_id]
        await store.close()
        await fresh.close()

    asyncio.run(go())


async def test_rows_of_the_earlier_encoding_still_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A spans.sqlite written before stacks were interned (frame names inside each row's zlib blob)
    reads as before, and merges with interned rows of the same span."""
    path = tmp_path / "s.sqlite"
    labels = Labels.of({"service_name": "a", "__profile_type__": WALL_ID, "__period__": "10000000"})
    store = SpanStore(path, max_rows=1000, retention_seconds=0, clock=lambda: 100.0)
    await store.add([SpanItem("s1", "t1", labels, 50.0, parse("main;new 3\nmain 1\n"))])
    old = parse("main;old 5\nmain 2\n")
    with sqlite3.connect(path) as db:
        (series,) = db.execute("SELECT series FROM spans").fetchone()
        db.execute("INSERT INTO spans VALUES (?,?,?,?,?,?,?,?,?)",
                   ("s1", "t1", 60.0, WALL_ID, "", series, 10_000_000, old.total, encode_profile(old)))
        blobs = [b for (b,) in db.execute("SELECT stacks FROM spans ORDER BY t")]
    assert blobs[0][:1] == b"\x01" and blobs[1][:1] == b"\x78"  # interned, then the earlier zlib JSON
    _, got, n, _ = await store.profile("span_id", "s1", None, None, Selector(()))
    assert got.as_dict() == parse("main;new 3\nmain 3\nmain;old 5\n").as_dict() and n == 1
    await store.close()


ADMIN_PY = "/srv/tinyhats/admin.py"
LOCATED = Profile.from_pairs([
    ((Frame("main", Kind.USER, ADMIN_PY, 200), Frame("createSampleImages", Kind.USER, ADMIN_PY, 120),
      Frame("fetchMockup", Kind.USER, ADMIN_PY, 98)), 6),
    ((Frame("main", Kind.USER, ADMIN_PY, 200), Frame("createSampleImages", Kind.USER, ADMIN_PY, 121),
      Frame("thumbnail", Kind.USER, "/srv/tinyhats/images.py", 40)), 3),
    ((Frame("main", Kind.USER, ADMIN_PY, 200), Frame("createSampleImages", Kind.USER, ADMIN_PY, 120),
      Frame("fetchMockup", Kind.USER, ADMIN_PY, 98)), 1),
    ((Frame("main", Kind.USER, ADMIN_PY, 201), Frame("idle", Kind.USER)), 2),
], StackTable(lines=True))


async def test_span_profile_by_line_keeps_file_and_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A span pushed with located frames (pprof Line/Function.filename) reads back by line with
    each frame's file:line, exactly; the default (aggregate=function) answer has no locations and
    merges a function's lines."""
    c = await make_client(tmp_path)
    try:
        labels = {"__name__": "process_cpu", "service_name": "admin", "pod": "admin-1"}
        await push(c, labels, RawSample(encode_pprof(LOCATED, sample_labels={
            "span_id": "00000000000000e5", "trace_id": T1, "span_name": "GET /admin"}, time_nanos=int(NOW * 1e9))))
        base = f"/api/v1/span_profile?span_id=00000000000000e5&profile_type={CPU_ID}&min_share=0"
        by_fn = await get(c, base)
        by_line = await get(c, base + "&aggregate=line")
        assert "locations" not in by_fn and by_fn == await get(c, base + "&aggregate=function")
        assert by_fn["total"] == by_line["total"] == 12 and by_line["spans"] == 1
        names, locs = by_line["names"], by_line["locations"]
        nodes = by_line["nodes"]
        got: dict[tuple[str, str], int] = {}
        for ni, v in zip(nodes["name"][1:], nodes["total"][1:], strict=True):
            got[names[ni], locs[ni]] = got.get((names[ni], locs[ni]), 0) + v
        assert got == {("main", f"{ADMIN_PY}:200"): 10, ("main", f"{ADMIN_PY}:201"): 2,
                       ("createSampleImages", f"{ADMIN_PY}:120"): 7, ("createSampleImages", f"{ADMIN_PY}:121"): 3,
                       ("fetchMockup", f"{ADMIN_PY}:98"): 7, ("thumbnail", "/srv/tinyhats/images.py:40"): 3,
                       ("idle", ""): 2}
        fn: dict[str, int] = {}
        for ni, v in zip(by_fn["nodes"]["name"][1:], by_fn["nodes"]["total"][1:], strict=True):
            fn[by_fn["names"][ni]] = fn.get(by_fn["names"][ni], 0) + v
        assert fn == {"main": 12, "createSampleImages": 10, "fetchMockup": 7, "thumbnail": 3, "idle": 2}
        r = await c.get(base + "&aggregate=file")
        assert r.status == 400 and "aggregate" in await r.text()
        assert "source" not in by_line  # the series names no repository
        # A series naming its repository and git ref: the answer by line says where the source is.
        src = {"service_repository": "https://github.com/acme/tinyhats", "service_git_ref": "v2",
               "service_root_path": "/srv"}
        await push(c, {**labels, **src}, RawSample(encode_pprof(LOCATED, sample_labels={
            "span_id": "00000000000000f6", "trace_id": T2, "span_name": "GET /admin"}, time_nanos=int(NOW * 1e9))))
        one = f"/api/v1/span_profile?span_id=00000000000000f6&profile_type={CPU_ID}"
        assert (await get(c, one + "&aggregate=line"))["source"] == {
            "repository": "https://github.com/acme/tinyhats", "ref": "v2", "root_path": "/srv"}
        assert "source" not in await get(c, one)
        # Two spans of series that disagree (one names no repository): no source.
        both = await get(c, f"/api/v1/span_profile?span_name=GET%20/admin&profile_type={CPU_ID}&aggregate=line&"
                            f"{RANGE}")
        assert both["spans"] == 2 and both["total"] == 24 and "source" not in both
    finally:
        await c.close()


async def test_span_frames_of_before_locations_still_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A spans.sqlite whose span_frames has no file/line columns (UNIQUE (name, kind)) is rebuilt
    on open with the same ids: its rows read as before, and located frames of the same functions
    are then kept beside them."""
    path = tmp_path / "s.sqlite"
    labels = Labels.of({"service_name": "a", "__profile_type__": WALL_ID, "__period__": "10000000"})
    store = SpanStore(path, max_rows=1000, retention_seconds=0, clock=lambda: 100.0)
    await store.add([SpanItem("s1", "t1", labels, 50.0, parse("main;old 5\nmain 2\n"))])
    await store.close()
    with sqlite3.connect(path) as db:  # the table as written before locations
        db.execute("CREATE TABLE v0 (id INTEGER PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, "
                   "UNIQUE(name, kind))")
        db.execute("INSERT INTO v0 SELECT id, name, kind FROM span_frames")
        db.execute("DROP TABLE span_frames")
        db.execute("DROP TABLE span_files")
        db.execute("ALTER TABLE v0 RENAME TO span_frames")
    fresh = SpanStore(path, max_rows=1000, retention_seconds=0, clock=lambda: 100.0)
    _, got, n, _ = await fresh.profile("span_id", "s1", None, None, Selector(()), lines=True)
    assert n == 1 and got.as_dict() == parse("main;old 5\nmain 2\n").as_dict()
    located = Profile.from_pairs([((Frame("main", Kind.USER, "m.py", 3), Frame("old", Kind.USER, "m.py", 9)), 4)])
    await fresh.add([SpanItem("s2", "t2", labels, 60.0, located)])
    _, got, _, _ = await fresh.profile("span_id", "s2", None, None, Selector(()), lines=True)
    assert got.as_dict() == located.as_dict()
    _, got, _, _ = await fresh.profile("span_id", "s2", None, None, Selector(()))
    assert got.as_dict() == parse("main;old 4\n").as_dict()
    await fresh.close()
    with sqlite3.connect(path) as db:
        cols = [r[1] for r in db.execute("PRAGMA table_info(span_frames)")]
    assert cols == ["id", "name", "kind", "file", "line"]
