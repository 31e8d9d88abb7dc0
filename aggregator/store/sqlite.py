"""The embedded default store: one SQLite file in WAL mode, no setup.

Schema (compact by design, see docs/aggregator.md):

- ``frames(id, kind, name, file, line, func)``: every function once (name, kind). Rows with
  ``func`` set are the located frames of encoding-1 databases (``file`` an id in
  ``files(id, path)``, the name taken from the ``func`` row). Databases from before
  locations get the three columns on open, their frames reading as unlocated;
- ``files(id, path)``: every source path once (the writer holds them all: no path index);
- ``stacks(id, frames)``: every distinct stack once, in :mod:`aggregator.store.stackcodec`'s
  encoding 2 (the prefix it shares with an earlier stack, then its frames as varints with
  their locations inline), found again through ``stack_ids(hash, id)`` (64-bit blake2b of the
  whole stack). Rows below ``meta.stacks_v2_from`` are encoding 1 (packed uint32 frame ids);
  a database with a ``stacks.hash`` column (from before ``stack_ids``) keeps hashing there;
- ``series(id, labels)``: every label set once (JSON);
- ``windows(series_id, start, total, data)``: one row per write fragment of a
  (series, window); ``data`` is :mod:`aggregator.store.codec` (zlib'd
  delta-coded dense stack ids + counts). Writes are additive: a write appends
  a fragment, reads sum fragments, and :meth:`SQLiteStore.compact` merges the
  fragments of closed windows into one row in the background.
- ``rollups(res, start, series_id, total, data)``: per series, the sum of its windows in an
  hour or a day (``res`` 3600 or 86400), same encoding; ``rolled(res, start)`` lists the
  periods whose rollups exist and are kept exact (:mod:`aggregator.store.rollup`); an hour
  row's ``steps`` holds its windows' totals (codec: offsets in the hour, totals) for timelines
  of steps under an hour. Built by compaction once the period is closed; later writes into
  it are added to them too (in the same transaction); retention that cuts into a period
  deletes them.

All sqlite calls run on two dedicated threads (one writer connection, one
reader connection; WAL lets them run concurrently) so the event loop never
blocks. ``flamewatch serve`` uses ``synchronous=FULL`` (its
``--sqlite-synchronous`` setting): the WAL is synced on every commit batch, so
an acknowledged push survives power loss and disk errors, not only ``kill -9``.
``NORMAL`` survives ``kill -9`` (the OS holds the written pages) but may drop
the last commits on power loss or a disk error.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import sqlite3
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from aggregator.store import codec, stackcodec
from aggregator.store.base import CorruptionError, SeriesWindow, StoreError, SumOverflow
from aggregator.store.rollup import DAY, HOUR, RESOLUTIONS, max_resolution, plan
from stacks.model import Frame, Kind, Labels, Profile, Stack, StackTable
from stacks.profiletype import DEFAULT, TYPE_LABEL
from stacks.selector import Selector

log = logging.getLogger(__name__)
T = TypeVar("T")

_KIND_CODE = {Kind.USER: 0, Kind.KERNEL: 1, Kind.METADATA: 2}
_CODE_KIND = {v: k for k, v in _KIND_CODE.items()}
_CHUNK = 500  # ids per IN (...) list, well under SQLite's variable limit
_MAX_CACHED_STACKS = 2_000_000
# Decoded window blobs kept by the reader, in (id, count) entries (~12 bytes each): a render over
# the last hour re-reads the same closed windows on every refresh and filter change.
_MAX_DECODED_ENTRIES = 4_000_000
_DENSE_CELLS = 4_000_000  # (group, stack) cells summed in a dense array (32 MB of float64)
# The stack that (group, stack) cells cut by the memory bound of a merged read are summed into:
# it shows in the flame graph as one visible frame of each group that lost cells.
TRUNCATED = (Frame("other (truncated: the query crossed the server's memory bound, --max-query-cells)", Kind.USER),)
_MERGE_BATCH = 20_000  # window/rollup rows decoded at a time by a merged read (~3 M entries)
_ROLL_PER_PASS = 6  # hours rolled up per compaction pass (~0.3 s of writer time each at 200 series)
# Encoding-2 stacks (stackcodec): a reader resolves at most this many bases behind a stack, and
# the writer's trie of stored stacks holds at most this many frames (~230 bytes each measured with
# tracemalloc: ~23 MB; at 500,000 the ingest bench's server RSS went from 88 to 158 MB).
_MAX_CHAIN = 8
_MAX_TRIE_NODES = 100_000
_LOCATED_FRAMES = 1_000_000  # located Frame objects the reader shares between stacks

_REPAIR = ("stop serve, run `sqlite3 {0} 'PRAGMA integrity_check'` and restore the file from a "
           "backup (or `.recover` it)")
# Beside the database: the id of the store the file held. A database that is missing, empty or
# another one while this says it had data was emptied behind serve's back: refuse to start.
_MARKER_SUFFIX = ".id"

SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, name TEXT NOT NULL,
                                   file INTEGER NOT NULL DEFAULT 0, line INTEGER NOT NULL DEFAULT 0,
                                   func INTEGER NOT NULL DEFAULT 0, UNIQUE (name, kind, func, file, line));
CREATE TABLE IF NOT EXISTS files (id INTEGER PRIMARY KEY, path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stacks (id INTEGER PRIMARY KEY, frames BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS stack_ids (hash INTEGER PRIMARY KEY, id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, labels TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS windows (series_id INTEGER NOT NULL, start INTEGER NOT NULL,
                                    total INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS windows_by_start ON windows (start, series_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rollups (res INTEGER NOT NULL, start INTEGER NOT NULL, series_id INTEGER NOT NULL,
                                    total INTEGER NOT NULL, data BLOB NOT NULL, steps BLOB);
CREATE INDEX IF NOT EXISTS rollups_by_start ON rollups (res, start, series_id);
CREATE TABLE IF NOT EXISTS rolled (res INTEGER NOT NULL, start INTEGER NOT NULL, PRIMARY KEY (res, start));
"""


# PRAGMA user_version: 0 = before profile types (every series CPU), 1 = every series carries
# the reserved ``__profile_type__`` label (issue 13).
SCHEMA_VERSION = 1


def migrate(conn: sqlite3.Connection) -> int:
    """Bring a database to :data:`SCHEMA_VERSION` in one transaction; returns series rewritten.

    Version 0 -> 1: series written before profile types were all CPU samples, so they get
    ``__profile_type__ = process_cpu:cpu:nanoseconds:cpu:nanoseconds`` (no ``__period__``: the
    old schema did not keep it). Their ids stay, so no window row changes.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= SCHEMA_VERSION:
        return 0
    n = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sid, text in conn.execute("SELECT id, labels FROM series").fetchall():
            labels = Labels.of(dict(json.loads(text)))
            if TYPE_LABEL in labels:
                continue
            conn.execute("UPDATE series SET labels = ? WHERE id = ?",
                         (_labels_json(labels.with_(**{TYPE_LABEL: DEFAULT.id})), sid))
            n += 1
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if n:
        log.info("SQLite schema migrated to version %d: %d series marked as CPU", SCHEMA_VERSION, n)
    return n


def migrate_frames(conn: sqlite3.Connection) -> bool:
    """Give a ``frames`` table from before source locations its ``file``, ``line`` and ``func``
    columns (one transaction; True if it did). The table is rebuilt because its UNIQUE (name, kind)
    cannot be widened in place; frame ids stay, so no stack row changes."""
    if "file" in {r[1] for r in conn.execute("PRAGMA table_info(frames)")}:
        return False
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("ALTER TABLE frames RENAME TO frames_v1")
        conn.execute(SCHEMA.split(";")[0])  # the CREATE TABLE frames statement
        conn.execute("INSERT INTO frames (id, kind, name) SELECT id, kind, name FROM frames_v1")
        conn.execute("DROP TABLE frames_v1")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    log.info("SQLite frames table given file and line columns (source locations)")
    return True


def stacks_v2_from(conn: sqlite3.Connection) -> int:
    """The first stack id in encoding 2 (:mod:`aggregator.store.stackcodec`): recorded in
    ``meta`` the first time a release with it opens the database, as the id after the last
    stack then stored. Earlier rows stay in encoding 1 and read as before: nothing is rewritten."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'stacks_v2_from'").fetchone()
    if row is not None:
        return int(row[0])
    first = (conn.execute("SELECT max(id) FROM stacks").fetchone()[0] or 0) + 1
    conn.execute("INSERT INTO meta (key, value) VALUES ('stacks_v2_from', ?)", (str(first),))
    if first > 1:
        log.info("SQLite stacks from id %d on are stored in encoding 2 (prefix-shared, located frames inline)",
                 first)
    return first


