"""Two real ``flamewatch serve`` processes, compiled readers on and off, fed the same pushes.

The compiled readers (stacks._pprof_c, stacks._folded_c) must not change a
single count: both servers render the same folded text, and bad bodies get the
same 4xx from both.
"""

from __future__ import annotations

import gzip
import json
import random
import time
from pathlib import Path

import pytest

from stacks.folded import parse
from stacks.pprof import encode_pprof
from stacks.push import PUSH_PATH, PushSeries, RawSample, encode_push_request
from tests.support.server import running_server

pytestmark = pytest.mark.slow

PUSH_HEADERS = {"Content-Type": "application/proto", "Content-Encoding": "gzip"}


def _bodies(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    funcs = [f"mod{i % 9}.fn_{i}" for i in range(120)]
    pool = []
    for _ in range(400):
        frames = [rng.choice(funcs) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.3:
            frames += ["entry_SYSCALL_64_[k]", "do_syscall_64_[k]"]
        pool.append(";".join(frames))
    return ["".join(f"{s} {rng.randint(1, 40)}\n" for s in rng.sample(pool, 300)) for _ in range(n)]


def test_compiled_and_pure_servers_store_the_same(tmp_path: Path) -> None:
    now = int(time.time())
    texts = _bodies(6, seed=7)
    pushes = []
    for i, text in enumerate(texts):
        raw = encode_pprof(parse(text), period_nanos=10_000_000)
        labels = (("__name__", "process_cpu"), ("service_name", "svc"), ("pod", f"p{i % 2}"))
        pushes.append(gzip.compress(encode_push_request([PushSeries(labels, (RawSample(raw, str(i)),))])))
    bad = [
        (PUSH_PATH, gzip.compress(b"\x12\x05\x0a\x03\xff\xff"), PUSH_HEADERS),  # cut-off protobuf
        (f"/ingest?name=svc&from={now}&until={now}", b"a;b 1\nb;c x\n", {}),  # bad count on line 2
        (f"/ingest?name=svc&from={now}&until={now}", b"a 9223372036854775808\n", {}),  # past 2**63-1
    ]
    rendered = []
    errors = []
    for on in ("true", "false"):
        (tmp_path / on).mkdir()
        with running_server(tmp_path / on, env={"FLAMEWATCH_COMPILED_READERS": on}) as srv:
            health = json.loads(srv.get("/healthz")[1])
            assert health["compiled_readers"] == {"pprof": on == "true", "folded": on == "true", "otlp": on == "true"}
            for body in pushes + pushes[:2]:  # repeats go through the stack indexes
                assert srv.post(PUSH_PATH, body, headers=PUSH_HEADERS)[0] == 200
            for text in texts + texts[:2]:
                status, _ = srv.post(f"/ingest?name=svc{{pod=folded}}&from={now}&until={now}", text.encode())
                assert status == 200
            errors.append([(srv.post(path, body, headers=h)) for path, body, h in bad])
            status, out = srv.get(f"/api/v1/render?query=%7B%7D&from={now - 3600}&until={now + 60}&format=folded")
            assert status == 200
            rendered.append(sorted(out.decode().splitlines()))
    assert rendered[0] == rendered[1] and len(rendered[0]) > 300
    assert errors[0] == errors[1]
    assert [status for status, _ in errors[0]] == [400, 400, 400]
    assert b"line 2" in errors[0][1][1] and b"too large" in errors[0][2][1]
