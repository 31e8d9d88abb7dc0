"""Soak: 70 % of the load bench's capacity for a long time; memory flat, nothing lost.

Runs ``--agents`` simulated agents (default: 70 % of the N that
``bench/load.py`` found, passed as ``--capacity``) against a real
``flamewatch serve`` for ``--minutes`` (default 10). Reports server RSS at
start and end (and the peak), push latency p50/p99, rejected pushes, and
counts that every acknowledged sample is present afterwards (per pod, from
``/api/v1/timeline``, and in total from ``/api/v1/render?format=folded``).
The baseline for the ratio is the first minute of the same run.

    python bench/soak.py --capacity 128              # 10 min at 89 agents, sqlite
    python bench/soak.py --capacity 128 --minutes 1  # a quick look
    python bench/soak.py --storage clickhouse --capacity 64
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from load import APP, Pool, Step, run_agents, server_for, stored_total

from stacks import folded


def rss_tree(pid: int) -> int:
    """RSS of the server process (bytes)."""
    return psutil.Process(pid).memory_info().rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", choices=["sqlite", "clickhouse"], default="sqlite")
    ap.add_argument("--capacity", type=int, default=64, help="largest N from bench/load.py")
    ap.add_argument("--agents", type=int, default=0, help="agents to run (default 70%% of --capacity)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--stacks", type=int, default=2000)
    ap.add_argument("--interval", type=float, default=10.0)
    args = ap.parse_args()
    n = args.agents or max(1, int(args.capacity * 0.7))
    pool = Pool.build(12, args.stacks)
    with tempfile.TemporaryDirectory(prefix="flamewatch-soak-") as d, \
            server_for(args.storage, Path(d)) as (srv, spec):
        pid = srv.proc.pid  # type: ignore[union-attr]
        since = int(time.time())
        rss0 = rss_tree(pid)
        samples: list[tuple[float, int]] = [(0.0, rss0)]
        stop = threading.Event()

        def sample_rss() -> None:
            t0 = time.monotonic()
            while not stop.wait(10):
                samples.append((time.monotonic() - t0, rss_tree(pid)))

        th = threading.Thread(target=sample_rss, daemon=True)
        th.start()
        print(f"soak: {n} agents ({args.stacks} stacks/push, every {args.interval:g}s) for {args.minutes:g} min "
              f"on {spec}; server RSS at start {rss0 / 2**20:.1f} MiB", flush=True)
        steps: list[Step] = []
        minutes = max(1, round(args.minutes))
        per = args.minutes * 60 / minutes
        for m in range(minutes):  # one Step per minute: latency per minute, same agents throughout
            st = Step(n)
            asyncio.run(run_agents(srv.url, n, per, args.interval, pool, st, 0))
            steps.append(st)
            print(f"  minute {m + 1:3d}: {st.line()}  rss={rss_tree(pid) / 2**20:.1f} MiB", flush=True)
        stop.set()
        th.join(15)
        time.sleep(1.0)
        rss1 = rss_tree(pid)
        acked = sum(s.acked_samples for s in steps)
        acked_pods: dict[str, int] = {}
        for s in steps:
            for k, v in s.acked_by_pod.items():
                acked_pods[k] = acked_pods.get(k, 0) + v
        total, by_pod = stored_total(srv, since)
        status, body = srv.get(f"/api/v1/render?query=%7Bservice_name%3D%22{APP}%22%7D&from={since - 120}"
                               f"&until=now%2B1h&format=folded", timeout=300)
        render_total = folded.parse(body.decode()).total if status == 200 else -1
        lost = sum(max(0, v - by_pod.get(k, 0)) for k, v in acked_pods.items())
        pushes = sum(len(s.latencies) for s in steps)
        rejected = sum(s.rejected for s in steps)
        lat = Step(n, [x for s in steps for x in s.latencies])
        print("\nsoak result:")
        print(f"  agents={n} minutes={args.minutes:g} pushes={pushes} rejected={rejected} "
              f"p50={lat.p(0.5) * 1000:.1f}ms p99={lat.p(0.99) * 1000:.1f}ms")
        print(f"  server RSS start={rss0 / 2**20:.1f} MiB end={rss1 / 2**20:.1f} MiB "
              f"peak={max(r for _, r in [*samples, (0, rss1)]) / 2**20:.1f} MiB "
              f"(end/start {rss1 / rss0:.2f}x; after minute 1 {samples[min(6, len(samples) - 1)][1] / 2**20:.1f} MiB)")
        print(f"  acknowledged samples={acked} stored (timeline)={total} stored (render)={render_total} "
              f"lost={lost}")
        base, last = steps[0], steps[-1]
        print(f"  p99 last minute / first minute = {last.p(0.99) / base.p(0.99):.2f}x")
        return 0 if lost == 0 and render_total == acked else 1


if __name__ == "__main__":
    sys.exit(main())