def _labels_json(labels: Labels) -> str:
    return json.dumps(list(labels.items_), separators=(",", ":"), ensure_ascii=False)


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class _Cells:
    """Sums of (group, stack) cells, fed in batches: a dense array when ``space`` cells fit the
    bound, else sorted unique cells. At most ``bound`` cells are held: beyond it the lightest are
    summed, per group, into the cell of stack id ``width - 1`` (:data:`TRUNCATED`).

    Float64 sums are exact below 2^53; once the counts fed could reach that, the sums switch to
    an exact int64 reduce, and a total past 2^63-1 raises :class:`SumOverflow` (issue 24, causes
    6 and 15: counts are exact 64-bit integers end to end)."""

    def __init__(self, space: int, bound: int, width: int) -> None:
        self.width, self.bound = width, bound
        self.dense = np.zeros(space, dtype=np.float64) if space <= min(bound, _DENSE_CELLS) else None
        self.cells = np.zeros(0, dtype=np.int64)
        self.sums = np.zeros(0, dtype=np.int64)
        self.fed = 0.0  # upper bound of every sum (float: only compared with 2^53)
        self.exact = False
        self.total = 0  # exact total once exact

    def _reduce(self, cells: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.exact:
            u, inv = np.unique(cells, return_inverse=True)
            return u, np.rint(np.bincount(inv.reshape(-1), weights=sums, minlength=u.size)).astype(np.int64)
        order = np.argsort(cells, kind="stable")
        sc, ss = cells[order], sums[order].astype(np.int64)
        if sc.size == 0:
            return sc, ss
        starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])
        return sc[starts], np.add.reduceat(ss, starts)

    def _go_exact(self, counts: np.ndarray) -> None:
        if not self.exact:
            if self.dense is not None:
                nz = np.flatnonzero(self.dense)
                self.cells, self.sums = nz.astype(np.int64), np.rint(self.dense[nz]).astype(np.int64)
                self.dense = None
            self.exact = True
            self.total = sum(self.sums.tolist())
        self.total += sum(counts.tolist())
        if self.total > (1 << 63) - 1:
            raise SumOverflow(f"the samples in this range sum to {self.total}, past the 64-bit count limit "
                              "(2^63-1): narrow the time range or the selector")

    def add(self, cells: np.ndarray, counts: np.ndarray) -> None:
        self.fed += float(counts.sum(dtype=np.float64))
        if self.fed >= 2.0**53:
            self._go_exact(counts)
        if self.dense is not None:
            self.dense += np.bincount(cells, weights=counts, minlength=self.dense.size)
            return
        self.cells, self.sums = self._reduce(np.concatenate([self.cells, cells]),
                                             np.concatenate([self.sums, counts.astype(np.int64)]))
        if self.cells.size > self.bound:
            self._truncate()

    def _truncate(self) -> None:
        """Keep the heaviest half of the bound; the rest goes to each group's TRUNCATED cell."""
        keep = np.zeros(self.cells.size, dtype=bool)
        keep[np.argpartition(-self.sums, self.bound // 2)[: self.bound // 2]] = True
        cut = self.cells[~keep]
        extra = cut // self.width * self.width + self.width - 1  # each cut cell's group TRUNCATED cell
        self.cells, self.sums = self._reduce(np.concatenate([self.cells[keep], extra]),
                                             np.concatenate([self.sums[keep], self.sums[~keep]]))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(ascending cells, their sums), zero cells left out."""
        if self.dense is not None:
            nz = np.flatnonzero(self.dense)
            return nz, np.rint(self.dense[nz]).astype(np.int64)
        nz = self.sums != 0
        return self.cells[nz], self.sums[nz]


class SQLiteStore:
    """A :class:`aggregator.store.base.Store` on one SQLite file."""

    def __init__(
        self, path: str | Path, *, synchronous: str = "NORMAL", max_pages: int | None = None,
        check_seconds: float = 10.0, stack_cache: int = _MAX_CACHED_STACKS,
        max_cells: int = 4_000_000,
    ) -> None:
        self.path = Path(path)
        self.max_cells = max_cells  # (group, stack) cells a merged read holds at most (memory bound)
        self.synchronous = synchronous
        self.max_pages = max_pages  # tests use it to simulate a full disk
        self.check_seconds = check_seconds  # time budget of the start-up quick_check
        self.stack_cache = stack_cache  # most stacks the reader keeps resolved
        # What the start-up check found wrong (empty when the database checked out).
        self.startup_problems: list[str] = []
        # Bumped by retention when it deletes series rows: the reader then reloads its series map.
        self._series_generation = 0
        self._reader_generation = 0
        self._wexec: ThreadPoolExecutor | None = None
        self._rexec: ThreadPoolExecutor | None = None
        self._jobs_lock = threading.Lock()
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None
        # writer-side caches
        self._frame_ids: dict[Frame, int] = {}
        self._file_ids: dict[str, int] = {}
        self._loc_ids: dict[Frame, stackcodec.Located] = {}
        # Where a stack's hash is: ``stack_ids`` (hash -> id), or a ``stacks.hash`` column in a
        # database created before it (kept: its rows are not rewritten).
        self._hash_column = False
        self._new_hashes: dict[int, int] = {}  # stack_ids rows of the write in progress
        self._find_stack = "SELECT id FROM stack_ids WHERE hash = ?"
        # Stacks this writer stored, as a trie of their frames: a new stack is stored as the
        # longest prefix it shares with one of them plus its other frames (stackcodec). Each
        # node is the index of the stack id that brought it; ``_chain``: bases behind a stack.
        self._trie: dict[tuple[int, stackcodec.Located], int] = {}
        self._node_stack: list[int] = [0]
        # per node, the frame its stack has next (None where it ends): a line variant of that
        # frame is written as the difference of the lines
        self._nexts: list[stackcodec.Located | None] = [None]
        self._chain: dict[int, int] = {}
        self._stack_ids: dict[Stack, int] = {}
        self._series_ids: dict[Labels, int] = {}
        self._tmap: tuple[StackTable, np.ndarray] | None = None
        self._dirty: set[tuple[int, int]] = set()  # (series_id, start) with >1 fragment
        self._seen: set[tuple[int, int]] = set()  # (series_id, start) written since last compaction
        # Windows starting before this may already have a row: a new write there makes a fragment.
        self._compacted_before = 0
        self._rolled: set[tuple[int, int]] = set()  # (res, start) of rolled periods (writer side)
        self._rdirty: set[tuple[int, int, int]] = set()  # (res, start, series_id) with >1 rollup fragment
        self._roll_from = 0  # hours before this were considered for rolling already
        # reader-side caches
        self._frames: dict[int, Frame] = {}
        # The same frames without their locations (by function), one object per function.
        self._fn_frames: dict[int, Frame] = {}
        self._fn_shared: dict[Frame, Frame] = {}
        self._paths: dict[int, str] = {0: ""}  # files.id -> path
        # (function id, file id, line) -> the located Frame, one object per place
        self._loc_frames: dict[stackcodec.Located, Frame] = {}
        self._v2_from = 1  # stacks with ids from this on are in encoding 2 (meta 'stacks_v2_from')
        self._max_frame = 0
        self._stacks: dict[int, Stack] = {}  # by line (every frame as stored)
        self._fn_stacks: dict[int, Stack] = {}  # by function
        self._series: dict[int, Labels] = {}
        self._max_series = 0
        # blob bytes -> (ids, counts) narrowed; keyed by content, so it can never go stale
        self._decoded: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        self._decoded_entries = 0

    # -- plumbing -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        if self.max_pages:
            conn.execute(f"PRAGMA max_page_count={int(self.max_pages)}")
        return conn

    async def _run(self, executor: ThreadPoolExecutor | None, fn: Callable[..., T], *args: Any) -> T:
        if executor is None:
            raise StoreError(f"SQLite store {self.path} is not open")
        loop = asyncio.get_running_loop()
        job = {"state": "queued"}

        def call() -> T:
            with self._jobs_lock:
                if job["state"] == "cancelled":  # the caller went away before it started
                    raise sqlite3.OperationalError("interrupted")
                job["state"] = "running"
            try:
                return fn(*args)
            finally:
                with self._jobs_lock:
                    job["state"] = "done"

        try:
            return await loop.run_in_executor(executor, call)
        except asyncio.CancelledError:
            # A cancelled read (the client went away) stops its query rather than holding the
            # reader thread: interrupt() aborts the statement running on the reader connection.
            with self._jobs_lock:
                if job["state"] == "running" and executor is self._rexec and self._r is not None:
                    self._r.interrupt()
                job["state"] = "cancelled"
            raise
        except (StoreError, SumOverflow):
            raise
        except sqlite3.DatabaseError as e:
            if any(w in str(e).lower() for w in ("malformed", "not a database", "corrupt")):
                raise CorruptionError(f"SQLite store {self.path} is damaged: {e}; {_REPAIR.format(self.path)}") from e
            raise StoreError(f"SQLite store {self.path}: {e}") from e
        except sqlite3.Error as e:
            raise StoreError(f"SQLite store {self.path}: {e}") from e
        except OSError as e:
            raise StoreError(f"SQLite store {self.path}: {e}") from e
        except (KeyError, IndexError, zlib.error, struct.error) as e:
            # A row referring to a missing one, a blob that does not inflate: damaged pages
            # (issue 24, cause 8), never bad input; say so instead of a bare 500 KeyError.
            raise CorruptionError(f"SQLite store {self.path} is inconsistent ({type(e).__name__}: {e}): "
                                  f"damaged data; {_REPAIR.format(self.path)}") from e

    async def open(self) -> None:
        """Create the file and schema if needed; find unmerged windows left by a crash."""
        self._wexec = ThreadPoolExecutor(1, thread_name_prefix="sqlite-w")
        self._rexec = ThreadPoolExecutor(1, thread_name_prefix="sqlite-r")

        def setup() -> None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create data directory {self.path.parent}: {e}") from e
            self._check_marker()
            self._w = self._connect()
            self._quick_check(self._w)
            self._w.executescript(SCHEMA)
            if "steps" not in {r[1] for r in self._w.execute("PRAGMA table_info(rollups)")}:
                # rollups of a development build without per-window totals: rebuilt by compaction
                self._w.executescript("DROP TABLE rollups; DROP TABLE rolled;" + SCHEMA)
            migrate(self._w)
            migrate_frames(self._w)
            self._v2_from = stacks_v2_from(self._w)
            self._hash_column = "hash" in {r[1] for r in self._w.execute("PRAGMA table_info(stacks)")}
            self._find_stack = ("SELECT id FROM stacks WHERE hash = ?" if self._hash_column else
                                "SELECT id FROM stack_ids WHERE hash = ?")
            self._write_marker(self._w)
            rows = self._w.execute(
                "SELECT series_id, start FROM windows GROUP BY series_id, start HAVING count(*) > 1"
            ).fetchall()
            self._dirty.update((int(s), int(t)) for s, t in rows)
            top = self._w.execute("SELECT max(start) FROM windows").fetchone()[0]
            self._compacted_before = int(top) + 1 if top is not None else 0
            self._rolled = {(int(r), int(t)) for r, t in self._w.execute("SELECT res, start FROM rolled")}
            self._rdirty.update((int(r), int(t), int(sid)) for r, t, sid in self._w.execute(
                "SELECT res, start, series_id FROM rollups GROUP BY res, start, series_id HAVING count(*) > 1"))
            hours = [t for r, t in self._rolled if r == HOUR]
            self._roll_from = max(hours) + HOUR if hours else 0

        await self._run(self._wexec, setup)

        def rsetup() -> None:
            self._r = self._connect()

        await self._run(self._rexec, rsetup)

    # -- start-up checks ---------------------------------------------------------------------
    @property
    def marker(self) -> Path:
        return Path(str(self.path) + _MARKER_SUFFIX)

    def _check_marker(self) -> None:
        """Refuse a database that is gone, 0 bytes or another store's while the marker says
        this one held data (restored wrongly, truncated, emptied behind serve's back)."""
        if not self.marker.exists():
            return
        had = self.marker.read_text().strip()
        size = self.path.stat().st_size if self.path.exists() else -1
        found = ""
        if size > 0:
            try:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
                try:
                    row = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
                    found = row[0] if row else ""
                finally:
                    conn.close()
            except sqlite3.Error:
                return  # unreadable: the quick_check that follows names the damage
        if found == had:
            return
        what = ("is missing" if size < 0 else "is empty (0 bytes)" if size == 0
                else f"holds another store ({found or 'no store id'})")
        raise StoreError(
            f"database {self.path} {what}, but {self.marker} says it held store {had}: it was emptied or "
            f"replaced behind serve's back. Restore it from a backup; to start a new empty store on "
            f"purpose, delete {self.marker}")

    def _write_marker(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        sid = row[0] if row else uuid.uuid4().hex
        if not row:
            conn.execute("INSERT INTO meta (key, value) VALUES ('store_id', ?)", (sid,))
        if not self.marker.exists() or self.marker.read_text().strip() != sid:
            tmp = Path(str(self.marker) + ".tmp")
            tmp.write_text(sid + "\n")
            os.replace(tmp, self.marker)

    def _quick_check(self, conn: sqlite3.Connection) -> None:
        """``PRAGMA quick_check`` within ``check_seconds`` (interrupted past it, logged). What it
        finds goes to :attr:`startup_problems` (serve then reports "degraded")."""
        deadline = time.monotonic() + self.check_seconds
        timed_out = False

        def progress() -> int:
            nonlocal timed_out
            timed_out = time.monotonic() > deadline
            return 1 if timed_out else 0

        conn.set_progress_handler(progress, 10_000)
        t0 = time.monotonic()
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check(20)").fetchall()]
        except sqlite3.OperationalError as e:
            if not timed_out:
                raise
            log.warning("SQLite quick_check of %s stopped after %.1fs (--integrity-check-seconds): %s; "
                        "started without a complete check", self.path, time.monotonic() - t0, e)
            return
        except sqlite3.DatabaseError as e:
            self.startup_problems.append(f"quick_check of {self.path} failed: {e}")
            log.error("SQLite store %s is damaged: %s; %s", self.path, e, _REPAIR.format(self.path))
            raise CorruptionError(f"SQLite store {self.path} is damaged: {e}; {_REPAIR.format(self.path)}") from e
        finally:
            conn.set_progress_handler(None, 0)
        if rows != ["ok"]:
            why = "; ".join(rows[:5])
            self.startup_problems.append(f"quick_check of {self.path}: {why}")
            log.error("SQLite store %s failed its start-up quick_check: %s; %s", self.path, why,
                      _REPAIR.format(self.path))
        else:
            log.info("SQLite quick_check of %s ok in %.2fs", self.path, time.monotonic() - t0)

    async def close(self) -> None:
        """Close both connections and stop the threads."""
        for ex, attr in ((self._wexec, "_w"), (self._rexec, "_r")):
            if ex is None:
                continue

            def shut(attr: str = attr) -> None:
                conn = getattr(self, attr)
                if conn is not None:
                    conn.close()
                    setattr(self, attr, None)

            try:
                await asyncio.get_running_loop().run_in_executor(ex, shut)
            finally:
                ex.shutdown(wait=True)
        self._wexec = self._rexec = None

    # -- writing --------------------------------------------------------------------------
    def _frame_id(self, frame: Frame) -> int:
        """The id of a function's (unlocated) ``frames`` row. Encoding-2 stacks keep locations
        in their own bytes, so no located row is written any more (encoding 1's are read)."""
        fid = self._frame_ids.get(frame)
        if fid is None:
            w = self._w
            assert w is not None
            key = (frame.name, _KIND_CODE[Kind(frame.kind)], 0, 0, 0)
            q = "SELECT id FROM frames WHERE name = ? AND kind = ? AND func = ? AND file = ? AND line = ?"
            row = w.execute(q, key).fetchone()
            if row is None:
                fid = w.execute("INSERT INTO frames (name, kind, func, file, line) VALUES (?, ?, ?, ?, ?)",
                                key).lastrowid
            else:
                fid = row[0]
            self._frame_ids[frame] = fid
        return fid

    def _file_id(self, path: str) -> int:
        """The ``files`` id of a path. The writer holds every path (one row per source file):
        ``files`` needs no index of its paths, which cost more than the paths in a small store."""
        w = self._w
        assert w is not None
        if not self._file_ids:
            self._file_ids = {p: i for i, p in w.execute("SELECT id, path FROM files")}
            self._file_ids.setdefault("", 0)
        fid = self._file_ids.get(path)
        if fid is None:
            fid = self._file_ids[path] = w.execute("INSERT INTO files (path) VALUES (?)", (path,)).lastrowid
        return fid

    def _located(self, frame: Frame) -> stackcodec.Located:
        loc = self._loc_ids.get(frame)
        if loc is None:
            if len(self._loc_ids) > _LOCATED_FRAMES:  # bounded as the reader's: ids are looked up again
                self._loc_ids.clear()
            fn = frame.function()
            loc = (self._frame_id(fn), self._file_id(frame.file) if frame.file else 0, int(frame.line))
            self._loc_ids[frame] = loc
        return loc

    def _stack_id(self, stack: Stack) -> int:
        sid = self._stack_ids.get(stack)
        if sid is None:
            w = self._w
            assert w is not None
            frames = [self._located(f) for f in stack]
            h = int.from_bytes(hashlib.blake2b(stackcodec.canonical(frames), digest_size=8).digest(),
                               "little", signed=True)
            pending = self._new_hashes.get(h)
            row = (pending,) if pending is not None else w.execute(self._find_stack, (h,)).fetchone()
            if row is None:
                prefix, base, node = self._prefix_of(frames)
                blob = stackcodec.encode(prefix, base, frames[prefix:], self._nexts[node] if prefix else None)
                if self._hash_column:  # a database from before stack_ids: its stacks rows keep the hash
                    sid = w.execute("INSERT INTO stacks (hash, frames) VALUES (?, ?)", (h, blob)).lastrowid
                else:
                    sid = w.execute("INSERT INTO stacks (frames) VALUES (?)", (blob,)).lastrowid
                    self._new_hashes[h] = sid  # written in hash order at the end of the write
                self._chain[sid] = self._chain[base] + 1 if prefix else 0
                self._add_to_trie(node, frames[prefix:], sid)
            else:
                sid = row[0]
            if len(self._stack_ids) >= _MAX_CACHED_STACKS:
                self._stack_ids.clear()
            self._stack_ids[stack] = sid
        return sid

    def _prefix_of(self, frames: list[stackcodec.Located]) -> tuple[int, int, int]:
        """(length, stack id, trie node) of the longest prefix of ``frames`` that a stack this
        writer stored has too, among stacks whose chain of bases is short enough (a reader
        resolves at most ``_MAX_CHAIN`` bases per stack); (0, 0, 0) for none."""
        trie, owners, chain = self._trie, self._node_stack, self._chain
        node = 0
        best = (0, 0, 0)
        for k, f in enumerate(frames, 1):
            nxt = trie.get((node, f))
            if nxt is None:
                break
            node = nxt
            if chain[owners[node]] < _MAX_CHAIN:
                best = (k, owners[node], node)
        return best

    def _add_to_trie(self, node: int, rest: Sequence[stackcodec.Located], sid: int) -> None:
        """Index the frames of a new stack past ``node`` (where its shared prefix ends); each new
        node remembers the stack that brought it, a base for the stacks that share it later."""
        trie, owners, nexts = self._trie, self._node_stack, self._nexts
        if len(owners) + len(rest) > _MAX_TRIE_NODES:  # memory bound: start again from nothing
            self._reset_trie()
            return
        for j, f in enumerate(rest, 1):
            nxt = trie.get((node, f))
            if nxt is None:
                nxt = trie[node, f] = len(owners)
                owners.append(sid)
                nexts.append(rest[j] if j < len(rest) else None)
            node = nxt

    def _reset_trie(self) -> None:
        self._trie = {}
        self._node_stack = [0]
        self._nexts = [None]
        self._chain = {}

    def _db_ids(self, profile: Profile) -> np.ndarray:
        """Database stack ids for a profile's ids, vectorised through a per-table map."""
        table = profile.table
        if self._tmap is None or self._tmap[0] is not table:
            self._tmap = (table, np.full(max(len(table), 16), -1, dtype=np.int64))
        arr = self._tmap[1]
        if len(table) > len(arr):
            grown = np.full(max(len(table), 2 * len(arr)), -1, dtype=np.int64)
            grown[: len(arr)] = arr
            arr = grown
            self._tmap = (table, arr)
        out = arr[profile.ids]
        missing = np.flatnonzero(out < 0)
        if missing.size:
            for i in missing.tolist():
                tsid = int(profile.ids[i])
                arr[tsid] = out[i] = self._stack_id(table.stack(tsid))
        return out

    def _series_id(self, labels: Labels) -> int:
        sid = self._series_ids.get(labels)
        if sid is None:
            w = self._w
            assert w is not None
            text = _labels_json(labels)
            row = w.execute("SELECT id FROM series WHERE labels = ?", (text,)).fetchone()
            sid = row[0] if row else w.execute("INSERT INTO series (labels) VALUES (?)", (text,)).lastrowid
            self._series_ids[labels] = sid
        return sid

    def _forget_writer_caches(self) -> None:
        # A rolled-back transaction may have handed out ids that no longer exist.
        self._frame_ids.clear()
        self._file_ids.clear()
        self._loc_ids.clear()
        self._new_hashes.clear()
        self._reset_trie()
        self._stack_ids.clear()
        self._series_ids.clear()
        self._tmap = None

    def _write(self, windows: Sequence[SeriesWindow]) -> None:
        w = self._w
        assert w is not None
        try:
            w.execute("BEGIN IMMEDIATE")
            rows = []
            keys = []
            for sw in windows:
                if len(sw.profile) == 0:
                    continue
                series = self._series_id(sw.labels)
                dbids = self._db_ids(sw.profile)
                order = np.argsort(dbids)  # db ids are unique: any sort is the same sort
                # Fast zlib for fragments on the push path; compaction re-encodes closed windows at level 6.
                blob = codec.encode(dbids[order], sw.profile.counts[order], level=1)
                rows.append((series, int(sw.start), sw.profile.total, blob))
                keys.append((series, int(sw.start)))
            if self._new_hashes:
                # In hash order: neighbours in one batch share pages (random order left them ~70 % full).
                w.executemany("INSERT INTO stack_ids (hash, id) VALUES (?, ?)", sorted(self._new_hashes.items()))
                self._new_hashes.clear()
            w.executemany("INSERT INTO windows (series_id, start, total, data) VALUES (?, ?, ?, ?)", rows)
            # Late data for a rolled period goes into its rollups too, in this transaction, so a
            # reader sees it either in both or in neither.
            late = [(res, start - start % res, series, total, blob,
                     codec.encode([start % res], [total]) if res == HOUR else None)
                    for series, start, total, blob in rows
                    for res in RESOLUTIONS if (res, start - start % res) in self._rolled]
            if late:
                w.executemany("INSERT INTO rollups (res, start, series_id, total, data, steps) "
                              "VALUES (?, ?, ?, ?, ?, ?)", late)
            w.execute("COMMIT")
        except BaseException:
            try:
                w.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._forget_writer_caches()
            raise
        self._rdirty.update((r[0], r[1], r[2]) for r in late)
        for k in keys:
            if k in self._seen or k[1] < self._compacted_before:
                self._dirty.add(k)
            else:
                self._seen.add(k)

    async def write(self, windows: Sequence[SeriesWindow]) -> None:
        """Append one fragment per window, in one transaction. Durable on return."""
        if windows:
            await self._run(self._wexec, self._write, list(windows))

    # -- background maintenance ------------------------------------------------------------
    def _compact(self, before: int, limit: int) -> int:
        w = self._w
        assert w is not None
        todo = sorted(k for k in self._dirty if k[1] < before)[:limit]
        self._compacted_before = max(self._compacted_before, before)
        if not todo:
            self._seen = {k for k in self._seen if k[1] >= before}
            return 0
        w.execute("BEGIN IMMEDIATE")
        try:
            for series, start in todo:
                rows = w.execute(
                    "SELECT rowid, data FROM windows WHERE series_id = ? AND start = ?", (series, start)
                ).fetchall()
                if len(rows) < 2:
                    continue
                parts = [codec.decode(r[1]) for r in rows]
                if sum(float(c.sum(dtype=np.float64)) for _, c in parts) >= 2.0**62:
                    continue  # merged int64 counts could wrap: keep the fragments (reads sum exactly)
                p = Profile.from_arrays(
                    StackTable(), np.concatenate([a for a, _ in parts]), np.concatenate([c for _, c in parts])
                )
                w.executemany("DELETE FROM windows WHERE rowid = ?", [(r[0],) for r in rows])
                w.execute(
                    "INSERT INTO windows (series_id, start, total, data) VALUES (?, ?, ?, ?)",
                    (series, start, p.total, codec.encode(p.ids, p.counts)),
                )
            w.execute("COMMIT")
        except BaseException:
            w.execute("ROLLBACK")
            raise
        self._dirty.difference_update(todo)
        self._seen = {k for k in self._seen if k[1] >= before}
        return len(todo)

    async def compact(self, before: int, limit: int = 2000) -> int:
        """Merge the fragments of windows starting before ``before`` into one row each, merge
        rollup fragments, and roll up hours (and days) that end before ``before``. Returns
        how many windows, rollups and periods it wrote (0: nothing left to do)."""
        n = await self._run(self._wexec, self._compact, before, limit)
        n += await self._run(self._wexec, self._merge_rollups, limit)
        return n + await self._run(self._wexec, self._roll, before, _ROLL_PER_PASS)

    def _merge_rollups(self, limit: int) -> int:
        w = self._w
        assert w is not None
        todo = sorted(self._rdirty)[:limit]
        if not todo:
            return 0
        w.execute("BEGIN IMMEDIATE")
        try:
            for res, start, series in todo:
                rows = w.execute("SELECT rowid, data, steps FROM rollups WHERE res = ? AND start = ? "
                                 "AND series_id = ?", (res, start, series)).fetchall()
                if len(rows) < 2:
                    continue
                ids, counts, _ = codec.decode_many([r[1] for r in rows])
                p = Profile.from_arrays(StackTable(), ids, counts)
                steps = None
                if all(r[2] is not None for r in rows):
                    offs, tots, _ = codec.decode_many([r[2] for r in rows])
                    st = Profile.from_arrays(StackTable(), offs, tots)
                    steps = codec.encode(st.ids, st.counts)
                w.executemany("DELETE FROM rollups WHERE rowid = ?", [(r[0],) for r in rows])
                w.execute("INSERT INTO rollups (res, start, series_id, total, data, steps) VALUES (?, ?, ?, ?, ?, ?)",
                          (res, start, series, p.total, codec.encode(p.ids, p.counts), steps))
            w.execute("COMMIT")
        except BaseException:
            w.execute("ROLLBACK")
            raise
        self._rdirty.difference_update(todo)
        return len(todo)

    def _roll(self, before: int, limit: int) -> int:
        """Roll up to ``limit`` hours that end before ``before`` (from their windows), then
        every day whose hours with data are all rolled (from the hours). One transaction each."""
        w = self._w
        assert w is not None
        done = 0
        days: set[int] = set()
        while done < limit:
            row = w.execute("SELECT min(start) FROM windows WHERE start >= ?", (self._roll_from,)).fetchone()
            if row[0] is None:
                break
            hour = int(row[0]) - int(row[0]) % HOUR
            if hour + HOUR > before:
                break
            self._roll_period(HOUR, hour, "SELECT series_id, data, start, total FROM windows "
                                          "WHERE start >= ? AND start < ?")
            self._roll_from = hour + HOUR
            days.add(hour - hour % DAY)
            done += 1
        for day in sorted(days):
            if day + DAY > before or (DAY, day) in self._rolled:
                continue
            if all((HOUR, h) in self._rolled or w.execute(
                    "SELECT 1 FROM windows WHERE start >= ? AND start < ? LIMIT 1", (h, h + HOUR)).fetchone() is None
                   for h in range(day, day + DAY, HOUR)):
                self._roll_period(DAY, day, "SELECT series_id, data FROM rollups WHERE res = 3600 "
                                            "AND start >= ? AND start < ?")
                done += 1
        return done

    def _roll_period(self, res: int, start: int, source: str) -> None:
        """Write the rollups of one period (per series, the sum of ``source``'s rows in it) and
        mark it rolled, in one transaction."""
        w = self._w
        assert w is not None
        w.execute("BEGIN IMMEDIATE")
        try:
            rows = w.execute(source, (start, start + res)).fetchall()
            out = []
            if rows:
                ids, counts, lengths = codec.decode_many([r[1] for r in rows])
                series = np.repeat(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)), lengths)
                width = int(ids.max()) + 1 if ids.size else 1
                merged = Profile.from_arrays(StackTable(), series * width + ids, counts)
                cells, sums = merged.ids, merged.counts
                owner = cells // width
                bounds = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1], True]).tolist()
                steps: dict[int, dict[int, int]] = {}  # series -> window offset -> total (hour rows only)
                if res == HOUR:
                    for r in rows:
                        per = steps.setdefault(r[0], {})
                        per[r[2] - start] = per.get(r[2] - start, 0) + r[3]
                for a, b in itertools.pairwise(bounds):
                    c = sums[a:b]
                    sid = int(owner[a])
                    per = steps.get(sid)
                    vec = codec.encode(sorted(per), [per[k] for k in sorted(per)]) if per else None
                    out.append((res, start, sid, int(c.sum()), codec.encode(cells[a:b] % width, c), vec))
            w.executemany("INSERT INTO rollups (res, start, series_id, total, data, steps) VALUES (?, ?, ?, ?, ?, ?)",
                          out)
            w.execute("INSERT OR IGNORE INTO rolled (res, start) VALUES (?, ?)", (res, start))
            w.execute("COMMIT")
        except BaseException:
            w.execute("ROLLBACK")
            raise
        self._rolled.add((res, start))

    def open_windows(self) -> int:
        """(series, window) pairs written since they were last compacted."""
        return len(self._seen)

    def _delete_before(self, t: int) -> int:
        w = self._w
        assert w is not None
        w.execute("BEGIN IMMEDIATE")
        try:
            n = w.execute("DELETE FROM windows WHERE start < ?", (t,)).rowcount
            # A period that starts before t lost windows (all, or some when t cuts through it):
            # its rollups would no longer equal its windows, so they go; the rest is read from windows.
            w.execute("DELETE FROM rollups WHERE start < ?", (t,))
            w.execute("DELETE FROM rolled WHERE start < ?", (t,))
            # The highest series id is never deleted: SQLite gives a new row max(id) + 1, so an id
            # is never handed to another label set while a reader may still cache it (cause 5).
            gone = w.execute("DELETE FROM series WHERE id NOT IN (SELECT DISTINCT series_id FROM windows) "
                             "AND id < (SELECT max(id) FROM series)").rowcount
            w.execute("COMMIT")
        except BaseException:
            w.execute("ROLLBACK")
            raise
        if gone:
            self._series_generation += 1
        self._series_ids.clear()
        self._dirty = {k for k in self._dirty if k[1] >= t}
        self._seen = {k for k in self._seen if k[1] >= t}
        self._rolled = {k for k in self._rolled if k[1] >= t}
        self._rdirty = {k for k in self._rdirty if k[1] >= t}
        return n

    async def delete_before(self, t: int) -> int:
        """Retention: drop windows starting before ``t`` (and series left with none)."""
        return await self._run(self._wexec, self._delete_before, int(t))

    # -- reading --------------------------------------------------------------------------
    def _refresh_series(self) -> None:
        r = self._r
        assert r is not None
        if self._reader_generation != self._series_generation:
            # retention deleted series rows: drop the whole map rather than keep dead labels
            self._reader_generation = self._series_generation
            self._series, self._max_series = {}, 0
        rows = r.execute("SELECT id, labels FROM series WHERE id > ?", (self._max_series,)).fetchall()
        for sid, text in rows:
            self._series[sid] = Labels.of((k, v) for k, v in json.loads(text))
            self._max_series = max(self._max_series, sid)

    def _matching_series(self, selector: Selector) -> list[int] | None:
        """Series ids matching; None means all of them (no IN list needed)."""
        self._refresh_series()
        if not selector.matchers:
            return None
        return [sid for sid, labels in self._series.items() if selector.matches(labels)]

    def _rows(self, cols: str, selector: Selector, start: int, end: int, max_res: int = 0,
              tail: str = "") -> list[tuple[Any, ...]]:
        """Every row of :meth:`_row_batches` in one list."""
        return [row for batch in self._row_batches(cols, selector, start, end, max_res, tail) for row in batch]

    def _row_batches(self, cols: str, selector: Selector, start: int, end: int, max_res: int = 0,
                     tail: str = "", batch: int = 1_000_000, rollup_cols: str | None = None,
                     scan_once: bool = False, matched: tuple[list[int] | None] | None = None
                     ) -> Iterator[list[tuple[Any, ...]]]:
        """``SELECT cols`` of the matching series' rows covering [start, end), ``batch`` rows at a
        time: rollups of the rolled periods up to ``max_res`` seconds (0: none) inside the range,
        windows for the rest (:func:`aggregator.store.rollup.plan`). ``windows`` and ``rollups``
        share the columns ``series_id, start, total, data``; ``start`` is the period's on a rollup
        row. One read transaction, so the rolled periods and their rows are one snapshot.
        ``scan_once`` (rows whose first column is ``series_id``): with more than
        4 x ``_CHUNK`` matching series, each part is read once and filtered here rather than once
        per ``IN (...)`` chunk (100,000 pods: 200 scans -> 1). ``matched``: the caller's
        ``(_matching_series(selector),)``, so several reads match the series once."""
        r = self._r
        assert r is not None
        ids = self._matching_series(selector) if matched is None else matched[0]
        wanted: set[int] | None = None
        if scan_once and ids is not None and len(ids) > 4 * _CHUNK:
            wanted, ids = set(ids), None
        r.execute("BEGIN")
        try:
            parts: list[tuple[str, str, tuple[int, ...]]] = []
            if max_res:
                rolled = r.execute("SELECT res, start FROM rolled WHERE start >= ? AND start < ? AND res <= ?",
                                   (start, end, max_res)).fetchall()
                got = plan(start, end, set(rolled), max_res)
                for res, starts in got.periods.items():
                    for chunk in _chunks(starts):
                        parts.append(("rollups", f"res = {int(res)} AND start IN ({','.join('?' * len(chunk))})",
                                      tuple(chunk)))
                windows = got.windows
            else:
                windows = [(start, end)]
            parts.extend(("windows", "start >= ? AND start < ?", (a, b)) for a, b in windows)
            for table, cond, params in parts:
                base = f"SELECT {rollup_cols if rollup_cols and table == 'rollups' else cols} FROM {table} WHERE {cond}"
                queries = ([(base + tail, params)] if ids is None else
                           [(f"{base} AND series_id IN ({','.join('?' * len(c))}){tail}", (*params, *c))
                            for c in _chunks(ids)])
                for q, args in queries:
                    cur = r.execute(q, args)
                    while rows := cur.fetchmany(batch):
                        yield rows if wanted is None else [row for row in rows if row[0] in wanted]
        finally:
            r.execute("COMMIT")

    def _load_frames(self, top: int) -> None:
        """Read the ``frames`` rows up to id ``top`` that this reader has not read yet."""
        if top <= self._max_frame:
            return
        r = self._r
        assert r is not None
        shared = self._fn_shared
        rows = r.execute("SELECT id, kind, name, func, file, line FROM frames WHERE id > ?",
                         (self._max_frame,)).fetchall()
        self._load_paths({row[4] for row in rows})
        paths = self._paths
        # Functions first: a located row (encoding 1) takes its name from its function's row.
        rows.sort(key=lambda row: row[3] != 0)
        for fid, kind, name, func, file, line in rows:
            if func:
                name = self._frames[func].name
            f = self._frames[fid] = Frame(name, _CODE_KIND[kind], paths[file], line)
            fn = f.function()
            self._fn_frames[fid] = shared.setdefault(fn, fn)
            self._max_frame = max(self._max_frame, fid)

    def _load_paths(self, ids: Iterable[int]) -> None:
        if any(i not in self._paths for i in ids):
            r = self._r
            assert r is not None
            self._paths.update(r.execute("SELECT id, path FROM files").fetchall())

    def _stack_blobs(self, want: list[int], cache: dict[int, Stack]) -> dict[int, bytes]:
        """The ``stacks`` rows of ``want`` and of the bases they need that ``cache`` lacks."""
        r = self._r
        assert r is not None
        blobs: dict[int, bytes] = {}
        todo = want
        for _ in range(_MAX_CHAIN + 2):
            for chunk in _chunks(todo):
                blobs.update(r.execute(f"SELECT id, frames FROM stacks WHERE id IN ({','.join('?' * len(chunk))})",
                                       chunk).fetchall())
            bases: set[int] = set()
            for sid in todo:
                blob = blobs.get(sid)
                if blob is None:
                    raise CorruptionError(f"SQLite store {self.path}: stack {sid} is referenced but missing; "
                                          f"{_REPAIR.format(self.path)}")
                if sid >= self._v2_from and blob[:1] != b"\0":  # a prefix: its base is needed
                    try:
                        base = stackcodec.head(blob)[1]
                    except stackcodec.StackCodecError as e:
                        raise CorruptionError(f"SQLite store {self.path}: stack {sid} does not decode ({e}); "
                                              f"{_REPAIR.format(self.path)}") from None
                    if not 0 < base < sid:
                        raise CorruptionError(f"SQLite store {self.path}: stack {sid} has base {base}; "
                                              f"{_REPAIR.format(self.path)}")
                    if base not in blobs and base not in cache:
                        bases.add(base)
            todo = sorted(bases)
            if not todo:
                return blobs
        raise CorruptionError(f"SQLite store {self.path}: a stack's chain of bases is longer than "
                              f"{_MAX_CHAIN}; {_REPAIR.format(self.path)}")

    def _read_stacks(self, want: list[int], lines: bool) -> dict[int, Stack]:
        """The stacks of database ids ``want`` (not in the cache), by line or by function, and of
        the bases read for them: encoding-1 rows (ids below ``_v2_from``) from their frame rows,
        encoding-2 rows as the prefix of their base (read too, at most ``_MAX_CHAIN`` deep) and
        their own frames."""
        cache = self._stacks if lines else self._fn_stacks
        blobs = self._stack_blobs(want, cache)
        old = {sid: b for sid, b in blobs.items() if sid < self._v2_from}
        new_ids = sorted(sid for sid in blobs if sid >= self._v2_from)  # a base's id is below its stack's
        try:
            decoded = stackcodec.decode_many([blobs[sid] for sid in new_ids])
        except stackcodec.StackCodecError as e:
            raise CorruptionError(f"SQLite store {self.path}: a stack row does not decode ({e}); "
                                  f"{_REPAIR.format(self.path)}") from None
        top = max((int(np.frombuffer(b, dtype="<u4").max()) for b in old.values() if b), default=0)
        top = max(top, max((f[0] for _, _, fr in decoded for f in fr), default=0))
        self._load_frames(top)
        if lines:
            self._load_paths({f[1] for _, _, fr in decoded for f in fr})
        frames = self._frames if lines else self._fn_frames
        loc, paths = self._loc_frames, self._paths
        if len(loc) > _LOCATED_FRAMES:
            loc.clear()
        get = loc.get

        def located(key: stackcodec.Located) -> Frame:
            fn = frames[key[0]]
            f = loc[key] = Frame(fn.name, fn.kind, paths[key[1]], key[2]) if key[1] or key[2] else fn
            return f

        out: dict[int, Stack] = {}
        sid = 0
        try:
            for sid, b in old.items():
                out[sid] = tuple(frames[i] for i in np.frombuffer(b, dtype="<u4").tolist())
            for sid, (prefix, base, rest) in zip(new_ids, decoded, strict=True):
                of = (out[base] if base in out else cache[base]) if prefix else ()
                head = of[:prefix]
                if len(head) != prefix or (rest and rest[0][0] == stackcodec.SAME and len(of) <= prefix):
                    raise CorruptionError(f"SQLite store {self.path}: stack {sid} shares {prefix} frames of "
                                          f"stack {base}, which has {len(of)}; {_REPAIR.format(self.path)}")
                if rest and rest[0][0] == stackcodec.SAME:  # the base's next frame at another line
                    bf = of[prefix]
                    head += (Frame(bf.name, bf.kind, bf.file, bf.line + rest[0][2]) if lines else bf,)
                    rest = rest[1:]
                if not lines:
                    out[sid] = head + tuple([frames[k[0]] for k in rest])
                else:  # a Frame (a non-empty tuple) is never falsy
                    out[sid] = head + tuple([get(k) or located(k) for k in rest])
        except KeyError as e:
            raise CorruptionError(f"SQLite store {self.path}: stack {sid} refers to frame, file or stack {e} "
                                  f"which is missing; {_REPAIR.format(self.path)}") from None
        return out

    def _resolve_stacks(self, dbids: np.ndarray, lines: bool = True) -> list[Stack]:
        """The stacks of database ids, frames with their locations (``lines``) or without."""
        cache = self._stacks if lines else self._fn_stacks
        ids = dbids.tolist()
        want = [i for i in ids if i not in cache]
        fresh = self._read_stacks(want, lines) if want else {}
        try:
            # The answer is built before the cache is trimmed, so nothing asked for is evicted
            # before it is read (cause 4: past the bound, every read answered KeyError).
            out = [cache[i] if i in cache else fresh[i] for i in ids]
        except KeyError as e:
            raise CorruptionError(f"SQLite store {self.path}: stack {e} is referenced by a window but "
                                  f"missing; {_REPAIR.format(self.path)}") from None
        if fresh:
            if len(cache) + len(fresh) > self.stack_cache:
                cache.clear()
            if len(fresh) <= self.stack_cache:
                cache.update(fresh)
        return out

    def _to_table(self, uniq: np.ndarray, table: StackTable) -> np.ndarray:
        """Ids on ``table`` for sorted unique database stack ids ``uniq``."""
        stacks = self._resolve_stacks(uniq, table.lines)
        intern = table.intern
        return np.fromiter((intern(s) for s in stacks), dtype=np.int64, count=len(stacks))

    def _read(self, selector: Selector, start: int, end: int, table: StackTable) -> list[SeriesWindow]:
        rows = self._rows("series_id, start, data", selector, start, end)
        if not rows:
            return []
        rows.sort(key=lambda r: (r[1], r[0]))
        ids, counts, lengths = codec.decode_many([r[2] for r in rows])
        uniq = np.unique(ids)
        mapped = self._to_table(uniq, table)
        tids = mapped[np.searchsorted(uniq, ids)]
        out: list[SeriesWindow] = []
        pos = 0
        i = 0
        while i < len(rows):
            series, wstart = rows[i][0], rows[i][1]
            j = i
            n = 0
            while j < len(rows) and rows[j][0] == series and rows[j][1] == wstart:
                n += int(lengths[j])
                j += 1
            profile = Profile.from_arrays(table, tids[pos : pos + n], counts[pos : pos + n])
            out.append(SeriesWindow(self._series[series], int(wstart), profile))
            pos += n
            i = j
        return out

    async def read(self, selector: Selector, start: int, end: int, table: StackTable) -> list[SeriesWindow]:
        """Matching windows with ``start <= window.start < end``, fragments summed."""
        return await self._run(self._rexec, self._read, selector, int(start), int(end), table)

    def _decode_cached(self, blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``codec.decode_many`` with a cache keyed by the blob bytes themselves.

        Keyed by content, not by row: a compacted, rewritten or reused row has other
        bytes, so an entry is right for as long as it exists. Inflating is most of a
        render's store time (tens of thousands of small zlib streams an hour).
        """
        cache = self._decoded
        hits = [cache.get(b) for b in blobs]
        missing = [i for i, h in enumerate(hits) if h is None]
        if missing:
            ids, counts, lengths = codec.decode_many([blobs[i] for i in missing])
            if self._decoded_entries + len(ids) > _MAX_DECODED_ENTRIES:
                cache.clear()
                self._decoded_entries = 0
            ids = ids.astype(np.int32) if ids.size and int(ids.max()) < 2**31 else ids
            counts = counts.astype(np.uint32) if counts.size and int(counts.max()) < 2**32 else counts
            bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
            for j, i in enumerate(missing):
                hits[i] = got = (ids[bounds[j] : bounds[j + 1]], counts[bounds[j] : bounds[j + 1]])
                if self._decoded_entries + len(got[0]) <= _MAX_DECODED_ENTRIES:
                    # views into one array: the cache holds whole decoded batches alive, which
                    # the entry count bounds closely enough
                    cache[blobs[i]] = got
                    self._decoded_entries += len(got[0])
        lengths = np.fromiter((len(h[0]) for h in hits), dtype=np.int64, count=len(hits))  # type: ignore[index]
        if not hits:
            z = np.zeros(0, dtype=np.int64)
            return z, z, z
        # Left as cached (int32 ids, uint32 counts when they fit): the caller's arithmetic widens
        # ids to int64 and bincount reads counts as float64 anyway, so an int64 copy is wasted.
        all_ids = np.concatenate([h[0] for h in hits])  # type: ignore[index]
        all_counts = np.concatenate([h[1] for h in hits])  # type: ignore[index]
        return all_ids, all_counts, lengths

    def _read_merged(
        self, selector: Selector, start: int, end: int, table: StackTable, group_by: tuple[str, ...] | None
    ) -> dict[Labels, Profile]:
        keys: dict[Labels, int] = {}
        group_of: dict[int, int] = {}  # series id -> group index, computed once per series
        self._refresh_series()
        r = self._r
        assert r is not None
        top = r.execute("SELECT max(id) FROM stacks").fetchone()[0]
        # Database stack ids are dense: a (group, id) cell is group * width + id. The last id is
        # TRUNCATED's, the stack the cells cut by the memory bound are summed into.
        width = (int(top) if top is not None else 0) + 2
        n_series = len(self._series) if not selector.matchers else len(self._matching_series(selector) or ())
        acc = _Cells(max(n_series, 1) * width, self.max_cells, width)
        for rows in self._row_batches("series_id, data", selector, start, end, DAY, batch=_MERGE_BATCH):
            for series in {r[0] for r in rows} - group_of.keys():
                labels = self._series[series]
                if group_by:
                    labels = Labels.of({k: labels.get(k, "") for k in group_by})
                group_of[series] = keys.setdefault(labels, len(keys))
            row_group = np.fromiter((group_of[r[0]] for r in rows), dtype=np.int64, count=len(rows))
            ids, counts, lengths = self._decode_cached([r[1] for r in rows])
            acc.add(np.repeat(row_group * width, lengths) + ids, counts)
        nz, sums = acc.result()
        if nz.size == 0:
            return {}
        sid = nz % width
        # Stack ids are dense: mark the ones present instead of sorting the cells' ids.
        mark = np.zeros(width, dtype=bool)
        mark[sid] = True
        mark[width - 1] = False
        uniq = np.flatnonzero(mark)
        mapped = self._to_table(uniq, table)
        lookup = np.zeros(width, dtype=np.int64)
        lookup[uniq] = mapped
        lookup[width - 1] = table.intern(TRUNCATED)
        tids = lookup[sid]
        # nz is ascending, so each group's cells are one contiguous run: slice, don't mask.
        bounds = np.searchsorted(nz, np.arange(len(keys) + 1, dtype=np.int64) * width).tolist()
        return {labels: Profile.from_arrays(table, tids[bounds[g] : bounds[g + 1]], sums[bounds[g] : bounds[g + 1]])
                for labels, g in keys.items() if bounds[g] < bounds[g + 1]}

    async def read_merged(
        self, selector: Selector, start: int, end: int, table: StackTable,
        group_by: Sequence[str] | None = (),
    ) -> dict[Labels, Profile]:
        """Fast path for queries: one merged profile per series (empty ``group_by``) or per
        combination of ``group_by`` label values (absent labels read as ""; so ``("",)``
        merges everything under ``{}``)."""
        gb = tuple(group_by or ())
        return await self._run(self._rexec, self._read_merged, selector, int(start), int(end), table, gb)

    async def totals(
        self, selector: Selector, start: int, end: int, group_by: Sequence[str] | None = (), step: int = 0
    ) -> list[tuple[Labels, int, int]]:
        """(labels, window start, samples) per matching series (or ``group_by`` group, as in
        ``read_merged``) and window; used by the timeline. Summed from the ``total`` column.
        With ``step`` (the caller sums epoch-aligned buckets of ``step`` s) the rows are already
        summed per bucket (its start), from rollups where a period fits in one bucket."""
        gb = tuple(group_by or ())

        def run() -> list[tuple[Labels, int, int]]:
            self._refresh_series()
            if 0 < step < HOUR and HOUR % step == 0:
                rows = self._step_rows(selector, start, end, step)
            else:
                # Summed per (series, bucket of step) in SQL: rows per (series, bucket), not per window.
                bucket = f"start - start % {int(step)}" if step > 0 else "start"
                rows = self._rows(f"series_id, {bucket} AS b, sum(total)", selector, start, end,
                                  max_resolution(step), " GROUP BY series_id, b")
            if not gb:
                per: dict[tuple[int, int], int] = {}
                for s, t, n in rows:
                    per[s, t] = per.get((s, t), 0) + int(n)
                return [(self._series[s], int(t), n) for (s, t), n in per.items()]
            keys: dict[int, Labels] = {}  # series id -> group key, computed once per series
            cells: dict[tuple[Labels, int], int] = {}
            for s, t, n in rows:
                key = keys.get(s)
                if key is None:
                    labels = self._series[s]
                    key = keys[s] = Labels.of({k: labels.get(k, "") for k in gb})
                cells[key, int(t)] = cells.get((key, int(t)), 0) + int(n)
            return [(key, t, n) for (key, t), n in cells.items()]

        return await self._run(self._rexec, run)

    async def top_totals(
        self, selector: Selector, start: int, end: int, group_by: str, n: int, step: int = 0
    ) -> tuple[list[tuple[Labels, int, int]], dict[int, int], int, int]:
        """``totals(..., (group_by,))`` for the ``n`` heaviest groups only, in memory bounded by
        ``n`` x windows (issue 24, cause 3: 100,000 pods over hours held every (series, window)
        row). Returns (rows of the kept groups, the rest summed per window, number of groups,
        samples of the rest). Groups are ranked by a float sum (ranking only); the sums
        returned are exact Python ints, read by streaming the rows, never all at once. With
        ``step`` the windows are summed per bucket of ``step`` s (n x buckets, not x windows)."""
        def run() -> tuple[list[tuple[Labels, int, int]], dict[int, int], int, int]:
            self._refresh_series()
            # Both passes read the rollups of whole periods (the ranking the coarsest, the sums
            # those that fit a bucket, an hour's per-window ``steps`` below an hour) and windows
            # for the rest, streaming: a week is ~1,400 day rows per series, not 20,160 windows.
            matched = (self._matching_series(selector),)  # once for both passes (100,000 pods: 0.5 s)
            group_of: dict[int, str] = {}
            weight: dict[str, float] = {}
            for rows in self._row_batches("series_id, total(total)", selector, start, end, DAY,
                                          " GROUP BY series_id", scan_once=True, matched=matched):
                for sid, w in rows:
                    g = group_of[sid] = self._series[sid].get(group_by, "")
                    weight[g] = weight.get(g, 0.0) + w
            keep = set(sorted(weight, key=lambda g: (-weight[g], g))[:n])
            cells: dict[tuple[str, int], int] = {}
            other: dict[int, int] = {}
            rest = 0

            def add(sid: int, t: int, v: int) -> None:
                nonlocal rest
                g = group_of.get(sid)
                if g is None:
                    return  # a series written between the two passes: next refresh shows it
                if g in keep:
                    cells[g, t] = cells.get((g, t), 0) + v
                else:
                    other[t] = other.get(t, 0) + v
                    rest += v

            if 0 < step < HOUR and HOUR % step == 0:
                for rows in self._row_batches("series_id, start, total, NULL", selector, start, end, HOUR,
                                              rollup_cols="series_id, start, total, steps", scan_once=True,
                                              matched=matched):
                    for sid, t0, total, steps in rows:
                        if steps is None:
                            add(sid, t0 - t0 % step, total)
                            continue
                        offs, tots = codec.decode(steps)
                        b = (t0 + offs) - (t0 + offs) % step
                        for bt, v in zip(b.tolist(), tots.tolist(), strict=True):
                            add(sid, bt, v)
            else:
                bucket = f"start - start % {int(step)}" if step > 0 else "start"
                for rows in self._row_batches(f"series_id, {bucket} AS b, total", selector, start, end,
                                              max_resolution(step), scan_once=True, matched=matched):
                    for sid, t, v in rows:
                        add(sid, t, v)
            rows = [(Labels.of({group_by: g}), int(t), v) for (g, t), v in cells.items()]
            return rows, other, len(weight), rest

        return await self._run(self._rexec, run)

    def _step_rows(self, selector: Selector, start: int, end: int, step: int) -> list[tuple[int, int, int]]:
        """(series, bucket start, total) per bucket of ``step`` (< an hour, dividing it): rolled
        hours from their rows' per-window ``steps``, the rest from the windows."""
        sums: dict[tuple[int, int], int] = {}
        for rows in self._row_batches("series_id, start, total, NULL", selector, start, end, HOUR,
                                      rollup_cols="series_id, start, total, steps"):
            for sid, t0, total, steps in rows:
                if steps is None:
                    key = (sid, t0 - t0 % step)
                    sums[key] = sums.get(key, 0) + total
                    continue
                offs, tots = codec.decode(steps)
                b = (t0 + offs) - (t0 + offs) % step
                for bt, n in zip(b.tolist(), tots.tolist(), strict=True):
                    sums[sid, bt] = sums.get((sid, bt), 0) + n
        return [(s, t, n) for (s, t), n in sums.items()]

    def _series_in_range(self, start: int, end: int) -> list[Labels]:
        r = self._r
        assert r is not None
        self._refresh_series()
        rows = self._rows("DISTINCT series_id", Selector(), start, end, DAY)
        return [self._series[s] for s in {row[0] for row in rows} if s in self._series]

    async def label_names(self, start: int, end: int, selector: Selector | None = None) -> list[str]:
        """Sorted label names of (matching) series with windows in [start, end)."""
        def run() -> list[str]:
            return sorted({k for labels in self._series_in_range(start, end)
                           if selector is None or selector.matches(labels) for k in labels})

        return await self._run(self._rexec, run)

    async def label_values(self, name: str, selector: Selector, start: int, end: int) -> list[str]:
        """Sorted values of ``name`` among matching series with windows in [start, end)."""
        def run() -> list[str]:
            return sorted(
                {labels[name] for labels in self._series_in_range(start, end)
                 if name in labels and selector.matches(labels)}
            )

        return await self._run(self._rexec, run)

    def size_bytes(self) -> int:
        """Bytes on disk (database plus WAL)."""
        total = 0
        for suffix in ("", "-wal"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total


