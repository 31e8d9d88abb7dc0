"""Faults against a real ``flamewatch serve``: SIGKILL during ingest, a full disk, a read-only data dir.

ClickHouse down and back up is covered by
tests/aggregator/test_clickhouse_server.py::test_serve_on_clickhouse_matches_sqlite_and_survives_an_outage;
the agent-side faults (aggregator down while agents run, perf killed under
the agent) by tests/agent/test_agent_e2e.py and
tests/agent/test_pieces.py::test_perf_sampler_restarts_with_backoff_and_counts_gaps.
"""

from __future__ import annotations

import contextlib
import json
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
    r = subprocess.run([admin("mount"), "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(reason=f"cannot mount a tmpfs to simulate a full disk (needs root/CAP_SYS_ADMIN): {r.stderr}")
    try:
        yield path
    finally:
        for _ in range(20):
            if subprocess.run([admin("umount"), str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run([admin("umount"), "-l", str(path)], capture_output=True)


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
            # Issue 24, cause 13: while pushes fail, /healthz says "degraded" and /readyz is 503.
            health = json.loads(srv.get("/healthz")[1])
            assert health["status"] == "degraded" and "pushes failing" in health["problems"][0], health
            assert srv.get("/readyz")[0] == 503
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
            assert srv.get("/readyz")[0] == 200 and json.loads(srv.get("/healthz")[1])["status"] == "ok"
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




def admin(tool: str) -> str:
    """The path of a system tool, looked for on PATH and then in /usr/sbin and /sbin (where
    Debian puts mount, losetup and mkfs, and which a non-login PATH may lack); ``tool`` if absent."""
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
    return shutil.which(tool, path=path) or tool


@contextlib.contextmanager
def ext4_on_loop(tmp_path: Path, size_mb: int = 48) -> Iterator[tuple[Path, str]]:
    """An ext4 file system on a loop device, mounted ``errors=remount-ro`` (root only).

    Yields (mount point, loop device). Always unmounted and detached afterwards.
    """
    if os.geteuid() != 0:
        pytest.skip(reason="needs root to mount a loop device (mount/losetup)")
    for tool in ("losetup", "mkfs.ext4", "e2fsck", "mount", "umount"):
        if shutil.which(admin(tool)) is None:
            pytest.skip(reason=f"{tool} is missing (apt-get install util-linux e2fsprogs mount)")
    img, mnt = tmp_path / "ext4.img", tmp_path / "ro-disk"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run([admin("mkfs.ext4"), "-q", "-F", str(img)], check=True, capture_output=True)
    r = subprocess.run([admin("losetup"), "-f", "--show", str(img)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(reason=f"no loop device for an ext4 image (needs root/CAP_SYS_ADMIN, /dev/loop*): {r.stderr}")
    dev = r.stdout.strip()
    try:
        r = subprocess.run([admin("mount"), "-o", "errors=remount-ro", dev, str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(reason=f"cannot mount ext4 from {dev} (needs root/CAP_SYS_ADMIN): {r.stderr}")
        try:
            yield mnt, dev
        finally:
            for _ in range(20):
                if not os.path.ismount(mnt):
                    break
                if subprocess.run([admin("umount"), str(mnt)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.2)
            else:
                subprocess.run([admin("umount"), "-l", str(mnt)], capture_output=True)
    finally:
        subprocess.run([admin("losetup"), "-d", dev], capture_output=True)


def mount_options(mnt: Path) -> str:
    """The kernel's current options for the mount at ``mnt`` (from /proc/self/mountinfo)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        if parts[4] == str(mnt):
            return parts[5] + " " + line.split(" - ", 1)[1]
    raise AssertionError(f"{mnt} is not mounted")


@pytest.mark.slow
def test_data_dir_turning_read_only_gives_5xx_clear_log_no_corruption_and_recovers(tmp_path: Path) -> None:
    """Issue 7: the data directory becomes read-only under a running serve.

    A plain ``mount -o remount,ro`` is refused (EBUSY) by Linux while the server holds the
    SQLite file open for writing, on tmpfs as on ext4, so it cannot make a live data dir
    read-only. What does, in production, is the kernel itself: ext4 mounted
    ``errors=remount-ro`` flips to read-only on a disk error, whoever has files open. The test
    triggers exactly that through ``/sys/fs/ext4/<dev>/trigger_fs_error``. Recovery is what an
    operator must do after such an error: stop serve, unmount, ``e2fsck``, mount, start again.
    """
    with ext4_on_loop(tmp_path) as (mnt, dev):
        trigger = Path("/sys/fs/ext4") / Path(dev).name / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip(reason=f"{trigger} is missing (kernel without ext4 error injection): cannot go read-only")
        srv = Server(mnt, ["--commit-interval-ms", "5"], None)
        srv.log_path = tmp_path / "serve.log"  # the log must stay writable
        srv.start()
        table = StackTable()
        acked: dict[str, int] = {}
        try:
            for i in range(10):
                body, key, n = unique_push(i, table)
                status, resp = srv.post(PUSH, body, headers=PROTO)
                assert status == 200, resp[:300]
                acked[key] = n
            # Write back what the kernel holds for this file system, as it does by itself within
            # seconds: these pushes are on the disk, whatever SQLite's synchronous mode.
            subprocess.run(["sync", "-f", str(srv.data_dir / "flamewatch.db")], check=True)
            synced = dict(acked)
            for i in range(10, 15):  # acknowledged but only in the page cache when the disk fails
                body, key, n = unique_push(i, table)
                status, resp = srv.post(PUSH, body, headers=PROTO)
                assert status == 200, resp[:300]
                acked[key] = n
            # The operator's way first: refused while the database is open for writing.
            r = subprocess.run([admin("mount"), "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
            print(f"mount -o remount,ro with serve running: rc={r.returncode} {r.stderr.strip()}")
            if r.returncode != 0:
                trigger.write_text("flamewatch reliability test: simulated disk error\n")
            opts = mount_options(mnt).replace(",", " ").split()
            # Linux 6.x reports the error-triggered state as "emergency_ro" (older: "ro").
            assert {"ro", "emergency_ro"} & set(opts), f"{mnt} is still writable: {opts}"
            with pytest.raises(OSError):  # and a write from outside the server fails too
                (mnt / "probe").write_bytes(b"x")
            # SQLite may absorb a write in its page cache or WAL for a while: push until the
            # first failure, bounded in count and time, and count what was acknowledged meanwhile.
            statuses: list[int] = []
            resp = b""
            deadline = time.monotonic() + 10
            i = 1000
            while len(statuses) < 30 and time.monotonic() < deadline:
                body, key, n = unique_push(i, table)
                status, resp = srv.post(PUSH, body, headers=PROTO, timeout=30)
                statuses.append(status)
                if status == 200:
                    acked[key] = n  # acknowledged: must survive the recovery as well
                if status >= 500:
                    break
                i += 1
            print(f"pushes after the file system went read-only: {statuses}")
            assert statuses[-1] in (500, 503, 507), f"no 5xx on a read-only data dir: {statuses}"
            err = json.loads(resp)["error"]
            assert "storage" in err.lower(), err
            log = srv.log()
            assert "storage failure" in log.lower(), log[-2000:]
            assert any(w in log.lower() for w in ("read-only", "readonly", "i/o error")), log[-2000:]
            assert srv.alive(), log[-2000:]
            assert srv.get("/healthz")[0] == 200
            # Reads go on, served from the page cache: every acknowledged push is visible, even
            # those whose pages the failed disk will never get (see the recovery below).
            during = stored(srv, '{service_name="durable"}')
            assert all(during.get(k) == n for k, n in acked.items()), (during, acked)
            # Still failing, not hanging, on a second try; the server keeps answering.
            body, _, _ = unique_push(1999, table)
            assert srv.post(PUSH, body, headers=PROTO, timeout=30)[0] >= 500
        finally:
            srv.stop()
        # Recovery as an operator does it: unmount, repair, mount read-write, start again.
        for _ in range(20):
            if subprocess.run([admin("umount"), str(mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"cannot unmount {mnt} after serve stopped")
        fsck = subprocess.run([admin("e2fsck"), "-fy", dev], capture_output=True, text=True)
        assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1 = errors corrected
        subprocess.run([admin("mount"), "-o", "errors=remount-ro", dev, str(mnt)], check=True, capture_output=True)
        assert "rw" in mount_options(mnt).replace(",", " ").split()
        db = srv.data_dir / "flamewatch.db"
        con = sqlite3.connect(db)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            con.close()
        srv.start()
        try:
            after: dict[str, int] = {}
            for i in range(2000, 2005):
                body, key, n = unique_push(i, table)
                status, resp = srv.post(PUSH, body, headers=PROTO)
                assert status == 200, f"push after recovery: {status} {resp[:300]!r}"
                after[key] = n
            have = stored(srv, '{service_name="durable"}')
            missing = [k for k, n in synced.items() if have.get(k) != n]
            assert not missing, f"{len(missing)} of {len(synced)} written-back pushes lost: {missing[:5]}"
            # The rest is all-or-nothing per push: never a torn or doubled push.
            torn = {k: (n, have[k]) for k, n in acked.items() if k in have and have[k] != n}
            assert not torn, f"pushes stored with the wrong count: {torn}"
            # serve syncs SQLite's WAL on every commit batch (--sqlite-synchronous FULL, the
            # default), so nothing it acknowledged may be lost with the disk error.
            lost = [k for k in acked if k not in have]
            assert not lost, f"{len(lost)} of {len(acked)} acknowledged pushes lost with the disk error"
            assert all(have.get(k) == n for k, n in after.items())
        finally:
            srv.stop()
        con = sqlite3.connect(db)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            con.close()
        print(f"read-only data dir: {len(synced)} written-back pushes all kept; {len(acked) - len(synced)} "
              f"acknowledged after the last sync -f, 0 of them lost (SQLite synchronous=FULL); "
              f"{len(after)} pushes after recovery kept; integrity ok")
