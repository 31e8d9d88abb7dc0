"""The aiohttp application: routes, auth, limits and error mapping. Handlers are thin.

``create_app(settings, store=None)`` returns an application whose startup opens
the store and starts the window committer and the maintenance loop. Every read
route is a :class:`Route` row: typed request parser (aggregator.params), query
function (aggregator.query), one adapter (:func:`handler`) between them and HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aggregator import ingest, params, query
from aggregator import spans as span_profiles
from aggregator.metrics import Metrics
from aggregator.settings import ServeSettings
from aggregator.store import Store, StoreError, open_store
from aggregator.store.base import Compacting
from aggregator.windows import WindowWriter
from ground.settings import resolve
from render import Output
from stacks.errors import InputError, LimitError

log = logging.getLogger(__name__)

STORE = web.AppKey("store", Store)
WRITER = web.AppKey("writer", WindowWriter)
SETTINGS = web.AppKey("settings", ServeSettings)
METRICS = web.AppKey("metrics", Metrics)
TABLES = web.AppKey("tables", ingest.IngestTables)
CLOCK = web.AppKey("clock", Callable)  # type: ignore[type-abstract]
SPANS = web.AppKey("spans", span_profiles.SpanStore)

PUSH_PREFIXES = ("/push.v1.", "/ingest")
READ_PREFIXES = ("/api/",)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str, **extra: Any) -> web.Response:
    """A JSON error body ``{"error": message}``."""
    return web.json_response({"error": message, **extra}, status=status)


def _check_token(request: web.Request, token: str, what: str) -> web.Response | None:
    if not token:
        return None
    auth = request.headers.get("Authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        return web.json_response(
            {"error": f"{what} needs 'Authorization: Bearer <token>' matching the server's "
                      f"--{what}-token; the one given is {'wrong' if given else 'missing'}"},
            status=401, headers={"WWW-Authenticate": "Bearer"},
        )
    return None


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth per route family, JSON errors, and no exception ever escapes to kill anything."""
    app = request.app
    s = app[SETTINGS]
    m = app[METRICS]
    path = request.path
    denied = None
    if path.startswith(PUSH_PREFIXES):
        denied = _check_token(request, s.push_token, "push")
    elif path.startswith(READ_PREFIXES):
        denied = _check_token(request, s.read_token, "read")
    if denied is not None:
        m.errors.labels("401").inc()
        return denied
    try:
        return await handler(request)
    except LimitError as e:
        # Past a decompression limit (a gzip bomb, an oversized push): too large, not malformed.
        m.errors.labels("413").inc()
        return error(413, str(e), limit=e.limit)
    except InputError as e:
        m.errors.labels("400").inc()
        return error(400, str(e))
    except StoreError as e:
        m.errors.labels("503").inc()
        log.error("storage failure on %s %s: %s", request.method, path, e)
        return error(503, f"storage unavailable: {e}")
    except web.HTTPRequestEntityTooLarge:
        m.errors.labels("413").inc()
        return error(413, f"request body is larger than --max-body-bytes={s.max_body_bytes}")
    except web.HTTPException as e:
        if e.status >= 400:
            m.errors.labels(str(e.status)).inc()
            return error(e.status, e.text or e.reason)
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:
        m.errors.labels("500").inc()
        log.exception("internal error on %s %s", request.method, path)
        return error(500, f"internal error: {type(e).__name__}: {e}")


async def read_body(request: web.Request) -> bytes:
    """The request body, refusing more than --max-body-bytes with a 413 before reading it."""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    body = await request.read()  # client_max_size enforces the limit for chunked bodies
    return body


async def _store_items(request: web.Request, decoded: ingest.Decoded, route: str) -> dict[str, Any]:
    app = request.app
    m = app[METRICS]
    placed = await app[WRITER].add(decoded.items)
    if decoded.spans:  # after the samples: a span row never points at samples not stored
        await app[SPANS].add(decoded.spans)
    m.pushes.labels(route).inc()
    m.samples.inc(placed.samples)
    m.lines.inc(decoded.lines)
    for reason, n in {**decoded.skipped, **placed.dropped}.items():
        m.dropped.labels(reason).inc(n)
    return ingest.answer(placed, decoded, app[SETTINGS].retention_seconds)


def _all_dropped(answer: dict[str, Any]) -> web.Response | None:
    """422 when a push carried data and none of it was stored (e.g. all older than retention)."""
    if answer["not_stored"] and not answer["stored"] and all(
            x["reason"] in ingest.REFUSED for x in answer["not_stored"]):
        return web.json_response({"error": answer["warning"], **answer}, status=422)
    return None


