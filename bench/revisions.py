"""Run benchmarks on this tree and on an earlier revision in the same run, and print the ratios.

    python bench/revisions.py --baseline REV [--rounds 3] bench/tree.py bench/query.py ...
    python bench/revisions.py --baseline REV bench/tree.py -- --stacks 50000   (args for every script)

The baseline is checked out with ``git worktree`` into a temporary folder; the compiled
readers (``stacks/*.so``) are copied over when their ``.pyx`` sources are the same in both
revisions, else built there (``--cython DIR`` names a folder holding Cython). Each script
runs ``--rounds`` times per tree, alternating base/new so load drifts hit both alike.

Every output line that carries a number is a figure: its key is the line with the numbers
blanked out, its value the line's first number. The table gives each figure's median per
tree and new/base. Whether higher is better depends on the figure (a time or a rate); the
``better`` column reads the unit: ``/s``, ``per s``, ``x`` and ``%`` of a share are rates.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _build import PACKAGES, build_compiled  # noqa: E402

NUM = re.compile(r"[-+]?\d+(?:[.,]\d+)*(?:\.\d+)?(?:e[-+]?\d+)?")


# A figure's name padded into a column, then its value: "prune max_nodes=20000      0.123".
COLUMN = re.compile(r"^\S.*?\S\s{2,}(?=[-+]?\d)")


def figures(output: str) -> dict[str, float]:
    """``{line with numbers blanked: value}`` for every line of ``output`` with a number; the value is
    the first number after a name padded into a column (numbers inside the name are part of the
    name), else the line's first number."""
    out: dict[str, float] = {}
    for line in output.splitlines():
        col = COLUMN.match(line)
        m = NUM.search(line, col.end() if col else 0)
        if not m:
            continue
        key = " ".join(NUM.sub("#", line).split())
        try:
            out.setdefault(key, float(m.group().replace(",", "")))
        except ValueError:
            continue
    return out


def higher_is_better(key: str) -> bool:
    """A rate (per second, a speed-up factor) is better high; a time or a size is better low."""
    return bool(re.search(r"/s\b|per s(ec)?\b|\bx\b|×|throughput|speed-?up", key))


def checkout(rev: str, where: Path, cython: str | None) -> Path:
    """``git worktree add`` of ``rev`` with compiled readers: this tree's when their sources
    match, else built there (``setup.py build_ext --inplace``; Cython from ``cython``, a folder
    holding it, or the environment)."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(where), rev], check=True)
    stale = []
    for pkg in PACKAGES:
        for so in (ROOT / pkg).glob("*.so"):
            pyx = so.name.split(".")[0] + ".pyx"
            theirs, ours = where / pkg / pyx, ROOT / pkg / pyx
            if theirs.exists() and theirs.read_bytes() == ours.read_bytes():
                shutil.copy2(so, where / pkg / so.name)
            else:
                stale.append(f"{pkg}/{pyx}")
    if stale:
        try:
            outcome = "ok: " + ", ".join(build_compiled(where, cython))
        except RuntimeError as e:
            outcome = f"FAILED: {e}"
        print(f"note: {', '.join(stale)} differ at {rev}: built the baseline's compiled modules ({outcome})",
              file=sys.stderr)
    return where


def run(tree: Path, script: str, args: list[str]) -> str:
    """One run of ``script`` (a path relative to the repo) from ``tree``; its stdout."""
    # Both trees read the corpora beside this checkout: the baseline's tree is a temporary folder,
    # where a script's default (../shared/corpora) finds nothing and falls back to synthetic data.
    corpora = os.environ.get("FLAMEWATCH_CORPORA") or str(ROOT.parent / "shared" / "corpora")
    proc = subprocess.run([sys.executable, str(tree / script), *args], cwd=tree, capture_output=True,
                          text=True, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin",
                                          "HOME": str(Path.home()), "FLAMEWATCH_CORPORA": corpora})
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed in {tree} (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def table(script: str, base: list[dict[str, float]], new: list[dict[str, float]]) -> list[str]:
    """Rows ``figure | base | new | new/base | better`` for the figures both trees printed."""
    rows = [f"## {script}", "| figure | base (median) | new (median) | new/base | better |",
            "| --- | ---: | ---: | ---: | --- |"]
    for key in new[0]:
        b = [r[key] for r in base if key in r]
        n = [r[key] for r in new if key in r]
        if not b or not n:
            continue
        mb, mn = statistics.median(b), statistics.median(n)
        ratio = mn / mb if mb else float("nan")
        better = "higher" if higher_is_better(key) else "lower"
        rows.append(f"| {key[:90]} | {mb:g} | {mn:g} | {ratio:.2f} | {better} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="git revision to compare against (e.g. HEAD~1)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per script per tree, alternating")
    ap.add_argument("--cython", help="folder holding Cython (pip install --target DIR cython), to build "
                    "the baseline's compiled readers when their sources differ")
    ap.add_argument("scripts", nargs="+", help="bench scripts, e.g. bench/tree.py; args after --")
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    ns, extra = ap.parse_args(argv[:cut]), argv[cut + 1:]
    scripts = ns.scripts
    with tempfile.TemporaryDirectory(prefix="fw-baseline-") as tmp:
        base_tree = checkout(ns.baseline, Path(tmp) / "tree", ns.cython)
        try:
            for script in scripts:
                base_runs: list[dict[str, float]] = []
                new_runs: list[dict[str, float]] = []
                for r in range(ns.rounds):
                    print(f"{script}: round {r + 1}/{ns.rounds}", file=sys.stderr, flush=True)
                    base_runs.append(figures(run(base_tree, script, extra)))
                    new_runs.append(figures(run(ROOT, script, extra)))
                print("\n".join(table(script, base_runs, new_runs)) + "\n", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
