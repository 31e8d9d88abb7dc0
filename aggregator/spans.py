"""Span profiles: samples tagged with a (root) span kept beside the series, by span and trace id.

``span_id``/``trace_id`` never become series labels (a million requests would be a million
series); the samples themselves are stored in their series as always, and each span's share of
one push is also kept here, one row per (push, span, profile type), in ``spans.sqlite`` in the
data directory (whatever the main store is). Bounded: rows older than the retention are deleted,
and past ``span_max_rows`` the oldest rows go first. Queries: the flame graph of one span, of
one trace, of all root spans with a name (``/api/v1/span_profile``), and the slowest requests
of a range (``/api/v1/requests``): root spans ranked by their wall time, CPU beside it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlencode

import numpy as np

from aggregator.ingest import SpanItem
from aggregator.params import (
    Context,
    Range,
    aggregate_lines,
    choice,
    int_param,
    profile_type_param,
    share_param,
    time_range,
)
from aggregator.query import SOURCE_LABELS
from aggregator.store import codec
from render import Output
from stacks.errors import InputError
from stacks.model import Frame, Kind, Profile, Stack, StackTable, function_stack, merge
from stacks.profiletype import CPU, PERIOD_LABEL, RESERVED, TYPE_LABEL, WALL, ProfileType
from stacks.selector import Selector, parse_selector

log = logging.getLogger(__name__)
SPAN_FORMATS = ("json", "folded")
MAX_ID_CHARS = 64  # a W3C trace id is 32 hex digits, a span id 16
MAX_REQUEST_ROWS = 1000
_KINDS = {k.value: k for k in Kind}

# ``series``: the labels of a span's series without the type and period (a span's wall and CPU
# rows share one), stored once. ``spans``: one row per (push, span, type) with its samples.
# ``requests``: one row per span, its wall and CPU time summed at write time, so the slow-requests
# table reads one row per request and sorts in SQLite (bench/requests.py).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, labels TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS spans (
    span_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    t REAL NOT NULL,
    ptype TEXT NOT NULL,
    span_name TEXT NOT NULL,
    series INTEGER NOT NULL,
    period INTEGER,
    total INTEGER NOT NULL,
    stacks BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS spans_span ON spans(span_id);
CREATE INDEX IF NOT EXISTS spans_trace ON spans(trace_id);
CREATE INDEX IF NOT EXISTS spans_name ON spans(span_name, t);
CREATE INDEX IF NOT EXISTS spans_t ON spans(t);
CREATE TABLE IF NOT EXISTS requests (
    span_id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    span_name TEXT NOT NULL,
    series INTEGER NOT NULL,
    wall_ns INTEGER NOT NULL,
    cpu_ns INTEGER NOT NULL,
    first REAL NOT NULL,
    last REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_range ON requests(last, first, series, span_name, wall_ns, cpu_ns);
CREATE TABLE IF NOT EXISTS span_frames (id INTEGER PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL,
                                        file INTEGER NOT NULL DEFAULT 0, line INTEGER NOT NULL DEFAULT 0,
                                        UNIQUE(name, kind, file, line));
CREATE TABLE IF NOT EXISTS span_files (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS span_stacks (id INTEGER PRIMARY KEY, frames BLOB NOT NULL UNIQUE);
"""
# ``span_frames.file`` is an id of ``span_files`` (0: no file), each path stored once: a path is
# long and shared by every line of its functions. Tables written before locations
# (``span_frames(id, name, kind)``, UNIQUE (name, kind)) are rebuilt on open with the same ids,
# their frames reading as unlocated (:func:`migrate_span_frames`).
# ``spans.stacks`` holds one of two encodings, told apart by the first byte: a zlib stream (0x78,
# :func:`encode_profile`: frame names inside, as rows written before the interned tables were)
# or :mod:`aggregator.store.codec` (version byte 1) of ids of ``span_stacks``, whose ``frames``
# are ``<u4`` ids of ``span_frames`` (a frame with its file and line). Interned, a 30-sample span
# of real perf stacks takes tens of bytes instead of ~640 (bench/storage.py, "span profiles").
# Like the main store's stacks and frames, interned rows are not deleted with the span rows that
# used them (their number is that of distinct stacks, not of requests).
_INTERNED = codec.VERSION
MAX_CACHED = 200_000
_INT64_MAX = 2**63 - 1  # interned ids kept in memory per direction; cleared when full
_UPSERT = """
INSERT INTO requests VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(span_id) DO UPDATE SET
    wall_ns = wall_ns + excluded.wall_ns, cpu_ns = cpu_ns + excluded.cpu_ns,
    first = min(first, excluded.first), last = max(last, excluded.last),
    trace_id = CASE WHEN trace_id = '' THEN excluded.trace_id ELSE trace_id END
"""


