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


def test_parse_raw_keeps_lines_as_locations() -> None:
    from stacks.model import Kind

    text = ("<module> (hot.py:13);j (hot.py:7);JSONEncoder.encode (json/encoder.py:200) 43\n"
            "<module> (hot.py:13);j (hot.py:6) 1\n<module> (hot.py:13);j (hot.py:7) 2\nf (no line.py) 1\n")
    mod, j7 = Frame("<module> (hot.py)", Kind.USER, "hot.py", 13), Frame("j (hot.py)", Kind.USER, "hot.py", 7)
    assert parse_raw(text) == {
        (mod, j7, Frame("JSONEncoder.encode (json/encoder.py)", Kind.USER, "json/encoder.py", 200)): 43,
        (mod, Frame("j (hot.py)", Kind.USER, "hot.py", 6)): 1,
        (mod, j7): 2,
        (U("f (no line.py)"),): 1,
    }
    # by function, the names of a --nolineno run
    assert {f.function().name for s in parse_raw(text) for f in s} == {
        "<module> (hot.py)", "j (hot.py)", "JSONEncoder.encode (json/encoder.py)", "f (no line.py)"}


LINES_APP = '''
import json, time


def parse_rows(n):
    rows = []
    for i in range(n):
        rows.append(json.loads('{"a": %d, "b": [1, 2, 3]}' % i))
    return rows


def checksum(rows):
    acc = 0
    for r in rows:
        acc = (acc * 31 + r["a"] + sum(r["b"])) % 1000003
    return acc


class Shop:
    def checkout(self):
        return checksum(parse_rows(2000))


def main():
    shop = Shop()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        shop.checkout()


main()
'''


def test_real_pyspy_frames_carry_file_and_line_checked_against_the_source(tmp_path: Path) -> None:
    """py-spy's lines become frame locations: >= 95 % of the Python frames of a test app have one,
    and each of the app's is a line inside the function the frame names (read from its source)."""
    import ast

    try:
        pyspy = check_pyspy("py-spy")
    except SamplerUnavailable as e:
        pytest.skip(reason=f"py-spy is not installed: {e}")
    if os.geteuid() != 0:
        pytest.skip(reason="py-spy needs root (ptrace) to read another process")
    script = tmp_path / "lines_app.py"
    script.write_text(LINES_APP)
    spans: dict[str, list[tuple[int, int]]] = {"<module>": [(1, len(LINES_APP.splitlines()) + 1)]}
    for node in ast.walk(ast.parse(LINES_APP)):
        if isinstance(node, ast.FunctionDef):
            spans.setdefault(node.name, []).append((node.lineno, node.end_lineno or node.lineno))
    p = subprocess.Popen([sys.executable, str(script)])
    try:
        time.sleep(0.5)
        s = PySpySampler(lambda r: None, pyspy=pyspy, workdir=str(tmp_path))
        got = s.run_once(p.pid, 2, rate=100)
    finally:
        p.kill()
        p.wait()
    assert got is not None and got.total >= 50
    frames = [(f, c) for stack, c in got.stacks.items() for f in stack]
    located = sum(c for f, c in frames if f.file and f.line > 0)
    assert located >= 0.95 * sum(c for _, c in frames)
    app = [(f, c) for f, c in frames if f.file.endswith("lines_app.py")]
    assert sum(c for _, c in app) >= 0.5 * sum(c for _, c in frames)
    for f, _ in app:
        fn = f.name.rsplit(" (", 1)[0].rsplit(".", 1)[-1]  # "Shop.checkout (lines_app.py)" -> checkout
        assert any(a <= f.line <= b for a, b in spans[fn]), f"{f.name} is not at line {f.line}"
    names = {f.name.rsplit(" (", 1)[0] for f, _ in app}
    assert {"main", "Shop.checkout", "<module>"} <= names and names & {"parse_rows", "checksum"}
