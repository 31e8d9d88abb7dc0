"""`flamewatch demo`: the slow-admin-page story on one machine.

Starts ``flamewatch serve`` (SQLite), the agent when root and perf allow, the
three tinyhats services (one process each, labelled like pods in namespace
``default``, profiled by the pyroscope-io SDK) and a load generator. Phase 1
runs the buggy admin page; then admin-service is switched to the fix and
phase 2 runs. Phase boundaries sit on aggregator window boundaries so the
prepared diff compares clean windows. Everything started here is stopped on
Ctrl-C/SIGTERM, the server last so the final profiles land.

The state (URLs, phase times, pids) is written to ``<data_dir>/demo.json``
so scripts and tests can follow the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import random
import secrets
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlencode

import aiohttp

from flamewatch.demo.settings import FAST_PHASE_SECONDS, FAST_UPLOAD_INTERVAL, DemoSettings
from ground.tools import ToolNotFound, find_tool

NAMESPACE = "default"
WALL = "wall:wall:nanoseconds:wall:nanoseconds"  # the agent's wall-clock profile type (--wall)
SERVICES = ("manipulation-service", "admin-service", "frontend")  # start order: dependencies first
PR_SET_PDEATHSIG = 1
AGENT_RESTARTS = 3  # an agent that dies more often than this stops the demo (exit 1)



@dataclass(frozen=True)
class _Plan:
    """The demo's timeline (clock seconds) and the addresses it drives."""

    t0: float
    fix_at: float
    end: float
    urls: dict[str, str]
    frontend: str
    admin: str
    manipulation: str
    before: tuple[int, int] = (0, 0)  # the diff's ranges (windows): before and after the fix
    after: tuple[int, int] = (0, 0)

class DemoError(RuntimeError):
    """The demo cannot start; the message says what to change."""


# --------------------------------------------------------------------------- pure helpers

def align_up(t: float, window: int) -> int:
    """The first window boundary at or after ``t``."""
    return int(math.ceil(t / window) * window)


