"""System-wide kernel + native stacks from one long-lived ``perf record``.

``perf record -F HZ -a -g -m PAGES -o -`` streams into ``perf script -i -``
(a pipe, no files). Both stay up for the agent's life, so perf pays its
start-up (kernel symbol loading) once. The small ring buffer (``-m``) makes
perf hand over samples within a second or two instead of when a large buffer
fills, which keeps the sample-to-query delay well under 15 s. The text is
parsed by :class:`stacks.perf.SampleParser`, once per distinct sample block,
and ``sink`` gets each distinct sample with its count. A block whose frames
include CPython's own code (a frame in the ``python3.X`` binary or
``libpython``) is reported to ``on_interpreter(pid, tid)`` first: that thread
runs Python, so the agent may name its samples with py-spy's Python stacks;
the other threads of a Python process (an SDK's native sampler, a Rust or C++
worker pool) keep their native frames.

Two readers (``reader``): ``data`` (default, issue 25) reads perf record's
binary stream itself (:mod:`profiler.samplers.perfdata`: no ``perf script``,
each distinct call chain named once through address caches, a few
microseconds per sample); ``script`` is the text pipeline above, kept as the
fallback: the sampler switches to it, logs why and counts it
(``fallbacks``), when the binary stream holds something the reader does not
understand.

If perf dies, it is restarted with exponential backoff and the time without
sampling is counted as a gap.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import select
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from ground.tools import ToolNotFound, find_tool
from profiler.samplers.base import Backoff, Proc, Runner, SamplerUnavailable, default_runner
from profiler.samplers.perfdata import BUILT, PerfDataReader, UnsupportedStream
from profiler.symbols import FileSymbols, JitMaps, KernelSymbols
from stacks.perf import PerfSample, SampleParser

log = logging.getLogger(__name__)

# Only what the agent uses: time, period and event would add ~12 % more text to
# print and parse per sample (measured), and counts are samples anyway.
SCRIPT_FIELDS = "comm,pid,tid,ip,sym,dso"
# Bytes the pipe from perf script may hold while the reader sleeps between
# batches (F_SETPIPE_SZ; the default 64 KiB is ~1 s of text on a busy 2-core
# node). Larger than fs.pipe-max-size falls back to the default.
PIPE_BYTES = 1 << 20
# Distinct sample blocks remembered with their parsed samples (a few MB at most).
BLOCK_CACHE_MAX = 20000
# perf script pads user addresses (< 16 hex digits) with spaces and prints kernel
# ones with all 16: both become constants of the same half, which is all the
# parser reads from them (kernel or user for an [unknown] module).
_KERNEL_ADDR = re.compile(rb"\t *ffff[89a-f][0-9a-f]{11} ")
_USER_ADDR = re.compile(rb"\t +[0-9a-f]+ ")
# A frame line whose module is CPython itself: the python3.X binary (any build
# suffix: d, t) or libpython3.X.so. Only the module is read, so stripped or
# unsymbolised interpreters ("[unknown] (/usr/bin/python3.11)") count too.
_INTERPRETER = re.compile(r"\((?:[^()\n]*/)?(?:lib)?python[0-9.]*[a-z]?(?:\.so[0-9.]*)?\)[ \t]*$", re.M)

MISSING_HELP = (
    "install it (Debian: apt install linux-perf; Ubuntu: apt install linux-tools-$(uname -r)), "
    "set --perf-path, or run without perf (--perf false)"
)
PERMISSION_HELP = (
    "run the agent as root, or grant CAP_PERFMON and CAP_SYS_ADMIN (Kubernetes: privileged: true or "
    "securityContext.capabilities.add), or lower the limit with `sysctl kernel.perf_event_paranoid=-1`"
)
_PERMISSION_MARKERS = (
    "perf_event_paranoid",
    "Permission denied",
    "No permission",
    "Access to performance monitoring",
    "Operation not permitted",
)


# With ``--control`` (perf 5.10+): the CPU clock without the idle task (``:I`` sets ``exclude_idle``).
# perf's default event is the ``cycles`` counter where the CPU has one and ``cpu-clock`` in most VMs,
# which samples an idle CPU's idle task at the full rate: 190 samples a second on an idle 2-CPU VM
# here, and on a half-busy 16-CPU node as many as its busy samples, each written by perf, read, named
# and pushed. Time, not cycles, is what a sample stands for (10 ms at 99 Hz), and the bpf sampler does
# not sample the idle task either. Those samples also kept perf's buffers flowing: perf writes a CPU's
# ring buffer out when it is half full, which on a quiet node takes minutes without them, so the
# sampler writes ``ping`` to perf's control pipe every ``batch_seconds`` and perf writes out what it
# has. A perf without ``--control`` (:func:`supports_control`) keeps its default event.
EVENT = "cpu-clock:I"
# perf's ring buffer pages per CPU when ``mmap_pages`` is 0 (auto). perf writes a CPU's ring out when it
# is half full, waking up for it; a ping writes out everything. Where the sampler pings (``--control``)
# a larger ring costs nothing in delay and far fewer wake-ups: perf record used 0.46 ms of CPU a second
# with 8 pages and 0.10 with 64 at a busy 16-CPU node's sample rate here (bench notes in docs/agent.md).
# Without pings a small ring keeps a quiet node's samples within a few seconds.
MMAP_PAGES_PINGED, MMAP_PAGES_UNPINGED = 64, 8


def record_argv(perf: str, frequency: int, mmap_pages: int, control_fd: int | None = None) -> list[str]:
    """perf record's command line; with ``control_fd``, the idle task is not sampled and perf reads
    commands (``ping``: write the buffers out) from that descriptor."""
    event = [] if control_fd is None else ["-e", EVENT, "--control", f"fd:{control_fd}"]
    return [perf, "record", *event, "-F", str(frequency), "-a", "-g", "-q", "-m", str(mmap_pages), "-o", "-"]


def supports_control(perf: str, runner: Runner = default_runner, timeout: float = 30.0) -> bool:
    """Whether this perf samples without the idle task and takes ``--control`` commands (a 0 s trial)."""
    r, w = os.pipe()
    try:
        argv = [perf, "record", "-e", EVENT, "--control", f"fd:{r}", "-F", "99", "-a", "-q", "-o", os.devnull,
                "--", "true"]
        proc = runner(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                      pass_fds=(r,))
        try:
            return proc.wait(timeout=timeout) == 0
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False
    except OSError:
        return False
    finally:
        os.close(r)
        os.close(w)


def script_argv(perf: str) -> list[str]:
    return [perf, "script", "-i", "-", "-F", SCRIPT_FIELDS]


def explain_failure(perf: str, returncode: int | None, stderr: str) -> SamplerUnavailable:
    """A clear error from perf's exit status and stderr text."""
    text = stderr.strip()
    first = text.splitlines()[0] if text else f"exit status {returncode}"
    if any(m in text for m in _PERMISSION_MARKERS):
        setting = ""
        for line in text.splitlines():
            if "perf_event_paranoid setting is" in line:
                setting = " (" + line.strip().rstrip(":") + ")"
        return SamplerUnavailable(f"perf is not permitted to sample all CPUs{setting}: {PERMISSION_HELP}")
    if "not found for kernel" in text or "command not found" in text or returncode == 127:
        return SamplerUnavailable(f"perf at {perf!r} does not work for this kernel ({first}): {MISSING_HELP}")
    return SamplerUnavailable(f"perf record failed ({first}); run `{perf} record -a -g -- true` to see why")


