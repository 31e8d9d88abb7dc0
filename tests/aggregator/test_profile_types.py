"""Issue 13: profile types through the HTTP API (query forms, units, retention answers) and the
SQLite migration of a database of the old (untyped) schema."""

from __future__ import annotations

import gzip
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from aggregator.store.sqlite import SCHEMA, SQLiteStore
from stacks import _proto
from stacks.folded import parse
from stacks.model import StackTable
from stacks.pprof import encode_pprof
from stacks.push import PushSeries, RawSample, encode_push_request
from stacks.selector import Selector
from tests.aggregator.test_api import NOW, W, make_client  # the same clock and app as the API tests

RANGE = f"from={W - 300}&until={W + 60}"
CPU = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
ALLOC = "memory:alloc_space:bytes:space:bytes"
INUSE_OBJ = "memory:inuse_objects:count:space:bytes"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    c = await make_client(tmp_path)
    yield c
    await c.close()


def heap_pprof(time_nanos: int = int(W * 1e9), grow: int = 0) -> bytes:
    """A Go-style heap pprof: four columns, period space/bytes; ``grow`` adds to alloc_big's
    running allocation totals (objects and bytes) as a later push of the same process would."""
    strings = ["", "alloc_objects", "count", "alloc_space", "bytes", "inuse_objects", "inuse_space", "space",
               "main", "alloc_big", "alloc_small"]
    p = _proto.Profile(period=524288, time_nanos=time_nanos)
    p.string_table.extend(s.encode() for s in strings)  # type: ignore[attr-defined]
    for t, u in ((1, 2), (3, 4), (5, 2), (6, 4)):
        p.sample_type.add(type=t, unit=u)
    p.period_type.type, p.period_type.unit = 7, 4
    for fid, name in ((1, 8), (2, 9), (3, 10)):
        p.function.add(id=fid, name=name)
        p.location.add(id=fid).line.add(function_id=fid)
    p.sample.add(location_id=[2, 1], value=[10 + grow, 10_485_760 + grow * 1024, 2, 2_097_152])
    p.sample.add(location_id=[3, 1], value=[300, 38_400, 0, 0])
    return p.SerializeToString()


async def push(client: TestClient, name: str, raw: bytes, service: str = "api",
               delta: str | None = "false") -> tuple[int, dict, object]:
    """A Connect push; ``delta`` is its ``__delta__`` label ("false": the SDK sent deltas, as
    godeltaprof does; None: no label, so Go's allocation columns are running totals)."""
    labels = (("__name__", name), ("service_name", service)) + ((("__delta__", delta),) if delta else ())
    body = gzip.compress(encode_push_request([PushSeries(labels, (RawSample(raw, "1"),))]))
    r = await client.post("/push.v1.PusherService/Push", data=body,
                          headers={"Content-Type": "application/proto", "Content-Encoding": "gzip"})
    return r.status, dict(r.headers), (await r.read())


async def get(client: TestClient, path: str, **params: str) -> tuple[int, dict]:
    qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    r = await client.get(f"{path}?{RANGE}&{qs}")
    return r.status, await r.json()


