"""Push latency of cumulative (running-total) profiles, whose deltas read and write the shared
state in ClickHouse, against the same profiles pushed with ``__delta__="false"`` (no state), on
two real ``flamewatch serve`` replicas of one private ClickHouse, alternating replicas and kinds
in one run (issue 23 item 5; docs/aggregator.md, "Cumulative profiles and replicas").

    python bench/cumulative_push.py [--pushes 200]   # p50 / p90 per kind
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stacks.push import PushSeries, RawSample, encode_push_request
from tests.aggregator.test_cumulative_replicas import Process, alloc_pprof
from tests.support.clickhouse import clickhouse_server
from tests.support.server import running_server

HEADERS = {"Content-Type": "application/proto", "Content-Encoding": "gzip"}


def body(totals: dict[str, tuple[int, int]], delta_false: bool) -> bytes:
    labels = (("__name__", "memory"), ("service_name", "bench"))
    if delta_false:
        labels += (("__delta__", "false"),)
    raw = alloc_pprof(totals, time.time())
    return gzip.compress(encode_push_request([PushSeries(labels, (RawSample(raw, "1"),))]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pushes", type=int, default=200, help="pushes of each kind")
    args = ap.parse_args()
    with clickhouse_server(private=True) as ch, tempfile.TemporaryDirectory() as d:
        spec = ch.storage_spec("pushbench")
        for sub in "ab":
            (Path(d) / sub).mkdir()
        with running_server(Path(d) / "a", "--storage", spec) as a, \
                running_server(Path(d) / "b", "--storage", spec) as b:
            proc = Process(1)
            for i in range(150):  # ~150 stacks, as a Go heap profile
                proc.totals[f"f{i}"] = (1, 100)
            times: dict[str, list[float]] = {"cumulative": [], "delta=false": []}
            for r in range(args.pushes):
                kinds = ("cumulative", "delta=false") if r % 2 else ("delta=false", "cumulative")
                for kind in kinds:
                    data = body(proc.next(), kind == "delta=false")
                    t = time.perf_counter()
                    status, answer = (a, b)[r % 2].post("/push.v1.PusherService/Push", data, headers=HEADERS)
                    times[kind].append(time.perf_counter() - t)
                    assert status == 200, answer[:300]
    for kind, v in times.items():
        print(f"{kind}: p50 {statistics.median(v) * 1e3:.1f} ms, p90 {statistics.quantiles(v, n=10)[8] * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
