"""The embedded default store: one SQLite file in WAL mode, no setup.

Schema (compact by design, see docs/aggregator.md):

- ``frames(id, kind, name)``: every distinct frame once;
- ``stacks(id, hash, frames)``: every distinct stack once, as packed uint32
  frame ids, found again through a 64-bit hash of those ids;
- ``series(id, labels)``: every label set once (JSON);
- ``windows(series_id, start, total, data)``: one row per write fragment of a
  (series, window); ``data`` is :mod:`aggregator.store.codec` (zlib'd
  delta-coded dense stack ids + counts). Writes are additive: a write appends
  a fragment, reads sum fragments, and :meth:`SQLiteStore.compact` merges the
  fragments of closed windows into one row in the background.

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
import json
import logging
import os
import sqlite3
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from aggregator.store import codec
from aggregator.store.base import CorruptionError, SeriesWindow, StoreError, SumOverflow
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

_REPAIR = ("stop serve, run `sqlite3 {0} 'PRAGMA integrity_check'` and restore the file from a "
           "backup (or `.recover` it)")
# Beside the database: the id of the store the file held. A database that is missing, empty or
# another one while this says it had data was emptied behind serve's back: refuse to start.
_MARKER_SUFFIX = ".id"

SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, name TEXT NOT NULL,
                                   UNIQUE (name, kind));
CREATE TABLE IF NOT EXISTS stacks (id INTEGER PRIMARY KEY, hash INTEGER NOT NULL UNIQUE,
                                   frames BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, labels TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS windows (series_id INTEGER NOT NULL, start INTEGER NOT NULL,
                                    total INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS windows_by_start ON windows (start, series_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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


def _labels_json(labels: Labels) -> str:
    return json.dumps(list(labels.items_), separators=(",", ":"), ensure_ascii=False)


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class SQLiteStore:
    """A :class:`aggregator.store.base.Store` on one SQLite file."""

    def __init__(
        self, path: str | Path, *, synchronous: str = "NORMAL", max_pages: int | None = None,
        check_seconds: float = 10.0, stack_cache: int = _MAX_CACHED_STACKS,
    ) -> None:
        self.path = Path(path)
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
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None
        # writer-side caches
        self._frame_ids: dict[Frame, int] = {}
        self._stack_ids: dict[Stack, int] = {}
        self._series_ids: dict[Labels, int] = {}
        self._tmap: tuple[StackTable, np.ndarray] | None = None
        self._dirty: set[tuple[int, int]] = set()  # (series_id, start) with >1 fragment
        self._seen: set[tuple[int, int]] = set()  # (series_id, start) written since last compaction
        # Windows starting before this may already have a row: a new write there makes a fragment.
        self._compacted_before = 0
        # reader-side caches
        self._frames: dict[int, Frame] = {}
        self._max_frame = 0
        self._stacks: dict[int, Stack] = {}
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
        try:
            return await loop.run_in_executor(executor, fn, *args)
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
            migrate(self._w)
            self._write_marker(self._w)
            rows = self._w.execute(
                "SELECT series_id, start FROM windows GROUP BY series_id, start HAVING count(*) > 1"
            ).fetchall()
            self._dirty.update((int(s), int(t)) for s, t in rows)
            top = self._w.execute("SELECT max(start) FROM windows").fetchone()[0]
            self._compacted_before = int(top) + 1 if top is not None else 0

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
        fid = self._frame_ids.get(frame)
        if fid is None:
            w = self._w
            assert w is not None
            code = _KIND_CODE[Kind(frame.kind)]
            q = "SELECT id FROM frames WHERE name = ? AND kind = ?"
            row = w.execute(q, (frame.name, code)).fetchone()
            if row is None:
                fid = w.execute("INSERT INTO frames (kind, name) VALUES (?, ?)", (code, frame.name)).lastrowid
            else:
                fid = row[0]
            self._frame_ids[frame] = fid
        return fid

    def _stack_id(self, stack: Stack) -> int:
        sid = self._stack_ids.get(stack)
        if sid is None:
            w = self._w
            assert w is not None
            blob = np.fromiter((self._frame_id(f) for f in stack), dtype="<u4", count=len(stack)).tobytes()
            h = int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little", signed=True)
            row = w.execute("SELECT id FROM stacks WHERE hash = ?", (h,)).fetchone()
            if row is None:
                sid = w.execute("INSERT INTO stacks (hash, frames) VALUES (?, ?)", (h, blob)).lastrowid
            else:
                sid = row[0]
            if len(self._stack_ids) >= _MAX_CACHED_STACKS:
                self._stack_ids.clear()
            self._stack_ids[stack] = sid
        return sid

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
            w.executemany("INSERT INTO windows (series_id, start, total, data) VALUES (?, ?, ?, ?)", rows)
            w.execute("COMMIT")
        except BaseException:
            try:
                w.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._forget_writer_caches()
            raise
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
        """Merge the fragments of windows starting before ``before`` into one row each."""
        return await self._run(self._wexec, self._compact, before, limit)

    def open_windows(self) -> int:
        """(series, window) pairs written since they were last compacted."""
        return len(self._seen)

    def _delete_before(self, t: int) -> int:
        w = self._w
        assert w is not None
        w.execute("BEGIN IMMEDIATE")
        try:
            n = w.execute("DELETE FROM windows WHERE start < ?", (t,)).rowcount
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

    def _rows(self, cols: str, selector: Selector, start: int, end: int) -> list[tuple[Any, ...]]:
        r = self._r
        assert r is not None
        ids = self._matching_series(selector)
        base = f"SELECT {cols} FROM windows WHERE start >= ? AND start < ?"
        if ids is None:
            return r.execute(base, (start, end)).fetchall()
        out: list[tuple[Any, ...]] = []
        for chunk in _chunks(ids):
            q = f"{base} AND series_id IN ({','.join('?' * len(chunk))})"
            out.extend(r.execute(q, (start, end, *chunk)).fetchall())
        return out

    def _resolve_stacks(self, dbids: np.ndarray) -> list[Stack]:
        r = self._r
        assert r is not None
        cache = self._stacks
        ids = dbids.tolist()
        want = [i for i in ids if i not in cache]
        fresh: dict[int, Stack] = {}
        if want:
            blobs = []
            for chunk in _chunks(want):
                blobs.extend(
                    r.execute(f"SELECT id, frames FROM stacks WHERE id IN ({','.join('?' * len(chunk))})",
                              chunk).fetchall()
                )
            fids = [np.frombuffer(b, dtype="<u4") for _, b in blobs]
            top = max((int(f.max()) for f in fids if f.size), default=0)
            if top > self._max_frame:
                for fid, kind, name in r.execute(
                    "SELECT id, kind, name FROM frames WHERE id > ?", (self._max_frame,)
                ):
                    self._frames[fid] = Frame(name, _CODE_KIND[kind])
                    self._max_frame = max(self._max_frame, fid)
            frames = self._frames
            for (sid, _), f in zip(blobs, fids, strict=True):
                try:
                    fresh[sid] = tuple(frames[i] for i in f.tolist())
                except KeyError as e:
                    raise CorruptionError(f"SQLite store {self.path}: stack {sid} refers to frame {e} "
                                          f"which is missing; {_REPAIR.format(self.path)}") from None
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
        stacks = self._resolve_stacks(uniq)
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
        rows = self._rows("series_id, data", selector, start, end)
        if not rows:
            return {}
        keys: dict[Labels, int] = {}
        group_of: dict[int, int] = {}  # series id -> group index, computed once per series
        for series in {r[0] for r in rows}:
            labels = self._series[series]
            if group_by:
                labels = Labels.of({k: labels.get(k, "") for k in group_by})
            group_of[series] = keys.setdefault(labels, len(keys))
        row_group = np.fromiter((group_of[r[0]] for r in rows), dtype=np.int64, count=len(rows))
        ids, counts, lengths = self._decode_cached([r[1] for r in rows])
        if ids.size == 0:
            return {}
        # Database stack ids are dense, so one bincount over (group, id) merges everything in
        # linear time; no sort of the millions of entries an hour of windows holds.
        width = int(ids.max()) + 1
        cell = np.repeat(row_group * width, lengths) + ids  # int64: (group, id) cell number
        # Counts are exact 64-bit integers end to end (issue 24, causes 6 and 15): bincount sums
        # in float64, exact only while every sum stays below 2^53; past that, int64 sums.
        bound = float(counts.sum(dtype=np.float64))
        if bound >= 2.0**62 and sum(counts.tolist()) > (1 << 63) - 1:
            raise SumOverflow(f"the samples in this range sum to about {bound:.3g}, past the 64-bit count "
                              "limit (2^63-1): narrow the time range or the selector")
        if len(keys) * width <= 20_000_000 and bound < 2.0**53:
            flat = np.bincount(cell, weights=counts, minlength=len(keys) * width)
            nz = np.flatnonzero(flat)
            sums = np.rint(flat[nz]).astype(np.int64)
        else:  # many (group, id) cells, or sums past 2^53: sort-based int64 reduce instead
            merged = Profile.from_arrays(StackTable(), cell, counts)
            nz, sums = merged.ids, merged.counts
        sid = nz % width
        # Stack ids are dense: mark the ones present instead of sorting the cells' ids.
        mark = np.zeros(width, dtype=bool)
        mark[sid] = True
        uniq = np.flatnonzero(mark)
        mapped = self._to_table(uniq, table)
        lookup = np.zeros(width, dtype=mapped.dtype)
        lookup[uniq] = mapped
        tids = lookup[sid]
        # nz is ascending, so each group's cells are one contiguous run: slice, don't mask.
        bounds = np.searchsorted(nz, np.arange(len(keys) + 1, dtype=np.int64) * width).tolist()
        return {labels: Profile.from_arrays(table, tids[bounds[g] : bounds[g + 1]], sums[bounds[g] : bounds[g + 1]])
                for labels, g in keys.items()}

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
        self, selector: Selector, start: int, end: int, group_by: Sequence[str] | None = ()
    ) -> list[tuple[Labels, int, int]]:
        """(labels, window start, samples) per matching series (or ``group_by`` group, as in
        ``read_merged``) and window; used by the timeline. Summed from the ``total`` column."""
        gb = tuple(group_by or ())

        def run() -> list[tuple[Labels, int, int]]:
            self._refresh_series()
            r = self._r
            assert r is not None
            ids = self._matching_series(selector)
            # Rows summed here in Python ints, not by SQL sum(): SQLite's integer sum raises
            # "integer overflow" past 2^63-1 (issue 24, cause 6); Python ints stay exact.
            base = "SELECT series_id, start, total FROM windows WHERE start >= ? AND start < ?"
            tail = ""
            rows: list[tuple[Any, ...]] = []
            if ids is None:
                rows = r.execute(base + tail, (start, end)).fetchall()
            else:
                for chunk in _chunks(ids):
                    q = f"{base} AND series_id IN ({','.join('?' * len(chunk))}){tail}"
                    rows.extend(r.execute(q, (start, end, *chunk)).fetchall())
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
        self, selector: Selector, start: int, end: int, group_by: str, n: int
    ) -> tuple[list[tuple[Labels, int, int]], dict[int, int], int, int]:
        """``totals(..., (group_by,))`` for the ``n`` heaviest groups only, in memory bounded by
        ``n`` x windows (issue 24, cause 3: 100,000 pods over hours held every (series, window)
        row). Returns (rows of the kept groups, the rest summed per window, number of groups,
        samples of the rest). Groups are ranked by a float sum (ranking only); the sums
        returned are exact Python ints, read by streaming the rows, never all at once."""
        def run() -> tuple[list[tuple[Labels, int, int]], dict[int, int], int, int]:
            self._refresh_series()
            r = self._r
            assert r is not None
            ids = self._matching_series(selector)
            where = "FROM windows WHERE start >= ? AND start < ?"

            def each(cols: str, tail: str = "") -> Iterable[tuple[Any, ...]]:
                if ids is None:
                    yield from r.execute(f"SELECT {cols} {where}{tail}", (start, end))
                    return
                if len(ids) > 4 * _CHUNK:
                    # Each IN (...) chunk rescans the whole time range: with many matching series
                    # one scan filtered here is far cheaper (100,000 pods: 200 scans -> 1).
                    wanted = set(ids)
                    yield from (row for row in r.execute(f"SELECT {cols} {where}{tail}", (start, end))
                                if row[0] in wanted)
                    return
                for chunk in _chunks(ids):
                    yield from r.execute(f"SELECT {cols} {where} AND series_id IN ({','.join('?' * len(chunk))}){tail}",
                                         (start, end, *chunk))

            group_of: dict[int, str] = {}
            weight: dict[str, float] = {}
            for sid, w in each("series_id, total(total)", " GROUP BY series_id"):
                g = group_of[sid] = self._series[sid].get(group_by, "")
                weight[g] = weight.get(g, 0.0) + w
            keep = set(sorted(weight, key=lambda g: (-weight[g], g))[:n])
            cells: dict[tuple[str, int], int] = {}
            other: dict[int, int] = {}
            rest = 0
            for sid, t, v in each("series_id, start, total"):
                g = group_of.get(sid)
                if g is None:
                    continue  # a series written between the two passes: next refresh shows it
                if g in keep:
                    cells[g, t] = cells.get((g, t), 0) + v
                else:
                    other[t] = other.get(t, 0) + v
                    rest += v
            rows = [(Labels.of({group_by: g}), int(t), v) for (g, t), v in cells.items()]
            return rows, other, len(weight), rest

        return await self._run(self._rexec, run)

    def _series_in_range(self, start: int, end: int) -> list[Labels]:
        r = self._r
        assert r is not None
        self._refresh_series()
        rows = r.execute(
            "SELECT DISTINCT series_id FROM windows WHERE start >= ? AND start < ?", (start, end)
        ).fetchall()
        return [self._series[s] for (s,) in rows if s in self._series]

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


