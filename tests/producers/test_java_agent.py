"""A small Java app under the real pyroscope-java agent (Maven Central ``io.pyroscope:agent``), its
JFR pushes relayed to a real ``flamewatch serve``; every type's total and the CPU per function
checked against the JDK's own reader (``jfr print --json``) of the very recordings sent."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest

from stacks.jfr import decode_jfr
from stacks.model import StackTable
from tests.producers.relay import multipart_parts, relay
from tests.support.capture import capture_server
from tests.support.server import running_server

HERE = Path(__file__).resolve().parent
AGENT_VERSION = "2.1.2"
AGENT = Path(os.environ.get("FLAMEWATCH_PYROSCOPE_JAVA",
                            Path.home() / ".cache/flamewatch/pyroscope-java" / f"agent-{AGENT_VERSION}.jar"))
CPU = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"


def _need() -> None:
    for tool in ("java", "javac", "jfr"):
        if shutil.which(tool) is None:
            pytest.skip(reason=f"{tool} not found (a JDK is needed; scripts/setup.sh expects one)")
    if not AGENT.is_file():
        pytest.skip(reason=f"pyroscope-java agent not at {AGENT}: run scripts/setup.sh (mvn dependency:copy)")


def _jfr_events(path: Path) -> list[dict]:
    events = "jdk.ExecutionSample,jdk.ObjectAllocationInNewTLAB,jdk.ObjectAllocationOutsideTLAB,jdk.JavaMonitorEnter"
    out = subprocess.run(["jfr", "print", "--json", "--events", events, str(path)],
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)["recording"]["events"]


def _frame(f: dict) -> str:
    m = f["method"]
    cls = (m.get("type") or {}).get("name") or ""
    return f"{cls}.{m['name']}" if cls else m["name"]


def _duration_ns(text: str) -> float:
    # ISO-8601 as jfr prints it: PT0.001234567S, PT1M2.5S
    t = text.removeprefix("PT")
    total = 0.0
    for unit, mult in (("H", 3600e9), ("M", 60e9), ("S", 1e9)):
        if unit in t:
            head, t = t.split(unit, 1)
            total += float(head) * mult
    return total


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_pyroscope_java_agent_jfr(tmp_path: Path) -> None:
    _need()
    classes = tmp_path / "classes"
    subprocess.run(["javac", "-d", str(classes), str(HERE / "java_app" / "Burn.java")], check=True, timeout=120)
    with capture_server() as cap:
        env = {**os.environ, "PYROSCOPE_SERVER_ADDRESS": cap.url, "PYROSCOPE_APPLICATION_NAME": "java-app",
               "PYROSCOPE_FORMAT": "jfr", "PYROSCOPE_PROFILER_ALLOC": "16k", "PYROSCOPE_PROFILER_LOCK": "1ms",
               "PYROSCOPE_UPLOAD_INTERVAL": "2s", "PYROSCOPE_LABELS": "namespace=jtest,pod=java-1",
               "FW_SECONDS": "6"}
        run = subprocess.run(["java", f"-javaagent:{AGENT}", "-cp", str(classes), "Burn"], env=env,
                             capture_output=True, text=True, timeout=150)
        assert run.returncode == 0 and "done true" in run.stdout, run.stderr[-3000:]
        reqs = cap.wait_for(2, timeout=30, path="/ingest")
    assert all(urllib.parse.parse_qs(r.query)["format"] == ["jfr"] for r in reqs)

    # What the JDK's reader sees in the recordings sent.
    want: Counter[str] = Counter()
    want_fn: Counter[str] = Counter()
    lock_events = 0
    for i, r in enumerate(reqs):
        parts = multipart_parts(r.headers["Content-Type"], r.body)
        raw = parts["jfr"]
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        path = tmp_path / f"rec{i}.jfr"
        path.write_bytes(raw)
        # Our reader of the same bytes (no server): a direct cross-check of the parser.
        ours = {s.ptype.id: s.profile.total for s in decode_jfr(raw, StackTable()).series}
        mine: Counter[str] = Counter()
        for ev in _jfr_events(path):
            v = ev["values"]
            frames = (v.get("stackTrace") or {}).get("frames") or []
            if not frames:
                continue
            if ev["type"] == "jdk.ExecutionSample":
                if v.get("state") == "STATE_SLEEPING":
                    continue
                mine[CPU] += 1
                want_fn[_frame(frames[0])] += 1
            elif ev["type"] == "jdk.ObjectAllocationInNewTLAB":
                mine["memory:alloc_in_new_tlab_objects:count:space:bytes"] += 1
                mine["memory:alloc_in_new_tlab_bytes:bytes:space:bytes"] += v["tlabSize"]
            elif ev["type"] == "jdk.ObjectAllocationOutsideTLAB":
                mine["memory:alloc_outside_tlab_objects:count:space:bytes"] += 1
                mine["memory:alloc_outside_tlab_bytes:bytes:space:bytes"] += v["allocationSize"]
            else:
                mine["mutex:contentions:count:mutex:count"] += 1
                mine["mutex:delay:nanoseconds:mutex:count"] += round(_duration_ns(v["duration"]))
                lock_events += 1
        for k, n in mine.items():
            if k.startswith("mutex:delay"):
                assert abs(ours.get(k, 0) - n) <= 2 * lock_events + 1, (k, ours.get(k), n)
            else:
                assert ours.get(k) == n, (i, k, ours.get(k), n)
        want.update(mine)
    assert want[CPU] > 50 and want["memory:alloc_in_new_tlab_objects:count:space:bytes"] > 0
    assert want["mutex:contentions:count:mutex:count"] > 0
    # (jdk.ObjectAllocationOutsideTLAB is counted when present; async-profiler on JDK 17 samples
    # allocations through JVMTI and reports them all as in-TLAB, so this run has none.)

    with running_server(tmp_path) as srv:
        for r, (status, body) in zip(reqs, relay(srv, reqs), strict=True):
            assert status == 200, (r.query, body[:500])
        sel = urllib.parse.quote('{service_name="java-app",namespace="jtest",pod="java-1",pyroscope_spy="javaspy"}')
        types = {t["id"] for t in srv.json("/api/v1/profile_types?from=now-1h&until=now%2B1m")["profile_types"]}
        assert set(want) <= types, (set(want) - types)
        for ptype, n in want.items():
            doc = srv.json(f"/api/v1/top?query={sel}&from=now-1h&until=now%2B1m&limit=100000"
                           f"&profile_type={urllib.parse.quote(ptype)}")
            if ptype.startswith("mutex:delay"):
                assert abs(doc["total"] - n) <= 2 * lock_events + 1, (ptype, doc["total"], n)
            else:
                assert doc["total"] == n, (ptype, doc["total"], n)
            if ptype == CPU:
                assert doc["period_ns"] == 10_000_000
                got_fn = {row["name"]: row["self"] for row in doc["rows"]}
                for fn in ("Burn.heavyWork", "Burn.lightWork"):
                    assert got_fn.get(fn, 0) == want_fn[fn], (fn, got_fn.get(fn), want_fn[fn])
                assert want_fn["Burn.heavyWork"] > want_fn["Burn.lightWork"] > 0, want_fn
