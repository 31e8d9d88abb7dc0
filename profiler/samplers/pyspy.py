"""Python frames from ``py-spy record``, one bounded run at a time.

py-spy writes its output only when it exits, so the agent asks for runs
(``py-spy record --pid P --rate R --duration D --format raw --nonblocking``)
and gets each finished run's folded stacks through ``sink``. Each frame keeps
the line py-spy reports (the line running in that frame) as its location; its
name stays ``function (file)``, as with ``--nolineno``.
Which process is sampled, for how long and at what rate is the agent's
scheduler's decision (:mod:`profiler.pyschedule`): measured here, one py-spy
sample costs ~0.09 ms of CPU with ``--gil --nonblocking`` (0.14 ms without
``--gil``) whether the thread is busy or idle, and a start ~0.013 s, so the
cost is set by samples taken, not by runs.
``--nonblocking`` keeps py-spy from pausing the target. With ``idle=True``
the run also keeps idle threads (``--idle``): a wall-clock profile. With
``gil=True`` CPU runs keep only the thread holding the GIL (``--gil``).

A run that fails (process gone, not Python) is counted and reported as None;
nothing here raises into the agent.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from profiler.samplers.base import Proc, Runner, default_runner, require_tool
from stacks.model import Frame, Kind, Stack

log = logging.getLogger(__name__)

MISSING_HELP = "install it with `pip install py-spy`, set --pyspy-path, or run without it (--pyspy false)"


@dataclass(frozen=True)
class PyStacks:
    """One finished py-spy run for one process (``stacks`` empty when it saw no busy thread)."""

    pid: int
    stacks: dict[Stack, int]
    started: float
    ended: float
    rate: int = 10
    idle: bool = False
    ok: bool = True

    @property
    def total(self) -> int:
        return sum(self.stacks.values())


def record_argv(pyspy: str, pid: int, rate: int, duration: int, out: str, idle: bool = False,
                gil: bool = False) -> list[str]:
    """py-spy's command line; ``idle`` (wall clock) wins over ``gil`` (only the GIL holder's stack)."""
    argv = [pyspy, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(duration),
            "--format", "raw", "--nonblocking", "--output", out]
    if idle:
        argv.append("--idle")
    elif gil:
        argv.append("--gil")
    return argv


# A py-spy frame with its line: ``function (file:line)``.
_LOCATED = re.compile(r"(.*) \((.*):(\d+)\)")


def pyspy_frame(part: str) -> Frame:
    """One py-spy frame: ``f (a.py:12)`` is ``Frame("f (a.py)", file="a.py", line=12)``, so by
    function it reads as a ``--nolineno`` frame; ``f (a.py)`` (no line) has no location."""
    m = _LOCATED.fullmatch(part)
    if m is None:
        return Frame(part, Kind.USER)
    name, file, line = m.groups()
    return Frame(f"{name} ({file})", Kind.USER, file, int(line))


def parse_raw(text: str) -> dict[Stack, int]:
    """py-spy ``--format raw`` (folded: ``a (f.py:3);b (f.py:9) 12``) -> stacks, root first.

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
                f = cache[part] = pyspy_frame(part)
            frames.append(f)
        key = tuple(frames)
        out[key] = out.get(key, 0) + int(count_text)
    return out


def check_pyspy(pyspy: str) -> str:
    """The resolved py-spy path, or :class:`SamplerUnavailable` saying how to get it."""
    return require_tool(pyspy, "py-spy", MISSING_HELP)


class PySpySampler:
    """Starts bounded py-spy runs on request, one thread each; results (or failures) go to ``sink``."""

    name = "pyspy"

    def __init__(
        self,
        sink: Callable[[PyStacks], None],
        *,
        pyspy: str = "py-spy",
        rate: int = 10,
        duration: float = 10.0,
        runner: Runner = default_runner,
        clock: Callable[[], float] = time.monotonic,
        workdir: str | None = None,
        gil: bool = False,
    ) -> None:
        self.sink = sink
        self.gil = gil  # CPU runs keep only the GIL holder's stack (see profiler.collect)
        self.pyspy = pyspy
        self.rate = rate
        self.duration = max(1, round(duration))
        self.runner = runner
        self.clock = clock
        self.workdir = workdir or tempfile.mkdtemp(prefix="flamewatch-pyspy-")
        self.runs = 0
        self.failures = 0
        self.samples = 0
        self._seq = itertools.count()
        self._running: dict[tuple[int, bool], tuple[threading.Thread, list[Proc]]] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def start_run(self, pid: int, *, duration: int | None = None, rate: int | None = None,
                  idle: bool = False) -> bool:
        """Start one run on ``pid`` unless one of the same kind is running; True when started."""
        key = (pid, idle)
        with self._lock:
            if self._stopping or key in self._running:
                return False
            holder: list[Proc] = []
            t = threading.Thread(target=self._run, args=(pid, duration or self.duration, rate or self.rate,
                                                          idle, holder), name=f"pyspy-{pid}", daemon=True)
            self._running[key] = (t, holder)
        t.start()
        return True

    def _run(self, pid: int, duration: int, rate: int, idle: bool, holder: list[Proc]) -> None:
        try:
            res = self.run_once(pid, duration, rate=rate, idle=idle, holder=holder)
        except Exception as e:  # never let one process take the agent down
            log.warning("py-spy run on pid %d: %s", pid, e)
            res = None
        finally:
            with self._lock:
                self._running.pop((pid, idle), None)
        try:
            self.sink(res if res is not None else PyStacks(pid, {}, self.clock(), self.clock(), rate, idle, False))
        except Exception as e:
            log.warning("py-spy result for pid %d: %s", pid, e)

    def running(self, idle: bool = False) -> list[int]:
        """Pids with a run of this kind in flight."""
        with self._lock:
            return [p for (p, i) in self._running if i == idle]

    def active(self) -> list[int]:
        """Pids with any run in flight."""
        with self._lock:
            return sorted({p for (p, _i) in self._running})

    def child_pids(self) -> list[int]:
        with self._lock:
            procs = [p for _t, h in self._running.values() for p in h]
        return [p.pid for p in procs if p.poll() is None]

    def stop(self, timeout: float = 5.0) -> None:
        """Interrupt every run (py-spy writes what it has on SIGINT) and wait for them."""
        with self._lock:
            self._stopping = True
            running = list(self._running.values())
        for _t, holder in running:
            for p in holder:
                if p.poll() is None:
                    try:
                        p.send_signal(2)
                    except OSError:
                        pass
        for t, _h in running:
            t.join(timeout)

    def run_once(self, pid: int, duration: int | None = None, *, rate: int | None = None, idle: bool = False,
                 holder: list[Proc] | None = None) -> PyStacks | None:
        """One py-spy run over ``pid``; None when it failed."""
        out = os.path.join(self.workdir, f"{pid}-{next(self._seq)}.txt")
        rate = rate or self.rate
        started = self.clock()
        try:
            proc = self.runner(record_argv(self.pyspy, pid, rate, duration or self.duration, out, idle, self.gil),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            self.failures += 1
            log.warning("cannot start py-spy for pid %d: %s (%s)", pid, e, MISSING_HELP)
            return None
        if holder is not None:
            holder.append(proc)
        err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
        rc = proc.wait()
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
        res = PyStacks(pid, stacks, started, self.clock(), rate, idle)
        self.samples += res.total
        return res
