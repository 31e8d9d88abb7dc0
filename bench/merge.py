"""Benchmark: stacks.model.merge of 1,000 profiles x 5,000 stacks (one shared StackTable).

    python bench/merge.py [--profiles 1000] [--stacks 5000] [--universe 20000]

Prints stack-count pairs merged per second for `merge` and for a naive dict loop
(the baseline), checks both give the same counts, and prints the ratio. Goal: >= 5 million
pairs/s on one core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stacks.model import Frame, Profile, StackTable, merge


def build(n_profiles: int, n_stacks: int, universe: int, seed: int = 1) -> list[Profile]:
    rng = np.random.default_rng(seed)
    table = StackTable()
    for i in range(universe):
        table.intern((Frame("main"), Frame(f"f{i % 97}"), Frame(f"g{i}")))
    out = []
    for _ in range(n_profiles):
        ids = rng.choice(universe, size=n_stacks, replace=False)
        counts = rng.integers(1, 100, size=n_stacks)
        out.append(Profile.from_arrays(table, ids, counts))
    return out


def naive(profiles: list[Profile]) -> dict[int, int]:
    acc: dict[int, int] = {}
    get = acc.get
    for p in profiles:
        for sid, c in zip(p.ids.tolist(), p.counts.tolist(), strict=True):
            acc[sid] = get(sid, 0) + c
    return acc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", type=int, default=1000)
    ap.add_argument("--stacks", type=int, default=5000)
    ap.add_argument("--universe", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    profiles = build(args.profiles, args.stacks, args.universe)
    pairs = args.profiles * args.stacks
    t_ours = t_base = float("inf")
    for _ in range(args.runs):
        t = time.perf_counter()
        m = merge(profiles)
        t_ours = min(t_ours, time.perf_counter() - t)
        t = time.perf_counter()
        d = naive(profiles)
        t_base = min(t_base, time.perf_counter() - t)
    same = dict(zip(m.ids.tolist(), m.counts.tolist(), strict=True)) == d
    print(f"{args.profiles} profiles x {args.stacks} stacks = {pairs:,} pairs -> {len(m):,} stacks")
    print(f"merge():       {pairs / t_ours / 1e6:7.2f} M pairs/s ({t_ours:.3f} s)")
    print(f"naive dict:    {pairs / t_base / 1e6:7.2f} M pairs/s ({t_base:.3f} s)")
    print(f"ratio {t_base / t_ours:.2f}x  same counts: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
