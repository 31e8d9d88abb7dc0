"""A loopback HTTP server that records every request, for capturing real SDK pushes.

Usage::

    with capture_server() as cap:
        run_something_that_posts_to(cap.url)
        reqs = cap.wait_for(1, timeout=30)
    reqs[0].path, reqs[0].headers["Content-Type"], reqs[0].body  # raw (still gzip) body

The server runs aiohttp on its own event loop in a daemon thread, bound to
127.0.0.1 on a free port, so it works from sync and async tests alike.
Request bodies are recorded exactly as sent (``auto_decompress=False``).
Every request is answered with ``status`` and an empty ``application/proto``
body, which is a valid (empty) Connect unary response for ``Push``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict


@dataclass(frozen=True)
class Recorded:
    """One request as received."""

    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes
    at: float = field(default=0.0)


class Capture:
    """Handle of a running capture server."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Recorded] = []
        self._cond = threading.Condition()

    def _add(self, rec: Recorded) -> None:
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 30.0, path: str | None = None) -> list[Recorded]:
        """Block until at least ``n`` requests (on ``path``, if given) arrived; return them.

        Raises TimeoutError naming how many arrived.
        """
        deadline = time.monotonic() + timeout

        def matching() -> list[Recorded]:
            return [r for r in self.requests if path is None or r.path == path]

        with self._cond:
            while len(matching()) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [(r.method, r.path) for r in self.requests]
                    where = path or "any path"
                    raise TimeoutError(f"waited {timeout}s for {n} request(s) on {where}; got {got}")
                self._cond.wait(left)
            return matching()


@contextmanager
def capture_server(status: int = 200) -> Iterator[Capture]:
    """Start a recording server on 127.0.0.1 and a free port; stop it on exit."""
    cap = Capture()
    ready = threading.Event()
    errors: list[BaseException] = []
    loop = asyncio.new_event_loop()
    runner_box: list[web.AppRunner] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        cap._add(
            Recorded(
                request.method,
                request.path,
                request.query_string,
                CIMultiDict(request.headers),
                body,
                time.time(),
            )
        )
        return web.Response(status=status, body=b"", content_type="application/proto")

    async def start() -> None:
        app = web.Application(client_max_size=256 << 20)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        cap.url = f"http://127.0.0.1:{port}"
        runner_box.append(runner)

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as e:  # surfaced to the caller below
            errors.append(e)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner_box[0].cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="capture-server", daemon=True)
    thread.start()
    ready.wait(30)
    if errors:
        raise RuntimeError(f"capture server failed to start: {errors[0]!r}")
    try:
        yield cap
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
