"""Stored bytes per sample vs raw folded text, and memory per open window.

Data: the real ``perf script`` capture in ../shared/corpora/local (collapsed
with ``stacks.perf.collapse --all --pid``, so each process is its own series
of real kernel+user stacks); without the corpus, a synthetic pool. Each of
``--series`` series gets ``--windows`` 30 s windows of 99 Hz x 30 s samples
drawn from that process's real stack distribution, pushed as an agent would
(one folded body per series and window). Compared, in this run:

- bytes of the folded text pushed (the baseline) vs bytes the SQLite file
  holds after compaction (live pages; the file size is printed too);
- memory per open window: tracemalloc of the profiles a window holds in the
  aggregator vs the naive {folded line: count} dict of the same window;
- span profiles (issue 28): the same kind of pushes with every sample tagged
  with a root span (``--span-samples`` samples per request on average, as a
  traced service's requests are), stored as ingest stores them: the samples in
  their series, each span's share beside them in ``spans.sqlite``
  (aggregator/spans.py). Bytes per sample without the span rows (the series
  alone, what an untraced push costs) vs with them, over ``--span-windows``
  windows of every series; with ``--lines 1`` their user frames are located as
  below (span rows keep file and line), the series holding the same samples.

With ``--lines 1`` (the default) every user frame carries a source location, as
frames from SDKs and py-spy do: a file (a site-packages path; 100 files for the
corpus's ~390 user functions), the call site's line on a caller (one per caller ->
callee edge) and, on the leaf, one of three lines per stack taking 87/10/3 % of its
samples. Both shapes were measured with py-spy (lines kept) on this repository's own
tests: 3.7 functions per file, and 87.2/10.1/1.8 % of a stack's samples on its three
commonest leaf lines (1.21x as many distinct stacks by line as by function).
``--lines 0`` stores the frames as folded text gives them. Against a revision
before locations (``bench/revisions.py --baseline 32de0ec bench/storage.py``, with
the corpus found from both trees) the bytes per sample compare lines kept vs not.

With ``--real DIR`` only a measurement on real located data runs: real py-spy
recordings (``--format raw --gil``, lines kept, 10 s runs at 100 Hz as the
agent's bounded runs) of the demo's three tinyhats services under load on their
slow /admin page and of this repository's stacks tests running in a loop, made
into DIR first when it has no ``manifest.json`` (``--record-seconds``, 60 by
default). The runs go through the real path twice in this run, once as recorded
(by line) and once with every location stripped (by function, as
``--nolineno``): the agent's push (``profiler.shipper.build_push``), the
aggregator's decoder (``aggregator.ingest.decode_push``) and a SQLite store,
compacted; printed are bytes per sample of both (live pages and the blobs by
table), distinct stacks, and the ratios. Unlike the synthetic model above, no
shape is assumed.

    python bench/storage.py [--series 50] [--windows 120] [--lines 1] [--span-windows 6] [--span-samples 30]
    python bench/storage.py --real DIR [--record-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.client
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aggregator.ingest import IngestTables, SpanItem, parse_folded
from aggregator.spans import SpanStore
from aggregator.store.sqlite import SQLiteStore
from aggregator.windows import WindowWriter
from stacks.model import Frame, Kind, Labels, Profile, Stack, StackTable, merge
from stacks.profiletype import CPU, PERIOD_LABEL, TYPE_LABEL

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("FLAMEWATCH_CORPORA", REPO.parent / "shared" / "corpora")) / "local"
T0 = 1_700_006_400
GOAL = 10.0


def stack_pools() -> list[tuple[list[str], np.ndarray]]:
    """Per process: (folded stacks, probabilities)."""
    path = CORPUS / "perf-script-2cpu-499hz.txt.gz"
    if path.exists():
        from stacks.perf import collapse

        with gzip.open(path, "rt", errors="replace") as f:
            text = f.read()
        folded = collapse(text, all=True, pid=True, weight_by_period=False)
        by_proc: dict[str, dict[str, int]] = {}
        for stack, n in folded.items():
            proc, _, rest = stack.partition(";")
            if rest:
                by_proc.setdefault(proc, {})[rest] = n
        pools = [(list(d), np.array(list(d.values()), dtype=float)) for d in by_proc.values() if len(d) >= 20]
        print(f"data: {path.name}, {len(pools)} processes with >= 20 distinct stacks, "
              f"{sum(len(p[0]) for p in pools)} distinct stacks")
    else:
        rng = random.Random(3)
        funcs = [f"lib{i % 9}::func_{i}" for i in range(500)]
        pools = []
        for _ in range(8):
            stacks = [";".join(rng.choice(funcs) for _ in range(rng.randint(5, 25))) for _ in range(800)]
            pools.append((stacks, np.array([rng.paretovariate(1.2) for _ in stacks])))
        print(f"data: synthetic ({CORPUS} not found)")
    return [(s, w / w.sum()) for s, w in pools]


def window_body(pool: tuple[list[str], np.ndarray], rng: np.random.Generator, samples: int) -> bytes:
    stacks, p = pool
    counts = rng.multinomial(samples, p)
    return "".join(f"{stacks[i]} {c}\n" for i in np.flatnonzero(counts) for c in (int(counts[i]),)).encode()


def _h(*parts: str) -> int:
    return zlib.crc32("\x00".join(parts).encode())


def _file(name: str) -> str:
    h = _h(name)
    h %= 100
    return f"/usr/local/lib/python3.11/site-packages/pkg{h % 10}/module{h // 10}.py"


LEAF_LINES = (0.87, 0.10, 0.03)  # share of a stack's samples on each of its leaf's lines (measured)


class Locator:
    """Folded-text profiles -> the same samples with located user frames (see the module doc)."""

    def __init__(self, seed: int = 11) -> None:
        self.table = StackTable(lines=True)
        self.rng = np.random.default_rng(seed)
        self.variants: dict[tuple[Frame, ...], list[tuple[Frame, ...]]] = {}

    def _variants(self, stack: tuple[Frame, ...]) -> list[tuple[Frame, ...]]:
        got = self.variants.get(stack)
        if got is None:
            def at(i: int, leaf_line: int) -> Frame:
                f = stack[i]
                if f.kind is not Kind.USER:
                    return f
                if i + 1 < len(stack):  # the call site of the next frame
                    line = _h(f.name, stack[i + 1].name) % 900 + 1
                else:
                    line = (_h(f.name) + 37 * leaf_line) % 900 + 1
                return Frame(f.name, f.kind, _file(f.name), line)

            got = self.variants[stack] = [tuple(at(i, k) for i in range(len(stack))) for k in range(len(LEAF_LINES))]
        return got

    def locate(self, profile: Profile) -> Profile:
        pairs = []
        for stack, count in profile.items():
            for variant, c in zip(self._variants(stack), self.rng.multinomial(count, LEAF_LINES).tolist(),
                                  strict=True):
                if c:
                    pairs.append((variant, c))
        return Profile.from_pairs(pairs, self.table)


async def run(pools: list[tuple[list[str], np.ndarray]], series: int, windows: int, samples: int,
              lines: bool = True) -> None:
    rng = np.random.default_rng(5)
    with tempfile.TemporaryDirectory() as d:
        store = SQLiteStore(Path(d) / "flamewatch.db")
        await store.open()
        writer = WindowWriter(store, clock=lambda: T0 + 30 * windows + 3600)
        tables = IngestTables()
        locator = Locator() if lines else None
        raw_bytes = 0
        total_samples = 0
        for w in range(windows):
            items = []
            sizes = []
            for s in range(series):
                body = window_body(pools[s % len(pools)], rng, samples)
                raw_bytes += len(body)
                sizes.append(len(body))
                profile, _ = parse_folded(body, tables)
                if locator is not None:
                    profile = locator.locate(profile)
                total_samples += profile.total
                items.append((Labels.of(namespace=f"ns-{s % 5}", pod=f"pod-{s}", container="app",
                                        node=f"node-{s % 3}", process=f"proc-{s % len(pools)}"),
                              T0 + 30 * w + 15, profile))
            await writer.add(items)
            # a second push per window, as a 10 s agent interval gives: fragments, then compaction
            again = items[: series // 3]
            await writer.add(again)
            raw_bytes += sum(sizes[: series // 3])
            total_samples += sum(p.total for _, _, p in again)
        await writer.maintain()
        await store.close()
        db = Path(d) / "flamewatch.db"
        live = live_bytes(db)
        conn = sqlite3.connect(db)
        located = "file" in {r[1] for r in conn.execute("PRAGMA table_info(frames)")}
        tables_bytes = {name: conn.execute(f"SELECT sum({col}) FROM {name}").fetchone()[0]
                        for name, col in (("windows", "length(data)"), ("stacks", "length(frames)"),
                                          ("frames", "length(name) + length(file)" if located else "length(name)"))}
        distinct = conn.execute("SELECT count(*) FROM stacks").fetchone()[0]
        conn.close()
        file_size = db.stat().st_size
    print(f"series {series}, windows {windows}, {samples} samples per series window, "
          f"{'user frames located' if lines else 'no locations'}; distinct stacks stored: {distinct:,}")
    print(f"samples stored: {total_samples:,} (a third of the series push twice per window)")
    print(f"raw folded text pushed: {raw_bytes / 1e6:.2f} MB "
          f"= {raw_bytes / total_samples:.2f} bytes/sample")
    print(f"SQLite live pages: {live / 1e6:.2f} MB = {live / total_samples:.3f} bytes/sample "
          f"(file {file_size / 1e6:.2f} MB)")
    print(f"  blobs: windows {tables_bytes['windows'] / 1e6:.2f} MB, stacks {tables_bytes['stacks'] / 1e6:.2f} MB, "
          f"frame names {tables_bytes['frames'] / 1e6:.2f} MB")
    print(f"ratio folded/stored: {raw_bytes / live:.1f}x smaller (goal >= {GOAL:.0f}x)")
    memory_per_window(pools, samples)


def memory_per_window(pools: list[tuple[list[str], np.ndarray]], samples: int) -> None:
    """Bytes an open window costs in the aggregator vs a naive dict of folded lines."""
    rng = np.random.default_rng(9)
    bodies = [window_body(pools[i % len(pools)], rng, samples) for i in range(200)]
    tables = IngestTables()
    for b in bodies:  # the shared stack table is amortised over all windows: warm it first
        parse_folded(b, tables)
    tracemalloc.start()
    a0 = tracemalloc.get_traced_memory()[0]
    held = [parse_folded(b, tables)[0] for b in bodies]
    ours = (tracemalloc.get_traced_memory()[0] - a0) / len(held)
    a0 = tracemalloc.get_traced_memory()[0]
    naive = []
    for b in bodies:
        d: dict[str, int] = {}
        for line in b.decode().splitlines():
            k, _, n = line.rpartition(" ")
            d[k] = d.get(k, 0) + int(n)
        naive.append(d)
    theirs = (tracemalloc.get_traced_memory()[0] - a0) / len(naive)
    tracemalloc.stop()
    stacks = sum(len(p) for p in held) / len(held)
    print(f"memory per open window ({stacks:.0f} distinct stacks): {ours / 1024:.1f} KiB "
          f"vs naive dict of folded lines {theirs / 1024:.1f} KiB -> {theirs / ours:.1f}x smaller")
    del held, naive


def live_bytes(db: Path) -> int:
    """Bytes of the live pages of a SQLite file (after a WAL checkpoint; free pages not counted)."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    conn.close()
    return int((pages - free) * page)


