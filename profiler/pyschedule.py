"""Which Python process py-spy samples next, how long and how fast: a node-wide budget.

Every Python process perf sees gets a *shape* (py-spy's distribution of its
busy Python stacks), whatever its CPU use; the agent then names that
process's interpreter samples with it (:func:`profiler.collect.combine_python`).
A shape is kept while the process lives and refreshed, not re-measured
forever:

- **probe**: a Python process with perf samples and no shape yet gets a short
  run (``probe_seconds``) as soon as the agent's 1 s poll sees it, so its
  names are in the next push (freshness);
- **refresh**: each process accumulates *debt*, the perf samples it had since
  its last run started; the process with the most debt above
  ``refresh_samples`` (less for a shape built from few busy samples, see
  :meth:`PyScheduler.refresh_need`) is refreshed next. So refreshes follow each process's
  share of perf samples: a process at 60 % of a core is refreshed 30 times as
  often as one at 2 %.
- **confirm**: a shape from fewer than ``target_samples`` busy samples is refreshed
  after proportionally less debt, and a suspect one (a lone stack beside others,
  or fewer than 3 samples) after a fortieth: one stray stack is 1/n of a shape
  of n samples.
- **rate**: py-spy (without ``--idle``) keeps only busy samples, so a run at
  rate R over D s on a process using a share s of a core yields ~R*D*s busy
  samples. The rate is chosen for ``target_samples`` busy samples per run
  (clamped to [1, max_rate]): quiet processes get higher rates, busy ones
  lower.
- **budget**: every run costs its samples (busy or idle, ~0.09 ms of CPU each with --gil,
  measured) plus ``START_COST`` for py-spy's start; a token bucket filled at
  ``budget`` samples/s bounds the node-wide cost. Probes may run the bucket
  into debt down to ``first_name_seconds`` (1200 s) of budget: naming a quiet
  process the first time is dear (one busy sample of a process at 0.4 % of a
  core costs ~250 py-spy samples), so a burst of new processes is named now
  and paid for by later refreshes waiting.

Pure bookkeeping: no I/O, no clock of its own (``now`` is passed in).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from stacks.model import Stack

# Measured with --gil --nonblocking (docs/agent.md): one sample ~0.09 ms of CPU, busy or idle; a start
# ~0.013 s, i.e. about 140 samples' worth.
START_COST = 140
QUIET_SAMPLES = 10  # fewer perf samples than this in the probe's interval: size the probe conservatively
BUSY_SHARE = 0.05  # a lifetime CPU share this high makes a process with few perf samples yet a busy newcomer
BUSY_RESERVE = 2  # runs beyond max_running kept for first runs of busy processes (freshness)
CONFIRM_RUNS = 3  # a busy process's first run and two confirmations may go below the first-name floor
FORGET_AFTER = 300.0  # seconds without perf samples before a pid's state is dropped


@dataclass
class PyState:
    """What the scheduler knows about one Python process."""

    shape: dict[Stack, float] = field(default_factory=dict)
    shape_ended: float = -1.0
    debt: int = 0
    debt_since: float | None = None
    seen: float = 0.0
    first_seen: float | None = None  # first interval with perf samples (for the long-run share)
    samples: int = 0  # perf samples since first_seen
    runs: int = 0
    empty_runs: int = 0
    retry_at: float = 0.0

    @property
    def has_shape(self) -> bool:
        return bool(self.shape)


@dataclass(frozen=True)
class Run:
    """One py-spy run to start."""

    pid: int
    duration: int
    rate: int
    probe: bool


class PyScheduler:
    """Budgeted choice of py-spy runs over all Python processes of the node."""

    def __init__(
        self,
        is_python: Callable[[int], bool],
        *,
        frequency: int = 99,
        budget: float = 25.0,
        max_running: int = 8,
        duration: int = 10,
        probe_seconds: int = 2,
        max_rate: int = 50,
        target_samples: int = 20,
        refresh_samples: int = 2000,
        first_name_seconds: float = 1200.0,
        shape_max_age: float = 300.0,
        own_pids: frozenset[int] = frozenset(),
        interval_hint: float = 10.0,
        lifetime_share: Callable[[int], float | None] | None = None,
    ) -> None:
        self.is_python = is_python
        self.frequency = frequency
        self.budget = budget
        # 30 s of budget, and at least the dearest run (else a quiet process could never be refreshed)
        self.burst = max(budget * 30.0, max_rate * duration + START_COST)
        self.tokens = 0.0  # start-up probes borrow; an idle agent does not bank a minute of runs
        self.max_running = max_running
        self.duration = duration
        self.probe_seconds = probe_seconds
        self.max_rate = max_rate
        self.target_samples = target_samples
        self.refresh_samples = refresh_samples
        self.shape_max_age = shape_max_age
        self.first_name_seconds = first_name_seconds
        self.own = own_pids
        self.interval_hint = interval_hint  # seconds of samples one observe() call covers (the push interval)
        self.lifetime_share = lifetime_share  # pid -> CPU time / age (psutil in the agent), or None
        self.states: dict[int, PyState] = {}
        # Named by another sampler (the in-kernel unwinder): no py-spy runs, shapes come in by on_result
        self.external: set[int] = set()
        self._python: dict[int, bool] = {}
        self._last: float | None = None

    def _python_pid(self, pid: int) -> bool:
        ok = self._python.get(pid)
        if ok is None:
            if len(self._python) > 8192:
                self._python.clear()
            ok = self._python[pid] = pid > 0 and pid not in self.own and self.is_python(pid)
        return ok

    def observe(self, counts: Mapping[int, int], now: float) -> None:
        """Add one finished interval's perf samples per pid to the debts."""
        for pid, n in counts.items():
            if n <= 0 or not self._python_pid(pid):
                continue
            st = self.states.setdefault(pid, PyState())
            st.debt += n
            st.seen = now
            if st.first_seen is None:
                st.first_seen = now - self.interval_hint  # the samples came over the interval that just ended
            st.samples += n
        for pid in [p for p, st in self.states.items() if now - st.seen > FORGET_AFTER]:
            del self.states[pid]
            self.external.discard(pid)
            self._python.pop(pid, None)

    def rate_for(self, share: float, duration: int) -> int:
        """py-spy rate giving ~target_samples busy samples over ``duration`` at ``share`` of a core."""
        want = self.target_samples / max(duration * max(share, 1e-3), 1e-9)
        return max(1, min(self.max_rate, math.ceil(want)))

    def plan(self, now: float, current: Mapping[int, int], elapsed: float, running: set[int]) -> list[Run]:
        """Runs to start now. ``current``: perf samples per pid so far in this interval (``elapsed`` s)."""
        if self._last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self._last) * self.budget)
        self._last = now
        out: list[Run] = []
        slots = self.max_running - len(running)
        floor = -self.budget * self.first_name_seconds  # how far first names may run the bucket into debt
        self.expire(now, floor, running)
        # probes first: Python processes burning CPU with no shape yet (freshness)
        fresh = sorted(((n, pid) for pid, n in current.items() if n >= 2 and pid not in running
                        and pid not in self.external and self._python_pid(pid)), reverse=True)
        busy_slots = slots + BUSY_RESERVE
        for n, pid in fresh:
            st = self.states.setdefault(pid, PyState(seen=now))
            if st.has_shape or now < st.retry_at:
                continue
            # A busy process's first run is short and cheap (~2 s, <= 160 samples): it may use reserved
            # slots and go below the floor, so a node busy naming its quiet processes (10-30 s runs,
            # the bucket in debt) still names a process that starts burning CPU within seconds.
            sized = self.probe_share(pid, st, n, elapsed, now)
            if sized is None:
                continue
            share, busy = sized
            # The one retry after a first run that saw nothing busy may go below the floor too: the
            # process's samples wait in the hold for it, and the floor's bucket refills in ~100 s, longer
            # than they may wait (measured: a 0.4 % worker of 30 went unnamed for the whole 90 s).
            saves_held = st.empty_runs == 1
            if (busy_slots if busy else slots) <= 0 or (self.tokens < floor and not busy and not saves_held):
                continue
            out.append(self._take(self.probe_run(pid, share, st.empty_runs), st, now))
            slots -= 1
            busy_slots -= 1
        # refreshes: the largest debt first, within the budget
        queue = sorted(((st.debt, pid) for pid, st in self.states.items()
                        if pid not in running and pid not in self.external
                        and st.debt >= self.refresh_need(st) and now >= st.retry_at),
                       reverse=True)
        waiting = False  # a process with a full shape waits for the bucket: no other full one overtakes it
        for _debt, pid in queue:
            if slots <= 0 or any(r.pid == pid for r in out):
                continue
            st = self.states[pid]
            share = self._share(st, now)
            run = Run(pid, self.duration, self.rate_for(share, self.duration), False)
            cost = run.rate * run.duration + START_COST
            if not self.confirmed(st):
                # Still first-name work, and at the budget's pace the first names' debt takes minutes to
                # repay. A busy process's first confirmations are cheap (<= 20 py-spy samples per busy one)
                # and bounded: they may go below the floor like its first run. A suspect shape (one stray
                # stack may name 1/n of its samples wrongly) may borrow down to the floor as first names
                # do; other quiet ones down to half the floor, the other half staying for new processes.
                if share >= BUSY_SHARE and st.runs < CONFIRM_RUNS:
                    limit = -math.inf
                else:
                    limit = floor if self.suspect(st) else floor / 2
                if self.tokens - cost < limit:
                    continue
            elif waiting or self.tokens < cost:
                waiting = True
                continue
            out.append(self._take(run, st, now))
            slots -= 1
        return out

    def confirmed(self, st: PyState) -> bool:
        """A shape resting on ``target_samples`` busy py-spy samples or more (no shape counts as confirmed)."""
        return not st.shape or sum(st.shape.values()) >= self.target_samples

    def refresh_need(self, st: PyState) -> float:
        """Perf samples a process gathers before its next refresh.

        ``refresh_samples`` once its shape rests on ``target_samples`` busy py-spy samples or more;
        a fortieth of that for a :meth:`suspect` shape; proportionally fewer (down to a tenth) for
        any other thinner shape, whose error is sampling error only.
        """
        if self.confirmed(st):
            return self.refresh_samples
        if self.suspect(st):
            return self.refresh_samples / 40
        n = sum(st.shape.values())
        return self.refresh_samples * max(0.1, n / max(1, self.target_samples))

    def suspect(self, st: PyState) -> bool:
        """An unconfirmed shape from fewer than 3 busy samples, or holding a stack seen once beside others.

        One stray stack in a shape of n busy samples names 1/n of the process's samples wrongly until
        the next run, and py-spy's bias makes a lone stack likely a stray: it catches a timer-driven
        worker at the line that sleeps several times more often than perf finds it on a CPU there
        (docs/agent.md; 0.2-0.5 % of the busy samples of a 6-12 % worker, 4-8 % of a 0.4-0.8 %
        one). Measured before this rule: 6-12 % workers whose first run's 10-15 busy samples held one
        were 86-95 % named for minutes, 1.6-3 % workers with one in 3-4 samples 76-91 % over 90 s, and
        a 0.8 % worker whose first run saw one busy sample, the stray, 28 % named over 7 minutes. A
        suspect shape is confirmed after 50 perf samples (5-8 s at 6-12 % of a core, 31 s at 1.6 %)
        and may borrow down to the first-name floor. Only such shapes: confirming every unconfirmed
        shape that early cost a 30-worker node ~7,500 more py-spy samples in its first 90 s
        (1.93 % of a core steady against a 2 % goal).
        """
        if not st.shape:
            return False
        weights = st.shape.values()
        total = sum(weights)
        if total >= self.target_samples:
            return False
        return total < 3 or (len(st.shape) > 1 and min(weights) <= 1.0)

    def expire(self, now: float, floor: float, running: set[int]) -> None:
        """Drop a shape older than ``shape_max_age`` (0: never) once its new first run can be paid for.

        A quiet process gathers perf samples too slowly to earn a refresh, so after its code
        changed (a deploy, a fix) its old shape would name its new samples wrongly for as long
        as it lives. An expired shape names nothing: the process's samples wait in the hold for
        the next first run (a probe, as for a new process), which builds a fresh one. Only as many
        shapes expire as the bucket can re-probe above the first-name floor: on a node with many
        quiet processes the budget re-probes each only every several minutes, and a shape dropped
        before that would leave its samples unnamed (measured: 30 workers, 13 of 38 processes
        unnamed 60 s after their shapes reached 300 s).
        """
        if self.shape_max_age <= 0:
            return
        room = self.tokens - floor
        stale = sorted((st.shape_ended, pid) for pid, st in self.states.items()
                       if st.shape and pid not in running and pid not in self.external
                       and now - st.shape_ended > self.shape_max_age)
        for _ended, pid in stale:
            st = self.states[pid]
            probe = self.probe_run(pid, self._share(st, now))
            room -= probe.rate * probe.duration + START_COST
            if room < 0:
                return
            st.shape = {}
            st.retry_at = min(st.retry_at, now)

    def probe_share(self, pid: int, st: PyState, n: int, elapsed: float, now: float) -> tuple[float, bool] | None:
        """The share of a core a first run is sized for, from ``n`` perf samples in ``elapsed`` s, and
        whether the process counts as busy; None: not yet (a quiet process the agent has not measured).

        The probe fires on the first poll that sees >= 2 perf samples in the current interval, which
        picks a lucky burst of a quiet process: 2 samples in the first second read as 2 % of a core for
        a process at 0.4 %, and a run sized for 2 % sees nothing busy half the time (measured: 0.4 %
        workers of the 30-worker bench went unnamed). So with few samples a process is busy only as a
        newcomer whose lifetime CPU (``lifetime_share``: CPU time over age) is high; otherwise it is
        quiet, and its first run waits until the agent has a pushed interval of it (its samples wait
        in the hold meanwhile, so this costs no names), sized for the lower of that history and the
        lifetime share. After a first run that saw nothing busy, a process is quiet.
        """
        current = n / max(elapsed * self.frequency, 1.0)
        if n >= QUIET_SAMPLES:
            return current, True
        life = self.lifetime_share(pid) if self.lifetime_share is not None else None
        hist = None
        if st.first_seen is not None and now - st.first_seen >= 5.0:
            hist = st.samples / ((now - st.first_seen) * self.frequency)
        if hist is None:
            if life is not None and life >= BUSY_SHARE and st.empty_runs == 0:
                return max(current, life), True  # a newcomer burning CPU: perf has seen only its first second
            return None if self.lifetime_share is not None else (current, False)
        return (min(hist, life) if life is not None else hist), False

    def probe_run(self, pid: int, share: float, failed: int = 0) -> Run:
        """A first run: long enough at max_rate for ~3 busy samples (2..duration s), rate for the target.

        A quiet process's run is set by the first bound: at max_rate it expects ~3 busy samples.
        Measured: sizing quiet first runs for 10 busy samples instead of 3 made a 30-worker node's first
        names cost more than the first-name debt allows, so the quietest processes, probed last, waited
        for the bucket and went unnamed. A busy process's run is ``probe_seconds`` long at the rate for
        ``target_samples``: a busy sample costs it few py-spy samples (<= 20 at >= 5 % of a core), and a
        shape of 20 carries a stray stack at a twentieth of its weight, not a tenth.

        After ``failed`` first runs that saw nothing busy, the busy samples aimed for and the cap grow
        (1 + failed)-fold, at most 3x: a process that quiet needs more samples, and only such processes
        pay for them.
        """
        grow = min(3, 1 + failed)
        busy = 3 * grow  # busy samples the run should expect at max_rate
        d = max(self.probe_seconds,
                min(self.duration * grow, math.ceil(busy / (self.max_rate * max(share, 1e-3)))))
        want = self.target_samples / (d * max(share, 1e-3))
        return Run(pid, d, max(1, min(self.max_rate, math.ceil(want))), True)

    def _share(self, st: PyState, now: float) -> float:
        """The process's share of a core since its last run started (its debt over that time)."""
        if st.debt_since is None or now - st.debt_since < 1.0:
            return 0.05
        return st.debt / ((now - st.debt_since) * self.frequency)

    def _take(self, run: Run, st: PyState, now: float) -> Run:
        self.tokens -= run.rate * run.duration + START_COST
        st.retry_at = now + run.duration + 5.0  # no second run before this one reports
        st.debt = 0
        st.debt_since = now
        st.runs += 1
        return run

    def on_result(self, pid: int, stacks: Mapping[Stack, int], ok: bool, now: float) -> None:
        """Fold a finished run into the pid's shape (older runs count half each time)."""
        st = self.states.get(pid)
        if st is None:
            return
        if not ok or not stacks:
            st.empty_runs += 1
            # not Python any more, gone, or idle during the run: try again later, less often
            st.retry_at = now + min(300.0, 5.0 * 2 ** min(st.empty_runs, 6))
            if not ok:
                self._python.pop(pid, None)
            return
        st.empty_runs = 0
        st.retry_at = 0.0
        merged = {k: v * 0.5 for k, v in st.shape.items()}
        for k, v in stacks.items():
            merged[k] = merged.get(k, 0.0) + v
        total = sum(merged.values())
        st.shape = {k: v for k, v in merged.items() if v >= total * 1e-4}
        st.shape_ended = now

    def on_external(self, pid: int, stacks: Mapping[Stack, int], now: float) -> None:
        """Stacks of an :attr:`external` process from its own sampler (the process may be new to us)."""
        self.states.setdefault(pid, PyState(seen=now))
        self.on_result(pid, stacks, True, now)

    def shape(self, pid: int) -> dict[Stack, float] | None:
        st = self.states.get(pid)
        return st.shape if st is not None and st.shape else None

    def awaiting_name(self, pid: int) -> bool:
        """A Python process with no shape whose first one is still expected (worth holding its samples for).

        Not after two first runs in a row saw nothing busy: the retries then back off for minutes.
        """
        if not self._python_pid(pid):
            return False
        st = self.states.get(pid)
        return st is None or (not st.shape and st.empty_runs < 2)
