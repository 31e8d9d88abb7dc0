"""Per-interval accumulation of samples and the perf + py-spy combination.

How the two sources combine for one Python process (the design decision):

perf samples every CPU at a fixed rate, so its count per process is the
truth about CPU time; but for CPython it only sees interpreter frames
(``_PyEval_EvalFrameDefault``...). py-spy sees Python function names but
is run in short, budgeted runs (:mod:`profiler.pyschedule`) that give each
Python process a *shape*, its distribution of busy Python stacks. For a
process that has a shape:

- perf samples with a user-space leaf (the interpreter running Python) are
  **replaced** by py-spy's stacks, their count spread over py-spy's stacks in
  proportion to py-spy's counts (largest remainder, so the total stays
  exactly perf's count);
- perf samples whose leaf is a **kernel** frame (syscalls, page faults, and
  timer / reschedule interrupts that land in running Python code) keep their
  kernel frames, and the native frames below them are replaced the same way
  by py-spy's stacks: the kernel part is what perf saw, the Python caller is
  py-spy's estimate.

The shape comes from ``py-spy --gil`` runs by default: perf's user-leaf
samples are the interpreter running Python code, which holds the GIL, so
the GIL holder's stacks are the like-for-like shape (threads queued for a
CPU or inside a GIL-free C call are left out).

Only a process's *Python threads* are renamed: threads the perf sampler saw
running CPython's own code (:meth:`Collector.mark_python`). Samples of its
other threads (an SDK's native sampler thread, a C++ pool) keep perf's
native frames, since py-spy's shape says nothing about them.

With the in-kernel unwinder (:mod:`profiler.samplers.pyunwind`, CPython
3.11-3.13) the shape of an unwound process is *this push interval's own*
unwound samples: taken at perf's rate on the same CPUs' timers, each names
the code running at that instant, so the shape differs from the truth only
by sampling noise (a stack with share p over n samples: p +- sqrt(p(1-p)/n),
the same error perf's own counts have), not by a separate sampler's timing.
An interval without unwound samples falls back to the latest shape.

So a process's total in the flamegraph is always perf's sample count (one
unit, comparable across processes), kernel time stays visible and green,
and Python time carries Python names. Shipping both as separate series
would double-count the process in every namespace/pod view.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from stacks.model import Kind, Stack
from stacks.perf import PerfSample


@dataclass
class PidSamples:
    """Samples of one process in one interval."""

    comm: str
    stacks: dict[Stack, int] = field(default_factory=dict)
    count: int = 0  # == total, kept up to date so the 1 s scheduler poll is cheap
    # The part of ``stacks`` from threads never seen running CPython (set by drain): an SDK's native
    # sampler thread, a C++ pool. py-spy's shape does not describe them, so they keep their frames.
    native: dict[Stack, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.stacks.values())


PYTHON_THREADS_KEEP = 30  # drains a pid may go without samples before its Python threads are forgotten


class Collector:
    """Thread-safe per-pid stack counts for the current interval.

    It also remembers which threads of each process have run CPython's own code
    (:meth:`mark_python`, from the perf sampler): a thread once seen in the
    interpreter is a Python thread for the process's life, so its samples that
    show no interpreter frame (a libc leaf whose caller perf could not unwind)
    are still Python time. Samples of the other threads come out of
    :meth:`drain` in :attr:`PidSamples.native`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pids: dict[int, PidSamples] = {}
        self._other: dict[int, dict[int, dict[Stack, int]]] = {}  # pid -> tid -> stacks, tids not yet Python
        self._python: dict[int, set[int]] = {}  # pid -> tids seen running the interpreter
        self._python_seen: dict[int, int] = {}  # pid -> drain number it last had samples
        self._drains = 0
        self.taken = 0

    def mark_python(self, pid: int, tid: int) -> None:
        """Thread ``tid`` of ``pid`` ran interpreter code (the sampler calls this before its samples)."""
        with self._lock:
            tids = self._python.get(pid)
            if tids is None:
                tids = self._python[pid] = set()
            tids.add(tid)

    def add(self, s: PerfSample, count: int = 1) -> None:
        """Count ``count`` identical perf samples (the sampler thread calls this)."""
        self.add_batch(((s, count, False),))

    def add_batch(self, samples: Iterable[tuple[PerfSample, int, bool]]) -> int:
        """Count a batch of distinct samples, each with its count, under one lock; one whose frames run
        CPython (the third item) first marks its thread as :meth:`mark_python` does. Returns the samples
        counted. The perf sampler hands over each 0.5 s batch so: one call, not two per distinct sample."""
        n = 0
        with self._lock:
            pids, python, other = self._pids, self._python, self._other
            for s, count, interp in samples:
                pid = s.pid if s.pid is not None else (s.tid if s.tid is not None else -1)
                tid = s.tid if s.tid is not None else pid
                tids = python.get(pid)
                if interp and s.tid is not None:
                    if tids is None:
                        tids = python[pid] = set()
                    tids.add(s.tid)
                entry = pids.get(pid)
                if entry is None:
                    entry = pids[pid] = PidSamples(s.comm)
                st = entry.stacks
                st[s.frames] = st.get(s.frames, 0) + count
                entry.count += count
                n += count
                if tids is None or tid not in tids:  # may still turn out Python later in the interval
                    per_tid = other.get(pid)
                    if per_tid is None:
                        per_tid = other[pid] = {}
                    o = per_tid.get(tid)
                    if o is None:
                        o = per_tid[tid] = {}
                    o[s.frames] = o.get(s.frames, 0) + count
            self.taken += n
        return n

    def add_stacks(self, pid: int, comm: str, stacks: Mapping[Stack, int]) -> None:
        """Count already aggregated stacks (py-spy-only or bpftrace samplers)."""
        with self._lock:
            entry = self._pids.get(pid)
            if entry is None:
                entry = self._pids[pid] = PidSamples(comm)
            for k, c in stacks.items():
                entry.stacks[k] = entry.stacks.get(k, 0) + c
                entry.count += c
                self.taken += c

    def python_pids(self) -> set[int]:
        """Processes with a thread perf saw running CPython's own code."""
        with self._lock:
            return set(self._python)

    def counts(self) -> dict[int, int]:
        """Samples per pid so far in this interval (for the py-spy scheduler's poll)."""
        with self._lock:
            return {pid: e.count for pid, e in self._pids.items()}

    def drain(self) -> dict[int, PidSamples]:
        """The interval's samples, with each Python process's native-thread part split out; starts empty again."""
        with self._lock:
            out, self._pids = self._pids, {}
            other, self._other = self._other, {}
            self._drains += 1
            for pid in self._python:  # a process gone quiet for a while (or gone) is forgotten
                if pid in out or pid not in self._python_seen:
                    self._python_seen[pid] = self._drains
            for pid in [p for p, d in self._python_seen.items() if self._drains - d > PYTHON_THREADS_KEEP]:
                del self._python_seen[pid]
                self._python.pop(pid, None)
            python = {pid: set(t) for pid, t in self._python.items() if pid in other}
        for pid, threads in other.items():
            tids = python.get(pid)
            entry = out.get(pid)
            if not tids or entry is None:  # no Python thread known: nothing to tell apart
                continue
            native = entry.native
            for tid, stacks in threads.items():
                if tid in tids:
                    continue
                for k, c in stacks.items():
                    native[k] = native.get(k, 0) + c
        return out


