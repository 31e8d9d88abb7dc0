"""ClickHouse schema: the DDL and the content hashes that are every row's id.

Every id is a 64-bit blake2b hash computed client-side, so no aggregator allocates ids or
coordinates with another; the hashes are part of the stored data and must never change.
"""

from __future__ import annotations

import hashlib

from stacks.model import Kind, Labels, Stack

PARTITION_SECONDS = 3600  # retention granularity of DROP PARTITION; finer cuts use a mutation
ROLLUP_PARTITION_SECONDS = 86400  # rollup tables: one partition per day (a cut one is ignored by reads)
# Rollup tables by resolution, each filled by a materialized view on every INSERT into samples.
ROLLUP_TABLES = {3600: "samples_1h", 86400: "samples_1d"}
TOTALS_TABLE = "window_totals"
# Per (series, hour) sums of samples: the timeline of a step that is a multiple of an hour
# (a week: 168 rows per series instead of 20,160 of window_totals).
TOTALS_HOURLY = "window_totals_1h"
# Per (period, stack) sums over every series, by resolution: what a read of *every* series in
# range needs (``top``, the stack list of the metadata render), 3,000 rows a day instead of
# 600,000 per-series rows of samples_1d.
ALL_ROLLUP_TABLES = {3600: "stacks_1h", 86400: "stacks_1d"}
# Which series have data in which day (from series_windows): the series lookup of a long range.
SERIES_DAYS = "series_days"
# Highest value per (series, stack) of cumulative profiles, shared by every replica
# (aggregator/store/clickhouse/cumulative.py); stack 0 is the series' baseline marker.
CUMULATIVE_TABLE = "cumulative"  # per (series, window) sums of samples: the timeline's source
KIND_NAMES = {Kind.USER: "user", Kind.KERNEL: "kernel", Kind.METADATA: "metadata"}
_KIND_CODE = {Kind.USER: b"u", Kind.KERNEL: b"k", Kind.METADATA: b"m"}


# Source locations of a stack's frames, parallel to ``names``: empty arrays when no frame has one
# (so rows written before locations, and unlocated stacks, read as unlocated); "" and 0 where
# one frame has none. Added to an older ``stacks`` table on schema creation.
STACK_LOCATION_COLUMNS = ("files Array(String)", "lines Array(UInt32)")


def ddl(db: str) -> list[str]:
    kinds = "Enum8('user' = 1, 'kernel' = 2, 'metadata' = 3)"
    part = f"intDiv(window, {PARTITION_SECONDS})"
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"CREATE TABLE IF NOT EXISTS {db}.stacks (hash UInt64, names Array(String), kinds Array({kinds}), "
        f"{STACK_LOCATION_COLUMNS[0]}, {STACK_LOCATION_COLUMNS[1]}) ENGINE = ReplacingMergeTree() ORDER BY hash",
        f"CREATE TABLE IF NOT EXISTS {db}.series (hash UInt64, names Array(String), values Array(String)) "
        "ENGINE = ReplacingMergeTree() ORDER BY hash",
        f"CREATE TABLE IF NOT EXISTS {db}.series_windows (window UInt32, series UInt64) "
        f"ENGINE = ReplacingMergeTree() PARTITION BY {part} ORDER BY (window, series)",
        f"CREATE TABLE IF NOT EXISTS {db}.samples (window UInt32, series UInt64, stack UInt64, count UInt64) "
        f"ENGINE = SummingMergeTree(count) PARTITION BY {part} ORDER BY (series, window, stack)",
        # rollup_meta: ('since_RES', first period the view has seen whole), ('horizon', retention cut)
        f"CREATE TABLE IF NOT EXISTS {db}.rollup_meta (key String, value UInt32) ENGINE = MergeTree() ORDER BY key",
        f"CREATE TABLE IF NOT EXISTS {db}.{CUMULATIVE_TABLE} (series UInt64, stack UInt64, value UInt64, "
        "version UInt64) ENGINE = ReplacingMergeTree(version) ORDER BY (series, stack)",
    ]


def totals_ddl(db: str) -> list[str]:
    """``window_totals`` and its view: the samples of each (series, window), so a timeline reads
    one row per series and window (576,000 a day) instead of one per stack (86 M a day)."""
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.{TOTALS_TABLE} (window UInt32, series UInt64, count UInt64) "
        f"ENGINE = SummingMergeTree(count) PARTITION BY intDiv(window, {ROLLUP_PARTITION_SECONDS}) "
        "ORDER BY (series, window)",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{TOTALS_TABLE}_mv TO {db}.{TOTALS_TABLE} AS SELECT "
        f"window, series, sum(count) AS count FROM {db}.samples GROUP BY window, series",
    ]


