"""Pure parts of the demo runner and its settings: phase alignment, names, links, agent choice."""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import re
import socket
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from flamewatch.demo import register
from flamewatch.demo.runner import (
    Demo,
    agent_status,
    align_down,
    align_up,
    fit_phases,
    percentile,
    pod_name,
    viewer_urls,
)
from flamewatch.demo.settings import SETTINGS
from ground.settings import resolve


def test_align_to_windows() -> None:
    assert align_up(60, 30) == 60
    assert align_up(61, 30) == 90
    assert align_up(89.5, 30) == 90
    assert align_down(89.5, 30) == 60
    assert align_down(90, 30) == 90


def test_pod_name_looks_like_a_deployment_pod() -> None:
    name = pod_name("admin-service", random.Random(1))
    assert re.fullmatch(r"admin-service-[0-9a-f]{10}-[a-z0-9]{5}", name), name
    assert pod_name("x", random.Random(1)) != pod_name("x", random.Random(2))


def test_agent_status_explains_why_not() -> None:
    works = lambda path: None  # noqa: E731
    assert agent_status(0, "/usr/bin/perf", works, "auto")[0] is True
    ok, why = agent_status(1000, "/usr/bin/perf", works, "auto")
    assert not ok and "root" in why
    ok, why = agent_status(0, None, works, "auto")
    assert not ok and "linux-perf" in why
    ok, why = agent_status(0, "/usr/bin/perf", lambda p: "perf at /usr/bin/perf fails: boom", "on")
    assert not ok and "boom" in why
    assert agent_status(0, "/usr/bin/perf", works, "off") == (False, "off (--agent off)")


def test_viewer_urls_carry_the_phases() -> None:
    sel = '{namespace="default", container="admin-service"}'
    urls = viewer_urls("http://127.0.0.1:4040", sel, (60, 120), (120, 150))
    api = urlparse(urls["diff_api"])
    q = {k: v[0] for k, v in parse_qs(api.query).items()}
    assert api.path == "/api/v1/diff"
    assert q == {"base": sel, "base_from": "60", "base_until": "120", "compare": sel,
                 "compare_from": "120", "compare_until": "150", "mode": "share", "format": "json"}
    assert urls["viewer"] == "http://127.0.0.1:4040/"
    view = {k: v[0] for k, v in parse_qs(urlparse(urls["diff_viewer"]).query).items()}
    assert view == {"mode": "diff", "namespace": "default", "container": "admin-service", "bfrom": "60",
                    "buntil": "120", "cfrom": "120", "cuntil": "150", "dmode": "share"}
    assert parse_qs(urlparse(urls["namespace"]).query)["namespace"] == ["default"]


def test_percentile() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([3.0, 1.0, 2.0], 0.99) == 3.0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["demo", *argv])


def test_settings_flags_env_and_switches() -> None:
    s = resolve(SETTINGS, _parse([]), environ={})
    assert (s.port, s.fast, s.agent, s.phase_seconds, s.duration) == (4040, False, "auto", 180, 0.0)
    s = resolve(SETTINGS, _parse(["--fast", "--port", "0", "--sdk", "off"]), environ={"FLAMEWATCH_RATE": "5"})
    assert (s.fast, s.port, s.sdk, s.rate) == (True, 0, False, 5.0)


