"""In-process CPU per push: ``aggregator.ingest.decode_push`` on the ingest benchmark's bodies.

The server-free half of ``bench/ingest.py``: 32 gzip PushRequests (one pprof
of 5,000 samples each, drawn from 20,000 distinct stacks), decoded again and
again on warm shared tables, as a running aggregator does. Timed with
``time.process_time`` (CPU, so less sensitive to other load), best of
``--rounds``, for the compiled readers with ISA-L gunzip (the default), the
compiled readers with zlib, and the numpy reader (what an install without a C
compiler runs) as the baseline of the same run.

    python bench/push_decode.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import make_bodies, push_bodies  # bench/ingest.py, beside this file

from aggregator.ingest import IngestTables, decode_push
from stacks import compiled, gz

LIMIT = 1 << 28


def cpu_per_push(bodies: list[bytes], rounds: int, compiled_readers: bool = True) -> float:
    """Best CPU seconds per push over ``rounds`` passes, after one warm-up pass on fresh tables."""
    tables = IngestTables(compiled=compiled_readers)
    for b in bodies:
        decode_push(b, tables, LIMIT)
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        for b in bodies:
            decode_push(b, tables, LIMIT)
        best = min(best, (time.process_time() - t) / len(bodies))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lines", type=int, default=5000)
    args = ap.parse_args()
    bodies = push_bodies(make_bodies(32, args.lines, 20000), 8)
    rows = []
    if gz.ISAL is None or not all(compiled.built().values()):
        print(f"note: isal {'missing' if gz.ISAL is None else 'present'}, compiled readers {compiled.built()}")
    rows.append(("compiled readers + isal gunzip", cpu_per_push(bodies, args.rounds)))
    saved = gz.BACKEND
    gz.BACKEND = gz.ZLIB
    try:
        rows.append(("compiled readers + zlib gunzip", cpu_per_push(bodies, args.rounds)))
    finally:
        gz.BACKEND = saved
    rows.append(("numpy reader + isal (baseline)", cpu_per_push(bodies, args.rounds, compiled_readers=False)))
    for name, sec in rows:
        print(f"{name:34s} {sec * 1e3:6.2f} ms CPU per push  {args.lines / sec / 1e6:5.2f} M samples/s per core")
    print(f"ratio compiled+isal / numpy reader: {rows[2][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