def preflight(perf: str, frequency: int, runner: Runner = default_runner, timeout: float = 30.0) -> str:
    """The resolved perf path once it may sample every CPU; :class:`SamplerUnavailable` (with the fix) if not."""
    try:
        perf = find_tool(perf)
    except ToolNotFound as e:
        raise SamplerUnavailable(f"perf not found ({e}): {MISSING_HELP}") from None
    argv = [perf, "record", "-F", str(frequency), "-a", "-g", "-q", "-o", os.devnull, "--", "true"]
    try:
        proc = runner(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise SamplerUnavailable(f"perf not found at {perf!r}: {MISSING_HELP}") from None
    except PermissionError:
        raise SamplerUnavailable(f"perf at {perf!r} is not executable: {MISSING_HELP}") from None
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SamplerUnavailable(f"perf record did not finish a 0 s trial in {timeout:.0f} s") from None
    err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
    if rc != 0:
        raise explain_failure(perf, rc, err)
    return perf


class PerfSampler:
    """Runs the perf pipeline in a thread and feeds ``sink(sample, count)`` (identical samples counted).

    ``runner`` starts processes (``subprocess.Popen`` by default), ``clock``
    is monotonic and ``sleep`` waits (both injected so tests need no real
    time). ``restarts`` and ``gap_seconds`` count the outages.
    """

    name = "perf"

    def __init__(
        self,
        sink: Callable[[PerfSample, int], None],
        *,
        on_interpreter: Callable[[int, int], None] | None = None,
        perf: str = "perf",
        frequency: int = 99,
        mmap_pages: int = 0,
        runner: Runner = default_runner,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        stable_after: float = 60.0,
        batch_seconds: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        reader: str = "data",
        proc_root: str = "/proc",
        batch_sink: Callable[[list[tuple[PerfSample, int, bool]]], object] | None = None,
        control: bool = False,
    ) -> None:
        if reader not in ("data", "script"):
            raise ValueError(f"perf reader {reader!r}: use 'data' or 'script'")
        self.sink = sink
        # the binary reader's whole batch of (sample, count, runs CPython) in one call (the agent's collector);
        # sink and on_interpreter are then not called for it
        self.batch_sink = batch_sink
        # perf takes --control (supports_control): no idle-task samples, buffers written out on a ping
        self.control = control
        self.pings = 0
        self._said_pure = False
        self.reader = reader
        self.fallbacks = 0
        self.proc_root = proc_root
        # Symbol caches outlive a perf restart (a new stream re-announces every mapping).
        self._files = FileSymbols(proc_root)
        self._kernel = KernelSymbols(f"{proc_root}/kallsyms")
        self._jit = JitMaps(proc_root)
        self.on_interpreter = on_interpreter
        self.perf = perf
        self.frequency = frequency
        # 0: as large as the pings allow (MMAP_PAGES_PINGED), else small enough to flow on its own
        self.mmap_pages = mmap_pages or (MMAP_PAGES_PINGED if control else MMAP_PAGES_UNPINGED)
        self.runner = runner
        self.clock = clock
        self.backoff = backoff or Backoff(1.0, 60.0)
        self.stable_after = stable_after
        self.batch_seconds = batch_seconds
        self.sleep = sleep
        self.restarts = 0
        self.gap_seconds = 0.0
        self.samples = 0
        self.last_error = ""
        self._blocks: dict[str, tuple[tuple[PerfSample, ...], bool]] = {}
        self._parser = SampleParser()
        self._stop = threading.Event()
        self._procs: list[Proc] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="perf-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop perf record (SIGINT, so it writes out what it has) and drain the pipe."""
        self._stop.set()
        with self._lock:
            procs = list(self._procs)
        if procs:
            try:
                procs[0].send_signal(2)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def child_pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._procs if p.poll() is None]

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
                log.error("perf sampler failed: %s", e)
            if self._stop.is_set():
                break
            down_since = self.clock()
            if down_since - started > self.stable_after:
                self.backoff.reset()
            delay = self.backoff.next()
            self.restarts += 1
            log.warning("perf stopped (%s); restarting in %.1f s", self.last_error or "exited", delay)
            self._stop.wait(delay)

    def run_once(self) -> None:
        """One perf record | perf script pipeline, read until it ends."""
        if not self.control:
            self._run_record(self.runner(record_argv(self.perf, self.frequency, self.mmap_pages),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            return
        r, w = os.pipe()
        try:
            rec = self.runner(record_argv(self.perf, self.frequency, self.mmap_pages, control_fd=r),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(r,))
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        os.set_blocking(w, False)
        try:
            self._run_record(rec, lambda: self._ping(w))
        finally:
            os.close(w)

    def _ping(self, w: int) -> None:
        """Ask perf to write out its buffers (a quiet CPU's would wait half full); the reader does this every
        ``batch_seconds``, waking for it if perf is silent (a thread of its own cost ~0.25 ms of CPU a
        second on the busy bench: a wake-up and the GIL twice a second)."""
        try:
            os.write(w, b"ping\n")
            self.pings += 1
        except OSError:  # perf is behind on its commands (it will write out anyway), or gone (the reader
            pass  # sees the end of its stream)

    def _run_record(self, rec: Proc, ping: Callable[[], None] | None = None) -> None:
        """Read one running perf record until it ends: its stream here, or through perf script; ``ping``
        asks it to write out its buffers (every ``batch_seconds``, from the reader's loop)."""
        if self.reader == "data":
            self._run_data(rec, ping)
            return
        try:
            scr = self.runner(script_argv(self.perf), stdin=rec.stdout, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
        except Exception:
            rec.kill()
            rec.wait()
            raise
        if rec.stdout is not None:
            rec.stdout.close()  # perf script owns the read end now
        with self._lock:
            self._procs = [rec, scr]
        err_chunks: list[bytes] = []
        err_thread = threading.Thread(target=_drain, args=(rec.stderr, err_chunks), daemon=True)
        err_thread.start()
        try:
            self._read(scr, ping=ping)
        finally:
            rc = rec.wait()
            scr.wait()
            err_thread.join(2)
            with self._lock:
                self._procs = []
        err = b"".join(err_chunks).decode("utf-8", "replace")
        if rc not in (0, -2, 130) and not self._stop.is_set():
            self.last_error = str(explain_failure(self.perf, rc, err))
        else:
            self.last_error = f"perf record exited with status {rc}"

    @property
    def reader_kind(self) -> str:
        """What reads perf's samples now: ``data, compiled``, ``data, pure`` (the compiled loop was not built:
        about twice the CPU per sample) or ``script`` (perf script, the fallback)."""
        if self.reader == "script":
            return "script"
        return "data, compiled" if BUILT else "data, pure"

    def _run_data(self, rec: Proc, ping: Callable[[], None] | None = None) -> None:
        """perf record's own stream read here (no perf script); on a stream it cannot read: the fallback."""
        with self._lock:
            self._procs = [rec]
        err_chunks: list[bytes] = []
        err_thread = threading.Thread(target=_drain, args=(rec.stderr, err_chunks), daemon=True)
        err_thread.start()
        reader = PerfDataReader(files=self._files, kernel=self._kernel, jit=self._jit)
        if not BUILT and not self._said_pure:
            self._said_pure = True
            log.warning("perf.data reader: the compiled loop is not built (reinstall with a C compiler: pip install "
                        "-e .); the pure loop costs about twice the CPU per sample")

        def parse(data: bytes, final: bool = False) -> bytes:
            self._emit(reader.feed(data, final))
            return b""

        try:
            self._read(rec, parse, ping)
        except UnsupportedStream as e:
            self.fallbacks += 1
            self.reader = "script"
            log.error("perf's binary stream not readable (%s): falling back to perf script", e)
            rec.kill()
        finally:
            rc = rec.wait()
            err_thread.join(2)
            with self._lock:
                self._procs = []
        err = b"".join(err_chunks).decode("utf-8", "replace")
        if rc not in (0, -2, -9, 130) and not self._stop.is_set():
            self.last_error = str(explain_failure(self.perf, rc, err))
        else:
            self.last_error = f"perf record exited with status {rc}"

    def _emit(self, samples: list[tuple[PerfSample, int, bool]]) -> None:
        if self.batch_sink is not None:
            self.batch_sink(samples)
            self.samples += sum(count for _, count, _ in samples)
            return
        sink, on_interp = self.sink, self.on_interpreter
        n = 0
        for sample, count, interp in samples:
            if interp and on_interp is not None and sample.tid is not None:  # before the sample (drains)
                on_interp(sample.pid if sample.pid is not None else sample.tid, sample.tid)
            sink(sample, count)
            n += count
        self.samples += n

    def _read(self, scr: Proc, parse: Callable[..., bytes] | None = None,
              ping: Callable[[], None] | None = None) -> None:
        """Parse whole sample blocks in batches (blocks end at a blank line).

        perf script writes many small chunks; waking up for each one was about
        a sixth of the agent's CPU in a profile. So the reader sleeps ``batch_seconds``
        between reads while the pipe (enlarged to ``PIPE_BYTES``) fills, then
        takes everything at once: a few reads and one parse per batch. With ``ping``
        it asks perf to write out its buffers every ``batch_seconds``, and waits for
        data at most that long (a quiet node's perf writes nothing until asked).
        """
        assert scr.stdout is not None
        parse = parse or self._parse
        fd = scr.stdout.fileno()
        _grow_pipe(fd)
        buf = b""
        pending: list[bytes] = []
        last = pinged = self.clock()
        while True:
            if ping is not None:
                if self.clock() - pinged >= self.batch_seconds:
                    pinged = self.clock()
                    ping()
                if not select.select([fd], [], [], self.batch_seconds)[0]:
                    continue  # nothing yet: ping again
            data = os.read(fd, PIPE_BYTES)
            if not data:
                break
            pending.append(data)
            now = self.clock()
            wait = self.batch_seconds - (now - last)
            if wait > 0:
                if not self._stop.is_set():
                    self.sleep(wait)
                continue
            last = now
            buf = parse(buf + b"".join(pending))
            pending = []
        buf = parse(buf + b"".join(pending), final=True)

    def _parse(self, data: bytes, final: bool = False) -> bytes:
        """Hand the whole sample blocks in ``data`` to the sink; returns the unfinished tail.

        Without the time field, and with instruction addresses made constant
        (they vary inside a function but only say kernel or user half),
        a block's text is fully determined by (comm, pid/tid, stack), and a
        node repeats the same few hundred blocks over and over. So identical
        blocks are counted first (C speed: ``re.sub``, ``split``, ``Counter``)
        and each distinct block is parsed once and remembered; the frame
        parser's line cache lives as long as the block cache. Measured on a
        30 s capture of this machine: 3x less CPU than parsing every sample.
        """
        cut = len(data) if final else data.rfind(b"\n\n") + 2
        if cut <= 1:
            return data
        chunk = _USER_ADDR.sub(b"\t0 ", _KERNEL_ADDR.sub(b"\tffffffffffffffff ", data[:cut]))
        blocks = chunk.decode("utf-8", "replace").split("\n\n")
        if final and blocks:
            blocks.pop()  # "" after a closing blank line, else a truncated sample (dropped, like the parser)
        cache = self._blocks
        if len(cache) > BLOCK_CACHE_MAX:  # pids and stacks churn; start over rather than grow
            cache.clear()
            self._parser = SampleParser()
        out: list[tuple[PerfSample, int, bool]] = []
        for block, count in Counter(blocks).items():
            got = cache.get(block)
            if got is None:
                got = cache[block] = (self._parser.block(block), _INTERPRETER.search(block) is not None)
            samples, interp = got
            out.extend((sample, count, interp) for sample in samples)
        self._emit(out)  # the same hand-over as the binary reader's
        return data[cut:]


def _grow_pipe(fd: int) -> None:
    """Enlarge a pipe's buffer where the kernel allows it (Linux only; best effort)."""
    setsz = getattr(fcntl, "F_SETPIPE_SZ", 1031)
    try:
        fcntl.fcntl(fd, setsz, PIPE_BYTES)
    except OSError:  # above fs.pipe-max-size for an unprivileged agent, or not a pipe
        pass


def _drain(stream: object, out: list[bytes]) -> None:
    if stream is None:
        return
    try:
        for chunk in iter(lambda: stream.read(4096), b""):  # type: ignore[attr-defined]
            if sum(map(len, out)) < 1 << 16:
                out.append(chunk)
    except (OSError, ValueError):
        pass


def live_argv(perf: str, frequency: int, mmap_pages: int) -> Sequence[Sequence[str]]:
    """The two command lines the sampler runs (for logs and docs)."""
    return record_argv(perf, frequency, mmap_pages), script_argv(perf)