async def handle_push(request: web.Request) -> web.Response:
    """Connect unary ``push.v1.PusherService/Push``: gzip (or plain) protobuf, or Connect JSON."""
    s = request.app[SETTINGS]
    body = await read_body(request)
    ctype = request.content_type
    # Decoding runs on the loop on purpose: the shared ingest StackTable is not thread-safe,
    # and decode cost per push is milliseconds (see bench/ingest.py).
    decode = ingest.decode_push_json if ctype == "application/json" else ingest.decode_push
    decoded = decode(body, request.app[TABLES], s.max_decompressed_bytes)
    answer = await _store_items(request, decoded, "push")
    refused = _all_dropped(answer)
    if refused is not None:
        return refused
    # Partly stored: say so in a header (a PushResponse has no field for it) and, for JSON, the body.
    headers = {"X-Flamewatch-Not-Stored": answer["warning"]} if answer["not_stored"] else None
    if ctype == "application/json":
        return web.json_response({} if not answer["not_stored"] else answer, headers=headers)
    # An empty PushResponse message.
    return web.Response(body=b"", content_type="application/proto", headers=headers)


async def handle_ingest(request: web.Request) -> web.Response:
    """Legacy ``/ingest?name=app{k=v}&from=&until=&format=folded|pprof&sampleRate=``.

    The body is folded text (default) or pprof; a ``multipart/form-data`` body
    (what old Go SDKs send) is read from its ``profile`` part as pprof.
    """
    s = request.app[SETTINGS]
    params = dict(request.query)
    if request.content_type == "multipart/form-data":
        body = await _multipart_profile(request)
        params.setdefault("format", "pprof")
    else:
        body = await read_body(request)
    if request.headers.get("Content-Encoding", "").lower() == "gzip" and body[:2] != b"\x1f\x8b":
        raise InputError("Content-Encoding: gzip, but the body is not gzip (no 1f8b magic)")
    if "format" not in params and request.content_type == "application/x-protobuf":
        params["format"] = "pprof"
    decoded = ingest.decode_ingest(params, body, request.app[TABLES], s.max_decompressed_bytes)
    answer = await _store_items(request, decoded, "ingest")
    return _all_dropped(answer) or web.json_response(answer)


async def _multipart_profile(request: web.Request) -> bytes:
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    try:
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if getattr(part, "name", None) == "profile":
                return bytes(await part.read(decode=False))  # type: ignore[union-attr]
    except ValueError as e:
        raise InputError(f"multipart body is malformed: {e}") from None
    raise InputError("multipart body has no 'profile' part: send the pprof as form field 'profile'")


async def _timed(request: web.Request, op: str, coro: Awaitable[Any]) -> Any:
    t0 = time.perf_counter()
    try:
        return await coro
    finally:
        request.app[METRICS].store_seconds.labels(op).observe(time.perf_counter() - t0)


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
        s = app[SETTINGS]
        ctx = params.Context(app[CLOCK](), s.window_seconds, s.max_nodes, request.match_info)
        return await route.run(app[SPANS] if route.spans else app[STORE], route.parse(request.query, ctx))

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


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "storage": request.app[SETTINGS].storage,
                              "window_seconds": request.app[SETTINGS].window_seconds,
                              "compiled_readers": request.app[TABLES].in_use()})


async def _maintenance(app: web.Application) -> None:
    writer = app[WRITER]
    interval = app[SETTINGS].compact_interval_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            done = await writer.maintain()
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
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[guard],
                          handler_args={"auto_decompress": False})
    if store is None:
        store = open_store(settings.storage, settings.data_dir, sqlite_synchronous=settings.sqlite_synchronous)
    metrics = Metrics()
    app[SETTINGS] = settings
    app[STORE] = store
    app[METRICS] = metrics
    app[TABLES] = ingest.IngestTables(compiled=settings.compiled_readers)
    app[CLOCK] = clock
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
    for route in ROUTES:
        app.router.add_get(route.path, handler(route))
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/healthz", handle_healthz)
    app.cleanup_ctx.append(_lifecycle)
    for add_routes in extra:
        add_routes(app)
    return app


async def _lifecycle(app: web.Application) -> Any:
    """Open the store and start the writer and maintenance; on shutdown commit and close."""
    await app[STORE].open()
    app[WRITER].start()
    task = asyncio.get_running_loop().create_task(_maintenance(app), name="maintenance")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await app[WRITER].close()
    await app[STORE].close()
    await app[SPANS].close()
