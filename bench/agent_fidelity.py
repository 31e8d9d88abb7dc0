"""How much of each Python worker's CPU carries its own Python function, under the real agent.

Starts N Python workers at a spread of duty cycles (default 60, 30, 15, 8, 4
and 2 % of a core; with ``--workers N`` the six are repeated and scaled so the
node keeps about the same total load), each with POD_NAMESPACE / POD_NAME /
CONTAINER_NAME in its environment so the agent labels it as its own pod. Then
runs the real agent (real perf, real py-spy) against a real ``flamewatch
serve`` for WARMUP + DURATION seconds and prints per worker:

- ``named``: the share of the worker's samples (over the measured window,
  after the warm-up) whose stack holds one of the worker's own Python
  functions, ``main_wI`` (the loop that sleeps) or ``burn_wI`` (the busy
  part): Python names, not interpreter frames, the issue's goal;
- ``in burn``: the share whose stack holds ``burn_wI``. The rest of a
  worker's CPU is truly in ``main_wI``: the bytecode around each
  ``time.sleep`` call, a few per cent of a quiet worker's CPU (each wake-up
  costs the same, whatever the duty cycle);
- the agent's CPU with its children (perf record, perf script, py-spy,
  bpftrace; live and reaped) and its BPF programs' run time in the kernel
  (``kernel.bpf_stats_enabled`` is turned on for the run), as % of one core,
  warm-up included and steady state;
- freshness: a new worker starts burning 30 % of a core after the warm-up;
  seconds until its function is in a query;
- with ``--churn R``: R new short-lived Python jobs a second (each ~3 s at
  ~30 % of a core, pod ``churn``) during the measured window, and the share
  of their samples named ``churn_job``.

With ``--baseline REV`` the agent of git revision REV (checked out with ``git
worktree add`` into a temporary directory) runs first on the same workers in
the same run, then the work tree's agent; the table shows both.

Usage: python bench/agent_fidelity.py [--workers 6] [--duration 90] [--warmup 20] [--baseline REV] [--churn R]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from _bpf import enable_bpf_stats, restore_bpf_stats  # noqa: E402
from _build import build_compiled  # noqa: E402

from profiler.samplers.pyunwind import bpf_run_seconds  # noqa: E402
from tests.support.server import running_server  # noqa: E402

DUTIES = [60, 30, 15, 8, 4, 2]
WORKER = """
import sys, time
DUTY = float(sys.argv[1]) / 100
PERIOD = 0.2  # a request every 200 ms that burns DUTY of it

def burn_w{i}(until):
    x = 0
    while time.perf_counter() < until:
        x += 1
    return x

def main_w{i}():
    while True:
        t = time.perf_counter()
        burn_w{i}(t + DUTY * PERIOD)
        time.sleep(max(0.0, t + PERIOD - time.perf_counter()))

main_w{i}()
"""


def duties_for(n: int) -> list[float]:
    """The six duty cycles repeated for n workers, scaled to keep the node's total load (~1.2 cores)."""
    scale = min(1.0, len(DUTIES) / n)
    return [DUTIES[i % len(DUTIES)] * scale for i in range(n)]


def start_worker(d: Path, i: int | str, duty: float) -> subprocess.Popen:
    path = d / f"worker_{i}.py"
    path.write_text(WORKER.format(i=i))
    env = {**os.environ, "POD_NAMESPACE": "bench", "POD_NAME": f"worker-{i}", "CONTAINER_NAME": f"worker-{i}"}
    return subprocess.Popen([sys.executable, str(path), str(duty)], env=env)


def render(url: str, query: str, t0: float, t1: float) -> str:
    q = urllib.parse.urlencode({"query": query, "from": int(t0), "until": int(t1) + 1, "format": "folded",
                                "metadata": "0"})
    with urllib.request.urlopen(f"{url}/api/v1/render?{q}", timeout=30) as r:
        return r.read().decode()


