"""CPU per sample of the agent's perf.data reader (``profiler/samplers/perfdata.py``), compiled and pure.

Captures a real stream (``perf record -F 99 -a -g -q -m 8 -o -``) of a busy node for
``--seconds`` (2 native ``gzip`` loops + 3 Python loops at ~20 % each, like issue 25's
busy node), or reads one given with ``--stream FILE`` (``--save FILE`` keeps the capture).
Each reader is measured in its own child process: one pass over the whole stream warms
the symbol tables (ELF files, kallsyms), then a fresh reader sharing those tables is fed
the stream in chunks of 0.5 s of it (bytes of the stream / its seconds * 0.5), ``final``
at the end, and its CPU (``time.process_time``) is divided by the samples it named.
Rounds alternate the readers so load drifts hit all alike; the median is printed.

With ``--baseline REV`` the reader of git revision REV (``git archive`` into a temporary
folder; its compiled loop copied from here when its ``.pyx`` is the same, else built
there with ``pip wheel``) is measured in the same run, and every figure is also given as a
ratio to it.

``--idle`` captures without the workload: the node's own processes and the idle task (perf
samples swapper at 99 Hz on an idle CPU of a VM), chains that repeat.

Usage: python bench/perf_reader.py [--seconds 20] [--stream FILE] [--save FILE] [--rounds 3]
       [--idle] [--baseline REV]
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYX = "profiler/samplers/_perfdata_c.pyx"
WORKER_PY = """
import time
def burn():
    s = 0
    for i in range(200000):
        s += i * i
    return s
while True:
    t = time.time(); burn(); time.sleep((time.time() - t) * 4)