class Spreader:
    """Splits counts over one set of weights (ints or floats) proportionally, as integers summing exactly to
    the count: largest remainders get the leftover units, ties to the larger weight, then the smaller stack.

    Built once per process and interval, called once per kernel suffix: the keys are sorted once (a frame
    tuple sort per call cost the agent ~8 % of its time on the busy bench), each call is a few numpy passes.
    """

    def __init__(self, weights: Mapping[Stack, float]) -> None:
        self.keys = sorted(weights, key=lambda k: (-weights[k], k))  # deterministic tie-break
        self.vals = [weights[k] for k in self.keys]
        self.total = sum(weights.values())  # in the mapping's order, as the counts' floats always were
        self.ints = all(isinstance(w, int) for w in self.vals)
        self._w = np.array(self.vals, dtype=np.int64 if self.ints else np.float64) if (
            not self.ints or self.total < 1 << 40) else None  # int64 while n * weight cannot overflow

    def __call__(self, n: int) -> dict[Stack, int]:
        total = self.total
        if n <= 0 or total <= 0:
            return {}
        w = self._w
        if w is None or (self.ints and n >= 1 << 22):  # Python ints: exact at any size (never seen)
            return self._exact(n)
        if self.ints:
            prod = w * n
            base, rem = prod // int(total), prod % int(total)
        else:
            exact = n * w / total
            base = np.floor(exact)
            rem = exact - base
        counts = base.astype(np.int64)
        left = n - int(counts.sum())
        if left > 0:  # largest remainders first, ties in key order (a stable sort)
            counts[np.argsort(-rem, kind="stable")[:left]] += 1
        keys = self.keys
        return {keys[i]: int(counts[i]) for i in np.flatnonzero(counts).tolist()}

    def _exact(self, n: int) -> dict[Stack, int]:
        total = int(self.total)
        base = [n * int(w) // total for w in self.vals]
        rem = [n * int(w) % total for w in self.vals]
        left = n - sum(base)
        for i in sorted(range(len(base)), key=lambda i: (-rem[i], i))[:left]:
            base[i] += 1
        return {k: v for k, v in zip(self.keys, base, strict=True) if v > 0}


_SPREADERS: dict[int, tuple[Mapping[Stack, float], Spreader]] = {}
SPREADERS_MAX = 4096  # shapes kept sorted (one per py-spy-named process; its shape is replaced, not changed)


def spreader_of(weights: Mapping[Stack, float]) -> Spreader:
    """The Spreader of this very shape object, built once: the scheduler replaces a process's shape when
    py-spy refreshes it and never changes one in place, so its sort is done once per refresh, not per push
    (it was a tenth of the agent's main thread on the busy bench)."""
    got = _SPREADERS.get(id(weights))
    if got is not None and got[0] is weights and len(got[1].keys) == len(weights):  # alive: id not reused
        return got[1]
    if len(_SPREADERS) >= SPREADERS_MAX:
        _SPREADERS.clear()
    sp = Spreader(weights)
    _SPREADERS[id(weights)] = (weights, sp)
    return sp


def spread(n: int, weights: Mapping[Stack, float]) -> dict[Stack, int]:
    """Split ``n`` over ``weights`` (ints or floats) proportionally; integers summing to exactly ``n``."""
    return Spreader(weights)(n)


def combine_python(perf: Mapping[Stack, int], python: Mapping[Stack, float] | None,
                   native: Mapping[Stack, int] | None = None) -> dict[Stack, int]:
    """perf stacks of one process with their user-space part renamed by py-spy's stacks (see module doc).

    User-leaf samples become py-spy stacks; kernel-leaf samples keep their kernel frames under a
    py-spy stack (the interpreter frames perf saw below the kernel are dropped). Both spread perf's
    counts over py-spy's shape, so totals are perf's exactly. ``native``: the part of ``perf`` from
    threads that never ran the interpreter; it is kept as perf saw it.
    """
    if not python or sum(python.values()) <= 0:
        return dict(perf)
    out: dict[Stack, int] = {}
    if native:
        for stack, c in native.items():
            out[stack] = c
        perf = {k: c - native.get(k, 0) for k, c in perf.items() if c > native.get(k, 0)}
    user = 0
    kernel: dict[Stack, int] = {}  # kernel suffix -> count
    for stack, c in perf.items():
        if stack and stack[-1].kind is Kind.KERNEL:
            i = next(i for i, f in enumerate(stack) if f.kind is Kind.KERNEL)
            suffix = stack[i:]
            kernel[suffix] = kernel.get(suffix, 0) + c
        else:
            user += c
    split = spreader_of(python)
    for stack, c in split(user).items():
        out[stack] = out.get(stack, 0) + c
    for suffix, n in kernel.items():
        for stack, c in split(n).items():
            key = stack + suffix
            out[key] = out.get(key, 0) + c
    return out