async def test_heap_columns_are_types_with_units(client: TestClient) -> None:
    status, _, _ = await push(client, "memory", heap_pprof())
    assert status == 200
    cpu = encode_pprof(parse("main;spin 7\n"), time_nanos=int(W * 1e9))
    assert (await push(client, "process_cpu", cpu))[0] == 200

    _, types = await get(client, "/api/v1/profile_types")
    by_id = {t["id"]: t for t in types["profile_types"]}
    assert set(by_id) == {CPU, ALLOC, INUSE_OBJ, "memory:alloc_objects:count:space:bytes",
                          "memory:inuse_space:bytes:space:bytes"}
    assert types["default"] == CPU
    assert by_id[ALLOC] == {"id": ALLOC, "name": "memory", "sample_type": "alloc_space", "sample_unit": "bytes",
                            "period_type": "space", "period_unit": "bytes", "unit": "bytes",
                            "label": "alloc space", "delta": True}
    assert by_id[CPU]["unit"] == "samples" and by_id[INUSE_OBJ]["delta"] is False

    # the TYPE{selector} form and the profile_type= parameter give the same answer
    _, a = await get(client, "/api/v1/render", query=ALLOC + '{service_name="api"}')
    _, b = await get(client, "/api/v1/render", query='{service_name="api"}', profile_type=ALLOC)
    assert a == b
    assert (a["profile_type"], a["unit"], a["period_ns"], a["total"]) == (ALLOC, "bytes", None, 10_524_160)
    assert a["query"] == '{service_name="api"}'
    _, inuse = await get(client, "/api/v1/top", query=INUSE_OBJ + "{}")
    assert (inuse["total"], inuse["unit"]) == (2, "count")
    # CPU (the default) never includes memory
    _, cpu_doc = await get(client, "/api/v1/render", query='{service_name="api"}')
    assert (cpu_doc["profile_type"], cpu_doc["unit"], cpu_doc["period_ns"], cpu_doc["total"]) == (
        CPU, "samples", 10_000_000, 7)
    # every JSON answer names its type and unit
    for path, extra in (("/api/v1/timeline", {}), ("/api/v1/top", {}), ("/api/v1/labels", {}),
                        ("/api/v1/label/service_name/values", {}),
                        ("/api/v1/sandwich", {"function": "main"}),
                        ("/api/v1/diff", {"base": ALLOC + "{}"})):
        status, doc = await get(client, path, profile_type=ALLOC, **extra)
        assert status == 200, (path, doc)
        assert (doc["profile_type"], doc["unit"]) == (ALLOC, "bytes"), path
        assert "period_ns" in doc, path
    _, tl = await get(client, "/api/v1/timeline", query=ALLOC + "{}")
    assert sum(p[1] for p in tl["series"][0]["points"]) == 10_524_160
    _, vals = await get(client, "/api/v1/label/service_name/values", query=INUSE_OBJ)
    assert vals["values"] == ["api"]
    # label names are those of the type's series (and never the reserved ones)
    await push(client, "memory", heap_pprof(), service="heap-only")
    r = await client.post(f"/ingest?name=cpu-only{{zone=z1}}&from={W}&until={W + 10}", data=b"main;f 1\n")
    assert r.status == 200
    _, names = await get(client, "/api/v1/labels", profile_type=ALLOC)
    # (every series names its producer: pyroscope_spy, aggregator/producers.py)
    assert names["names"] == ["pyroscope_spy", "service_name"]
    _, names = await get(client, "/api/v1/labels")
    assert names["names"] == ["pyroscope_spy", "service_name", "zone"] and names["profile_type"] == CPU


async def test_cumulative_allocations_are_differenced_per_series(client: TestClient) -> None:
    """Go's alloc_* columns pushed without __delta__=false are running totals (Pyroscope's rule):
    the first push is the baseline (200, said in the answer), later pushes store the growth;
    in-use columns are snapshots and stored every time."""
    status, headers, _ = await push(client, "memory", heap_pprof(), delta=None)
    assert status == 200
    # A PushResponse has no field for it: the header says what was kept only as a baseline.
    note = headers["X-Flamewatch-Not-Stored"]
    assert f"10524160 bytes of {ALLOC} not stored: first running-total (cumulative) profile" in note
    assert "310 count of memory:alloc_objects:count:space:bytes not stored" in note
    _, inuse = await get(client, "/api/v1/render", query=INUSE_OBJ + "{}")
    assert inuse["total"] == 2  # in-use columns are snapshots: stored as sent
    _, alloc = await get(client, "/api/v1/render", query=ALLOC + "{}")
    assert alloc["total"] == 0
    status, headers, _ = await push(client, "memory", heap_pprof(int((W + 10) * 1e9), grow=5), delta=None)
    assert status == 200 and "X-Flamewatch-Not-Stored" not in headers
    _, alloc = await get(client, "/api/v1/render", query=ALLOC + '{service_name="api"}')
    assert alloc["total"] == 5 * 1024  # only the growth of alloc_big; alloc_small did not grow
    _, objs = await get(client, "/api/v1/render", query="memory:alloc_objects:count:space:bytes{}")
    assert objs["total"] == 5
    _, inuse = await get(client, "/api/v1/render", query=INUSE_OBJ + "{}")
    assert inuse["total"] == 4
    # another service is its own series: its first push is its own baseline
    _, headers, _ = await push(client, "memory", heap_pprof(grow=100), service="db", delta=None)
    assert "first running-total" in headers["X-Flamewatch-Not-Stored"]
    # a restart (values fall) is a new baseline, not a negative delta
    _, headers, _ = await push(client, "memory", heap_pprof(int((W + 20) * 1e9)), delta=None)
    assert "values fell below the last push" in headers["X-Flamewatch-Not-Stored"]
    _, alloc = await get(client, "/api/v1/render", query=ALLOC + '{service_name="api"}')
    assert alloc["total"] == 5 * 1024


