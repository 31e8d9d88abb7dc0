"""Scale-out store: ClickHouse (18.16 and later) over its HTTP interface.

Several stateless aggregators can share one database: every id is a content
hash computed client-side (no id allocation, no coordination), and a write is
a plain additive INSERT. Schema (see docs/clickhouse.md):

- ``stacks(hash, names, kinds)``: ReplacingMergeTree keyed by the 64-bit
  stack hash; frames root first, kinds as ``Array(Enum8)``.
- ``series(hash, names, values)``: ReplacingMergeTree keyed by the 64-bit
  label-set hash; label names/values as parallel ``Array(String)``.
- ``series_windows(window, series)``: which series have data in which window
  (label queries scan this small table, not the samples).
- ``samples(window, series, stack, count)``: SummingMergeTree, partitioned
  by hour of ``window`` so retention drops whole partitions.

A write inserts new stacks, new series and series_windows (concurrently), and
only then samples: a reader that sees a sample can always resolve its stack and
labels, and a write that fails before the last INSERT has added no counts, so
the client's retry does not double count. Reads always ``sum(count) GROUP BY``,
so unmerged parts never show as duplicates. Only plain SQL that 18.16 accepts
is used; selectors are applied in Python on the (small) series table, which
gives exactly the regex semantics of :mod:`stacks.selector` (ClickHouse's RE2
differs in corner cases).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import numpy as np

from aggregator.store.base import SeriesWindow, StoreError, redacted
from stacks.errors import InputError
from stacks.metadata import invisible_cells, metadata_path
from stacks.model import Frame, Kind, Labels, Profile, Stack, StackTable
from stacks.selector import Selector

log = logging.getLogger(__name__)

DEFAULT_PORT = 8123
DEFAULT_DATABASE = "flamewatch"
DEFAULT_TIMEOUT = 30.0
KEEPALIVE_SECONDS = 2.0
PARTITION_SECONDS = 3600  # retention granularity of DROP PARTITION; finer cuts use a mutation
_CHUNK = 5000  # hashes per IN (...) list: ~110 KB, under the default max_query_size of 256 KiB
# Series per grouped read: the IN list plus transform's two arrays stay ~100 KB, under max_query_size.
_GROUP_CHUNK = 2000
_DEFAULT_MAX_QUERY = 200_000  # below 18.16's default max_query_size of 262,144 bytes
_UNKNOWN_FIRST = 0xFFFFFFFF  # first-frame id of a stack written after the pushdown listed the stacks
# read_merged_pruned reads (group, stack) rows directly when groups x distinct stacks is under this.
_PUSHDOWN_MIN_KEYS = 200_000
_PUSHDOWN_MIN_GROUPS = 32  # ... and, with a selector, when there are fewer groups than this
# Pushdown reads with up to this many (group, first frame) cells never give up for the plain
# grouped read (it is cheap either way), so small data always exercises the pushdown.
_SMALL_CELLS = 10_000
_DENSE_CELLS = 20_000_000  # (group, stack) cells summed with a dense bincount (160 MB of float64 at most)
_MAX_CACHED = 2_000_000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KIND_NAMES = {Kind.USER: "user", Kind.KERNEL: "kernel", Kind.METADATA: "metadata"}
_KIND_CODE = {Kind.USER: b"u", Kind.KERNEL: b"k", Kind.METADATA: b"m"}
_CH_UNKNOWN_TABLE, _CH_UNKNOWN_DATABASE = 60, 81

# RowBinary layouts (little-endian, fixed width): parsed/built with numpy, no per-row Python.
_SAMPLE_IN = np.dtype([("window", "<u4"), ("series", "<u8"), ("stack", "<u8"), ("count", "<u8")])
_SAMPLE_OUT = np.dtype([("series", "<u8"), ("window", "<u4"), ("stack", "<u8"), ("count", "<u8")])
_SW = np.dtype([("window", "<u4"), ("series", "<u8")])
_GROUP_STACK = np.dtype([("group", "<u4"), ("stack", "<u8"), ("count", "<u8")])
_GROUP_WINDOW = np.dtype([("group", "<u4"), ("window", "<u4"), ("count", "<u8")])
_GROUP_FIRST = np.dtype([("group", "<u4"), ("first", "<u4"), ("count", "<u8")])
_STACK = np.dtype("<u8")
_KEY_COUNT = np.dtype([("key", "<u8"), ("count", "<u8")])


def _schema(db: str) -> list[str]:
    kinds = "Enum8('user' = 1, 'kernel' = 2, 'metadata' = 3)"
    part = f"intDiv(window, {PARTITION_SECONDS})"
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"CREATE TABLE IF NOT EXISTS {db}.stacks (hash UInt64, names Array(String), kinds Array({kinds})) "
        "ENGINE = ReplacingMergeTree() ORDER BY hash",
        f"CREATE TABLE IF NOT EXISTS {db}.series (hash UInt64, names Array(String), values Array(String)) "
        "ENGINE = ReplacingMergeTree() ORDER BY hash",
        f"CREATE TABLE IF NOT EXISTS {db}.series_windows (window UInt32, series UInt64) "
        f"ENGINE = ReplacingMergeTree() PARTITION BY {part} ORDER BY (window, series)",
        f"CREATE TABLE IF NOT EXISTS {db}.samples (window UInt32, series UInt64, stack UInt64, count UInt64) "
        f"ENGINE = SummingMergeTree(count) PARTITION BY {part} ORDER BY (series, window, stack)",
    ]


def stack_hash(stack: Stack) -> int:
    """Stable 64-bit hash of a stack (same in every process and host)."""
    h = hashlib.blake2b(digest_size=8)
    for f in stack:
        name = f.name.encode("utf-8", "surrogatepass")
        h.update(_KIND_CODE[Kind(f.kind)])
        h.update(len(name).to_bytes(4, "little"))
        h.update(name)
    return int.from_bytes(h.digest(), "little")


def series_hash(labels: Labels) -> int:
    """Stable 64-bit hash of a label set."""
    h = hashlib.blake2b(digest_size=8, person=b"fw-series")
    for k, v in labels.items_:
        for s in (k, v):
            b = s.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(4, "little"))
            h.update(b)
    return int.from_bytes(h.digest(), "little")


def parse_url(url: str) -> tuple[str, str, dict[str, str], float]:
    """``clickhouse://[user[:pw]@]host[:port]/db[?timeout=S&secure=1]`` -> (base, db, headers, timeout).

    ``http://`` and ``https://`` URLs are accepted too. Raises InputError naming the fix.
    """
    fix = "use clickhouse://HOST:PORT/DATABASE, e.g. clickhouse://127.0.0.1:8123/flamewatch"
    parts = urlsplit(url)
    if parts.scheme not in ("clickhouse", "http", "https"):
        raise InputError(f"ClickHouse URL {redacted(url)!r}: unknown scheme {parts.scheme!r}; {fix}")
    if not parts.hostname:
        raise InputError(f"ClickHouse URL {redacted(url)!r}: no host; {fix}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as e:
        raise InputError(f"ClickHouse URL {redacted(url)!r}: bad port ({e}); {fix}") from None
    db = parts.path.strip("/") or DEFAULT_DATABASE
    if not _IDENT.match(db):
        raise InputError(f"ClickHouse URL {redacted(url)!r}: database {db!r} must match [A-Za-z_][A-Za-z0-9_]*; {fix}")
    q = parse_qs(parts.query)
    try:
        timeout = float(q.get("timeout", [DEFAULT_TIMEOUT])[0])
        if timeout <= 0:
            raise ValueError
    except ValueError:
        raise InputError(f"ClickHouse URL {redacted(url)!r}: timeout must be a positive number of seconds") from None
    secure = parts.scheme == "https" or q.get("secure", ["0"])[0] in ("1", "true")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    base = f"{'https' if secure else 'http'}://{host}:{port}/"
    headers = {}
    if parts.username:
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(cred).decode("ascii")
    return base, db, headers, timeout


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _in_list(hashes: Iterable[int]) -> str:
    return ",".join(str(int(h)) for h in hashes)


def _first_frames(table: StackTable, tids: np.ndarray) -> tuple[list[Frame], np.ndarray]:
    """(distinct first frames of the stacks ``tids`` on ``table``, per stack the id of its first
    frame: its index in that list + 1, or 0 for the empty stack)."""
    firsts: dict[Frame, int] = {}
    first_of = np.fromiter(
        ((firsts.setdefault(st[0], len(firsts) + 1) if st else 0) for st in map(table.stack, tids.tolist())),
        dtype=np.int64, count=len(tids))
    return list(firsts), first_of


def _first_frame_expr(hashes: np.ndarray, first_of: np.ndarray) -> str:
    """SQL of the first-frame id of ``stack``: a ``transform`` over the listed stack hashes,
    :data:`_UNKNOWN_FIRST` for any other stack."""
    return (f"transform(stack, CAST([{_in_list(hashes.tolist())}] AS Array(UInt64)), "
            f"CAST([{','.join(map(str, first_of.tolist()))}] AS Array(UInt32)), "
            f"toUInt32({_UNKNOWN_FIRST}))")


class ClickHouseError(StoreError):
    """ClickHouse answered with an error; ``code`` is its exception code (0 if unknown)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class ClickHouseStore:
    """A :class:`aggregator.store.base.Store` on a ClickHouse server (HTTP interface)."""

    def __init__(self, url: str, *, timeout: float | None = None) -> None:
        self.url = url
        self._base, self.database, self._headers, url_timeout = parse_url(url)
        self.timeout = timeout if timeout is not None else url_timeout
        self._session: aiohttp.ClientSession | None = None
        self._schema_ready = False
        # Pure memos of content hashes (valid forever) plus "already inserted" sets, which only
        # save re-sending rows: a ReplacingMergeTree would collapse duplicates anyway.
        self._stack_hashes: dict[Stack, int] = {}
        self._stacks: dict[int, Stack] = {}
        self._sent_stacks: set[int] = set()
        self._sent_series: set[int] = set()
        # Cells of the last read_merged_pruned: all, ruled out, fetched in full (tests, bench).
        self.last_pushdown: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"ClickHouseStore({self._base}{self.database})"

    # -- plumbing -------------------------------------------------------------------------
    def _where(self) -> str:
        return f"ClickHouse at {self._base} (database {self.database})"

    async def _post(self, sql: str, body: bytes | None = None) -> bytes:
        """Run one statement. With ``body``, ``sql`` goes in the URL and the body is the data.
        A SELECT longer than the server's default ``max_query_size`` (256 KiB) raises it for
        itself (the pushdown's ``transform`` lists every stack in range)."""
        if self._session is None or self._session.closed:
            # Idle connections are dropped before ClickHouse's own keep_alive_timeout (3 s in
            # the packaged config) would close them under a request in flight.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=16, keepalive_timeout=KEEPALIVE_SECONDS),
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=min(5.0, self.timeout)),
                headers=self._headers,
            )
        # wait_end_of_query: buffer the result so an error mid-query is an HTTP error, not a
        # truncated 200 body.
        params = {"wait_end_of_query": "1"}
        if body is None:
            data = sql.encode()
            if len(data) > _DEFAULT_MAX_QUERY:
                params["max_query_size"] = str(len(data) + 4096)
        else:
            params["query"] = sql
            data = body
        # A read or DDL statement is retried once on a dropped keep-alive connection (the
        # server restarted or closed it); an INSERT is not, as it might have been applied.
        attempts = 2 if body is None else 1
        for attempt in range(attempts):
            try:
                async with self._session.post(self._base, params=params, data=data) as resp:
                    payload = await resp.read()
                    if resp.status != 200:
                        text = payload.decode("utf-8", "replace").strip()
                        m = re.match(r"Code: (\d+)", text)
                        short = text.split(", e.what()")[0][:500]
                        raise ClickHouseError(f"{self._where()} failed (HTTP {resp.status}): {short}",
                                              int(m.group(1)) if m else 0)
                    return payload
            except ClickHouseError:
                raise
            except TimeoutError as e:
                raise StoreError(f"{self._where()} timed out after {self.timeout:g}s "
                                 "(raise it with ?timeout=SECONDS in the storage URL)") from e
            except aiohttp.ServerDisconnectedError as e:
                if attempt + 1 < attempts:
                    continue
                raise StoreError(f"{self._where()} closed the connection: {e}; is clickhouse-server "
                                 "restarting?") from e
            except aiohttp.ClientError as e:
                raise StoreError(f"{self._where()} is unreachable: {e}; is clickhouse-server running "
                                 "and the --storage URL right?") from e
        raise AssertionError("unreachable")

    async def _run(self, sql: str, body: bytes | None = None) -> bytes:
        """``_post``, re-creating the schema once if the database or a table vanished."""
        if not self._schema_ready:
            await self._create_schema()
        try:
            return await self._post(sql, body)
        except ClickHouseError as e:
            if e.code not in (_CH_UNKNOWN_TABLE, _CH_UNKNOWN_DATABASE):
                raise
            log.warning("%s: schema missing (%s); creating it again", self._where(), e)
            await self._create_schema()
            return await self._post(sql, body)

    async def _json_rows(self, sql: str) -> list[dict[str, Any]]:
        raw = await self._run(sql + " FORMAT JSONEachRow")
        try:
            return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line]
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"{self._where()} sent a malformed JSONEachRow answer: {e}") from e

    async def _binary_rows(self, sql: str, dtype: np.dtype) -> np.ndarray:
        raw = await self._run(sql + " FORMAT RowBinary")
        if len(raw) % dtype.itemsize:
            raise StoreError(f"{self._where()} sent {len(raw)} bytes, not a whole number of "
                             f"{dtype.itemsize}-byte rows")
        return np.frombuffer(raw, dtype=dtype)

    async def _create_schema(self) -> None:
        for stmt in _schema(self.database):
            await self._post(stmt)
        # A recreated database lost what the caches say was sent.
        self._sent_stacks.clear()
        self._sent_series.clear()
        self._schema_ready = True

    async def open(self) -> None:
        """Create the database and tables if missing. Raises StoreError if the server is down."""
        await self._create_schema()

    async def close(self) -> None:
        """Close the HTTP session. Nothing is buffered: every write is already stored."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- writing --------------------------------------------------------------------------
    def _hash_of(self, stack: Stack) -> int:
        h = self._stack_hashes.get(stack)
        if h is None:
            if len(self._stack_hashes) >= _MAX_CACHED:
                self._stack_hashes.clear()
            h = self._stack_hashes[stack] = stack_hash(stack)
        return h

    async def write(self, windows: Sequence[SeriesWindow]) -> None:
        """Insert the windows' counts (additive). Durable in ClickHouse when this returns."""
        parts: list[np.ndarray] = []
        stacks: dict[int, Stack] = {}
        series: dict[int, Labels] = {}
        sw: set[tuple[int, int]] = set()
        table_maps: dict[int, dict[int, int]] = {}  # id(table) -> {table sid: hash}, for this call
        for w in windows:
            if len(w.profile) == 0:
                continue
            if not 0 <= int(w.start) < 2**32:
                raise StoreError(f"window start {w.start} is outside the UInt32 range ClickHouse stores")
            sh = series_hash(w.labels)
            series[sh] = w.labels
            sw.add((int(w.start), sh))
            table = w.profile.table
            tmap = table_maps.setdefault(id(table), {})
            hashes = np.empty(len(w.profile), dtype=np.uint64)
            for i, sid in enumerate(w.profile.ids.tolist()):
                h = tmap.get(sid)
                if h is None:
                    stack = table.stack(sid)
                    h = tmap[sid] = self._hash_of(stack)
                    stacks[h] = stack
                hashes[i] = h
            rows = np.empty(len(w.profile), dtype=_SAMPLE_IN)
            rows["window"] = int(w.start)
            rows["series"] = sh
            rows["stack"] = hashes
            rows["count"] = w.profile.counts
            parts.append(rows)
        if not parts:
            return
        samples = np.concatenate(parts).tobytes()
        windows_rows = np.array(sorted(sw), dtype=_SW).tobytes()
        if not self._schema_ready:
            await self._create_schema()
        try:
            await self._send(stacks, series, windows_rows, samples)
        except ClickHouseError as e:
            if e.code not in (_CH_UNKNOWN_TABLE, _CH_UNKNOWN_DATABASE):
                raise
            # The database vanished under us: recreate it and send everything again (the
            # caches of what was sent were cleared with it). No samples went in before.
            log.warning("%s: schema missing (%s); creating it again", self._where(), e)
            await self._create_schema()
            await self._send(stacks, series, windows_rows, samples)

    async def _send(self, stacks: dict[int, Stack], series: dict[int, Labels], windows_rows: bytes,
                    samples: bytes) -> None:
        db = self.database
        new_stacks = {h: s for h, s in stacks.items() if h not in self._sent_stacks}
        new_series = {h: lab for h, lab in series.items() if h not in self._sent_series}
        # The three dictionary inserts are independent (a reader joins them with samples, which
        # come last), so they run concurrently: one round trip of latency instead of three.
        first = [self._post(f"INSERT INTO {db}.series_windows FORMAT RowBinary", windows_rows)]
        if new_stacks:
            lines = (
                json.dumps({"hash": str(h), "names": [f.name for f in s],
                            "kinds": [_KIND_NAMES[Kind(f.kind)] for f in s]}, ensure_ascii=False)
                for h, s in new_stacks.items()
            )
            first.append(self._post(f"INSERT INTO {db}.stacks FORMAT JSONEachRow",
                                    "\n".join(lines).encode("utf-8", "surrogatepass")))
        if new_series:
            lines = (
                json.dumps({"hash": str(h), "names": [k for k, _ in lab.items_],
                            "values": [v for _, v in lab.items_]}, ensure_ascii=False)
                for h, lab in new_series.items()
            )
            first.append(self._post(f"INSERT INTO {db}.series FORMAT JSONEachRow",
                                    "\n".join(lines).encode("utf-8", "surrogatepass")))
        results = await asyncio.gather(*first, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        # Last: only now do the counts become visible (see module docstring).
        await self._post(f"INSERT INTO {db}.samples FORMAT RowBinary", samples)
        if len(self._sent_stacks) + len(new_stacks) > _MAX_CACHED:
            self._sent_stacks.clear()
        self._sent_stacks.update(new_stacks)
        self._sent_series.update(new_series)
        for h, s in new_stacks.items():
            self._remember_stack(h, s)

    def _remember_stack(self, h: int, stack: Stack) -> None:
        if len(self._stacks) >= _MAX_CACHED:
            self._stacks.clear()
        self._stacks[h] = stack

    # -- reading --------------------------------------------------------------------------
    async def _series_in_range(self, start: int, end: int) -> dict[int, Labels]:
        """Every series with a window in [start, end), hash -> labels."""
        db = self.database
        rows = await self._json_rows(
            f"SELECT hash, names, values FROM {db}.series WHERE hash IN "
            f"(SELECT series FROM {db}.series_windows WHERE window >= {int(start)} AND window < {int(end)})"
        )
        out: dict[int, Labels] = {}
        for r in rows:
            out[int(r["hash"])] = Labels.of(zip(r["names"], r["values"], strict=True))
        return out

    async def _matching(self, selector: Selector, start: int, end: int) -> tuple[dict[int, Labels], bool]:
        """(matching series, whether that is every series in range)."""
        series = await self._series_in_range(start, end)
        if not selector.matchers:
            return series, True
        hit = {h: lab for h, lab in series.items() if selector.matches(lab)}
        return hit, len(hit) == len(series)

    async def _samples(self, cols: str, group: str, order: str, dtype: np.dtype,
                       series: dict[int, Labels], everything: bool, start: int, end: int) -> np.ndarray:
        db = self.database
        base = f"SELECT {cols} FROM {db}.samples WHERE window >= {int(start)} AND window < {int(end)}"
        tail = f" GROUP BY {group} ORDER BY {order}"
        if everything:
            return await self._binary_rows(base + tail, dtype)
        keys = sorted(series)
        parts = [await self._binary_rows(f"{base} AND series IN ({_in_list(c)}){tail}", dtype)
                 for c in _chunks(keys)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    async def _resolve(self, hashes: np.ndarray, table: StackTable) -> np.ndarray:
        """Ids on ``table`` for unique sorted stack ``hashes`` (fetching unknown stacks)."""
        want = [h for h in hashes.tolist() if h not in self._stacks]
        for chunk in _chunks(want):
            rows = await self._json_rows(
                f"SELECT hash, any(names) AS names, any(kinds) AS kinds FROM {self.database}.stacks "
                f"WHERE hash IN ({_in_list(chunk)}) GROUP BY hash"
            )
            for r in rows:
                stack = tuple(Frame(n, Kind(k)) for n, k in zip(r["names"], r["kinds"], strict=True))
                self._remember_stack(int(r["hash"]), stack)
        missing = [h for h in hashes.tolist() if h not in self._stacks]
        if missing:
            raise StoreError(f"{self._where()}: {len(missing)} stacks referenced by samples are missing "
                             f"from {self.database}.stacks (e.g. hash {missing[0]}); "
                             "was the table truncated?")
        intern = table.intern
        stacks = self._stacks
        return np.fromiter((intern(stacks[h]) for h in hashes.tolist()), dtype=np.int64, count=len(hashes))

    async def read(self, selector: Selector, start: int, end: int, table: StackTable) -> list[SeriesWindow]:
        """Matching windows with ``start <= window.start < end``, counts summed per stack."""
        series, everything = await self._matching(selector, start, end)
        if not series:
            return []
        rows = await self._samples("series, window, stack, sum(count) AS c", "series, window, stack",
                                   "series, window, stack", _SAMPLE_OUT, series, everything, start, end)
        if rows.size == 0:
            return []
        uniq, inverse = np.unique(rows["stack"], return_inverse=True)
        tids = (await self._resolve(uniq, table))[inverse]
        counts = rows["count"].astype(np.int64)
        key_change = (rows["series"][1:] != rows["series"][:-1]) | (rows["window"][1:] != rows["window"][:-1])
        bounds = np.r_[0, np.flatnonzero(key_change) + 1, rows.size]
        out = []
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            labels = series.get(int(rows["series"][a]))
            if labels is None:  # a series first written after the label lookup: next read has it
                continue
            out.append(SeriesWindow(labels, int(rows["window"][a]),
                                    Profile.from_arrays(table, tids[a:b], counts[a:b])))
        out.sort(key=lambda w: (w.start, w.labels.items_))
        return out

    async def _groups(self, selector: Selector, start: int, end: int, group_by: Sequence[str]
                      ) -> tuple[dict[Labels, int], dict[int, int], bool]:
        """(group key -> index, matching series hash -> group index, whether that is every
        series in range) for ``group_by`` as :class:`aggregator.store.base.MergedReads` defines it."""
        series, everything = await self._matching(selector, start, end)
        keys: dict[Labels, int] = {}
        gid: dict[int, int] = {}
        for h, labels in series.items():
            key = Labels.of({k: labels.get(k, "") for k in group_by}) if group_by else labels
            gid[h] = keys.setdefault(key, len(keys))
        return keys, gid, everything

    async def read_merged(
        self, selector: Selector, start: int, end: int, table: StackTable, group_by: Sequence[str] = ()
    ) -> dict[Labels, Profile]:
        """One profile per series (empty ``group_by``) or per combination of ``group_by`` label
        values (absent labels read as ""; :data:`~aggregator.store.base.MERGE_ALL` merges
        everything under ``{}``), summed in ClickHouse per (group, stack)."""
        keys, gid, everything = await self._groups(selector, start, end, group_by)
        return await self._read_grouped(keys, gid, everything, start, end, table)

    async def _read_grouped(self, keys: dict[Labels, int], gid: dict[int, int], everything: bool,
                            start: int, end: int, table: StackTable) -> dict[Labels, Profile]:
        """``read_merged`` once the groups are known (see :meth:`_groups`)."""
        if not keys:
            return {}
        g, stack, counts = await self._group_sums(gid, len(keys), "stack", everything, start, end)
        if counts.size == 0:
            return {}
        uniq, inverse = np.unique(stack, return_inverse=True)
        tids = (await self._resolve(uniq, table))[inverse]
        return self._profiles(keys, g, tids, counts, table)

    @staticmethod
    def _profiles(keys: dict[Labels, int], g: np.ndarray, tids: np.ndarray, counts: np.ndarray,
                  table: StackTable) -> dict[Labels, Profile]:
        """One profile per group from (group index, table id, count) cells, summing repeats."""
        # One pass over (group, table id) cells, as the SQLite store does: a dense bincount when
        # the cells are few (table ids are small on a request's own table), else a sort. It also
        # sums the cells one group gets from several series chunks.
        width = int(tids.max()) + 1
        if len(keys) * width <= _DENSE_CELLS:
            flat = np.bincount(g * width + tids, weights=counts, minlength=len(keys) * width)
            cells = np.flatnonzero(flat)
            sums = np.rint(flat[cells]).astype(np.int64)
        else:
            reduced = Profile.from_arrays(StackTable(), g * width + tids, counts)
            cells, sums = reduced.ids, reduced.counts
        # cells ascend, so each group's cells are one run, its table ids sorted and unique.
        bounds = np.searchsorted(cells // width, np.arange(len(keys) + 1)).tolist()
        ids = cells % width
        return {key: Profile(table, ids[bounds[i]:bounds[i + 1]], sums[bounds[i]:bounds[i + 1]])
                for key, i in keys.items() if bounds[i] < bounds[i + 1]}

    async def totals(
        self, selector: Selector, start: int, end: int, group_by: Sequence[str] = ()
    ) -> list[tuple[Labels, int, int]]:
        """(labels, window start, samples) per series (or ``group_by`` group) and window; the
        timeline. Summed in ClickHouse per (group, window)."""
        keys, gid, everything = await self._groups(selector, start, end, group_by)
        if not keys:
            return []
        g, window, counts = await self._group_sums(gid, len(keys), "window", everything, start, end)
        if counts.size == 0:
            return []
        # Several series chunks may hold one group's window: sum them into one cell.
        cell = g * (1 << 32) + window.astype(np.int64)
        uniq, inverse = np.unique(cell, return_inverse=True)
        sums = np.bincount(inverse, weights=counts, minlength=uniq.size)
        names = list(keys)
        return [(names[c >> 32], c & 0xFFFFFFFF, int(n))
                for c, n in zip(uniq.tolist(), np.rint(sums).astype(np.int64).tolist(), strict=True)]

    async def _group_sums(self, gid: dict[int, int], n_groups: int, inner: str, everything: bool,
                          start: int, end: int, *, expr: str | None = None, dtype: np.dtype | None = None,
                          extra: str = "", packed: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(group index, ``inner`` column, summed count) cells of ``samples`` in [start, end) for
        the series in ``gid`` (hash -> group index), summed in ClickHouse by (group, inner).

        One group is a plain ``GROUP BY inner``: an hour's ~3,000 stacks out of millions of rows.
        Several are numbered in the query with ``transform(series, [hashes], [groups], default)``,
        so the answer has one row per group's stack rather than per series' stack, and 18.16
        aggregates the (small int, stack) key faster than (series, stack). ``expr`` computes
        ``inner`` (answer layout ``dtype``); ``extra`` is one more WHERE term, which may use ``g``.
        ``packed`` (a UInt32 ``expr``) groups by one UInt64 ``g << 32 | expr`` key instead, which
        18.16 aggregates faster (first-frame cells of the bench: 119 vs 163 ms).
        """
        db = self.database
        where = f"window >= {int(start)} AND window < {int(end)}"
        keys = sorted(gid)
        # Without a selector and with few enough series for one query, no IN list is needed;
        # series first written after the label lookup then land in the default group (dropped).
        chunks: list[Sequence[int] | None] = (
            [None] if everything and len(keys) <= _GROUP_CHUNK else list(_chunks(keys, _GROUP_CHUNK)))
        if dtype is None:
            dtype = _GROUP_STACK if inner == "stack" else _GROUP_WINDOW
        column = inner if expr is None else f"{expr} AS {inner}"
        parts = []
        for chunk in chunks:
            cond = where if chunk is None else f"{where} AND series IN ({_in_list(chunk)})"
            if n_groups == 1:
                group = "toUInt32(0)"
            else:
                members = keys if chunk is None else chunk
                group = (f"transform(series, CAST([{_in_list(members)}] AS Array(UInt64)), "
                         f"CAST([{','.join(str(gid[h]) for h in members)}] AS Array(UInt32)), toUInt32({n_groups}))")
            if packed:
                rows = await self._binary_rows(
                    f"SELECT bitOr(bitShiftLeft(toUInt64({group}), 32), {expr}) AS k, sum(count) AS c "
                    f"FROM {db}.samples WHERE {cond}{extra} GROUP BY k", _KEY_COUNT)
                unpacked = np.empty(rows.size, dtype=dtype)
                unpacked["group"] = rows["key"] >> np.uint64(32)
                unpacked[dtype.names[1]] = rows["key"] & np.uint64(0xFFFFFFFF)
                unpacked["count"] = rows["count"]
                rows = unpacked
            else:
                rows = await self._binary_rows(
                    f"SELECT {group} AS g, {column}, sum(count) AS c FROM {db}.samples WHERE {cond}{extra} "
                    f"GROUP BY g, {inner}", dtype)
            parts.append(rows[rows["group"] < n_groups])
        rows = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
        return rows["group"].astype(np.int64), rows[dtype.names[1]], rows["count"].astype(np.int64)

    async def read_merged_pruned(
        self, selector: Selector, start: int, end: int, table: StackTable, levels: Sequence[str], min_share: float
    ) -> dict[Labels, Profile]:
        """``read_merged(..., group_by=levels)`` for a flame tree pruned at ``min_share`` of the
        root (:class:`aggregator.store.base.PrunedMergedReads`): (group, stack) rows are fetched
        only for the (group, first frame) cells whose node may be visible; every other cell comes
        back as one stack ``(first frame,)`` with the cell's total.

        Three reads instead of one ``GROUP BY g, stack`` over ~600,000 keys: the distinct stacks in
        range (their first frames numbered in Python), the totals per (group, first frame) with the
        first frame computed in the query by ``transform(stack, [hashes], [first-frame ids])``, and
        the full rows of the cells :func:`stacks.metadata.invisible_cells` cannot rule out
        (skipped when there are none). The root total, hence the floor, is the sum of the second.
        Where the pushdown would not pay, or cannot be exact, the plain grouped read answers.
        """
        group_by = tuple(levels)
        if min_share <= 0:
            return await self.read_merged(selector, start, end, table, group_by)
        self.last_pushdown = {"cells": 0, "cut": 0, "fetched": 0}
        (keys, gid, everything), hashes = await self._groups_and_stacks(selector, start, end, group_by)
        grouped = (keys, gid, everything, start, end, table)
        if hashes is None:
            return await self._pushdown_declined(*grouped)
        if not keys or not hashes.size:
            return {}
        if len(keys) * hashes.size < _PUSHDOWN_MIN_KEYS:
            # Few (group, stack) keys at most: the plain grouped read is one cheap query, and
            # the two reads below would cost more than they save.
            return await self._pushdown_declined(*grouped)
        tids = await self._resolve(hashes, table)
        frames, first_of = _first_frames(table, tids)
        space = len(keys) * len(frames)
        if space > _SMALL_CELLS and min_share * space < 2:
            # At most 1 / min_share nodes of the first-frame level can reach the floor; when that is
            # over half of the possible cells, little can be ruled out: skip the two extra reads.
            return await self._pushdown_declined(*grouped)
        first_expr = _first_frame_expr(hashes, first_of)
        cells = await self._first_frame_cells(gid, len(keys), everything, start, end, first_expr)
        if cells is None:
            return await self._pushdown_declined(*grouped)
        ucell, ccounts = cells
        if not ucell.size:
            return {}
        cg, cf = ucell >> 32, ucell & 0xFFFFFFFF
        full = self._visible_cells([metadata_path(key, group_by) for key in keys], frames, cg, cf, ccounts,
                                   min_share * float(ccounts.sum()))  # the tree's floor: min_share of the root
        if ucell.size > _SMALL_CELLS and 2 * int(full.sum()) > ucell.size:
            # Most cells may be visible (a tiny min_share): the filtered read would cost about
            # as much as the plain one, which needs no cell list.
            return await self._pushdown_declined(*grouped)
        # Cut cells become the stack (first frame,), the empty-stack cells the empty stack.
        one_frame = np.array([table.intern(())] + [table.intern((f,)) for f in frames], dtype=np.int64)
        parts_g, parts_t, parts_c = [cg[~full]], [one_frame[cf[~full]]], [ccounts[~full]]
        if full.any():
            rows = await self._full_cells(gid, len(keys), everything, start, end, first_expr, ucell[full],
                                          hashes, tids)
            if rows is None:
                return await self._pushdown_declined(*grouped)
            parts_g.append(rows[0])
            parts_t.append(rows[1])
            parts_c.append(rows[2])
        return self._profiles(keys, np.concatenate(parts_g), np.concatenate(parts_t), np.concatenate(parts_c),
                              table)

    async def _pushdown_declined(self, keys: dict[Labels, int], gid: dict[int, int], everything: bool,
                                 start: int, end: int, table: StackTable) -> dict[Labels, Profile]:
        """The plain grouped read, for a pushdown that would not pay or cannot be exact
        (``last_pushdown["fetched"]`` -1 says so)."""
        self.last_pushdown["fetched"] = -1
        return await self._read_grouped(keys, gid, everything, start, end, table)

    async def _groups_and_stacks(self, selector: Selector, start: int, end: int, group_by: tuple[str, ...]
                                 ) -> tuple[tuple[dict[Labels, int], dict[int, int], bool], np.ndarray | None]:
        """(:meth:`_groups`, sorted distinct stack hashes of the matching series in range); the
        hashes are None for a selection too narrow for the pushdown to pay."""
        distinct = (f"SELECT DISTINCT stack FROM {self.database}.samples WHERE window >= {int(start)} "
                    f"AND window < {int(end)}")
        if not selector.matchers:
            # Every series in range is read: list the stacks while the series are looked up.
            # (Stacks of series written after that lookup only lengthen the transform below.)
            groups, every = await asyncio.gather(
                self._groups(selector, start, end, group_by), self._binary_rows(distinct, _STACK))
            found = [every]
        else:
            groups = await self._groups(selector, start, end, group_by)
            if len(groups[0]) < _PUSHDOWN_MIN_GROUPS:
                # A narrow selection (one namespace: 20 pods): its grouped read is small, and
                # one more round trip for the stack list costs more than the pushdown saves.
                return groups, None
            found = [await self._binary_rows(f"{distinct} AND series IN ({_in_list(c)})", _STACK)
                     for c in _chunks(sorted(groups[1]))]
        return groups, np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.uint64)

    async def _first_frame_cells(self, gid: dict[int, int], n_groups: int, everything: bool, start: int,
                                 end: int, first_expr: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(cell ``group << 32 | first-frame id``, ascending; its summed count): the totals per
        (group, first frame), the first frame computed in the query by ``first_expr``. None when
        a stack written since the stacks were listed shows up: its first frame is unknown here,
        so nothing can be ruled out cheaply (the plain grouped read is always exact)."""
        g, first, counts = await self._group_sums(gid, n_groups, "first", everything, start, end,
                                                  expr=first_expr, dtype=_GROUP_FIRST, packed=True)
        if counts.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        first = first.astype(np.int64)
        if (first == _UNKNOWN_FIRST).any():
            return None
        # Several series chunks may hold one group's cell: sum them, as the tree would.
        ucell, inv = np.unique(g * (1 << 32) + first, return_inverse=True)
        return ucell, np.bincount(inv.reshape(-1), weights=counts, minlength=ucell.size).astype(np.int64)

    def _visible_cells(self, paths: list[tuple[str, ...]], frames: list[Frame], cg: np.ndarray, cf: np.ndarray,
                       ccounts: np.ndarray, floor: float) -> np.ndarray:
        """Per cell: True if its stacks must be read in full (its node may reach ``floor``, and it
        is not the empty stack); counted in ``last_pushdown``."""
        cut = invisible_cells(paths, frames, cg, cf, ccounts, floor)
        full = ~cut & (cf > 0)
        self.last_pushdown = {"cells": int(cf.size), "cut": int(cut.sum()), "fetched": int(full.sum())}
        return full

    async def _full_cells(self, gid: dict[int, int], n_groups: int, everything: bool, start: int, end: int,
                          first_expr: str, wanted: np.ndarray, hashes: np.ndarray, tids: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(group index, table id, count) rows of the cells ``wanted``; None when a stack written
        since ``hashes`` were listed shows up."""
        # A transform, not IN (...): a literal array is one AST node (IN lists count every
        # element against max_ast_elements, 50,000), and it is looked up by hash.
        cells = wanted.tolist()
        fg, fstack, fcounts = await self._group_sums(
            gid, n_groups, "stack", everything, start, end,
            extra=f" AND transform(bitOr(bitShiftLeft(toUInt64(g), 32), {first_expr}), "
                  f"CAST([{_in_list(cells)}] AS Array(UInt64)), CAST([{','.join('1' * len(cells))}] "
                  "AS Array(UInt8)), toUInt8(0)) = 1")
        at = np.searchsorted(hashes, fstack)
        if (at >= hashes.size).any() or (hashes[np.minimum(at, hashes.size - 1)] != fstack).any():
            return None
        return fg, tids[at], fcounts

    async def label_names(self, start: int, end: int, selector: Selector | None = None) -> list[str]:
        """Sorted label names of (matching) series with windows in [start, end)."""
        series = await self._series_in_range(start, end)
        return sorted({k for labels in series.values() if selector is None or selector.matches(labels)
                       for k in labels})

    async def label_values(self, name: str, selector: Selector, start: int, end: int) -> list[str]:
        """Sorted values of ``name`` among matching series with windows in [start, end)."""
        series, _ = await self._matching(selector, start, end)
        return sorted({labels[name] for labels in series.values() if name in labels})

    # -- retention ------------------------------------------------------------------------
    async def delete_before(self, t: int) -> int:
        """Delete windows starting before ``t``; returns how many (series, window) pairs went.

        Whole hour partitions are dropped (cheap, instant); the one partition cut by ``t``
        is trimmed with an ``ALTER TABLE ... DELETE`` mutation (18.16 has them), awaited.
        Stacks and series rows are kept: they are small and shared with newer windows.
        """
        t = int(t)
        db = self.database
        n_rows = await self._json_rows(
            f"SELECT count() AS n FROM (SELECT DISTINCT window, series FROM {db}.series_windows "
            f"WHERE window < {t})"
        )
        n = int(n_rows[0]["n"]) if n_rows else 0
        parts = await self._json_rows(
            f"SELECT DISTINCT table, partition FROM system.parts WHERE database = '{db}' "
            "AND table IN ('samples', 'series_windows') AND active"
        )
        mutated = []
        for p in parts:
            pid = int(p["partition"])
            lo, hi = pid * PARTITION_SECONDS, (pid + 1) * PARTITION_SECONDS
            if hi <= t:
                await self._run(f"ALTER TABLE {db}.{p['table']} DROP PARTITION {pid}")
            elif lo < t:
                left = await self._json_rows(
                    f"SELECT count() AS n FROM {db}.{p['table']} WHERE window >= {lo} AND window < {t}"
                )
                if left and int(left[0]["n"]):
                    await self._run(f"ALTER TABLE {db}.{p['table']} DELETE WHERE window < {t}")
                    mutated.append(p["table"])
        if mutated:
            await self._await_mutations(sorted(set(mutated)))
        return n

    async def _await_mutations(self, tables: list[str]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        names = ",".join(f"'{t}'" for t in tables)
        while True:
            rows = await self._json_rows(
                f"SELECT count() AS n FROM system.mutations WHERE database = '{self.database}' "
                f"AND table IN ({names}) AND is_done = 0"
            )
            if not rows or int(rows[0]["n"]) == 0:
                return
            if loop.time() > deadline:
                raise StoreError(f"{self._where()}: retention DELETE on {tables} still running after "
                                 f"{self.timeout:g}s")
            await asyncio.sleep(0.05)
