"""Bounded gunzip throughput: ISA-L (``isal``) against stdlib zlib, same run.

Bodies have the shape of a real push (bench/ingest.py ``make_bodies`` and
``push_bodies``): a ``push.v1.PushRequest`` holding one pprof of 5,000
samples, gzip level 6 (~180 KB, inflating to ~270 KB); also the same stacks
as gzip folded text (``/ingest``, ~310 KB inflating to ~2.3 MB). Each backend of
``stacks.gz`` runs ``gunzip_capped`` over the same bodies under the server's
default 64 MiB limit, in alternating short rounds so that load from other
processes falls on both alike; the figure is the median round, in MB of
inflated output per second of this process's CPU time.

``--steps`` also times the inflate step size (``stacks.gz._STEP``; "single"
is one ``decompress(data, limit + 1)`` call) on those bodies and on one
large body (15 MB inflated), where the step count is high.

    python bench/gunzip.py [--seconds 4] [--bodies 8] [--lines 5000] [--steps]
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for bench/ingest.py

from ingest import make_bodies, push_bodies  # the push body shape of the ingest bench

import stacks.gz as gz

LIMIT = 64 << 20  # the server's default --max-decompressed-bytes
SINGLE = 1 << 62  # a step this large makes one decompress(data, limit + 1) call
MB = 1e6


def cpu_rate(fn: Callable[[], int], seconds: float) -> float:
    """Output bytes per CPU second of ``fn`` (which returns bytes made), run for ~``seconds``."""
    n = 0
    t0 = time.process_time()
    while True:
        n += fn()
        dt = time.process_time() - t0
        if dt >= seconds:
            return n / dt


def compare(bodies: list[bytes], arms: dict[str, tuple[gz.Backend, int]], seconds: float) -> dict[str, float]:
    """Median output MB/s of each arm (backend, step), in alternating rounds."""
    rounds = 9
    per_round = seconds / rounds / len(arms)

    def one_pass() -> int:
        return sum(len(gz.gunzip_capped(b, LIMIT)) for b in bodies)

    rates: dict[str, list[float]] = {name: [] for name in arms}
    saved = gz.BACKEND, gz._STEP
    try:
        for r in range(rounds):
            # Alternate the order each round, so neither arm always goes first.
            order = list(arms) if r % 2 == 0 else list(reversed(arms))
            for name in order:
                gz.BACKEND, gz._STEP = arms[name]
                rates[name].append(cpu_rate(one_pass, per_round) / MB)
    finally:
        gz.BACKEND, gz._STEP = saved
    return {name: statistics.median(v) for name, v in rates.items()}


def gunzip_with(backend: gz.Backend, body: bytes) -> bytes:
    saved = gz.BACKEND
    gz.BACKEND = backend
    try:
        return gz.gunzip_capped(body, LIMIT)
    finally:
        gz.BACKEND = saved


def describe(bodies: list[bytes]) -> str:
    out = [len(gzip.decompress(b)) for b in bodies]
    zin = sum(len(b) for b in bodies) / len(bodies)
    return f"{len(bodies)} bodies, mean {zin / 1e3:.0f} KB gzip -> {sum(out) / len(out) / 1e3:.0f} KB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4, help="CPU seconds per comparison")
    ap.add_argument("--bodies", type=int, default=8)
    ap.add_argument("--lines", type=int, default=5000, help="pprof samples per push")
    ap.add_argument("--steps", action="store_true", help="also time step sizes and a single call")
    args = ap.parse_args()

    folded = make_bodies(args.bodies, args.lines, 20000)
    kinds = {
        "push": push_bodies(folded, 8),  # what every Pyroscope SDK sends
        "folded": [gzip.compress(b, 6) for b in folded],  # gzip folded text to /ingest
    }
    if gz.ISAL is None:
        print("isal is not importable: pip install 'isal>=1.6,<2'")
        return 1
    # The same bytes from both backends, or the comparison means nothing.
    for b in (b for bs in kinds.values() for b in bs):
        assert gunzip_with(gz.ZLIB, b) == gunzip_with(gz.ISAL, b)

    step = gz._STEP
    for kind, bodies in kinds.items():
        got = compare(bodies, {"zlib": (gz.ZLIB, step), "isal": (gz.ISAL, step)}, args.seconds)
        print(f"{kind} bodies: {describe(bodies)}")
        print(f"  gunzip_capped zlib: {got['zlib']:8.1f} MB/s (inflated output per CPU second)")
        print(f"  gunzip_capped isal: {got['isal']:8.1f} MB/s")
        print(f"  isal / zlib: {got['isal'] / got['zlib']:.2f}x")

    if args.steps:
        # One large member: push payloads inflated back to back, cut to 15 MB. Not a
        # power of two, so that no step size happens to match the output exactly.
        bodies = kinds["push"]
        big = [gzip.compress(b"".join(gzip.decompress(b) for b in bodies * 8)[:15_000_017], 6)]
        steps = {
            "64K": 1 << 16,
            "256K": 1 << 18,
            "1M": 1 << 20,
            "2M": 1 << 21,
            "4M": 1 << 22,
            "16M": 1 << 24,
            "single": SINGLE,
        }
        for label, bs in (("push bodies", bodies), (f"large body ({describe(big)})", big)):
            for backend in (gz.ZLIB, gz.ISAL):
                arms = {s: (backend, v) for s, v in steps.items()}
                res = compare(bs, arms, args.seconds)
                base = res["1M"]
                cells = "  ".join(f"{s} {r:6.1f} ({r / base:.2f})" for s, r in res.items())
                print(f"{label}, {backend.name}, MB/s (vs 1M): {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
