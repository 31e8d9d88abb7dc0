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
(exported with ``git archive``, the work tree is not touched; its compiled
modules built there, as ``pip install`` builds them) is measured
first on the same workload, then the work tree's agent, and the ratio
current/baseline is printed: both figures come from one run and one machine
state.

With ``--busy`` (issue 25) every CPU is kept busy: one native ``gzip`` loop
per CPU plus one Python worker (20 % duty cycle, function ``burn_wVER``) per
CPython 3.8-3.13 found under ``/root/.pyenv/versions`` (or ``--pythons``),
each worker in its own pod (POD_* env). After ``--warmup`` seconds (20) the
agent's own ``/metrics`` gives the samples it took over the window, and the
report adds the cost per sample (agent, children and BPF apart, and
together), samples/s, the agent's RSS (max over 1 s polls) and the
extrapolation to a busy 16- and 64-CPU node at 99 Hz.

With ``--node-cpus N`` both agents sample at ``99 * N / CPUs`` Hz (792 Hz for N=16 on 2 CPUs): the
samples per second a busy N-CPU node takes at 99 Hz, so the agent's whole cost at that load is measured
(its fixed costs spread over N times more samples) instead of extrapolated from the 99 Hz figure.

With ``--idle`` there is no workload: the cost of an agent on a quiet node (its fixed costs, and
whatever the node's own processes and idle CPUs make it sample), as % of a core.

With ``--samplers perf,bpf`` the work tree's agent is measured once per
sampler (``--sampler``), one after the other on the same workload.

Usage: python bench/agent_overhead.py [DURATION=60] [--busy | --idle] [--warmup S] [--no-pyspy] [--baseline REV]
       [--samplers perf,bpf] [--pythons DIR,...] [--node-cpus N] [-- AGENT ARGS...]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
from _bpf import enable_bpf_stats, restore_bpf_stats
from _build import build_compiled

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
# A duty-cycle worker (20 % of a core): runs on CPython 3.8 and later.
WORKER_PY = """
import sys, time
def burn_w{v}(until):
    x = 0
    while time.perf_counter() < until:
        x += 1
    return x
def main_w{v}():
    while True:
        t = time.perf_counter()
        burn_w{v}(t + 0.2 * 0.1)
        time.sleep(max(0.0, t + 0.1 - time.perf_counter()))
main_w{v}()
"""
PYENV = Path("/root/.pyenv/versions")
BUSY_VERSIONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
HOT_PY = "def python_hot_function(n):\n    return sum(i * i for i in range(n))\nwhile True:\n" \
         "    python_hot_function(300000)\n"


NAMED: dict[str, list[int]] = {}
"""Per Python worker pod (py38 ... py313): [samples, samples with a Python frame], of the pushes the sink got
while ``COUNTING`` (the measured window)."""
COUNTING = threading.Event()
PUSHED = [0, 0]  # bytes of push bodies, samples in them, while COUNTING


def count_named(body: bytes) -> None:
    """Add one push's samples of the Python worker pods to ``NAMED`` (a frame ``f (file.py)`` is a name)."""
    import gzip

    from stacks.pprof import decode_pprof
    from stacks.push import decode_push_request

    PUSHED[0] += len(body)
    for series in decode_push_request(gzip.decompress(body)):
        pod = dict(series.labels).get("pod", "")
        for raw in series.samples:
            got = NAMED.setdefault(pod, [0, 0]) if pod.startswith("py") else None
            for stack, n in decode_pprof(raw.raw_profile).merged().as_dict().items():
                PUSHED[1] += n
                if got is not None:
                    got[0] += n
                    got[1] += n if any(f.name.endswith(".py)") for f in stack) else 0


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if COUNTING.is_set():
            try:
                count_named(body)
            except Exception as e:  # a bench figure, not the measurement: say so and go on
                print(f"push not decoded: {e}", file=sys.stderr)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a: object) -> None:
        pass


def cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def free_port() -> int:
    import socket
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def samples_taken(port: int, tries: int = 3) -> float:
    """The agent's own count of samples taken (its /metrics), NaN when unreadable (a loaded machine may
    time a scrape out: tried ``tries`` times)."""
    for _ in range(tries):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("flamewatch_agent_samples_taken_total "):
                        return float(line.split()[1])
        except OSError:
            time.sleep(1)
    return float("nan")


