"""The tinyhats microservices: one process per service, real aiohttp over loopback.

Run as ``python -m flamewatch.demo.tinyhats SERVICE --port 0 ...``. The process
prints ``READY <port>`` on stdout once it listens, so the demo can wire the
next service to it without guessing ports.

- ``frontend`` serves ``/admin`` by calling ``admin-service`` ``/admin``.
- ``admin-service`` lists the hats awaiting approval with a preview of each.
  In the *slow* mode (the bug from the story) ``createSampleImages`` calls
  ``manipulation-service`` ``/manipulate`` once per hat on every request and
  thumbnails the result. In the *fixed* mode the mockup is made once, when a
  hat is uploaded (``saveMockupOnUpload``), and served from a cache.
  ``POST /control`` with ``{"mode": "fixed"|"slow"}`` switches at run time.
- ``manipulation-service`` ``/manipulate`` composites a hat onto a photo
  (``overlayHat``) and returns a PNG.

Each process labels itself the way a pod would be labelled: the demo sets
``POD_NAMESPACE``, ``POD_NAME`` and ``CONTAINER_NAME``; the pyroscope-io SDK
(when ``--server`` is given) pushes CPU profiles tagged with them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import hashlib
import hmac
import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from flamewatch.demo import images

SERVICES = ("frontend", "admin-service", "manipulation-service")
PHOTO_SIZE = 128
HAT_SIZE = (64, 48)
THUMB_FACTOR = 2
PR_SET_NAME = 15
SERVICE_KEY = web.AppKey("service", str)
ADMIN_PASSWORD = "ilovecats"  # from the story; the demo is not a vault
PASSWORD_SALT = b"tinyhats"
PASSWORD_ITERATIONS = 6000  # ~1-2 ms of real CPU per admin page view, before and after the fix
PR_SET_PDEATHSIG = 1


def set_process_name(name: str, parent_death_signal: int | None = signal.SIGTERM) -> None:
    """Set /proc/self/comm (15 bytes max) so `top`, perf and the agent show the service name;
    and ask the kernel to signal us when the demo dies, so no service outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
        if parent_death_signal is not None:
            libc.prctl(PR_SET_PDEATHSIG, int(parent_death_signal), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: names are cosmetic, keep going
        pass


def pod_labels(service: str) -> dict[str, str]:
    """namespace/pod/container from the environment the demo (or Kubernetes) set."""
    return {
        "namespace": os.environ.get("POD_NAMESPACE", "default"),
        "pod": os.environ.get("POD_NAME", service),
        "container": os.environ.get("CONTAINER_NAME", service),
    }


def start_sdk(service: str, server: str, upload_interval: int, sample_rate: int) -> bool:
    """Start the real pyroscope-io SDK; returns False (with a note on stderr) when it is missing."""
    try:
        import pyroscope
    except ImportError:
        print(f"{service}: pyroscope-io is not installed (pip install pyroscope-io); no SDK profiles",
              file=sys.stderr)
        return False
    pyroscope.configure(
        application_name=service,
        server_address=server,
        tags=pod_labels(service),
        sample_rate=sample_rate,
        upload_interval=upload_interval,
        oncpu=True,  # CPU time, as the story's profiler samples on-CPU stacks
        gil_only=False,  # hashlib (the password check) burns CPU with the GIL released
    )
    return True


# The tracer of this service's requests once start_tracing ran (None: requests are not traced).
TRACER: Any = None


def start_tracing(service: str, *extra_processors: Any) -> bool:
    """Trace requests with the real OpenTelemetry SDK and link them to profiles with the real
    ``pyroscope-otel`` span processor: the samples of each root span carry its ``span_id``,
    ``trace_id`` and ``span_name`` (flamewatch keeps them beside the samples: the Requests view).
    ``extra_processors`` (tests) also see every span. False, with a note, when a package is missing."""
    global TRACER
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from pyroscope.otel import PyroscopeSpanProcessor
    except ImportError as e:
        print(f"{service}: {e}; requests are not traced (pip install opentelemetry-sdk pyroscope-otel)",
              file=sys.stderr)
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(PyroscopeSpanProcessor())
    for p in extra_processors:
        provider.add_span_processor(p)
    TRACER = provider.get_tracer("tinyhats")
    return True


def in_span(name: str, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` inside a root span ``name`` when tracing is on. Called on the worker thread
    that does the work: pyroscope-otel tags the samples of the thread the span started on."""
    if TRACER is None:
        return fn(*args)
    with TRACER.start_as_current_span(name):
        return fn(*args)


def stop_sdk() -> None:
    """Flush the last profile and stop the SDK's sampler thread."""
    with contextlib.suppress(Exception):
        import pyroscope

        pyroscope.shutdown()


# --------------------------------------------------------------------------- manipulation-service

class Manipulation:
    """Composites hats onto photos."""

    def __init__(self) -> None:
        self.photos: dict[int, images.Image] = {}
        self.hats: dict[str, images.Image] = {}
        self.calls = 0

    def photo(self, seed: int) -> images.Image:
        key = seed % 16
        if key not in self.photos:
            self.photos[key] = images.make_photo(PHOTO_SIZE, PHOTO_SIZE, key)
        return self.photos[key]

    def hat(self, style: str) -> images.Image:
        if style not in self.hats:
            self.hats[style] = images.make_hat(style, 72, 72)
        return self.hats[style]

    async def manipulate(self, request: web.Request) -> web.Response:
        body = await request.json()
        style, seed = str(body.get("hat", "tophat")), int(body.get("photo", 0))
        self.calls += 1
        png = renderMockup(self.photo(seed), self.hat(style))
        return web.Response(body=png, content_type="image/png")


    async def stats(self, request: web.Request) -> web.Response:
        """Calls served so far: the demo reads it per phase, the fix's effect counted exactly."""
        return web.json_response({"manipulate_calls": self.calls})


def renderMockup(photo: images.Image, hat: images.Image) -> bytes:
    """Scale the hat, put it on the photo, encode a PNG."""
    scaled = images.scaleHat(hat, *HAT_SIZE)
    left = (PHOTO_SIZE - HAT_SIZE[0]) // 2
    composed = images.overlayHat(photo, scaled, left, 2)
    return images.encodePng(composed)


# --------------------------------------------------------------------------- admin-service

class Admin:
    """Hats awaiting approval, and the (slow or cached) previews of them."""

    def __init__(self, session: ClientSession, manipulation_url: str, hats: int, max_hats: int) -> None:
        self.session = session
        self.manipulation = urllib.parse.urlsplit(manipulation_url)
        # At most 4 page views are in flight (the demo's load); one worker each.
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="admin-worker")
        self.max_hats = max(max_hats, hats)
        self.mode = "slow"
        self.next_id = 0
        self.hats: list[dict[str, Any]] = []
        self.mockups: dict[int, str] = {}  # hat id -> data URL, the fix's cache
        # One render per hat: a view that finds a hat's upload render still running waits for
        # it instead of calling manipulation-service again (under load, views raced uploads).
        self._rendering: dict[int, threading.Lock] = {}
        self._rendering_lock = threading.Lock()
        self.password_hash = hashlib.pbkdf2_hmac(
            "sha256", ADMIN_PASSWORD.encode(), PASSWORD_SALT, PASSWORD_ITERATIONS)
        for _ in range(hats):
            self._add(images.HAT_STYLES[self.next_id % len(images.HAT_STYLES)])

    def _add(self, style: str) -> dict[str, Any]:
        hat = {"id": self.next_id, "style": style, "photo": self.next_id % 16, "approved": False}
        self.next_id += 1
        self.hats.append(hat)
        while len(self.hats) > self.max_hats:  # the queue of hats to approve stays bounded
            old = self.hats.pop(0)
            self.mockups.pop(old["id"], None)
        return hat

    def fetchMockup(self, hat: dict[str, Any]) -> str:
        """One /manipulate call, then the thumbnail the admin page shows, as a data URL.

        A blocking HTTP call on a worker thread, as in a sync web framework: while it waits,
        the thread's stack holds createSampleImages -> fetchMockup -> the socket read, which a
        wall-clock profile (py-spy --idle, or the SDK with oncpu=False) shows as waiting.
        """
        body = json.dumps({"hat": hat["style"], "photo": hat["photo"]}).encode()
        conn = http.client.HTTPConnection(self.manipulation.hostname or "127.0.0.1", self.manipulation.port,
                                          timeout=30)
        try:
            conn.request("POST", "/manipulate", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            png = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"manipulation-service /manipulate answered HTTP {resp.status}")
        thumb = images.thumbnail(images.decodePng(png), THUMB_FACTOR)
        return "data:image/png;base64," + base64.b64encode(images.encodePng(thumb)).decode()

    def createSampleImages(self, hats: list[dict[str, Any]]) -> list[str]:
        """The bug: every page view renders every preview again, one HTTP call per hat."""
        return [self.fetchMockup(hat) for hat in hats]

    def saveMockupOnUpload(self, hat: dict[str, Any]) -> str:
        """The fix: render a hat's mockup once, when it arrives, and keep it."""
        with self._rendering_lock:
            lock = self._rendering.setdefault(hat["id"], threading.Lock())
        with lock:
            mockup = self.mockups.get(hat["id"])
            if mockup is None:
                mockup = self.mockups[hat["id"]] = self.fetchMockup(hat)
        with self._rendering_lock:
            self._rendering.pop(hat["id"], None)
        return mockup

    def backfillMockups(self, hats: list[dict[str, Any]]) -> None:
        """At the fix's deployment: the mockup of every hat uploaded before it."""
        for hat in hats:
            if hat["id"] not in self.mockups:
                self.saveMockupOnUpload(hat)

    def cachedSampleImages(self, hats: list[dict[str, Any]]) -> list[str]:
        """The fixed admin page: cached mockups (a hat uploaded before the fix gets its one)."""
        return [self.mockups.get(hat["id"]) or self.saveMockupOnUpload(hat) for hat in hats]

    async def _in_worker(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def checkAdminPassword(self, password: str) -> bool:
        """Constant-time check of a salted PBKDF2 hash, as a login should be."""
        given = hashlib.pbkdf2_hmac("sha256", password.encode(), PASSWORD_SALT, PASSWORD_ITERATIONS)
        return hmac.compare_digest(given, self.password_hash)

    async def admin(self, request: web.Request) -> web.Response:
        if not self.checkAdminPassword(request.query.get("password", "")):
            return web.json_response({"error": "wrong or missing ?password= for the admin page"}, status=403)
        hats = list(self.hats)  # a snapshot: uploads change the queue on the event loop meanwhile
        # One root span per page view, on the worker thread doing the work (in_span).
        work = self.createSampleImages if self.mode == "slow" else self.cachedSampleImages
        previews = await self._in_worker(in_span, "GET /admin", work, hats)
        rows = [dict(hat, preview=p) for hat, p in zip(hats, previews, strict=True)]
        return web.json_response({"mode": self.mode, "hats": rows})

    async def upload(self, request: web.Request) -> web.Response:
        body = await request.json()
        style = str(body.get("hat") or images.HAT_STYLES[self.next_id % len(images.HAT_STYLES)])
        hat = self._add(style)
        if self.mode == "fixed":
            await self._in_worker(self.saveMockupOnUpload, hat)
        return web.json_response({"id": hat["id"], "style": style}, status=201)

    async def control(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "body must be JSON like {\"mode\": \"fixed\"}"}, status=400)
        mode = body.get("mode") if isinstance(body, dict) else None
        if mode not in ("slow", "fixed"):
            return web.json_response(
                {"error": f"mode must be \"slow\" or \"fixed\", got {mode!r}"}, status=400
            )
        if mode == "fixed" and self.mode != "fixed":
            # Deploying the fix renders the mockups of the hats already queued, once, outside any
            # page view (as a migration would): no view after the fix waits for them, so the
            # slow views a Requests table lists are all from before the fix.
            await self._in_worker(self.backfillMockups, list(self.hats))
        self.mode = mode
        if mode == "slow":
            self.mockups.clear()
        return web.json_response({"mode": self.mode})


# --------------------------------------------------------------------------- frontend

class Frontend:
    """The public site: the admin page is a thin wrapper around admin-service."""

    def __init__(self, session: ClientSession, admin_url: str) -> None:
        self.session = session
        self.admin_url = admin_url.rstrip("/")

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text="<h1>tinyhats</h1><a href='/admin?password=ilovecats'>admin</a>",
                            content_type="text/html")

    async def admin(self, request: web.Request) -> web.Response:
        params = {"password": request.query.get("password", "")}
        async with self.session.get(self.admin_url + "/admin", params=params) as resp:
            data = await resp.json()
            if resp.status != 200:
                return web.json_response(data, status=resp.status)
        cells = "".join(f"<figure><img src='{h['preview']}'><figcaption>{h['style']}</figcaption></figure>"
                        for h in data["hats"])
        return web.Response(text=f"<h1>Approve hats ({data['mode']})</h1>{cells}", content_type="text/html")

    async def upload(self, request: web.Request) -> web.Response:
        async with self.session.post(self.admin_url + "/upload", json=await request.json()) as resp:
            return web.json_response(await resp.json(), status=resp.status)


# --------------------------------------------------------------------------- process main

async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "service": request.app[SERVICE_KEY], "pid": os.getpid()})


async def build_app(args: argparse.Namespace, session: ClientSession) -> web.Application:
    """The aiohttp application of ``args.service``."""
    app = web.Application()
    app[SERVICE_KEY] = args.service
    app.router.add_get("/healthz", healthz)
    if args.service == "manipulation-service":
        m = Manipulation()
        app.router.add_post("/manipulate", m.manipulate)
        app.router.add_get("/stats", m.stats)
    elif args.service == "admin-service":
        a = Admin(session, args.manipulation, args.hats, args.max_hats)
        app.router.add_get("/admin", a.admin)
        app.router.add_post("/upload", a.upload)
        app.router.add_post("/control", a.control)
    else:
        f = Frontend(session, args.admin)
        app.router.add_get("/", f.index)
        app.router.add_get("/admin", f.admin)
        app.router.add_post("/upload", f.upload)
    return app


async def serve(args: argparse.Namespace) -> None:
    """Listen until SIGTERM/SIGINT, then close the listener and the client session."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with ClientSession(timeout=ClientTimeout(total=30)) as session:
        app = await build_app(args, session)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"READY {port}", flush=True)
        await stop.wait()
        await runner.cleanup()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flamewatch.demo.tinyhats",
                                description="One tinyhats microservice (started by `flamewatch demo`).")
    p.add_argument("service", choices=SERVICES)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port; printed as READY <port>")
    p.add_argument("--admin", default="", help="admin-service base URL (frontend)")
    p.add_argument("--manipulation", default="", help="manipulation-service base URL (admin-service)")
    p.add_argument("--hats", type=int, default=6, help="hats awaiting approval at start (admin-service)")
    p.add_argument("--max-hats", type=int, default=8, help="bound on the approval queue (admin-service)")
    p.add_argument("--server", default="", help="flamewatch URL for the pyroscope-io SDK; empty: no SDK")
    p.add_argument("--upload-interval", type=int, default=10, help="SDK upload interval, seconds")
    p.add_argument("--sample-rate", type=int, default=100, help="SDK sampling rate, Hz")
    args = p.parse_args(argv)
    if args.service == "frontend" and not args.admin:
        p.error("frontend needs --admin URL (the admin-service base URL)")
    if args.service == "admin-service" and not args.manipulation:
        p.error("admin-service needs --manipulation URL (the manipulation-service base URL)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    set_process_name(args.service)
    sdk = bool(args.server) and start_sdk(args.service, args.server, args.upload_interval, args.sample_rate)
    if sdk and args.service == "admin-service":
        start_tracing(args.service)
    started = time.monotonic()
    try:
        asyncio.run(serve(args))
    finally:
        if sdk:
            stop_sdk()
    print(f"{args.service}: stopped after {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