# -- the samples of one span as bytes ------------------------------------------------------------
def encode_profile(profile: Profile) -> bytes:
    """zlib(JSON ``{"f": [[name, kind], ...], "s": [[[frame index, ...], count], ...]}``):
    self-contained (no stack ids of any table), any frame name allowed."""
    frames: dict[Frame, int] = {}
    # By function: the earlier encoding (rows are no longer written in it) kept no locations.
    stacks = [[[frames.setdefault(f.function(), len(frames)) for f in stack], count]
              for stack, count in profile.items()]
    doc = {"f": [[f.name, str(f.kind)] for f in frames], "s": stacks}
    return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 6)


def decode_profile(blob: bytes, table: StackTable) -> Profile:
    """Inverse of :func:`encode_profile`, interned into ``table``."""
    doc = json.loads(zlib.decompress(blob))
    frames = [Frame(f[0], _KINDS.get(f[1], Kind.USER)) for f in doc["f"]]
    return Profile.from_pairs(((tuple(frames[i] for i in idx), c) for idx, c in doc["s"]), table)


def migrate_span_frames(db: sqlite3.Connection) -> bool:
    """Give a ``span_frames`` table from before locations its ``file`` and ``line`` columns (one
    transaction; True if it did). Rebuilt, as its UNIQUE (name, kind) cannot be widened in place;
    frame ids stay, so no ``span_stacks`` row changes."""
    if "file" in {r[1] for r in db.execute("PRAGMA table_info(span_frames)")}:
        return False
    create = next(s for s in _SCHEMA.split(";") if "TABLE IF NOT EXISTS span_frames" in s)
    with db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ALTER TABLE span_frames RENAME TO span_frames_v1")
        db.execute(create)
        db.execute("INSERT INTO span_frames (id, name, kind) SELECT id, name, kind FROM span_frames_v1")
        db.execute("DROP TABLE span_frames_v1")
    log.info("span_frames given file and line columns (source locations)")
    return True


def value_ns(ptype: ProfileType, labels: Mapping[str, str], total: int) -> int | None:
    """``total`` in nanoseconds: samples times the period for samples-stored types, the value
    itself for nanosecond types, None when the type is not a time."""
    if ptype.as_samples:
        period = labels.get(PERIOD_LABEL, "")
        return total * int(period) if period.isdigit() else None
    return total if ptype.sample_unit == "nanoseconds" else None


# -- the store ------------------------------------------------------------------------------------
@dataclass
class Request:
    """One root span of the slow-requests table."""

    span_id: str
    trace_id: str
    span_name: str
    service_name: str
    pod: str
    wall_ns: int
    cpu_ns: int
    first: float
    last: float


