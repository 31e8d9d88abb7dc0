"""Scale-out store: ClickHouse (18.16 and later) over its HTTP interface.

Several stateless aggregators can share one database: every id is a content
hash computed client-side (no id allocation, no coordination), and a write is
a plain additive INSERT. Schema (see docs/clickhouse.md):

- ``stacks(hash, names, kinds, files, lines)``: ReplacingMergeTree keyed by the 64-bit
  stack hash; frames root first, kinds as ``Array(Enum8)``; ``files``/``lines`` the frames'
  source locations, empty when none has one (every row written before locations).
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
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from aggregator.store.base import SeriesWindow, StoreError
from aggregator.store.clickhouse.planner import PrunedReads
from aggregator.store.clickhouse.schema import (
    ALL_ROLLUP_TABLES,
    KIND_NAMES,
    PARTITION_SECONDS,
    ROLLUP_PARTITION_SECONDS,
    ROLLUP_TABLES,
    SERIES_DAYS,
    STACK_LOCATION_COLUMNS,
    TOTALS_HOURLY,
    TOTALS_TABLE,
    ddl,
    series_hash,
    stack_hash,
    views,
)
from aggregator.store.clickhouse.transport import (
    CH_UNKNOWN_DATABASE,
    CH_UNKNOWN_TABLE,
    GROUP_BUCKET,
    GROUP_STACK,
    GROUP_WINDOW,
    KEY_COUNT,
    SAMPLE_IN,
    SAMPLE_OUT,
    SERIES_WINDOW,
    ClickHouseError,
    Transport,
    chunks,
    in_list,
)
from aggregator.store.rollup import DAY, HOUR, RESOLUTIONS, plan
from stacks.model import Frame, Kind, Labels, Profile, Stack, StackTable, function_stack
from stacks.selector import Selector

log = logging.getLogger(__name__)

# Series per grouped read: the IN list plus transform's two arrays stay ~100 KB, under max_query_size.
_GROUP_CHUNK = 2000
_DENSE_CELLS = 20_000_000  # (group, stack) cells summed with a dense bincount (160 MB of float64 at most)
_MAX_CACHED = 2_000_000
_LOW32 = 0xFFFFFFFF
# A view created over existing data sees whole periods only from this far past the newest
# window or the clock (late writes of other replicas at creation time land before it).
_SINCE_MARGIN = 3600


class ClickHouseStore(Transport, PrunedReads):
    """A :class:`aggregator.store.base.Store` on a ClickHouse server (HTTP interface)."""

    def __init__(self, url: str, *, timeout: float | None = None) -> None:
        super().__init__(url, timeout=timeout)
        self._schema_ready = False
        # Pure memos of content hashes (valid forever) plus "already inserted" sets, which only
        # save re-sending rows: a ReplacingMergeTree would collapse duplicates anyway.
        self._stack_hashes: dict[Stack, int] = {}
        self._stacks: dict[int, Stack] = {}  # as stored (by line)
        self._fn_stacks: dict[int, Stack] = {}  # without locations (by function)
        self._sent_stacks: set[int] = set()
        self._sent_series: set[int] = set()
        # Cells of the last read_merged_pruned: all, ruled out, fetched in full (tests, bench).
        self.last_pushdown: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"ClickHouseStore({self._base}{self.database})"

    async def _run(self, sql: str, body: bytes | None = None) -> bytes:
        """``_post``, re-creating the schema once if the database or a table vanished."""
        if not self._schema_ready:
            await self._create_schema()
        try:
            return await self._post(sql, body)
        except ClickHouseError as e:
            if e.code not in (CH_UNKNOWN_TABLE, CH_UNKNOWN_DATABASE):
                raise
            log.warning("%s: schema missing (%s); creating it again", self._where(), e)
            await self._create_schema()
            return await self._post(sql, body)

    async def _create_schema(self) -> None:
        db = self.database
        for stmt in ddl(db):
            await self._post(stmt)
        columns = {r["name"] for r in await self._post_json(
            f"SELECT name FROM system.columns WHERE database = '{db}' AND table = 'stacks'")}
        for col in STACK_LOCATION_COLUMNS:
            if col.split()[0] not in columns:  # a stacks table from before source locations
                await self._post(f"ALTER TABLE {db}.stacks ADD COLUMN {col}")
        have = {r["name"] for r in await self._post_json(
            f"SELECT name FROM system.tables WHERE database = '{db}'")}
        for key, name, res, stmts in views(db):
            if f"{name}_mv" in have:
                continue
            for stmt in stmts:
                await self._post(stmt)
            # From which period on the view has seen every window: all of them on an empty
            # store, else only periods starting after the data (and clock) of now.
            top = await self._post_json(f"SELECT count() AS n, max(window) AS w FROM {db}.samples")
            since = 0
            if top and int(top[0]["n"]):
                now = int(time.time())
                since = -(-(max(int(top[0]["w"]), now) + _SINCE_MARGIN) // res) * res
            await self._post(f"INSERT INTO {db}.rollup_meta (key, value) VALUES ('{key}', {since})")
        # A recreated database lost what the caches say was sent.
        self._sent_stacks.clear()
        self._sent_series.clear()
        self._schema_ready = True

    async def open(self) -> None:
        """Create the database and tables if missing. Raises StoreError if the server is down."""
        await self._create_schema()

    def cumulative_state(self) -> Any:
        """The state of cumulative profiles in this database, shared by every replica
        (:class:`aggregator.store.clickhouse.cumulative.ClickHouseState`)."""
        from aggregator.store.clickhouse.cumulative import ClickHouseState

        return ClickHouseState(self)

    async def _post_json(self, sql: str) -> list[dict[str, Any]]:
        """JSONEachRow rows of ``sql`` through ``_post`` (no schema re-creation: used by it)."""
        raw = await self._post(sql + " FORMAT JSONEachRow")
        return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line]

    async def _meta(self) -> dict[str, int]:
        """``rollup_meta``: the first period each view saw whole (``since_*``), the retention horizon."""
        return {r["key"]: int(r["v"]) for r in await self._json_rows(
            f"SELECT key, max(value) AS v FROM {self.database}.rollup_meta GROUP BY key")}

    async def _sources(self, start: int, end: int, max_res: int, *, step: int = 0,
                       every: bool = False) -> list[tuple[str, str]]:
        """(table, WHERE condition) pairs covering [start, end) exactly once: rollup periods
        (resolutions up to ``max_res``) lying inside the range whose rollups are whole (the
        view saw all of the period, and retention did not cut into it), ``samples`` for the
        rest (:func:`aggregator.store.rollup.plan`). ``every``: the rollups without the series
        key (``stacks_1h``/``stacks_1d``), for a read of every series in range. ``max_res`` -1
        (the timeline): ``window_totals`` from the later of its view's start and the retention
        horizon, ``samples`` before; with a ``step`` that is a multiple of an hour, the whole
        hours of that part from ``window_totals_1h`` (where its view saw them whole)."""
        if not max_res:
            return [("samples", f"window >= {int(start)} AND window < {int(end)}")]
        meta = await self._meta()
        horizon = meta.get("horizon", 0)
        if max_res < 0:
            cut = min(max(start, horizon, meta.get("since_totals", end)), end)
            out = [("samples", f"window >= {int(start)} AND window < {cut}")] if cut > start else []
            hourly = "since_totals_1h" in meta and step > 0 and step % HOUR == 0
            h0 = -(-max(cut, horizon, meta.get("since_totals_1h", end)) // HOUR) * HOUR
            h1 = end - end % HOUR
            if not hourly or h0 >= h1:
                return out + ([(TOTALS_TABLE, f"window >= {cut} AND window < {int(end)}")] if cut < end else [])
            out += [(TOTALS_TABLE, f"window >= {a} AND window < {b}") for a, b in ((cut, h0), (h1, end)) if a < b]
            return [*out, (TOTALS_HOURLY, f"window >= {h0} AND window < {h1}")]
        tables, prefix = (ALL_ROLLUP_TABLES, "since_all_") if every else (ROLLUP_TABLES, "since_")
        rolled = set()
        for res in RESOLUTIONS:
            since = meta.get(f"{prefix}{res}")
            if since is None or res > max_res:
                continue
            p = max(-(-start // res) * res, -(-max(since, horizon) // res) * res)
            while p + res <= end:
                rolled.add((res, p))
                p += res
        got = plan(start, end, rolled, max_res)
        out = [(tables[res], f"window IN ({in_list(ps)})") for res, ps in got.periods.items()]
        out += [("samples", f"window >= {a} AND window < {b}") for a, b in got.windows]
        return out

    async def _series_source(self, start: int, end: int) -> str:
        """SQL condition on ``hash``: the series with a window in [start, end), from
        ``series_days`` for the whole days its view saw (and retention left whole), from
        ``series_windows`` for the rest (a week: 1,400 rows instead of 4 M)."""
        db, start, end = self.database, int(start), int(end)
        day = ROLLUP_PARTITION_SECONDS
        d1 = end - end % day
        plain = f"hash IN (SELECT series FROM {db}.series_windows WHERE window >= {start} AND window < {end})"
        if -(-start // day) * day >= d1:
            return plain  # no whole day in range: no need to ask rollup_meta (one round trip less)
        meta = await self._meta()
        d0 = -(-max(start, meta.get("horizon", 0), meta.get("since_series_days", end)) // day) * day
        if "since_series_days" not in meta or d0 >= d1:
            return plain
        parts = [f"hash IN (SELECT series FROM {db}.{SERIES_DAYS} WHERE window >= {d0} AND window < {d1})"]
        parts += [f"hash IN (SELECT series FROM {db}.series_windows WHERE window >= {a} AND window < {b})"
                  for a, b in ((start, d0), (d1, end)) if a < b]
        return "(" + " OR ".join(parts) + ")"

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
            rows = np.empty(len(w.profile), dtype=SAMPLE_IN)
            rows["window"] = int(w.start)
            rows["series"] = sh
            rows["stack"] = hashes
            rows["count"] = w.profile.counts
            parts.append(rows)
        if not parts:
            return
        samples = np.concatenate(parts).tobytes()
        windows_rows = np.array(sorted(sw), dtype=SERIES_WINDOW).tobytes()
        if not self._schema_ready:
            await self._create_schema()
        try:
            await self._send(stacks, series, windows_rows, samples)
        except ClickHouseError as e:
            if e.code not in (CH_UNKNOWN_TABLE, CH_UNKNOWN_DATABASE):
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
            lines = (json.dumps(_stack_row(h, s), ensure_ascii=False) for h, s in new_stacks.items())
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
            self._fn_stacks.clear()
        self._stacks[h] = stack

    # -- reading --------------------------------------------------------------------------
    async def _series_in_range(self, start: int, end: int) -> dict[int, Labels]:
        """Every series with a window in [start, end), hash -> labels."""
        db = self.database
        rows = await self._json_rows(
            f"SELECT hash, names, values FROM {db}.series WHERE {await self._series_source(start, end)}")
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
        parts = [await self._binary_rows(f"{base} AND series IN ({in_list(c)}){tail}", dtype)
                 for c in chunks(keys)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    async def _resolve(self, hashes: np.ndarray, table: StackTable) -> np.ndarray:
        """Ids on ``table`` for unique sorted stack ``hashes`` (fetching unknown stacks)."""
        want = [h for h in hashes.tolist() if h not in self._stacks]
        for chunk in chunks(want):
            rows = await self._json_rows(
                f"SELECT hash, any(names) AS names, any(kinds) AS kinds, any(files) AS files, "
                f"any(lines) AS lines FROM {self.database}.stacks WHERE hash IN ({in_list(chunk)}) GROUP BY hash"
            )
            for r in rows:
                self._remember_stack(int(r["hash"]), _row_stack(r))
        missing = [h for h in hashes.tolist() if h not in self._stacks]
        if missing:
            raise StoreError(f"{self._where()}: {len(missing)} stacks referenced by samples are missing "
                             f"from {self.database}.stacks (e.g. hash {missing[0]}); "
                             "was the table truncated?")
        intern = table.intern
        stacks = self._stacks
        if not table.lines:  # by function: the stacks without their frames' locations
            fn, by_fn = self._fn_stacks, {}
            for h in hashes.tolist():
                s = fn.get(h)
                by_fn[h] = s if s is not None else fn.setdefault(h, function_stack(stacks[h]))
            stacks = by_fn
        return np.fromiter((intern(stacks[h]) for h in hashes.tolist()), dtype=np.int64, count=len(hashes))

    async def read(self, selector: Selector, start: int, end: int, table: StackTable) -> list[SeriesWindow]:
        """Matching windows with ``start <= window.start < end``, counts summed per stack."""
        series, everything = await self._matching(selector, start, end)
        if not series:
            return []
        rows = await self._samples("series, window, stack, sum(count) AS c", "series, window, stack",
                                   "series, window, stack", SAMPLE_OUT, series, everything, start, end)
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
        self, selector: Selector, start: int, end: int, group_by: Sequence[str] = (), step: int = 0
    ) -> list[tuple[Labels, int, int]]:
        """(labels, window start, samples) per series (or ``group_by`` group) and window; the
        timeline. Summed in ClickHouse per (group, window); with ``step``, rollup periods that
        fit in a bucket of ``step`` s are read instead of their windows."""
        keys, gid, everything = await self._groups(selector, start, end, group_by)
        if not keys:
            return []
        # Summed per bucket of step in the query (rows per (group, bucket)), from window_totals
        # where its view has seen everything (max_res=-1, see _sources).
        if step > 0:
            g, window, counts = await self._group_sums(
                gid, len(keys), "bucket", everything, start, end, expr=f"toUInt32(window - window % {int(step)})",
                dtype=GROUP_BUCKET, max_res=-1, step=int(step))
        else:
            g, window, counts = await self._group_sums(gid, len(keys), "window", everything, start, end, max_res=-1)
        if counts.size == 0:
            return []
        # Several series chunks may hold one group's window: sum them into one cell, exactly
        # (issue 24, cause 15: a float64 bincount rounded 2^62 + 1 to 2^62). The 32-bit halves
        # are summed apart in uint64 (no carry is lost below 2^32 rows) and joined as ints.
        cell = g * (1 << 32) + window.astype(np.int64)
        order = np.argsort(cell, kind="stable")
        cell, c = cell[order], counts.astype(np.uint64)[order]
        starts = np.r_[0, np.flatnonzero(cell[1:] != cell[:-1]) + 1]
        uniq = cell[starts]
        lo = np.add.reduceat(c & np.uint64(0xFFFFFFFF), starts)
        hi = np.add.reduceat(c >> np.uint64(32), starts)
        names = list(keys)
        return [(names[k >> 32], k & 0xFFFFFFFF, (h << 32) + low)
                for k, h, low in zip(uniq.tolist(), hi.tolist(), lo.tolist(), strict=True)]

    async def top_totals(
        self, selector: Selector, start: int, end: int, group_by: str, n: int, step: int = 0
    ) -> tuple[list[tuple[Labels, int, int]], dict[int, int], int, int]:
        """``totals(..., (group_by,), step)`` for the ``n`` heaviest values of ``group_by`` only
        (:class:`aggregator.store.base.TopTotals`; issue 24, cause 3). Two aggregate queries, so
        what comes back is bounded by ``n`` x buckets however many groups there are: the groups
        ranked in ClickHouse (``GROUP BY`` group ``ORDER BY`` sum ``DESC LIMIT n``; the number
        of groups is the answer's ``rows_before_limit_at_least``, exact under ``GROUP BY``), then
        the kept groups' sums per bucket of ``step`` and the rest summed into one more row per
        bucket. Sums are exact past 2^64 (their 32-bit halves summed apart, joined as ints).
        Returns (rows of the kept groups, the rest per bucket, number of groups, samples of the rest).
        """
        series = {h: v or "" for h, v in (await self._series_groups(selector, start, end, group_by)).items()}
        # Group ids numbered in name order, so ORDER BY sum DESC, id breaks ties by name (as SQLite).
        names = sorted(set(series.values()))
        if not names:
            return [], {}, 0, 0
        ids = {g: i for i, g in enumerate(names)}
        hashes = sorted(series)
        none = len(names)
        # Every matching series is mapped to its group in the query (a literal array is one AST
        # node, looked up by hash); series written after the lookup map to ``none`` and are left
        # out, as in ``totals``.
        group = (f"transform(series, CAST([{in_list(hashes)}] AS Array(UInt64)), "
                 f"CAST([{','.join(str(ids[series[h]]) for h in hashes)}] AS Array(UInt32)), "
                 f"toUInt32({none}))")
        del series, hashes
        union = " UNION ALL ".join(f"SELECT series, window, count FROM {self.database}.{table} WHERE {where}"
                                   for table, where in await self._sources(start, end, -1, step=int(step)))
        cells = f"SELECT {group} AS gi, window, count FROM ({union})"
        # Exact sums without Decimal128 (18.16 sums it ~50x slower): the 32-bit halves of the
        # counts summed apart in UInt64 (no carry lost below 2^32 rows), ordered as the pair
        # (high sum + carry, low 32 bits), which is the order of the whole sum.
        halves = f"sum(bitShiftRight(count, 32)) AS hi, sum(bitAnd(count, {_LOW32})) AS lo"
        raw = await self._run(
            f"SELECT gi, {halves}, hi + intDiv(lo, {_LOW32 + 1}) AS h, bitAnd(lo, {_LOW32}) AS l "
            f"FROM ({cells}) WHERE gi != {none} "
            f"GROUP BY gi ORDER BY h DESC, l DESC, gi LIMIT {max(int(n), 1)} FORMAT JSON")
        try:
            ranked = json.loads(raw.decode("utf-8"))
            kept = [int(r["gi"]) for r in ranked["data"]][: max(int(n), 0)]
            ngroups = int(ranked.get("rows_before_limit_at_least", len(kept)))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{self._where()} sent a malformed JSON answer: {e}") from e
        if not ngroups:
            return [], {}, 0, 0
        bucket = f"toUInt32(window - window % {int(step)})" if step > 0 else "window"
        rank = (f"transform(gi, CAST([{','.join(map(str, kept))}] AS Array(UInt32)), "
                f"CAST([{','.join(map(str, range(len(kept))))}] AS Array(UInt32)), toUInt32({len(kept)}))"
                if kept else "toUInt32(0)")
        rows: list[tuple[Labels, int, int]] = []
        other: dict[int, int] = {}
        for r in await self._json_rows(
                f"SELECT {rank} AS r, {bucket} AS b, {halves} FROM ({cells}) "
                f"WHERE gi != {none} GROUP BY r, b"):
            k, b, c = int(r["r"]), int(r["b"]), (int(r["hi"]) << 32) + int(r["lo"])
            if k < len(kept):
                rows.append((Labels.of({group_by: names[kept[k]]}), b, c))
            else:
                other[b] = other.get(b, 0) + c
        return rows, other, ngroups, sum(other.values())

    async def _series_groups(self, selector: Selector, start: int, end: int, label: str) -> dict[int, str | None]:
        """Hash -> value of ``label`` (None when absent) of the matching series in range: the
        series rows are matched one at a time as they are parsed, so only the matching hashes
        and their values are kept, not a Labels object per series as ``_matching`` keeps (with
        100,000 pods that was the timeline's whole peak: ``type_fields`` asks ``label_values``)."""
        db = self.database
        raw = await self._run(
            f"SELECT hash, names, values FROM {db}.series WHERE {await self._series_source(start, end)} "
            "FORMAT JSONEachRow")
        out: dict[int, str] = {}
        try:
            for line in raw.decode("utf-8").splitlines():
                if not line:
                    continue
                r = json.loads(line)
                labels = dict(zip(r["names"], r["values"], strict=True))
                if selector.matches(labels):
                    out[int(r["hash"])] = labels.get(label)
        except (UnicodeDecodeError, ValueError, KeyError) as e:
            raise StoreError(f"{self._where()} sent a malformed JSONEachRow answer: {e}") from e
        return out

    async def _group_sums(self, gid: dict[int, int], n_groups: int, inner: str, everything: bool,
                          start: int, end: int, *, expr: str | None = None, dtype: np.dtype | None = None,
                          extra: str = "", packed: bool = False, max_res: int = DAY, step: int = 0
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(group index, ``inner`` column, summed count) cells of ``samples`` in [start, end) for
        the series in ``gid`` (hash -> group index), summed in ClickHouse by (group, inner).

        One group is a plain ``GROUP BY inner``: an hour's ~3,000 stacks out of millions of rows.
        Several are numbered in the query with ``transform(series, [hashes], [groups], default)``,
        so the answer has one row per group's stack rather than per series' stack, and 18.16
        aggregates the (small int, stack) key faster than (series, stack). ``expr`` computes
        ``inner`` (answer layout ``dtype``); ``extra`` is one more WHERE term, which may use ``g``.
        ``packed`` (a UInt32 ``expr``) groups by one UInt64 ``g << 32 | expr`` key instead, which
        18.16 aggregates faster (first-frame cells of the bench: 119 vs 163 ms). The rows come
        from the rollups of whole periods up to ``max_res`` and from ``samples`` for the rest
        (:meth:`_sources`; ``step`` that of a timeline); a cell spread over several sources is
        summed by the callers. One group of every series in range (``top``, the merged
        profile) reads the rollups without the series key (``every``), which already hold the
        sum over the series: 3,000 rows a day instead of 600,000.
        """
        db = self.database
        every = everything and n_groups == 1 and not extra and max_res > 0
        sources = await self._sources(start, end, max_res, step=step, every=every)
        keys = sorted(gid)
        # Without a selector and with few enough series for one query, no IN list is needed;
        # series first written after the label lookup then land in the default group (dropped).
        pieces: list[Sequence[int] | None] = (
            [None] if everything and len(keys) <= _GROUP_CHUNK else list(chunks(keys, _GROUP_CHUNK)))
        if every:
            # An every-series rollup has no series column: one query per period set.
            sources = [(t, w, [None] if t in ALL_ROLLUP_TABLES.values() else pieces) for t, w in sources]
        else:
            sources = [(t, w, pieces) for t, w in sources]
        if dtype is None:
            dtype = GROUP_STACK if inner == "stack" else GROUP_WINDOW
        column = inner if expr is None else f"{expr} AS {inner}"
        parts = []
        for table, where, chunk in ((t, w, c) for t, w, cs in sources for c in cs):
            cond = where if chunk is None else f"{where} AND series IN ({in_list(chunk)})"
            if n_groups == 1:
                group = "toUInt32(0)"
            else:
                members = keys if chunk is None else chunk
                group = (f"transform(series, CAST([{in_list(members)}] AS Array(UInt64)), "
                         f"CAST([{','.join(str(gid[h]) for h in members)}] AS Array(UInt32)), toUInt32({n_groups}))")
            if packed:
                rows = await self._binary_rows(
                    f"SELECT bitOr(bitShiftLeft(toUInt64({group}), 32), {expr}) AS k, sum(count) AS c "
                    f"FROM {db}.{table} WHERE {cond}{extra} GROUP BY k", KEY_COUNT)
                unpacked = np.empty(rows.size, dtype=dtype)
                unpacked["group"] = rows["key"] >> np.uint64(32)
                unpacked[dtype.names[1]] = rows["key"] & np.uint64(0xFFFFFFFF)
                unpacked["count"] = rows["count"]
                rows = unpacked
            else:
                rows = await self._binary_rows(
                    f"SELECT {group} AS g, {column}, sum(count) AS c FROM {db}.{table} WHERE {cond}{extra} "
                    f"GROUP BY g, {inner}", dtype)
            parts.append(rows[rows["group"] < n_groups])
        rows = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
        return rows["group"].astype(np.int64), rows[dtype.names[1]], rows["count"].astype(np.int64)

    async def label_names(self, start: int, end: int, selector: Selector | None = None) -> list[str]:
        """Sorted label names of (matching) series with windows in [start, end)."""
        series = await self._series_in_range(start, end)
        return sorted({k for labels in series.values() if selector is None or selector.matches(labels)
                       for k in labels})

    async def label_values(self, name: str, selector: Selector, start: int, end: int) -> list[str]:
        """Sorted values of ``name`` among matching series with windows in [start, end)."""
        return sorted({v for v in (await self._series_groups(selector, start, end, name)).values() if v is not None})

    # -- retention ------------------------------------------------------------------------
    async def delete_before(self, t: int) -> int:
        """Delete windows starting before ``t``; returns how many (series, window) pairs went.

        Whole hour partitions are dropped (cheap, instant); the one partition cut by ``t``
        is trimmed with an ``ALTER TABLE ... DELETE`` mutation (18.16 has them), awaited.
        Stacks and series rows are kept: they are small and shared with newer windows.
        """
        t = int(t)
        db = self.database
        # First: reads stop using rollups of periods that start before t (t may cut one).
        await self._run(f"INSERT INTO {db}.rollup_meta (key, value) VALUES ('horizon', {t})")
        n_rows = await self._json_rows(
            f"SELECT count() AS n FROM (SELECT DISTINCT window, series FROM {db}.series_windows "
            f"WHERE window < {t})"
        )
        n = int(n_rows[0]["n"]) if n_rows else 0
        parts = await self._json_rows(
            f"SELECT DISTINCT table, partition FROM system.parts WHERE database = '{db}' "
            f"AND table IN ('samples', 'series_windows', "
            f"{','.join(repr(name) for _, name, _, _ in views(db))}) "
            "AND active"
        )
        mutated = []
        for p in parts:
            pid = int(p["partition"])
            size = PARTITION_SECONDS if p["table"] in ("samples", "series_windows") else ROLLUP_PARTITION_SECONDS
            lo, hi = pid * size, (pid + 1) * size
            if hi <= t:
                await self._run(f"ALTER TABLE {db}.{p['table']} DROP PARTITION {pid}")
            elif lo < t and size == PARTITION_SECONDS:
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


def _stack_row(h: int, stack: Stack) -> dict[str, Any]:
    """The JSONEachRow row of a stack; ``files``/``lines`` only when a frame is located."""
    row: dict[str, Any] = {"hash": str(h), "names": [f.name for f in stack],
                           "kinds": [KIND_NAMES[Kind(f.kind)] for f in stack]}
    if any(f.file or f.line for f in stack):
        row["files"] = [f.file for f in stack]
        row["lines"] = [int(f.line) for f in stack]
    return row


def _row_stack(r: dict[str, Any]) -> Stack:
    """The stack of a ``stacks`` row (``files``/``lines`` empty: unlocated)."""
    names, kinds = r["names"], r["kinds"]
    files, lines = r.get("files") or (), r.get("lines") or ()
    if len(files) == len(names) and len(lines) == len(names):
        return tuple(Frame(n, Kind(k), f, int(ln))
                     for n, k, f, ln in zip(names, kinds, files, lines, strict=True))
    return tuple(Frame(n, Kind(k)) for n, k in zip(names, kinds, strict=True))
