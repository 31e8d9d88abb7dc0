"""Hostile input over HTTP against a real ``flamewatch serve`` subprocess.

Each bad request must get a 4xx with a readable message, no request may
crash the process, and ``/healthz`` must answer after every one. Tokens:
push and read without a token get 401 and a read token cannot push.
"""

from __future__ import annotations

import gzip
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stacks import pprof, push
from stacks.model import Frame, Profile
from tests.reliability._net import agent_profile, error_text, push_body, raw_request
from tests.support.server import Server, running_server

PUSH = "/push.v1.PusherService/Push"
PROTO = {"Content-Type": "application/proto"}
RANGE = "from=now-1h&until=now%2B1h"
INGEST_AT = f"from={int(time.time())}"  # /ingest takes unix seconds only
MAX_BODY = 8 << 20
MAX_INFLATED = 16 << 20


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("hostile")
    with running_server(tmp, "--max-body-bytes", str(MAX_BODY),
                        "--max-decompressed-bytes", str(MAX_INFLATED)) as s:
        yield s


def healthy(s: Server) -> None:
    assert s.alive(), f"server died:\n{s.log()[-3000:]}"
    status, body = s.get("/healthz", timeout=10)
    assert status == 200, body


def _pprof_push(raw_profile: bytes, labels: tuple[tuple[str, str], ...] = (("service_name", "h"),)) -> bytes:
    return gzip.compress(push.encode_push_request([push.PushSeries(labels, (push.RawSample(raw_profile),))]))


GOOD_PPROF = pprof.encode_pprof(Profile.from_pairs([((Frame.user("main"), Frame.user("ok")), 3)]))
BOMB = gzip.compress(b"\x00" * (512 << 20), 9)  # 512 MiB of zeros, ~500 KB on the wire