class SpanStore:
    """Span rows in SQLite, used from the event loop through one worker thread at a time."""

    def __init__(self, path: Path | str, *, max_rows: int, retention_seconds: int,
                 clock: Callable[[], float] = time.time, prune_every: float = 10.0) -> None:
        self.path = str(path)
        self.max_rows = max_rows
        self.retention = retention_seconds
        self.clock = clock
        self.prune_every = prune_every
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._last_prune = 0.0
        self.failed = 0  # span rows not kept because the span database failed
        self._series: dict[str, int] = {}  # labels JSON -> id
        self._parsed: dict[int, dict[str, str]] = {}  # id -> labels
        self._frame_ids: dict[Frame, int] = {}  # interned frames, files and stacks, both ways (bounded)
        self._file_ids: dict[str, int] = {}
        self._stack_ids: dict[Stack, int] = {}
        self._frames: dict[int, Frame] = {}
        self._stacks: dict[int, Stack] = {}

    @property
    def enabled(self) -> bool:
        """False when ``span_max_rows`` is 0: nothing is kept, queries answer empty."""
        return self.max_rows > 0

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # span rows are a convenience copy of stored samples
            db.executescript(_SCHEMA)
            migrate_span_frames(db)
            self._db = db
        return self._db

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(self._conn(), *args)
        return await asyncio.to_thread(locked)

    async def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # writes
    async def add(self, items: Sequence[SpanItem]) -> int:
        """Keep ``items`` (one row each) and add their time to their requests; apply retention
        and the row bound at most every ``prune_every`` seconds. Returns the rows written."""
        if not self.enabled or not items:
            return 0
        now = self.clock()
        prune = now - self._last_prune >= self.prune_every
        if prune:
            self._last_prune = now
        try:
            return int(await self._run(self._write, list(items), now, prune))
        except sqlite3.Error as e:
            # The samples are stored in their series already: a push never fails for its span copy.
            log.warning("span profiles of %d rows not kept: %s (%s)", len(items), e, self.path)
            self.failed += len(items)
            return 0

    def _series_id(self, db: sqlite3.Connection, labels: Mapping[str, str]) -> int:
        key = json.dumps({k: v for k, v in sorted(labels.items()) if k not in RESERVED}, separators=(",", ":"))
        sid = self._series.get(key)
        if sid is None:
            db.execute("INSERT OR IGNORE INTO series(labels) VALUES (?)", (key,))
            (sid,) = db.execute("SELECT id FROM series WHERE labels = ?", (key,)).fetchone()
            self._series[key] = sid
        return int(sid)

    def _write(self, db: sqlite3.Connection, items: list[SpanItem], now: float, prune: bool) -> int:
        try:
            return self._write_rows(db, items, now, prune)
        except BaseException:
            # A rolled-back transaction takes its new series, frames and stacks with it: ids cached
            # from it would name rows that do not exist.
            self._series.clear()
            self._frame_ids.clear()
            self._file_ids.clear()
            self._stack_ids.clear()
            raise

    def _write_rows(self, db: sqlite3.Connection, items: list[SpanItem], now: float, prune: bool) -> int:
        rows, reqs = [], []
        with db:
            db.execute("BEGIN")
            for it in items:
                if len(it.span_id) > MAX_ID_CHARS or len(it.trace_id) > MAX_ID_CHARS:
                    continue  # not a span id any tracer makes; never a key we index
                ptype = ProfileType.parse(it.labels.get(TYPE_LABEL, CPU.id))
                period = it.labels.get(PERIOD_LABEL, "")
                t = it.t if it.t is not None else now
                sid = self._series_id(db, it.labels)
                name = it.labels.get("span_name", "")
                total = it.profile.total
                rows.append((it.span_id, it.trace_id, t, ptype.id, name, sid,
                             int(period) if period.isdigit() else None, total, self._encode(db, it.profile)))
                # Saturated at 2^63-1: a request's time is a sort key, and SQLite integers are 64-bit
                # (a huge count times the period must not fail the push; hypothesis found it).
                ns = min(value_ns(ptype, it.labels, total) or 0, _INT64_MAX)
                reqs.append((it.span_id, it.trace_id, name, sid, ns if ptype == WALL else 0,
                             ns if ptype == CPU else 0, t, t))
            db.executemany("INSERT INTO spans VALUES (?,?,?,?,?,?,?,?,?)", rows)
            db.executemany(_UPSERT, reqs)
        if prune:
            self._prune(db, now)
        return len(rows)

    def _encode(self, db: sqlite3.Connection, profile: Profile) -> bytes:
        """``profile`` as codec(ids of interned stacks, counts), sorted by id."""
        sums: dict[int, int] = {}
        for stack, count in profile.items():
            sid = self._stack_id(db, stack)
            sums[sid] = sums.get(sid, 0) + int(count)
        ids = sorted(sums)
        return codec.encode(np.array(ids, dtype=np.int64), np.array([sums[i] for i in ids], dtype=np.int64))

    def _stack_id(self, db: sqlite3.Connection, stack: Stack) -> int:
        sid = self._stack_ids.get(stack)
        if sid is None:
            blob = np.fromiter((self._frame_id(db, f) for f in stack), dtype="<u4", count=len(stack)).tobytes()
            db.execute("INSERT OR IGNORE INTO span_stacks(frames) VALUES (?)", (blob,))
            (sid,) = db.execute("SELECT id FROM span_stacks WHERE frames = ?", (blob,)).fetchone()
            if len(self._stack_ids) >= MAX_CACHED:
                self._stack_ids.clear()
            self._stack_ids[stack] = sid
        return int(sid)

    def _file_id(self, db: sqlite3.Connection, path: str) -> int:
        """The interned id of a source file path (0 for none)."""
        if not path:
            return 0
        fid = self._file_ids.get(path)
        if fid is None:
            db.execute("INSERT OR IGNORE INTO span_files(path) VALUES (?)", (path,))
            (fid,) = db.execute("SELECT id FROM span_files WHERE path = ?", (path,)).fetchone()
            if len(self._file_ids) >= MAX_CACHED:
                self._file_ids.clear()
            self._file_ids[path] = fid
        return int(fid)

    def _frame_id(self, db: sqlite3.Connection, frame: Frame) -> int:
        """The interned id of ``frame``: its name, kind and location (file and line; a read by
        function drops them)."""
        fid = self._frame_ids.get(frame)
        if fid is None:
            # A line past SQLite's 64-bit integers is no line any source has: kept as unknown.
            key = (frame.name, str(frame.kind), self._file_id(db, frame.file),
                   frame.line if 0 < frame.line <= _INT64_MAX else 0)
            db.execute("INSERT OR IGNORE INTO span_frames(name, kind, file, line) VALUES (?, ?, ?, ?)", key)
            (fid,) = db.execute("SELECT id FROM span_frames WHERE name = ? AND kind = ? AND file = ? AND line = ?",
                                key).fetchone()
            if len(self._frame_ids) >= MAX_CACHED:
                self._frame_ids.clear()
            self._frame_ids[frame] = fid
        return int(fid)

    def _decode(self, db: sqlite3.Connection, blob: bytes, lines: bool = False) -> list[tuple[Stack, int]]:
        """(stack, count) pairs of a ``spans.stacks`` blob of either encoding; by function unless
        ``lines`` (pairs may then repeat a stack: profiles sum them)."""
        if blob[:1] != bytes([_INTERNED]):
            return list(decode_profile(blob, StackTable()).items())
        ids, counts = codec.decode(blob)
        want = [i for i in set(ids.tolist()) if i not in self._stacks]
        if want:
            if len(self._stacks) + len(want) > MAX_CACHED:
                self._stacks.clear()
                want = list(set(ids.tolist()))
            got = dict(self._chunked(db, "SELECT id, frames FROM span_stacks WHERE id IN ({})", want))
            fids = {f for b in got.values() for f in np.frombuffer(b, dtype="<u4").tolist()}
            missing = [f for f in fids if f not in self._frames]
            if len(self._frames) + len(missing) > MAX_CACHED:
                self._frames.clear()
                missing = list(fids)
            for fid, name, kind, path, line in self._chunked(
                    db, "SELECT f.id, f.name, f.kind, coalesce(p.path, ''), f.line FROM span_frames AS f "
                        "LEFT JOIN span_files AS p ON p.id = f.file WHERE f.id IN ({})", missing):
                self._frames[fid] = Frame(name, _KINDS.get(kind, Kind.USER), path, line)
            for sid, b in got.items():
                self._stacks[sid] = tuple(self._frames[f] for f in np.frombuffer(b, dtype="<u4").tolist())
        if lines:
            return [(self._stacks[i], c) for i, c in zip(ids.tolist(), counts.tolist(), strict=True)]
        return [(function_stack(self._stacks[i]), c) for i, c in zip(ids.tolist(), counts.tolist(), strict=True)]

    @staticmethod
    def _chunked(db: sqlite3.Connection, sql: str, ids: list[int], n: int = 500) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for k in range(0, len(ids), n):
            part = ids[k:k + n]
            out += db.execute(sql.format(",".join("?" * len(part))), part).fetchall()
        return out

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        with db:
            db.execute("BEGIN")
            if self.retention:
                db.execute("DELETE FROM spans WHERE t < ?", (now - self.retention,))
                db.execute("DELETE FROM requests WHERE last < ?", (now - self.retention,))
            (n,) = db.execute("SELECT count(*) FROM spans").fetchone()
            if n > self.max_rows:  # oldest first: rowids grow with inserts
                (cut,) = db.execute("SELECT t FROM spans ORDER BY rowid LIMIT 1 OFFSET ?",
                                    (n - self.max_rows - 1,)).fetchone()
                db.execute("DELETE FROM spans WHERE rowid IN (SELECT rowid FROM spans ORDER BY rowid LIMIT ?)",
                           (n - self.max_rows,))
                db.execute("DELETE FROM requests WHERE span_id NOT IN (SELECT span_id FROM spans) AND last <= ?",
                           (cut,))

    async def prune(self) -> None:
        """Apply retention and the row bound now."""
        await self._run(self._prune, self.clock())

    # reads
    def _labels(self, db: sqlite3.Connection, sid: int) -> dict[str, str]:
        got = self._parsed.get(sid)
        if got is None:
            row = db.execute("SELECT labels FROM series WHERE id = ?", (sid,)).fetchone()
            got = self._parsed[sid] = json.loads(row[0]) if row else {}
        return got

    def _matching(self, db: sqlite3.Connection, sel: Selector) -> list[int] | None:
        """Ids of the series ``sel`` matches; None when it matches every series (no filter)."""
        if not sel.matchers:
            return None
        return [sid for (sid,) in db.execute("SELECT id FROM series") if sel.matches(self._labels(db, sid))]

    async def profile(self, key: str, value: str | Sequence[str], ptype: ProfileType | None, rng: Range | None,
                      sel: Selector, lines: bool = False) -> tuple[ProfileType | None, Profile, int, int | None]:
        """(type, merged samples, spans, period) of the rows whose ``key`` (span_id, trace_id or
        span_name) is ``value`` (or one of the values), of type ``ptype`` (None: wall when there is any, else CPU,
        else the first type found), in ``rng`` when given, whose series match ``sel``; the
        sampling period in ns when every row agrees on one. By function (a function's lines
        merge) unless ``lines``: then frames keep their file and line."""
        want = ptype.id if ptype is not None else None
        rows = await self._run(self._select, key, value, rng, sel, want, lines)
        types = {r[0] for r in rows}
        if ptype is None:
            pick = next((t for t in (WALL.id, CPU.id) if t in types), min(types) if types else None)
            ptype = ProfileType.parse(pick) if pick else None
        table = StackTable(lines=lines)
        mine = [r for r in rows if ptype is not None and r[0] == ptype.id]
        profile = (merge([Profile.from_pairs(r[3], table) for r in mine], table) if mine
                   else Profile.empty(table))
        periods = {r[2] for r in mine}
        period = next(iter(periods)) if len(periods) == 1 else None
        return ptype, profile, len({r[1] for r in mine}), period

    def _select(self, db: sqlite3.Connection, key: str, value: str | Sequence[str], rng: Range | None,
                sel: Selector, ptype: str | None, lines: bool = False) -> list[tuple[Any, ...]]:
        """Rows (type, span id, period, [(stack, count)], series) of the key's spans; the samples
        decoded only for rows of ``ptype`` (None: of the type :meth:`profile` will pick)."""
        assert key in ("span_id", "trace_id", "span_name")
        values = [value] if isinstance(value, str) else list(value)
        sql = (f"SELECT ptype, span_id, period, stacks, series FROM spans "
               f"WHERE {key} IN ({','.join('?' * len(values))})")
        args: list[Any] = list(values)
        if rng is not None:
            sql += " AND t >= ? AND t < ?"
            args += [rng.first_window, _windows_end(rng)]
        rows = db.execute(sql, args).fetchall()
        ok = self._matching(db, sel)
        if ok is not None:
            keep = set(ok)
            rows = [r for r in rows if r[4] in keep]
        if ptype is None:
            types = {r[0] for r in rows}
            ptype = next((t for t in (WALL.id, CPU.id) if t in types), min(types) if types else None)
        return [(t, span, period, self._decode(db, blob, lines) if t == ptype else [], sid)
                for t, span, period, blob, sid in rows]

    async def series_labels(self, key: str, value: str | Sequence[str], ptype: ProfileType, rng: Range | None,
                            sel: Selector) -> list[dict[str, str]]:
        """The labels of the series of the rows :meth:`profile` read (of type ``ptype``)."""
        return await self._run(self._series_of, key, value, ptype.id, rng, sel)  # type: ignore[no-any-return]

    def _series_of(self, db: sqlite3.Connection, key: str, value: str | Sequence[str], ptype: str,
                   rng: Range | None, sel: Selector) -> list[dict[str, str]]:
        assert key in ("span_id", "trace_id", "span_name")
        values = [value] if isinstance(value, str) else list(value)
        sql = f"SELECT DISTINCT series FROM spans WHERE {key} IN ({','.join('?' * len(values))}) AND ptype = ?"
        args: list[Any] = [*values, ptype]
        if rng is not None:
            sql += " AND t >= ? AND t < ?"
            args += [rng.first_window, _windows_end(rng)]
        ok = self._matching(db, sel)
        return [self._labels(db, sid) for (sid,) in db.execute(sql, args) if ok is None or sid in ok]

    async def requests(self, sel: Selector, rng: Range, limit: int, span_name: str = "") -> tuple[list[Request], int]:
        """The root spans seen in ``rng`` whose series match ``sel`` (and named ``span_name``
        when given), slowest wall time first (then CPU time): at most ``limit``, and how many
        there were."""
        return await self._run(self._requests, sel, rng, limit, span_name)  # type: ignore[no-any-return]

    async def root_spans(self, sel: Selector, rng: Range, limit: int
                         ) -> tuple[list[tuple[dict[str, str], float, int, int]], bool]:
        """(series labels, first seen, wall ns, CPU ns) of the root spans seen in ``rng`` whose
        series match ``sel``, oldest first: at most ``limit``, and whether more were left out."""
        return await self._run(self._root_spans, sel, rng, limit)  # type: ignore[no-any-return]

    def _root_spans(self, db: sqlite3.Connection, sel: Selector, rng: Range, limit: int
                    ) -> tuple[list[tuple[dict[str, str], float, int, int]], bool]:
        where, args = "last >= ? AND first < ?", [rng.first_window, _windows_end(rng)]
        ok = self._matching(db, sel)
        if ok is not None:
            if not ok:
                return [], False
            where += f" AND series IN ({','.join(str(i) for i in ok)})"  # ids from our own table
        rows = db.execute(f"SELECT series, first, wall_ns, cpu_ns FROM requests WHERE {where} "
                          "ORDER BY first LIMIT ?", [*args, limit + 1]).fetchall()
        return [(self._labels(db, s), f, w, c) for s, f, w, c in rows[:limit]], len(rows) > limit

    def _requests(self, db: sqlite3.Connection, sel: Selector, rng: Range, limit: int,
                  span_name: str) -> tuple[list[Request], int]:
        where = "last >= ? AND first < ?"
        args: list[Any] = [rng.first_window, _windows_end(rng)]
        if span_name:
            where += " AND span_name = ?"
            args.append(span_name)
        ok = self._matching(db, sel)
        if ok is not None:
            if not ok:
                return [], 0
            where += f" AND series IN ({','.join(str(i) for i in ok)})"  # ids from our own table
        # Two statements: the top ``limit`` by a bounded sort (no window function over every
        # row), then the count alone. The top's sort reads only ``requests_range`` (it holds the
        # sort keys and the primary key): the rows' other columns are looked up for the ``limit``
        # winners alone, not for every request of the range (2x faster on 1 h of
        # bench/requests.py).
        order = "wall_ns DESC, cpu_ns DESC, span_id"
        rows = db.execute(
            "SELECT r.span_id, r.trace_id, r.span_name, r.series, r.wall_ns, r.cpu_ns, r.first, r.last "
            f"FROM (SELECT span_id FROM requests WHERE {where} ORDER BY {order} LIMIT ?) AS top "
            f"JOIN requests AS r ON r.span_id = top.span_id ORDER BY {', '.join('r.' + o for o in order.split(', '))}",
            [*args, limit]
        ).fetchall()
        (total,) = db.execute(f"SELECT count(*) FROM requests WHERE {where}", args).fetchone()
        out = []
        for span_id, trace_id, name, sid, wall, cpu, first, last in rows:
            lab = self._labels(db, sid)
            out.append(Request(span_id, trace_id, name, lab.get("service_name", ""), lab.get("pod", ""),
                               wall, cpu, first, last))
        return out, int(total)