def measure(repo: Path, server_port: int, spool: Path, duration: float, pyspy: bool, extra: list[str],
            wp: list[psutil.Process], warmup: float = 15.0) -> dict[str, float]:
    """Run one agent from ``repo`` for ``warmup`` s start-up + ``duration`` s; CPU seconds per part."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    mport = free_port()
    agent = subprocess.Popen(
        [sys.executable, "-m", "flamewatch.cli", "agent", "--server", f"http://127.0.0.1:{server_port}",
         "--kube", "off", "--metrics-port", str(mport), "--spool-dir", str(spool), "--frequency", "99",
         "--pyspy", "true" if pyspy else "false", "--log-level", "warning", *extra],
        env=env, cwd=repo, stderr=subprocess.DEVNULL)
    ap = psutil.Process(agent.pid)
    runs: set[int] = set()
    targets: set[str] = set()
    rss = [0.0, 0.0]  # max RSS of the agent, of agent + children (bytes)
    stop = threading.Event()

    def watch() -> None:  # py-spy runs and targets, RSS (1 s polls)
        while not stop.wait(1.0):
            try:
                own = ap.memory_info().rss
                kids = 0
                for c in ap.children(recursive=True):
                    try:
                        kids += c.memory_info().rss
                        cmd = c.cmdline()
                    except psutil.Error:
                        continue
                    if cmd and os.path.basename(cmd[0]) == "py-spy" and "--pid" in cmd:
                        runs.add(c.pid)
                        targets.add(cmd[cmd.index("--pid") + 1])
                rss[0] = max(rss[0], own)
                rss[1] = max(rss[1], own + kids)
            except psutil.Error:
                pass

    threading.Thread(target=watch, daemon=True).start()
    time.sleep(warmup)  # start-up (perf symbol loading, first py-spy) is reported apart from steady state
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

    a0, w0, t0, n0 = snapshot(), tree_cpu(wp), time.monotonic(), samples_taken(mport)
    NAMED.clear()
    PUSHED[:] = [0, 0]
    COUNTING.set()
    rss[0] = rss[1] = 0.0
    runs.clear()
    targets.clear()
    time.sleep(duration)
    a1, w1, t1, n1 = snapshot(), tree_cpu(wp), time.monotonic(), samples_taken(mport)
    stop.set()
    agent.terminate()
    agent.wait(30)
    COUNTING.clear()
    parts = {k: a1.get(k, 0.0) - a0.get(k, 0.0) for k in a1}
    parts["TOTAL"] = sum(parts.values())
    parts["wall"] = t1 - t0
    parts["workload"] = w1 - w0
    parts["start-up"] = startup
    parts["warmup"] = warmup
    parts["pyspy_runs"] = len(runs)
    parts["pyspy_targets"] = len(targets)
    parts["samples"] = n1 - n0
    parts["rss_agent"] = rss[0]
    parts["rss_tree"] = rss[1]
    parts["named"] = {pod: (n, named) for pod, (n, named) in NAMED.items()}  # type: ignore[assignment]
    parts["push_bytes"], parts["push_samples"] = PUSHED
    return parts


META = ("wall", "workload", "start-up", "warmup", "pyspy_runs", "pyspy_targets", "samples", "rss_agent", "rss_tree",
        "named", "push_bytes", "push_samples")


def per_sample(r: dict[str, float]) -> dict[str, float]:
    """Microseconds of CPU per sample taken: the agent, its children, BPF, and all of it."""
    n = r["samples"]
    if not n or n != n:  # no samples, or /metrics unreadable
        return {}
    children = sum(v for k, v in r.items() if k not in META and k not in ("agent", "bpf in kernel", "TOTAL"))
    return {"agent": 1e6 * r["agent"] / n, "children": 1e6 * children / n,
            "bpf": 1e6 * r["bpf in kernel"] / n, "total": 1e6 * r["TOTAL"] / n}


def report(title: str, r: dict[str, float], frequency: int = 99, per_sample_figures: bool = True) -> None:
    wall = r["wall"]
    print(f"{title}: agent overhead at {frequency} Hz over {wall:.0f} s, {os.cpu_count()}-core machine, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"  start-up (first {r['warmup']:.0f} s, all parts): {r['start-up']:.2f} CPU s")
    for k, v in r.items():
        if k not in META:
            print(f"  {k:12s} {v:7.3f} CPU s  = {100 * v / wall:6.3f} % of one core")
    print(f"  py-spy runs seen: {r['pyspy_runs']:.0f} on {r['pyspy_targets']:.0f} processes")
    if r["workload"]:
        print(f"  workload (the ratio's baseline) used {r['workload']:.2f} CPU s = {100 * r['workload'] / wall:.1f} "
              f"% of one core; ratio agent/workload CPU {r['TOTAL'] / r['workload']:.4f}")
    print(f"  RSS max: agent {r['rss_agent'] / 2**20:.1f} MB, agent + children {r['rss_tree'] / 2**20:.1f} MB")
    if r.get("push_samples"):
        print(f"  pushed: {r['push_bytes'] / 1e3:.0f} kB gzip for {r['push_samples']:.0f} samples = "
              f"{r['push_bytes'] / r['push_samples']:.1f} bytes per sample")
    named = r.get("named") or {}
    if named:
        print("  Python workers named (samples with a Python frame / samples pushed in the window): " + ", ".join(
            f"{pod} {100 * k / n:.1f} % of {n}" for pod, (n, k) in sorted(
                named.items(), key=lambda kv: int(kv[0][2:]) if kv[0][2:].isdigit() else 0) if n))
    us = per_sample(r) if per_sample_figures else {}
    if not per_sample_figures:
        print(f"  samples taken: {r['samples']:.0f} = {r['samples'] / wall:.1f} samples/s")
    if us:
        rate = r["samples"] / wall
        print(f"  samples taken: {r['samples']:.0f} = {rate:.1f} samples/s")
        print(f"  per sample: agent {us['agent']:.1f} us, children {us['children']:.1f} us, BPF {us['bpf']:.1f} us, "
              f"total {us['total']:.1f} us")
        for cpus in (16, 64):
            print(f"  busy {cpus}-CPU node at 99 Hz: {100 * us['total'] * 99 * cpus / 1e6:.2f} % of one core"
                  " (this run's cost per sample times its samples)")
        if rate * 4 < 99 * 16:  # the agent's fixed costs (its idle share) are spread over a few samples here
            print(f"  (at {rate:.0f} samples/s the agent's fixed costs count in every sample's share, so the lines "
                  "above overstate a larger node; --node-cpus N measures at a busy N-CPU node's own rate)")
        if frequency != 99:
            cpus = round(rate / 99)
            print(f"  measured at a busy {cpus}-CPU node's sample rate ({rate:.0f} samples/s): "
                  f"{100 * r['TOTAL'] / wall:.2f} % of one core")


def busy_workload(tmp: Path, pythons: list[Path]) -> list[subprocess.Popen]:
    """One gzip loop per CPU and one 20 % Python worker per interpreter, each in its own pod."""
    data = tmp / "data.txt"
    with data.open("w") as f:  # ~8 MB of compressible text: each gzip runs for about a second
        for i in range(200000):
            f.write(f"line {i} of the busy benchmark, {i * 7919 % 10007} {'abc' * (i % 7)}\n")
    work = []
    for c in range(os.cpu_count() or 1):
        env = {**os.environ, "POD_NAMESPACE": "bench", "POD_NAME": f"gzip-{c}", "CONTAINER_NAME": "gzip"}
        work.append(subprocess.Popen(["sh", "-c", f"while :; do gzip -6 -c {data} > /dev/null; done"], env=env))
    for py in pythons:
        v = py.parent.parent.name.rsplit(".", 1)[0].replace(".", "")  # 3.11.7 -> 311
        script = tmp / f"worker_{v}.py"
        script.write_text(WORKER_PY.format(v=v))
        env = {**os.environ, "POD_NAMESPACE": "bench", "POD_NAME": f"py{v}", "CONTAINER_NAME": f"py{v}"}
        env.pop("PYTHONPATH", None)
        work.append(subprocess.Popen([str(py), str(script)], env=env))
    return work


def find_pythons(spec: str | None) -> list[Path]:
    if spec:
        return [Path(p) for p in spec.split(",")]
    out = []
    for v in BUSY_VERSIONS:
        found = sorted(PYENV.glob(f"{v}.*/bin/python{v}"))
        if found:
            out.append(found[-1])
    return out


def tree_cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            total += cpu(p) + sum(cpu(c) for c in p.children(recursive=True))
            t = p.cpu_times()
            total += t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]

    def opt(name: str) -> str | None:
        return argv[argv.index(name) + 1] if name in argv else None

    baseline, warmup_s, pythons_s = opt("--baseline"), opt("--warmup"), opt("--pythons")
    samplers_s, node_cpus_s = opt("--samplers"), opt("--node-cpus")
    values = {baseline, warmup_s, pythons_s, samplers_s, node_cpus_s}
    frequency = round(99 * int(node_cpus_s) / (os.cpu_count() or 1)) if node_cpus_s else 99
    both = ["--frequency", str(frequency)] if node_cpus_s else []
    duration = float(next((a for a in argv if not a.startswith("-") and a not in values), 60))
    pyspy = "--no-pyspy" not in argv
    busy = "--busy" in argv
    warmup = float(warmup_s) if warmup_s else (20.0 if busy else 15.0)
    if shutil.which("perf") is None or shutil.which("gcc") is None:
        print("needs perf and gcc")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="fw-bench-"))
    old_repo = None
    if baseline:
        old_repo = tmp / "baseline"
        old_repo.mkdir()
        tar = subprocess.run(["git", "-C", str(REPO), "archive", baseline], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old_repo)], input=tar, check=True)
        print(f"baseline {baseline}: built {', '.join(build_compiled(old_repo))}")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    idle = "--idle" in argv
    if idle:
        work = []
        print("idle: no workload")
    elif busy:
        pythons = find_pythons(pythons_s)
        work = busy_workload(tmp, pythons)
        print(f"busy: {os.cpu_count()} gzip loops + Python workers on {', '.join(str(p) for p in pythons)}")
    else:
        (tmp / "burn.c").write_text(BURN_C)
        subprocess.run(["gcc", "-O1", "-fno-omit-frame-pointer", "-o", str(tmp / "burn"), str(tmp / "burn.c")],
                       check=True)
        (tmp / "hot.py").write_text(HOT_PY)
        work = [subprocess.Popen([str(tmp / "burn")]), subprocess.Popen([sys.executable, str(tmp / "hot.py")])]
    wp = [psutil.Process(p.pid) for p in work]
    bpf_stats = enable_bpf_stats()
    try:
        results = []
        if old_repo is not None:
            results.append((f"baseline ({baseline})", measure(old_repo, srv.server_port, tmp / "spool0",
                                                               duration, pyspy, both, wp, warmup)))
        for i, sampler in enumerate(samplers_s.split(",") if samplers_s else [""]):
            args = [*both, *extra, "--sampler", sampler] if sampler else [*both, *extra]
            title = f"current work tree, --sampler {sampler}" if sampler else "current work tree"
            results.append((title, measure(REPO, srv.server_port, tmp / f"spool{i + 1}", duration, pyspy, args,
                                           wp, warmup)))
    finally:
        for p in work:
            p.kill()
            p.wait()
        srv.shutdown()
        restore_bpf_stats(bpf_stats)
    print(f"py-spy {'on' if pyspy else 'off'}; agent args {extra or 'defaults'}")
    for title, r in results:
        report(title, r, frequency, per_sample_figures=not idle)
    if len(results) >= 2:
        (_, b), rest = results[0], results[1:]
        for title, c in rest:
            per_work = (f"  (per workload CPU: {(c['TOTAL'] / c['workload']) / (b['TOTAL'] / b['workload']):.3f})"
                        if c["workload"] and b["workload"] else "")
            print(f"ratio {title} / {results[0][0]} total CPU: {c['TOTAL'] / b['TOTAL']:.3f}{per_work}")
        if idle:  # a quiet node's few samples: its cost is the fixed cost, not a cost per sample
            cells = " | ".join(f"{100 * r['TOTAL'] / r['wall']:.3f}" for _, r in results)
            print(f"| % of a core, idle node | {cells} |")
            return 0
        ub = per_sample(b)
        ucs = [per_sample(c) for _, c in rest]
        if ub and all(ucs):
            names = " | ".join(t for t, _ in results)
            print(f"| us per sample | {names} | ratio to the first |\n|{' --- |' * (len(results) + 2)}")
            for k in ("agent", "children", "bpf", "total"):
                ratios = ", ".join(f"{uc[k] / ub[k] if ub[k] else float('nan'):.2f}" for uc in ucs)
                print(f"| {k} | {ub[k]:.1f} | {' | '.join(f'{uc[k]:.1f}' for uc in ucs)} | {ratios} |")
            rates = " | ".join(f"{r['samples'] / r['wall']:.1f}" for _, r in results)
            rss = " | ".join(f"{r['rss_agent'] / 2**20:.1f}" for _, r in results)
            for pod in sorted({p for _, r in results for p in r.get("named", {})},
                              key=lambda p: int(p[2:]) if p[2:].isdigit() else 0):
                cells = " | ".join(f"{100 * r['named'][pod][1] / max(1, r['named'][pod][0]):.1f}"
                                   if pod in r.get("named", {}) else "-" for _, r in results)
                print(f"| {pod} named % | {cells} | |")
            print(f"| samples/s | {rates} | |")
            print(f"| agent RSS MB | {rss} | |")
            sizes = " | ".join(f"{r['push_bytes'] / max(1, r['push_samples']):.1f}" for _, r in results)
            print(f"| pushed bytes per sample (gzip) | {sizes} | |")
            for cpus in (16, 64):
                cells = " | ".join(f"{u['total'] * 99 * cpus / 1e4:.2f}" for u in [ub, *ucs])
                print(f"| busy {cpus}-CPU node, % of a core (per sample x its samples) | {cells} | |")
            if node_cpus_s:
                cells = " | ".join(f"{100 * r['TOTAL'] / r['wall']:.2f}" for _, r in results)
                print(f"| measured at {frequency} Hz ({node_cpus_s} busy CPUs' samples), % of a core | {cells} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