async def span_storage(pools: list[tuple[list[str], np.ndarray]], series: int, windows: int, samples: int,
                       per_span: float, lines: bool = True) -> None:
    """Bytes per sample of span-tagged pushes: the series alone vs the series plus span rows
    (user frames located as in :func:`run` when ``lines``)."""
    rng = np.random.default_rng(11)
    with tempfile.TemporaryDirectory() as d:
        store = SQLiteStore(Path(d) / "flamewatch.db")
        await store.open()
        writer = WindowWriter(store, clock=lambda: T0 + 30 * windows + 3600)
        spans = SpanStore(Path(d) / "spans.sqlite", max_rows=10**9, retention_seconds=0,
                          clock=lambda: T0 + 30 * windows + 3600, prune_every=1e12)
        tables = IngestTables()
        locator = Locator() if lines else None
        total_samples = rows = 0
        for w in range(windows):
            items, span_items = [], []
            for s in range(series):
                labels = Labels.of(namespace=f"ns-{s % 5}", pod=f"pod-{s}", container="app", node=f"node-{s % 3}",
                                   process=f"proc-{s % len(pools)}", span_name="GET /admin",
                                   **{TYPE_LABEL: CPU.id, PERIOD_LABEL: "10101010"})
                left, bodies, located = samples, [], []
                while left > 0:  # one request after another until the window's samples are spent
                    n = min(left, 1 + int(rng.poisson(per_span - 1)))
                    body = window_body(pools[s % len(pools)], rng, n)
                    bodies.append(body)
                    prof, _ = parse_folded(body, tables)
                    if locator is not None:
                        prof = locator.locate(prof)
                        located.append(prof)
                    sid = f"{w:04x}{s:04x}{len(bodies):08x}"
                    span_items.append(SpanItem(sid, sid * 2, labels, T0 + 30 * w + 15, prof))
                    left -= n
                profile, _ = parse_folded(b"".join(bodies), tables)
                if locator is not None:  # the series holds the very samples of its spans
                    profile = merge(located, locator.table)
                total_samples += profile.total
                items.append((labels, T0 + 30 * w + 15, profile))
            await writer.add(items)
            rows += await spans.add(span_items)
        await writer.maintain()
        await store.close()
        await spans.close()
        main, beside = live_bytes(Path(d) / "flamewatch.db"), live_bytes(Path(d) / "spans.sqlite")
    print(f"span profiles: {series} series x {windows} windows, every sample in a root span "
          f"(~{per_span:g} samples per span, {rows:,} span rows, {total_samples:,} samples, "
          f"{'user frames located' if lines else 'no locations'})")
    print(f"  bytes/sample without span rows (series only)  {main / total_samples:.3f}")
    print(f"  bytes/sample with span rows (series + spans.sqlite)  {(main + beside) / total_samples:.3f} "
          f"(spans.sqlite {beside / 1e6:.2f} MB = {beside / rows:.0f} bytes per span row)")
    print(f"  span rows cost  {(main + beside) / main:.1f}x the series alone")


