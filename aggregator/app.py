"""The aiohttp application: routes, auth, limits and error mapping. Handlers are thin.

``create_app(settings, store=None)`` returns an application whose startup opens
the store and starts the window committer and the maintenance loop. Every read
route is a :class:`Route` row: typed request parser (aggregator.params), query
function (aggregator.query), one adapter (:func:`handler`) between them and HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aggregator import cumulative, guards, ingest, params, producers, querier, query
from aggregator import spans as span_profiles
from aggregator.handlers import (
    CLOCK,
    DECODER,
    DELTAS,
    HEALTH,
    METRICS,
    READ_STORE,
    SETTINGS,
    SPANS,
    STORE,
    TABLES,
    WRITER,
    Handler,
    _timed,
    guard,
    handle_ingest,
    handle_otlp,
    handle_push,
    query_context,
)
from aggregator.metrics import Metrics
from aggregator.settings import ServeSettings
from aggregator.store import Store, StoreError, open_store
from aggregator.store.base import Compacting, SharedCumulative, redacted
from aggregator.windows import WindowWriter
from ground.settings import resolve
from render import Output
from stacks.otlp import OTLP_PATH

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """A read route: ``parse`` its parameters once into a typed request, ``run`` the query on the
    store, and answer; timed under ``op`` in ``store_seconds`` when one is given."""

    path: str
    parse: Callable[[Mapping[str, str], params.Context], Any]
    run: Callable[[Any, Any], Awaitable[Output | dict[str, Any]]]
    op: str | None = None
    spans: bool = False  # ``run`` reads the span store (aggregator/spans.py), not the main store


ROUTES = (
    Route("/api/v1/render", params.RenderRequest.parse, query.render, "render"),
    Route("/api/v1/diff", params.DiffRequest.parse, query.diff, "diff"),
    Route("/api/v1/labels", params.LabelsRequest.parse, query.labels),
    Route("/api/v1/profile_types", params.RangeRequest.parse, query.profile_types),
    Route("/api/v1/label/{name}/values", params.LabelValuesRequest.parse, query.label_values),
    Route("/api/v1/timeline", params.TimelineRequest.parse, query.timeline, "timeline"),
    Route("/api/v1/top", params.TopRequest.parse, query.top),
    Route("/api/v1/sandwich", params.SandwichRequest.parse, query.sandwich),
    Route("/api/v1/span_profile", span_profiles.SpanProfileRequest.parse, span_profiles.span_profile,
          "span_profile", spans=True),
    Route("/api/v1/requests", span_profiles.RequestsRequest.parse, span_profiles.requests, "requests", spans=True),
)


def handler(route: Route) -> Handler:
    """The aiohttp handler of ``route``: parse, query, serialize (errors are mapped by :func:`guard`)."""

    async def answer(request: web.Request) -> Output | dict[str, Any]:
        app = request.app
        ctx = query_context(app, request.match_info)
        return await route.run(app[SPANS] if route.spans else app[READ_STORE], route.parse(request.query, ctx))

    async def handle(request: web.Request) -> web.Response:
        out = await (_timed(request, route.op, answer(request)) if route.op else answer(request))
        return _respond(out)

    return handle


def _respond(out: Output | dict[str, Any]) -> web.Response:
    """A query's answer as a response: a dict as JSON; an :class:`Output` in its content type
    (its JSON compact: flame documents are the large answers)."""
    if not isinstance(out, Output):
        return web.json_response(out)
    ctype, body = out.content_type, out.body
    if ctype == "application/json":
        return web.Response(text=json.dumps(body, separators=(",", ":")), content_type="application/json")
    if isinstance(body, bytes):
        return web.Response(body=body, content_type=ctype.split(";")[0])
    assert isinstance(body, str)
    return web.Response(text=body, content_type=ctype.split(";")[0])


async def handle_metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    store = request.app[STORE]
    if isinstance(store, Compacting):
        m.open_windows.set(store.open_windows())
    resp = web.Response(body=generate_latest(m.registry))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


def _health(request: web.Request) -> dict[str, Any]:
    problems = request.app[HEALTH].problems()
    return {"status": "degraded" if problems else "ok", "problems": problems,
            "storage": redacted(request.app[SETTINGS].storage),
            "window_seconds": request.app[SETTINGS].window_seconds,
            "compiled_readers": request.app[TABLES].in_use()}


async def handle_healthz(request: web.Request) -> web.Response:
    """Liveness: 200 while the process answers; ``status`` "degraded" names the store's problems."""
    return web.json_response(_health(request))


async def handle_readyz(request: web.Request) -> web.Response:
    """Readiness: 503 while the store is degraded (pushes failing, corruption met), else 200."""
    doc = _health(request)
    return web.json_response(doc, status=503 if doc["problems"] else 200)