def named_share(folded: str, i: int | str) -> tuple[float, float, int]:
    """(share of samples whose stack holds one of worker ``i``'s functions, share holding ``burn_wI``,
    total samples) of a folded text."""
    total = named = burn = 0
    unnamed: list[tuple[int, str]] = []
    fn = f"burn_w{i}"
    for line in folded.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        if f"{fn} (" in stack:
            burn += int(n)
        if f"{fn} (" in stack or f"main_w{i} (" in stack:
            named += int(n)
        else:
            unnamed.append((int(n), stack))
    if os.environ.get("FIDELITY_SHOW_UNNAMED"):  # what the unnamed samples are (for the design notes)
        for n, stack in sorted(unnamed, reverse=True)[:4]:
            print(f"  unnamed {fn}: {n} {stack[-300:]}", file=sys.stderr)
    return (named / total if total else 0.0), (burn / total if total else 0.0), total


def churn_named(folded: str) -> tuple[float, int]:
    """(share of the churn jobs' samples whose stack holds ``churn_job``, total samples)."""
    total = named = 0
    for line in folded.splitlines():
        stack, _, n = line.rpartition(" ")
        if n.isdigit():
            total += int(n)
            named += int(n) if "churn_job (" in stack else 0
    return (named / total if total else 0.0), total


class TreeCpu:
    """CPU seconds of the agent, its children by tool (reaped ones as py-spy: bpftrace only exits at
    restarts, counted by :meth:`poll` while alive) and its BPF programs' run time in the kernel."""

    def __init__(self, p: psutil.Process) -> None:
        self.p = p
        self.bpf: dict[int, float] = {}  # bpftrace pid -> BPF seconds last seen
        self.bpftrace: dict[int, float] = {}  # bpftrace pid -> CPU seconds last seen

    def poll(self) -> None:
        for c in self.p.children(recursive=True):
            try:
                if c.name().startswith("bpftrace"):
                    ct = c.cpu_times()
                    self.bpftrace[c.pid] = ct.user + ct.system
                    self.bpf[c.pid] = max(self.bpf.get(c.pid, 0.0), bpf_run_seconds(c.pid) or 0.0)
            except psutil.Error:
                pass

    def parts(self) -> dict[str, float]:
        self.poll()
        t = self.p.cpu_times()
        bpftrace = sum(self.bpftrace.values())
        live = {c.pid for c in self.p.children(recursive=True)}
        reaped_bpftrace = sum(v for k, v in self.bpftrace.items() if k not in live)
        out = {"agent": t.user + t.system, "perf": 0.0,
               "py-spy": t.children_user + t.children_system - reaped_bpftrace,
               "bpftrace": bpftrace, "bpf in kernel": sum(self.bpf.values())}
        for c in self.p.children(recursive=True):
            try:
                if c.name().startswith("bpftrace"):
                    continue
                ct = c.cpu_times()
                key = "perf" if c.name().startswith("perf") else "py-spy"
                out[key] += ct.user + ct.system
            except psutil.Error:
                pass
        return out


CHURN_JOB = """
import time
def churn_job():
    end = time.time() + 3
    while time.time() < end:
        t = time.perf_counter()
        while time.perf_counter() < t + 0.03:
            pass
        time.sleep(0.07)
churn_job()
"""


class Churn:
    """Short-lived Python jobs, ``rate`` new ones a second, each ~3 s at ~30 % of a core, in pod ``churn``:
    cron jobs and health checks, the processes a sampler meets too late."""

    def __init__(self, workdir: Path, rate: float) -> None:
        self.rate, self.path = rate, workdir / "churn_job.py"
        self.path.write_text(CHURN_JOB)
        self.env = {**os.environ, "POD_NAMESPACE": "bench", "POD_NAME": "churn", "CONTAINER_NAME": "churn"}
        self.jobs: list[subprocess.Popen] = []
        self.next = time.monotonic()
        self.started = 0

    def tick(self) -> None:
        if self.rate <= 0:
            return
        while time.monotonic() >= self.next:
            self.jobs.append(subprocess.Popen([sys.executable, str(self.path)], env=self.env))
            self.started += 1
            self.next += 1.0 / self.rate
        self.jobs = [j for j in self.jobs if j.poll() is None]

    def stop(self) -> None:
        for j in self.jobs:
            j.kill()
            j.wait()


