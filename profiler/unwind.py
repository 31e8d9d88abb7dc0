"""The in-kernel unwinder's supervisor: which Python processes bpftrace names, its (re)starts, when it gives up.

:class:`profiler.samplers.pyunwind.PyUnwindSampler` runs one bpftrace program on the processes it is given.
:class:`UnwindSupervisor` decides which those are (new ``python*`` processes by perf's samples and by their
``/proc`` entry, :class:`profiler.procfs.Discovery`), gives a process it cannot name to py-spy (the
scheduler's ``external`` set is what it names), restarts bpftrace when it died and gives up after the third
death in a row, drops processes that never yield a frame, and keeps each interval's unwound stacks until the
agent takes them. The agent builds one from its settings, or takes one passed in (``Agent(unwind=...)``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from profiler.collect import PidSamples
from profiler.procfs import Discovery, ProcFS
from profiler.pyschedule import PyScheduler
from profiler.samplers.base import Runner, default_runner
from profiler.samplers.pyunwind import NotSupported, PyUnwindSampler, RuntimeFinder, Target, alive
from stacks.model import Stack

log = logging.getLogger(__name__)

RESTART_AFTER = 10.0
"""Seconds a (re)started bpftrace gets before its death counts (it needs a few to load its program)."""
MAX_DEATHS = 3
"""bpftrace deaths in a row after which py-spy names every Python process."""
PRUNE_EVERY = 10.0
"""Seconds between checks that the unwound processes still live (a reused pid is a new process)."""
MISS_SECONDS = 20
"""Seconds of one core's perf samples in a process's Python threads without one unwound stack: py-spy names it."""


class UnwindSupervisor:
    """Supervises one :class:`PyUnwindSampler` for the agent (see the module's docstring).

    ``bind`` gives it the agent's py-spy scheduler and the lock guarding it; ``start`` starts bpftrace
    (``bpftrace`` is the resolved binary, "" when there is none: then it never starts); ``poll`` runs at the
    agent's 1 s poll, ``take`` and ``check`` at each push; ``on_report`` is called from bpftrace's reader
    thread.
    """

    def __init__(
        self,
        proc: ProcFS,
        discovery: Discovery,
        *,
        frequency: int = 99,
        interval: int = 2,
        max_depth: int = 96,
        restart_seconds: float = 30.0,
        bpftrace: str = "bpftrace",
        runner: Runner = default_runner,
        clock: Callable[[], float] = time.monotonic,
        finder: RuntimeFinder | None = None,
    ) -> None:
        self.proc = proc
        self.discovery = discovery
        self.frequency, self.interval, self.max_depth = frequency, interval, max_depth
        self.restart_seconds = restart_seconds
        self.bpftrace = bpftrace
        self.runner = runner
        self.clock = clock
        self.finder = finder or RuntimeFinder(proc.root)
        self.sampler: PyUnwindSampler | None = None
        self.sched: PyScheduler | None = None
        self.lock = threading.Lock()
        self.targets: dict[int, Target] = {}
        self.refused: dict[int, str] = {}  # pid -> why the unwinder cannot name it (py-spy does)
        self.misses: dict[int, int] = {}  # pid -> Python-thread perf samples since its last unwound one
        self._unwound: dict[int, dict[Stack, int]] = {}  # this interval's unwound stacks per pid
        self._changed = 0.0  # when bpftrace last (re)started
        self._pruned = 0.0
        self.deaths = 0  # bpftrace starts in a row that died
        self.gave_up = ""  # why unwinding was switched off ("" while it is on)

    def bind(self, sched: PyScheduler, lock: threading.Lock) -> None:
        """The scheduler whose ``external`` set this supervisor keeps, and the lock its readers take."""
        self.sched, self.lock = sched, lock

    @property
    def active(self) -> bool:
        """bpftrace was started and not given up or stopped."""
        return self.sampler is not None and not self.sampler.stopped

    def start(self, stats_counted: bool = False) -> bool:
        """Start the sampler (no program runs until the first process is given); whether it started."""
        if not self.bpftrace:
            return False
        self.sampler = PyUnwindSampler(
            self.on_report, bpftrace=self.bpftrace, frequency=self.frequency, interval=self.interval,
            max_depth=self.max_depth, runner=self.runner, proc_root=self.proc.root, clock=self.clock)
        self.sampler.stats_counted = stats_counted
        return True

    def stop(self) -> None:
        """Stop bpftrace; its last report comes in before this returns."""
        if self.sampler is not None:
            self.sampler.stop()

    def _sched(self) -> PyScheduler:
        if self.sched is None:
            raise RuntimeError("UnwindSupervisor used before bind(sched, lock)")
        return self.sched

    def on_report(self, pid: int, stacks: dict[Stack, int]) -> None:
        """One report of the unwinder for one process (bpftrace's reader thread calls this)."""
        sched = self._sched()
        with self.lock:
            if pid not in sched.external:  # not (or no longer) ours: py-spy names it
                return
            dest = self._unwound.setdefault(pid, {})
            for k, c in stacks.items():
                dest[k] = dest.get(k, 0) + c
            self.misses[pid] = 0
            sched.on_external(pid, stacks, self.clock())

    def take(self) -> dict[int, dict[Stack, int]]:
        """This interval's unwound stacks per process, and a new interval (call with the lock held)."""
        unwound, self._unwound = self._unwound, {}
        return unwound

    def poll(self, current: Mapping[int, int], python: set[int]) -> None:
        """Give new Python processes to the unwinder, hand those it cannot name to py-spy, restart or give up
        a dead bpftrace. ``current``: this interval's sample counts per pid; ``python``: pids seen running
        CPython's own code."""
        u = self.sampler
        if u is None or u.stopped:
            return
        sched = self._sched()
        now = self.clock()
        with self.lock:
            seen = [p for p in current if p in python or sched._python_pid(p)]
        # perf's samples reach the agent 1-2 s late: a new python* process is also found by its /proc
        # entry, so a short job is unwound from its first second
        for pid in sorted(set(seen) | set(self.discovery.new_python_pids())):
            if pid in self.targets or pid in self.refused or pid in sched.own:
                continue
            try:
                self.targets[pid] = self.finder.find(pid)
            except NotSupported as e:
                self.refused[pid] = str(e)
                if self.proc.exists(pid):  # not merely gone already
                    log.info("py-spy names %s", e)
        if self.targets and not u.running and u.targets and now - self._changed > RESTART_AFTER:
            self.deaths += 1  # bpftrace died: its processes go to py-spy after the third time
            log.warning("bpftrace stopped (%s); restart %d of %d", u.last_error or "no message", self.deaths,
                        MAX_DEATHS)
            if self.deaths >= MAX_DEATHS:
                self.give_up(u.last_error)
                return
        elif u.running and now - self._changed > RESTART_AFTER:
            self.deaths = 0
        if now - self._pruned >= PRUNE_EVERY:  # processes gone (or their pid reused) leave the program
            self._pruned = now
            self.targets = {p: t for p, t in self.targets.items() if alive(t, self.proc.root)}
            with self.lock:
                known = set(sched.states)
            for d in (self.refused, self.misses):
                for pid in [p for p in d if p not in known]:
                    del d[pid]
        changed = self.targets != u.targets or (self.targets and not u.running)
        # with the trigger a change is one libc call; without it a restart (~0.25 CPU s), so batched
        live_update = u.trigger is not None and u.running
        due = live_update or now - self._changed >= self.restart_seconds or not u.running
        if changed and due:
            with self.lock:
                sched.external = set(self.targets)
            starts = u.starts
            u.set_targets(self.targets)
            if u.starts != starts:
                self._changed = now

    def give_up(self, why: str) -> None:
        """Unwinding off for good: py-spy names every Python process from now on."""
        self.gave_up = why or "bpftrace died"
        log.warning("in-kernel Python unwinding off (%s); py-spy names every Python process", self.gave_up)
        if self.sampler is not None:
            self.sampler.stop()
        self.sampler = None
        sched = self._sched()
        with self.lock:
            sched.external = set()

    def check(self, pids: Mapping[int, PidSamples]) -> None:
        """A process the unwinder never names while perf sees its Python threads goes to py-spy (call with
        the lock held, once per push)."""
        sched = self._sched()
        for pid, ps in pids.items():
            if pid not in sched.external:
                continue
            miss = self.misses.get(pid, 0) + ps.count - sum(ps.native.values())
            self.misses[pid] = miss
            if miss > MISS_SECONDS * self.frequency:  # ~20 s of one core's samples and not one unwound
                log.info("pid %d: the in-kernel unwinder finds no Python frames; py-spy names it", pid)
                self.refused[pid] = "no frames unwound"
                self.targets.pop(pid, None)
                sched.external.discard(pid)

    # ---------------------------------------------------------------- figures for the stats line
    @property
    def processes(self) -> int:
        return len(self.sampler.targets) if self.sampler else 0

    @property
    def samples(self) -> int:
        return self.sampler.samples if self.sampler else 0

    @property
    def starts(self) -> int:
        return self.sampler.starts if self.sampler else 0

    def bpf_seconds(self) -> float | None:
        return self.sampler.bpf_seconds() if self.sampler else None
