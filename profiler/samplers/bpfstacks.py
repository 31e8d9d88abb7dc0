"""System-wide kernel + native stacks counted in the kernel by one bpftrace program (issue 25).

perf hands every sample to user space, and the agent paid for each one. Here a
``profile:hz:F`` BPF program counts samples per (pid, tid, comm, user stack
hash, kernel stack) in a BPF map, and every ``interval`` seconds bpftrace prints
the map and clears it: the agent's work is per *distinct* stack per interval,
not per sample.

bpftrace v0.17 (what runs here) prints ``ustack`` symbolised, per process, at
every print: measured at ~15 % of a core (docs/agent.md). So the program does
not use ``ustack``: it walks the user stack's frame pointers itself, from the
registers the task entered the kernel with (``task_pt_regs``, at the top of the
task's kernel stack), the same walk ``perf record -g`` does, and keeps raw
addresses: a hash of them is in the count's key, and the first sample of a
stack stores its addresses in ``@u[pid, hash, i]`` once (``@seen`` remembers
which stacks were stored; it is cleared every ``seen_reset`` reports so a stack
the agent forgot is stored again). Kernel stacks are ``kstack(perf)``, whose
printed lines start with the raw address. The agent names addresses with the
same caches as the perf stream reader (:mod:`profiler.samplers.perfdata`: per
file and offset, kernel symbols, JIT maps through ``/proc/PID/root``); a
process's mappings come from ``/proc/PID/maps`` (read through ``proc_root``)
when its first samples arrive, re-read after an exec or an address outside
them.

Limits: frame-pointer unwinding (as perf -g); a process that exits before its
first report (``interval``) has its user frames named ``[unknown]`` (its
mappings are gone), its samples and ``comm`` are kept; x86-64 only
(``pt_regs`` placement); idle (pid 0) is not sampled, as perf's ``cpu-clock``
does not either.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable

from profiler.samplers.base import Backoff, Proc, Runner, SamplerUnavailable, default_runner
from profiler.samplers.perf import _grow_pipe
from profiler.samplers.perfdata import CONTEXT_KERNEL, CONTEXT_USER, PerfDataReader, _Maps
from profiler.samplers.pyunwind import bpf_run_seconds, check_bpftrace
from profiler.symbols import FileSymbols, JitMaps, KernelSymbols
from stacks.perf import PerfSample

log = logging.getLogger(__name__)

END_MARK = "--flamewatch-native-end--"
READY_MARK = "--flamewatch-native-ready--"
NEW_MARK = "@@new"  # a line "@@new PID": a process (or a new program in it) had its first sample
_NEW = re.compile(r"^@@new (\d+)$", re.M)
FNV_OFFSET, FNV_PRIME = 1469598103934665603, 1099511628211
MASK = 0xFFFFFFFFFFFFFFFF  # bpftrace prints u64 map keys and values as signed
# x86-64: THREAD_SIZE (16 KiB without KASAN) and sizeof(struct pt_regs): the user registers sit at the top of
# the task's kernel stack (task_pt_regs; TOP_OF_KERNEL_STACK_PADDING is 0 on x86-64).
THREAD_SIZE = 16384
PT_REGS_SIZE = 168
MAX_KNOWN = 200_000  # user stacks remembered (pid, hash) -> addresses, all processes
MAPS_STALE_SECONDS = 2.0  # an address outside a process's maps re-reads them at most this often
PID_IDLE_REPORTS = 30  # a process without samples for this many reports is forgotten
COMMS_MAX = 200_000  # thread names remembered (each row carries its own, so forgetting is safe)
READY_TIMEOUT = 60.0  # seconds bpftrace may take to compile and attach (LLVM; slow on a loaded node)
REPORTS_QUEUED = 3  # reports read but not named yet; past it the reader waits (and bpftrace on the pipe)
REPORT_MAX = 64 << 20  # characters of one report (~250,000 map entries of ~60; the maps hold 262,144 keys)

MISSING_HELP = ("install it (Debian: apt-get install bpftrace), set --bpftrace-path, "
                "or set --sampler perf")


def native_script(*, frequency: int = 99, interval: int = 2, max_depth: int = 64, seen_reset: int = 15,
                  procs_reset: int = 300) -> str:
    """The bpftrace program (see the module doc)."""
    regs = f"(struct pt_regs *)((uint64)curtask->stack + {THREAD_SIZE - PT_REGS_SIZE})"
    return f"""struct fw_frame {{ unsigned long next; unsigned long ret; }};
