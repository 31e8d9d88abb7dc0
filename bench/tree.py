"""Benchmark: flame tree building, pruning, Flame JSON, top table and diff on ~100k distinct stacks.

    python bench/tree.py [--stacks 100000] [--depth 30] [--repeat 3] [--shape callgraph|random]

The server's render path (pruned_tree / metadata_tree with min_share 1/4000,
see aggregator/query.py) is timed against the full build it replaces, in the
same run; the metadata case is 40 series (pods) each holding a tenth of the profile.

Baseline (same run): a plain Python loop that only walks every frame of every
distinct stack once (one dict lookup per frame), i.e. the floor for any trie
build in Python. The ratio says how far build_tree is from that floor.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stacks import diff, tree
from stacks.model import Frame, Kind, Profile, StackTable

ZIPF = [64, 16, 8, 4, 2, 1, 1, 1]


def callgraph(n_stacks: int, depth: int, seed: int, table: StackTable) -> Profile:
    """Program-like shape: random walks down a fixed call graph (each function calls 2-8
    others, the first ones far more often), so distinct stacks share long prefixes as real
    ones do; 30 % end in kernel frames."""
    rng = random.Random(seed)
    graph_rng = random.Random(0)  # same program for both seeds, so a diff has overlap
    funcs = [Frame(f"mod{i % 40}.func_{i}", Kind.USER) for i in range(3000)]
    kfuncs = [Frame(f"k_{i}", Kind.KERNEL) for i in range(80)]
    callees = [graph_rng.sample(range(3000), graph_rng.randint(2, 8)) for _ in range(3000)]
    pairs = []
    seen: set[tuple[Frame, ...]] = set()
    tries = 0
    while len(pairs) < n_stacks and tries < 50 * n_stacks:
        tries += 1
        f = 0
        stack = [funcs[0]]
        for _ in range(rng.randint(depth // 3, depth)):
            f = rng.choices(callees[f], weights=ZIPF[: len(callees[f])])[0]
            stack.append(funcs[f])
        if rng.random() < 0.3:
            stack += [kfuncs[(f + j) % 80] for j in range(rng.randint(1, 6))]
        t = tuple(stack)
        if t in seen:
            continue
        seen.add(t)
        pairs.append((t, max(1, int(1000 / (1 + len(pairs) % 997)))))
    return Profile.from_pairs(pairs, table)


def synthetic(n_stacks: int, depth: int, seed: int, table: StackTable) -> Profile:
    """Worst case: stacks share little, so nearly every frame is a new tree node."""
    rng = random.Random(seed)
    funcs = [Frame(f"mod{i % 40}.func_{i}", Kind.USER) for i in range(600)]
    kfuncs = [Frame(f"k_{i}", Kind.KERNEL) for i in range(60)]
    pairs = []
    seen: set[tuple[Frame, ...]] = set()
    prefixes: list[tuple[Frame, ...]] = [(funcs[0],)]
    while len(pairs) < n_stacks:
        base = rng.choice(prefixes)
        d = rng.randint(max(1, depth // 3), depth)
        stack = list(base[: rng.randint(1, len(base))])
        while len(stack) < d:
            stack.append(rng.choice(funcs[: 50 + 10 * len(stack)]))
        if rng.random() < 0.3:
            stack += rng.sample(kfuncs, 3)
        t = tuple(stack)
        if t in seen:
            continue
        seen.add(t)
        if len(prefixes) < 2000:
            prefixes.append(t)
        pairs.append((t, max(1, int(1000 / (1 + len(pairs) % 997)))))
    return Profile.from_pairs(pairs, table)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def baseline_walk(profile: Profile) -> int:
    d: dict[Frame, int] = {}
    n = 0
    stack_of = profile.table.stack
    for sid in profile.ids.tolist():
        for f in stack_of(sid):
            n += d.get(f, 1)
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stacks", type=int, default=100_000)
    ap.add_argument("--depth", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shape", choices=("callgraph", "random"), default="callgraph")
    a = ap.parse_args()
    table = StackTable()
    make = callgraph if a.shape == "callgraph" else synthetic
    p = make(a.stacks, a.depth, 1, table)
    q = make(a.stacks, a.depth, 2, table)
    frames = sum(len(s) for s, _ in p.items())
    t = tree.build_tree(p)
    print(f"profile: {len(p)} distinct stacks, {frames} frames, {t.node_count()} tree nodes, total {p.total}")

    rows = [
        ("baseline: walk every frame once", best(lambda: baseline_walk(p), a.repeat)),
        ("build_tree", best(lambda: tree.build_tree(p), a.repeat)),
        ("prune max_nodes=20000", best(lambda: tree.prune(t, max_nodes=20000), a.repeat)),
        ("prune min_share=1/2000", best(lambda: tree.prune(t, min_share=1 / 2000), a.repeat)),
    ]
    pt = tree.prune(t, max_nodes=20000)
    busiest = tree.top_table(p)[0]["name"]
    # ten series (pods) of one tenth of the stacks each, as the aggregator merges them
    series = [
        ({"node": "n1", "namespace": "default", "pod": f"pod-{i}", "container": "app", "process": "python"},
         Profile(table, p.ids[i::10], p.counts[i::10]))
        for i in range(10)
    ]
    rows += [
        ("to_json (20000 nodes)", best(lambda: tree.to_json(pt), a.repeat)),
        (
            "render total: build+prune+to_json",
            best(lambda: tree.to_json(tree.prune(tree.build_tree(p), max_nodes=20000)), a.repeat),
        ),
        ("top_table", best(lambda: tree.top_table(p, 100), a.repeat)),
        ("search", best(lambda: tree.search(t, "func_1[0-9]$"), a.repeat)),
        ("diff_json (2 x profile, max_nodes=20000)", best(lambda: diff.diff_json(p, q), a.repeat)),
        ("diff_table (2 x profile)", best(lambda: diff.diff_table(p, q), a.repeat)),
        ("sandwich (busiest function)", best(lambda: tree.sandwich(p, busiest), a.repeat)),
        ("with_metadata (10 series)", best(lambda: tree.with_metadata(series, StackTable()), a.repeat)),
    ]
    # The server's render path (aggregator/query.py): min_share 1/4000 is its default.
    share = 1 / 4000
    rows += [
        (
            "render, full build: build+prune(1/4000)+to_json",
            best(lambda: tree.to_json(tree.prune(tree.build_tree(p), max_nodes=20000, min_share=share)),
                 a.repeat),
        ),
        (
            "render, pruned_tree(1/4000)+to_json",
            best(lambda: tree.to_json(tree.pruned_tree(p, max_nodes=20000, min_share=share)), a.repeat),
        ),
        (
            "render, pruned_tree(min_share=0)+to_json",
            best(lambda: tree.to_json(tree.pruned_tree(p, max_nodes=20000)), a.repeat),
        ),
    ]
    # metadata=1 with many pods running the same program: 40 series, each a tenth of the stacks
    # (400,000 prefixed stacks; the prefixed path needs ~1 GB for them).
    pods = [
        ({"node": f"n{i % 3}", "namespace": f"ns-{i % 10}", "pod": f"pod-{i}", "container": "app",
          "process": "python"}, Profile(table, p.ids[i % 10 :: 10], p.counts[i % 10 :: 10]))
        for i in range(40)
    ]

    def meta_old() -> None:
        t2 = StackTable()
        full = tree.build_tree(tree.with_metadata(pods, t2), labels=tree.metadata_labels(pods))
        tree.to_json(tree.prune(full, max_nodes=20000, min_share=share))

    rows += [
        ("metadata render, prefixed: with_metadata+build+prune", best(meta_old, 1)),
        (
            "metadata render, metadata_tree(1/4000)+to_json",
            best(lambda: tree.to_json(tree.metadata_tree(pods, max_nodes=20000, min_share=share)), a.repeat),
        ),
    ]
    base = rows[0][1]
    print(f"{'step':55} {'seconds':>9} {'x baseline':>11}")
    for name, sec in rows:
        print(f"{name:55} {sec:9.3f} {sec / base:11.2f}")
    print(f"metadata: {len(pods)} series x {len(pods[0][1])} stacks ({sum(len(q) for _, q in pods):,} prefixed stacks)")


if __name__ == "__main__":
    main()
