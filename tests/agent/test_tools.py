"""Helper programs are found next to the interpreter before PATH, and the error names every place looked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ground.tools import ToolNotFound, find_tool, search_dirs
from profiler.samplers.base import SamplerUnavailable
from profiler.samplers.pyspy import check_pyspy
from profiler.samplers.pyunwind import check_bpftrace
from tests.support.server import running_server

REPO = Path(__file__).resolve().parents[2]


def _exe(folder: Path, name: str) -> Path:
    p = folder / name
    p.write_text("#!/bin/sh\nexit 0\n")
    p.chmod(0o755)
    return p


def test_interpreter_folder_wins_over_path(tmp_path: Path) -> None:
    venv_bin, on_path = tmp_path / "venv" / "bin", tmp_path / "usr" / "bin"
    venv_bin.mkdir(parents=True)
    on_path.mkdir(parents=True)
    _exe(on_path, "py-spy")
    assert find_tool("py-spy", executable=str(venv_bin / "python"), path=str(on_path)) == str(on_path / "py-spy")
    _exe(venv_bin, "py-spy")
    assert find_tool("py-spy", executable=str(venv_bin / "python"), path=str(on_path)) == str(venv_bin / "py-spy")


def test_error_lists_every_place_looked(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "py-spy").write_text("not executable")  # present but not executable: not a hit
    with pytest.raises(ToolNotFound) as e:
        find_tool("py-spy", executable=str(tmp_path / "venv" / "bin" / "python"), path=f"{a}{os.pathsep}{b}")
    assert e.value.looked == [str(tmp_path / "venv" / "bin"), str(a), str(b)]
    assert str(a) in str(e.value) and str(b) in str(e.value) and "venv" in str(e.value)


def test_explicit_path_is_only_checked(tmp_path: Path) -> None:
    tool = _exe(tmp_path, "perf-wrapper")
    assert find_tool(str(tool)) == str(tool)
    with pytest.raises(ToolNotFound, match="nope"):
        find_tool(str(tmp_path / "nope"))


def test_search_dirs_dedupes_and_keeps_order(tmp_path: Path) -> None:
    assert search_dirs("/v/bin/python", f"/usr/bin{os.pathsep}/v/bin{os.pathsep}{os.pathsep}/bin") == [
        "/v/bin", "/usr/bin", "/bin"]


def test_check_pyspy_names_places_and_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SamplerUnavailable, match=rf"looked in: .*{re.escape(str(tmp_path))}.*pip install py-spy"):
        check_pyspy("py-spy-not-installed-anywhere")


def test_check_bpftrace_names_places_and_fixes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SamplerUnavailable, match=r"bpftrace not found .*apt-get install bpftrace.*--pyunwind off"):
        check_bpftrace("bpftrace-not-installed-anywhere")


def test_agent_with_pyunwind_on_refuses_to_start_without_bpftrace(tmp_path: Path) -> None:
    """``--pyunwind on`` fails at check() with the fix; ``auto`` goes on with py-spy alone."""
    if os.geteuid() != 0:
        pytest.skip(reason="check() runs perf's preflight, which needs root")
    from ground.settings import resolve
    from profiler.agent import Agent
    from profiler.settings import SETTINGS

    def agent(mode: str) -> Agent:
        s = resolve(SETTINGS, {"kube": "off", "metrics_port": -1, "spool_dir": "", "pyunwind": mode,
                               "bpftrace_path": str(tmp_path / "no-bpftrace")}, environ={})
        return Agent(s, environ={})

    with pytest.raises(SamplerUnavailable, match=r"bpftrace not found .*no-bpftrace"):
        agent("on").check()
    a = agent("auto")
    a.check()
    assert a.unwind.bpftrace == ""  # no unwinder: py-spy names every Python process


HOT_PY = """
    import time
    def venv_tool_hot_function():
        x = 0
        for i in range(200000):
            x += i * i
        return x
    while True:
        venv_tool_hot_function()
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_agent_from_venv_without_its_bin_on_path(tmp_path: Path) -> None:
    """`.venv/bin/flamewatch agent` with no activated venv still runs the venv's py-spy."""
    bin_dir = str(Path(sys.executable).parent)
    if not Path(bin_dir, "py-spy").exists():
        pytest.skip(reason=f"py-spy is not installed next to {sys.executable} (run ./scripts/setup.sh)")
    if os.geteuid() != 0:
        pytest.skip(reason="py-spy needs root (or CAP_SYS_PTRACE) to attach to another process")
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if d and d != bin_dir)
    script = tmp_path / "hot.py"
    script.write_text(textwrap.dedent(HOT_PY))
    worker = subprocess.Popen([sys.executable, str(script)])
    try:
        with running_server(tmp_path) as srv:
            env = {**os.environ, "PATH": path or "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
            env.pop("VIRTUAL_ENV", None)
            log_path = tmp_path / "agent.log"
            with open(log_path, "wb") as log:
                agent = subprocess.Popen(
                    [str(Path(bin_dir, "flamewatch")), "agent", "--server", srv.url, "--perf", "false",
                     "--kube", "off", "--metrics-port", "-1", "--spool-dir", str(tmp_path / "spool"),
                     "--push-interval", "5", "--pyspy-duration", "3"],
                    cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 60
                seen = False
                while time.monotonic() < deadline and not seen:
                    assert agent.poll() is None, log_path.read_text()
                    q = "from=now-5m&until=now%2B1m&format=folded&metadata=0&query=%7B%7D"
                    status, body = srv.get(f"/api/v1/render?{q}")
                    seen = status == 200 and b"venv_tool_hot_function" in body
                    time.sleep(1)
            finally:
                agent.terminate()
                agent.wait(30)
            text = log_path.read_text()
            assert "not found" not in text, text
            assert seen, "no Python frames from the venv's py-spy in 60 s:\n" + text
            final = json.loads(re.findall(r"final stats (\{.*\})", text)[-1])
            assert final["pyspy_runs"] > 0, final
    finally:
        worker.kill()
        worker.wait()
