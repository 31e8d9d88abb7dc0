"""Issue 28: span profiles from the real pyroscope-otel + opentelemetry-sdk + pyroscope-io.

tests/support/traced_app.py runs requests of known duration and work as root spans; its pushes
are captured on loopback and replayed into the aggregator. Each span's flame graph totals exactly
the samples the pushes tagged with that span (counted by an independent wire-format reader), and
the slow-requests table ranks the spans as their measured durations do.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aggregator.app import create_app
from aggregator.settings import SETTINGS
from ground.settings import resolve
from stacks.gz import gunzip_capped, maybe_gunzip
from stacks.push import decode_push_request
from tests.aggregator.test_real_profiles import _fields, _ints, replay
from tests.support.capture import Recorded, capture_server

SUPPORT = Path(__file__).resolve().parents[1] / "support"
WALL_ID = "wall:wall:nanoseconds:wall:nanoseconds"
pytestmark = pytest.mark.slow


def tagged_samples(raw: bytes) -> Counter[str]:
    """Samples (value / period) per ``span_id`` label of one pprof, read from the wire format."""
    strings: list[str] = []
    samples = []
    period = 0
    for num, _wt, v in _fields(raw):
        if num == 6:
            strings.append(bytes(v).decode())  # type: ignore[arg-type]
        elif num == 2:
            samples.append(bytes(v))  # type: ignore[arg-type]
        elif num == 12:
            period = int(v)  # type: ignore[arg-type]
    out: Counter[str] = Counter()
    for s in samples:
        value, span = 0, None
        for num, wt, v in _fields(s):
            if num == 2:
                value += sum(_ints(wt, v))
            elif num == 3:
                key = val = 0
                for n2, _w2, v2 in _fields(bytes(v)):  # type: ignore[arg-type]
                    if n2 == 1:
                        key = int(v2)  # type: ignore[arg-type]
                    elif n2 == 2:
                        val = int(v2)  # type: ignore[arg-type]
                if strings[key] == "span_id":
                    span = strings[val]
        if span is not None:
            assert not period or value % period == 0, "the SDK sends whole samples (value = n * period)"
            out[span] += value // period if period else value
    return out


@pytest.fixture(scope="module")
def traced() -> tuple[list[dict], list[Recorded]]:
    for mod in ("pyroscope", "pyroscope.otel", "opentelemetry.sdk"):
        if importlib.util.find_spec(mod.split(".")[0]) is None or (
                mod == "pyroscope.otel" and importlib.util.find_spec(mod) is None):
            pytest.skip(reason=f"{mod} is not installed (pip install pyroscope-io pyroscope-otel opentelemetry-sdk)")
    with capture_server() as cap:
        proc = subprocess.run([sys.executable, str(SUPPORT / "traced_app.py"), "--server", cap.url,
                               "--app-name", "traced"], capture_output=True, text=True, timeout=90)
        assert proc.returncode == 0, proc.stderr
        spans = json.loads(proc.stdout.strip().splitlines()[-1])
        cap.wait_for(1, timeout=10)
        time.sleep(0.5)  # the shutdown flush may still be arriving
        return spans, list(cap.requests)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    settings = resolve(SETTINGS, {"data_dir": str(tmp_path), "retention_seconds": "0"}, environ={})
    c = TestClient(TestServer(create_app(settings, clock=time.time)))
    await c.start_server()
    try:
        yield c
    finally:
        await c.close()


async def test_span_flamegraphs_and_slow_requests(client: TestClient,
                                                  traced: tuple[list[dict], list[Recorded]]) -> None:
    spans, reqs = traced
    want: Counter[str] = Counter()
    for r in reqs:
        for s in decode_push_request(gunzip_capped(r.body, 1 << 26)):
            for smp in s.samples:
                want.update(tagged_samples(maybe_gunzip(smp.raw_profile, 1 << 26)))
    by_id = {s["span_id"]: s for s in spans}
    assert set(want) <= set(by_id), "every tagged sample names a span the tracer made"
    assert len(want) == len(spans) == 4
    await replay(client, reqs)
    for span_id, n in want.items():
        doc = await (await client.get(f"/api/v1/span_profile?span_id={span_id}")).json()
        assert (doc["total"], doc["profile_type"]) == (n, WALL_ID), by_id[span_id]["name"]
        names = {doc["names"][i] for i in doc["nodes"]["name"]}
        assert "create_sample_images" in names
        assert ("wait_for_database" in names) == (by_id[span_id]["name"] == "GET /report")
        # wall samples at 100 Hz measure the span's duration: the SDK's own sampling, which on a
        # loaded 2-core machine was seen 43 % over a 300 ms span (one CI run in about seven); the
        # stored totals above are exact, this bound only says the samples are of this span
        assert abs(n * 10_000_000 - by_id[span_id]["duration_ns"]) <= 0.5 * by_id[span_id]["duration_ns"] + 5e7
    table = await (await client.get("/api/v1/requests?from=now-10m&until=now%2B1m")).json()
    ranked = [r["span_id"] for r in table["rows"]]
    # The table ranks by stored wall samples, exactly; those measure the durations only up to the
    # SDK's sampling noise (a 300 ms span was once sampled as 430 ms, over a 550 ms one), so the
    # order against the tracer's durations is asserted where they differ by half or more.
    assert sorted(ranked) == sorted(by_id) and [want[i] for i in ranked] == sorted(want.values(), reverse=True)
    for hi, lo in itertools.combinations(ranked, 2):
        assert by_id[lo]["duration_ns"] < 1.5 * by_id[hi]["duration_ns"], (by_id[hi], by_id[lo])
    assert [r["wall_ns"] for r in table["rows"]] == [want[i] * 10_000_000 for i in ranked]
    assert table["rows"][0]["span_name"] == "GET /admin" and table["rows"][0]["pod"] == "traced-1"
    await check_by_line(client, ranked[0], want[ranked[0]])
    trace = by_id[ranked[0]]["trace_id"]
    assert table["rows"][0]["trace_id"] == trace
    doc = await (await client.get(f"/api/v1/span_profile?trace_id={trace}")).json()
    assert doc["total"] == want[ranked[0]]
    named = await (await client.get("/api/v1/span_profile?span_name=GET%20/admin&from=now-10m&until=now%2B1m")).json()
    assert named["total"] == sum(n for i, n in want.items() if by_id[i]["name"] == "GET /admin")


async def check_by_line(client: TestClient, span_id: str, n: int) -> None:
    """The span's flame graph by line: the same total, at least 95 % of its frames located, each
    location inside that function's def in its source file, and ``create_sample_images`` at a
    line of traced_app.py's own def."""
    from tests.aggregator.test_lines_http import function_spans

    doc = await (await client.get(f"/api/v1/span_profile?span_id={span_id}&aggregate=line")).json()
    assert doc["total"] == n and len(doc["locations"]) == len(doc["names"])
    defs: dict[str, dict[str, list[tuple[int, int]]]] = {}
    frames = located = 0
    seen: set[str] = set()
    for i in doc["nodes"]["name"][1:]:  # [0] is the root
        name, loc = doc["names"][i], doc["locations"][i]
        frames += 1
        if not loc:
            continue
        located += 1
        file, _, line = loc.rpartition(":")
        spans = defs.setdefault(file, function_spans(Path(file)))
        where = spans.get(name) or spans.get(name.rsplit(".", 1)[-1], [])  # qualified names: the def's is the last part
        assert any(a <= int(line) <= b for a, b in where), f"{name} is not at {loc}"
        if Path(file) == SUPPORT / "traced_app.py":
            seen.add(name)
    assert frames and located / frames >= 0.95, (located, frames)
    assert "create_sample_images" in seen
