"""What lines cost the in-kernel CPython unwinder: this revision against an older one, same workers, same run.

Starts ``--workers`` Python processes (a JSON parse/checksum loop at ``--duty`` % of a core each) and
runs the unwinder of each revision on them in turn (ABAB, ``--seconds`` each), with the kernel's BPF
run-time counting on. Per run: samples, the BPF programs' run time per sample, bpftrace's own CPU
(printing its maps), the distinct stacks per report and the agent's naming time (reading code objects
through /proc/PID/mem and decoding line tables). Needs root and bpftrace.

    python bench/pyunwind_lines.py --baseline 40fdb0b --workers 4 --seconds 20
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKER = '''
import json, sys, time
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
def main(duty):
    while True:
        t = time.perf_counter()
        while time.perf_counter() < t + duty * 0.1:
            checksum(parse_rows(200))
        time.sleep(max(0.0, t + 0.1 - time.perf_counter()))
main(float(sys.argv[1]) / 100)
'''


def load(rev: str | None) -> ModuleType:
    """profiler/samplers/pyunwind.py of ``rev`` (None: this tree) as a module of its own."""
    path = ROOT / "profiler/samplers/pyunwind.py"
    if rev is not None:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:profiler/samplers/pyunwind.py"],
                             check=True, capture_output=True, text=True).stdout
        path = Path(tempfile.mkdtemp()) / f"pyunwind_{rev}.py"
        path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"pyunwind_{rev or 'head'}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(mod: ModuleType, pids: list[int], seconds: float) -> dict[str, float]:
    stacks_seen: list[int] = []
    naming = [0.0]
    u = mod.PyUnwindSampler(lambda pid, s: None, interval=2)
    u.stats_counted = True
    inner = u._name

    def timed(report):  # the agent's side of a report: code objects read and named, lines decoded
        t = time.perf_counter()
        out = inner(report)
        naming[0] += time.perf_counter() - t
        stacks_seen.append(sum(len(s) for s in report.values()))
        return out
    u._name = timed
    finder = mod.RuntimeFinder()
    u.set_targets({p: finder.find(p) for p in pids})
    time.sleep(1.0)
    (bt,) = u.child_pids()
    cpu0, bpf0, n0 = cpu_seconds(bt), u.bpf_seconds() or 0.0, u.samples
    time.sleep(seconds)
    cpu1, bpf1, n1 = cpu_seconds(bt), u.bpf_seconds() or 0.0, u.samples
    u.stop()
    n = max(1, n1 - n0)
    return {"samples": n, "bpf_us_per_sample": (bpf1 - bpf0) / n * 1e6,
            "bpftrace_cpu_pct": (cpu1 - cpu0) / seconds * 100, "stacks_per_report": sum(stacks_seen[1:]) /
            max(1, len(stacks_seen) - 1), "naming_ms_per_report": naming[0] / max(1, len(stacks_seen)) * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="40fdb0b", help="revision without lines")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--duty", type=float, default=20.0, help="per cent of a core per worker")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    from profiler.samplers.pyunwind import enable_bpf_stats

    fd = enable_bpf_stats()
    if fd is None:
        print("cannot turn on BPF run-time counting (needs root)", file=sys.stderr)
        return 2
    mods = {"baseline": load(a.baseline), "lines": load(None)}
    script = Path(tempfile.mkdtemp()) / "lines_worker.py"
    script.write_text(WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), str(a.duty)], stdout=subprocess.DEVNULL)
             for _ in range(a.workers)]
    results: dict[str, list[dict[str, float]]] = {k: [] for k in mods}
    try:
        time.sleep(1.0)
        for _ in range(a.rounds):
            for name, mod in mods.items():
                results[name].append(run(mod, [p.pid for p in procs], a.seconds))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        os.close(fd)
    keys = list(results["lines"][0])
    print(f"{'':22}" + "".join(f"{k:>22}" for k in keys))
    avg = {}
    for name, rs in results.items():
        avg[name] = {k: sum(r[k] for r in rs) / len(rs) for k in keys}
        print(f"{name:22}" + "".join(f"{avg[name][k]:22.3f}" for k in keys))
    print(f"{'ratio lines/baseline':22}" + "".join(
        f"{avg['lines'][k] / avg['baseline'][k] if avg['baseline'][k] else float('nan'):22.2f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
