"""A small Go app under the real ``github.com/grafana/pyroscope-go`` SDK (tests/producers/go_app, built by
scripts/setup.sh from the Go module proxy), its uploads relayed to a real ``flamewatch serve`` and
checked function by function against the pprof profiles it sent."""

from __future__ import annotations

import gzip
import os
import subprocess
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest

from stacks import _proto
from tests.producers.relay import multipart_parts, relay
from tests.support.capture import capture_server
from tests.support.server import running_server

APP = Path(os.environ.get("FLAMEWATCH_PYROSCOPE_GO_APP", Path.home() / ".cache/flamewatch/pyroscope-go-app"))
CPU = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"


def _cpu_leaves(raw: bytes) -> tuple[Counter[str], int]:
    """Samples per leaf function of a Go CPU pprof (the cpu/nanoseconds column / period), and the total."""
    p = _proto.Profile.FromString(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    s = [x.decode() for x in p.string_table]
    types = [s[t.type] for t in p.sample_type]
    if "cpu" not in types:  # the heap upload
        return Counter(), 0
    col = types.index("cpu")
    funcs = {f.id: s[f.name] for f in p.function}
    locs = {loc.id: loc for loc in p.location}
    out: Counter[str] = Counter()
    for smp in p.sample:
        n = round(smp.value[col] / p.period)
        leaf = locs[smp.location_id[0]]
        out[funcs[leaf.line[0].function_id]] += n
    return out, sum(out.values())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_pyroscope_go_sdk(tmp_path: Path) -> None:
    if not APP.is_file():
        pytest.skip(reason=f"Go app not built at {APP}: run scripts/setup.sh (go build of tests/producers/go_app)")
    with capture_server() as cap:
        env = {**os.environ, "FW_SERVER": cap.url, "FW_SECONDS": "5"}
        run = subprocess.run([str(APP)], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and "done true" in run.stdout, run.stderr[-2000:]
        reqs = cap.wait_for(2, timeout=20, path="/ingest")
    want: Counter[str] = Counter()
    for r in reqs:
        q = urllib.parse.parse_qs(r.query)
        assert q["spyName"] == ["gospy"], q
        lv, _ = _cpu_leaves(multipart_parts(r.headers["Content-Type"], r.body)["profile"])
        want.update(lv)
    assert want["main.heavyWork"] > want["main.lightWork"] > 0, want

    with running_server(tmp_path) as srv:
        for r, (status, body) in zip(reqs, relay(srv, reqs), strict=True):
            assert status == 200, (r.query, body[:300])
        sel = urllib.parse.quote('{service_name="go-sdk-app",namespace="gotest",pod="go-app-1",pyroscope_spy="gospy"}')
        doc = srv.json(f"/api/v1/top?query={sel}&from=now-1h&until=now%2B1m&limit=100000"
                       f"&profile_type={urllib.parse.quote(CPU)}")
        assert doc["total"] == sum(want.values()), (doc["total"], sum(want.values()))
        got = {row["name"]: row["self"] for row in doc["rows"] if row["self"]}
        assert got == dict(want), (got, want)
        types = {t["id"] for t in srv.json("/api/v1/profile_types?from=now-1h&until=now%2B1m")["profile_types"]}
        assert "memory:alloc_space:bytes:space:bytes" in types, types
