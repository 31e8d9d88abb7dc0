"""CPU cost of the agent's whole process tree at 99 Hz, as a share of one core.

Runs a workload (a busy C loop with syscalls, compiled here, plus a busy
Python process), then the real agent (`flamewatch agent`, perf + py-spy)
against a local capture server for DURATION seconds, and measures with psutil:

- agent (the Python process itself), perf record, perf script, py-spy
  (reaped runs included via the agent's children times);
- the workload's own CPU over the same period, as the baseline of the ratio.

Usage: python bench/agent_overhead.py [DURATION=60] [--no-pyspy]
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

REPO = Path(__file__).resolve().parent.parent
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


def main() -> int:
    duration = float(next((a for a in sys.argv[1:] if not a.startswith("-")), 60))
    pyspy = "--no-pyspy" not in sys.argv
    if shutil.which("perf") is None or shutil.which("gcc") is None:
        print("needs perf and gcc")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="fw-bench-"))
    (tmp / "burn.c").write_text(BURN_C)
    subprocess.run(["gcc", "-O1", "-fno-omit-frame-pointer", "-o", str(tmp / "burn"), str(tmp / "burn.c")],
                   check=True)
    (tmp / "hot.py").write_text(HOT_PY)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    work = [subprocess.Popen([str(tmp / "burn")]), subprocess.Popen([sys.executable, str(tmp / "hot.py")])]
    wp = [psutil.Process(p.pid) for p in work]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    agent = subprocess.Popen(
        [sys.executable, "-m", "flamewatch.cli", "agent", "--server", f"http://127.0.0.1:{srv.server_port}",
         "--kube", "off", "--metrics-port", "-1", "--spool-dir", str(tmp / "spool"), "--frequency", "99",
         "--pyspy", "true" if pyspy else "false", "--log-level", "warning"],
        env=env, cwd=REPO, stderr=subprocess.DEVNULL)
    ap = psutil.Process(agent.pid)
    time.sleep(15)  # start-up (perf symbol loading, first py-spy) is reported apart from steady state
    startup = cpu(ap) + sum(cpu(c) for c in ap.children(recursive=True)) + \
        ap.cpu_times().children_user + ap.cpu_times().children_system

    def snapshot() -> dict[str, float]:
        out = {"agent": cpu(ap), "perf record": 0.0, "perf script": 0.0, "py-spy": 0.0}
        for c in ap.children(recursive=True):
            try:
                cmd = c.cmdline()
                name = os.path.basename(cmd[0]) if cmd else ""
                key = {"py-spy": "py-spy", "perf": f"perf {cmd[1]}" if len(cmd) > 1 else "perf"}.get(name, "other")
                out[key] = out.get(key, 0.0) + cpu(c)
            except psutil.Error:
                pass
        t = ap.cpu_times()
        out["py-spy"] += t.children_user + t.children_system  # finished py-spy runs
        return out

    a0, w0, t0 = snapshot(), sum(cpu(p) for p in wp), time.monotonic()
    time.sleep(duration)
    a1, w1, t1 = snapshot(), sum(cpu(p) for p in wp), time.monotonic()
    agent.terminate()
    agent.wait(30)
    for p in work:
        p.kill()
        p.wait()
    srv.shutdown()
    wall = t1 - t0
    parts = {k: a1.get(k, 0.0) - a0.get(k, 0.0) for k in a1}
    total = sum(parts.values())
    workload = w1 - w0
    print(f"agent overhead at 99 Hz over {wall:.0f} s (py-spy {'on' if pyspy else 'off'}), 2-core machine")
    print(f"start-up (first 15 s, all parts): {startup:.2f} CPU s")
    for k, v in parts.items():
        print(f"  {k:12s} {v:7.3f} CPU s  = {100 * v / wall:6.3f} % of one core")
    print(f"  {'TOTAL':12s} {total:7.3f} CPU s  = {100 * total / wall:6.3f} % of one core (goal <= 1 %)")
    print(f"baseline: workload used {workload:.2f} CPU s = {100 * workload / wall:.1f} % of one core")
    print(f"ratio agent/workload CPU: {total / workload:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
