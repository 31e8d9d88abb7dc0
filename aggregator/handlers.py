"""What every route of the aggregator shares: the application's keys, the guard (auth, limits,
error mapping), request bodies, and the push handlers (Pyroscope push and /ingest, OTLP, JFR).

:mod:`aggregator.app` builds the application from these and its read routes; Pyroscope's read
API (:mod:`aggregator.querier`) and the gRPC listener (:mod:`aggregator.grpc_server`) use them
too, so none of them imports the module that mounts it (tests/test_layers.py: no import circle).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from aggregator import cumulative, guards, ingest, jfr, otlp, params, producers
from aggregator import spans as span_profiles
from aggregator.metrics import Metrics
from aggregator.settings import ServeSettings
from aggregator.store import Store, StoreError
from aggregator.store.base import CorruptionError, SumOverflow
from aggregator.windows import WindowWriter
from stacks.errors import InputError, LimitError

log = logging.getLogger(__name__)

STORE = web.AppKey("store", Store)
WRITER = web.AppKey("writer", WindowWriter)
SETTINGS = web.AppKey("settings", ServeSettings)
METRICS = web.AppKey("metrics", Metrics)
TABLES = web.AppKey("tables", ingest.IngestTables)
DELTAS = web.AppKey("deltas", cumulative.Deltas)
CLOCK = web.AppKey("clock", Callable)  # type: ignore[type-abstract]
READ_STORE = web.AppKey("read_store", Store)  # the store as queries see it (aggregator/producers.py)
HEALTH = web.AppKey("health", guards.Health)
# Push decoding runs on this one thread, off the event loop: one thread because the shared
# ingest tables are not thread-safe; the loop stays free for /healthz and queries meanwhile.
DECODER = web.AppKey("decoder", ThreadPoolExecutor)
SPANS = web.AppKey("spans", span_profiles.SpanStore)

PUSH_PREFIXES = ("/push.v1.", "/ingest", "/pyroscope/ingest", "/v1development/")
# Pyroscope's read API (aggregator/querier.py) is read-token guarded like /api.
READ_PREFIXES = ("/api/", "/querier.v1.", "/settings.v1.", "/pyroscope/")
CONNECT_PREFIXES = ("/querier.v1.", "/settings.v1.")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str, **extra: Any) -> web.Response:
    """A JSON error body ``{"error": message}``."""
    return web.json_response({"error": message, **extra}, status=status)


def _check_token(request: web.Request, token: str, what: str) -> web.Response | None:
    if not token:
        return None
    given = _given_token(request.headers.get("Authorization", ""))
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        message = (f"{what} needs 'Authorization: Bearer <token>' (or Basic auth with the token as "
                   f"password) matching the server's --{what}-token; the one given is "
                   f"{'wrong' if given else 'missing'}")
        # Connect clients (Grafana, profilecli) read Connect's error shape.
        body = ({"code": "unauthenticated", "message": message} if request.path.startswith(CONNECT_PREFIXES)
                else {"error": message})
        return web.json_response(body, status=401, headers={"WWW-Authenticate": "Bearer"})
    return None


def _given_token(auth: str) -> str:
    """The token of a Bearer header, or the password of a Basic one (any user: Grafana's data
    sources send Basic auth)."""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return ""
    return ""


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth per route family, JSON errors, and no exception ever escapes to kill anything."""
    app = request.app
    s = app[SETTINGS]
    m = app[METRICS]
    path = request.path
    denied = None
    if path.startswith(PUSH_PREFIXES):
        denied = _check_token(request, s.push_token, "push") or guards.cross_origin_refusal(
            request, connect_route=path.startswith("/push.v1."))
    elif path.startswith(READ_PREFIXES):
        denied = _check_token(request, s.read_token, "read")
    if denied is not None:
        m.errors.labels("401").inc()
        return denied
    try:
        resp = await handler(request)
        if path.startswith(PUSH_PREFIXES) and resp.status < 300:
            app[HEALTH].write_ok()
        return resp
    except (ingest.SumRefused, SumOverflow) as e:
        # Past the 64-bit count limit: well-formed but not storable / not summable (cause 6).
        m.errors.labels("422").inc()
        return error(422, str(e))
    except LimitError as e:
        # Past a decompression limit (a gzip bomb, an oversized push): too large, not malformed.
        m.errors.labels("413").inc()
        return error(413, str(e), limit=e.limit)
    except InputError as e:
        m.errors.labels("400").inc()
        log.debug("400 on %s %s: %s", request.method, path, e)
        return error(400, str(e))
    except CorruptionError as e:
        m.errors.labels("503").inc()
        app[HEALTH].corrupt(str(e))
        log.error("database corruption met on %s %s: %s", request.method, path, e)
        return error(503, f"storage damaged: {e}")
    except StoreError as e:
        m.errors.labels("503").inc()
        if path.startswith(PUSH_PREFIXES):
            app[HEALTH].write_failed(str(e))
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
    # client_max_size enforces the limit for chunked bodies; a body trickled in slower than
    # --body-timeout-seconds gets a 408 (slow clients hold a connection and a buffer each).
    return await guards.read_with_timeout(request.read(), request.app[SETTINGS].body_timeout_seconds,
                                          "request body")


def limits(s: ServeSettings) -> ingest.Limits:
    """The per-push limits of the settings."""
    return ingest.Limits(s.max_profiles_per_push, s.max_series_per_push, s.max_samples_per_push)