async def _maintenance(app: web.Application) -> None:
    writer = app[WRITER]
    interval = app[SETTINGS].compact_interval_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            done = await writer.maintain()
            if app[SETTINGS].retention_seconds:
                cut = int(app[CLOCK]() - app[SETTINGS].retention_seconds)
                done["cumulative_forgotten"] = await app[DELTAS].state.forget_before(cut)
            if any(done.values()):
                log.info("maintenance: %s", done)
        except StoreError as e:
            log.error("maintenance failed (will retry in %ss): %s", interval, e)
        except Exception:
            log.exception("maintenance failed")


AddRoutes = Callable[[web.Application], None]


def create_app(
    settings: ServeSettings | None = None,
    store: Store | None = None,
    *,
    clock: Callable[[], float] = time.time,
    extra: Sequence[AddRoutes] = (),
) -> web.Application:
    """The aggregator application; each of ``extra`` then adds its routes to it (behind the same
    auth and error middleware). ``flamewatch serve`` passes the viewer's there: the aggregator
    itself never imports the viewer (flamewatch/serve_cmd.py composes the two)."""
    settings = settings if settings is not None else resolve(ServeSettings, {}, environ={})
    # Bodies up to the limit are read; beyond it aiohttp raises 413 (mapped to JSON by guard).
    # auto_decompress off: gzip bodies are inflated by stacks.gz under --max-decompressed-bytes,
    # never by aiohttp without a cap.
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[guards.header_clock, guard],
                          handler_args={"auto_decompress": False})
    if store is None:
        store = open_store(settings.storage, settings.data_dir, sqlite_synchronous=settings.sqlite_synchronous,
                           check_seconds=settings.integrity_check_seconds,
                           stack_cache=settings.sqlite_stack_cache,
                           max_cells=settings.max_query_cells)
    metrics = Metrics()
    app[SETTINGS] = settings
    app[STORE] = store
    app[READ_STORE] = producers.read_view(store, settings.one_producer_per_process)
    app[METRICS] = metrics
    app[TABLES] = ingest.IngestTables(compiled=settings.compiled_readers)
    # ClickHouse: one state in the database for every replica; SQLite: the process keeps it.
    app[DELTAS] = cumulative.Deltas(
        store.cumulative_state() if isinstance(store, SharedCumulative) else cumulative.MemoryState())
    app[CLOCK] = clock
    app[HEALTH] = guards.Health()
    app[DECODER] = ThreadPoolExecutor(1, thread_name_prefix="decode")
    app[SPANS] = span_profiles.SpanStore(
        span_profiles.spans_path(settings.data_dir), max_rows=settings.span_max_rows,
        retention_seconds=settings.retention_seconds, clock=clock)

    def on_commit(n: int, seconds: float) -> None:
        metrics.committed_windows.inc(n)
        metrics.store_seconds.labels("write").observe(seconds)

    app[WRITER] = WindowWriter(
        store, window_seconds=settings.window_seconds, late_grace_seconds=settings.late_grace_seconds,
        retention_seconds=settings.retention_seconds, commit_interval=settings.commit_interval_ms / 1000,
        clock=clock, on_commit=on_commit,
    )
    app.router.add_post("/push.v1.PusherService/Push", handle_push)
    app.router.add_post("/ingest", handle_ingest)
    app.router.add_post(OTLP_PATH, handle_otlp)
    for route in ROUTES:
        app.router.add_get(route.path, handler(route))
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)

    querier.add_routes(app)  # Pyroscope's read API
    app.cleanup_ctx.append(_lifecycle)
    if settings.grpc:
        from aggregator.grpc_server import grpc_listener

        app.cleanup_ctx.append(grpc_listener)
    for add_routes in extra:
        add_routes(app)
    return app


async def _lifecycle(app: web.Application) -> Any:
    """Open the store and start the writer and maintenance; on shutdown commit and close."""
    await app[STORE].open()
    state = app[DELTAS].state
    if isinstance(state, cumulative.MemoryState):
        state.restore(cumulative.state_path(app[SETTINGS].data_dir))
    for problem in getattr(app[STORE], "startup_problems", ()):
        app[HEALTH].corrupt(problem)
    app[WRITER].start()
    task = asyncio.get_running_loop().create_task(_maintenance(app), name="maintenance")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await app[WRITER].close()
    if isinstance(state, cumulative.MemoryState):
        try:
            state.dump(cumulative.state_path(app[SETTINGS].data_dir))
        except OSError as e:
            log.warning("cumulative state not saved (%s): each series' next push is a new baseline", e)
    await app[STORE].close()
    app[DECODER].shutdown(wait=False)
    await app[SPANS].close()
