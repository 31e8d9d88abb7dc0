"""Real Pyroscope clients against a real ``flamewatch serve`` (issue 26).

- Go: tests/grafana/goclient uses Pyroscope's own generated Connect client (Go module
  github.com/grafana/pyroscope/api) and replays the Grafana data source's calls in order, once with
  the proto codec (what Grafana sends) and once with connect.WithProtoJSON and gzip request
  bodies, with Basic auth (the read token as password). Its pprof answers are opened with ``go tool pprof -top``.
- Node: tests/grafana/perses_client.cjs runs the Perses Pyroscope plugin's client (npm
  @perses-dev/pyroscope-plugin) for the Connect JSON methods and ``/pyroscope/render``.

Every answer is compared with ``/api/v1`` on the same data. scripts/setup.sh fetches the Go
modules and the npm packages; where ``go``/``node`` or those are missing the tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from stacks.flamebearer import node_totals
from tests.support.server import REPO, Server, running_server

GOCLIENT = REPO / "tests" / "grafana" / "goclient"
PERSES_SCRIPT = REPO / "tests" / "grafana" / "perses_client.cjs"
PERSES_DEPS = Path(os.environ.get("FLAMEWATCH_PERSES_DEPS")
                   or Path.home() / ".cache" / "flamewatch" / "perses-pyroscope")
CPU = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
PERIOD = 10_000_000  # sampleRate=100
TOKEN = "read-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERIES = [  # (name{labels}, window offset, folded)
    ("shop.cpu{pod=a,env=prod}", 0, "main;work;compute 10\nmain;idle 5\nmain;work;io 3\n"),
    ("shop.cpu{pod=b,env=prod}", 1, "main;work;compute 4\nmain;serve;parse 6\n"),
    ("cart.cpu{pod=c,env=dev}", 1, "main;checkout;pay 7\nmain;work;compute 2\n"),
]


def _go() -> str | None:
    return shutil.which("go") or next((p for p in ("/usr/local/go/bin/go",) if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int, int]]:
    """A server with three series over two windows; yields (server, start_s, end_s)."""
    tmp = tmp_path_factory.mktemp("pyroscope-clients")
    with running_server(tmp, "--read-token", TOKEN) as srv:
        w0 = (int(time.time()) - 120) // 30 * 30
        for name, k, text in SERIES:
            status, body = srv.post(f"/ingest?name={quote(name)}&from={w0 + 30 * k + 1}&sampleRate=100",
                                    text.encode())
            assert status == 200, body
        yield srv, w0 - 300, int(time.time()) + 60


def api(srv: Server, path: str) -> Any:
    status, body = srv.get(path, headers=AUTH)
    assert status == 200, (path, body[:300])
    return json.loads(body)


def doc_paths(doc: dict[str, Any], root: str = "total") -> dict[str, int]:
    """{'total;main;work': total} of a Flame JSON document (its root renamed ``root``)."""
    nodes, names = doc["nodes"], doc["names"]
    out: dict[str, int] = {}
    stack: list[str] = []
    for i, (n, d) in enumerate(zip(nodes["name"], nodes["depth"], strict=True)):
        del stack[d:]
        stack.append(root if i == 0 else names[n])
        out[";".join(stack)] = out.get(";".join(stack), 0) + nodes["total"][i]
    return out


def _pprof_top_total_ns(go: str, path: Path) -> int:
    """The total ``go tool pprof -top`` prints for a CPU profile, in ns."""
    proc = subprocess.run([go, "tool", "pprof", "-top", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"of ([\d.]+)(ns|us|ms|s|mins|hrs) total", proc.stdout)
    assert m, proc.stdout
    unit = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9, "mins": 60e9, "hrs": 3600e9}[m[2]]
    return round(float(m[1]) * unit)


@pytest.fixture(scope="module")
def goclient(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    go = _go()
    if go is None:
        pytest.skip(reason="go is not installed (the Go client test needs the go command)")
    out = tmp_path_factory.mktemp("goclient") / "goclient"
    proc = subprocess.run([go, "build", "-o", str(out), "."], cwd=GOCLIENT, capture_output=True, text=True,
                          timeout=540, env={**os.environ, "GOFLAGS": "-mod=readonly"})
    if proc.returncode != 0 and ("dial tcp" in proc.stderr or "lookup" in proc.stderr):
        pytest.skip(reason=f"go could not fetch github.com/grafana/pyroscope/api: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    return go, out


@pytest.mark.slow
def test_grafana_go_connect_client(served: tuple[Server, int, int], goclient: tuple[str, Path],
                                   tmp_path: Path) -> None:
    srv, start, end = served
    go, binary = goclient
    rng = f"from={start}&until={end}"
    answers = {}
    for codec in ("proto", "json"):
        pprof_dir = tmp_path / codec
        pprof_dir.mkdir()
        proc = subprocess.run([str(binary), "-url", srv.url, "-codec", codec, "-password", TOKEN,
                               "-start", str(start * 1000), "-end", str(end * 1000), "-step", "60",
                               "-group-by", "service_name", "-max-nodes", "16384", "-pprof-dir", str(pprof_dir),
                               # the JSON run also gzips its requests (connect.WithSendGzip)
                               f"-send-gzip={'true' if codec == 'json' else 'false'}"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        answers[codec] = json.loads(proc.stdout)
        # the pprof answers open in go tool pprof with the render's total
        render = api(srv, f"/api/v1/render?query={quote('{}')}&{rng}")
        for name in ("merge_profile", "stacktraces_pprof"):
            assert _pprof_top_total_ns(go, pprof_dir / f"{name}.pb") == render["total"] * PERIOD == 37 * PERIOD
    got = answers["proto"]
    assert answers["json"] == got  # both codecs, one answer

    assert got["profile_types"] == [t["id"] for t in api(srv, f"/api/v1/profile_types?{rng}")["profile_types"]]
    assert [n for n in got["label_names"] if not n.startswith("__")] == api(srv, f"/api/v1/labels?{rng}")["names"]
    assert got["label_values"] == api(srv, f"/api/v1/label/service_name/values?query={quote('{}')}&{rng}")["values"]
    assert got["label_values"] == ["cart", "shop"]

    tl = api(srv, f"/api/v1/timeline?query={quote('{}')}&{rng}&group_by=service_name")
    first = start // 30 * 30
    want: dict[str, dict[int, float]] = {}
    for s in tl["series"]:
        pts = want.setdefault(s["group"], {})
        for t, n in s["points"]:
            b = (first + (t - first) // 60 * 60) * 1000
            pts[b] = pts.get(b, 0) + n * PERIOD
    assert {g: {p["t"]: p["v"] for p in pts} for g, pts in got["series"].items()} == want
    assert sum(want["shop"].values()) == 28 * PERIOD
    # the heatmap counts one profile per series window with samples, in the same 60 s slots
    windows: dict[str, dict[str, int]] = {}
    for s in tl["series"]:
        for t, n in s["points"]:
            if n:
                b = str((first + (t - first) // 60 * 60) * 1000)
                windows.setdefault(s["group"], {})[b] = windows.setdefault(s["group"], {}).get(b, 0) + 1
    assert got["heatmap"] == windows and windows

    render = api(srv, f"/api/v1/render?query={quote('{}')}&{rng}&max_nodes=16384")
    fg = got["flamegraph"]
    assert fg["total"] == render["total"] * PERIOD and fg["max_self"] == max(render["nodes"]["self"]) * PERIOD
    paths = {";".join(fg["names"][int(i)] for i in p): t for p, t in node_totals(fg["levels"]).items()}
    assert paths == {p: t * PERIOD for p, t in doc_paths(render).items()}
    assert paths["total;main;work;compute"] == 16 * PERIOD
    assert got["pprof_total"] == render["total"] * PERIOD

    assert got["series_labels"] == [{"__profile_type__": CPU, "service_name": s} for s in ("cart", "shop")]
    assert got["settings"] == 0
    assert got["span_profile_code"] == "ok" and got["span_profile_total"] == 0
    assert got["bad_selector_code"] == "invalid_argument" and "selector" in got["bad_selector_message"]


@pytest.mark.slow
def test_perses_pyroscope_plugin_client(served: tuple[Server, int, int]) -> None:
    if shutil.which("node") is None:
        pytest.skip(reason="node is not installed")
    if not (PERSES_DEPS / "node_modules" / "@perses-dev" / "pyroscope-plugin").is_dir():
        pytest.skip(reason=f"@perses-dev/pyroscope-plugin is not installed in {PERSES_DEPS} (run scripts/setup.sh)")
    srv, start, end = served
    rng = f"from={start}&until={end}"
    proc = subprocess.run(["node", str(PERSES_SCRIPT), str(PERSES_DEPS), srv.url, TOKEN, str(start), str(end),
                           "shop", CPU], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert [t["ID"] for t in got["profileTypes"]["profileTypes"]] == [CPU]
    labels = api(srv, f"/api/v1/labels?{rng}")["names"]
    assert [n for n in got["labelNames"]["names"] if not n.startswith("__")] == labels
    assert got["labelValues"]["names"] == ["a", "b", "c"]
    assert got["services"]["names"] == ["cart", "shop"]

    shop = quote('{service_name="shop"}')
    render = api(srv, f"/api/v1/render?query={shop}&{rng}&max_nodes=1000")
    prof = got["profile"]
    assert prof["numTicks"] == render["total"] == 28
    assert prof["paths"] == doc_paths(render)
    assert prof["metadata"]["units"] == "samples" and prof["metadata"]["sampleRate"] == 100
    assert sum(prof["timeline"]["samples"]) == 28 and prof["timeline"]["durationDelta"] == 30
