"""The highest values of cumulative profiles in ClickHouse, read and written by every replica.

Table ``cumulative(series, stack, value, version)``, a ReplacingMergeTree(version) ordered by
(series, stack): one row per stack of each cumulative series once merged, the row of the
highest ``version`` kept. A push writes only the stacks that grew or are new; a baseline (the
first push of a series, or a fall after a restart) writes every stack of the push plus a
marker row of stack 0 with the same version, and a read keeps only the rows at or after the
series' newest marker, so stacks of an older run are forgotten without deleting them.

Versions are nanoseconds of the writer's clock but always above every version the writer read
for the series (a Lamport clock): a replica whose clock lags still writes after the push it
read. Reads take ``argMax(value, version)`` grouped per (series, stack), so unmerged parts
never show. See :mod:`aggregator.cumulative` for the guarantee across replicas. Retention
(:meth:`ClickHouseState.forget_before`) forgets series whose baseline is older than the cut.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol

import numpy as np

from aggregator.store.clickhouse.schema import CUMULATIVE_TABLE, series_hash
from aggregator.store.clickhouse.transport import chunks, in_list
from stacks.model import Labels, Profile, Stack


class StoreAccess(Protocol):
    """What the state uses of :class:`aggregator.store.clickhouse.store.ClickHouseStore`: its
    database, stack hashes and transport (a Protocol, so this module never imports the store,
    which opens the state on demand)."""

    database: str

    def _hash_of(self, stack: Stack) -> int: ...

    async def _run(self, sql: str, body: bytes | None = None) -> bytes: ...

    async def _json_rows(self, sql: str) -> list[dict[str, Any]]: ...

    async def _binary_rows(self, sql: str, dtype: np.dtype) -> np.ndarray: ...

    async def _await_mutations(self, tables: list[str]) -> None: ...

ROW = np.dtype([("series", "<u8"), ("stack", "<u8"), ("value", "<u8"), ("version", "<u8")])
MARKER = 0  # the stack hash of a series' baseline marker row


class ClickHouseState:
    """:class:`aggregator.cumulative.StateBackend` on the store's database."""

    def __init__(self, store: StoreAccess, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.clock_ns = clock_ns
        self._versions: dict[Labels, int] = {}  # newest version read per series, for the next save

    def keys(self, profile: Profile) -> list[Hashable]:
        stack, hash_of = profile.table.stack, self.store._hash_of
        return [hash_of(stack(int(i))) for i in profile.ids.tolist()]

    async def load(self, series: Sequence[Labels]) -> dict[Labels, dict[Any, int]]:
        by_hash = {series_hash(s): s for s in series}
        db = self.store.database
        rows = [await self.store._binary_rows(
            f"SELECT series, stack, argMax(value, version) AS v, max(version) AS ver "
            f"FROM {db}.{CUMULATIVE_TABLE} WHERE series IN ({in_list(c)}) GROUP BY series, stack", ROW)
            for c in chunks(sorted(by_hash))]
        got = np.concatenate(rows) if rows else np.zeros(0, dtype=ROW)
        out: dict[Labels, dict[Any, int]] = {}
        if len(self._versions) > 100_000:  # entries of pushes that failed before their save
            self._versions.clear()
        got = got[np.argsort(got["series"], kind="stable")]  # one slice per series, not a scan each
        wanted = np.array(list(by_hash), dtype=np.uint64)
        bounds = np.searchsorted(got["series"], wanted, side="left")
        ends = np.searchsorted(got["series"], wanted, side="right")
        for s, lo, hi in zip(by_hash.values(), bounds.tolist(), ends.tolist(), strict=True):
            mine = got[lo:hi]
            self._versions[s] = int(mine["version"].max()) if len(mine) else 0
            marker = mine[mine["stack"] == np.uint64(MARKER)]
            if not len(marker):
                continue  # never pushed (or the table was lost): the next push is a baseline
            since = marker["version"][0]
            live = mine[(mine["version"] >= since) & (mine["stack"] != np.uint64(MARKER))]
            out[s] = dict(zip(live["stack"].tolist(), live["value"].tolist(), strict=True))
        return out

    async def save(self, after: dict[Labels, dict[Any, int]], before: dict[Labels, dict[Any, int]],
                   baselines: set[Labels]) -> None:
        now = self.clock_ns()
        parts: list[np.ndarray] = []
        for s, values in after.items():
            version = max(now, self._versions.pop(s, 0) + 1)
            if s in baselines:
                changed = dict(values)
                changed[MARKER] = 0
            else:
                old = before.get(s, {})
                changed = {k: v for k, v in values.items() if old.get(k) != v}
            if not changed:
                continue
            rows = np.empty(len(changed), dtype=ROW)
            rows["series"] = series_hash(s)
            rows["stack"] = np.fromiter(changed.keys(), dtype=np.uint64, count=len(changed))
            rows["value"] = np.fromiter(changed.values(), dtype=np.uint64, count=len(changed))
            rows["version"] = version
            parts.append(rows)
        if parts:
            await self.store._run(f"INSERT INTO {self.store.database}.{CUMULATIVE_TABLE} FORMAT RowBinary",
                                  np.concatenate(parts).tobytes())

    async def forget_before(self, t: int) -> int:
        """Retention: forget the series whose baseline is older than ``t`` (unix seconds); their
        next push is a new baseline. Two awaited mutations: the markers first, so no read ever
        sees a marker without its stacks (that would count a deleted stack's whole value as
        growth), then every row older than ``t`` (live rows are never older than their marker).
        Returns the series forgotten."""
        db, cut = self.store.database, int(t) * 10**9
        rows = await self.store._json_rows(
            f"SELECT count() AS n FROM (SELECT series FROM {db}.{CUMULATIVE_TABLE} WHERE stack = {MARKER} "
            f"GROUP BY series HAVING max(version) < {cut})")
        n = int(rows[0]["n"]) if rows else 0
        if n:
            for where in (f"stack = {MARKER} AND version < {cut}", f"version < {cut}"):
                await self.store._run(f"ALTER TABLE {db}.{CUMULATIVE_TABLE} DELETE WHERE {where}")
                await self.store._await_mutations([CUMULATIVE_TABLE])
        return n