# -- real located data (--real) ------------------------------------------------------------------
REAL_RATE = 100  # py-spy Hz (its default; the synthetic section's 99 Hz)
REAL_RUN = 10  # seconds per py-spy run, as the agent's bounded runs (profiler.samplers.pyspy)


def _start_service(argv: list[str]) -> tuple[subprocess.Popen[str], int]:
    """One tinyhats service; its port from the ``READY <port>`` line."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"{argv[3]} did not start: {line!r}")
    return proc, int(line.split()[1])


def record_real(out: Path, seconds: int, pyspy: str = "") -> None:
    """Record real located Python stacks into ``out``: the demo's three tinyhats services under
    load on their slow /admin page, plus this repository's own stacks tests (pytest in a loop),
    each sampled by consecutive ``REAL_RUN`` s ``py-spy record --format raw --gil`` runs (lines
    kept); ``manifest.json`` lists (series, start offset, file) per run."""
    from flamewatch.demo.tinyhats import ADMIN_PASSWORD
    from profiler.samplers.pyspy import record_argv

    # setup.sh installs py-spy into the venv, beside this interpreter
    pyspy = pyspy or shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}") \
        or "py-spy"
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still stops its services
    procs: list[subprocess.Popen[str]] = []
    stop = threading.Event()
    try:
        py = [sys.executable, "-m", "flamewatch.demo.tinyhats"]
        manip, mport = _start_service([*py, "manipulation-service", "--port", "0"])
        admin, aport = _start_service([*py, "admin-service", "--port", "0",
                                       "--manipulation", f"http://127.0.0.1:{mport}"])
        front, fport = _start_service([*py, "frontend", "--port", "0", "--admin", f"http://127.0.0.1:{aport}"])
        procs += [manip, admin, front]
        tests = subprocess.Popen(
            ["bash", "-c", f"while :; do {sys.executable} -m pytest -q -x -p no:cacheprovider tests/stacks "
                           ">/dev/null 2>&1; done"], cwd=REPO, start_new_session=True)
        procs.append(tests)  # type: ignore[arg-type]

        def load() -> None:
            while not stop.is_set():
                try:
                    c = http.client.HTTPConnection("127.0.0.1", fport, timeout=30)
                    c.request("GET", f"/admin?password={ADMIN_PASSWORD}")  # the demo's page views
                    c.getresponse().read()
                    c.close()
                except OSError:
                    time.sleep(0.1)

        loaders = [threading.Thread(target=load, daemon=True) for _ in range(2)]
        for t in loaders:
            t.start()
        time.sleep(3)  # the test loop's first pytest is up
        pytest_pid = int(subprocess.run(["pgrep", "-P", str(tests.pid)], capture_output=True, text=True)
                         .stdout.split()[0])
        targets = {"manipulation-service": manip.pid, "admin-service": admin.pid, "frontend": front.pid}
        manifest = []
        t0 = time.monotonic()
        for k in range(max(1, seconds // REAL_RUN)):
            runs = []
            if k:  # the pytest process of this round (each loop iteration is a new one)
                got = subprocess.run(["pgrep", "-P", str(tests.pid)], capture_output=True, text=True).stdout.split()
                pytest_pid = int(got[0]) if got else pytest_pid
            for name, pid in [*targets.items(), ("stacks-tests", pytest_pid)]:
                f = out / f"{name}-{k:03d}.txt"
                runs.append((name, f, subprocess.Popen(record_argv(pyspy, pid, REAL_RATE, REAL_RUN, str(f), gil=True),
                                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
            start = time.monotonic() - t0
            for name, f, p in runs:
                p.wait(timeout=REAL_RUN + 30)
                if f.exists() and f.stat().st_size:
                    manifest.append({"series": name, "start": round(start, 1), "file": f.name})
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    finally:
        stop.set()
        for p in reversed(procs):  # the test loop and the frontend first: no page view meets a stopped service
            if p.args[0] == "bash":
                os.killpg(p.pid, signal.SIGTERM)
            else:
                p.terminate()
            p.wait(timeout=10)


def _by_function(stacks: dict[Stack, int]) -> dict[Stack, int]:
    """The same samples with every location stripped (py-spy ``--nolineno``: names keep the file)."""
    out: dict[Stack, int] = {}
    for stack, n in stacks.items():
        key = tuple(Frame(f.name, f.kind) for f in stack)
        out[key] = out.get(key, 0) + n
    return out


async def store_real(runs: list[tuple[str, float, dict[Stack, int]]],
                     lines: bool) -> tuple[int, int, int, dict[str, int]]:
    """Push each run as the agent does (:func:`profiler.shipper.build_push`) through the
    aggregator's decoder (:func:`aggregator.ingest.decode_push`) into a SQLite store; after
    compaction: (samples, live bytes, distinct stacks, blob bytes by table)."""
    from aggregator.ingest import decode_push
    from profiler.shipper import build_push

    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "flamewatch.db"
        end = max(t for _, t, _ in runs) + REAL_RUN
        store = SQLiteStore(db)
        await store.open()
        writer = WindowWriter(store, clock=lambda: T0 + end + 3600)
        tables = IngestTables()
        samples = 0
        for name, t, stacks in runs:
            labels = Labels.of(namespace="tinyhats", pod=f"{name}-0", container=name, node="node-0",
                               process="python", service_name=name)
            body, n = build_push({labels: stacks if lines else _by_function(stacks)}, frequency=REAL_RATE,
                                 start_ns=int((T0 + t) * 1e9), duration_ns=REAL_RUN * 10**9)
            decoded = decode_push(body, tables, 1 << 30)
            samples += n
            await writer.add(decoded.items)
        await writer.maintain()
        await store.close()
        live = live_bytes(db)
        conn = sqlite3.connect(db)
        blobs = {name: conn.execute(f"SELECT coalesce(sum({col}), 0) FROM {name}").fetchone()[0]
                 for name, col in (("windows", "length(data)"), ("stacks", "length(frames)"),
                                   ("frames", "length(name) + coalesce(length(file), 0)"))}
        distinct = conn.execute("SELECT count(*) FROM stacks").fetchone()[0]
        conn.close()
    return samples, live, distinct, blobs


def real(directory: Path, seconds: int) -> None:
    """Bytes per sample of real py-spy recordings stored by line vs by function, in this run."""
    from profiler.samplers.pyspy import parse_raw

    manifest = directory / "manifest.json"
    if not manifest.exists():
        print(f"recording {seconds} s of real Python stacks with py-spy into {directory} ...")
        record_real(directory, seconds)
    runs = [(r["series"], float(r["start"]), parse_raw((directory / r["file"]).read_text()))
            for r in json.loads(manifest.read_text())]
    runs = [r for r in runs if r[2]]
    if not runs:
        raise SystemExit(f"{directory}: no py-spy samples recorded")
    located = sum(n for _, _, s in runs for st, n in s.items() for f in st if f.line)
    frames = sum(n * len(st) for _, _, s in runs for st, n in s.items())
    print(f"real: {len(runs)} py-spy runs of {REAL_RUN} s at {REAL_RATE} Hz from {directory} "
          f"({', '.join(sorted({r[0] for r in runs}))}); {located / frames:.1%} of sampled frames have file:line")
    got = {}
    for lines in (True, False):
        got[lines] = asyncio.run(store_real(runs, lines))
        samples, live, distinct, blobs = got[lines]
        print(f"  {'by line (as recorded)' if lines else 'by function (locations stripped)':34s} "
              f"{samples:,} samples, {distinct:,} distinct stacks, live pages {live / samples:.3f} bytes/sample, "
              f"blobs {sum(blobs.values()) / samples:.3f} bytes/sample "
              f"(windows {blobs['windows'] / samples:.3f}, stacks {blobs['stacks'] / samples:.3f}, "
              f"frames {blobs['frames'] / samples:.3f})")
    (_, l1, d1, b1), (_, l0, d0, b0) = got[True], got[False]
    print(f"  lines kept / by function: {l1 / l0:.2f}x bytes per sample (live pages), "
          f"{sum(b1.values()) / sum(b0.values()):.2f}x (blobs; window blobs alone "
          f"{b1['windows'] / b0['windows']:.2f}x), "
          f"{d1 / d0:.2f}x distinct stacks (goal <= 1.20x)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=50)
    ap.add_argument("--windows", type=int, default=120)
    ap.add_argument("--samples", type=int, default=99 * 30, help="samples per series window")
    ap.add_argument("--lines", type=int, choices=(0, 1), default=1,
                    help="1: user frames carry file:line (default); 0: frames as folded text has them")
    ap.add_argument("--span-windows", type=int, default=6, help="windows of span-tagged pushes (0: skip)")
    ap.add_argument("--span-samples", type=float, default=30.0,
                    help="samples per root span on average (a 300 ms request at 100 Hz)")
    ap.add_argument("--real", type=Path, metavar="DIR",
                    help="only the real section: py-spy recordings in DIR (recorded there first when DIR has "
                         "no manifest.json) stored by line and by function")
    ap.add_argument("--record-seconds", type=int, default=60, help="length of a --real recording")
    args = ap.parse_args()
    if args.real:
        real(args.real, args.record_seconds)
        return 0
    pools = stack_pools()
    asyncio.run(run(pools, args.series, args.windows, args.samples, bool(args.lines)))
    if args.span_windows:
        asyncio.run(span_storage(pools, args.series, args.span_windows, args.samples, args.span_samples,
                                 bool(args.lines)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