async def off_loop(request: web.Request, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on the decoder thread (decode and merge never stall the event loop)."""
    return await asyncio.get_running_loop().run_in_executor(request.app[DECODER], fn, *args)


async def _store_items(request: web.Request, decoded: ingest.Decoded, route: str) -> dict[str, Any]:
    return await store_decoded(request.app, decoded, route,
                               producers.spy_of_request(request.query, request.headers))


async def store_decoded(app: web.Application, decoded: ingest.Decoded, route: str, spy: str = ""
                        ) -> dict[str, Any]:
    """Write a decoded push through the window writer and count it; the push answer (shared with
    the gRPC listener, aggregator/grpc_server.py). Series without a producer label get ``spy``'s."""
    m = app[METRICS]
    # Running totals become deltas against the shared state, saved once the samples are written.
    async with app[DELTAS].applied(decoded):
        producers.name_producers(decoded, spy)  # after: the deltas are items too
        ingest.check_sums(decoded)  # before anything is queued: a refused push stores nothing
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
    decode = ingest.decode_push_json if ctype == "application/json" else ingest.decode_push
    decoded = await off_loop(request, decode, body, request.app[TABLES], s.max_decompressed_bytes, limits(s))
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
    if (params.get("format") or "").lower() == "jfr":
        return await _ingest_jfr(request, params)
    if request.content_type == "multipart/form-data":
        body = await _multipart_profile(request)
        params.setdefault("format", "pprof")
    else:
        body = await read_body(request)
    if request.headers.get("Content-Encoding", "").lower() == "gzip" and body[:2] != b"\x1f\x8b":
        raise InputError("Content-Encoding: gzip, but the body is not gzip (no 1f8b magic)")
    if "format" not in params and request.content_type == "application/x-protobuf":
        params["format"] = "pprof"
    decoded = await off_loop(request, ingest.decode_ingest, params, body, request.app[TABLES],
                             s.max_decompressed_bytes, limits(s))
    answer = await _store_items(request, decoded, "ingest")
    return _all_dropped(answer) or web.json_response(answer)


async def handle_otlp(request: web.Request) -> web.Response:
    """OTLP/HTTP ``POST /v1development/profiles``: an ``ExportProfilesServiceRequest`` (protobuf or
    OTLP JSON, gzip or plain), through the same ingest path as pprof pushes (aggregator/otlp.py)."""
    s = request.app[SETTINGS]
    body = await read_body(request)
    ctype = request.content_type
    decoded = await otlp.decode_body(body, ctype, request.app[TABLES], s.max_decompressed_bytes)
    answer = await _store_items(request, decoded, "otlp")
    refused = _all_dropped(answer)
    if refused is not None:
        return refused
    if ctype == "application/json":
        return web.json_response({} if not answer["not_stored"] else {
            "partialSuccess": {"rejectedProfiles": len(answer["not_stored"]), "errorMessage": answer["warning"]}})
    return web.Response(body=otlp.response_bytes(answer), content_type="application/x-protobuf")


async def _ingest_jfr(request: web.Request, params: dict[str, str]) -> web.Response:
    """pyroscope-java's ``format=jfr``: multipart ``jfr`` (gzip or plain JFR) and ``labels``
    (a LabelsSnapshot protobuf), or the JFR as the whole body (aggregator/jfr.py)."""
    s = request.app[SETTINGS]
    if request.content_type == "multipart/form-data":
        parts = await _multipart_parts(request, ("jfr", "labels"))
        if "jfr" not in parts:
            raise InputError("format=jfr multipart body has no 'jfr' part: send the recording as form field 'jfr' "
                             f"(parts seen: {sorted(parts) or 'none'})")
        jfr_body, labels = parts["jfr"], parts.get("labels", b"")
    else:
        jfr_body, labels = await read_body(request), b""
    tables = request.app[TABLES]
    w = otlp.worker_of(tables)  # off the loop: a large recording takes seconds in Python
    decoded = await w.run(lambda: jfr.decode_jfr_ingest(params, jfr_body, labels, w.current(),
                                                        s.max_decompressed_bytes), tables)
    answer = await _store_items(request, decoded, "ingest")
    return _all_dropped(answer) or web.json_response(answer)


async def _multipart_parts(request: web.Request, names: tuple[str, ...]) -> dict[str, bytes]:
    """The named parts of a multipart body (others skipped), under --max-body-bytes in all."""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    out: dict[str, bytes] = {}
    total = 0
    try:
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            name = getattr(part, "name", None)
            buf = bytearray()
            # Chunked bodies (pyroscope-java sends them) have no Content-Length: count as we read.
            while chunk := await part.read_chunk(1 << 16):  # type: ignore[union-attr]
                total += len(chunk)
                if total > limit:
                    raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=total)
                if name in names:
                    buf += chunk
            if name in names and name not in out:
                out[name] = bytes(buf)
    except ValueError as e:
        raise InputError(f"multipart body is malformed: {e}") from None
    return out


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
                return bytes(await guards.read_with_timeout(
                    part.read(decode=False), request.app[SETTINGS].body_timeout_seconds,  # type: ignore[union-attr]
                    "multipart 'profile' part"))
    except ValueError as e:
        raise InputError(f"multipart body is malformed: {e}") from None
    raise InputError("multipart body has no 'profile' part: send the pprof as form field 'profile'")


async def _timed(request: web.Request, op: str, coro: Awaitable[Any]) -> Any:
    t0 = time.perf_counter()
    try:
        return await coro
    finally:
        request.app[METRICS].store_seconds.labels(op).observe(time.perf_counter() - t0)


def query_context(app: web.Application, match_info: Mapping[str, str] | None = None) -> params.Context:
    """The parse context of a read request: the clock now and the settings' defaults and bounds
    (shared by the /api/v1 routes and Pyroscope's read API, aggregator/querier.py)."""
    s = app[SETTINGS]
    return params.Context(app[CLOCK](), s.window_seconds, s.max_nodes, match_info or {},
                          max_groups=s.max_groups, max_label_values=s.max_label_values)
