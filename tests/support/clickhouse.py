"""Run a real ``clickhouse-server`` on loopback for tests and benchmarks.

Usage from tests (see tests/aggregator/conftest.py for the fixtures)::

    with clickhouse_server() as ch:      # ch.url == "http://127.0.0.1:PORT"
        ch.storage_spec("flamewatch_x")  # "clickhouse://127.0.0.1:PORT/flamewatch_x"
        ch.stop(); ch.start()            # take the server down and bring it back

Each server gets its own temp dir with a generated config.xml/users.xml,
data/tmp/log paths, free HTTP and TCP ports, listen_host 127.0.0.1 and no
interserver port (replication is unused). Data survives ``stop()``/``start()``.

If ``FLAMEWATCH_TEST_CLICKHOUSE_URL`` is set, ``clickhouse_server()`` yields a
handle on that server instead (``stop``/``start`` then refuse). If no binary
is found, :class:`ClickHouseMissing` is raised; pytest callers turn it into a
skip naming the missing package.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

ENV_URL = "FLAMEWATCH_TEST_CLICKHOUSE_URL"
ENV_BINARY = "FLAMEWATCH_CLICKHOUSE_BINARY"
START_TIMEOUT = 30.0
# user and password of the servers started here (not of FLAMEWATCH_TEST_CLICKHOUSE_URL's)
PASSWORD_USER = ("fw_secret", "s3cretPW-ch")

_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{root}/log/clickhouse-server.log</log>
    <errorlog>{root}/log/clickhouse-server.err.log</errorlog>
    <size>10M</size>
    <count>1</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <path>{root}/data/</path>
  <tmp_path>{root}/tmp/</tmp_path>
  <user_files_path>{root}/user_files/</user_files_path>
  <format_schema_path>{root}/format_schemas/</format_schema_path>
  <users_config>{root}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <!-- small caches: the test box has 2 cores and is shared -->
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <max_concurrent_queries>64</max_concurrent_queries>
  <!-- as in the packaged config; also bounds how long a graceful stop waits for idle clients -->
  <keep_alive_timeout>3</keep_alive_timeout>
  <mlock_executable>false</mlock_executable>
</yandex>
"""

_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles>
    <default>
      <max_memory_usage>2000000000</max_memory_usage>
    </default>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks>
        <ip>127.0.0.1</ip>
        <ip>::1</ip>
      </networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
    <!-- a user with a password (PASSWORD_USER): tests check it never leaves serve (issue 24, cause 7) -->
    <fw_secret>
      <password>s3cretPW-ch</password>
      <networks>
        <ip>127.0.0.1</ip>
        <ip>::1</ip>
      </networks>
      <profile>default</profile>
      <quota>default</quota>
    </fw_secret>
  </users>
  <quotas>
    <default>
      <interval>
        <duration>3600</duration>
        <queries>0</queries>
        <errors>0</errors>
        <result_rows>0</result_rows>
        <read_rows>0</read_rows>
        <execution_time>0</execution_time>
      </interval>
    </default>
  </quotas>
</yandex>
"""


class ClickHouseMissing(RuntimeError):
    """No clickhouse-server binary on this machine."""


def find_binary() -> list[str]:
    """The command that runs a ClickHouse server, as an argv prefix.

    Debian's 18.16 package installs ``/usr/sbin/clickhouse-server``; upstream
    packages ship one ``clickhouse`` binary run as ``clickhouse server``.
    """
    override = os.environ.get(ENV_BINARY)
    if override:
        argv = override.split()
        if not (os.access(argv[0], os.X_OK) or shutil.which(argv[0])):
            raise ClickHouseMissing(f"{ENV_BINARY}={override}: {argv[0]} is not an executable")
        return argv
    for path in ("/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"):
        if os.access(path, os.X_OK):
            return [path]
    found = shutil.which("clickhouse-server")
    if found:
        return [found]
    for path in ("/usr/bin/clickhouse", shutil.which("clickhouse")):
        if path and os.access(path, os.X_OK):
            return [path, "server"]
    raise ClickHouseMissing(
        "clickhouse-server not found (install the Debian package clickhouse-server, "
        f"set {ENV_BINARY} to its binary, or set {ENV_URL} to a running server's http URL)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(url: str, timeout: float = 1.0) -> bool:
    """True when ``GET {url}/ping`` answers ``Ok.``."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=timeout) as r:
            return r.status == 200 and r.read().strip() == b"Ok."
    except (OSError, urllib.error.URLError):
        return False


