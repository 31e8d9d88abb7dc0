"""``/healthz`` latency while one large honest push is decoded and stored (issue 24, cause 2).

Starts a real ``flamewatch serve`` (SQLite, temp dir), builds one gzip PushRequest of
``--stacks`` distinct agent-like stacks (370,000 is about 16 MB, the default
``--max-body-bytes``), and posts it twice (new stacks, then known ones) while a thread polls
``/healthz`` every 20 ms. Prints the push time and the p99 / max ``/healthz`` latency.

    python bench/push_stall.py [--stacks 370000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stacks.model import StackTable
from tests.reliability._net import agent_profile, push_body
from tests.support.server import running_server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", type=int, default=370_000)
    args = ap.parse_args()
    prof = agent_profile(random.Random(7), args.stacks, StackTable())
    body = push_body(prof, {"service_name": "big", "pod": "big"}, time.time_ns())
    del prof
    print(f"push of {args.stacks} stacks: {len(body) / 1e6:.1f} MB", flush=True)
    with running_server(Path(tempfile.mkdtemp()), "--max-body-bytes", str(64 << 20),
                        "--max-samples-per-push", str(max(2_000_000, args.stacks))) as s:
        for what in ("new stacks", "known stacks"):
            lat: list[float] = []
            stop = threading.Event()

            def probe(lat: list[float] = lat, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    s.get("/healthz", timeout=60)
                    lat.append((time.perf_counter() - t0) * 1000)
                    time.sleep(0.02)

            th = threading.Thread(target=probe)
            th.start()
            time.sleep(0.2)
            t0 = time.perf_counter()
            status, _ = s.post("/push.v1.PusherService/Push", body, headers={"Content-Type": "application/proto"},
                               timeout=600)
            took = time.perf_counter() - t0
            stop.set()
            th.join()
            p99 = statistics.quantiles(lat, n=100)[98] if len(lat) > 1 else lat[0]
            print(f"{what}: status {status}, push {took:.1f} s, /healthz p99 {p99:.0f} ms, max {max(lat):.0f} ms "
                  f"({len(lat)} probes)", flush=True)


if __name__ == "__main__":
    main()