# (name, method, target, body, headers, expected status, words the message must contain)
BAD: list[tuple[str, str, str, bytes | None, dict[str, str], int, list[str]]] = [
    ("push gzip bomb", "POST", PUSH, BOMB, PROTO, 413, ["limit"]),
    ("pprof gzip bomb inside a push", "POST", PUSH, _pprof_push(BOMB[: MAX_BODY - 1000]), PROTO, 0, []),
    ("ingest gzip bomb", "POST", f"/ingest?name=h&{INGEST_AT}&format=pprof", BOMB,
     {"Content-Type": "application/octet-stream"}, 413, ["limit"]),
    ("push bad gzip", "POST", PUSH, b"\x1f\x8b\x08\x00garbage", PROTO, 400, ["gzip"]),
    ("push truncated gzip", "POST", PUSH, gzip.compress(b"x" * 1000)[:-12], PROTO, 400, ["gzip"]),
    ("push bad protobuf", "POST", PUSH, gzip.compress(b"\xff\xff\xff\xff"), PROTO, 400, ["PushRequest"]),
    ("push bad pprof", "POST", PUSH, _pprof_push(b"\x0a\xff\xff"), PROTO, 400, ["pprof"]),
    ("push no service_name", "POST", PUSH, _pprof_push(GOOD_PPROF, (("pod", "x"),)), PROTO, 400,
     ["service_name"]),
    ("push invalid utf-8 label", "POST", PUSH,
     gzip.compress(b"\x0a\x08\x0a\x06\x0a\x01a\x12\x01\xff"), PROTO, 400, ["UTF-8"]),
    ("push connect json garbage", "POST", PUSH, b"{not json", {"Content-Type": "application/json"}, 400,
     ["PushRequest"]),
    ("ingest bad folded", "POST", f"/ingest?name=h&{INGEST_AT}", b"main;f 1\nno-count-here\n", {}, 400, ["line 2"]),
    ("ingest negative count", "POST", f"/ingest?name=h&{INGEST_AT}", b"main;f -3\n", {}, 400, ["negative"]),
    ("ingest bad format", "POST", f"/ingest?name=h&{INGEST_AT}&format=zip", b"x 1\n", {}, 400, ["format"]),
    ("ingest bad app name", "POST", "/ingest?name=%7Bx%3D%22", b"main 1\n", {}, 400, ["name"]),
    ("ingest bad pprof", "POST", f"/ingest?name=h&{INGEST_AT}&format=pprof", b"\x0a\xff\xff", {}, 400, ["pprof"]),
    ("render bad selector", "GET", f"/api/v1/render?query=%7Bpod%3D%3Dx%7D&{RANGE}", None, {}, 400,
     ["selector"]),
    ("render unterminated selector", "GET", f"/api/v1/render?query=%7Bpod%3D%22x&{RANGE}", None, {}, 400,
     ["selector"]),
    ("render bad regex", "GET", f"/api/v1/render?query=%7Bpod%3D~%22(%22%7D&{RANGE}", None, {}, 400,
     ["regex"]),
    ("render bad time", "GET", "/api/v1/render?from=yesterday", None, {}, 400, ["time"]),
    ("render bad until", "GET", "/api/v1/render?from=now-1h&until=now-5x", None, {}, 400, ["time"]),
    ("render bad format", "GET", f"/api/v1/render?{RANGE}&format=exe", None, {}, 400, ["format"]),
    ("render bad max_nodes", "GET", f"/api/v1/render?{RANGE}&max_nodes=-1", None, {}, 400, ["max_nodes"]),
    ("diff bad mode", "GET", "/api/v1/diff?mode=weird", None, {}, 400, ["mode"]),
    ("label values bad name", "GET", "/api/v1/label/bad%20name/values", None, {}, 400, ["label"]),
    ("unknown api route", "GET", "/api/v1/nope", None, {}, 404, []),
    ("unknown route", "GET", "/wp-admin/setup.php", None, {}, 404, []),
    ("wrong method", "GET", PUSH, None, {}, 405, []),
    ("huge query string", "GET", "/api/v1/render?query=" + "a" * 20000, None, {}, 0, []),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_request_gets_readable_4xx_and_server_survives(srv: Server, case: tuple) -> None:
    name, method, target, body, headers, want, words = case
    status, resp = raw_request(srv.url, method, target, body, headers)
    msg = error_text(resp)
    if want:
        assert status == want, (name, status, msg[:500])
    else:
        assert 400 <= status < 500, (name, status, msg[:500])
    assert msg.strip(), f"{name}: empty error message"
    for w in words:
        assert w.lower() in msg.lower(), (name, msg[:500])
    if resp[:1] == b"{":
        assert "error" in json.loads(resp), resp[:200]
    healthy(srv)


def test_hundred_megabyte_body_is_413(srv: Server) -> None:
    """A 100 MB body with Content-Length, and the same chunked: both 413, no memory blow-up."""
    size = 100 << 20
    zeros = bytes(1 << 20)
    t0 = time.monotonic()
    status, resp = raw_request(srv.url, "POST", PUSH, b"\x00" * size, PROTO, timeout=60)
    assert status == 413, (status, resp[:300])
    assert "max-body-bytes" in error_text(resp)
    status, resp = raw_request(srv.url, "POST", f"/ingest?name=big&{INGEST_AT}",
                               (zeros for _ in range(100)), {}, timeout=60)
    assert status == 413, (status, resp[:300])
    assert time.monotonic() - t0 < 60
    import psutil

    rss = psutil.Process(srv.proc.pid).memory_info().rss  # type: ignore[union-attr]
    assert rss < 600 << 20, f"server RSS {rss >> 20} MiB after refusing 100 MB bodies"
    healthy(srv)


TRAVERSAL = [
    "/static/../../etc/passwd",
    "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/%252e%252e%252fetc%252fpasswd",
    "/static/..%5c..%5c..%5cetc%5cpasswd",
    "/static/....//....//etc/passwd",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/..%00/etc/passwd",
    "/static/.%2e/.%2e/.%2e/etc/passwd",
    "/../../../../etc/passwd",
    "/static/..",
    "/static/.",
    "/static/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
]


@pytest.mark.parametrize("target", TRAVERSAL)
def test_static_path_traversal_is_refused(srv: Server, target: str) -> None:
    status, body = raw_request(srv.url, "GET", target)
    assert b"root:" not in body, f"{target} leaked /etc/passwd"
    assert 400 <= status < 500, (target, status, body[:200])
    healthy(srv)


def test_push_with_hostile_labels_is_stored_exactly(srv: Server) -> None:
    """Quotes, newlines, NUL, HTML and a 100 kB value in labels: stored and queryable as sent."""
    vals = {"namespace": 'q"uote\'s', "pod": "new\nline", "container": "nul\x00byte",
            "process": "<script>alert(1)</script>", "node": "n" * 100_000}
    prof = agent_profile(random.Random(3), 50)
    status, resp = srv.post(PUSH, push_body(prof, {"service_name": "hostile", **vals}), headers=PROTO)
    assert status == 200, resp[:300]
    for k, v in vals.items():
        got = srv.json(f"/api/v1/label/{k}/values?query=%7Bservice_name%3D%22hostile%22%7D&{RANGE}")
        assert v in got["values"], (k, got["values"][:3])  # type: ignore[index]
    healthy(srv)


def test_token_bypass_variants_and_separation(tmp_path: Path) -> None:
    push_tok, read_tok = "push-" + "s" * 20, "read-" + "r" * 20
    with running_server(tmp_path, env={"FLAMEWATCH_PUSH_TOKEN": push_tok,
                                       "FLAMEWATCH_READ_TOKEN": read_tok}) as s:
        body = push_body(agent_profile(random.Random(1), 20), {"service_name": "sec"})
        bearer = {"push": {"Authorization": f"Bearer {push_tok}"}, "read": {"Authorization": f"Bearer {read_tok}"}}
        # push: none, read token, wrong token, basic auth, token in query -> 401
        for hdr in ({}, bearer["read"], {"Authorization": "Bearer nope"},
                    {"Authorization": f"Basic {push_tok}"}, {"Authorization": f"Bearer {push_tok}x"}):
            for target, b in ((PUSH, body), (f"/ingest?name=sec&{INGEST_AT}", b"main;f 1\n")):
                status, resp = raw_request(s.url, "POST", target, b, {**PROTO, **hdr})
                assert status == 401, (hdr, target, status, resp[:200])
                assert "token" in error_text(resp)
        status, _ = raw_request(s.url, "POST", f"/ingest?name=sec&{INGEST_AT}&token={push_tok}", b"main;f 1\n")
        assert status == 401
        # read: none or the push token -> 401 on every query route, and path tricks do not bypass it
        for target in (f"/api/v1/render?{RANGE}&format=folded", "/api/v1/labels", "/api/v1/label/pod/values",
                       f"/api/v1/timeline?{RANGE}", f"/api/v1/top?{RANGE}", f"/%61pi/v1/render?{RANGE}",
                       f"/api/v1/../v1/render?{RANGE}", f"/api/v1/diff?{RANGE}"):
            for hdr in ({}, bearer["push"]):
                status, resp = raw_request(s.url, "GET", target, None, hdr)
                assert status in (401, 404), (target, hdr, status, resp[:200])
                assert b"main" not in resp
        for target in ("//api/v1/render", "/API/v1/render", "/api//v1/render"):
            status, resp = raw_request(s.url, "GET", target)
            assert status in (401, 404) and b"main" not in resp, (target, status)
        # the right tokens work
        status, _ = raw_request(s.url, "POST", PUSH, body, {**PROTO, **bearer["push"]})
        assert status == 200
        status, resp = raw_request(s.url, "GET", f"/api/v1/render?{RANGE}&format=folded&query=sec",
                                   None, bearer["read"])
        assert status == 200 and resp.count(b"\n") == 20
        healthy(s)


@pytest.mark.parametrize("method,target,body", [
    ("GET", "/api/v1/render?from=" + "9" * 400, None),
    ("GET", "/api/v1/render?query=%7Ba%3D~%22" + "(" * 3000 + ")" * 3000 + "%22%7D", None),
    ("POST", PUSH, b'{"series":' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
], ids=["huge-time", "nested-regex", "nested-json"])
def test_known_500s_should_be_400(srv: Server, method: str, target: str, body: bytes | None) -> None:
    status, resp = raw_request(srv.url, method, target, body, {"Content-Type": "application/json"})
    healthy(srv)
    assert status == 400, (status, resp[:300])
