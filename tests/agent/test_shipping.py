"""Unit tests of push encoding, the spool, the shipper and its backoff."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

from profiler.samplers.base import Backoff
from profiler.shipper import Shipper, build_push
from profiler.spool import Spool
from stacks.model import Frame, Labels
from stacks.pprof import decode_pprof
from stacks.push import decode_push_request

U, K = Frame.user, Frame.kernel


def test_build_push_round_trips() -> None:
    labels = Labels.of(node="n1", namespace="default", pod="p", container="c", process="burn",
                       service_name="x")
    body, n = build_push({labels: {(U("main"), K("sys_read")): 5, (U("main"),): 2}},
                         frequency=100, start_ns=1_700_000_000 * 10**9, duration_ns=10 * 10**9)
    assert n == 7
    series = decode_push_request(gzip.decompress(body))
    assert len(series) == 1
    assert dict(series[0].labels) == {"__name__": "process_cpu", **labels}
    prof = decode_pprof(series[0].samples[0].raw_profile).merged()
    assert prof.as_dict() == {(U("main"), K("sys_read")): 5, (U("main"),): 2}


def test_spool_bounds_drop_oldest_and_survive_restart(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool", max_bytes=250, memory_bytes=100)
    for i in range(5):
        sp.put(bytes([i]) * 60, samples=10 + i)
    # 5 * 60 = 300 > 250: the oldest went, and is counted
    assert sp.dropped_entries == 1 and sp.dropped_samples == 10
    assert sp.bytes == 240 and sp.mem_used <= 100 and sp.disk_used > 0
    first = sp.peek()
    assert first is not None and first.body() == bytes([1]) * 60
    sp.pop(first)
    sp.close()  # everything to disk
    assert sp.mem_used == 0
    again = Spool(tmp_path / "spool", max_bytes=250, memory_bytes=100)
    bodies = []
    while (e := again.peek()) is not None:
        bodies.append((e.body()[0], e.samples))
        again.pop(e)
    assert bodies == [(2, 12), (3, 13), (4, 14)]
    assert not list((tmp_path / "spool").glob("*.push"))


def test_spool_without_directory_keeps_memory_only() -> None:
    sp = Spool(None, max_bytes=100, memory_bytes=10)
    sp.put(b"a" * 60, 1)
    sp.put(b"b" * 60, 2)
    assert len(sp) == 1 and sp.dropped_samples == 1 and sp.peek().body() == b"b" * 60


def test_shipper_retries_until_delivered_and_drops_rejected(tmp_path: Path) -> None:
    answers = [0, 503, 200, 400, 200]  # 0 = connection refused
    seen = []

    def post(url: str, body: bytes, headers: dict, timeout: float) -> int:
        seen.append((url, headers.get("Authorization")))
        code = answers.pop(0)
        if code == 0:
            raise ConnectionRefusedError("refused")
        return code

    sp = Spool(tmp_path, max_bytes=10_000, memory_bytes=10_000)
    sp.put(b"one", 5)
    sp.put(b"two", 7)
    sp.put(b"three", 9)
    sh = Shipper(sp, "http://agg:4040/", token="tkn", post=post, backoff=Backoff(0.001, 0.002))
    assert sh.flush(time.monotonic() + 5)
    assert sh.samples_pushed == 5 + 9 and sh.rejected_samples == 7
    assert sh.failures == 3 and sh.pushes == 2
    assert seen[0] == ("http://agg:4040/push.v1.PusherService/Push", "Bearer tkn")


def test_backoff_grows_with_jitter_and_caps() -> None:
    import random

    b = Backoff(1.0, 8.0, random.Random(1))
    delays = [b.next() for _ in range(6)]
    for d, cap in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert cap / 2 <= d <= cap
    b.reset()
    assert b.next() <= 1


def test_build_push_encodes_each_series_as_its_profile_would() -> None:
    """build_push encodes a series' distinct stacks directly: the same pprof bytes as the profile built from
    them (zero counts dropped, a series with nothing left not sent), and the samples counted."""
    from stacks.model import Kind, Profile, StackTable
    from stacks.pprof import encode_pprof

    a, b, k = Frame("a", Kind.USER, "a.py", 3), Frame("b"), Frame("k", Kind.KERNEL)
    stacks = {(a,): 2, (a, b): 5, (a, b, k): 1, (b,): 0}
    series = {Labels.of(node="n", pod="p"): stacks, Labels.of(node="n", pod="zero"): {(a,): 0}}
    body, n = build_push(series, frequency=99, start_ns=7, duration_ns=10)
    got = decode_push_request(gzip.decompress(body))
    assert n == 8 and [dict(s.labels)["pod"] for s in got] == ["p"]
    want = encode_pprof(Profile.from_pairs([(s, c) for s, c in stacks.items() if c], StackTable()),
                        period_nanos=round(1e9 / 99), time_nanos=7, duration_nanos=10)
    assert got[0].samples[0].raw_profile == want
