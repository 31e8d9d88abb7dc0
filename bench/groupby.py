"""``timeline?group_by=pod`` with many pods against a real ``flamewatch serve`` (issue 24, cause 3).

Pushes ``--pods`` series (one small pprof each, 10,000 series per push) and asks the timeline
split by pod three times; prints the answer size, time and the server's peak RSS (VmHWM; reset
after the pushes, so the timeline figures are the queries' own peak). ``--storage clickhouse``
runs the server on a real ClickHouse (tests/support/clickhouse.py starts one on loopback).

    python bench/groupby.py [--pods 100000] [--storage sqlite|clickhouse]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stacks import pprof, push
from stacks.model import Frame, Profile
from tests.support.clickhouse import clickhouse_server
from tests.support.server import Server, running_server


def peak_kb(s: Server) -> int:
    assert s.proc is not None
    for line in Path(f"/proc/{s.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    return 0


def reset_peak(s: Server) -> None:
    """Start VmHWM again from the current RSS (``clear_refs`` 5), so later peaks are the queries'."""
    assert s.proc is not None
    Path(f"/proc/{s.proc.pid}/clear_refs").write_text("5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=100_000)
    ap.add_argument("--storage", choices=("sqlite", "clickhouse"), default="sqlite")
    ap.add_argument("--serve-arg", action="append", default=[], help="one more flamewatch serve argument")
    args = ap.parse_args()
    raw = gzip.compress(pprof.encode_pprof(Profile.from_pairs([((Frame.user("main"), Frame.user("g")), 1)]),
                                           time_nanos=time.time_ns(), duration_nanos=10**9), 1)
    with contextlib.ExitStack() as stack:
        extra: list[str] = []
        if args.storage == "clickhouse":
            ch = stack.enter_context(clickhouse_server(private=True))
            extra = ["--storage", ch.storage_spec("flamewatch_bench_groupby")]
        s = stack.enter_context(running_server(Path(tempfile.mkdtemp()), *extra, *args.serve_arg))
        t0 = time.time()
        for b in range(0, args.pods, 10_000):
            series = [push.PushSeries((("__name__", "process_cpu"), ("service_name", "gb"), ("pod", f"p{i:06d}")),
                                      (push.RawSample(raw),)) for i in range(b, min(args.pods, b + 10_000))]
            status, body = s.post("/push.v1.PusherService/Push", gzip.compress(push.encode_push_request(series), 1),
                                  headers={"Content-Type": "application/proto"}, timeout=300)
            assert status == 200, body
        print(f"{args.storage}: pushed {args.pods} pods in {time.time() - t0:.1f} s; peak RSS "
              f"{peak_kb(s) / 1024:.0f} MiB")
        reset_peak(s)
        q = quote('{service_name="gb"}')
        for _ in range(3):
            t0 = time.time()
            status, body = s.get(f"/api/v1/timeline?query={q}&group_by=pod&from=now-1h&until=now%2B1m", timeout=300)
            note = json.loads(body).get("truncated", {}).get("note")
            print(f"timeline {status}: {len(body)} bytes in {time.time() - t0:.2f} s; peak RSS "
                  f"{peak_kb(s) / 1024:.0f} MiB; {note}")


if __name__ == "__main__":
    main()
