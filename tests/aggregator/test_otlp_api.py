"""OTLP/HTTP ``POST /v1development/profiles`` in-process (real aiohttp server, real SQLite)."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from google.protobuf import json_format

from stacks.otlp import ExportProfilesServiceResponse
from tests.aggregator.test_api import NOW, RANGE, make_client
from tests.support.otlp_build import Builder

PB = {"Content-Type": "application/x-protobuf"}
T_NS = int((NOW - 5) * 1e9)


@pytest.fixture
async def client(tmp_path) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    c = await make_client(tmp_path)
    yield c
    await c.close()


async def folded(client: TestClient, sel: str, ptype: str = "") -> str:
    extra = f"&profile_type={quote(ptype)}" if ptype else ""
    r = await client.get(f"/api/v1/render?query={quote(sel)}&{RANGE}&format=folded{extra}")
    assert r.status == 200, await r.text()
    return await r.text()


def two_types() -> Builder:
    b = Builder()
    res = {"service.name": "api", "k8s.namespace.name": "shop", "k8s.pod.name": "api-1"}
    b.profile(res, [(["main", "work"], 3), (["main", "sys_read_[k]"], 2)], time_ns=T_NS,
              span=bytes.fromhex("00000000000000aa"))
    b.profile(res, [(["main", "alloc"], 4096)], sample_type=("alloc_space", "bytes"),
              period_type=("space", "bytes"), period=1, time_ns=T_NS)
    return b


async def test_protobuf_gzip_and_types(client: TestClient) -> None:
    body = gzip.compress(two_types().bytes())
    r = await client.post("/v1development/profiles", data=body, headers={**PB, "Content-Encoding": "gzip"})
    assert r.status == 200, await r.text()
    assert r.content_type == "application/x-protobuf"
    assert ExportProfilesServiceResponse.FromString(await r.read()) == ExportProfilesServiceResponse()
    assert await folded(client, '{namespace="shop",pod="api-1",pyroscope_spy="otlp"}') == \
        "main;sys_read_[k] 2\nmain;work 3\n"
    assert await folded(client, '{service_name="api"}', "memory:alloc_space:bytes:space:bytes") == "main;alloc 4096\n"
    types = await (await client.get(f"/api/v1/profile_types?{RANGE}")).json()
    assert {t["id"] for t in types["profile_types"]} == {
        "process_cpu:cpu:nanoseconds:cpu:nanoseconds", "memory:alloc_space:bytes:space:bytes"}
    labels = await (await client.get(f"/api/v1/labels?{RANGE}")).json()
    assert "span_id" not in labels["names"]


async def test_json_body(client: TestClient) -> None:
    b = Builder()
    b.profile({"service.name": "js"}, [(["main", "x"], 7)], time_ns=T_NS)
    text = json_format.MessageToJson(b.req)
    r = await client.post("/v1development/profiles", data=text, headers={"Content-Type": "application/json"})
    assert r.status == 200, await r.text()
    assert await folded(client, "js") == "main;x 7\n"


async def test_bad_bodies_are_400_naming_the_message(client: TestClient) -> None:
    r = await client.post("/v1development/profiles", data=b"\xff\x01garbage", headers=PB)
    assert r.status == 400
    assert "ExportProfilesServiceRequest" in (await r.json())["error"]
    b = Builder()
    b.profile({"service.name": "x"}, [(["m"], 1)])
    b.req.resource_profiles[0].scope_profiles[0].profiles[0].samples[0].stack_index = 1234
    r = await client.post("/v1development/profiles", data=b.bytes(), headers=PB)
    assert r.status == 400
    assert "stack 1234" in (await r.json())["error"]
    r = await client.get("/healthz")
    assert r.status == 200


async def test_push_token_guards_otlp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = await make_client(tmp_path, push_token="s3cret")
    try:
        body = two_types().bytes()
        r = await c.post("/v1development/profiles", data=body, headers=PB)
        assert r.status == 401
        r = await c.post("/v1development/profiles", data=body, headers={**PB, "Authorization": "Bearer s3cret"})
        assert r.status == 200
    finally:
        await c.close()


async def test_older_than_retention_is_422(tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = await make_client(tmp_path, retention_seconds=3600)
    try:
        b = Builder()
        b.profile({"service.name": "old"}, [(["m"], 1)], time_ns=int((NOW - 86400) * 1e9))
        r = await c.post("/v1development/profiles", data=b.bytes(), headers=PB)
        assert r.status == 422
        assert "older than the retention" in (await r.json())["error"]
    finally:
        await c.close()


async def test_large_body_is_decoded_off_the_loop(client: TestClient) -> None:
    """A body past INLINE_BYTES goes through the decode thread (own table, rebased): same answer."""
    from aggregator.otlp import INLINE_BYTES

    b = Builder()
    samples = [([f"root{i % 7}", *(f"fn_{i}_{j}" for j in range(12))], 1 + i % 5) for i in range(4000)]
    b.profile({"service.name": "big"}, samples, time_ns=T_NS)
    body = b.bytes()
    assert len(body) > INLINE_BYTES
    r = await client.post("/v1development/profiles", data=body, headers=PB)
    assert r.status == 200, await r.text()
    text = await folded(client, "big")
    want = sorted(f"{';'.join(frames)} {n}" for frames, n in samples)
    assert sorted(text.splitlines()) == want