async def test_pprof_export_keeps_the_type_and_its_period_type(client: TestClient) -> None:
    """render?format=pprof writes the queried type's sample and period types, so the file reads
    back as the same type (a memory profile is not relabelled CPU)."""
    assert (await push(client, "memory", heap_pprof()))[0] == 200
    wall = encode_pprof(parse("main;sleep 4\n"), time_nanos=int(W * 1e9), sample_type=("wall", "nanoseconds"),
                        period_type=("wall", "nanoseconds"))
    assert (await push(client, "wall", wall))[0] == 200
    for ptype, total in ((ALLOC, 10_524_160), ("wall:wall:nanoseconds:wall:nanoseconds", 4 * 10_000_000)):
        r = await client.get(f"/api/v1/render?{RANGE}&format=pprof&profile_type={quote(ptype)}")
        assert r.status == 200
        p = _proto.Profile.FromString(gzip.decompress(await r.read()))
        strings = [x.decode() for x in p.string_table]
        got = ptype.split(":")[0] + ":" + ":".join(
            (strings[p.sample_type[0].type], strings[p.sample_type[0].unit],
             strings[p.period_type.type], strings[p.period_type.unit]))
        assert got == ptype
        assert sum(s.value[0] for s in p.sample) == total


async def test_bad_type_queries_are_400(client: TestClient) -> None:
    status, doc = await get(client, "/api/v1/render", profile_type="cpu")
    assert status == 400 and "profile_type" in doc["error"] and "name:sample_type" in doc["error"]
    status, doc = await get(client, "/api/v1/render", query=ALLOC + "{}", profile_type=CPU)
    assert status == 400 and "give one of them" in doc["error"]
    status, doc = await get(client, "/api/v1/diff", base=ALLOC + "{}", compare=CPU + "{}")
    assert status == 400 and "a diff compares one type" in doc["error"]


async def test_wall_from_the_agent_and_the_sdk_tag(client: TestClient) -> None:
    """The agent's wall pprof (__name__=wall, wall/nanoseconds, period 1e9/Hz) lands in
    wall:wall:nanoseconds:wall:nanoseconds; the pyroscope-io SDK's wall mode (same name and
    pprof as CPU) is stored as wall when tagged oncpu=false."""
    wall = encode_pprof(parse("main;wait_io 9\n"), period_nanos=10_101_010, time_nanos=int(W * 1e9),
                        sample_type=("wall", "nanoseconds"))
    p = _proto.Profile.FromString(wall)
    p.string_table.append(b"wall")  # type: ignore[attr-defined]  # period type wall/nanoseconds
    p.period_type.type = len(p.string_table) - 1
    assert (await push(client, "wall", p.SerializeToString(), service="agent"))[0] == 200
    cpu_tagged = encode_pprof(parse("main;sleepy 4\n"), time_nanos=int(W * 1e9))
    labels = (("__name__", "process_cpu"), ("service_name", "sdk"), ("oncpu", "false"))
    body = gzip.compress(encode_push_request([PushSeries(labels, (RawSample(cpu_tagged, "1"),))]))
    r = await client.post("/push.v1.PusherService/Push", data=body, headers={"Content-Type": "application/proto"})
    assert r.status == 200
    wall_id = "wall:wall:nanoseconds:wall:nanoseconds"
    _, doc = await get(client, "/api/v1/top", query=wall_id + '{service_name="agent"}')
    assert (doc["total"], doc["unit"], doc["period_ns"]) == (9, "samples", 10_101_010)
    _, doc = await get(client, "/api/v1/top", query=wall_id + '{service_name="sdk"}')
    assert (doc["total"], doc["period_ns"]) == (4, 10_000_000)
    _, doc = await get(client, "/api/v1/top", query=CPU + "{}")
    assert doc["total"] == 0


