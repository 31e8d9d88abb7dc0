"""Benchmark: `flamewatch collapse` core vs FlameGraph's stackcollapse-perf.pl on the same input.

    python bench/collapse.py --flamegraph /path/to/FlameGraph     (or FLAMEGRAPH_DIR=...)

Inputs: a perf script test file repeated to about 40 MB (FlameGraph's vertx test file when
the checkout is given, else the corpus java file), and the local perf 6.x capture. Both
tools run with --all; the outputs must be byte-identical. Prints MB/s (best of --runs) and
the ratio. Without a FlameGraph checkout only our figures are printed.
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flamewatch.collapse_cmd import CHUNK
from stacks.perf import Collapser

DEFAULT_CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
CORPORA = Path(os.environ.get("FLAMEWATCH_CORPORA", DEFAULT_CORPORA))


def ours(path: Path) -> tuple[float, bytes]:
    """Read, collapse --all and format, as the CLI does; returns (seconds, output)."""
    t = time.perf_counter()
    c = Collapser(all=True)
    with open(path, "rb") as f:
        while data := f.read(CHUNK):
            c.feed(data.decode("latin-1"))
    counts = c.close()
    out = "".join([f"{k} {counts[k]}\n" for k in sorted(counts)]).encode("latin-1")
    return time.perf_counter() - t, out


def perl(script: Path, path: Path) -> tuple[float, bytes]:
    t = time.perf_counter()
    r = subprocess.run(["perl", str(script), "--all", str(path)], capture_output=True, check=True)
    return time.perf_counter() - t, r.stdout


def best(fn, runs: int) -> tuple[float, bytes]:
    results = [fn() for _ in range(runs)]
    return min(r[0] for r in results), results[0][1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flamegraph", default=os.environ.get("FLAMEGRAPH_DIR", ""), help="FlameGraph checkout")
    ap.add_argument("--mb", type=float, default=40.0, help="size of the repeated input (default 40)")
    ap.add_argument("--runs", type=int, default=3, help="best of N runs (default 3)")
    args = ap.parse_args()
    script = Path(args.flamegraph, "stackcollapse-perf.pl") if args.flamegraph else None
    if script is not None and not script.is_file():
        print(f"no stackcollapse-perf.pl in {args.flamegraph}", file=sys.stderr)
        return 2
    vertx = Path(args.flamegraph, "test", "perf-vertx-stacks-01.txt") if args.flamegraph else None
    java = CORPORA / "flamegraph-perf" / "perf-java-stacks-01.txt"
    base = vertx if vertx is not None and vertx.is_file() else java
    local = CORPORA / "local" / "perf-script-2cpu-499hz.txt.gz"
    with tempfile.TemporaryDirectory(prefix="fw-bench-collapse-") as tmp:
        inputs = []
        raw = base.read_bytes()
        big = Path(tmp, f"{base.stem}-x{int(args.mb * 1e6 // len(raw))}.txt")
        big.write_bytes(raw * max(1, int(args.mb * 1e6 // len(raw))))
        inputs.append(big)
        if local.is_file():
            p = Path(tmp, "perf-script-2cpu-499hz.txt")
            p.write_bytes(gzip.decompress(local.read_bytes()))
            inputs.append(p)
        ok = True
        for path in inputs:
            size = path.stat().st_size
            t_ours, out_ours = best(lambda path=path: ours(path), args.runs)
            line = f"{path.name}: {size / 1e6:.1f} MB  ours {size / t_ours / 1e6:6.1f} MB/s ({t_ours:.3f} s)"
            if script is not None:
                t_perl, out_perl = best(lambda path=path: perl(script, path), args.runs)
                same = out_ours == out_perl
                ok &= same
                line += (
                    f"  stackcollapse-perf.pl {size / t_perl / 1e6:6.1f} MB/s ({t_perl:.3f} s)"
                    f"  ratio {t_perl / t_ours:.2f}x  identical output: {same}"
                )
            print(line)
        if script is None:
            print(
                "baseline not run: fetch https://github.com/brendangregg/FlameGraph and pass "
                "--flamegraph DIR (or set FLAMEGRAPH_DIR)"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