@pytest.mark.parametrize(("argv", "needle"), [
    (["--port", "70000"], "--port"),
    (["--rate", "0"], "--rate"),
    (["--phase-seconds", "x"], "--phase-seconds"),
])
def test_bad_settings_name_the_flag(argv: list[str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        resolve(SETTINGS, _parse(argv), environ={})


def test_bad_agent_choice_is_rejected() -> None:
    with pytest.raises(SystemExit):
        _parse(["--agent", "maybe"])


async def _demo_with(tmp_path: Path, children: dict[str, str]) -> Demo:
    """A Demo whose children are real short shell processes: name -> shell script."""

    demo = Demo(resolve(SETTINGS, _parse(["--data-dir", str(tmp_path)]), environ={}), out=io.StringIO())
    demo.data_dir = demo.prepare_dir()
    for name, script in children.items():
        child = await demo.spawn(name, ["sh", "-c", script], {"PATH": "/usr/bin:/bin"})
        await child.proc.wait()
    return demo


async def test_watch_restarts_a_dead_agent_then_gives_up_with_the_log(tmp_path: Path) -> None:
    demo = await _demo_with(tmp_path, {"agent": "echo 'py-spy not found: looked in /x'; exit 2"})
    # Restarts fail too (a script that exits before serving /metrics).
    demo._agent_spec = (["sh", "-c", "echo still broken; exit 3"], {"PATH": "/usr/bin:/bin"}, 9)
    await demo.watch()
    out = demo.out.getvalue()
    assert "agent exited early with code 2" in out and "py-spy not found: looked in /x" in out
    assert "agent      restarting (1/3)" in out
    assert "still broken" in demo.failure and "could not be restarted" in demo.failure
    assert demo.stop_event.is_set() and demo.agent_running is False
    for c in demo.children:
        await c.stop(1)


async def test_watch_stops_the_demo_when_a_service_dies(tmp_path: Path) -> None:
    demo = await _demo_with(tmp_path, {"admin-service": "echo 'Traceback: boom' >&2; exit 1"})
    await demo.watch()
    out = demo.out.getvalue()
    assert "admin-service exited early with code 1" in out and "Traceback: boom" in out
    assert "admin-service" in demo.failure and demo.stop_event.is_set()
    for c in demo.children:
        await c.stop(1)


METRICS_OK = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


async def test_watch_restarts_a_dead_agent_and_says_it_runs_again(tmp_path: Path) -> None:
    demo = await _demo_with(tmp_path, {"agent": "echo 'perf: killed'; exit 137"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo._agent_spec = ([sys.executable, "-c", METRICS_OK, str(port)], {}, port)
    task = asyncio.ensure_future(demo.watch())
    for _ in range(200):
        if "running again" in demo.out.getvalue():
            break
        await asyncio.sleep(0.1)
    demo.stop_event.set()
    await task
    out = demo.out.getvalue()
    assert "agent exited early with code 137" in out and "perf: killed" in out
    assert "agent      running again" in out and demo.agent_running and not demo.failure
    assert demo.state["agent"]["running"] is True and demo.state["agent"]["restarts"] == 1
    for c in demo.children:
        await c.stop(1)


def test_phases_fit_the_duration() -> None:
    assert fit_phases(1000, 180, 30, 0, 13) == (180, 1200, 1380)  # no deadline: as asked
    assert fit_phases(1000, 180, 30, 1000 + 400, 13) == (180, 1200, 1380)  # fits: 1393 <= 1400
    phase, switch, end = fit_phases(1000, 180, 30, 1000 + 390, 13)
    assert (phase, switch, end) == (150, 1170, 1320) and end + 13 <= 1390
    assert fit_phases(1000, 180, 30, 1010, 13)[0] == 30  # never below one window


def test_request_lines_print_the_slowest_with_their_flamegraph() -> None:
    from flamewatch.demo.runner import request_lines

    doc = {"rows": [
        {"span_name": "GET /admin", "wall_ns": 0, "cpu_ns": 1_234_000_000, "pod": "admin-1", "span_id": "ab" * 8,
         "flamegraph": "/api/v1/span_profile?span_id=abababababababab&profile_type=cpu"},
        {"span_name": "GET /admin", "wall_ns": 900_000_000, "cpu_ns": 0, "pod": "admin-2", "span_id": "cd" * 8,
         "flamegraph": "/api/v1/span_profile?span_id=cdcdcdcdcdcdcdcd"}]}
    lines = request_lines(doc, "http://h:4040", limit=5)
    assert lines[0].split("\n")[0].split() == ["GET", "/admin", "1234", "ms", "CPU", "pod", "admin-1", "span",
                                               "ab" * 8]
    assert lines[0].endswith("flamegraph: http://h:4040/?mode=requests&span=abababababababab&sptype=cpu&line=1")
    assert "900 ms wall" in lines[1] and request_lines({"rows": []}, "x") == []


async def test_printed_requests_say_why_a_list_is_empty(tmp_path: Path) -> None:
    """Against a real aggregator: a traced slow view is listed; then an empty range says the views
    were too short to be sampled (tracing works), not that tracing is missing."""
    import gzip
    import time

    from aiohttp.test_utils import TestClient, TestServer

    from aggregator.app import create_app
    from aggregator.settings import SETTINGS as SERVE
    from stacks.folded import parse
    from stacks.pprof import encode_pprof
    from stacks.push import PushSeries, RawSample, encode_push_request

    now = time.time()
    app = create_app(resolve(SERVE, {"data_dir": str(tmp_path / "srv")}, environ={}))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        raw = encode_pprof(parse("main;Admin.createSampleImages 30\n"), time_nanos=int(now * 1e9),
                           sample_labels={"span_id": "ab" * 8, "trace_id": "cd" * 16, "span_name": "GET /admin"})
        body = gzip.compress(encode_push_request([PushSeries(
            (("__name__", "process_cpu"), ("service_name", "admin-service")), (RawSample(raw),))]))
        r = await client.post("/push.v1.PusherService/Push", data=body, headers={"Content-Type": "application/proto"})
        assert r.status == 200, await r.text()
        out = io.StringIO()
        demo = Demo(resolve(SETTINGS, _parse(["--data-dir", str(tmp_path)]), environ={}), out=out)
        urls = {"viewer": str(client.make_url("/")), "before": "B", "after": "A"}
        await demo.show_requests(urls, "after the fix", now - 3600, now - 1800, "after")
        assert "none traced yet (tracing needs opentelemetry-sdk" in out.getvalue()  # nothing printed before
        await demo.show_requests(urls, "before the fix", now - 60, now + 60, "before")
        assert "slowest /admin requests before the fix (1 traced):" in out.getvalue()
        assert "300 ms CPU" in out.getvalue() and "Requests view: B" in out.getvalue()
        await demo.show_requests(urls, "after the fix", now - 3600, now - 1800, "after")
        assert out.getvalue().rstrip().endswith("none with samples (the views take a few ms now: at 100 Hz most "
                                                "get no sample)")
    finally:
        await client.close()
