"""The HTTP API in-process (real aiohttp server on loopback, real SQLite, injected clock).

Covers ingest (folded, Go-style pprof, Connect push with sample labels), every
query route's shape, auth, size limits, and a table of bad inputs each
answered with a readable 4xx while the server keeps serving.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aggregator.app import create_app
from aggregator.settings import SETTINGS
from ground.settings import resolve
from stacks.folded import parse
from stacks.pprof import decode_pprof, encode_pprof
from stacks.push import PushSeries, RawSample, encode_push_request

NOW = 1_700_000_025.0  # inside the window [1_700_000_010, 1_700_000_040)
W = 1_700_000_010
RANGE = f"from={W - 300}&until={W + 60}"


def q(sel: str) -> str:
    return quote(sel, safe="")


async def make_client(tmp_path, **overrides) -> TestClient:  # type: ignore[no-untyped-def]
    settings = resolve(SETTINGS, {"data_dir": str(tmp_path), **overrides}, environ={})
    app = create_app(settings, clock=lambda: NOW)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(tmp_path) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    c = await make_client(tmp_path)
    yield c
    await c.close()


async def ingest_folded(client: TestClient, name: str, text: str, **params: str) -> dict:
    qs = "&".join(f"{k}={v}" for k, v in params.items())
    r = await client.post(f"/ingest?name={quote(name)}&{qs}", data=text.encode())
    assert r.status == 200, await r.text()
    return await r.json()


async def folded_of(client: TestClient, sel: str = "{}", extra: str = "") -> str:
    r = await client.get(f"/api/v1/render?query={q(sel)}&{RANGE}&format=folded{extra}")
    assert r.status == 200, await r.text()
    return await r.text()


async def test_folded_ingest_and_render(client: TestClient) -> None:
    got = await ingest_folded(client, "shop.cpu{env=prod,region=eu}", "main;work;compute 10\nmain;idle_[k] 5\n",
                              **{"from": str(W + 1), "until": str(W + 11), "sampleRate": "100"})
    assert got["samples"] == 15 and got["windows"] == [W]
    assert await folded_of(client, '{service_name="shop",env="prod"}') == "main;idle_[k] 5\nmain;work;compute 10\n"
    assert await folded_of(client, '{env="dev"}') == ""
    region = q('{region=~"e.*"}')
    r = await client.get(f"/api/v1/render?query={region}&{RANGE}")
    doc = await r.json()
    assert doc["type"] == "flame" and doc["total"] == 15
    names = [doc["names"][i] for i in doc["nodes"]["name"]]
    kinds = [doc["kinds"][k] for k in doc["nodes"]["kind"]]
    assert dict(zip(names, kinds, strict=True))["idle"] == "kernel"
    assert names[0] == "all"


async def test_metadata_frames(client: TestClient) -> None:
    await ingest_folded(client, "admin-service{node=n1,namespace=default,pod=admin-7f9c,container=app}",
                        "main;createSampleImages 7\n", **{"from": str(W)})
    assert await folded_of(client, extra="&metadata=1") == "n1;default;admin-7f9c;app;main;createSampleImages 7\n"
    # another series on the same pod (a different SDK tag) merges under the same metadata frames
    await ingest_folded(client, "admin-service{node=n1,namespace=default,pod=admin-7f9c,container=app,route=/x}",
                        "main;createSampleImages 3\nmain;other 1\n", **{"from": str(W)})
    assert await folded_of(client, extra="&metadata=1") == (
        "n1;default;admin-7f9c;app;main;createSampleImages 10\nn1;default;admin-7f9c;app;main;other 1\n"
    )
    r = await client.get(f"/api/v1/render?{RANGE}&metadata=1")
    doc = await r.json()
    first = [doc["kinds"][k] for k in doc["nodes"]["kind"][:5]]
    assert first == ["metadata"] * 5  # all, node, namespace, pod, container


async def test_go_style_pprof_ingest(client: TestClient) -> None:
    prof = parse("runtime.main;main.main;main.handler 30\nruntime.main;syscall.Syscall;entry_SYSCALL_64_[k] 4\n")
    body = gzip.compress(encode_pprof(prof, period_nanos=10_000_000, time_nanos=int(W * 1e9),
                                      duration_nanos=10 * 10**9))
    r = await client.post("/ingest?name=goapp{team=x}&format=pprof", data=body)
    assert r.status == 200, await r.text()
    assert (await r.json())["samples"] == 34
    assert await folded_of(client, '{service_name="goapp"}') == (
        "runtime.main;main.main;main.handler 30\nruntime.main;syscall.Syscall;entry_SYSCALL_64_[k] 4\n"
    )


CPU_ID = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"


async def test_connect_push_with_sample_labels_splits_series(client: TestClient) -> None:
    a = encode_pprof(parse("main;hot_loop_alpha 6\n"), time_nanos=int(W * 1e9))
    b = encode_pprof(parse("main;tagged_work_beta 4\n"), time_nanos=int(W * 1e9), sample_labels={"route": "/admin"})
    labels = (("__name__", "process_cpu"), ("service_name", "py-app"), ("env", "test"))
    samples = (RawSample(a, "1"), RawSample(gzip.compress(b), "2"))
    body = gzip.compress(encode_push_request([PushSeries(labels, samples)]))
    r = await client.post("/push.v1.PusherService/Push", data=body,
                          headers={"Content-Type": "application/proto", "Content-Encoding": "gzip"})
    assert r.status == 200, await r.text()
    assert r.content_type == "application/proto"
    assert await folded_of(client, '{route="/admin"}') == "main;tagged_work_beta 4\n"
    assert await folded_of(client, '{service_name="py-app",route=""}') == "main;hot_loop_alpha 6\n"
    names = (await (await client.get(f"/api/v1/labels?{RANGE}")).json())["names"]
    assert "__name__" not in names and {"route", "env", "service_name"} <= set(names)
    env = q('{env="test"}')
    vals = await (await client.get(f"/api/v1/label/route/values?{RANGE}&query={env}")).json()
    assert vals == {"name": "route", "values": ["/admin"], "profile_type": CPU_ID, "unit": "samples",
                    "period_ns": 10_000_000}
    # another __name__ is another profile type: stored apart, never mixed into CPU (issue 13)
    mem = (("__name__", "memory"), ("service_name", "py-app"))
    body = gzip.compress(encode_push_request([PushSeries(mem, (RawSample(a, "3"),))]))
    r = await client.post("/push.v1.PusherService/Push", data=body, headers={"Content-Type": "application/proto"})
    assert r.status == 200
    assert await folded_of(client, '{service_name="py-app"}') == "main;hot_loop_alpha 6\nmain;tagged_work_beta 4\n"
    other = "memory:cpu:nanoseconds:cpu:nanoseconds"
    assert await folded_of(client, other + '{service_name="py-app"}') == "main;hot_loop_alpha 6\n"


async def test_query_routes(client: TestClient) -> None:
    await ingest_folded(client, "svc{pod=a}", "main;f 3\nmain;g 1\n", **{"from": str(W - 60)})
    await ingest_folded(client, "svc{pod=b}", "main;f 1\nmain;g 5\n", **{"from": str(W)})
    tl = await (await client.get(f"/api/v1/timeline?from={W - 60}&until={W + 30}&group_by=pod")).json()
    assert tl["window"] == 30
    assert tl["series"] == [
        {"group": "a", "points": [[W - 60, 4], [W - 30, 0], [W, 0]]},
        {"group": "b", "points": [[W - 60, 0], [W - 30, 0], [W, 6]]},
    ]
    top = await (await client.get(f"/api/v1/top?{RANGE}")).json()
    assert [(r["name"], r["self"], r["total"]) for r in top["rows"]] == [("g", 6, 6), ("f", 4, 4), ("main", 0, 10)]
    sw = await (await client.get(f"/api/v1/sandwich?{RANGE}&function=g")).json()
    assert sw["callers"]["total"] == 6 and sw["callees"]["total"] == 6
    pod_a, pod_b = q('{pod="a"}'), q('{pod="b"}')
    d = await (await client.get(
        f"/api/v1/diff?base={pod_a}&base_from={W - 60}&base_until={W - 30}"
        f"&compare={pod_b}&compare_from={W}&compare_until={W + 30}&mode=absolute")).json()
    assert d["type"] == "diff" and d["mode"] == "absolute" and d["base_sum"] == 4 and d["compare_sum"] == 6
    assert "table" in d
    r = await client.get(f"/api/v1/diff?base_from={W - 60}&base_until={W - 30}&compare_from={W}"
                         f"&compare_until={W + 30}&format=folded")
    assert (await r.text()) == "main;f 3 1\nmain;g 1 5\n"
    # exports
    r = await client.get(f"/api/v1/render?{RANGE}&format=pprof")
    back = decode_pprof(await r.read()).merged()
    assert back.as_dict() == parse("main;f 4\nmain;g 6\n").as_dict()
    sp = await (await client.get(f"/api/v1/render?{RANGE}&format=speedscope")).json()
    assert "$schema" in sp
    r = await client.get(f"/api/v1/render?{RANGE}&format=html")
    assert r.content_type == "text/html" and "<html" in (await r.text()).lower()
    # max_nodes prunes
    doc = await (await client.get(f"/api/v1/render?{RANGE}&max_nodes=2")).json()
    assert len(doc["nodes"]["name"]) <= 2
    # relative times work with the injected clock
    assert "main;f 1" in await (await client.get("/api/v1/render?from=now-15s&until=now&format=folded")).text()
    health = await (await client.get("/healthz")).json()
    assert health["status"] == "ok"
    metrics = await (await client.get("/metrics")).text()
    assert "flamewatch_ingested_samples_total 10.0" in metrics
    assert 'flamewatch_pushes_total{route="ingest"} 2.0' in metrics


def _bomb(n: int) -> bytes:
    return gzip.compress(b"a;b 1\n" * (n // 6 + 1), 9)



async def test_render_json_equals_pruned_tree_of_the_merged_profile(client: TestClient) -> None:
    """The JSON path builds its tree from the series (metadata paths grafted, narrow nodes never
    expanded); it must equal pruning the full tree of what format=folded returns."""
    from stacks.tree import build_tree, prune, to_json

    ns = "node=n1,namespace=default"
    await ingest_folded(client, f"admin{{{ns},pod=admin-1,container=app}}",
                        "main;images;resize 60\nmain;images 9\nmain;rare;deep 1\n", **{"from": str(W)})
    await ingest_folded(client, f"admin{{{ns},pod=admin-1,container=app,route=/x}}",
                        "main;images;resize 20\nmain;list 7\n", **{"from": str(W)})
    await ingest_folded(client, f"dns{{{ns},pod=dns-1}}", "app;serve 3\nmain;tick_[k] 2\n", **{"from": str(W)})
    checked = 0
    for metadata in ("0", "1"):
        for share, extra in ((0.0, "&min_share=0"), (1 / 4000, ""), (0.05, "&min_share=0.05")):
            for max_nodes in (3, 8, 100):
                folded = await folded_of(client, extra=f"&metadata={metadata}")
                want = to_json(prune(build_tree(parse(folded)), max_nodes=max_nodes, min_share=share))
                r = await client.get(f"/api/v1/render?{RANGE}&metadata={metadata}&max_nodes={max_nodes}{extra}")
                assert r.status == 200, await r.text()
                got = await r.json()
                assert got["total"] == want["total"] == 102
                assert got["names"] == want["names"]
                for col in ("name", "depth", "start", "width", "total", "self"):
                    assert got["nodes"][col] == want["nodes"][col], (metadata, share, max_nodes, col)
                assert got["pruned"]["nodes_after"] == want["pruned"]["nodes_after"]
                assert got["pruned"]["min_share"] == share
                checked += 1
    assert checked == 18
    # metadata nodes keep their kind and label on the grafted path
    doc = await (await client.get(f"/api/v1/render?{RANGE}&metadata=1")).json()
    n = doc["nodes"]
    seen: dict[str, set] = {}
    for i in range(len(n["name"])):
        seen.setdefault(doc["names"][n["name"][i]], set()).add((doc["kinds"][n["kind"][i]], n["label"][i]))
    assert seen["admin-1"] == {("metadata", "pod")} and seen["dns-1"] == {("metadata", "pod")}
    assert seen["app"] == {("metadata", "container"), ("user", None)}  # container app, dns's frame app
    # with min_share=0.05 the 1-sample 'rare' subtree (1 %) is folded into 'other'
    doc = await (await client.get(f"/api/v1/render?{RANGE}&min_share=0.05")).json()
    names = [doc["names"][i] for i in doc["nodes"]["name"]]
    assert "rare" not in names and "deep" not in names and "other" in names


async def test_metadata_diff_equals_prefixing_every_stack(client: TestClient) -> None:
    """/api/v1/diff?metadata=1 (the viewer's diff) grafts metadata paths and builds the union trie
    top-down; it must equal the old path (every stack prefixed, full trie, pruned) node for node,
    labels and table included, through the real store."""
    from aggregator import params as aparams
    from aggregator import query
    from aggregator.handlers import STORE
    from stacks.diff import diff_json, diff_table
    from stacks.model import StackTable

    ns = "node=n1,namespace=default"
    base_w, cmp_w = W - 30, W
    await ingest_folded(client, f"admin{{{ns},pod=admin-1,container=app}}",
                        "main;images;resize 60\nmain;images 9\nmain;rare;deep 1\n", **{"from": str(base_w)})
    await ingest_folded(client, f"admin{{{ns},pod=admin-1,container=app}}",
                        "main;images;resize 20\nmain;list 7\n", **{"from": str(cmp_w)})
    await ingest_folded(client, f"admin{{{ns},pod=admin-1,container=app,route=/x}}", "main;list 5\n",
                        **{"from": str(cmp_w)})
    await ingest_folded(client, f"dns{{{ns},pod=dns-1}}", "app;serve 3\nmain;tick_[k] 2\n", **{"from": str(base_w)})
    await ingest_folded(client, f"dns{{{ns},pod=dns-2}}", "app;serve 4\n", **{"from": str(cmp_w)})
    await ingest_folded(client, "bare", "solo 2\n", **{"from": str(cmp_w)})
    store = client.server.app[STORE]
    halves = f"base_from={base_w}&base_until={base_w + 30}&compare_from={cmp_w}&compare_until={cmp_w + 30}"
    checked = 0
    for mode in ("share", "absolute"):
        for max_nodes in (3, 6, 9, 100):
            params = {"base_from": str(base_w), "base_until": str(base_w + 30), "compare_from": str(cmp_w),
                      "compare_until": str(cmp_w + 30)}
            table = StackTable()
            sel = aparams.selector({})
            b, bl = await query.profile_for(store, sel, aparams.time_range(params, NOW, 30, "base_"), table, True)
            c, cl = await query.profile_for(store, sel, aparams.time_range(params, NOW, 30, "compare_"), table, True)
            want = diff_json(b, c, mode=mode, max_nodes=max_nodes, labels={**(bl or {}), **(cl or {})})
            r = await client.get(f"/api/v1/diff?{halves}&metadata=1&mode={mode}&max_nodes={max_nodes}")
            assert r.status == 200, await r.text()
            got = await r.json()
            assert got["table"] == json.loads(json.dumps(diff_table(b, c, mode=mode)))
            assert got["base_sum"] == 75 and got["compare_sum"] == 38
            for key in ("names", "nodes", "k", "total", "max_depth"):
                assert got[key] == json.loads(json.dumps(want[key])), (mode, max_nodes, key)
            assert got["pruned"]["nodes_after"] == want["pruned"]["nodes_after"] <= max_nodes
            assert got["pruned"]["nodes_before"] <= want["pruned"]["nodes_before"]
            checked += 1
    assert checked == 8
    # the labels reached the JSON, and a pod only in base is still drawn (its base width)
    doc = await (await client.get(f"/api/v1/diff?{halves}&metadata=1")).json()
    n = doc["nodes"]
    at = {doc["names"][n["name"][i]]: i for i in range(len(n["name"]))}
    assert n["label"][at["dns-1"]] == "pod" and n["total"][at["dns-1"]] == 0 and n["base_total"][at["dns-1"]] == 5


BAD = [
    # (method, path, body, headers, status, words the error must contain)
    ("POST", "/ingest?name=app", b"main;f notanumber\n", {}, 400, ["line 1", "not an integer"]),
    ("POST", "/ingest?name=app", b"main;f 1\n justcount\n", {}, 400, ["line 2"]),
    ("POST", "/ingest?name=app", b"\xff\xfe 1\n", {}, 400, ["UTF-8"]),
    ("POST", "/ingest", b"main;f 1\n", {}, 400, ["name"]),
    ("POST", "/ingest?name=app{env", b"main;f 1\n", {}, 400, ["closing"]),
    ("POST", "/ingest?name=app{envprod}", b"main;f 1\n", {}, 400, ["key=value"]),
    ("POST", "/ingest?name=app&format=trie", b"x", {}, 400, ["format=folded"]),
    ("POST", "/ingest?name=app&format=json", b"x", {}, 400, ["format"]),
    ("POST", "/ingest?name=app&from=yesterday", b"main;f 1\n", {}, 400, ["from"]),
    ("POST", "/ingest?name=app&from=200&until=100", b"main;f 1\n", {}, 400, ["before"]),
    ("POST", "/ingest?name=app&sampleRate=-3", b"main;f 1\n", {}, 400, ["sampleRate"]),
    ("POST", "/ingest?name=app&format=pprof", b"\x0a\xff\xff\xff", {}, 400, ["pprof"]),
    ("POST", "/ingest?name=app&format=pprof", b"\x1f\x8b\x08\x00garbage", {}, 400, ["gzip"]),
    ("POST", "/ingest?name=app", b"plain", {"Content-Encoding": "gzip"}, 400, ["gzip"]),
    ("POST", "/push.v1.PusherService/Push", b"\x1f\x8bnotgzip", {"Content-Type": "application/proto"}, 400,
     ["gzip"]),
    ("POST", "/push.v1.PusherService/Push", gzip.compress(b"\x0a\x05\xff\xff"), {"Content-Type": "application/proto"},
     400, ["PushRequest"]),
    ("POST", "/push.v1.PusherService/Push", b"{not json", {"Content-Type": "application/json"}, 400, ["JSON"]),
    ("POST", "/push.v1.PusherService/Push", _bomb(3_000_000), {"Content-Type": "application/proto"}, 413,
     ["max-decompressed-bytes"]),
    # a bomb inside one sample of a plain push: still too large (413), the sample named
    ("POST", "/push.v1.PusherService/Push",
     encode_push_request([PushSeries((("service_name", "app"),), (RawSample(_bomb(3_000_000)),))]),
     {"Content-Type": "application/proto"}, 413, ["push series 0 sample 0", "max-decompressed-bytes"]),
    ("POST", "/ingest?name=app", b"x" * 2_100_000, {}, 413, ["max-body-bytes"]),
    ("GET", "/api/v1/render?query={a=b}", None, {}, 400, ["position 3", "quoted"]),
    ("GET", "/api/v1/render?from=tomorrow", None, {}, 400, ["tomorrow", "now-15m"]),
    ("GET", "/api/v1/render?from=now&until=now-1h", None, {}, 400, ["increasing"]),
    ("GET", "/api/v1/render?format=png", None, {}, 400, ["json, folded"]),
    ("GET", "/api/v1/render?max_nodes=zero", None, {}, 400, ["max_nodes"]),
    ("GET", "/api/v1/render?metadata=maybe", None, {}, 400, ["metadata"]),
    ("GET", "/api/v1/render?min_share=tiny", None, {}, 400, ["min_share", "not a number"]),
    ("GET", "/api/v1/render?min_share=2", None, {}, 400, ["min_share", "0..1"]),
    ("GET", "/api/v1/diff?mode=weird", None, {}, 400, ["share, absolute"]),
    ("GET", "/api/v1/diff?base={x", None, {}, 400, ["base"]),
    ("GET", "/api/v1/label/bad%20name/values", None, {}, 400, ["label name"]),
    ("GET", "/api/v1/timeline?group_by=a%20b", None, {}, 400, ["label name"]),
    ("GET", "/api/v1/sandwich", None, {}, 400, ["function"]),
    ("GET", "/api/v1/nope", None, {}, 404, ["Not Found"]),
    ("GET", "/api/v1/render?from=" + "1" * 400, None, {}, 400, ["out of range"]),
    ("GET", "/api/v1/render?query=" + quote('{a=~"' + "(" * 1000 + ")" * 1000 + '"}'), None, {}, 400, ["regex"]),
    ("POST", "/push.v1.PusherService/Push", b"[" * 100_000, {"Content-Type": "application/json"}, 400, ["JSON"]),
]


async def test_bad_inputs_get_readable_4xx_and_server_survives(tmp_path) -> None:
    client = await make_client(tmp_path, max_body_bytes="2000000", max_decompressed_bytes="1000000")
    try:
        for method, path, body, headers, status, words in BAD:
            r = await client.request(method, path, data=body, headers=headers)
            text = await r.text()
            assert r.status == status, (path, r.status, text)
            err = json.loads(text)["error"]
            for w in words:
                assert w in err, (path, err)
            h = await client.get("/healthz")
            assert h.status == 200
        # still ingesting after all of that
        r = await client.post(f"/ingest?name=app&from={W}", data=b"main;ok 1\n")
        assert r.status == 200
        assert await folded_of(client) == "main;ok 1\n"
    finally:
        await client.close()


async def test_tokens_separate_for_push_and_read(tmp_path) -> None:
    client = await make_client(tmp_path, push_token="p-secret", read_token="r-secret")
    try:
        r = await client.post(f"/ingest?name=app&from={W}", data=b"main;f 1\n")
        assert r.status == 401 and "missing" in (await r.json())["error"]
        r = await client.post(f"/ingest?name=app&from={W}", data=b"main;f 1\n",
                              headers={"Authorization": "Bearer r-secret"})
        assert r.status == 401 and "wrong" in (await r.json())["error"]
        r = await client.post(f"/ingest?name=app&from={W}", data=b"main;f 1\n",
                              headers={"Authorization": "Bearer p-secret"})
        assert r.status == 200
        r = await client.get(f"/api/v1/render?{RANGE}&format=folded")
        assert r.status == 401 and "--read-token" in (await r.json())["error"]
        r = await client.get(f"/api/v1/render?{RANGE}&format=folded", headers={"Authorization": "Bearer r-secret"})
        assert r.status == 200 and await r.text() == "main;f 1\n"
        assert (await client.get("/healthz")).status == 200  # probes need no token
    finally:
        await client.close()


async def test_connect_json_push(client: TestClient) -> None:
    import base64

    raw = encode_pprof(parse("main;json_path 3\n"), time_nanos=int(W * 1e9))
    doc = {"series": [{"labels": [{"name": "service_name", "value": "j"}],
                       "samples": [{"rawProfile": base64.b64encode(raw).decode()}]}]}
    r = await client.post("/push.v1.PusherService/Push", json=doc)
    assert r.status == 200, await r.text()
    assert await folded_of(client, "j") == "main;json_path 3\n"


async def test_full_disk_answers_503_and_recovers_reads(tmp_path) -> None:
    from aggregator.store.sqlite import SQLiteStore

    settings = resolve(SETTINGS, {"data_dir": str(tmp_path)}, environ={})
    store = SQLiteStore(tmp_path / "small.db", max_pages=40)
    client = TestClient(TestServer(create_app(settings, store=store, clock=lambda: NOW),
                                   host="127.0.0.1"))
    await client.start_server()
    try:
        r = await client.post(f"/ingest?name=app&from={W}", data=b"main;ok 1\n")
        assert r.status == 200
        big = "".join(f"main;fn_{i:06d}_{'x' * 60} 1\n" for i in range(5000)).encode()
        r = await client.post(f"/ingest?name=app&from={W}", data=big)
        assert r.status == 503
        assert "storage unavailable" in (await r.json())["error"] and "full" in (await r.json())["error"]
        assert await folded_of(client) == "main;ok 1\n"  # reads still work, nothing half-written
    finally:
        await client.close()


@pytest.mark.parametrize("cap", [4_000_000, 3])
async def test_read_merged_decode_cache_follows_fragments_and_compaction(tmp_path, monkeypatch, cap) -> None:
    """The reader caches decoded window blobs by their bytes: new fragments, compaction and a
    tiny cap (entries evicted and not cached) must all still read exact sums."""
    import aggregator.store.sqlite as sq
    from aggregator.store.base import SeriesWindow
    from stacks.model import Labels, StackTable
    from stacks.selector import Selector

    monkeypatch.setattr(sq, "_MAX_DECODED_ENTRIES", cap)
    store = sq.SQLiteStore(tmp_path / "fw.db")
    await store.open()
    try:
        a, b = Labels.of(pod="a"), Labels.of(pod="b")

        async def folded_now() -> dict:
            got = await store.read_merged(Selector(), W - 60, W + 60, StackTable(), ())
            return {str(lab): sorted(p.as_dict().values()) for lab, p in got.items()}

        await store.write([SeriesWindow(a, W, parse("main;x 2\nmain;y 1\n")), SeriesWindow(b, W - 30, parse("m 4\n"))])
        assert await folded_now() == {str(a): [1, 2], str(b): [4]}
        assert await folded_now() == {str(a): [1, 2], str(b): [4]}  # from the cache
        await store.write([SeriesWindow(a, W, parse("main;x 5\nmain;z 7\n"))])  # a second fragment
        assert await folded_now() == {str(a): [1, 7, 7], str(b): [4]}
        await store.compact(W + 1000)  # fragments merged into one new row
        assert await folded_now() == {str(a): [1, 7, 7], str(b): [4]}
        await store.write([SeriesWindow(b, W - 30, parse("m 1\n"))])
        assert await folded_now() == {str(a): [1, 7, 7], str(b): [5]}
        assert store._decoded_entries <= cap
    finally:
        await store.close()
