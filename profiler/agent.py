"""The agent: samplers -> per-interval collection -> labels -> spool -> shipper.

Threads: the perf reader (parses ``perf script`` as it streams), one thread
per py-spy run (which runs, see :mod:`profiler.pyschedule`), the shipper
(delivery with retries), the ``/metrics`` server, and the main loop here,
which polls the py-spy scheduler every second and every ``push_interval``
drains the collector, combines perf and py-spy stacks per process, labels
each process and spools one push (plus one wall-clock push with ``--wall``).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from profiler.collect import Collector, PidSamples, combine_python
from profiler.hold import Held, NameHold
from profiler.metadata import (
    MetadataResolver,
    PodIndex,
    apiserver_pods_url,
    http_podlist_fetcher,
    kubelet_pods_url,
    node_name,
)
from profiler.procfs import Discovery, ProcFS
from profiler.pyschedule import PyScheduler
from profiler.samplers import bpfstacks
from profiler.samplers import perf as perf_sampler
from profiler.samplers.base import Runner, SamplerUnavailable, default_runner
from profiler.samplers.pyspy import PySpySampler, PyStacks, check_pyspy
from profiler.samplers.pyunwind import PyUnwindSampler, bpf_stats_on, check_bpftrace, enable_bpf_stats
from profiler.settings import AgentSettings
from profiler.shipper import WALL, Shipper, build_push
from profiler.spool import Spool
from profiler.unwind import UnwindSupervisor
from stacks.model import Labels, Stack

log = logging.getLogger(__name__)

Sampler = perf_sampler.PerfSampler | bpfstacks.BpfSampler
"""The every-CPU sampler: both feed ``Collector.add`` and have start/stop/child_pids and the same counters."""


def kube_index(s: AgentSettings, node: str, environ: Mapping[str, str]) -> PodIndex | None:
    """The pod index the settings ask for, or None off Kubernetes."""
    mode = s.kube
    in_cluster = bool(environ.get("KUBERNETES_SERVICE_HOST")) or os.path.exists(s.kube_token_path)
    if mode == "off" or (mode == "auto" and not in_cluster and not s.kubelet_url and not s.kube_api_url):
        return None
    if mode == "apiserver" or (mode == "auto" and s.kube_api_url and not s.kubelet_url):
        base = s.kube_api_url or "https://{}:{}".format(
            environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc"),
            environ.get("KUBERNETES_SERVICE_PORT", "443"))
        url = apiserver_pods_url(base, node)
        fetch = http_podlist_fetcher(url, s.kube_token_path, ca_path=s.kube_ca_path)
    else:
        url = kubelet_pods_url(s.kubelet_url or f"https://{node}:10250")
        fetch = http_podlist_fetcher(url, s.kube_token_path, insecure=s.kubelet_insecure_tls)
    log.info("pod metadata from %s", url)
    return PodIndex(fetch, min_interval=s.kube_refresh_interval)


def refresh_samples(s: AgentSettings) -> int:
    """``pyspy_refresh_samples`` at the agent's ``frequency``: the setting counts perf samples at 99 Hz,
    so a shape is refreshed after the same CPU time of its process at any rate (at 792 Hz, 2,000
    samples would be 2.5 CPU s, and py-spy ran 8x as often for the same work)."""
    return max(1, round(s.pyspy_refresh_samples * s.frequency / 99))


class Agent:
    """One node's profiler. Build it from settings, then :meth:`run` until :meth:`stop`."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        runner: Runner = default_runner,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], int] = time.time_ns,
        environ: Mapping[str, str] | None = None,
        proc: ProcFS | None = None,
        discovery: Discovery | None = None,
        unwind: UnwindSupervisor | None = None,
    ) -> None:
        self.s = settings
        # the one door to /proc (proc_root) and the discovery of new Python processes through it
        self.proc = proc or ProcFS(settings.proc_root)
        self.discovery = discovery or Discovery(self.proc)
        self.runner = runner
        self.clock = clock
        self.wallclock = wallclock
        env = os.environ if environ is None else environ
        self.node = node_name(env, settings.node_name)
        self.resolver = MetadataResolver(self.proc.root, pods=kube_index(settings, self.node, env))
        self.collector = Collector()
        self.gc = GcClock()
        self.spool = Spool(settings.spool_dir or None, max_bytes=settings.spool_max_bytes,
                           memory_bytes=settings.spool_memory_bytes)
        self.shipper = Shipper(self.spool, settings.server, token=settings.push_token,
                               timeout=settings.push_timeout)
        self.perf: Sampler | None = None  # the every-CPU sampler (perf or bpf, setting `sampler`)
        self._sampler = settings.sampler
        self._bpf_stats_fd: int | None = None  # open while the kernel counts BPF run time for us
        self.pyspy: PySpySampler | None = None
        self._bpftrace_bin = settings.bpftrace_path  # the bpf sampler's (resolved by check())
        self._perf_control = False  # perf takes --control: the idle task left out (check() finds out)
        self.sched = PyScheduler(
            self.proc.is_python, frequency=settings.frequency, budget=settings.pyspy_budget,
            max_running=settings.pyspy_max_processes, duration=max(1, round(settings.pyspy_duration)),
            probe_seconds=settings.pyspy_probe_seconds, max_rate=settings.pyspy_max_rate,
            target_samples=settings.pyspy_target_samples, refresh_samples=refresh_samples(settings),
            shape_max_age=settings.pyspy_shape_max_age, own_pids=frozenset({os.getpid()}),
            interval_hint=settings.push_interval, lifetime_share=self.proc.lifetime_share)
        self._py_lock = threading.Lock()  # guards sched and hold (py-spy threads report into sched)
        # the in-kernel unwinder's supervisor: which processes bpftrace names, its restarts and give-up
        self.unwind = unwind or UnwindSupervisor(
            self.proc, self.discovery, frequency=settings.frequency, interval=settings.pyunwind_interval,
            max_depth=settings.pyunwind_max_depth, restart_seconds=settings.pyunwind_restart_seconds,
            bpftrace=settings.bpftrace_path, runner=runner, clock=clock)
        self.unwind.bind(self.sched, self._py_lock)
        # only with perf: without it py-spy's own samples are the data, named from the start
        self.hold = NameHold(settings.pyspy_hold_seconds if settings.perf and settings.pyspy else 0.0)
        self._wall: list[PyStacks] = []
        self.wall_taken = 0
        self._interval_start = clock()
        self._stop = threading.Event()
        self.intervals = 0
        self.samples_spooled = 0
        self.label_errors = 0
        self.started = clock()
        self.metrics_port: int | None = None
        self._psutil_primed: set[int] = set()
        # Resolved by check() (next to the interpreter, then PATH); the settings' values until then.
        self._perf_bin, self._pyspy_bin = settings.perf_path, settings.pyspy_path

    # ---------------------------------------------------------------- setup
    def check(self) -> None:
        """Fail fast, with the fix, when an enabled sampler cannot run."""
        if not (self.s.perf or self.s.pyspy):
            raise SamplerUnavailable("no sampler enabled: set --perf true and/or --pyspy true")
        self._sampler = self.s.sampler if self.s.perf else "perf"
        if self.s.perf and self._sampler != "perf":
            try:
                self._bpftrace_bin = bpfstacks.check(self.s.bpftrace_path)
            except SamplerUnavailable as e:
                if self._sampler == "bpf":
                    raise
                log.warning("%s; sampling with perf", e)
                self._sampler = "perf"
        if self.s.perf and self._sampler == "perf":
            self._perf_preflight()
        if self.s.pyspy:
            self._pyspy_bin = check_pyspy(self.s.pyspy_path)
        if self.s.pyunwind != "off" and self.s.perf:
            try:
                self.unwind.bpftrace = check_bpftrace(self.s.bpftrace_path)
            except SamplerUnavailable as e:
                if self.s.pyunwind == "on":
                    raise
                log.warning("%s; Python names come from py-spy alone", e)
                self.unwind.bpftrace = ""

    def start(self) -> None:
        if self.s.perf:
            self.perf = self._start_sampler()
        if self.s.pyspy:
            self.pyspy = PySpySampler(self.on_python, pyspy=self._pyspy_bin, rate=self.s.wall_rate,
                                      duration=self.s.pyspy_duration, runner=self.runner, clock=self.clock,
                                      gil=self.s.pyspy_gil)
        if self.s.pyunwind != "off" and self.perf is not None and self.unwind.bpftrace:
            self.unwind.start(self._count_bpf())
        self.shipper.start()
        if self.s.metrics_port >= 0:
            self.metrics_port = start_metrics(self, self.s.metrics_host, self.s.metrics_port)
            log.info("metrics on http://%s:%d/metrics", self.s.metrics_host, self.metrics_port)

    def _start_sampler(self) -> Sampler:
        """The every-CPU sampler ``sampler`` names: bpf when its program loads (auto: else perf), started."""
        if self._sampler in ("bpf", "auto"):
            bpf = bpfstacks.BpfSampler(
                self.collector.add, on_interpreter=self.collector.mark_python, bpftrace=self._bpftrace_bin,
                frequency=self.s.frequency, interval=self.s.bpf_interval, runner=self.runner, clock=self.clock,
                proc_root=self.proc.root)
            bpf.stats_counted = self._count_bpf()
            bpf.start()
            if bpf.ready():
                log.info("sampler: bpf (stacks counted in the kernel by bpftrace, reports every %d s)",
                         self.s.bpf_interval)
                return bpf
            bpf.stop()
            if self._sampler == "bpf":
                raise SamplerUnavailable(f"the bpf sampler's program did not load ({bpf.last_error}): "
                                         "run as root with BTF (/sys/kernel/btf/vmlinux), or set --sampler perf")
            log.warning("sampler: perf, because the bpf sampler's program did not load (%s)", bpf.last_error)
            self._perf_preflight()
        perf = perf_sampler.PerfSampler(
            self.collector.add, on_interpreter=self.collector.mark_python, perf=self._perf_bin,
            batch_sink=self.collector.add_batch,
            frequency=self.s.frequency,
            mmap_pages=self.s.perf_mmap_pages, runner=self.runner, clock=self.clock,
            reader=self.s.perf_reader, proc_root=self.proc.root, control=self._perf_control)
        perf.start()
        log.info("sampler: perf (perf record -a -g, reader %s, %s)", self.s.perf_reader, self._idle_kind())
        return perf

    def _perf_preflight(self) -> None:
        """perf's path once it may sample every CPU, and whether it can leave the idle task out."""
        self._perf_bin = perf_sampler.preflight(self.s.perf_path, self.s.frequency, self.runner)
        self._perf_control = perf_sampler.supports_control(self._perf_bin, self.runner)
        if not self._perf_control:
            log.warning("perf record has no --control (perf before 5.10): the idle task is sampled too, "
                        "at the full rate on idle CPUs; a newer perf costs less on a quiet node")

    def _idle_kind(self) -> str:
        """Whether perf samples the idle task (the stats line's ``perf_idle``)."""
        return "idle task excluded" if self._perf_control else "idle task sampled"

    def _count_bpf(self) -> bool:
        """Have the kernel count BPF run time while the agent runs; whether it is counted for us."""
        if self._bpf_stats_fd is None:
            self._bpf_stats_fd = enable_bpf_stats()
            if self._bpf_stats_fd is None and not bpf_stats_on(self.proc.root):
                log.warning("BPF run time not counted: bpf(BPF_ENABLE_STATS) not permitted here "
                            "(needs CAP_SYS_ADMIN); sysctl kernel.bpf_stats_enabled=1 counts it")
        return self._bpf_stats_fd is not None

    def on_python(self, res: PyStacks) -> None:
        """A py-spy run ended (py-spy threads call this)."""
        if res.idle:
            with self._py_lock:
                if res.stacks:
                    self._wall.append(res)
                known = res.ok and res.pid in self.sched.states
            if known and self.pyspy is not None and not self._stop.is_set():
                # back to back, so the wall profile covers (almost) all of the process's time
                self.pyspy.start_run(res.pid, duration=max(1, round(self.s.pyspy_duration)),
                                     rate=self.s.wall_rate, idle=True)
            return
        if log.isEnabledFor(logging.DEBUG):
            leaves = Counter()
            for stack, n in res.stacks.items():
                leaves[stack[-1].name if stack else "?"] += n
            log.debug("py-spy pid %d ended: %d busy samples%s; leaves %s", res.pid, sum(res.stacks.values()),
                      "" if res.ok else " (failed)", dict(leaves.most_common(4)))
        with self._py_lock:
            self.sched.on_result(res.pid, res.stacks, res.ok, self.clock())
        if self.perf is None and res.stacks:  # py-spy only: its samples are the data
            self.collector.add_stacks(res.pid, self._name(res.pid), res.stacks)

    def prime_labels(self, current: Mapping[int, int]) -> None:
        """Resolve each sampled process's labels while it still runs (cached 60 s by the resolver): a
        short job that exits before the push would otherwise lose its pod (measured: most of the samples
        of 3 s jobs went out with the process name only)."""
        for pid in current:
            try:
                self.resolver.prime(pid)
            except Exception as e:  # labels are best effort
                log.debug("labelling pid %d early failed: %s", pid, e)

    @property
    def unwinder(self) -> PyUnwindSampler | None:
        """The in-kernel unwinder's sampler while it runs (None: off, not started, or given up)."""
        return self.unwind.sampler

    def poll_unwind(self, current: Mapping[int, int]) -> None:
        """Give new Python processes to the in-kernel unwinder; hand those it cannot name to py-spy."""
        if self.unwind.active:
            self.unwind.poll(current, self.collector.python_pids())

    def _name(self, pid: int) -> str:
        return self.resolver.process_name(pid)

    # ---------------------------------------------------------------- loop
    def run(self) -> int:
        """Sample and ship until :meth:`stop` (or SIGTERM via :func:`main`); flush; return 0."""
        self.gc.install()  # here, not in start(): tests start agents without running them
        self.start()
        interval = self.s.push_interval
        t0 = self.clock()
        wall0 = self.wallclock()
        next_tick = t0 + interval
        next_stats = t0 + self.s.stats_interval
        while not self._stop.wait(max(0.0, min(next_tick, self.clock() + 1.0) - self.clock())):
            if self.clock() < next_tick:
                self.poll_python()  # 1 s: probe Python processes that just started burning CPU
                continue
            wall1 = self.wallclock()
            self.tick(wall0, wall1)
            wall0 = wall1
            next_tick += interval
            if self.clock() > next_tick:  # fell behind (suspended?): do not burst
                next_tick = self.clock() + interval
            if self.clock() >= next_stats:
                log.info("stats %s", json.dumps(self.stats()))
                next_stats += self.s.stats_interval
        return self.shutdown(wall0)

    def stop(self) -> None:
        self._stop.set()

    def tick(self, start_ns: int, end_ns: int, *, final: bool = False) -> int:
        """Collect one interval into a spooled push (and release held samples); returns samples spooled."""
        self.intervals += 1
        pids = self.collector.drain()
        now = self.clock()
        self._interval_start = now
        counts: dict[int, int] = {}
        if self.pyspy is not None:  # every sample counts for the scheduler in its own interval, held or not
            counts = {pid: ps.count for pid, ps in pids.items()} if self.perf is not None else self._psutil_counts()
        with self._py_lock:
            unwound = self.unwind.take()
            self.unwind.check(pids)
            # an unwound process is named by this interval's own samples; else by its latest shape
            shapes = {pid: sh for pid in pids if (sh := unwound.get(pid) or self.sched.shape(pid)) is not None}
            wall, self._wall = self._wall, []
            if self.hold.enabled and not final:  # Python processes whose first names are on the way wait
                for pid in [p for p in pids if p not in shapes and self.sched.awaiting_name(p)]:
                    ps = pids.pop(pid)
                    self.hold.put(pid, Held(start_ns, end_ns, ps, self._try_labels(pid, ps.comm)), now)
            released = list(self.hold.release(now, self.sched.shape, everything=final))
        if self.pyspy is not None:
            with self._py_lock:
                self.sched.observe(counts, now)
            self.poll_python()
            self._start_wall(counts)
        n = self._spool_perf(pids, shapes, start_ns, end_ns)
        late: dict[tuple[int, int], dict[int, PidSamples]] = {}  # released samples keep their own times
        labels: dict[int, Labels] = {}
        for r in released:
            late.setdefault((r.held.start_ns, r.held.end_ns), {})[r.pid] = r.held.samples
            if r.shape is not None:
                shapes[r.pid] = r.shape
            if r.held.labels is not None:
                labels[r.pid] = r.held.labels
        for (t0, t1), group in sorted(late.items()):
            n += self._spool_perf(group, shapes, t0, t1, labels)
        if wall:
            self._spool_wall(wall, end_ns)
        self.shipper.wake()
        return n

    def _spool_perf(self, pids: Mapping[int, PidSamples], shapes: Mapping[int, dict[Stack, float]],
                    start_ns: int, end_ns: int, known: Mapping[int, Labels] | None = None) -> int:
        """One push of these processes' samples, Python-named where a shape is known."""
        series: dict[Labels, dict[Stack, int]] = {}
        for pid, ps in pids.items():
            stacks = combine_python(ps.stacks, shapes[pid], ps.native) if pid in shapes else ps.stacks
            labels = (known or {}).get(pid) or self._try_labels(pid, ps.comm)
            if labels is None:  # samples are never dropped for their labels
                labels = Labels.of(node=self.node, process=ps.comm, service_name=ps.comm)
            dest = series.get(labels)
            if dest is None:  # most series hold one process: a copy, not a loop
                series[labels] = dict(stacks)
                continue
            for k, c in stacks.items():
                dest[k] = dest.get(k, 0) + c
        if not series:
            return 0
        body, n = build_push(series, frequency=self.s.frequency if self.perf else self.s.wall_rate,
                             start_ns=start_ns, duration_ns=max(0, end_ns - start_ns))
        self.spool.put(body, n)
        self.samples_spooled += n
        return n

    def labels_of(self, pid: int, comm: str) -> Labels:
        return self.resolver.resolve(pid, comm).labels(self.node)

    def _try_labels(self, pid: int, comm: str) -> Labels | None:
        """The process's labels, or None (counted in ``label_errors``) when they cannot be had."""
        try:
            return self.labels_of(pid, comm)
        except Exception as e:  # labels are best effort
            self.label_errors += 1
            log.debug("labelling pid %d failed: %s", pid, e)
            return None

    def poll_python(self) -> None:
        """Every second: labels of new processes, the unwinder's processes, and the py-spy runs the
        scheduler wants now (probes for new busy Python processes, refreshes)."""
        current = self.collector.counts() if self.perf is not None else {}
        self.prime_labels(current)
        self.poll_unwind(current)
        if self.pyspy is None:
            return
        now = self.clock()
        with self._py_lock:
            runs = self.sched.plan(now, current, max(0.5, now - self._interval_start),
                                   set(self.pyspy.running()))
        for r in runs:
            log.debug("py-spy %s pid %d: %d s at %d Hz (tokens %.0f)", "first run" if r.probe else "refresh",
                      r.pid, r.duration, r.rate, self.sched.tokens)
            self.pyspy.start_run(r.pid, duration=r.duration, rate=r.rate)

    def _start_wall(self, counts: Mapping[int, int]) -> None:
        """Wall-clock mode: keep one --idle run going on every Python process seen this interval."""
        if not self.s.wall or self.pyspy is None:
            return
        with self._py_lock:
            pids = [pid for pid in counts if pid in self.sched.states]
        for pid in pids:
            self.pyspy.start_run(pid, duration=max(1, round(self.s.pyspy_duration)), rate=self.s.wall_rate,
                                 idle=True)

    def _spool_wall(self, runs: list[PyStacks], end_ns: int) -> None:
        """One wall push (``__name__=wall``, wall/nanoseconds) from the runs that ended this interval."""
        series: dict[Labels, dict[Stack, int]] = {}
        first = min(r.started for r in runs)
        for r in runs:
            try:
                labels = self.labels_of(r.pid, self._name(r.pid))
            except Exception:  # labels are best effort
                labels = Labels.of(node=self.node, process=str(r.pid))
            dest = series.setdefault(labels, {})
            for k, c in r.stacks.items():
                dest[k] = dest.get(k, 0) + c
        span_ns = int((max(r.ended for r in runs) - first) * 1e9)
        body, n = build_push(series, frequency=self.s.wall_rate, start_ns=max(0, end_ns - span_ns),
                             duration_ns=span_ns, profile=WALL)
        self.spool.put(body, n)
        self.wall_taken += n
        self.samples_spooled += n

    def _psutil_counts(self) -> dict[int, int]:
        """Without perf: each process's CPU since the previous call, in perf-sample units (first call primes)."""
        full = self.s.frequency * self.s.push_interval
        out: dict[int, int] = {}
        for pid, pct in self.proc.cpu_percents(self._psutil_primed).items():
            if pct > 0:
                out[pid] = round(full * pct / 100)
        return out

    def shutdown(self, wall0: int) -> int:
        """Stop samplers, ship what they had, flush the spool (bounded time), spill the rest."""
        log.info("stopping: flushing samples")
        if self.pyspy is not None:
            self.pyspy.stop()
        self.unwind.stop()  # its last report comes in before the final tick
        if self.perf is not None:
            self.perf.stop()
        self.tick(wall0, self.wallclock(), final=True)
        self.shipper.stop()
        done = self.shipper.flush(time.monotonic() + self.s.push_timeout)
        self.spool.close()
        stats = self.stats()
        self.gc.remove()
        log.info("final stats %s", json.dumps(stats))
        if not done:
            log.warning("aggregator unreachable at exit: %d pushes (%d samples) left in %s",
                        len(self.spool), self.spool.samples, self.s.spool_dir or "memory (lost)")
        return 0

    # ---------------------------------------------------------------- self-observation
    def stats(self) -> dict[str, Any]:
        cpu = self.proc.own_cpu_seconds()
        parts = [self.unwind.bpf_seconds()] + ([self.perf.bpf_seconds()] if isinstance(self.perf, bpfstacks.BpfSampler)
                                               else [])
        bpf = sum(x for x in parts if x is not None) if any(x is not None for x in parts) else None
        up = max(1e-9, self.clock() - self.started)
        with self._py_lock:  # py-spy threads change the scheduler's states
            n_python = len(self.sched.states)
            n_named = sum(1 for st in self.sched.states.values() if st.has_shape)
            held = self.hold.samples
        return {
            "uptime_seconds": round(up, 1),
            "samples_taken": self.collector.taken + self.wall_taken,
            "wall_samples": self.wall_taken,
            "samples_spooled": self.samples_spooled,
            "samples_pushed": self.shipper.samples_pushed,
            "samples_dropped": self.spool.dropped_samples,
            "samples_rejected": self.shipper.rejected_samples,
            "samples_lost": self.spool.dropped_samples + self.shipper.rejected_samples,
            "pushes": self.shipper.pushes,
            "push_failures": self.shipper.failures,
            "spool_bytes": self.spool.bytes,
            "spool_pushes": len(self.spool),
            "sampler": self.perf.name if self.perf else "",
            "perf_reader": self.perf.reader_kind if isinstance(self.perf, perf_sampler.PerfSampler) else "",
            "perf_idle": self._idle_kind() if isinstance(self.perf, perf_sampler.PerfSampler) else "",
            "perf_restarts": self.perf.restarts if self.perf else 0,
            "perf_gap_seconds": round(self.perf.gap_seconds, 3) if self.perf else 0.0,
            "perf_fallbacks": self.perf.fallbacks if self.perf else 0,
            "rss_bytes": self.proc.own_rss(),
            "pyspy_runs": self.pyspy.runs if self.pyspy else 0,
            "pyspy_failures": self.pyspy.failures if self.pyspy else 0,
            "pyspy_processes": len(self.pyspy.active()) if self.pyspy else 0,
            "pyspy_samples": self.pyspy.samples if self.pyspy else 0,
            "python_processes": n_python,
            "python_processes_named": n_named,
            "pyunwind_processes": self.unwind.processes,
            "pyunwind_samples": self.unwind.samples,
            "pyunwind_starts": self.unwind.starts,
            "samples_held": held,
            "held_released_named": self.hold.released_named,
            "held_released_unnamed": self.hold.released_unnamed,
            # CPU always counts the children (perf record, perf script, py-spy): that is what the node pays
            # ...and the in-kernel unwinder's BPF run time when the kernel counts it (bpf_stats_enabled)
            "cpu_seconds": round(cpu["total"] + (bpf or 0.0), 3),
            "cpu_seconds_self": round(cpu["self"], 3),
            "cpu_seconds_children": round(cpu["children"], 3),
            "cpu_seconds_bpf": round(bpf, 3) if bpf is not None else -1.0,
            "cpu_share_of_core": round((cpu["total"] + (bpf or 0.0)) / up, 5),
            "gc_seconds": round(self.gc.seconds, 3),
            "gc_collections": self.gc.collections,
        }


