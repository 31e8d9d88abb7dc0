"""Slow-requests table latency: ``/api/v1/requests`` over 1 h of demo traffic (issue 28: <= 300 ms).

Fills a span store the way the demo's traced services fill it: ``--rate`` admin requests per
second (the demo's load generator sends 2; default 10, five times that) for an hour, each a root
span in admin-service and one in manipulation-service (a remote parent: also a root for
pyroscope-otel), each with wall and CPU samples, split over two 10 s uploads when it straddles
one. Then times the table through the real aiohttp app on loopback: everything, one service
(a selector), one span name; p50/p95 of ``--rounds`` each.

    python bench/requests.py [--rate 10] [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from aiohttp.test_utils import TestClient, TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aggregator.app import create_app
from aggregator.handlers import SPANS
from aggregator.ingest import SpanItem
from aggregator.settings import SETTINGS
from ground.settings import resolve
from stacks.folded import parse
from stacks.model import Labels
from stacks.profiletype import CPU, PERIOD_LABEL, TYPE_LABEL, WALL

NOW = 1_700_003_600.0
HOUR = 3600
STACKS = [parse(f"main;admin.views:admin_page;admin.images:createSampleImages;req.get;sock.recv_{i} 1\n")
          for i in range(40)]


def items(rate: float, rng: random.Random) -> list[SpanItem]:
    out = []
    n = int(rate * HOUR)
    for i in range(n):
        t = NOW - HOUR + i / rate
        for svc in ("admin-service", "manipulation-service"):
            pod = f"{svc}-{i % 3}"
            for ptype in (WALL, CPU):
                labels = Labels.of({"service_name": svc, "pod": pod, "namespace": "default",
                                    "span_name": "GET /admin" if svc == "admin-service" else "POST /resize",
                                    TYPE_LABEL: ptype.id, PERIOD_LABEL: "10000000"})
                parts = 2 if rng.random() < 0.1 else 1  # straddles an upload
                for _ in range(parts):
                    prof = STACKS[rng.randrange(len(STACKS))].scale(rng.randint(1, 80))
                    out.append(SpanItem(f"{i:08x}{svc[:8].encode().hex()[:8]}", f"{i:032x}", labels, t, prof))
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = resolve(SETTINGS, {"data_dir": tmp, "retention_seconds": "0"}, environ={})
        app = create_app(settings, clock=lambda: NOW)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            its = items(args.rate, random.Random(1))
            t0 = time.perf_counter()
            for k in range(0, len(its), 5000):
                await app[SPANS].add(its[k:k + 5000])
            print(f"{len(its)} span rows ({int(args.rate * HOUR) * 2} root spans) written in "
                  f"{time.perf_counter() - t0:.1f} s")
            rng = f"from={int(NOW - HOUR)}&until={int(NOW)}"
            admin = quote('{service_name="admin-service"}')
            cases = {"all": f"/api/v1/requests?{rng}",
                     "one service": f"/api/v1/requests?{rng}&query={admin}",
                     "one span name": f"/api/v1/requests?{rng}&span_name={quote('GET /admin')}"}
            for name, path in cases.items():
                times = []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    r = await client.get(path)
                    doc = await r.json()
                    times.append((time.perf_counter() - t) * 1000)
                    assert r.status == 200 and doc["rows"], doc
                times.sort()
                print(f"{name:14s} p50 {statistics.median(times):7.1f} ms  p95 "
                      f"{times[int(0.95 * (len(times) - 1))]:7.1f} ms  ({doc['spans']} spans)")
        finally:
            await client.close()


if __name__ == "__main__":
    asyncio.run(main())
