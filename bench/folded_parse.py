"""Benchmark: stacks.folded.parse (folded text -> Profile) vs a naive split loop, and the
aggregator's cached folded path, compiled (stacks._folded_c) vs pure Python.

    python bench/folded_parse.py [--lines 200000] [--runs 3]

The input is folded text made by collapsing the local perf 6.x capture (real stacks,
kernel frames marked _[k]), with its lines repeated under distinct process names up to
--lines lines. The baseline is the obvious loop: rpartition, int(), split(';') into a
dict of tuples. Prints lines/s for both and the ratio, and checks both agree.

Then the aggregator's case, measured in the same run: UTF-8 bytes in, a shared table and a
stack cache warmed by an earlier push of the same stacks (steady state), and a cold first
push (fresh table and cache). The pure path is ``body.decode()`` + ``parse_counted`` with a
dict cache; the compiled path is ``parse_bytes`` with a ``StackIndex``. Prints both, the
ratio, and checks they give equal profiles.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stacks import folded
from stacks.folded import parse
from stacks.model import Profile, StackTable
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


def best_of(runs: int, fn: Callable[[], object]) -> float:
    """Fastest of ``runs`` timed calls, in seconds."""
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cached_paths(body: bytes, n: int, runs: int) -> bool:
    """Aggregator folded path: pure (decode + dict cache) vs compiled (bytes + StackIndex)."""
    table, cache = StackTable(), {}

    def pure() -> Profile:
        return folded.parse_counted(body.decode("utf-8"), table, cache=cache)[0]

    def pure_cold() -> Profile:
        return folded.parse_counted(body.decode("utf-8"), StackTable(), cache={})[0]

    ref = pure()  # warm the cache
    t_pure = best_of(runs, pure)
    t_pure_cold = best_of(runs, pure_cold)
    print(f"pure, warm cache:    {n / t_pure / 1e6:6.3f} M lines/s ({t_pure:.3f} s)  decode + parse_counted")
    print(f"pure, cold:          {n / t_pure_cold / 1e6:6.3f} M lines/s ({t_pure_cold:.3f} s)")
    if folded._folded_c is None:
        print("compiled: stacks._folded_c is not built (pip install -e . with a C compiler)")
        return True
    ctable = StackTable()
    index = folded._folded_c.StackIndex(ctable, 1 << 20)

    def compiled() -> Profile:
        return folded.parse_bytes(body, ctable, index=index)[0]

    def compiled_cold() -> Profile:
        t = StackTable()
        return folded.parse_bytes(body, t, index=folded._folded_c.StackIndex(t, 1 << 20))[0]

    got = compiled()  # warm the index
    t_c = best_of(runs, compiled)
    t_c_cold = best_of(runs, compiled_cold)
    same = got == ref and compiled() == pure() and compiled_cold() == ref
    print(f"compiled, warm:      {n / t_c / 1e6:6.3f} M lines/s ({t_c:.3f} s)  parse_bytes + StackIndex")
    print(f"compiled, cold:      {n / t_c_cold / 1e6:6.3f} M lines/s ({t_c_cold:.3f} s)")
    print(f"ratio compiled/pure: warm {t_pure / t_c:.2f}x, cold {t_pure_cold / t_c_cold:.2f}x  "
          f"same profiles: {same}")
    return same


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
    same_cached = cached_paths(text.encode(), n, args.runs)
    return 0 if same and same_cached else 1


if __name__ == "__main__":
    sys.exit(main())
