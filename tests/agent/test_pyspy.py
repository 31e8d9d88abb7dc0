"""Unit and real-tool tests of the py-spy sampler."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from profiler.samplers.base import SamplerUnavailable
from profiler.samplers.pyspy import PySpySampler, check_pyspy, parse_raw
from stacks.model import Frame

U, K = Frame.user, Frame.kernel


def test_pyspy_missing_and_vanished_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SamplerUnavailable, match="pip install py-spy"):
        check_pyspy(str(tmp_path / "py-spy"))
    pyspy = check_pyspy("py-spy")  # next to the interpreter (scripts/setup.sh) or on PATH
    # a process that exits before py-spy attaches: a counted failure, not an exception
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    s = PySpySampler(lambda r: None, pyspy=pyspy, duration=1, workdir=str(tmp_path))
    assert s.run_once(p.pid) is None and s.failures == 1


def test_parse_raw_pyspy_output() -> None:
    text = ("<module> (hot.py);main (hot.py);python_hot_function (hot.py) 199\n"
            "<module> (hot.py);main (hot.py) 3\nbroken line\n<module> (hot.py);main (hot.py) 2\n")
    assert parse_raw(text) == {
        (U("<module> (hot.py)"), U("main (hot.py)"), U("python_hot_function (hot.py)")): 199,
        (U("<module> (hot.py)"), U("main (hot.py)")): 5,
    }


class _FakeProc:
    """A py-spy stand-in: writes ``text`` to its --output and exits 0 (records argv)."""

    pid = 1
    stdout = stdin = stderr = None
    returncode = 0

    def __init__(self, argv: list[str], calls: list[list[str]], text: str) -> None:
        calls.append(argv)
        Path(argv[argv.index("--output") + 1]).write_text(text)

    def poll(self) -> int:
        return 0

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def send_signal(self, sig: int) -> None:
        pass

    def kill(self) -> None:
        pass


def test_pyspy_runs_on_request_with_rate_duration_and_idle(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    got: list = []
    done = threading.Event()

    def sink(r) -> None:
        got.append(r)
        if len(got) == 2:
            done.set()

    s = PySpySampler(sink, runner=lambda argv, **kw: _FakeProc(argv, calls, "main (a.py);f (a.py) 7\n"),
                     workdir=str(tmp_path))
    assert s.start_run(4242, duration=2, rate=37)
    assert s.start_run(4242, duration=10, rate=5, idle=True)  # a wall run alongside the shape run
    assert done.wait(5)
    s.stop()
    cpu_argv = next(c for c in calls if "--idle" not in c)
    assert cpu_argv[:3] == ["py-spy", "record", "--pid"] and "--nonblocking" in cpu_argv
    assert cpu_argv[cpu_argv.index("--rate") + 1] == "37" and cpu_argv[cpu_argv.index("--duration") + 1] == "2"
    assert any("--idle" in c for c in calls)
    assert sorted(r.idle for r in got) == [False, True] and all(r.total == 7 and r.ok for r in got)


def test_real_pyspy_idle_run_sees_a_sleeping_python_process(tmp_path: Path) -> None:
    """Wall-clock mode: py-spy --idle on a real, sleeping Python process yields its idle stack."""
    try:
        pyspy = check_pyspy("py-spy")  # the venv's, next to the interpreter, as the agent finds it
    except SamplerUnavailable as e:
        pytest.skip(reason=f"py-spy is not installed: {e}")
    if os.geteuid() != 0:
        pytest.skip(reason="py-spy needs root (ptrace) to read another process")
    script = tmp_path / "sleeper.py"
    script.write_text("import time\ndef waiting_for_io():\n    time.sleep(600)\nwaiting_for_io()\n")
    p = subprocess.Popen([sys.executable, str(script)])
    try:
        time.sleep(1.0)
        s = PySpySampler(lambda r: None, pyspy=pyspy, workdir=str(tmp_path))
        busy = s.run_once(p.pid, 1, rate=20)
        idle = s.run_once(p.pid, 1, rate=20, idle=True)
    finally:
        p.kill()
        p.wait()
    assert busy is not None and busy.total == 0  # a CPU profile sees nothing of a sleeping process
    assert idle is not None and idle.idle and idle.total >= 10
    assert any(stack[-1].name == "waiting_for_io (sleeper.py)" for stack in idle.stacks), idle.stacks


GIL_APP = """
import hashlib, threading, time
DATA = bytes(8 << 20)
def hashing_without_gil():
    while True:
        hashlib.sha256(DATA).digest()  # CPython releases the GIL while it hashes large buffers
def python_code_with_gil():
    x = 0
    while True:
        x += 1
threading.Thread(target=hashing_without_gil, daemon=True).start()
python_code_with_gil()
"""


def test_real_pyspy_gil_run_keeps_only_the_gil_holder(tmp_path: Path) -> None:
    """--gil (the shape runs' default): a thread busy outside the GIL is not counted as Python code running."""
    try:
        pyspy = check_pyspy("py-spy")
    except SamplerUnavailable as e:
        pytest.skip(reason=f"py-spy is not installed: {e}")
    if os.geteuid() != 0:
        pytest.skip(reason="py-spy needs root (ptrace) to read another process")
    (tmp_path / "gil_app.py").write_text(GIL_APP)
    p = subprocess.Popen([sys.executable, str(tmp_path / "gil_app.py")])
    try:
        time.sleep(1.0)
        share = {}
        for gil in (False, True):
            s = PySpySampler(lambda r: None, pyspy=pyspy, workdir=str(tmp_path), gil=gil)
            res = s.run_once(p.pid, 3, rate=50)
            assert res is not None and res.total >= 20, res
            hashing = sum(c for k, c in res.stacks.items() if "hashing_without_gil" in k[-1].name)
            share[gil] = hashing / res.total
    finally:
        p.kill()
        p.wait()
    # without --gil py-spy counts the hashing thread as busy (it is on a CPU); with it, almost never
    assert share[False] > 0.25 and share[True] < 0.1, share
