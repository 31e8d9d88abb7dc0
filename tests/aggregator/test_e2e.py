"""End to end against a real ``flamewatch serve`` subprocess.

- a real pyroscope-io app (its own subprocess, its own tags) pushes; render shows its
  functions under its labels and a selector on its tags filters it;
- ``kill -9`` in the middle of concurrent pushes loses no acknowledged push.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.server import running_server

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "tests" / "support" / "pyroscope_app.py"


def render_folded(srv, sel: str) -> str:  # type: ignore[no-untyped-def]
    status, body = srv.get(f"/api/v1/render?query={quote(sel)}&from=now-10m&until=now%2B1m&format=folded")
    assert status == 200, body
    return body.decode()


def _by_leaf(folded_text: str) -> dict[str, int]:
    """Samples per leaf function of folded text."""
    out: dict[str, int] = {}
    for line in folded_text.splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        out[leaf] = out.get(leaf, 0) + int(count)
    return out


@pytest.mark.slow
def test_real_pyroscope_app_pushes_and_selectors_filter(tmp_path: Path) -> None:
    if importlib.util.find_spec("pyroscope") is None:
        pytest.skip(reason="pyroscope-io is not installed (pip install pyroscope-io)")
    with running_server(tmp_path) as srv:
        runs = []
        for name, env in (("e2e-alpha", "blue"), ("e2e-beta", "green")):
            runs.append(subprocess.Popen(
                [sys.executable, str(APP), "--server", srv.url, "--app-name", name, "--tag", f"env={env}",
                 "--tag", "team=flame", "--seconds", "3", "--upload-interval", "1", "--route", f"/{name}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for p in runs:
            _, err = p.communicate(timeout=90)
            assert p.returncode == 0, err
        blue = render_folded(srv, '{env="blue"}')
        assert "hot_loop_alpha" in blue and "tagged_work_beta" in blue
        # The route tag set with tag_wrapper arrives as a label on its own series. The SDK's
        # sampler reads the thread's tags asynchronously, so a few samples taken just after the
        # `with` block ends still carry the tag: assert the split is clear, not perfect.
        tagged = _by_leaf(render_folded(srv, '{env="blue",route="/e2e-alpha"}'))
        untagged = _by_leaf(render_folded(srv, '{env="blue",route=""}'))
        assert tagged.get("tagged_work_beta", 0) > 4 * tagged.get("hot_loop_alpha", 0), tagged
        assert untagged.get("hot_loop_alpha", 0) > 4 * untagged.get("tagged_work_beta", 0), untagged
        assert "tagged_work_beta" in render_folded(srv, '{service_name="e2e-alpha",route=~"/e2e-.*"}')
        assert render_folded(srv, '{env="blue",service_name="e2e-beta"}') == ""
        assert render_folded(srv, '{team="flame"}').count("\n") >= 2
        names = srv.json("/api/v1/labels?from=now-10m")["names"]
        assert {"service_name", "env", "team", "route"} <= set(names) and "__name__" not in names
        vals = srv.json("/api/v1/label/service_name/values?from=now-10m&query=" + quote('{team="flame"}'))
        assert vals["values"] == ["e2e-alpha", "e2e-beta"]
        doc = srv.json("/api/v1/render?from=now-10m&query=" + quote('{env="green"}'))
        names_in_tree = {doc["names"][i] for i in doc["nodes"]["name"]}
        assert {"hot_loop_alpha", "tagged_work_beta"} <= names_in_tree
        tl = srv.json("/api/v1/timeline?from=now-5m&group_by=service_name")
        assert {s["group"] for s in tl["series"]} == {"e2e-alpha", "e2e-beta"}
        assert all(sum(n for _, n in s["points"]) > 0 for s in tl["series"])


@pytest.mark.slow
def test_kill_9_keeps_every_acknowledged_push(tmp_path: Path) -> None:
    with running_server(tmp_path) as srv:
        acked: list[int] = []
        lock = threading.Lock()
        stop = threading.Event()
        counter = iter(range(10**9))

        def pusher() -> None:
            while not stop.is_set():
                with lock:
                    i = next(counter)
                body = f"main;worker;push_{i:07d} {i % 7 + 1}\nmain;common 1\n".encode()
                try:
                    status, _ = srv.post(f"/ingest?name=durable{{t=x}}&from={int(time.time())}", body, timeout=5)
                except OSError:
                    return  # the server died mid-request: not acknowledged
                if status == 200:
                    with lock:
                        acked.append(i)

        threads = [threading.Thread(target=pusher) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(acked) < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        srv.kill()  # SIGKILL while pushes are in flight
        stop.set()
        for t in threads:
            t.join(10)
        assert len(acked) >= 50, f"only {len(acked)} pushes acknowledged before the kill:\n{srv.log()}"
        srv.restart()
        text = render_folded(srv, '{service_name="durable"}')
        stored = {}
        for line in text.splitlines():
            stack, _, n = line.rpartition(" ")
            stored[stack] = int(n)
        missing = [i for i in acked if stored.get(f"main;worker;push_{i:07d}") != i % 7 + 1]
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged pushes lost, e.g. {missing[:5]}"
        assert stored["main;common"] >= len(acked)
