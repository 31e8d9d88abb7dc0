"""bench/storage.py --real on a tiny real py-spy recording: every recorded sample reaches the store
both ways, and lines kept store more distinct stacks than the same samples by function."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from profiler.samplers.base import SamplerUnavailable
from profiler.samplers.pyspy import check_pyspy, parse_raw, record_argv

ROOT = Path(__file__).resolve().parents[2]

# one function, two call sites and two busy lines: by line it is more stacks than by function
APP = """
def leaf(n):
    x = 0
    for i in range(n):
        x += i
    y = 0
    for i in range(n):
        y ^= i
    return x + y
def caller():
    while True:
        leaf(20000)
        leaf(40000)
caller()
"""


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_storage", ROOT / "bench" / "storage.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_storage"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_real_section_stores_a_py_spy_recording_by_line_and_by_function(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    try:
        pyspy = check_pyspy("py-spy")
    except SamplerUnavailable as e:
        pytest.skip(reason=f"py-spy is not installed: {e}")
    if os.geteuid() != 0:
        pytest.skip(reason="py-spy needs root (ptrace) to read another process")
    bench = _bench()
    (tmp_path / "app.py").write_text(APP)
    p = subprocess.Popen([sys.executable, str(tmp_path / "app.py")])
    try:
        time.sleep(0.5)
        manifest = []
        for k in range(2):  # two runs, two windows apart
            out = tmp_path / f"app-{k}.txt"
            subprocess.run(record_argv(pyspy, p.pid, 100, 2, str(out), gil=True), check=True,
                           capture_output=True, timeout=30)
            manifest.append({"series": "app", "start": 30.0 * k, "file": out.name})
    finally:
        p.kill()
        p.wait()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    runs = [("app", float(m["start"]), parse_raw((tmp_path / m["file"]).read_text())) for m in manifest]
    recorded = sum(sum(s.values()) for _, _, s in runs)
    assert recorded >= 50, runs  # 4 s at 100 Hz of a busy process

    by_line = asyncio.run(bench.store_real(runs, True))
    by_function = asyncio.run(bench.store_real(runs, False))
    assert by_line[0] == by_function[0] == recorded  # every sample reached the store both ways
    assert by_line[2] > by_function[2] >= 1  # distinct stacks: lines split leaf's two loops and call sites
    assert by_line[1] > 0 and by_function[1] > 0

    bench.real(tmp_path, 0)
    printed = capsys.readouterr().out
    assert "100.0% of sampled frames have file:line" in printed
    assert f"{recorded:,} samples, {by_line[2]:,} distinct stacks" in printed
    assert "lines kept / by function:" in printed
