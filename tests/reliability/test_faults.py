"""Faults against a real ``flamewatch serve``: SIGKILL during ingest, a full disk.

ClickHouse down and back up is covered by
tests/aggregator/test_clickhouse_server.py::test_serve_on_clickhouse_matches_sqlite_and_survives_an_outage;
the agent-side faults (aggregator down while agents run, perf killed under
the agent) by tests/agent/test_agent_e2e.py and
tests/agent/test_pieces.py::test_perf_sampler_restarts_with_backoff_and_counts_gaps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stacks import folded
from stacks.model import Frame, Profile, StackTable
from tests.reliability._net import push_body
from tests.support.server import Server, running_server

PUSH = "/push.v1.PusherService/Push"
PROTO = {"Content-Type": "application/proto"}
RANGE = "from=now-1h&until=now%2B1h"


def stored(srv: Server, selector: str) -> dict[str, int]:
    """Folded stacks -> count for a selector over the last hour."""
    from urllib.parse import quote

    status, body = srv.get(f"/api/v1/render?query={quote(selector)}&{RANGE}&format=folded",
                           timeout=60)
    assert status == 200, body[:300]
    prof = folded.parse(body.decode())
    return {";".join(f.name for f in s): n for s, n in prof.items()}


def unique_push(i: int, table: StackTable) -> tuple[bytes, str, int]:
    """Push ``i``: one stack unique to it (count 1..7) plus a shared one, as an agent would send."""
    n = i % 7 + 1
    prof = Profile.from_pairs([((Frame.user("main"), Frame.user("worker"), Frame.user(f"push_{i:07d}")), n),
                               ((Frame.user("main"), Frame.user("common")), 1)], table)
    labels = {"service_name": "durable", "node": "n1", "namespace": "default", "pod": f"pod-{i % 5}",
              "container": "c", "process": "p"}
    return push_body(prof, labels), f"main;worker;push_{i:07d}", n


@pytest.mark.slow
def test_kill_9_during_concurrent_connect_pushes_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """8 pushers on the Connect route; SIGKILL twice mid-stream; every 2xx push is there after."""
    with running_server(tmp_path) as srv:
        acked: dict[str, int] = {}
        lock = threading.Lock()
        counter = iter(range(10**9))
        table = StackTable()

        def pusher(stop: threading.Event) -> None:
            while not stop.is_set():
                with lock:
                    i = next(counter)
                    body, key, n = unique_push(i, table)
                try:
                    status, _ = srv.post(PUSH, body, headers=PROTO, timeout=5)
                except OSError:
                    return  # died mid-request: not acknowledged, may or may not be stored
                if status == 200:
                    with lock:
                        acked[key] = n

        for round_ in range(2):
            stop = threading.Event()
            threads = [threading.Thread(target=pusher, args=(stop,)) for _ in range(8)]
            for t in threads:
                t.start()
            target = len(acked) + 200
            deadline = time.monotonic() + 20
            while len(acked) < target and time.monotonic() < deadline:
                time.sleep(0.01)
            srv.kill()
            stop.set()
            for t in threads:
                t.join(10)
            srv.start()
            assert len(acked) >= 50 * (round_ + 1), f"only {len(acked)} acks:\n{srv.log()[-2000:]}"
        have = stored(srv, '{service_name="durable"}')
        missing = [k for k, n in acked.items() if have.get(k) != n]
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged pushes lost, e.g. {missing[:5]}"
        assert have["main;common"] >= len(acked)
        print(f"kill -9 x2: {len(acked)} acknowledged pushes, {sum(acked.values())} unique samples, 0 lost")


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A size-limited tmpfs at ``path`` (root only); always unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to simulate a full disk (needs root/CAP_SYS_ADMIN): {r.stderr}")
    try:
        yield path
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> Path:
    """Write zeros into ``path/filler`` until the disk is full."""
    filler = path / "filler"
    chunk = b"\x00" * 65536
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
        with contextlib.suppress(OSError):
            os.fsync(f.fileno())
    # A few small files eat the last partial blocks.
    for i in range(64):
        try:
            (path / f"crumb{i}").write_bytes(b"\x00" * 4096)
        except OSError:
            break
    return filler


@pytest.mark.slow
def test_disk_full_gives_5xx_clear_log_no_corruption_and_recovers(tmp_path: Path) -> None:
    mnt = tmp_path / "disk"
    with tiny_tmpfs(mnt, "24m"):
        srv = Server(mnt, ["--commit-interval-ms", "5"], None)
        srv.log_path = tmp_path / "serve.log"  # the log must not live on the full disk
        srv.start()
        try:
            table = StackTable()
            before: dict[str, int] = {}
            for i in range(20):
                body, key, n = unique_push(i, table)
                assert srv.post(PUSH, body, headers=PROTO)[0] == 200
                before[key] = n
            filler = fill(mnt)
            statuses = []
            for i in range(100, 160):  # unique stacks so every push must write new rows
                big = Profile.from_pairs([((Frame.user("main"), Frame.user(f"fill_{i}_{j}" + "x" * 200)), 1)
                                          for j in range(300)], table)
                from tests.reliability._net import push_body as pb
                status, _resp = srv.post(PUSH, pb(big, {"service_name": "durable", "pod": "full"}),
                                        headers=PROTO, timeout=30)
                statuses.append(status)
                if status >= 500:
                    break
            assert statuses[-1] in (500, 503, 507), f"no 5xx with a full disk: {statuses}"
            assert srv.alive(), srv.log()[-2000:]
            assert any(w in srv.log().lower() for w in ("full", "no space", "storage failure")), \
                srv.log()[-2000:]
            assert srv.get("/healthz")[0] == 200
            # Space returns: pushes succeed again, nothing acknowledged earlier is gone.
            filler.unlink()
            for p in mnt.glob("crumb*"):
                p.unlink()
            ok = False
            for i in range(200, 230):
                body, key, n = unique_push(i, table)
                status, _ = srv.post(PUSH, body, headers=PROTO)
                if status == 200:
                    before[key] = n
                    ok = True
                time.sleep(0.1)
            assert ok, f"no push succeeded after space returned:\n{srv.log()[-2000:]}"
            have = stored(srv, '{service_name="durable"}')
            missing = [k for k, n in before.items() if have.get(k) != n]
            assert not missing, f"lost after disk full: {missing[:5]}"
        finally:
            srv.stop()
        db = mnt / "flamewatch-data" / "flamewatch.db"
        if db.exists():
            con = sqlite3.connect(db)
            try:
                assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            finally:
                con.close()
        # Restart on the same data: acknowledged data still there.
        srv.start()
        try:
            have = stored(srv, '{service_name="durable"}')
            assert all(have.get(k) == n for k, n in before.items())
        finally:
            srv.stop()
        shutil.rmtree(mnt / "flamewatch-data", ignore_errors=True)


