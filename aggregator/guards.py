"""Defences of the server against hostile requests and bad days (issue 24).

- :class:`Health`: what ``/healthz`` and ``/readyz`` report: writes failing, corruption met.
- :func:`cross_origin_refusal`: push routes refuse writes from a browser page on another
  origin (``Origin`` / ``Sec-Fetch-Site``) and, on the Connect route, the content types a
  browser sends without a CORS preflight.
- :func:`guarded_runner`: an ``AppRunner`` whose connections are dropped when a request's
  header is not complete within ``--header-timeout-seconds`` (slow-loris);
  :func:`read_with_timeout` bounds the body read by ``--body-timeout-seconds``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

T = TypeVar("T")
log = logging.getLogger(__name__)

# Content types a browser sends cross-origin without a preflight ("simple requests"), and no
# type at all (a fetch of a Blob without one): never a Connect push from an SDK or agent.
SIMPLE_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""})


@dataclass
class Health:
    """Problems the store met, for ``/healthz`` (status "degraded") and ``/readyz`` (503).

    ``writes``: the last push commit failed (cleared by the next one that succeeds);
    ``corruption``: a read or the start-up check met a damaged database (kept until a restart,
    since a later good read of other pages does not repair it).
    """

    writes: str = ""
    writes_since: float = 0.0
    corruption: str = ""
    clock: Callable[[], float] = field(default=time.time, repr=False)

    def write_failed(self, why: str) -> None:
        if not self.writes:
            self.writes_since = self.clock()
        self.writes = why

    def write_ok(self) -> None:
        self.writes, self.writes_since = "", 0.0

    def corrupt(self, why: str) -> None:
        self.corruption = self.corruption or why

    def problems(self) -> list[str]:
        out = []
        if self.writes:
            out.append(f"pushes failing since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.writes_since))}: "
                       f"{self.writes}")
        if self.corruption:
            out.append(f"database corruption: {self.corruption}")
        return out


def cross_origin_refusal(request: web.Request, connect_route: bool) -> web.Response | None:
    """A 403/415 for a push a browser page on another origin could have sent, else None.

    Browsers mark every fetch with ``Sec-Fetch-Site`` and send ``Origin`` on every POST; agents
    and SDKs send neither. A page may still send a "simple" request without a preflight (and
    with ``mode: "no-cors"`` without reading the answer), so the check is on the request itself.
    """
    if request.method != "POST":
        return None  # the router answers 405; only a POST writes
    site = request.headers.get("Sec-Fetch-Site", "").lower()
    if site in ("cross-site", "same-site"):
        return web.json_response(
            {"error": f"push refused: Sec-Fetch-Site: {site} (a browser page on another origin); "
                      "pushes come from agents and SDKs, not from web pages"}, status=403)
    origin = request.headers.get("Origin")
    if origin is not None:
        host = request.headers.get("Host", "")
        if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
            return web.json_response(
                {"error": f"push refused: Origin {origin!r} is not this server ({host}); pushes from "
                          "web pages on other origins are not accepted"}, status=403)
    # The header as sent (aiohttp reads a missing one as application/octet-stream).
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if connect_route and ctype in SIMPLE_TYPES:
        given = request.headers.get("Content-Type", "") or "none"
        return web.json_response(
            {"error": f"push Content-Type {given!r} is not accepted: send application/proto (gzip "
                      "PushRequest) or application/json (Connect JSON)"}, status=415)
    return None


async def read_with_timeout(coro: Awaitable[T], seconds: float, what: str) -> T:
    """``await coro`` within ``seconds``, else 408 naming ``what`` and the setting."""
    try:
        return await asyncio.wait_for(coro, seconds)
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"{what} not received within --body-timeout-seconds={seconds:g}") from None


class _Handler(RequestHandler):
    """A connection that remembers since when it has waited for an unfinished request header."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.fw_waiting_since: float | None = time.monotonic()  # a new connection owes a header
        self.fw_busy = False

    def data_received(self, data: bytes) -> None:
        if not self.fw_busy and self.fw_waiting_since is None:
            self.fw_waiting_since = time.monotonic()
        super().data_received(data)


class _Server(web.Server):
    def __call__(self) -> RequestHandler:  # type: ignore[override]
        return _Handler(self, loop=self._loop, **self._kwargs)


@web.middleware
async def header_clock(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """Marks the connection busy while a request (its header complete) is handled."""
    proto = request.protocol
    if isinstance(proto, _Handler):
        proto.fw_busy, proto.fw_waiting_since = True, None
    try:
        return await handler(request)
    finally:
        if isinstance(proto, _Handler):
            proto.fw_busy, proto.fw_waiting_since = False, None


async def _watchdog(server: web.Server, header_timeout: float) -> None:
    """Close every connection whose request header is unfinished after ``header_timeout``."""
    tick = min(1.0, header_timeout / 4)
    while True:
        await asyncio.sleep(tick)
        now = time.monotonic()
        for h in list(server.connections):
            since = getattr(h, "fw_waiting_since", None)
            if since is not None and not h.fw_busy and now - since > header_timeout:  # type: ignore[attr-defined]
                tr = h.transport
                if tr is not None:
                    tr.close()
                h.fw_waiting_since = None  # type: ignore[attr-defined]


class GuardedRunner(web.AppRunner):
    """``AppRunner`` with the slow-loris watchdog (``header_timeout`` seconds per request header)."""

    def __init__(self, app: web.Application, header_timeout: float, **kw: Any) -> None:
        super().__init__(app, **kw)
        self.header_timeout = header_timeout
        self._dog: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        await super().setup()
        server = self.server
        assert server is not None
        server.__class__ = _Server  # same object, connections made as _Handler
        self._dog = asyncio.get_running_loop().create_task(_watchdog(server, self.header_timeout))

    async def cleanup(self) -> None:
        if self._dog is not None:
            self._dog.cancel()
        await super().cleanup()


async def gc_policy(freeze_seconds: float, collect_seconds: float) -> None:
    """Keep CPython's full (gen-2) collections short: every ``freeze_seconds`` move the objects
    alive now (mostly the interned stack tuples of the ingest tables and store caches, which
    are never cyclic garbage) to the permanent generation, so a gen-2 pass scans only what
    is newer. A gen-2 pass holds the GIL of every thread: during a 16 MB push they took up to
    650 ms and stalled /healthz that long (docs/reliability.md). Cyclic garbage frozen this way
    is collected every ``collect_seconds`` by one full collection (one pause per interval)."""
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(freeze_seconds)
        if collect_seconds and time.monotonic() - last_full >= collect_seconds:
            gc.unfreeze()
            t0 = time.perf_counter()
            found = gc.collect()
            last_full = time.monotonic()
            log.info("full garbage collection: %d objects freed in %.0f ms", found, (time.perf_counter() - t0) * 1000)
        gc.freeze()