def query(url: str, sql: str, timeout: float = 10.0) -> str:
    """Run one SQL statement over HTTP (for test setup/inspection); returns the body."""
    req = urllib.request.Request(url.rstrip("/") + "/?wait_end_of_query=1", data=sql.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


def _die_with_parent() -> None:
    """Runs in the child: SIGTERM it if the test process dies, so no server is orphaned."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ClickHouseServer:
    """A handle on one ClickHouse server: ``.url``, ``start()``, ``stop()``."""

    def __init__(self, root: Path | None = None, external_url: str | None = None) -> None:
        self.external = external_url is not None
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port = 0
        self.tcp_port = 0
        if external_url:
            self.url = external_url.rstrip("/")
        else:
            self.url = ""

    @property
    def host_port(self) -> str:
        """``host:port`` of the HTTP interface."""
        return urlsplit(self.url).netloc

    def storage_spec(self, database: str) -> str:
        """The ``--storage`` value for this server and ``database``."""
        return f"clickhouse://{self.host_port}/{database}"

    def _write_config(self) -> Path:
        assert self.root is not None
        for sub in ("log", "data", "tmp", "user_files", "format_schemas"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "users.xml").write_text(_USERS.format(root=self.root))
        config = self.root / "config.xml"
        config.write_text(
            _CONFIG.format(root=self.root, http_port=self.http_port, tcp_port=self.tcp_port)
        )
        return config

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server (again) and wait until ``/ping`` answers.

        Ports are kept across restarts so URLs handed out stay valid; a port
        race on the first start is retried with new ports.
        """
        if self.external:
            raise RuntimeError(f"cannot start an external ClickHouse ({self.url}); unset {ENV_URL}")
        if self.proc is not None and self.proc.poll() is None:
            return
        argv = find_binary()
        first = not self.http_port
        for attempt in range(3):
            if first and attempt:
                self.http_port = 0
            if not self.http_port:
                self.http_port, self.tcp_port = _free_port(), _free_port()
            self.url = f"http://127.0.0.1:{self.http_port}"
            config = self._write_config()
            assert self.root is not None
            out = open(self.root / "log" / "stdout.log", "ab")  # noqa: SIM115 - owned by the child
            try:
                self.proc = subprocess.Popen(
                    [*argv, f"--config-file={config}"],
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                )
            finally:
                out.close()
            if self._wait_ready(timeout):
                return
            self._terminate()
            if not first:
                break
        raise RuntimeError(f"clickhouse-server did not answer /ping at {self.url}: {self._log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            if ping(self.url, timeout=0.5):
                return True
            time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        if self.root is None:
            return ""
        parts = []
        for name in ("stdout.log", "clickhouse-server.err.log"):
            p = self.root / "log" / name
            if p.exists():
                parts.append(p.read_text(errors="replace")[-1500:])
        return "\n".join(parts) or "(no log output)"

    def _terminate(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s); data is kept."""
        if self.external:
            raise RuntimeError(f"cannot stop an external ClickHouse ({self.url}); unset {ENV_URL}")
        self._terminate()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.external or (self.proc is not None and self.proc.poll() is None)


@contextlib.contextmanager
def clickhouse_server(private: bool = False) -> Iterator[ClickHouseServer]:
    """A running ClickHouse for the duration of the block.

    Honors ``FLAMEWATCH_TEST_CLICKHOUSE_URL`` unless ``private`` (a test that
    stops the server needs one of its own). Raises :class:`ClickHouseMissing`
    when no binary exists, RuntimeError when the server will not start.
    """
    external = os.environ.get(ENV_URL)
    if external and not private:
        if not ping(external, timeout=3):
            raise RuntimeError(f"{ENV_URL}={external} does not answer GET /ping")
        yield ClickHouseServer(external_url=external)
        return
    find_binary()
    root = Path(tempfile.mkdtemp(prefix="flamewatch-clickhouse-"))
    server = ClickHouseServer(root=root)
    try:
        server.start()
        yield server
    finally:
        server._terminate()
        shutil.rmtree(root, ignore_errors=True)


def bench(series: int = 200, windows: int = 120, stacks_per_window: int = 40, seed: int = 1) -> None:
    """Write/read latency of ClickHouseStore vs SQLiteStore (the baseline), same data, same run.

    Writes one commit per window (``series`` SeriesWindows each, as the aggregator's
    group commit does), then times full reads, merged reads, one-pod reads and label values.
    """
    import asyncio
    import random
    import statistics

    from aggregator.store.base import SeriesWindow
    from aggregator.store.clickhouse import ClickHouseStore
    from aggregator.store.sqlite import SQLiteStore
    from stacks.model import Frame, Labels, Profile, StackTable
    from stacks.selector import Matcher, Selector

    rnd = random.Random(seed)
    def one_stack() -> tuple[Frame, ...]:
        user = [Frame.user(f"fn{rnd.randrange(300)}") for _ in range(rnd.randrange(5, 25))]
        kernel = [Frame.kernel(f"k{rnd.randrange(40)}") for _ in range(rnd.randrange(0, 4))]
        return (Frame.user("main"), *user, *kernel)

    pool = [one_stack() for _ in range(3000)]
    labels = [Labels.of(namespace=f"ns{i % 10}", pod=f"pod-{i:03d}", container="app", node=f"n{i % 4}",
                        process="python") for i in range(series)]
    t0 = 1_700_006_400
    table = StackTable()
    batches = [[SeriesWindow(lab, t0 + 30 * w, Profile.from_pairs(
        ((pool[rnd.randrange(len(pool))], rnd.randrange(1, 50)) for _ in range(stacks_per_window)), table))
        for lab in labels] for w in range(windows)]
    end = t0 + 30 * windows
    one_pod = Selector((Matcher("pod", "=", "pod-007"),))
    ns = Selector((Matcher("namespace", "=~", "ns[12]"),))

    async def run(store) -> dict[str, float]:  # type: ignore[no-untyped-def]
        await store.open()
        lat = []
        for b in batches:
            t = time.perf_counter()
            await store.write(b)
            lat.append(time.perf_counter() - t)
        out = {"write median ms": statistics.median(lat) * 1e3,
               "write p95 ms": sorted(lat)[int(0.95 * len(lat))] * 1e3,
               "write total s": sum(lat)}
        for name, coro_fn in (
            ("read all (24k windows) s", lambda: store.read(Selector(), t0, end, StackTable())),
            ("read_merged all s", lambda: store.read_merged(Selector(), t0, end, StackTable())),
            ("read_merged ns=~ns[12] s", lambda: store.read_merged(ns, t0, end, StackTable())),
            ("read one pod, 1h s", lambda: store.read(one_pod, t0, end, StackTable())),
            ("read one pod, 15m s", lambda: store.read(one_pod, end - 900, end, StackTable())),
            ("label_values pod s", lambda: store.label_values("pod", Selector(), t0, end)),
        ):
            times = []
            for _ in range(3):
                t = time.perf_counter()
                await coro_fn()
                times.append(time.perf_counter() - t)
            out[name] = min(times)
        await store.close()
        return out

    with clickhouse_server() as ch, tempfile.TemporaryDirectory() as tmp:
        db = f"flamewatch_bench_{os.getpid()}"
        try:
            got_ch = asyncio.run(run(ClickHouseStore(ch.storage_spec(db))))
            got_sq = asyncio.run(run(SQLiteStore(Path(tmp) / "bench.db")))
            print(f"{series} series x {windows} windows x {stacks_per_window} stacks/window "
                  f"({series * windows * stacks_per_window} sample rows)")
            print(f"{'metric':28} {'clickhouse':>12} {'sqlite':>12} {'ch/sqlite':>10}")
            for k in got_ch:
                print(f"{k:28} {got_ch[k]:12.4f} {got_sq[k]:12.4f} {got_ch[k] / got_sq[k]:10.2f}")
        finally:
            if not ch.external:
                ch.stop()  # the temp dir goes with it; no slow DROP under load
            else:
                query(ch.url, f"DROP DATABASE IF EXISTS {db}", timeout=120)


if __name__ == "__main__":  # python tests/support/clickhouse.py [--bench]
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    if "--bench" in sys.argv:
        bench()
        sys.exit(0)
    with clickhouse_server() as ch:
        print(f"ClickHouse at {ch.url} (--storage {ch.storage_spec('flamewatch')}); Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