BEGIN {{
  printf("{READY_MARK}\\n");
}}
profile:hz:{frequency} /pid != 0/ {{
  $h = (uint64){FNV_OFFSET};
  $user = curtask->mm != 0;
  if ($user) {{
    $r = {regs};
    $h = ($h ^ $r->ip) * {FNV_PRIME};
    $bp = $r->bp;
    $d = 0;
    while ($d < {max_depth}) {{
      if ($bp == 0) {{ break; }}
      $f = *(struct fw_frame *)uptr($bp);  // one 16-byte read: saved frame pointer, return address
      if ($f.ret < 4096) {{ break; }}
      $h = ($h ^ $f.ret) * {FNV_PRIME};
      $bp = $f.next;
      $d++;
    }}
  }}
  @c[pid, tid, comm, $h, kstack(perf)] = count();
  if ($user && @procs[pid, comm] == 0) {{
    @procs[pid, comm] = 1;
    printf("{NEW_MARK} %d\\n", pid);  // now, not at the report: the agent reads its maps while it lives
  }}
  if ($user && @seen[pid, $h] == 0) {{
    @seen[pid, $h] = 1;
    $r2 = {regs};
    @u[pid, $h, 0] = $r2->ip;
    $bp = $r2->bp;
    $j = 1;
    while ($j <= {max_depth}) {{
      if ($bp == 0) {{ break; }}
      $g = *(struct fw_frame *)uptr($bp);
      if ($g.ret < 4096) {{ break; }}
      @u[pid, $h, $j] = $g.ret;
      $bp = $g.next;
      $j++;
    }}
  }}
}}
interval:s:{interval} {{
  @reports = @reports + 1;
  if (@reports % {seen_reset} == 0) {{ clear(@seen); }}
  if (@reports % {procs_reset} == 0) {{ clear(@procs); }}
  print(@c); clear(@c);
  print(@u); clear(@u);
  printf("{END_MARK}\\n");
}}
END {{
  clear(@seen); clear(@reports); clear(@procs);
  print(@c); clear(@c);
  print(@u); clear(@u);
  printf("{END_MARK}\\n");
}}
"""


# @c[pid, tid, comm, hash, <kstack lines>]: count ; the comm may hold anything but a newline
_COUNT = re.compile(r"^@c\[(\d+), (\d+), (.*), (-?\d+), \n?((?:\t[^\n]*\n)*)\]: (\d+)$", re.M)
_KADDR = re.compile(r"^\t([0-9a-f]+) ", re.M)
_FRAME = re.compile(r"^@u\[(\d+), (-?\d+), (\d+)\]: (-?\d+)$", re.M)

Row = tuple[int, int, str, tuple[int, ...], tuple[int, ...], int]
"""(pid, tid, comm, kernel addresses leaf first, user addresses leaf first, count)."""


class NativeReportParser:
    """One printed report's text -> rows (pure).

    User stacks are printed once (the first sample's), so they are remembered
    per (pid, hash); a count whose stack was not printed yet (its first sample
    raced the report boundary) waits one report for it, then is dropped and
    counted in ``unresolved``.
    """

    def __init__(self, max_known: int = MAX_KNOWN) -> None:
        self.known: dict[tuple[int, int], tuple[int, ...]] = {}
        self.max_known = max_known
        self._waiting: list[tuple[int, int, str, int, tuple[int, ...], int]] = []
        self.unresolved = 0

    def parse(self, text: str) -> list[Row]:
        frames: dict[tuple[int, int], dict[int, int]] = {}
        for pid, h, i, a in _FRAME.findall(text):
            frames.setdefault((int(pid), int(h) & MASK), {})[int(i)] = int(a) & MASK
        known = self.known
        if len(known) + len(frames) > self.max_known:  # the program re-stores every stack within seen_reset
            known.clear()
        for key, fr in frames.items():
            n = len(fr)
            if n and sorted(fr) == list(range(n)):
                known[key] = tuple(fr[i] for i in range(n))
        rows: list[Row] = []
        waiting, self._waiting = self._waiting, []
        for pid, tid, comm, h, kips, count in waiting:
            user = known.get((pid, h))
            if user is None:
                self.unresolved += count
            else:
                rows.append((pid, tid, comm, kips, user, count))
        for pid_s, tid_s, comm, h_s, kblock, count_s in _COUNT.findall(text):
            pid, tid, h, count = int(pid_s), int(tid_s), int(h_s) & MASK, int(count_s)
            kips = tuple(int(a, 16) for a in _KADDR.findall(kblock)) if kblock else ()
            if h == FNV_OFFSET:  # a kernel thread, or a task without user registers: no user frames
                user: tuple[int, ...] | None = ()
            else:
                user = known.get((pid, h))
            if user is None:
                self._waiting.append((pid, tid, comm, h, kips, count))
                continue
            rows.append((pid, tid, comm, kips, user, count))
        return rows

    def forget(self, pids: set[int]) -> None:
        """Drop remembered stacks of processes that are gone."""
        if pids:
            for key in [k for k in self.known if k[0] in pids]:
                del self.known[key]


def chain_key(pid: int, tid: int, kips: tuple[int, ...], user: tuple[int, ...]) -> bytes:
    """A row as the bytes a perf sample carries (pid, tid, nr, perf's context-marked call chain)."""
    ips: list[int] = []
    if kips:
        ips.append(CONTEXT_KERNEL)
        ips.extend(kips)
    if user:
        ips.append(CONTEXT_USER)
        ips.extend(user)
    return struct.pack(f"<IIQ{len(ips)}Q", pid, tid, len(ips), *ips)


# an executable mapping of /proc/PID/maps: start-end perms offset major:minor inode path
_EXEC_MAP = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ..x. ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+) *(.*)$", re.M)


def read_proc_maps(proc_root: str, pid: int) -> _Maps | None:
    """A process's executable mappings from ``/proc/PID/maps`` (keys as perf's MMAP2: device, inode).

    A regex over the whole file: a browser's or a database's maps have thousands of lines, few executable.
    """
    try:
        with open(f"{proc_root}/{pid}/maps", "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    maps = _Maps()
    for lo, hi, off, maj, mnr, ino_s, path in _EXEC_MAP.findall(text):
        path = path or "//anon"
        if path.endswith(" (deleted)"):
            path = path[:-10]
        ino = int(ino_s)
        key: object = (int(maj, 16), int(mnr, 16), ino) if ino else path
        start = int(lo, 16)
        maps.starts.append(start)  # the kernel lists mappings in address order
        maps.rows.append((start, int(hi, 16), int(off, 16), path, key))
    return maps


class ProcMapsNamer(PerfDataReader):
    """perf's naming caches over counts from the kernel; mappings read from ``/proc`` rather than the stream."""

    def __init__(self, *, proc_root: str = "/proc", files: FileSymbols | None = None,
                 kernel: KernelSymbols | None = None, jit: JitMaps | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(proc_root=proc_root, files=files, kernel=kernel, jit=jit)
        self.proc_root = proc_root
        self.clock = clock
        self._read_at: dict[int, float] = {}
        self._last_seen: dict[int, int] = {}
        self._reports = 0
        self.maps_reads = 0
        self.python_pids: set[int] = set()  # processes with a thread running CPython's own code

    def name_rows(self, rows: list[Row]) -> list[tuple[PerfSample, int, bool]]:
        counts: Counter[bytes] = Counter()
        seen: set[int] = set()
        now = self.clock()
        if len(self._comms) > COMMS_MAX:  # threads of exited processes; every row brings its comm again
            self._comms.clear()
        for pid, tid, comm, kips, user, count in rows:
            if self._comms.get(tid) != comm:
                self._comms[tid] = comm
            if user:
                maps = self._maps.get(pid)
                if maps is None or (maps.find(user[0]) is None and now - self._read_at.get(pid, 0.0)
                                    > MAPS_STALE_SECONDS):
                    got = read_proc_maps(self.proc_root, pid)
                    self.maps_reads += 1
                    self._read_at[pid] = now
                    if got is not None:
                        self._maps[pid] = got
                    elif maps is None:
                        self._maps[pid] = _Maps()  # gone before its first report: its addresses stay unnamed
            if pid in self._last_seen and pid not in self.python_pids:
                # a process that ran no CPython code in its earlier reports: its threads are counted as one
                # (the agent reads threads apart only in Python processes), so a server's hundred threads
                # running the same code are named once, not once per thread
                if pid not in self._comms:
                    self._comms[pid] = comm
                tid = pid
            seen.add(pid)
            counts[chain_key(pid, tid, kips, user)] += count
        for pid in seen:
            self._last_seen[pid] = self._reports
        out = self._name_all(counts)
        for sample, _count, interp in out:
            if interp and sample.pid is not None:
                self.python_pids.add(sample.pid)
        self._reports += 1
        return out

    def new_process(self, pid: int) -> None:
        """``pid`` had its first sample, or its first under a new name (an exec): read its mappings now,
        before it exits (a one-second job would be gone by its report)."""
        got = read_proc_maps(self.proc_root, pid)
        self.maps_reads += 1
        self._read_at[pid] = self.clock()
        if got is not None:
            self._maps[pid] = got

    def expire(self) -> set[int]:
        """Forget processes without samples for :data:`PID_IDLE_REPORTS` reports; the pids forgotten."""
        gone = {p for p, r in self._last_seen.items() if self._reports - r > PID_IDLE_REPORTS}
        for pid in gone:
            del self._last_seen[pid]
            self._maps.pop(pid, None)
            self._read_at.pop(pid, None)
            self.python_pids.discard(pid)
            self.jit.forget(pid)
        if gone:
            for tid in [t for t in self._comms if t in gone]:
                del self._comms[tid]
        return gone


class BpfSampler:
    """Runs the counting program and feeds ``sink(sample, count)`` once per distinct stack per report.

    The same interface as :class:`profiler.samplers.perf.PerfSampler` (the agent uses either).
    ``ready(timeout)`` says whether the program loaded; the agent falls back to perf when it did not.
    """

    name = "bpf"
    fallbacks = 0

    def __init__(
        self,
        sink: Callable[[PerfSample, int], None],
        *,
        on_interpreter: Callable[[int, int], None] | None = None,
        bpftrace: str = "bpftrace",
        frequency: int = 99,
        interval: int = 2,
        max_depth: int = 64,
        runner: Runner = default_runner,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        stable_after: float = 60.0,
        proc_root: str = "/proc",
    ) -> None:
        self.sink = sink
        self.on_interpreter = on_interpreter
        self.bpftrace = bpftrace
        self.frequency, self.interval, self.max_depth = frequency, max(1, int(interval)), max_depth
        self.runner = runner
        self.clock = clock
        self.backoff = backoff or Backoff(1.0, 60.0)
        self.stable_after = stable_after
        self.proc_root = proc_root
        self.namer = ProcMapsNamer(proc_root=proc_root, clock=clock)
        self.parser = NativeReportParser()
        self.stats_counted = False  # the agent holds a BPF_ENABLE_STATS fd
        self.restarts = 0
        self.gap_seconds = 0.0
        self.samples = 0
        self.reports = 0
        self.last_error = ""
        self._bpf_done = 0.0
        self._ready = threading.Event()
        self._failed = threading.Event()
        self._stop = threading.Event()
        self._proc: Proc | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.workdir = tempfile.mkdtemp(prefix="flamewatch-bpf-")

    # -- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="bpf-sampler", daemon=True)
        self._thread.start()

    def ready(self, timeout: float = READY_TIMEOUT) -> bool:
        """Wait until the program runs (True) or its first start failed (False, ``last_error`` says why)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready.is_set():
                return True
            if self._failed.is_set():
                return False
            self._ready.wait(0.1)
        self.last_error = self.last_error or f"bpftrace did not start within {timeout:.0f} s"
        return self._ready.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop bpftrace (SIGINT: it prints the last report, which reaches the sink)."""
        self._stop.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            # the program's run time goes with bpftrace's fds: read it before they close
            self._bpf_done += bpf_run_seconds(proc.pid, self.proc_root, counted=self.stats_counted) or 0.0
            with self._lock:
                self._proc = None
            try:
                proc.send_signal(2)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def child_pids(self) -> list[int]:
        with self._lock:
            p = self._proc
        return [p.pid] if p is not None and p.poll() is None else []

    def bpf_seconds(self) -> float | None:
        """Run time of the counting program (``run_time_ns``), None when the kernel does not count it."""
        with self._lock:
            p = self._proc
        now = bpf_run_seconds(p.pid, self.proc_root, counted=self.stats_counted) if p is not None else None
        if now is None and not self._bpf_done:
            return None
        return self._bpf_done + (now or 0.0)

    # -- the loop
    def _loop(self) -> None:
        down_since: float | None = None
        while not self._stop.is_set():
            started = self.clock()
            if down_since is not None:
                self.gap_seconds += started - down_since
            try:
                self.run_once()
            except Exception as e:  # a sampler problem must never take the agent down
                self.last_error = str(e)
                log.error("bpf sampler failed: %s", e)
            if not self._ready.is_set():
                self._failed.set()
                return  # never loaded: the agent decides (perf fallback); no restart loop
            if self._stop.is_set():
                break
            down_since = self.clock()
            if down_since - started > self.stable_after:
                self.backoff.reset()
            delay = self.backoff.next()
            self.restarts += 1
            log.warning("bpftrace sampler stopped (%s); restarting in %.1f s", self.last_error or "exited", delay)
            self._stop.wait(delay)

    def run_once(self) -> None:
        path = os.path.join(self.workdir, "native.bt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(native_script(frequency=self.frequency, interval=self.interval, max_depth=self.max_depth))
        # map keys: distinct stacks per report; the stack map holds every distinct kernel stack
        # perf ring buffer pages per CPU for bpftrace's print/clear actions and printf events: a report is
        # hundreds of KB, and an action lost while bpftrace waits on the pipe loses that report's counts
        env = dict(os.environ, BPFTRACE_MAP_KEYS_MAX="262144", BPFTRACE_STRLEN="16", BPFTRACE_PERF_RB_PAGES="256")
        proc = self.runner([self.bpftrace, path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, start_new_session=True)
        with self._lock:
            self._proc = proc
        err: list[str] = []
        t_err = threading.Thread(target=_read_err, args=(proc, err), name="bpf-sampler-err", daemon=True)
        t_err.start()
        try:
            self._read(proc)
        finally:
            rc = proc.wait()
            t_err.join(2)
            with self._lock:
                self._proc = None
        tail = err[-1] if err else ""
        self.last_error = f"bpftrace exited with status {rc}" + (f": {tail}" if tail else "")
        if not self._ready.is_set():
            log.error("bpf sampler could not start: %s", self.last_error)

    def _read(self, proc: Proc) -> None:
        """Read bpftrace's output: new processes' maps at once, reports handed to a naming thread.

        Naming a report takes a while on a loaded node; a new process's notice read only after it would
        often find the process gone (measured: 9 of 66 samples of 0.3 s jobs unnamed at load 10)."""
        reports: queue.Queue[str | None] = queue.Queue(maxsize=REPORTS_QUEUED)
        namer = threading.Thread(target=self._name_reports, args=(reports,), name="bpf-sampler-names", daemon=True)
        namer.start()
        try:
            self._read_into(proc, reports)
        finally:
            reports.put(None)
            namer.join()

    def _name_reports(self, reports: queue.Queue[str | None]) -> None:
        while (text := reports.get()) is not None:
            try:
                self._report(text)
            except Exception as e:  # one bad report must not stop the next ones
                self.last_error = f"naming a report: {e}"
                log.error("bpf sampler: naming a report failed: %s", e)

    def _read_into(self, proc: Proc, reports: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        _grow_pipe(fd)  # bpftrace writes a report while the agent still names the previous one
        buf = ""
        end = END_MARK + "\n"
        while True:
            data = os.read(fd, 1 << 20)
            if not data:
                break
            scan = buf.rfind("\n") + 1  # the first line not scanned for new processes yet
            buf += data.decode("utf-8", "replace")
            if not self._ready.is_set() and READY_MARK in buf:
                buf = buf.split(READY_MARK + "\n", 1)[-1]
                scan = 0
                self._ready.set()
                log.info("bpf sampler running: kernel + native stacks counted in the kernel at %d Hz", self.frequency)
            if NEW_MARK in buf[scan:]:  # new processes: their mappings are read at once
                for pid in _NEW.findall(buf, scan, buf.rfind("\n") + 1):
                    self.namer.new_process(int(pid))
            while end in buf:
                report, buf = buf.split(end, 1)
                reports.put(report)
            if len(buf) > REPORT_MAX:  # bound: a report that never ends is dropped, not kept growing
                log.warning("bpf sampler: a report over %d MB without its end marker was dropped", REPORT_MAX >> 20)
                buf = ""

    def _report(self, text: str) -> None:
        rows = self.parser.parse(text)
        out = self.namer.name_rows(rows)
        self.parser.forget(self.namer.expire())
        self.reports += 1
        sink, on_interp = self.sink, self.on_interpreter
        n = 0
        for sample, count, interp in out:
            if interp and on_interp is not None and sample.tid is not None:  # before the sample (drains)
                on_interp(sample.pid if sample.pid is not None else sample.tid, sample.tid)
            sink(sample, count)
            n += count
        self.samples += n


def _read_err(proc: Proc, out: list[str]) -> None:
    assert proc.stderr is not None
    for raw in iter(proc.stderr.readline, b""):
        line = raw.decode("utf-8", "replace").strip()
        if not line or "RLIMIT_MEMLOCK" in line or line.startswith("Attaching"):
            continue
        if "Lost" in line and "events" in line:  # bpftrace could not keep up: counts of a report are lost
            log.warning("bpftrace (sampler): %s", line)
            continue
        if len(out) < 100:
            out.append(line)
        log.info("bpftrace (sampler): %s", line)


def check(path: str) -> str:
    """The resolved bpftrace path, or :class:`SamplerUnavailable` saying how to get it (or use perf)."""
    try:
        return check_bpftrace(path)
    except SamplerUnavailable:
        raise SamplerUnavailable(f"bpftrace not found at {path!r}: {MISSING_HELP}") from None