class GcClock:
    """Seconds the agent's process spends in Python's cyclic garbage collector (a ``gc.callbacks`` entry):
    the collector runs because of the naming caches' allocations and is part of ``cpu_seconds_self``."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds = 0.0
        self.collections = 0
        self._t0: float | None = None

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = self.clock()
        elif self._t0 is not None:
            self.seconds += self.clock() - self._t0
            self.collections += 1
            self._t0 = None

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


class _AgentCollector:
    """prometheus-client collector reading the agent's counters at scrape time."""

    COUNTERS: ClassVar[dict[str, str]] = {
        "samples_taken": "Samples taken by the samplers",
        "samples_pushed": "Samples acknowledged by the aggregator",
        "samples_lost": "Samples dropped (spool bound) or rejected by the aggregator",
        "pushes": "Successful pushes",
        "push_failures": "Failed push attempts",
        "perf_restarts": "Times perf was restarted",
        "perf_gap_seconds": "Seconds without perf sampling",
        "perf_fallbacks": "Times perf's binary stream could not be read and perf script took over",
        "pyspy_runs": "py-spy runs",
        "pyspy_failures": "Failed py-spy runs",
        "cpu_seconds": "CPU seconds of the agent's process tree (agent, perf, py-spy, bpftrace) and its BPF "
                       "programs",
        "cpu_seconds_self": "CPU seconds of the agent's own process (children excluded)",
        "cpu_seconds_children": "CPU seconds of perf record, perf script, bpftrace and py-spy (live and reaped)",
        "pyspy_samples": "Busy Python samples py-spy took",
        "pyunwind_samples": "Python samples unwound in the kernel (bpftrace)",
        "pyunwind_starts": "Times bpftrace was (re)started for the in-kernel Python unwinder",
        "wall_samples": "Wall-clock samples taken (py-spy --idle)",
        "held_released_named": "Samples held for a first py-spy shape, then pushed with Python names",
        "held_released_unnamed": "Samples held for a first py-spy shape that did not come in time, pushed unnamed",
        "gc_seconds": "Seconds the agent's process spent in Python's cyclic garbage collector (part of "
                      "cpu_seconds_self)",
    }
    GAUGES: ClassVar[dict[str, str]] = {
        "spool_bytes": "Bytes of unsent pushes (memory + disk)",
        "spool_pushes": "Unsent pushes",
        "rss_bytes": "Resident memory of the agent's own process (children excluded)",
        "samples_held": "Samples of Python processes waiting for their first py-spy shape",
        "pyspy_processes": "Python processes with a py-spy run in flight now",
        "pyunwind_processes": "Python processes the in-kernel unwinder names",
        "python_processes": "Python processes the agent knows (seen by perf in the last 5 min)",
        "python_processes_named": "Python processes with a py-spy shape (their Python time has names)",
        "cpu_seconds_bpf": "CPU seconds of the agent's BPF programs: the unwinder's and the bpf sampler's "
                           "(-1: not counted, kernel.bpf_stats_enabled is 0)",
        "cpu_share_of_core": "CPU of the agent's process tree since start, as a share of one core",
    }

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self):  # type: ignore[no-untyped-def]
        st = self.agent.stats()
        for k, h in self.COUNTERS.items():
            c = CounterMetricFamily(f"flamewatch_agent_{k}", h)
            c.add_metric([], st[k])
            yield c
        for k, h in self.GAUGES.items():
            g = GaugeMetricFamily(f"flamewatch_agent_{k}", h)
            g.add_metric([], st[k])
            yield g


def start_metrics(agent: Agent, host: str, port: int) -> int:
    """Serve /metrics in a thread; returns the bound port."""
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client.exposition import make_wsgi_app

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_AgentCollector(agent))  # type: ignore[arg-type]
    app = make_wsgi_app(registry)

    class _Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:  # scrapes are not worth a log line
            pass

    class _Server(WSGIServer):
        daemon_threads = True

    srv = make_server(host, port, app, server_class=_Server, handler_class=_Quiet)
    # the poll interval only bounds how soon shutdown() is noticed, and this server is never shut down (a
    # daemon thread): the default 0.5 s woke the thread twice a second, ~0.15 ms of CPU a second (issue 25)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 3600.0}, name="metrics",
                     daemon=True).start()
    return int(srv.server_address[1])


def install_signal_handlers(agent: Agent) -> None:
    """SIGTERM / SIGINT stop the agent; the main loop then flushes."""
    def handler(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
