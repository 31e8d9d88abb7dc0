"""Benchmark: stacks.folded.parse (folded text -> Profile) vs a naive split loop.

    python bench/folded_parse.py [--lines 200000]

The input is folded text made by collapsing the local perf 6.x capture (real stacks,
kernel frames marked _[k]), with its lines repeated under distinct process names up to
--lines lines. The baseline is the obvious loop: rpartition, int(), split(';') into a
dict of tuples. Prints lines/s for both and the ratio, and checks both agree.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stacks.folded import parse
from stacks.perf import collapse

DEFAULT_CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
CORPORA = Path(os.environ.get("FLAMEWATCH_CORPORA", DEFAULT_CORPORA))


def make_text(n: int) -> str:
    local = CORPORA / "local" / "perf-script-2cpu-499hz.txt.gz"
    if local.is_file():
        base = collapse(gzip.decompress(local.read_bytes()).decode("latin-1"), kernel=True)
        lines = [f"{k} {v // 2004008}" for k, v in sorted(base.items())]
    else:  # synthetic fallback
        lines = [f"main;f{i % 50};g{i % 7};sys_read_[k] {i % 9 + 1}" for i in range(1000)]
    out = []
    i = 0
    while len(out) < n:
        out.extend(f"app{i};{line}" for line in lines)
        i += 1
    return "\n".join(out[:n]) + "\n"


def naive(text: str) -> dict[tuple[str, ...], int]:
    acc: dict[tuple[str, ...], int] = {}
    for line in text.split("\n"):
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        key = tuple(stack.split(";"))
        acc[key] = acc.get(key, 0) + int(count)
    return acc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    text = make_text(args.lines)
    n = text.count("\n")
    t_ours = t_base = float("inf")
    for _ in range(args.runs):
        t = time.perf_counter()
        p = parse(text)
        t_ours = min(t_ours, time.perf_counter() - t)
        t = time.perf_counter()
        d = naive(text)
        t_base = min(t_base, time.perf_counter() - t)
    same = p.total == sum(d.values()) and len(p) == len(d)
    print(f"{n:,} folded lines, {len(text) / 1e6:.1f} MB, {len(p):,} distinct stacks")
    print(f"stacks.folded.parse: {n / t_ours / 1e6:6.3f} M lines/s ({t_ours:.3f} s)")
    print(f"naive split loop:    {n / t_base / 1e6:6.3f} M lines/s ({t_base:.3f} s)")
    print(f"ratio {t_base / t_ours:.2f}x  same totals: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
