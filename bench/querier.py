"""Pyroscope's read API vs /api/v1: ``SelectMergeStacktraces`` against the equivalent
``/api/v1/render`` on bench/query.py's data (1 h x 200 series), in the same run.

Both ask for the same flame graph (same range, selector, ``max_nodes`` and pruning); the querier
answer is the Connect unary call Grafana's data source makes (``application/proto``) and, for
reference, the JSON codec. The two are timed alternately, round by round, so drift on the shared
machine hits both alike; the figure is the ratio of the p50s (goal: at most 1.2x, issue 26).

    python bench/querier.py [--storage sqlite | clickhouse] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from aiohttp.test_utils import TestClient, TestServer
from google.protobuf import json_format

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aggregator import _proto
from aggregator.app import create_app
from aggregator.settings import SETTINGS
from aggregator.store import open_store
from ground.settings import resolve

_spec = importlib.util.spec_from_file_location("bench_query", Path(__file__).with_name("query.py"))
assert _spec and _spec.loader
bq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bq)

GOAL_RATIO = 1.2
CPU = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"


async def run(spec: str, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = open_store(spec, d)
        await store.open()
        samples = await bq.fill(store, 150, 3000)
        print(f"storage {spec}: {bq.WINDOWS} windows x {bq.NAMESPACES * bq.PODS} series, {samples:,} samples")
        compact = getattr(store, "compact", None)
        if compact:
            await compact(bq.T0 + 3600 + 1)
        settings = resolve(SETTINGS, {"data_dir": d, "storage": spec}, environ={})
        app = create_app(settings, store=store, clock=lambda: bq.T0 + 3600)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        t0, t1 = bq.T0, bq.T0 + 3600
        req_cls = _proto.message("querier.v1.SelectMergeStacktracesRequest")
        cases = {"all": "{}", "one namespace": '{namespace="ns-3"}'}
        for name, sel in cases.items():
            render_path = f"/api/v1/render?query={quote(sel)}&from={t0}&until={t1}"
            msg = req_cls(profile_typeID=CPU, label_selector=sel, start=t0 * 1000, end=t1 * 1000)
            bodies = {"proto": msg.SerializeToString(),
                      "json": json_format.MessageToJson(msg).encode()}
            times: dict[str, list[float]] = {"render": [], "proto": [], "json": []}
            for _ in range(rounds):
                t = time.perf_counter()
                r = await client.get(render_path)
                await r.read()
                assert r.status == 200
                times["render"].append(time.perf_counter() - t)
                for codec, body in bodies.items():
                    t = time.perf_counter()
                    r = await client.post("/querier.v1.QuerierService/SelectMergeStacktraces", data=body,
                                          headers={"Content-Type": f"application/{codec}"})
                    await r.read()
                    assert r.status == 200, await r.text()
                    times[codec].append(time.perf_counter() - t)
            p50 = {k: statistics.median(v) for k, v in times.items()}
            print(f"  {name}: /api/v1/render p50 {1e3 * p50['render']:.1f} ms; SelectMergeStacktraces proto "
                  f"{1e3 * p50['proto']:.1f} ms ({p50['proto'] / p50['render']:.2f}x), json "
                  f"{1e3 * p50['json']:.1f} ms ({p50['json'] / p50['render']:.2f}x)")
            verdict = "meets" if p50["proto"] / p50["render"] <= GOAL_RATIO else "MISSES"
            print(f"ratio {name}: SelectMergeStacktraces (proto) / render = {p50['proto'] / p50['render']:.2f} "
                  f"(goal <= {GOAL_RATIO}: {verdict})")
        await client.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", default="sqlite")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    if args.storage == "clickhouse":
        from tests.support.clickhouse import clickhouse_server

        with clickhouse_server(private=True) as ch:
            asyncio.run(run(ch.storage_spec("flamewatch_bench"), args.rounds))
        return 0
    asyncio.run(run(args.storage, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
