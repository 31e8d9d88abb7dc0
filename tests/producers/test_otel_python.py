"""A Python app profiled by the real ``opentelemetry-sdk-extension-profiling`` (its own virtualenv),
exporting OTLP/HTTP; its requests relayed to a real ``flamewatch serve`` and checked function by
function against the requests themselves (read here with the opentelemetry-proto classes)."""

from __future__ import annotations

import os
import subprocess
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)

from tests.producers.relay import relay
from tests.support.capture import capture_server
from tests.support.server import REPO, running_server

VENV = Path(os.environ.get("FLAMEWATCH_OTEL_VENV", Path.home() / ".cache/flamewatch/otel-profiling-venv"))
WALL = "wall:wall:nanoseconds:wall:nanoseconds"


def _sent(body: bytes) -> tuple[Counter[str], Counter[str], dict[str, str]]:
    """(self samples per leaf function, inclusive per function, resource attributes) of one request."""
    req = ExportProfilesServiceRequest.FromString(body)
    d = req.dictionary
    strings = list(d.string_table)
    leaf: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    res: dict[str, str] = {}
    for rp in req.resource_profiles:
        res.update({kv.key: kv.value.string_value for kv in rp.resource.attributes})
        for sp in rp.scope_profiles:
            for p in sp.profiles:
                assert (strings[p.sample_type.type_strindex], strings[p.period_type.type_strindex]) == \
                    ("samples", "wall")
                for s in p.samples:
                    n = sum(s.values) if s.values else len(s.timestamps_unix_nano)
                    names = [strings[d.function_table[d.location_table[li].lines[0].function_index].name_strindex]
                             for li in d.stack_table[s.stack_index].location_indices]
                    leaf[names[0]] += n
                    for name in set(names):
                        incl[name] += n
    return leaf, incl, res


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_otel_python_sdk_profiles(tmp_path: Path) -> None:
    py = VENV / "bin" / "python"
    if not py.is_file():
        pytest.skip(reason=f"no virtualenv with opentelemetry-sdk-extension-profiling at {VENV}: run scripts/setup.sh")
    with capture_server() as cap:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT": cap.url + "/v1development/profiles",
               "FW_SECONDS": "4"}
        env.pop("PYTHONPATH", None)
        run = subprocess.run([str(py), str(REPO / "tests/producers/otel_app.py")], env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0 and "done" in run.stdout, run.stderr[-3000:]
        reqs = cap.wait_for(1, timeout=20, path="/v1development/profiles")
    leaf: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for r in reqs:
        lf, inc, res = _sent(r.body)
        leaf.update(lf)
        incl.update(inc)
        assert res["service.name"] == "otel-py-app"
    # What the app did: heavy_work runs 0.2 s of every 0.3 s, light_work 0.1 s.
    assert incl["heavy_work"] > 1.3 * incl["light_work"] > 0, incl

    with running_server(tmp_path) as srv:
        for status, body in relay(srv, reqs):
            assert status == 200, body[:500]
        sel = urllib.parse.quote('{service_name="otel-py-app",namespace="oteltest",pod="otel-py-1",'
                                 'container="app",pyroscope_spy="otlp"}')
        doc = srv.json(f"/api/v1/top?query={sel}&from=now-1h&until=now%2B1m&limit=100000"
                       f"&profile_type={urllib.parse.quote(WALL)}")
        assert doc["period_ns"] == 10_000_000
        assert doc["total"] == sum(leaf.values()), (doc["total"], sum(leaf.values()))
        got_self = {row["name"]: row["self"] for row in doc["rows"]}
        got_total = {row["name"]: row["total"] for row in doc["rows"]}
        assert {k: v for k, v in got_self.items() if v} == dict(leaf), (got_self, leaf)
        for fn in ("heavy_work", "light_work", "worker"):
            assert got_total[fn] == incl[fn], (fn, got_total[fn], incl[fn])
        names = srv.json("/api/v1/labels?from=now-1h&until=now%2B1m&profile_type=" + urllib.parse.quote(WALL))
        assert "thread_name" in names["names"]