async def test_retention_answers_say_what_was_not_stored(tmp_path: Path) -> None:
    client = await make_client(tmp_path, retention_seconds="3600")
    try:
        old = int((NOW - 7200) * 1e9)
        # /ingest, everything too old: 422 naming the amount and the reason
        r = await client.post(f"/ingest?name=api&from={int(NOW - 7200)}&until={int(NOW - 7190)}",
                              data=b"main;f 5\n")
        doc = await r.json()
        assert r.status == 422, doc
        assert "5 samples of process_cpu:cpu:nanoseconds:cpu:nanoseconds not stored" in doc["error"]
        assert "older than the retention of 3600 s" in doc["error"]
        assert doc["not_stored"] == [{"reason": "older_than_retention", "profile_type": CPU, "unit": "samples",
                                      "amount": 5}]
        # push of an old heap profile: 422 too, per type
        status, _, body = await push(client, "memory", heap_pprof(old))
        assert status == 422
        got = json.loads(body)
        assert {x["profile_type"] for x in got["not_stored"]} >= {ALLOC, INUSE_OBJ}
        assert "10524160 bytes of memory:alloc_space:bytes:space:bytes not stored" in got["error"]
        # a push partly too old: 200 (the rest is stored) and the header says what was not
        new = encode_pprof(parse("main;f 3\n"), time_nanos=int(W * 1e9))
        stale = encode_pprof(parse("main;g 2\n"), time_nanos=old)
        labels = (("__name__", "process_cpu"), ("service_name", "mixed"))
        body = gzip.compress(encode_push_request([PushSeries(labels, (RawSample(new, "1"), RawSample(stale, "2")))]))
        r = await client.post("/push.v1.PusherService/Push", data=body, headers={"Content-Type": "application/proto"})
        assert r.status == 200
        assert r.headers["X-Flamewatch-Not-Stored"] == (
            "2 samples of process_cpu:cpu:nanoseconds:cpu:nanoseconds not stored: older than the retention of 3600 s")
        # a folded ingest in range is stored and says so
        r = await client.post(f"/ingest?name=api&from={W}&until={W + 10}", data=b"main;f 5\n")
        doc = await r.json()
        assert r.status == 200 and doc["stored"] == {CPU: 5} and doc["not_stored"] == [] and doc["warning"] == ""
    finally:
        await client.close()


async def test_sqlite_database_of_the_old_schema_is_migrated(tmp_path: Path) -> None:
    """A database written before profile types (PRAGMA user_version 0, untyped series) opens,
    its series become CPU, and the API serves them under the default type."""
    db = tmp_path / "flamewatch.db"
    # write through the store, then strip the type labels and the version: the old schema
    store = SQLiteStore(db)
    await store.open()
    from aggregator.store.base import SeriesWindow
    from stacks.model import Labels

    prof = parse("main;old_work 11\n", StackTable())
    await store.write([SeriesWindow(Labels.of({"service_name": "legacy", "pod": "p1"}), W, prof)])
    await store.close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 0")
    rows = conn.execute("SELECT id, labels FROM series").fetchall()
    assert all("__profile_type__" not in text for _, text in rows)  # the store writes what it is given
    conn.commit()
    conn.close()
    assert SCHEMA  # the old schema's tables are the same tables

    client = await make_client(tmp_path)
    try:
        _, types = await get(client, "/api/v1/profile_types")
        assert [t["id"] for t in types["profile_types"]] == [CPU]
        _, doc = await get(client, "/api/v1/top", query='{service_name="legacy"}')
        assert doc["total"] == 11 and doc["period_ns"] is None  # the old schema kept no period
        _, doc = await get(client, "/api/v1/top", query=ALLOC + "{}")
        assert doc["total"] == 0
    finally:
        await client.close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    labels = json.loads(conn.execute("SELECT labels FROM series").fetchone()[0])
    assert ["__profile_type__", CPU] in labels
    conn.close()
    # reopening is a no-op
    store = SQLiteStore(db)
    await store.open()
    got = await store.label_values("__profile_type__", Selector(()), 0, 2**31)
    await store.close()
    assert got == [CPU]


async def test_clickhouse_data_of_the_old_schema_reads_as_cpu(
    tmp_path: Path, clickhouse: object, clickhouse_db: str
) -> None:
    """ClickHouse rows written before profile types (untyped series) are not rewritten: CPU queries
    include them, /profile_types lists CPU, and other types never see them (docs/clickhouse.md)."""
    from aggregator.store.base import SeriesWindow
    from aggregator.store.clickhouse import ClickHouseStore
    from stacks.model import Labels

    spec = clickhouse.storage_spec(clickhouse_db)  # type: ignore[attr-defined]
    store = ClickHouseStore(spec)
    await store.open()
    prof = parse("main;old_work 11\n", StackTable())
    await store.write([SeriesWindow(Labels.of({"service_name": "legacy", "pod": "p1"}), W, prof)])
    await store.close()

    client = await make_client(tmp_path, storage=spec)
    try:
        _, types = await get(client, "/api/v1/profile_types")
        assert CPU in [t["id"] for t in types["profile_types"]], types
        _, doc = await get(client, "/api/v1/top", query='{service_name="legacy"}')
        assert doc["total"] == 11 and doc["profile_type"] == CPU
        # a typed CPU push beside it: one CPU view holds both, the memory view neither
        assert (await push(client, "memory", heap_pprof(), service="legacy"))[0] == 200
        _, doc = await get(client, "/api/v1/top", query=f'{CPU}{{service_name="legacy"}}')
        assert doc["total"] == 11
        _, doc = await get(client, "/api/v1/top", query=ALLOC + '{service_name="legacy"}')
        assert doc["total"] == 10_485_760 + 38_400
    finally:
        await client.close()
