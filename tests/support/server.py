"""A real ``flamewatch serve`` subprocess for end-to-end tests.

Usage::

    with running_server(tmp_path, "--window-seconds", "30", env={...}) as srv:
        requests to srv.url ...
        srv.kill()      # SIGKILL, as a crash would
        srv.restart()   # same data dir, same port when it is free
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that was free a moment ago on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A running ``flamewatch serve``: ``.url``, ``.data_dir``, ``.proc``, ``.kill()``, ``.stop()``,
    ``.restart()``, plus ``.get(path)``/``.post(path, body)`` helpers returning (status, bytes)."""

    def __init__(self, tmp_path: Path, args: Sequence[str], env: Mapping[str, str] | None) -> None:
        self.data_dir = Path(tmp_path) / "flamewatch-data"
        self.args = list(args)
        self.env = dict(env or {})
        self.port = free_port()
        self.log_path = Path(tmp_path) / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the process and wait until /healthz answers."""
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", "flamewatch.cli", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--data-dir", str(self.data_dir), *self.args]
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flamewatch serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, _ = self.get("/healthz", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"flamewatch serve did not answer /healthz within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        """What the server printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None, timeout: float = 30) -> tuple[int, bytes]:
        """One HTTP request; returns (status, body) for every status, 4xx/5xx included."""
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path: str, **kw: object) -> tuple[int, bytes]:
        return self.request("GET", path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, body: bytes, **kw: object) -> tuple[int, bytes]:
        return self.request("POST", path, body, **kw)  # type: ignore[arg-type]

    def json(self, path: str) -> object:
        """GET a JSON route, asserting 200."""
        status, body = self.get(path)
        if status != 200:
            raise AssertionError(f"GET {path} -> {status}: {body[:500]!r}")
        return json.loads(body)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or OOM kill would; no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM and wait (the server commits queued pushes first)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def restart(self, timeout: float = 30.0) -> None:
        """Stop (if running) and start again on the same data dir and, if still free, port."""
        self.stop()
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", self.port))
            except OSError:  # someone else took the port meanwhile: move to a new one
                self.port = free_port()
        self.start(timeout)


@contextlib.contextmanager
def running_server(tmp_path: Path, *args: str, env: Mapping[str, str] | None = None,
                   timeout: float = 30.0) -> Iterator[Server]:
    """Start ``flamewatch serve`` on a free loopback port with its data in ``tmp_path``."""
    srv = Server(Path(tmp_path), args, env)
    srv.start(timeout)
    try:
        yield srv
    finally:
        srv.stop()
