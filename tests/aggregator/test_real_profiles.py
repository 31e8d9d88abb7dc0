"""Issue 13: real profiles from real SDKs, every sample type stored in its own type and unit.

Profiles are generated live: the pyroscope-io Python SDK (CPU mode, and wall mode tagged
``oncpu=false``) and Node's ``@pyroscope/nodejs`` (wall with CPU time, heap), captured on
loopback and replayed into the aggregator on both backends. For every profile type, the total
the aggregator answers equals an independent decode of the same bytes (a plain wire-format
reader below, not ``stacks.pprof``).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aggregator.app import create_app
from aggregator.settings import SETTINGS
from ground.settings import resolve
from tests.support.capture import Recorded, capture_server

SUPPORT = Path(__file__).resolve().parents[1] / "support"
NODE_DIR = Path(os.environ.get("FLAMEWATCH_NODE_DEPS", Path.home() / ".cache" / "flamewatch" / "pyroscope-nodejs"))
TIME_NS = {"nanoseconds": 1, "microseconds": 1_000, "milliseconds": 1_000_000, "seconds": 1_000_000_000}
pytestmark = pytest.mark.slow


# -- an independent pprof reader (wire format only) ---------------------------------------------
def _varint(b: bytes, i: int) -> tuple[int, int]:
    shift = v = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        if c < 0x80:
            return v, i
        shift += 7


def _fields(b: bytes) -> Iterator[tuple[int, int, object]]:
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        f, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
            yield f, wt, v
        elif wt == 2:
            n, i = _varint(b, i)
            yield f, wt, b[i : i + n]
            i += n
        elif wt == 1:
            yield f, wt, int.from_bytes(b[i : i + 8], "little")
            i += 8
        elif wt == 5:
            yield f, wt, int.from_bytes(b[i : i + 4], "little")
            i += 4
        else:
            raise ValueError(f"wire type {wt}")


def _ints(wt: int, v: object) -> list[int]:
    if wt == 0:
        return [v]  # type: ignore[list-item]
    out, i, b = [], 0, v
    assert isinstance(b, bytes)
    while i < len(b):
        x, i = _varint(b, i)
        out.append(x)
    return out


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def expected_totals(raw: bytes, name: str | None = None) -> dict[str, int]:
    """Per sample type ``type:unit`` -> what the aggregator must store: the sum of positive
    values, or for a time column counted in its period's unit, round(sum / period) per
    (stack, label set), at least 1. Also returns the period type under ``"period"`` keys."""
    if raw[:2] == b"\x1f\x8b":
        raw = zlib.decompress(raw, 47)
    strings: list[str] = []
    types: list[tuple[int, int]] = []
    samples: list[tuple[tuple[int, ...], list[int], tuple[tuple[int, int], ...]]] = []
    period, pt = 0, (0, 0)
    for f, _wt, v in _fields(raw):
        if f == 6:
            strings.append(v.decode("utf-8", "replace"))  # type: ignore[union-attr]
        elif f == 1:
            d = {ff: vv for ff, _, vv in _fields(v)}  # type: ignore[arg-type]
            types.append((d.get(1, 0), d.get(2, 0)))
        elif f == 2:
            locs: list[int] = []
            vals: list[int] = []
            labels = []
            for ff, wtt, vv in _fields(v):  # type: ignore[arg-type]
                if ff == 1:
                    locs += _ints(wtt, vv)
                elif ff == 2:
                    vals += [_signed(x) for x in _ints(wtt, vv)]
                elif ff == 3:
                    ld = {a: c for a, _, c in _fields(vv)}  # type: ignore[arg-type]
                    if ld.get(2):
                        labels.append((ld.get(1, 0), ld[2]))
            samples.append((tuple(locs), vals, tuple(sorted(labels))))
        elif f == 11:
            d = {ff: vv for ff, _, vv in _fields(v)}  # type: ignore[arg-type]
            pt = (d.get(1, 0), d.get(2, 0))
        elif f == 12:
            period = _signed(v)  # type: ignore[arg-type]
    punit = strings[pt[1]]
    out: dict[str, int] = {}
    for col, (t, u) in enumerate(types):
        unit = strings[u]
        acc: dict[tuple, int] = {}
        for locs, vals, labels in samples:
            if vals[col] > 0:
                acc[(locs, labels)] = acc.get((locs, labels), 0) + vals[col]
        if unit in TIME_NS and punit in (unit, ""):
            p = period if period > 0 else 1
            total = sum(max((s + p // 2) // p, 1) for s in acc.values())
        else:
            total = sum(acc.values())
        key = f"{strings[t]}:{unit}"
        out[key] = out.get(key, 0) + total
    return out


# -- the aggregator --------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "clickhouse"])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TestClient]:
    storage = "sqlite"
    if request.param == "clickhouse":
        server = request.getfixturevalue("clickhouse")
        storage = server.storage_spec(request.getfixturevalue("clickhouse_db"))
    settings = resolve(SETTINGS, {"data_dir": str(tmp_path), "storage": storage, "retention_seconds": "0"},
                       environ={})
    app = create_app(settings, clock=time.time)
    c = TestClient(TestServer(app))
    await c.start_server()
    try:
        yield c
    finally:
        await c.close()


async def replay(client: TestClient, reqs: list[Recorded]) -> list[dict]:
    answers = []
    for r in reqs:
        headers = {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "content-encoding")}
        resp = await client.post(r.path + ("?" + r.query if r.query else ""), data=r.body, headers=headers)
        assert resp.status == 200, await resp.text()
        if resp.content_type == "application/json":
            answers.append(await resp.json())
    return answers


async def stored_total(client: TestClient, type_id: str, sel: str) -> dict:
    r = await client.get(f"/api/v1/top?query={quote(type_id + sel, safe='')}&from=now-1h&until=now%2B1h")
    assert r.status == 200, await r.text()
    return await r.json()


# -- pyroscope-io (Python) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def python_pushes() -> dict[str, list[Recorded]]:
    if importlib.util.find_spec("pyroscope") is None:
        pytest.skip(reason="pyroscope-io is not installed (pip install pyroscope-io)")
    out = {}
    for mode, extra in (("cpu", []), ("wall", ["--wall", "--tag", "oncpu=false"])):
        with capture_server() as cap:
            proc = subprocess.run(
                [sys.executable, str(SUPPORT / "pyroscope_app.py"), "--server", cap.url, "--app-name",
                 f"py-{mode}", "--seconds", "2.5", "--upload-interval", "1", *extra],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            out[mode] = cap.wait_for(2, timeout=10)
    return out


async def test_pyroscope_io_cpu_and_wall(client: TestClient, python_pushes: dict[str, list[Recorded]]) -> None:
    from stacks.gz import gunzip_capped
    from stacks.push import decode_push_request

    for mode, type_id in (("cpu", "process_cpu:cpu:nanoseconds:cpu:nanoseconds"),
                          ("wall", "wall:wall:nanoseconds:wall:nanoseconds")):
        reqs = python_pushes[mode]
        want = 0
        for r in reqs:
            for s in decode_push_request(gunzip_capped(r.body, 1 << 26)):
                assert dict(s.labels)["__name__"] == "process_cpu"  # wall mode sends the same name
                for smp in s.samples:
                    want += expected_totals(smp.raw_profile)["cpu:nanoseconds"]
        await replay(client, reqs)
        got = await stored_total(client, type_id, f'{{service_name="py-{mode}"}}')
        assert got["total"] == want > 0
        assert (got["profile_type"], got["unit"], got["period_ns"]) == (type_id, "samples", 10_000_000)
        other = ("wall:wall:nanoseconds:wall:nanoseconds" if mode == "cpu"
                 else "process_cpu:cpu:nanoseconds:cpu:nanoseconds")
        assert (await stored_total(client, other, f'{{service_name="py-{mode}"}}'))["total"] == 0
    types = await (await client.get("/api/v1/profile_types?from=now-1h&until=now%2B1h")).json()
    ids = {t["id"] for t in types["profile_types"]}
    assert {"process_cpu:cpu:nanoseconds:cpu:nanoseconds", "wall:wall:nanoseconds:wall:nanoseconds"} <= ids
    names = (await (await client.get("/api/v1/labels?from=now-1h&until=now%2B1h")).json())["names"]
    assert "oncpu" not in names and "__profile_type__" not in names


# -- @pyroscope/nodejs -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def node_pushes() -> list[Recorded]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip(reason="node/npm are not installed")
    mod = NODE_DIR / "node_modules" / "@pyroscope" / "nodejs"
    if not mod.is_dir():
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        (NODE_DIR / "package.json").write_text('{"name": "fw-node-app", "version": "1.0.0", "private": true}')
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "@pyroscope/nodejs"],
                              cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or not mod.is_dir():
            pytest.skip(reason=f"npm install @pyroscope/nodejs failed: {proc.stderr[-300:]}")
    with capture_server() as cap:
        env = dict(os.environ, NODE_PATH=str(NODE_DIR / "node_modules"))
        proc = subprocess.run(["node", str(SUPPORT / "pyroscope_node_app.js"), cap.url, "node-app", "3"],
                              capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        return cap.wait_for(4, timeout=10)


async def test_pyroscope_nodejs_wall_cpu_heap(client: TestClient, node_pushes: list[Recorded]) -> None:
    want: dict[str, int] = {}
    for r in node_pushes:
        q = dict(parse_qsl(r.query))
        assert q["format"] == "pprof"
        raw = gzip.decompress(r.body)
        cols = expected_totals(raw)
        name = "wall" if any(k.startswith("wall:") for k in cols) else "memory"  # Pyroscope's /ingest rule
        period = {f: v for f, _, v in _fields(raw) if f == 11}
        pdict = {ff: vv for ff, _, vv in _fields(period[11])}  # type: ignore[arg-type]
        strings = [v.decode() for f, _, v in _fields(raw) if f == 6]  # type: ignore[union-attr]
        ptype, punit = strings[pdict.get(1, 0)], strings[pdict.get(2, 0)]
        for col, n in cols.items():
            st, su = col.split(":")
            tid = f"{name}:{st}:{su}:{ptype}:{punit}"
            want[tid] = want.get(tid, 0) + n
    answers = await replay(client, node_pushes)
    assert all(not a["not_stored"] and a["warning"] == "" for a in answers)
    # wall (samples, wall time, CPU time) and heap (objects, space) all arrive
    assert any(t.startswith("wall:wall:") for t in want) and any(t.startswith("memory:") for t in want)
    assert any(":cpu:nanoseconds:" in t for t in want), want
    for tid, n in sorted(want.items()):
        got = await stored_total(client, tid, '{service_name="node-app"}')
        assert got["total"] == n, (tid, got["total"], n)
        assert got["profile_type"] == tid
    listed = await (await client.get("/api/v1/profile_types?from=now-1h&until=now%2B1h")).json()
    assert set(want) <= {t["id"] for t in listed["profile_types"]}
    assert listed["default"] == "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
    # a CPU query never sees wall or memory
    assert (await stored_total(client, "process_cpu:cpu:nanoseconds:cpu:nanoseconds",
                               '{service_name="node-app"}'))["total"] == 0
