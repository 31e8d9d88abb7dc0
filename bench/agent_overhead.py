"""CPU cost of the agent's whole process tree at 99 Hz, as a share of one core.

Runs a workload (a busy C loop with syscalls, compiled here, plus a busy
Python process), then the real agent (`flamewatch agent`, perf + py-spy)
against a local capture server for DURATION seconds, and measures with psutil:

- agent (the Python process itself), perf record, perf script, py-spy
  (reaped runs included via the agent's children times), bpftrace, and the
  run time of bpftrace's BPF programs in the kernel (``kernel.bpf_stats_enabled``
  is turned on for the run; a bpftrace restart inside the window is not counted);
- the workload's own CPU over the same period, as the baseline of the ratio.

With ``--baseline REV`` (e.g. ``HEAD``) the agent of git revision REV
(exported with ``git archive``, the work tree is not touched) is measured
first on the same workload, then the work tree's agent, and the ratio
current/baseline is printed: both figures come from one run and one machine
state.

Usage: python bench/agent_overhead.py [DURATION=60] [--no-pyspy] [--baseline REV] [-- AGENT ARGS...]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
from _bpf import enable_bpf_stats, restore_bpf_stats

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from profiler.samplers.pyunwind import bpf_run_seconds  # noqa: E402

BURN_C = r"""
#include <fcntl.h>
#include <unistd.h>
volatile unsigned long sink;
__attribute__((noinline)) void burn_cpu_cycles(void) {
    for (unsigned long i = 0; i < 30000000UL; i++) sink += i * i;
}
__attribute__((noinline)) void zero_reader(void) {
    char b[4096]; int fd = open("/dev/zero", O_RDONLY);
    for (int i = 0; i < 20000; i++) if (read(fd, b, sizeof b) < 0) break;
    close(fd);
}
int main(void) { for (;;) { burn_cpu_cycles(); zero_reader(); } }
"""
HOT_PY = "def python_hot_function(n):\n    return sum(i * i for i in range(n))\nwhile True:\n" \
         "    python_hot_function(300000)\n"


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a: object) -> None:
        pass


def cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def measure(repo: Path, server_port: int, spool: Path, duration: float, pyspy: bool, extra: list[str],
            wp: list[psutil.Process]) -> dict[str, float]:
    """Run one agent from ``repo`` for 15 s start-up + ``duration`` s; CPU seconds per part."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    agent = subprocess.Popen(
        [sys.executable, "-m", "flamewatch.cli", "agent", "--server", f"http://127.0.0.1:{server_port}",
         "--kube", "off", "--metrics-port", "-1", "--spool-dir", str(spool), "--frequency", "99",
         "--pyspy", "true" if pyspy else "false", "--log-level", "warning", *extra],
        env=env, cwd=repo, stderr=subprocess.DEVNULL)
    ap = psutil.Process(agent.pid)
    runs: set[int] = set()
    targets: set[str] = set()
    stop = threading.Event()

    def watch_pyspy() -> None:  # which processes py-spy profiled, and how many runs (1 s polls)
        while not stop.wait(1.0):
            try:
                for c in ap.children():
                    cmd = c.cmdline()
                    if cmd and os.path.basename(cmd[0]) == "py-spy" and "--pid" in cmd:
                        runs.add(c.pid)
                        targets.add(cmd[cmd.index("--pid") + 1])
            except psutil.Error:
                pass

    threading.Thread(target=watch_pyspy, daemon=True).start()
    time.sleep(15)  # start-up (perf symbol loading, first py-spy) is reported apart from steady state
    startup = cpu(ap) + sum(cpu(c) for c in ap.children(recursive=True)) + \
        ap.cpu_times().children_user + ap.cpu_times().children_system

    def snapshot() -> dict[str, float]:
        out = {"agent": cpu(ap), "perf record": 0.0, "perf script": 0.0, "py-spy": 0.0, "bpftrace": 0.0,
               "bpf in kernel": 0.0}
        for c in ap.children(recursive=True):
            try:
                cmd = c.cmdline()
                name = os.path.basename(cmd[0]) if cmd else ""
                key = {"py-spy": "py-spy", "bpftrace": "bpftrace",
                       "perf": f"perf {cmd[1]}" if len(cmd) > 1 else "perf"}.get(name, "other")
                out[key] = out.get(key, 0.0) + cpu(c)
                if key == "bpftrace":  # its BPF programs run in the sampled tasks' context: no process's CPU
                    out["bpf in kernel"] += bpf_run_seconds(c.pid) or 0.0
            except psutil.Error:
                pass
        t = ap.cpu_times()
        out["py-spy"] += t.children_user + t.children_system  # finished py-spy runs
        return out

    a0, w0, t0 = snapshot(), sum(cpu(p) for p in wp), time.monotonic()
    runs.clear()
    targets.clear()
    time.sleep(duration)
    a1, w1, t1 = snapshot(), sum(cpu(p) for p in wp), time.monotonic()
    stop.set()
    agent.terminate()
    agent.wait(30)
    parts = {k: a1.get(k, 0.0) - a0.get(k, 0.0) for k in a1}
    parts["TOTAL"] = sum(parts.values())
    parts["wall"] = t1 - t0
    parts["workload"] = w1 - w0
    parts["start-up"] = startup
    parts["pyspy_runs"] = len(runs)
    parts["pyspy_targets"] = len(targets)
    return parts