def _windows_end(rng: Range) -> int:
    """The end of the last window the range reads: span times are compared as the samples'
    windows are, so a span of the open window (a profile's time is its midpoint, which may lie
    a few seconds past ``until=now``) is listed with the samples that show it."""
    return -(-rng.end // rng.window) * rng.window


# -- requests in, answers out ---------------------------------------------------------------------
def user_selector(params: Mapping[str, str]) -> Selector:
    """``query`` without any profile type (both wall and CPU rows are read)."""
    try:
        sel = parse_selector(params.get("query", "") or "")
    except InputError as e:
        raise InputError(f"query: {e}") from None
    return Selector(tuple(m for m in sel.matchers if m.name not in RESERVED))


def _id(params: Mapping[str, str], key: str) -> str:
    v = params.get(key) or ""
    if len(v) > MAX_ID_CHARS:
        raise InputError(f"{key} is {len(v)} characters: ids are at most {MAX_ID_CHARS}")
    return v


@dataclass(frozen=True)
class SpanProfileRequest:
    """``/api/v1/span_profile``: exactly one of ``span_id``, ``trace_id``, ``span_name``."""

    key: str
    value: str
    ptype: ProfileType | None
    sel: Selector
    rng: Range | None
    format: str
    max_nodes: int
    min_share: float
    lines: bool = False  # aggregate=line: frames keep their file and line

    @classmethod
    def parse(cls, params: Mapping[str, str], ctx: Context) -> Self:
        """Parse the key, ``profile_type`` (optional), ``query``, the range (only for
        ``span_name``: ids are unique), ``format``, ``max_nodes``, ``min_share``, ``aggregate``
        (``function``, the default, or ``line``)."""
        given = [(k, _id(params, k) if k != "span_name" else params.get(k) or "")
                 for k in ("span_id", "trace_id", "span_name")]
        given = [(k, v) for k, v in given if v]
        if len(given) != 1:
            raise InputError("give exactly one of span_id=, trace_id= or span_name= (the root spans of that name)")
        key, value = given[0]
        ptype = profile_type_param(params) if params.get("profile_type") else None
        rng = time_range(params, ctx.now, ctx.window) if key == "span_name" else None
        return cls(key, value, ptype, user_selector(params), rng, choice(params, "format", SPAN_FORMATS, "json"),
                   int_param(params, "max_nodes", ctx.max_nodes), share_param(params), aggregate_lines(params))


@dataclass(frozen=True)
class RequestsRequest:
    """``/api/v1/requests``: the slowest root spans of a range."""

    sel: Selector
    rng: Range
    limit: int
    span_name: str

    @classmethod
    def parse(cls, params: Mapping[str, str], ctx: Context) -> Self:
        """Parse ``query``, the range, ``limit``, ``span_name``."""
        return cls(user_selector(params), time_range(params, ctx.now, ctx.window),
                   int_param(params, "limit", 100, 1, MAX_REQUEST_ROWS), params.get("span_name") or "")


async def span_profile(store: SpanStore, req: SpanProfileRequest) -> dict[str, Any] | Output:
    """Flame JSON (or folded text) of the samples of one span, one trace, or every root span
    named ``span_name``; ``spans`` counts the spans merged. 400 when nothing was kept."""
    from stacks.folded import dumps
    from stacks.tree import pruned_tree, to_json

    ptype, profile, n, period = await store.profile(req.key, req.value, req.ptype, req.rng, req.sel, req.lines)
    if ptype is None or not n:
        raise InputError(f"no samples tagged {req.key}={req.value!r} are kept (older than the retention, "
                         "never profiled, or of another profile_type)")
    if req.format == "folded":
        return Output("text/plain; charset=utf-8", dumps(profile), "folded.txt")
    doc = to_json(pruned_tree(profile, max_nodes=req.max_nodes, min_share=req.min_share))
    doc.update({req.key: req.value, "spans": n, "profile_type": ptype.id, "unit": ptype.unit, "period_ns": period})
    if req.lines:
        doc.update(source_of(await store.series_labels(req.key, req.value, ptype, req.rng, req.sel)))
    return doc


def source_of(series: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """``{"source": {repository, ref, root_path}}`` when every series names one repository and one
    git ref (as :func:`aggregator.query.source_fields` for render), so the viewer links a frame's
    ``file:line`` to its source; else {}."""
    got: dict[str, str] = {}
    for key, label in SOURCE_LABELS.items():
        values = {s.get(label, "") for s in series}
        if len(values) != 1 or (key != "root_path" and "" in values):
            return {}
        got[key] = values.pop()
    return {"source": got}


async def requests(store: SpanStore, req: RequestsRequest) -> dict[str, Any]:
    """The slow-requests table: root spans by wall time (CPU time beside it), each with a link
    to its flame graph (``flamegraph``: the ``span_profile`` query of its wall samples)."""
    rows, total = await store.requests(req.sel, req.rng, req.limit, req.span_name)
    out = []
    for r in rows:
        ptype = WALL if r.wall_ns or not r.cpu_ns else CPU
        out.append({"span_id": r.span_id, "trace_id": r.trace_id, "span_name": r.span_name,
                    "service_name": r.service_name, "pod": r.pod, "wall_ns": r.wall_ns, "cpu_ns": r.cpu_ns,
                    "first_seen": r.first, "last_seen": r.last,
                    "flamegraph": "/api/v1/span_profile?" + urlencode({"span_id": r.span_id,
                                                                      "profile_type": ptype.id})})
    return {"from": req.rng.start, "until": req.rng.end, "query": str(req.sel), "rows": out, "spans": total,
            "truncated": total > len(out)}


def spans_path(data_dir: str) -> Path:
    """Where the span rows live: ``DATA_DIR/spans.sqlite`` (the directory is made on first write)."""
    return Path(data_dir) / "spans.sqlite"
