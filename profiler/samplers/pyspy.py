"""Python frames for busy Python processes, from ``py-spy record``.

py-spy writes its output only when it exits, so each profiled process gets
back-to-back runs of ``py-spy record --duration D --format raw --nolineno
--nonblocking``: the first run lasts one push interval (Python names appear
quickly), the following ones ``steady_duration`` (default 60 s), because each
run pays py-spy's start-up (~0.07 CPU s, measured) and at a low rate that
start-up is most of the cost. Each finished run yields a folded
profile of that process's Python stacks; the agent uses the newest one to
name the interpreter samples perf took of the same process (see
:mod:`profiler.combine`). ``--nonblocking`` keeps py-spy from pausing the
target. Which processes are profiled is decided by the agent (busy ones).

A run that fails (process gone, not Python) backs off that pid; a process
that exits simply ends its runs. Nothing here raises into the agent.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from profiler.samplers.base import Backoff, Runner, SamplerUnavailable, default_runner
from profiler.tools import ToolNotFound, find_tool
from stacks.model import Frame, Kind, Stack

log = logging.getLogger("flamewatch.agent.pyspy")

MISSING_HELP = "install it with `pip install py-spy`, set --pyspy-path, or run without it (--pyspy false)"


@dataclass(frozen=True)
class PyStacks:
    """One finished py-spy run for one process."""

    pid: int
    stacks: dict[Stack, int]
    started: float
    ended: float

    @property
    def total(self) -> int:
        return sum(self.stacks.values())


def record_argv(pyspy: str, pid: int, rate: int, duration: int, out: str) -> list[str]:
    return [pyspy, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(duration),
            "--format", "raw", "--nolineno", "--nonblocking", "--output", out]


def parse_raw(text: str) -> dict[Stack, int]:
    """py-spy ``--format raw`` (folded: ``a (f.py);b (f.py) 12``) -> stacks, root first.

    Malformed lines are skipped: this is a tool's output, not user input.
    """
    out: dict[Stack, int] = {}
    cache: dict[str, Frame] = {}
    for line in text.splitlines():
        stack_text, sep, count_text = line.rpartition(" ")
        if not sep or not count_text.isdigit() or not stack_text:
            continue
        frames = []
        for part in stack_text.split(";"):
            f = cache.get(part)
            if f is None:
                f = cache[part] = Frame(part, Kind.USER)
            frames.append(f)
        key = tuple(frames)
        out[key] = out.get(key, 0) + int(count_text)
    return out


def check_pyspy(pyspy: str) -> str:
    """The resolved py-spy path, or :class:`SamplerUnavailable` saying how to get it."""
    try:
        return find_tool(pyspy)
    except ToolNotFound as e:
        raise SamplerUnavailable(f"py-spy not found ({e}): {MISSING_HELP}") from None


class PySpySampler:
    """Keeps one back-to-back py-spy loop per selected pid; results go to ``sink``."""

    name = "pyspy"

    def __init__(
        self,
        sink: Callable[[PyStacks], None],
        *,
        pyspy: str = "py-spy",
        rate: int = 20,
        duration: float = 10.0,
        steady_duration: float | None = None,
        runner: Runner = default_runner,
        clock: Callable[[], float] = time.monotonic,
        workdir: str | None = None,
    ) -> None:
        self.sink = sink
        self.pyspy = pyspy
        self.rate = rate
        self.duration = max(1, round(duration))
        self.steady_duration = max(1, round(steady_duration)) if steady_duration else self.duration
        self.runner = runner
        self.clock = clock
        self.workdir = workdir or tempfile.mkdtemp(prefix="flamewatch-pyspy-")
        self.runs = 0
        self.failures = 0
        self.samples = 0
        self._workers: dict[int, _Worker] = {}
        self._lock = threading.Lock()

    def select(self, pids: Iterable[int]) -> None:
        """Profile exactly these pids from now on (start new loops, stop the others)."""
        want = set(pids)
        with self._lock:
            for pid in list(self._workers):
                w = self._workers[pid]
                if pid not in want or not w.thread.is_alive():
                    w.stop.set()
                    if not w.thread.is_alive():
                        del self._workers[pid]
            for pid in want:
                old = self._workers.get(pid)
                if old is not None and old.thread.is_alive():
                    old.stop.clear()  # re-selected before its last run ended: keep it going
                    continue
                if pid not in self._workers or not self._workers[pid].thread.is_alive():
                    w = _Worker(self, pid)
                    self._workers[pid] = w
                    w.thread.start()

    def active(self) -> list[int]:
        with self._lock:
            return [p for p, w in self._workers.items() if w.thread.is_alive() and not w.stop.is_set()]

    def child_pids(self) -> list[int]:
        with self._lock:
            procs = [w.proc for w in self._workers.values() if w.proc is not None]
        return [p.pid for p in procs if p.poll() is None]

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for w in workers:
            w.stop.set()
            w.interrupt()
        for w in workers:
            w.thread.join(timeout)

    def run_once(self, pid: int, duration: int | None = None) -> PyStacks | None:
        """One py-spy run over ``pid`` (``duration`` s, default the first-run length); None when it failed."""
        out = os.path.join(self.workdir, f"{pid}.txt")
        started = self.clock()
        try:
            proc = self.runner(record_argv(self.pyspy, pid, self.rate, duration or self.duration, out),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            self.failures += 1
            log.warning("cannot start py-spy for pid %d: %s (%s)", pid, e, MISSING_HELP)
            return None
        w = self._workers.get(pid)
        if w is not None:
            w.proc = proc
        try:
            err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
            rc = proc.wait()
        finally:
            if w is not None:
                w.proc = None
        self.runs += 1
        try:
            with open(out, encoding="utf-8", errors="replace") as f:
                text = f.read()
            os.unlink(out)
        except OSError:
            text = ""
        stacks = parse_raw(text)
        if rc != 0 and not stacks:
            self.failures += 1
            last = err.strip().splitlines()[-1:] or [""]
            log.info("py-spy on pid %d ended with status %s: %s", pid, rc, last[0])
            return None
        res = PyStacks(pid, stacks, started, self.clock())
        self.samples += res.total
        return res


class _Worker:
    def __init__(self, owner: PySpySampler, pid: int) -> None:
        self.owner = owner
        self.pid = pid
        self.stop = threading.Event()
        self.proc = None
        self.backoff = Backoff(2.0, 60.0)
        self.thread = threading.Thread(target=self.loop, name=f"pyspy-{pid}", daemon=True)

    def interrupt(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                p.send_signal(2)  # py-spy writes what it has on SIGINT
            except OSError:
                pass

    def loop(self) -> None:
        good = 0
        while not self.stop.is_set():
            # the first good run is short so Python names show up within an interval; later ones are long
            duration = self.owner.duration if good == 0 else self.owner.steady_duration
            try:
                res = self.owner.run_once(self.pid, duration)
            except Exception as e:  # never let one process take the agent down
                log.warning("py-spy loop for pid %d: %s", self.pid, e)
                res = None
            if res is not None:
                good += 1
                self.backoff.reset()
                if res.stacks:
                    self.owner.sink(res)
                continue
            if not os.path.exists(f"/proc/{self.pid}"):
                return  # the process is gone: nothing to restart
            self.stop.wait(self.backoff.next())