def run_agent(repo: Path, workdir: Path, n: int, duties: list[float], warmup: float, duration: float,
              churn_rate: float = 0.0) -> dict:
    """One agent from ``repo`` on the running workers; its figures."""
    (workdir / "srv").mkdir(parents=True, exist_ok=True)
    with running_server(workdir / "srv") as srv:
        # py-spy is installed next to this interpreter (pip install py-spy)
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        env = {**os.environ, "PYTHONPATH": str(repo), "PATH": path}
        agent = subprocess.Popen(
            [sys.executable, "-m", "flamewatch.cli", "agent", "--server", srv.url, "--kube", "off",
             "--metrics-port", "-1", "--spool-dir", str(workdir / "spool"),
             # FIDELITY_AGENT_LOG=debug shows each py-spy run (for the design notes)
             "--log-level", os.environ.get("FIDELITY_AGENT_LOG", "warning")],
            cwd=repo, env=env)
        tree = TreeCpu(psutil.Process(agent.pid))
        t_start = time.time()
        for _ in range(int(warmup * 2)):
            time.sleep(0.5)
            tree.poll()
        if agent.poll() is not None:
            raise SystemExit(f"the agent of {repo} exited with status {agent.returncode}")
        p_warm = tree.parts()
        c_warm, t_warm = sum(p_warm.values()), time.time()
        late = start_worker(workdir, "late", 30)  # freshness: a Python process starts burning CPU now
        t_late, fresh = time.time(), None
        churn = Churn(workdir, churn_rate)
        try:
            while time.time() < t_warm + duration:
                if fresh is None and "burn_wlate (" in render(srv.url, '{pod="worker-late"}', t_late - 20,
                                                              time.time() + 20):
                    fresh = time.time() - t_late
                for _ in range(5):
                    time.sleep(0.1)
                    churn.tick()
                tree.poll()
            p_end = tree.parts()
            c_end, t_end = sum(p_end.values()), time.time()
        finally:
            churn.stop()
            late.kill()
            late.wait()
            agent.terminate()
            agent.wait(60)
        time.sleep(1)
        rows = []
        for i in range(n):
            share, burn, total = named_share(render(srv.url, f'{{pod="worker-{i}"}}', t_warm, t_end), i)
            rows.append((i, duties[i], total, share, burn))
        if churn_rate > 0:  # the jobs' own function; they have no other
            c_share, c_total = churn_named(render(srv.url, '{pod="churn"}', t_warm, t_end + 5))
    return {"churn": (churn.started, c_total, c_share) if churn_rate > 0 else None, "rows": rows,
            "cpu_all": 100 * c_end / (t_end - t_start),
            "cpu_steady": 100 * (c_end - c_warm) / (t_end - t_warm), "fresh": fresh,
            "parts": {k: 100 * (p_end[k] - p_warm[k]) / (t_end - t_warm) for k in p_end}}


