"""The gRPC listener of a real ``flamewatch serve`` with a real ``grpcio`` client: OTLP
``ProfilesService/Export`` and Pyroscope ``push.v1.PusherService/Push``, errors and auth;
and the OTLP/HTTP port (``--otlp-http-port``) beside the main one."""

from __future__ import annotations

import gzip
import json
import time
import urllib.parse

import grpc
import pytest

from stacks.folded import parse
from stacks.otlp import ExportProfilesServiceResponse
from stacks.pprof import encode_pprof
from stacks.push import PushSeries, RawSample, encode_push_request
from tests.support.otlp_build import Builder
from tests.support.server import free_port, running_server

EXPORT = "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export"
PUSH = "/push.v1.PusherService/Push"


def _call(port: int, method: str, body: bytes, metadata: tuple = (), compression=None) -> bytes:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        fn = ch.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return fn(body, timeout=20, metadata=metadata, compression=compression)


def _folded(srv, sel: str, ptype: str = "") -> str:  # type: ignore[no-untyped-def]
    extra = f"&profile_type={urllib.parse.quote(ptype)}" if ptype else ""
    status, body = srv.get(f"/api/v1/render?query={urllib.parse.quote(sel)}&from=now-1h&until=now%2B1m"
                           f"&format=folded{extra}")
    assert status == 200, body
    return body.decode()


def test_grpc_export_and_push(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gport = free_port()
    with running_server(tmp_path, "--grpc", "true", "--grpc-port", str(gport), "--push-token", "tok") as srv:
        assert f"gRPC (OTLP profiles, push.v1) on 127.0.0.1:{gport}" in srv.log()
        auth = (("authorization", "Bearer tok"),)
        b = Builder()
        b.profile({"service.name": "otel-grpc", "k8s.namespace.name": "ns1"},
                  [(["main", "serve"], 6), (["main", "gc"], 1)], time_ns=time.time_ns())
        got = _call(gport, EXPORT, b.bytes(), auth, grpc.Compression.Gzip)
        assert ExportProfilesServiceResponse.FromString(got) == ExportProfilesServiceResponse()

        prof = parse("main;handle;db 4\nmain;handle 2\n")
        raw = encode_pprof(prof, period_nanos=10_000_000)
        push = encode_push_request([PushSeries(
            (("__name__", "process_cpu"), ("service_name", "grpc-push"), ("pyroscope_spy", "gospy")),
            (RawSample(raw, "1"),))])
        assert _call(gport, PUSH, gzip.compress(push), auth) == b""

        assert _folded(srv, '{service_name="otel-grpc",namespace="ns1"}') == "main;gc 1\nmain;serve 6\n"
        assert _folded(srv, '{service_name="grpc-push",pyroscope_spy="gospy"}') == "main;handle 2\nmain;handle;db 4\n"

        with pytest.raises(grpc.RpcError) as e:
            _call(gport, EXPORT, b.bytes())
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            _call(gport, EXPORT, b"\xff\xfe not protobuf", auth)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ExportProfilesServiceRequest" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            _call(gport, PUSH, b"\x0a\x05junk!", auth)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert srv.get("/healthz")[0] == 200


def test_grpc_message_limit_and_busy_port(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gport = free_port()
    with running_server(tmp_path, "--grpc", "true", "--grpc-port", str(gport), "--max-body-bytes", "2000") as srv:
        with pytest.raises(grpc.RpcError) as e:
            _call(gport, EXPORT, b"\x0a" + b"\x00" * 5000)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert srv.alive()
        # A second serve cannot take the same gRPC port: it exits 1 and says which.
        (tmp_path / "second").mkdir()
        with pytest.raises(RuntimeError, match="grpc-port"), \
                running_server(tmp_path / "second", "--grpc", "true", "--grpc-port", str(gport), timeout=15):
            pass


def test_otlp_http_port(tmp_path) -> None:  # type: ignore[no-untyped-def]
    oport = free_port()
    with running_server(tmp_path, "--otlp-http-port", str(oport)) as srv:
        b = Builder()
        b.profile({"service.name": "side"}, [(["a", "b"], 2)], time_ns=time.time_ns())
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{oport}/v1development/profiles", data=b.bytes(),
                                     headers={"Content-Type": "application/x-protobuf"})
        with urllib.request.urlopen(req, timeout=20) as r:
            assert r.status == 200
        assert _folded(srv, "side") == "a;b 2\n"
        assert json.loads(srv.get("/healthz")[1])["status"] == "ok"
