"""Ingest throughput: stack lines merged per second, 8 concurrent pushers over loopback.

Starts a real ``flamewatch serve`` subprocess (SQLite, temp dir), then 8
concurrent HTTP pushers post pre-built bodies (so the client costs little):

- ``--format push`` (default, what every Pyroscope SDK and agent sends): a
  gzip ``push.v1.PushRequest`` holding one plain pprof (``cpu/nanoseconds``,
  period 10 ms) to ``/push.v1.PusherService/Push``;
- ``--format folded``: folded text to ``/ingest``;
- ``--format both``: one run of each;
- ``--format otlp``: an OTLP ``ExportProfilesServiceRequest`` (gzip protobuf, the same stacks and
  counts as CPU samples) to ``/v1development/profiles``, run after a ``push`` run on the same
  bodies, and the ratio of their server CPU per sample (issue 27's goal: OTLP <= 1.5x push).

A line is one stack line (folded) or one pprof sample. Reports lines/s of
wall time and lines per second of server CPU (= per core), against the goal
of 1,000,000 lines/s per core and against a naive baseline measured in this
run: ``stacks.folded.parse`` of the same stacks in-process (parse only, no
HTTP, no storage).

    python bench/ingest.py [--seconds 10] [--lines 5000] [--pushers 8] [--format push|folded|both|otlp]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stacks.folded import parse
from stacks.pprof import encode_pprof
from stacks.push import PUSH_PATH, PushSeries, RawSample, encode_push_request
from tests.support.server import running_server

GOAL = 1_000_000
PUSH_HEADERS = {"Content-Type": "application/proto", "Content-Encoding": "gzip"}
OTLP_HEADERS = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}


def make_bodies(n_bodies: int, lines: int, pool: int, seed: int = 1) -> list[bytes]:
    """Folded bodies drawn from a pool of distinct stacks (as a node agent would send)."""
    rng = random.Random(seed)
    funcs = [f"pkg{i % 40}.mod{i % 7}.function_{i}" for i in range(800)]
    stacks = []
    for _ in range(pool):
        depth = rng.randint(8, 30)
        frames = [rng.choice(funcs) for _ in range(depth)]
        if rng.random() < 0.3:
            leaf = rng.choice(["vfs_read_[k]", "schedule_[k]"])
            frames += ["entry_SYSCALL_64_[k]", "do_syscall_64_[k]", leaf]
        stacks.append(";".join(frames))
    bodies = []
    for _ in range(n_bodies):
        chosen = rng.sample(stacks, min(lines, pool))
        bodies.append("".join(f"{s} {rng.randint(1, 50)}\n" for s in chosen).encode())
    return bodies


def push_bodies(bodies: list[bytes], pushers: int) -> list[bytes]:
    """The same stacks and counts as gzip PushRequests, one pprof each (one series per pusher)."""
    out = []
    for i, b in enumerate(bodies):
        prof = parse(b.decode())
        raw = encode_pprof(prof, period_nanos=10_000_000)
        labels = (("__name__", "process_cpu"), ("service_name", "bench"), ("pusher", f"p{i % pushers}"))
        out.append(gzip.compress(encode_push_request([PushSeries(labels, (RawSample(raw, str(i)),))]), 6))
    return out


def otlp_bodies(bodies: list[bytes], pushers: int) -> list[bytes]:
    """The same stacks and counts as gzip OTLP requests: one resource (one series per pusher) with one
    CPU profile (samples/count at a cpu/nanoseconds period of 10 ms), as the eBPF profiler sends."""
    from tests.support.otlp_build import Builder

    out = []
    for i, b in enumerate(bodies):
        prof = parse(b.decode())
        builder = Builder()
        samples = [([f.name + ("_[k]" if f.kind == "kernel" else "") for f in stack], n) for stack, n in prof.items()]
        builder.profile({"service.name": "bench", "pusher": f"p{i % pushers}"}, samples, time_ns=time.time_ns())
        out.append(gzip.compress(builder.bytes(), 6))
    return out


def baseline(bodies: list[bytes], seconds: float) -> float:
    """Naive in-process folded.parse lines/s (one core)."""
    n = 0
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < seconds:
        n += len(parse(bodies[i % len(bodies)].decode()))
        i += 1
    return n / (time.perf_counter() - t0)


async def push_all(
    url: str, bodies: list[bytes], pushers: int, seconds: float, lines: int, fmt: str = "folded"
) -> tuple[int, int]:
    sent = 0
    errors = 0
    deadline = time.monotonic() + seconds

    async def one(k: int) -> None:
        nonlocal sent, errors
        async with aiohttp.ClientSession() as s:
            i = k
            while time.monotonic() < deadline:
                body = bodies[i % len(bodies)]
                i += pushers
                if fmt == "push":
                    req = s.post(f"{url}{PUSH_PATH}", data=body, headers=PUSH_HEADERS)
                elif fmt == "otlp":
                    req = s.post(f"{url}/v1development/profiles", data=body, headers=OTLP_HEADERS)
                else:
                    req = s.post(f"{url}/ingest?name=bench{{pusher=p{k}}}", data=body)
                async with req as r:
                    await r.read()
                    if r.status == 200:
                        sent += lines
                    else:
                        errors += 1

    await asyncio.gather(*(one(k) for k in range(pushers)))
    return sent, errors


def run(fmt: str, bodies: list[bytes], args: argparse.Namespace, base: float) -> tuple[int, float]:
    """One server, one format: warm up 2 s, then measure ``args.seconds``."""
    with tempfile.TemporaryDirectory() as d, running_server(Path(d)) as srv:
        assert srv.proc is not None
        proc = psutil.Process(srv.proc.pid)
        asyncio.run(push_all(srv.url, bodies, args.pushers, 2, args.lines, fmt))  # warm caches
        c0 = proc.cpu_times()
        t0 = time.perf_counter()
        sent, errors = asyncio.run(push_all(srv.url, bodies, args.pushers, args.seconds, args.lines, fmt))
        wall = time.perf_counter() - t0
        c1 = proc.cpu_times()
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        rss = proc.memory_info().rss / 1e6
        db = sum(p.stat().st_size for p in (Path(d) / "flamewatch-data").glob("flamewatch.db*"))
    per_core = sent / cpu if cpu else 0.0
    mb = sum(map(len, bodies)) / len(bodies) / 1e6
    print(f"[{fmt}] bodies {mb:.2f} MB each; pushers: {args.pushers}, wall {wall:.1f} s, errors {errors}")
    print(f"[{fmt}] ingest: {sent:,} lines, {sent / wall:,.0f} lines/s wall, server CPU {cpu:.1f} s "
          f"-> {per_core:,.0f} lines/s per core")
    print(f"[{fmt}] server RSS {rss:.0f} MB, database {db / 1e6:.1f} MB")
    print(f"[{fmt}] ratio vs baseline: {per_core / base:.2f}x; ratio vs goal {GOAL:,}/s/core: "
          f"{per_core / GOAL:.2f}")
    return errors, per_core


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--lines", type=int, default=5000, help="stack lines per push")
    ap.add_argument("--pool", type=int, default=20000, help="distinct stacks the pushes draw from")
    ap.add_argument("--pushers", type=int, default=8)
    ap.add_argument("--format", choices=("push", "folded", "both", "otlp"), default="push",
                    help="push: gzip PushRequest with pprof (default); folded: /ingest text; "
                         "otlp: push then OTLP, and their CPU-per-sample ratio")
    args = ap.parse_args()
    bodies = make_bodies(32, args.lines, args.pool)
    mb = sum(map(len, bodies)) / len(bodies) / 1e6
    print(f"bodies: {args.lines} lines, {mb:.2f} MB of folded text each, drawn from {args.pool} distinct stacks")
    base = baseline(bodies, 3)
    print(f"baseline (folded.parse in-process, no HTTP/storage): {base:,.0f} lines/s per core")
    errors = 0
    fmts = {"both": ("push", "folded"), "otlp": ("push", "otlp")}.get(args.format, (args.format,))
    per_core: dict[str, float] = {}
    for fmt in fmts:
        made = {"push": push_bodies, "otlp": otlp_bodies}.get(fmt)
        e, per_core[fmt] = run(fmt, made(bodies, args.pushers) if made else bodies, args, base)
        errors += e
    if args.format == "otlp" and per_core.get("otlp"):
        ratio = per_core["push"] / per_core["otlp"]
        print(f"[otlp] server CPU per sample, OTLP / Pyroscope push (same run): {ratio:.2f}x (goal <= 1.5x)")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