def checkout(rev: str, into: Path) -> Path:
    """The agent of revision ``rev`` in a temporary git worktree (the work tree is not touched)."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(into), rev], check=True,
                   capture_output=True)
    print(f"baseline {rev}: built {', '.join(build_compiled(into))}")  # as pip install builds them
    return into


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--duration", type=float, default=90.0, help="measured seconds after the warm-up")
    ap.add_argument("--warmup", type=float, default=20.0)
    ap.add_argument("--baseline", default="", help="git revision whose agent runs first, in the same run")
    ap.add_argument("--churn", type=float, default=0.0,
                    help="new short-lived Python jobs per second during the measured window (pod churn)")
    a = ap.parse_args()
    duties = duties_for(a.workers)
    results: dict[str, dict] = {}
    bpf_stats = enable_bpf_stats()
    try:
        with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
            run_all(tmp, a, duties, results)
    finally:
        restore_bpf_stats(bpf_stats)
    report(results, a)
    return 0


def run_all(tmp: str, a: argparse.Namespace, duties: list[float], results: dict[str, dict]) -> None:
    """Start the workers, run the baseline's agent (if any) and this tree's on them."""
    d = Path(tmp)
    workers = [start_worker(d, i, duty) for i, duty in enumerate(duties)]
    if os.environ.get("FIDELITY_AGENT_LOG"):
        print("worker pids: " + " ".join(f"w{i}={w.pid}" for i, w in enumerate(workers)), file=sys.stderr)
    try:
        time.sleep(2)
        if a.baseline:
            base = checkout(a.baseline, d / "baseline")
            try:
                (d / "b").mkdir()
                results[f"baseline {a.baseline}"] = run_agent(base, d / "b", a.workers, duties, a.warmup,
                                                              a.duration, a.churn)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                               capture_output=True)
        (d / "c").mkdir()
        results["now"] = run_agent(REPO, d / "c", a.workers, duties, a.warmup, a.duration, a.churn)
    finally:
        for w in workers:
            w.kill()
            w.wait()


def report(results: dict[str, dict], a: argparse.Namespace) -> None:
    names = list(results)
    print(f"{a.workers} workers, warm-up {a.warmup:.0f} s, measured {a.duration:.0f} s, load "
          f"{os.getloadavg()[0]:.1f}")
    print("| worker | duty % | " + " | ".join(f"{n}: samples | {n}: named % | {n}: in burn %" for n in names)
          + " |")
    print("| --- | --- | " + " | ".join("--- | --- | ---" for _ in names) + " |")
    for j, (i, duty, *_r) in enumerate(results[names[0]]["rows"]):
        cells = " | ".join(f"{r[2]} | {100 * r[3]:.1f} | {100 * r[4]:.1f}"
                           for r in (results[n]["rows"][j] for n in names))
        print(f"| w{i} | {duty:.1f} | {cells} |")
    for label, col, agg in (("min named %", 3, "min"), ("all samples named %", 3, "all"),
                            ("min in burn %", 4, "min"), ("all samples in burn %", 4, "all")):
        vals = []
        for n in names:
            rows = results[n]["rows"]
            if agg == "min":
                vals.append(f"{100 * min(r[col] for r in rows):.1f}")
            else:
                tot = sum(r[2] for r in rows)
                vals.append(f"{100 * sum(r[2] * r[col] for r in rows) / max(tot, 1):.1f}")
        cells = " | ".join((f" | {v} | " if col == 3 else f" |  | {v}") for v in vals)
        print(f"| {label} | | {cells} |")
    for n in names:
        r = results[n]
        fresh = f"{r['fresh']:.1f} s" if r["fresh"] is not None else "not within the run"
        print(f"{n}: agent + children {r['cpu_all']:.2f} % of a core (warm-up included), "
              f"{r['cpu_steady']:.2f} % steady (" + ", ".join(f"{k} {v:.2f}" for k, v in r["parts"].items())
              + f"); Python names of a new busy worker after {fresh}")
    for n in names:
        if results[n].get("churn"):
            started, total, share = results[n]["churn"]
            print(f"{n}: churn: {started} short-lived Python jobs, {total} samples, {100 * share:.1f} % named "
                  "(churn_job in the stack)")
    if len(names) == 2:
        b, c = (results[n] for n in names)
        print(f"ratio now/baseline, agent+children steady CPU: {c['cpu_steady'] / max(b['cpu_steady'], 1e-9):.2f}")


if __name__ == "__main__":
    sys.exit(main())
