"""Query latency over long ranges: the viewer's queries over 1 h, a day or a week of 200 series.

Fills a store with ``--hours`` of 30 s windows x 200 series (10 namespaces x 20 pods; each
series window ~150 distinct stacks drawn from a pool of 3,000), then starts a real
``flamewatch serve`` on it (a subprocess, so its RSS is its own) and times the viewer's queries
over the whole range: the page load (every request the viewer sends on load, concurrently:
profile types, the metadata flame JSON, the timeline by namespace, five label-value lists, the
top table), render of everything with metadata frames, one namespace, one pod, the timeline,
and the diff of the two halves. *Cold* is the first request of a fresh server process (the OS
page cache stays warm); *warm* the median of ``--rounds`` more. The server's RSS peak (VmHWM)
is read after each query.

``--baseline REV`` runs the same queries, on the same filled data, with a server from git
revision REV (checked out beside, as bench/revisions.py does), alternating the two servers
query by query, and prints new/base.

The fill is a bulk path (not the push route): the first window goes through ``store.write``
(which creates the stacks and series), the rest is written in large batches straight into
the store's tables (SQLite rows with ``aggregator.store.codec`` blobs, ClickHouse RowBinary),
then ``compact`` runs as the server's maintenance loop would.

    python bench/query.py [--storage sqlite | clickhouse | clickhouse://HOST:8123/db] [--hours 1|24|168]
                          [--rounds 3] [--baseline REV] [--keep DIR]

``--storage clickhouse`` starts a private clickhouse-server (tests/support/clickhouse.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.store import codec, open_store  # noqa: E402
from aggregator.store.base import SeriesWindow  # noqa: E402
from stacks.folded import parse_frame  # noqa: E402
from stacks.model import Labels, Profile, StackTable  # noqa: E402
from stacks.profiletype import DEFAULT, TYPE_LABEL  # noqa: E402

T0 = 1_700_006_400 - 1_700_006_400 % 86400  # a day boundary, so day rollups line up
W = 30
NAMESPACES, PODS = 10, 20
LABELS = ("namespace", "pod", "container", "node", "service_name")


def make_pool(table: StackTable, n: int, rng: random.Random) -> np.ndarray:
    funcs = [f"service.module{i % 13}.func_{i}" for i in range(600)]
    ids = []
    for _ in range(n):
        depth = rng.randint(6, 24)
        frames = [parse_frame(rng.choice(funcs)) for _ in range(depth)]
        if rng.random() < 0.25:
            frames += [parse_frame("entry_SYSCALL_64_[k]"), parse_frame("do_syscall_64_[k]")]
        ids.append(table.intern(tuple(frames)))
    return np.array(ids, dtype=np.int64)


def all_series() -> list[Labels]:
    return [Labels.of(namespace=f"ns-{n}", pod=f"pod-{n}-{p}", container="app", node=f"node-{p % 3}",
                      service_name=f"svc-{n}", **{TYPE_LABEL: DEFAULT})
            for n in range(NAMESPACES) for p in range(PODS)]


def draw(nprng: np.random.Generator, n_series: int, per_window: int, pool: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """(pool indices, counts) for one window of every series: ``per_window`` draws with
    replacement per series, sorted; repeats are merged by the writers (so ~146 distinct)."""
    idx = np.sort(nprng.integers(0, pool, (n_series, per_window)), axis=1)
    counts = nprng.integers(1, 30, (n_series, per_window))
    return idx, counts


async def fill(spec: str, data_dir: str, hours: float, per_window: int, pool_size: int) -> int:
    """Fill the store; returns the number of samples written."""
    rng, nprng = random.Random(7), np.random.default_rng(7)
    table = StackTable()
    pool = make_pool(table, pool_size, rng)
    series = all_series()
    windows = int(hours * 3600 / W)
    # bulk INSERTs of millions of rows (and their rollup views) can take minutes on a busy machine
    store = open_store(spec if spec == "sqlite" else spec + "?timeout=1800", data_dir)
    await store.open()
    # Window 0 through the store: every pool stack appears (so it gets its id/row), every series.
    first = [SeriesWindow(lab, T0, Profile.from_arrays(table, pool[np.arange(i, pool_size, len(series))],
                                                      np.ones(len(range(i, pool_size, len(series))), np.int64)))
             for i, lab in enumerate(series)]
    await store.write(first)
    samples = sum(w.profile.total for w in first)
    if spec == "sqlite":
        samples += _bulk_sqlite(store, table, pool, series, windows, per_window, nprng)
    else:
        samples += await _bulk_clickhouse(store, table, pool, series, windows, per_window, nprng)
    compact = getattr(store, "compact", None)
    if compact is not None:
        t = time.perf_counter()
        while await compact(T0 + windows * W + 1, 100_000):
            pass
        print(f"  compaction after the fill: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    await store.close()
    return samples


def _bulk_sqlite(store, table, pool, series, windows, per_window, nprng) -> int:  # type: ignore[no-untyped-def]
    """Compacted rows straight into ``windows`` (the bench knows the store's private id maps)."""
    dbids = store._db_ids(Profile(table, np.sort(pool), np.ones(len(pool), np.int64)))
    pool_db = dbids[np.argsort(np.argsort(pool))]  # pool index -> database stack id
    sids = [store._series_ids[lab] for lab in series]
    conn = sqlite3.connect(Path(store.path))
    conn.execute("PRAGMA synchronous=OFF")
    samples = 0
    rows: list[tuple[int, int, int, bytes]] = []
    for w in range(1, windows):
        idx, counts = draw(nprng, len(series), per_window, len(pool))
        db = pool_db[idx]
        order = np.argsort(db, axis=1, kind="stable")
        db = np.take_along_axis(db, order, 1)
        counts = np.take_along_axis(counts, order, 1)
        for s in range(len(series)):
            ids, c = db[s], counts[s]
            keep = np.r_[True, ids[1:] != ids[:-1]]
            starts = np.flatnonzero(keep)
            merged = np.add.reduceat(c, starts)
            tot = int(merged.sum())
            samples += tot
            rows.append((sids[s], T0 + W * w, tot, codec.encode(ids[starts], merged)))
        if len(rows) >= 200_000 or w == windows - 1:
            conn.executemany("INSERT INTO windows (series_id, start, total, data) VALUES (?, ?, ?, ?)", rows)
            conn.commit()
            rows.clear()
    conn.close()
    return samples


async def _bulk_clickhouse(store, table, pool, series, windows, per_window, nprng) -> int:  # type: ignore[no-untyped-def]
    """The sample rows generated inside ClickHouse: ``INSERT INTO samples SELECT ... FROM
    numbers(N)`` per chunk of windows, series by series (so each inserted block holds a few
    series' hours, as a series' rollup rows group them), the rows of window ``w`` of series ``s``
    being the ``per_window`` draws ``k = (w * 200 + s) * per_window + slot``: a deterministic
    hash of ``k`` draws its pool stack (uniform, with replacement, as :func:`draw`), another its
    count (1..29), and ``transform`` maps pool and series indices to their hashes. The rows go
    through a real INSERT, so the rollup and totals views fire on every inserted block as for a
    push. ``nprng`` is unused (the draws are ClickHouse's hashes)."""
    from aggregator.store.clickhouse import series_hash, stack_hash

    pool_h = [stack_hash(table.stack(int(t))) for t in pool]
    sh = [series_hash(lab) for lab in series]
    db, ns, npool = store.database, len(series), len(pool)
    chunk = 360  # windows per INSERT (3 h: 10.8 M rows), aligned to hours

    def series_of(index: str) -> str:
        return (f"transform(toUInt32({index}), range(toUInt32({ns})), [{','.join(map(str, sh))}], "
                "toUInt64(0))")

    stack_of = (f"transform(toUInt32(intHash64(bitXor(k, {_SALT_STACK})) % {npool}), "
                f"range(toUInt32({npool})), [{','.join(map(str, pool_h))}], toUInt64(0))")
    t = time.perf_counter()

    async def insert(w0: int, w1: int) -> None:
        nw = w1 - w0
        await store._post(
            f"INSERT INTO {db}.series_windows SELECT toUInt32({T0} + {W} * ({w0} + intDiv(n, {ns}))) AS window, "
            f"{series_of(f'n % {ns}')} AS series FROM (SELECT number AS n FROM numbers({nw * ns}))")
        # n = (s * nw + (w - w0)) * per_window + slot: series-major within the chunk
        await store._post(
            f"INSERT INTO {db}.samples SELECT toUInt32({T0} + {W} * w) AS window, {series_of('s')} AS series, "
            f"{stack_of} AS stack, toUInt64(1 + intHash64(bitXor(k, {_SALT_COUNT})) % 29) AS count "
            f"FROM (SELECT s, w, ((w * {ns} + s) * {per_window} + n % {per_window}) AS k FROM "
            f"(SELECT number AS n, intDiv(n, {nw * per_window}) AS s, {w0} + intDiv(n, {per_window}) % {nw} AS w "
            f"FROM numbers({nw * ns * per_window})))")

    bounds = sorted({1, windows, *range(chunk, windows, chunk)})
    chunks = list(itertools.pairwise(bounds))
    for i in range(0, len(chunks), _FILL_STREAMS):  # a few INSERTs at once: each runs its views on one core
        await asyncio.gather(*(insert(a, b) for a, b in chunks[i:i + _FILL_STREAMS]))
        print(f"  clickhouse fill: {chunks[min(len(chunks), i + _FILL_STREAMS) - 1][1] - 1} of {windows - 1} "
              f"windows in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    # The merges ClickHouse would have done in the background over the range's lifetime: the
    # rollups and totals merged to one part per partition (their FINAL state; the raw samples are
    # left to the background merges, as a live store has them).
    t = time.perf_counter()
    for tbl in ("series_windows", "window_totals", "samples_1h", "samples_1d"):
        parts = await store._post_json(f"SELECT DISTINCT partition FROM system.parts WHERE database = '{db}' "
                                       f"AND table = '{tbl}' AND active")
        for p in parts:
            await store._post(f"OPTIMIZE TABLE {db}.{tbl} PARTITION {p['partition']} FINAL")
    print(f"  clickhouse merges of the rollups: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    rows = await store._post_json(f"SELECT sum(count) AS n FROM {db}.samples WHERE window > {T0}")
    return int(rows[0]["n"])


_SALT_STACK, _SALT_COUNT = 0x5EED_57AC, 0xC0C0_0001  # the two hashes of a row number must differ
_FILL_STREAMS = 2  # concurrent INSERTs of the ClickHouse fill (this machine has 2 cores)


async def recompact(data_dir: str, hours: float) -> int:
    """Open a kept SQLite fill with this tree's store, compact it as the server would; its samples."""
    store = open_store("sqlite", data_dir)
    await store.open()
    t = time.perf_counter()
    while await store.compact(T0 + int(hours * 3600) + 1, 100_000):  # type: ignore[attr-defined]
        pass
    print(f"  compaction of the kept fill: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    n = await store._run(store._rexec, lambda: store._r.execute("SELECT sum(total) FROM windows").fetchone()[0])  # type: ignore[attr-defined]
    await store.close()
    return int(n or 0)


async def clickhouse_filled(spec: str, data_dir: str, hours: float) -> int:
    """The samples of a ClickHouse database already filled for ``hours`` (0 when it is not)."""
    store = open_store(spec, data_dir)
    await store.open()
    try:
        db = store.database  # type: ignore[attr-defined]
        last = await store._post_json(f"SELECT max(window) AS w FROM {db}.series_windows")  # type: ignore[attr-defined]
        if int(last[0]["w"]) != T0 + (int(hours * 3600 / W) - 1) * W:
            return 0
        n = await store._post_json(f"SELECT sum(count) AS n FROM {db}.samples")  # type: ignore[attr-defined]
        return int(n[0]["n"])
    finally:
        await store.close()


class Server:
    """A ``flamewatch serve`` subprocess from ``tree`` on the filled store."""

    def __init__(self, tree: Path, spec: str, data_dir: str) -> None:
        self.tree, self.spec, self.data_dir = tree, spec, data_dir
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> Server:
        cmd = [sys.executable, "-m", "flamewatch.cli", "serve", "--host", "127.0.0.1", "--port", "0",
               "--data-dir", self.data_dir, "--storage", self.spec, "--retention-seconds", "0",
               "--log-level", "WARNING"]
        env = {**os.environ, "PYTHONPATH": str(self.tree)}
        self.proc = subprocess.Popen(cmd, cwd=self.tree, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in self.proc.stdout:
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
            if time.monotonic() > deadline:
                break
        if not self.url:
            self.proc.kill()
            raise SystemExit(f"flamewatch serve from {self.tree} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def rss_peak_mb(self) -> float:
        assert self.proc is not None
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]


def _get(url: str, timeout: float = 600) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        r.read()
        if r.status != 200:
            raise SystemExit(f"{url}: HTTP {r.status}")


def queries(hours: float) -> dict[str, list[str]]:
    """The viewer's requests per query name (several are sent concurrently, as the page does)."""
    a, b = T0, T0 + int(hours * 3600)
    mid = a + (b - a) // 2 // W * W
    rng = f"from={a}&until={b}"
    everything = quote("{}")
    ns3, pod = quote('{namespace="ns-3"}'), quote('{pod="pod-3-7"}')
    page = [f"/api/v1/profile_types?{rng}", f"/api/v1/render?{rng}&query={everything}&format=json&metadata=1",
            f"/api/v1/timeline?{rng}&query={everything}&group_by=namespace",
            *(f"/api/v1/label/{lab}/values?{rng}&query={everything}" for lab in LABELS),
            f"/api/v1/top?{rng}&query={everything}&limit=200"]
    return {
        "page load": page,
        "render all, metadata": [f"/api/v1/render?{rng}&metadata=1"],
        "one namespace": [f"/api/v1/render?{rng}&query={ns3}&metadata=1"],
        "one pod": [f"/api/v1/render?{rng}&query={pod}&metadata=1"],
        "timeline by namespace": [f"/api/v1/timeline?{rng}&group_by=namespace"],
        "diff of the halves": [f"/api/v1/diff?base_from={a}&base_until={mid}&compare_from={mid}&compare_until={b}"],
    }


async def _timed(url: str, paths: list[str], timeout: float) -> float:
    t = time.perf_counter()
    try:
        await asyncio.gather(*(asyncio.to_thread(_get, url + p, timeout) for p in paths))
    except TimeoutError:
        return float("inf")
    return time.perf_counter() - t


def measure(tree: Path, spec: str, data_dir: str, paths: list[str], rounds: int, timeout: float
            ) -> tuple[float, float, float]:
    """(cold s, warm p50 s, RSS peak MB) of one query on a fresh server from ``tree``; a time
    is inf when a request took longer than ``timeout`` (the rest of its rounds are skipped)."""
    with Server(tree, spec, data_dir) as srv:
        cold = asyncio.run(_timed(srv.url, paths, timeout))
        warm = [asyncio.run(_timed(srv.url, paths, timeout)) for _ in range(rounds if cold < timeout else 0)]
        return cold, statistics.median(warm) if warm else float("inf"), srv.rss_peak_mb()


@contextlib.contextmanager
def baseline_tree(rev: str | None) -> Iterator[Path | None]:
    if rev is None:
        yield None
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from revisions import checkout

    tmp = Path(tempfile.mkdtemp(prefix="fw-query-base-"))
    try:
        yield checkout(rev, tmp / "tree", None)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "tree")], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def run(spec: str, args: argparse.Namespace, data_dir: str) -> None:
    t = time.perf_counter()
    if spec == "sqlite" and args.keep and (Path(data_dir) / "flamewatch.db").exists():
        samples = asyncio.run(recompact(data_dir, args.hours))  # filled by an earlier run: reuse it
    elif spec != "sqlite" and args.keep and (kept := asyncio.run(clickhouse_filled(spec, data_dir, args.hours))):
        samples = kept  # a database of this URL filled by an earlier run for the same range
    else:
        samples = asyncio.run(fill(spec, data_dir, args.hours, args.per_window, args.pool))
    label = "sqlite" if spec == "sqlite" else "clickhouse"
    print(f"store {label}, {args.hours:g} h: filled {int(args.hours * 3600 / W)} windows x "
          f"{NAMESPACES * PODS} series, {samples:,} samples in {time.perf_counter() - t:.1f} s", flush=True)
    with baseline_tree(args.baseline) as base:
        for name, paths in queries(args.hours).items():
            new = measure(ROOT, spec, data_dir, paths, args.rounds, args.timeout)
            line = (f"  {label} {args.hours:g}h {name:22s} cold {new[0]:7.3f} s  warm {new[1]:7.3f} s  "
                    f"rss {new[2]:6.0f} MB")
            if base is not None:
                old = measure(base, spec, data_dir, paths, args.rounds, args.timeout)
                line += (f"  | base cold {old[0]:7.3f} s  warm {old[1]:7.3f} s  rss {old[2]:6.0f} MB"
                         f"  | new/base warm {new[1] / old[1]:5.2f}  cold {new[0] / old[0]:5.2f}")
            print(line, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", default="sqlite")
    ap.add_argument("--hours", type=float, default=1.0, help="range filled and queried (1, 24, 168)")
    ap.add_argument("--rounds", type=int, default=3, help="warm repetitions per query")
    ap.add_argument("--baseline", help="git revision whose server is measured on the same data too")
    ap.add_argument("--per-window", type=int, default=150, help="stacks drawn per series window")
    ap.add_argument("--pool", type=int, default=3000, help="distinct stacks overall")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a query may take (inf beyond)")
    ap.add_argument("--keep", help="fill into this folder and keep it (SQLite; with a clickhouse:// URL the "
                                   "database is kept); a folder or database already filled is reused")
    args = ap.parse_args()
    if args.storage == "clickhouse":
        from tests.support.clickhouse import clickhouse_server

        with clickhouse_server(private=True) as ch, tempfile.TemporaryDirectory() as d:
            run(ch.storage_spec("flamewatch_bench"), args, d)
        return 0
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        run(args.storage, args, args.keep)
        return 0
    with tempfile.TemporaryDirectory() as d:
        run(args.storage, args, d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