def report(title: str, r: dict[str, float]) -> None:
    wall = r["wall"]
    print(f"{title}: agent overhead at 99 Hz over {wall:.0f} s, 2-core machine, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"  start-up (first 15 s, all parts): {r['start-up']:.2f} CPU s")
    for k, v in r.items():
        if k not in ("wall", "workload", "start-up", "pyspy_runs", "pyspy_targets"):
            print(f"  {k:12s} {v:7.3f} CPU s  = {100 * v / wall:6.3f} % of one core")
    print(f"  py-spy runs seen: {r['pyspy_runs']:.0f} on {r['pyspy_targets']:.0f} processes")
    print(f"  workload (the ratio's baseline) used {r['workload']:.2f} CPU s = "
          f"{100 * r['workload'] / wall:.1f} % of one core; ratio agent/workload CPU {r['TOTAL'] / r['workload']:.4f}")


def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    baseline = argv[argv.index("--baseline") + 1] if "--baseline" in argv else None
    duration = float(next((a for a in argv if not a.startswith("-") and a != baseline), 60))
    pyspy = "--no-pyspy" not in argv
    if shutil.which("perf") is None or shutil.which("gcc") is None:
        print("needs perf and gcc")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="fw-bench-"))
    (tmp / "burn.c").write_text(BURN_C)
    subprocess.run(["gcc", "-O1", "-fno-omit-frame-pointer", "-o", str(tmp / "burn"), str(tmp / "burn.c")],
                   check=True)
    (tmp / "hot.py").write_text(HOT_PY)
    old_repo = None
    if baseline:
        old_repo = tmp / "baseline"
        old_repo.mkdir()
        tar = subprocess.run(["git", "-C", str(REPO), "archive", baseline], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old_repo)], input=tar, check=True)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    work = [subprocess.Popen([str(tmp / "burn")]), subprocess.Popen([sys.executable, str(tmp / "hot.py")])]
    wp = [psutil.Process(p.pid) for p in work]
    bpf_stats = enable_bpf_stats()
    try:
        results = []
        if old_repo is not None:
            results.append((f"baseline ({baseline})", measure(old_repo, srv.server_port, tmp / "spool0",
                                                               duration, pyspy, [], wp)))
        results.append(("current work tree", measure(REPO, srv.server_port, tmp / "spool1", duration, pyspy,
                                                     extra, wp)))
    finally:
        for p in work:
            p.kill()
            p.wait()
        srv.shutdown()
        restore_bpf_stats(bpf_stats)
    print(f"py-spy {'on' if pyspy else 'off'}; agent args {extra or 'defaults'}")
    for title, r in results:
        report(title, r)
    if len(results) == 2:
        (_, b), (_, c) = results
        print(f"ratio current/baseline total CPU: {c['TOTAL'] / b['TOTAL']:.3f}  "
              f"(per workload CPU: {(c['TOTAL'] / c['workload']) / (b['TOTAL'] / b['workload']):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
