"""The HTTP/2 (gRPC) listener: OTLP ``ProfilesService/Export`` and Pyroscope ``PusherService/Push``.

A ``grpc.aio`` server on the aggregator's event loop (``--grpc true``, ``--grpc-port``,
default 4317, OTLP's gRPC port). Both methods are generic unary handlers that take the raw
request bytes, so a malformed message gets our own INVALID_ARGUMENT naming the problem, and
decode through the same functions as the HTTP routes (aggregator/otlp.py, aggregator/ingest.py),
under the same limits: ``max_receive_message_length`` is ``--max-body-bytes``, decompressed
bodies are bounded by ``--max-decompressed-bytes``, the push token is checked on the
``authorization`` metadata.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from aggregator import ingest, otlp
from stacks.errors import InputError, LimitError

log = logging.getLogger(__name__)

OTLP_SERVICE = "opentelemetry.proto.collector.profiles.v1development.ProfilesService"
PUSH_SERVICE = "push.v1.PusherService"
GRPC_SERVER = web.AppKey("grpc_server", object)
GRPC_PORT = web.AppKey("grpc_port", int)


def _identity(b: bytes) -> bytes:
    return b


Method = Callable[[bytes, Any], Awaitable[bytes]]


def _handlers(app: web.Application) -> list[grpc.GenericRpcHandler]:
    from aggregator.handlers import METRICS, SETTINGS, TABLES, store_decoded

    s = app[SETTINGS]

    def guarded(fn: Callable[[bytes], Awaitable[bytes]], route: str) -> Method:
        async def call(body: bytes, context: Any) -> bytes:
            if s.push_token:
                auth = dict(context.invocation_metadata()).get("authorization", "")
                given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
                if not given or not hmac.compare_digest(given.encode(), s.push_token.encode()):
                    app[METRICS].errors.labels("401").inc()
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                        "push needs metadata 'authorization: Bearer <token>' matching --push-token")
            try:
                return await fn(body)
            except LimitError as e:
                app[METRICS].errors.labels("413").inc()
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
            except InputError as e:
                app[METRICS].errors.labels("400").inc()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise AssertionError("unreachable")  # abort raises

        return call

    async def export(body: bytes) -> bytes:
        decoded = await otlp.decode_body(body, "application/x-protobuf", app[TABLES], s.max_decompressed_bytes)
        answer = await store_decoded(app, decoded, "otlp_grpc")
        return otlp.response_bytes(answer)

    async def push(body: bytes) -> bytes:
        decoded = ingest.decode_push(body, app[TABLES], s.max_decompressed_bytes)
        await store_decoded(app, decoded, "push_grpc")
        return b""  # an empty PushResponse

    def unary(fn: Method) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_identity,
                                                   response_serializer=_identity)

    return [
        grpc.method_handlers_generic_handler(OTLP_SERVICE, {"Export": unary(guarded(export, "otlp"))}),
        grpc.method_handlers_generic_handler(PUSH_SERVICE, {"Push": unary(guarded(push, "push"))}),
    ]


async def grpc_listener(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: start the gRPC server with the app (when ``--grpc true``), stop it after."""
    from aggregator.handlers import SETTINGS

    s = app[SETTINGS]
    limit = s.max_body_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", 1 << 20),
                                      # grpcio shares ports by default: a second serve would split the
                                      # pushes silently instead of failing to start.
                                      ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(_handlers(app))
    host = "[::]" if s.host in ("0.0.0.0", "::") else s.host
    try:
        port = server.add_insecure_port(f"{host}:{s.grpc_port}")
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen for gRPC on {s.host}:{s.grpc_port} (--grpc-port)")
    await server.start()
    app[GRPC_SERVER] = server
    app[GRPC_PORT] = port
    print(f"flamewatch serve: gRPC (OTLP profiles, push.v1) on {s.host}:{port}", flush=True)
    yield
    await server.stop(grace=2)