"""


def capture(seconds: float, tmp: Path, busy: bool = True) -> Path:
    """A real perf.data pipe stream of ``seconds`` of a busy workload (or of whatever runs, ``busy=False``)."""
    data = tmp / "data.txt"
    with data.open("w") as f:  # ~8 MB of compressible text: each gzip runs about a second
        for i in range(200000):
            f.write(f"line {i} of the reader benchmark, {i * 7919 % 10007} {'abc' * (i % 7)}\n")
    (tmp / "w.py").write_text(WORKER_PY)
    work = []
    if busy:
        work = [subprocess.Popen(["sh", "-c", f"while :; do gzip -6 -c {data} > /dev/null; done"]) for _ in range(2)]
        work += [subprocess.Popen([sys.executable, str(tmp / "w.py")]) for _ in range(3)]
    out = tmp / "stream.data"
    try:
        time.sleep(1)
        with out.open("wb") as f:
            p = subprocess.Popen(["perf", "record", "-F", "99", "-a", "-g", "-q", "-m", "8", "-o", "-"],
                                 stdout=f, stderr=subprocess.PIPE)
            time.sleep(seconds)
            p.send_signal(2)
            _, err = p.communicate(timeout=30)
        if out.stat().st_size < 1000:
            raise SystemExit(f"perf record wrote {out.stat().st_size} bytes: {err.decode()[-300:]}")
    finally:
        for w in work:
            w.kill()
            w.wait()
    return out


def measure(stream: Path, seconds: float, impl: str, passes: int = 3) -> tuple[float, float, int]:
    """(us of CPU per sample over the whole stream, over its second half, samples) of one reader, in
    this process: the best of ``passes`` fresh readers (noise on a shared machine only adds)."""
    from profiler.samplers import perfdata
    from profiler.symbols import FileSymbols, JitMaps, KernelSymbols

    raw = stream.read_bytes()
    files, kernel, jit = FileSymbols("/proc"), KernelSymbols("/proc/kallsyms"), JitMaps("/proc")
    kw = {}
    if "compiled" in inspect.signature(perfdata.PerfDataReader).parameters:
        kw["compiled"] = impl == "compiled"
    elif impl == "pure":
        raise SystemExit("this revision has one reader only (measure it as 'compiled')")
    chunk = max(4096, int(len(raw) / seconds * 0.5))

    def run() -> tuple[float, float, int, int]:
        r = perfdata.PerfDataReader(files=files, kernel=kernel, jit=jit, **kw)
        cpu = cpu2 = 0.0
        n2 = 0
        for i in [*range(0, len(raw), chunk), -1]:
            before = r.samples
            t0 = time.process_time()
            if i < 0:
                r.feed(b"", final=True)
            else:
                r.feed(raw[i:i + chunk])
            t = time.process_time() - t0
            cpu += t
            if i < 0 or i >= len(raw) // 2:  # the second half: a reader warm from the first
                cpu2 += t
                n2 += r.samples - before
        return cpu, cpu2, r.samples, n2

    run()  # warm the symbol tables
    best = min(run() for _ in range(passes))
    cpu, cpu2, samples, n2 = best
    return cpu / max(samples, 1) * 1e6, cpu2 / max(n2, 1) * 1e6, samples


def child(tree: Path, stream: Path, seconds: float, impl: str) -> tuple[float, float, int]:
    env = {"PYTHONPATH": str(tree), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path.home())}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", impl, "--stream", str(stream),
                          "--seconds", str(seconds)], cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"reader {impl} of {tree} failed:\n{out.stderr[-2000:]}")
    us, us2, n = out.stdout.split()
    return float(us), float(us2), int(n)


def baseline_tree(rev: str, tmp: Path) -> tuple[Path, bool]:
    """REV's files in ``tmp/base``; whether its reader has a compiled loop (then built)."""
    tree = tmp / "base"
    tree.mkdir()
    tar = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=tar, check=True)
    if not (tree / PYX).exists():
        return tree, False
    ours = sorted((REPO / "profiler/samplers").glob("_perfdata_c*.so"))
    if ours and (REPO / PYX).read_bytes() == (tree / PYX).read_bytes():
        shutil.copy2(ours[0], tree / "profiler/samplers" / ours[0].name)
        return tree, True
    wheels = tmp / "wheels"  # pip builds it with its own (isolated) Cython, as scripts/setup.sh does
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(tree)],
                   check=True, capture_output=True)
    import zipfile

    with zipfile.ZipFile(next(wheels.glob("*.whl"))) as z:
        for name in z.namelist():
            if name.startswith("profiler/samplers/_perfdata_c") and name.endswith(".so"):
                (tree / name).write_bytes(z.read(name))
                return tree, True
    raise SystemExit(f"the compiled reader of {rev} did not build")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="capture length (or the given stream's)")
    ap.add_argument("--stream", type=Path, help="a perf.data pipe stream to read instead of capturing")
    ap.add_argument("--idle", action="store_true", help="capture without the workload (what else runs here)")
    ap.add_argument("--save", type=Path, help="keep the captured stream here")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", help="git revision whose reader is measured in the same run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        us, us2, n = measure(a.stream, a.seconds, a.child)
        print(f"{us:.4f} {us2:.4f} {n}")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="fw-perf-reader-"))
    try:
        stream = a.stream
        if stream is None:
            if shutil.which("perf") is None:
                print("needs perf (or --stream FILE)")
                return 2
            stream = capture(a.seconds, tmp, busy=not a.idle)
            if a.save:
                shutil.copy2(stream, a.save)
        runs: list[tuple[str, Path, str]] = [("compiled", REPO, "compiled"), ("pure", REPO, "pure")]
        if a.baseline:
            tree, compiled = baseline_tree(a.baseline, tmp)
            runs.append((f"baseline {a.baseline}" + (" compiled" if compiled else ""), tree, "compiled"))
        got: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in runs}
        samples = 0
        for _ in range(a.rounds):
            for name, tree, impl in runs:
                us, us2, samples = child(tree, stream, a.seconds, impl)
                got[name].append((us, us2))
        print(f"stream: {stream.stat().st_size} bytes, {a.seconds:g} s, {samples} samples "
              f"({samples / a.seconds:.0f}/s), fed in 0.5 s chunks; median of {a.rounds} rounds")
        for col, label in ((0, "whole stream, fresh reader"), (1, "second half, reader warm from the first")):
            print(f"-- {label}")
            base = statistics.median(g[col] for g in got[runs[-1][0]]) if a.baseline else None
            for name, _, _ in runs:
                m = statistics.median(g[col] for g in got[name])
                ratio = f"   x{m / base:.3f} of the baseline" if base else ""
                print(f"{name:<28}{m:8.3f} us CPU per sample{ratio}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