def totals_hourly_ddl(db: str) -> list[str]:
    """``window_totals_1h`` and its view: the samples of each (series, hour)."""
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.{TOTALS_HOURLY} (window UInt32, series UInt64, count UInt64) "
        f"ENGINE = SummingMergeTree(count) PARTITION BY intDiv(window, {ROLLUP_PARTITION_SECONDS}) "
        "ORDER BY (series, window)",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{TOTALS_HOURLY}_mv TO {db}.{TOTALS_HOURLY} AS SELECT "
        "toUInt32(intDiv(window, 3600) * 3600) AS window, series, sum(count) AS count "
        f"FROM {db}.samples GROUP BY window, series",
    ]


def all_rollup_ddl(db: str, res: int) -> list[str]:
    """The every-series rollup of resolution ``res`` (no series key) and its view."""
    name = ALL_ROLLUP_TABLES[res]
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.{name} (window UInt32, stack UInt64, count UInt64) "
        f"ENGINE = SummingMergeTree(count) PARTITION BY intDiv(window, {ROLLUP_PARTITION_SECONDS}) "
        "ORDER BY (window, stack)",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{name}_mv TO {db}.{name} AS SELECT "
        f"toUInt32(intDiv(window, {res}) * {res}) AS window, stack, sum(count) AS count "
        f"FROM {db}.samples GROUP BY window, stack",
    ]


def series_days_ddl(db: str) -> list[str]:
    """``series_days`` and its view on ``series_windows``: (day, series) pairs."""
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.{SERIES_DAYS} (window UInt32, series UInt64) "
        f"ENGINE = ReplacingMergeTree() PARTITION BY intDiv(window, {ROLLUP_PARTITION_SECONDS}) "
        "ORDER BY (window, series)",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{SERIES_DAYS}_mv TO {db}.{SERIES_DAYS} AS SELECT "
        f"toUInt32(intDiv(window, {ROLLUP_PARTITION_SECONDS}) * {ROLLUP_PARTITION_SECONDS}) AS window, series "
        f"FROM {db}.series_windows GROUP BY window, series",
    ]


def views(db: str) -> list[tuple[str, str, int, list[str]]]:
    """Every rollup filled by a materialized view: (rollup_meta key of the first period its view
    saw whole, table, period seconds, DDL). The key names stay as stored."""
    out = [(f"since_{res}", name, res, rollup_ddl(db, res)) for res, name in ROLLUP_TABLES.items()]
    out.append(("since_totals", TOTALS_TABLE, 3600, totals_ddl(db)))
    out.append(("since_totals_1h", TOTALS_HOURLY, 3600, totals_hourly_ddl(db)))
    out += [(f"since_all_{res}", name, res, all_rollup_ddl(db, res)) for res, name in ALL_ROLLUP_TABLES.items()]
    out.append(("since_series_days", SERIES_DAYS, ROLLUP_PARTITION_SECONDS, series_days_ddl(db)))
    return out


def rollup_ddl(db: str, res: int) -> list[str]:
    """The rollup table of resolution ``res`` and the materialized view that fills it: every
    INSERT into ``samples`` also inserts its counts summed per (series, period, stack), so a
    rollup always holds exactly the windows written since the view exists, late ones included,
    whichever replica wrote them."""
    name = ROLLUP_TABLES[res]
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.{name} (window UInt32, series UInt64, stack UInt64, count UInt64) "
        f"ENGINE = SummingMergeTree(count) PARTITION BY intDiv(window, {ROLLUP_PARTITION_SECONDS}) "
        "ORDER BY (series, window, stack)",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{name}_mv TO {db}.{name} AS SELECT "
        f"toUInt32(intDiv(window, {res}) * {res}) AS window, series, stack, sum(count) AS count "
        f"FROM {db}.samples GROUP BY series, window, stack",
    ]


def stack_hash(stack: Stack) -> int:
    """Stable 64-bit hash of a stack (same in every process and host).

    A located frame adds ``L``, its file and its line after its name; ``L`` is no kind code,
    so the bytes stay unambiguous, and a stack without locations hashes as it always has."""
    h = hashlib.blake2b(digest_size=8)
    for f in stack:
        name = f.name.encode("utf-8", "surrogatepass")
        h.update(_KIND_CODE[Kind(f.kind)])
        h.update(len(name).to_bytes(4, "little"))
        h.update(name)
        if f.file or f.line:
            file = f.file.encode("utf-8", "surrogatepass")
            h.update(b"L")
            h.update(len(file).to_bytes(4, "little"))
            h.update(file)
            h.update(int(f.line).to_bytes(4, "little"))
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