def align_down(t: float, window: int) -> int:
    return int(t // window * window)


def pod_name(service: str, rng: random.Random | None = None) -> str:
    """A Deployment-style pod name: ``<service>-<10 hex>-<5 alnum>``."""
    pick = (rng or secrets.SystemRandom()).choice
    alnum = string.ascii_lowercase + string.digits
    return (f"{service}-{''.join(pick('0123456789abcdef') for _ in range(10))}-"
            f"{''.join(pick(alnum) for _ in range(5))}")


def agent_status(
    euid: int, perf_path: str | None, perf_works: Callable[[str], str | None], mode: str
) -> tuple[bool, str]:
    """Whether to run the agent and why, from injected facts (testable without root).

    ``perf_works(path)`` returns None when ``perf`` runs, else a reason.
    """
    if mode == "off":
        return False, "off (--agent off)"
    reasons = []
    if euid != 0:
        reasons.append("not running as root (perf -a and py-spy need root or CAP_PERFMON/CAP_SYS_PTRACE)")
    if perf_path is None:
        reasons.append("perf is not installed (apt-get install linux-perf)")
    else:
        why = perf_works(perf_path)
        if why:
            reasons.append(why)
    if not reasons:
        return True, "on (perf + py-spy sample every process on this machine)"
    return False, "; ".join(reasons)


def fit_phases(t0: float, phase: int, window: int, deadline: float, tail: float) -> tuple[int, int, int]:
    """(phase seconds, switch time, end time): phases on window boundaries, shortened by whole
    windows (to one at least) so that ``end + tail`` comes before ``deadline`` (0: no deadline)."""
    while True:
        switch = align_up(t0 + phase, window)
        end = align_up(switch + phase, window)
        if not deadline or end + tail <= deadline or phase <= window:
            return phase, switch, end
        phase = max(window, phase - window)


def check_perf(path: str) -> str | None:
    """None when ``perf --version`` runs; else why not (Debian's wrapper fails on kernel mismatch)."""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"perf at {path} does not run: {e}"
    if proc.returncode != 0:
        first = (proc.stderr or proc.stdout).strip().splitlines()[:1]
        return f"perf at {path} fails: {first[0] if first else 'exit ' + str(proc.returncode)}"
    return None


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def viewer_urls(
    server: str, admin_sel: str, base: tuple[int, int], compare: tuple[int, int]
) -> dict[str, str]:
    """Links printed for the user: the viewer, the namespace view, the admin-service
    flamegraph before the fix, and the prepared diff (viewer page and API).

    The viewer keeps its state in the URL (viewer/static/app.js): label filters as
    repeated ``namespace=``/``container=`` parameters, ``mode=diff`` with
    ``bfrom``/``buntil``/``cfrom``/``cuntil`` and ``dmode`` for a diff.
    """
    admin = {"namespace": NAMESPACE, "container": "admin-service"}
    diff = {"base": admin_sel, "base_from": base[0], "base_until": base[1],
            "compare": admin_sel, "compare_from": compare[0], "compare_until": compare[1]}
    return {
        "viewer": f"{server}/",
        "namespace": f"{server}/?"
        + urlencode({"namespace": NAMESPACE, "gb": "container", "from": "now-15m"}),
        "before": f"{server}/?" + urlencode({**admin, "from": base[0], "until": base[1]}),
        "diff_viewer": f"{server}/?" + urlencode({
            "mode": "diff", **admin, "bfrom": base[0], "buntil": base[1],
            "cfrom": compare[0], "cuntil": compare[1], "dmode": "share"}),
        "diff_api": f"{server}/api/v1/diff?" + urlencode({**diff, "mode": "share", "format": "json"}),
        # Wall-clock (the agent's py-spy --idle): where admin-service waits, not only computes.
        "wall_diff_viewer": f"{server}/?" + urlencode({
            "mode": "diff", "type": WALL, **admin, "bfrom": base[0], "buntil": base[1],
            "cfrom": compare[0], "cuntil": compare[1], "dmode": "absolute"}),
        "wall_diff_api": f"{server}/api/v1/diff?" + urlencode(
            {**diff, "mode": "absolute", "format": "json", "profile_type": WALL}),
        # The story's first step: the slowest admin page views (root spans, pyroscope-otel), by
        # line (line=1): a row's flame graph shows createSampleImages and the line of fetchMockup
        # that calls manipulation-service, as file:line. Until the phase's end + 1 s, the range the
        # printed list reads (Runner.show_requests), so the view lists the same requests.
        "requests_before": f"{server}/?" + urlencode({"mode": "requests", "sel": ADMIN_SPANS[0],
                                                      "rname": ADMIN_SPANS[1], "from": base[0],
                                                      "until": base[1] + 1, "line": 1}),
        "requests_after": f"{server}/?" + urlencode({"mode": "requests", "sel": ADMIN_SPANS[0],
                                                     "rname": ADMIN_SPANS[1], "from": compare[0],
                                                     "until": compare[1] + 1, "line": 1}),
    }


# (selector, span name) of the admin page views tinyhats traces (tinyhats.in_span).
ADMIN_SPANS = ('{service_name="admin-service"}', "GET /admin")


def request_lines(doc: dict[str, Any], server: str, limit: int = 3) -> list[str]:
    """Printable lines of a /api/v1/requests answer: the slowest requests, each with the viewer
    link that opens its flame graph by line (the Requests view with that span picked, ``line=1``)."""
    out = []
    for r in doc.get("rows", [])[:limit]:
        took = r["wall_ns"] or r["cpu_ns"]
        what = "wall" if r["wall_ns"] else "CPU"
        link = dict(parse_qsl(str(r["flamegraph"]).partition("?")[2]))
        view = urlencode({"mode": "requests", "span": r["span_id"], "sptype": link.get("profile_type", ""),
                          "line": 1})
        out.append(f"  {r['span_name']}  {took / 1e6:8.0f} ms {what}  pod {r['pod']}  span {r['span_id']}\n"
                   f"    flamegraph: {server}/?{view}")
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# --------------------------------------------------------------------------- children

def _parent_death_signal() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


@dataclass
class Child:
    """One process the demo started, in its own session (so Ctrl-C reaches only the demo)."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    port: int = 0
    pod: str = ""
    reported: bool = False  # its early exit was told to the user already
    _log_file: Any = None

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    async def stop(self, grace: float) -> int | None:
        """SIGTERM, wait ``grace`` s, then SIGKILL the whole process group."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                await self.proc.wait()
        # Grandchildren (perf, py-spy under the agent) share the group; make sure none is left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self._log_file:
            self._log_file.close()
        return self.proc.returncode


@dataclass
class LoadStats:
    """Admin page latency per phase, as the load generator saw it."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    last_error: str = ""

    def summary(self) -> dict[str, float]:
        return {"views": len(self.latencies), "errors": self.errors,
                "p50_ms": round(percentile(self.latencies, 0.5) * 1000, 1),
                "p95_ms": round(percentile(self.latencies, 0.95) * 1000, 1)}

    def line(self) -> str:
        n = len(self.latencies)
        return (f"{n} admin page views, p50 {percentile(self.latencies, 0.5) * 1000:.0f} ms, "
                f"p95 {percentile(self.latencies, 0.95) * 1000:.0f} ms, {self.errors} errors")


# --------------------------------------------------------------------------- the demo

class Demo:
    """One run of the demo. ``run()`` returns the exit code."""

    def __init__(self, settings: DemoSettings, out: TextIO | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.s = settings
        self.out = out or sys.stdout
        self.clock = clock
        self.phase_seconds = FAST_PHASE_SECONDS if settings.fast else settings.phase_seconds
        self.upload_interval = FAST_UPLOAD_INTERVAL if settings.fast else settings.upload_interval
        self.window = settings.window_seconds
        self.children: list[Child] = []
        self.agent_running = False
        self.traced_any = False  # a list of traced requests was printed: tracing works
        self.failure = ""  # why a part's early exit stopped the demo (exit code 1)
        self._agent_spec: tuple[list[str], dict[str, str], int] = ([], {}, 0)
        self.stop_event = asyncio.Event()
        self.stats: dict[str, LoadStats] = {"slow": LoadStats(), "fixed": LoadStats()}
        self.phase = "starting"
        self.state: dict[str, Any] = {"state": "starting", "pid": os.getpid()}
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self._status_len = 0

    # ---- output

    def say(self, text: str) -> None:
        if self.tty and self._status_len:
            self.out.write("\r" + " " * self._status_len + "\r")
            self._status_len = 0
        self.out.write(text + "\n")
        self.out.flush()

    def status(self, text: str) -> None:
        """A progress line: rewritten in place on a terminal, printed plainly otherwise."""
        if self.tty:
            self.out.write("\r" + text.ljust(self._status_len))
            self._status_len = len(text)
            self.out.flush()
        else:
            self.say(text)

    def save_state(self, **kw: Any) -> None:
        self.state.update(kw)
        path = self.data_dir / "demo.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(path)  # atomic, so a reader never sees half a file

    # ---- setup

    def prepare_dir(self) -> Path:
        if self.s.data_dir:
            d = Path(self.s.data_dir).expanduser().resolve()
            d.mkdir(parents=True, exist_ok=True)
        else:
            d = Path(tempfile.mkdtemp(prefix="flamewatch-demo-"))
        (d / "logs").mkdir(exist_ok=True)
        return d

    def child_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # Pod labels are set per service; settings of *this* command must not leak into
        # `serve`/`agent`, which read the same FLAMEWATCH_PORT etc.
        dropped = ("POD_NAMESPACE", "POD_NAME", "CONTAINER_NAME")
        env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("FLAMEWATCH_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    async def spawn(
        self, name: str, argv: list[str], env: dict[str, str], pipe_stdout: bool = False
    ) -> Child:
        log = self.data_dir / "logs" / f"{name}.log"
        f = open(log, "ab")  # noqa: SIM115 - closed in Child.stop
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else f, stderr=f, env=env,
            start_new_session=True, preexec_fn=_parent_death_signal,
        )
        child = Child(name, proc, log, _log_file=f)
        self.children.append(child)
        return child

    def log_tail(self, child: Child, lines: int = 15) -> str:
        try:
            text = child.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join("    " + line for line in text)

    async def start_server(self) -> str:
        if self.s.server:
            url = self.s.server.rstrip("/")
            await self.wait_healthy(url, None, 15)
            self.say(f"  server     {url} (already running; --server)")
            return url
        port = self.s.port
        if port == 0:
            port = free_port(self.s.host)
        elif port_in_use(self.s.host, port):
            raise DemoError(f"port {port} on {self.s.host} is in use (another flamewatch?): "
                            f"pass --port 0 for a free port, or --server URL to use the running one")
        argv = [sys.executable, "-m", "flamewatch.cli", "serve", "--host", self.s.host, "--port", str(port),
                "--data-dir", str(self.data_dir), "--storage", self.s.storage,
                "--window-seconds", str(self.window)]
        child = await self.spawn("server", argv, self.child_env())
        url = f"http://{self.s.host}:{port}"
        await self.wait_healthy(url, child, 60)
        child.port = port
        what = "SQLite" if self.s.storage == "sqlite" else self.s.storage
        self.say(f"  server     {url} (flamewatch serve, {what}, pid {child.pid})")
        return url

    async def wait_healthy(self, url: str, child: Child | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
            while time.monotonic() < deadline:
                if child is not None and child.proc.returncode is not None:
                    raise DemoError(f"{child.name} exited with code {child.proc.returncode} "
                                    f"(log {child.log}):\n{self.log_tail(child)}")
                try:
                    async with http.get(url + "/healthz") as r:
                        if r.status == 200:
                            return
                        last = f"HTTP {r.status}"
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    last = str(e) or type(e).__name__
                await asyncio.sleep(0.2)
        tail = f" (log {child.log}):\n{self.log_tail(child)}" if child else ""
        raise DemoError(f"{url}/healthz did not answer within {timeout:.0f} s ({last}){tail}")

    async def start_agent(self, server: str) -> None:
        try:
            perf: str | None = find_tool("perf")
        except ToolNotFound:
            perf = None
        ok, why = agent_status(os.geteuid(), perf, check_perf, self.s.agent)
        if ok:
            try:
                import profiler.cli  # noqa: F401 - the agent is optional in a partial install
            except ImportError as e:
                ok, why = False, f"the agent is not installed ({e})"
        if not ok:
            if self.s.agent == "on":
                raise DemoError(f"--agent on, but the agent cannot run: {why}. Use --agent auto or off.")
            self.say(f"  agent      not started: {why}.")
            self.say("             Falling back to the SDK path only: each service pushes its own "
                     "Python profile with pyroscope-io.")
            self.save_state(agent={"running": False, "reason": why})
            return
        metrics_port = free_port("127.0.0.1")
        argv = [sys.executable, "-m", "flamewatch.cli", "agent", "--server", server,
                "--spool-dir", str(self.data_dir / "agent-spool"),
                "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
                "--push-interval", str(self.upload_interval),
                # The demo's services are light and the story turns on a fix within minutes, so
                # py-spy refreshes each busy service's Python shape after ~1 CPU s of it, and every shape
                # older than two intervals must be confirmed by a new run (the fix changes the code)
                # (the agent's defaults favour a low steady-state cost instead).
                "--pyspy-refresh-samples", "100", "--pyspy-budget", "40", "--pyspy-max-processes", "4",
                "--pyspy-shape-max-age", str(2 * self.upload_interval),
                "--pyspy-duration", str(self.upload_interval),
                # Wall-clock too, idle threads included: the story's wait on manipulation-service.
                "--wall", "true", "--wall-rate", "20"]
        self._agent_spec = (argv, self.child_env({"NODE_NAME": socket.gethostname()}), metrics_port)
        try:
            child = await self.spawn_agent()
        except DemoError as e:
            if self.s.agent == "on":
                raise
            self.say(f"  agent      failed to start; SDK path only. {e}")
            self.save_state(agent={"running": False, "reason": str(e)})
            return
        self.agent_running = True
        self.say(f"  agent      {why} (pid {child.pid}, log {child.log})")
        self.save_state(agent={"running": True, "pid": child.pid, "node": socket.gethostname()})

    async def spawn_agent(self, timeout: float = 60) -> Child:
        """Start the agent and wait until it serves /metrics, i.e. its samplers are running.

        A banner that says "on" is printed only after this returns; an agent that exits first
        (no py-spy, perf refused) raises :class:`DemoError` with the last lines of its log.
        """
        argv, env, port = self._agent_spec
        child = await self.spawn("agent", argv, env)
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if child.proc.returncode is not None:
                    raise DemoError(f"agent exited with code {child.proc.returncode} "
                                    f"(log {child.log}):\n{self.log_tail(child)}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                        if r.status == 200:
                            return child
                await asyncio.sleep(0.2)
        await child.stop(5)
        raise DemoError(f"agent did not start its samplers within {timeout:.0f} s "
                        f"(log {child.log}):\n{self.log_tail(child)}")

    async def watch(self) -> None:
        """Notice at once when a part exits early: restart the agent, stop the demo for the rest.

        Every started part is checked twice a second; the user sees the exit with the end of
        its log the moment it happens, never only in the final "stopped:" line.
        """
        restarts = 0
        while not self.stop_event.is_set():
            for child in list(self.children):
                code = child.proc.returncode
                if code is None or child.reported:
                    continue
                child.reported = True
                self.say(f"\n{child.name} exited early with code {code} (log {child.log}):\n{self.log_tail(child)}")
                if child.name != "agent":
                    self.failure = f"{child.name} exited early with code {code}; the demo cannot go on without it"
                    self.stop_event.set()
                    return
                self.agent_running = False
                self.save_state(agent={"running": False, "reason": f"exited with code {code}"})
                if restarts >= AGENT_RESTARTS:
                    self.failure = f"the agent exited {restarts + 1} times; see {child.log}"
                    self.stop_event.set()
                    return
                restarts += 1
                self.say(f"  agent      restarting ({restarts}/{AGENT_RESTARTS})")
                try:
                    new = await self.spawn_agent()
                except DemoError as e:
                    self.failure = f"the agent could not be restarted: {e}"
                    self.stop_event.set()
                    return
                self.agent_running = True
                self.say(f"  agent      running again (pid {new.pid})")
                self.save_state(agent={"running": True, "pid": new.pid, "node": socket.gethostname(),
                                       "restarts": restarts})
            await asyncio.sleep(0.5)

    async def manipulate_calls(self, url: str) -> int:
        """/manipulate calls manipulation-service has served so far (-1 if it does not answer)."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
                http.get(url + "/stats") as r,
            ):
                return int((await r.json())["manipulate_calls"])
        except (aiohttp.ClientError, TimeoutError, OSError, KeyError, ValueError):
            return -1

    async def start_service(self, service: str, server: str, upstream: dict[str, str]) -> Child:
        pod = pod_name(service)
        argv = [sys.executable, "-m", "flamewatch.demo.tinyhats", service, "--host", self.s.host,
                "--port", "0", "--hats", str(self.s.hats), "--upload-interval", str(self.upload_interval),
                "--sample-rate", str(self.s.sample_rate)]
        if self.s.sdk:
            argv += ["--server", server]
        for k, v in upstream.items():
            argv += [f"--{k}", v]
        env = self.child_env({"POD_NAMESPACE": NAMESPACE, "POD_NAME": pod, "CONTAINER_NAME": service})
        child = await self.spawn(service, argv, env, pipe_stdout=True)
        child.pod = pod
        assert child.proc.stdout is not None
        try:
            line = await asyncio.wait_for(child.proc.stdout.readline(), 30)
        except TimeoutError:
            line = b""
        if not line.startswith(b"READY "):
            await asyncio.sleep(0.2)
            raise DemoError(f"{service} did not start (log {child.log}):\n{self.log_tail(child)}")
        child.port = int(line.split()[1])
        asyncio.get_running_loop().create_task(self._drain(child))
        return child

    async def _drain(self, child: Child) -> None:
        """Copy whatever else the service prints to its log, so its stdout pipe never fills."""
        assert child.proc.stdout is not None
        while line := await child.proc.stdout.readline():
            with open(child.log, "ab") as f:
                f.write(line)

    # ---- load

    async def load(self, frontend: str) -> None:
        """Open-loop load: ``rate`` admin page views per second (at most 4 in flight),
        and a hat upload every 20 s, as admins and artists would."""
        inflight: set[asyncio.Task[None]] = set()
        period = 1.0 / self.s.rate
        next_upload = time.monotonic() + 20
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

            async def view() -> None:
                stats = self.stats.get(self.phase)
                t = time.monotonic()
                try:
                    async with http.get(frontend + "/admin", params={"password": "ilovecats"}) as r:
                        await r.read()
                        r.raise_for_status()
                    if stats is not None:
                        stats.latencies.append(time.monotonic() - t)
                except (aiohttp.ClientError, TimeoutError) as e:
                    if stats is not None:
                        stats.errors += 1
                        stats.last_error = str(e)

            async def upload() -> None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.post(frontend + "/upload", json={}) as r:
                        await r.read()

            try:
                while True:
                    if len(inflight) < 4:
                        task = asyncio.ensure_future(view())
                        inflight.add(task)
                        task.add_done_callback(inflight.discard)
                    if time.monotonic() >= next_upload:
                        next_upload += 20
                        task = asyncio.ensure_future(upload())
                        inflight.add(task)
                        task.add_done_callback(inflight.discard)
                    await asyncio.sleep(period)
            finally:
                for task in list(inflight):
                    task.cancel()
                await asyncio.gather(*inflight, return_exceptions=True)

    async def set_mode(self, admin: str, mode: str) -> None:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.post(admin + "/control", json={"mode": mode}) as r,
        ):
            if r.status != 200:
                raise DemoError(f"admin-service refused mode {mode}: HTTP {r.status} {await r.text()}")

    # ---- the story

    async def sleep_until(self, t: float, label: str, start: float, end: float | None) -> bool:
        """Show progress until wall time ``t``; False when asked to stop first. ``end`` None: an
        open-ended wait (serving until Ctrl-C), shown as the time since ``start``, with no bar."""
        last_plain = 0.0
        while (now := self.clock()) < t:
            if self.deadline and now >= self.deadline:
                self.stop_event.set()
            if self.stop_event.is_set():
                return False
            stats = self.stats.get(self.phase)
            if end is None:
                line = f"{label} for {_mmss(now - start)} (Ctrl-C stops)"
            else:
                bar = "#" * int((now - start) / max(end - start, 1) * 20)
                line = f"{label} [{bar:<20}] {_mmss(now - start)}/{_mmss(end - start)}"
            if stats is not None:
                line += "  " + stats.line()
            if self.tty or now - last_plain >= 10:
                self.status(line)
                last_plain = now
            try:
                await asyncio.wait_for(self.stop_event.wait(), min(1.0, max(t - now, 0.01)))
            except TimeoutError:
                pass
        return not self.stop_event.is_set()

    async def story(self) -> None:
        """Start every part, announce the links, then run the slow phase, the fix and the fixed phase."""
        server = await self.start_server()
        self.save_state(server=server)
        await self.start_agent(server)
        svc = await self.start_services(server)
        plan = self.plan(server, svc)
        self.announce(plan)
        self.phase = "slow"
        watcher = asyncio.ensure_future(self.watch())
        loader = asyncio.ensure_future(self.load(plan.frontend))
        try:
            await self.run_phases(plan)
        finally:
            for task in (loader, watcher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def start_services(self, server: str) -> dict[str, Child]:
        """The three tinyhats services, each wired to the next; prints where each runs."""
        svc: dict[str, Child] = {}
        base = f"http://{self.s.host}:"
        svc["manipulation-service"] = await self.start_service("manipulation-service", server, {})
        svc["admin-service"] = await self.start_service(
            "admin-service", server, {"manipulation": base + str(svc["manipulation-service"].port)})
        svc["frontend"] = await self.start_service(
            "frontend", server, {"admin": base + str(svc["admin-service"].port)})
        for name, child in svc.items():
            self.say(f"  {name:<21} {base}{child.port}  pod {NAMESPACE}/{child.pod}  pid {child.pid}")
        if not self.s.sdk:
            self.say("  (--sdk off: services push no profiles of their own; only the agent sees them)")
        return svc

    def plan(self, server: str, svc: dict[str, Child]) -> _Plan:
        """When the fix goes in and the demo's phases end, and the viewer links for them."""
        base = f"http://{self.s.host}:"
        t0 = self.clock()
        phase, switch, end = fit_phases(t0, self.phase_seconds, self.window, self.deadline,
                                        self.upload_interval + 3)
        if phase != self.phase_seconds:
            self.say(f"  (--duration {self.s.duration:.0f}: phases shortened to {phase} s so the diff "
                     f"completes before the demo stops)")
        before, after = (align_down(t0, self.window), switch), (switch, end)
        # Profiles are filed by the midpoint of their sampling period (SDK uploads and agent
        # pushes, every upload_interval, not aligned to windows). Deploying the fix half an
        # interval before the boundary means everything filed after it was sampled after the
        # fix; the base side may get a few seconds of fixed behaviour, which only dilutes it.
        # The agent names perf samples with the newest finished py-spy run of the process
        # (one push interval long), so its Python frames lag by up to two intervals more.
        lead = self.upload_interval / 2 + 1 + (2 * self.upload_interval if self.agent_running else 0)
        admin_sel = f'{{namespace="{NAMESPACE}", container="admin-service"}}'
        plan = _Plan(
            t0=t0, fix_at=max(t0 + 1.0, switch - lead), end=end,
            urls=viewer_urls(server, admin_sel, before, after),
            frontend=base + str(svc["frontend"].port), admin=base + str(svc["admin-service"].port),
            manipulation=base + str(svc["manipulation-service"].port), before=before, after=after,
        )
        self.save_state(
            state="slow", frontend=plan.frontend, admin=plan.admin, urls=plan.urls, window=self.window,
            phases={"slow": list(before), "fixed": list(after)}, admin_selector=admin_sel,
            services={n: {"pid": c.pid, "port": c.port, "pod": c.pod} for n, c in svc.items()},
            pids=[c.pid for c in self.children],
        )
        return plan

    def announce(self, plan: _Plan) -> None:
        """Print the viewer links the user opens while the demo runs."""
        urls = plan.urls
        ready = _mmss(plan.end - plan.t0 + self.upload_interval)
        self.say(f"\nViewer, namespace=default:   {urls['namespace']}")
        self.say(f"admin-service before the fix: {urls['before']}")
        self.say(f"Diff before/after the fix (complete in about {ready}):\n  {urls['diff_viewer']}\n"
                 f"  API: {urls['diff_api']}")
        if self.agent_running:
            self.say(f"Wall-clock diff (createSampleImages waiting on manipulation-service, then not):\n"
                     f"  {urls['wall_diff_viewer']}")
        self.say("")

    async def run_phases(self, plan: _Plan) -> None:
        """Slow phase, deploy the fix, fixed phase, wait for the last profiles, then keep serving."""
        t0, fix_at, end, urls = plan.t0, plan.fix_at, plan.end, plan.urls
        calls0 = await self.manipulate_calls(plan.manipulation)
        self.say(f"phase 1/2: slow admin page: createSampleImages calls manipulation-service once per "
                 f"hat ({self.s.hats}) on every view")
        if not await self.sleep_until(fix_at, "phase 1/2 slow ", t0, fix_at):
            return
        calls1 = await self.manipulate_calls(plan.manipulation)
        # demo.json keeps the figures printed here (views still in flight finish after the line)
        printed = {"slow": self.stats["slow"].summary()}
        self.say(f"phase 1/2 done: {self.stats['slow'].line()}, {calls1 - calls0} /manipulate calls")
        await self.set_mode(plan.admin, "fixed")
        self.phase = "fixed"
        self.save_state(state="fixed", fixed_at=self.clock())
        self.say("phase 2/2: fix deployed: mockups are made once at upload and cached")
        # The slow phase's last profiles arrive up to one upload interval after it ends: list its
        # slowest requests once they are in, so the list printed is the one its Requests view
        # shows (printed at the fix, a --fast run listed 49 of 60 views and missed the slowest).
        settled = min(plan.before[1] + self.upload_interval + 3, end)
        if not await self.sleep_until(settled, "phase 2/2 fixed", fix_at, end):
            return
        await self.show_requests(urls, "before the fix", *plan.before, "requests_before")
        if not await self.sleep_until(end, "phase 2/2 fixed", fix_at, end):
            return
        calls2 = await self.manipulate_calls(plan.manipulation)
        printed["fixed"] = self.stats["fixed"].summary()
        self.say(f"phase 2/2 done: {self.stats['fixed'].line()}, {calls2 - calls1} /manipulate calls")
        self.save_state(manipulate_calls={"slow": calls1 - calls0, "fixed": calls2 - calls1})
        # The SDK pushes every upload_interval; wait for the pushes covering the last window.
        if not await self.sleep_until(end + self.upload_interval + 3, "collecting last profiles",
                                      end, end + self.upload_interval + 3):
            return
        self.save_state(state="done", latency={k: printed.get(k) or v.summary() for k, v in self.stats.items()})
        await self.show_requests(urls, "after the fix", *plan.after, "requests_after")
        self.say(f"\nDiff ready (before vs after the fix, admin-service):\n  {urls['diff_viewer']}\n"
                 f"  API: {urls['diff_api']}")
        if self.agent_running:
            self.say(f"Wall-clock diff: {urls['wall_diff_viewer']}")
        self.say("The demo keeps serving (fixed behaviour) until Ctrl-C" +
                 (f" or {self.s.duration:.0f} s in all." if self.deadline else "."))
        while await self.sleep_until(self.clock() + 3600, "running (fixed)", end, None):
            pass

    async def show_requests(self, urls: dict[str, str], when: str, start: float, end: float, link: str) -> None:
        """Print the slowest traced admin page views of ``[start, end)`` (the Requests view's table),
        each with its flame graph; a note when none are traced (no opentelemetry-sdk/pyroscope-otel)."""
        server = urls["viewer"].rstrip("/")
        q = urlencode({"query": ADMIN_SPANS[0], "span_name": ADMIN_SPANS[1], "from": int(start),
                       "until": int(end) + 1, "limit": 3})
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
                http.get(f"{server}/api/v1/requests?{q}") as r,
            ):
                doc = await r.json()
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            self.say(f"slowest /admin requests {when}: not available ({e})")
            return
        lines = request_lines(doc, server)
        if not lines and self.traced_any:
            # Tracing works (an earlier list was printed): these views were too short to be sampled.
            self.say(f"slowest /admin requests {when}: none with samples (the views take a few ms now: "
                     f"at {self.s.sample_rate:g} Hz most get no sample)")
            return
        if not lines:
            self.say(f"slowest /admin requests {when}: none traced yet (tracing needs opentelemetry-sdk "
                     "and pyroscope-otel in the services' Python)")
            return
        self.traced_any = True
        self.say(f"slowest /admin requests {when} ({doc.get('spans', 0)} traced):")
        for line in lines:
            self.say(line)
        self.say(f"  Requests view: {urls[link]}")

    async def shutdown(self) -> None:
        """Services first (their SDKs flush their last profile), then the agent, the server last."""
        rank = {"agent": 1, "server": 2}
        for step in range(3):
            batch = [c for c in self.children if rank.get(c.name, 0) == step]
            await asyncio.gather(*(c.stop(15 if step else 10) for c in batch))
        if self.children:
            self.say("stopped: " + ", ".join(f"{c.name} (exit {c.proc.returncode})" for c in self.children))

    async def run(self) -> int:
        self.data_dir = self.prepare_dir()
        self.deadline = self.clock() + self.s.duration if self.s.duration else 0.0
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop_event.set)
        self.say(f"flamewatch demo: the slow admin page of tinyhats (phases of {self.phase_seconds} s)")
        self.say(f"  data dir   {self.data_dir} (logs in {self.data_dir / 'logs'})")
        self.save_state(data_dir=str(self.data_dir))
        code = 0
        try:
            story = asyncio.ensure_future(self.story())
            stopper = asyncio.ensure_future(self.stop_event.wait())
            await asyncio.wait({story, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not story.done():  # Ctrl-C during start-up: abandon it
                story.cancel()
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await story
            if self.failure:
                self.say(f"flamewatch demo: stopping: {self.failure}")
                code = 1
        except DemoError as e:
            self.say(f"flamewatch demo: {e}")
            code = 1
        finally:
            self.say("stopping...")
            await self.shutdown()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            self.save_state(state="stopped", exit_code=code)
        if not self.s.server and self.state.get("server"):
            self.say(f"Data kept in {self.data_dir}; look again with:\n"
                     f"  {own_command()} serve --data-dir {self.data_dir} --port {self.s.port or 4040}")
        return code


def own_command() -> str:
    """How to run this flamewatch again: the venv's script by path, which works unactivated."""
    script = Path(sys.executable).with_name("flamewatch")
    return str(script) if script.is_file() else f"{sys.executable} -m flamewatch.cli"


def _mmss(seconds: float) -> str:
    s = max(int(seconds), 0)
    return f"{s // 60}:{s % 60:02d}"
