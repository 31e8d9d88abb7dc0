"""Storage backends behind :class:`aggregator.store.base.Store`."""

from __future__ import annotations

from pathlib import Path

from aggregator.store.base import (
    MERGE_ALL,
    Compacting,
    CorruptionError,
    MergedReads,
    PrunedMergedReads,
    SeriesWindow,
    Store,
    StoreError,
    TopTotals,
)

__all__ = [
    "MERGE_ALL", "Compacting", "CorruptionError", "MergedReads", "PrunedMergedReads", "SeriesWindow", "Store",
    "StoreError", "TopTotals",
    "open_store",
]


def open_store(spec: str, data_dir: str | Path, *, sqlite_synchronous: str = "FULL",
               **sqlite_options: object) -> Store:
    """A store (not yet opened) for ``sqlite`` or ``clickhouse://host:port/db``; ``sqlite_options``
    go to :class:`SQLiteStore` (``check_seconds``, ``stack_cache``, ``max_cells``)."""
    if spec in ("", "sqlite"):
        from aggregator.store.sqlite import SQLiteStore

        return SQLiteStore(Path(data_dir) / "flamewatch.db", synchronous=sqlite_synchronous,
                           **sqlite_options)  # type: ignore[arg-type]
    if spec.startswith("sqlite://"):
        from aggregator.store.sqlite import SQLiteStore

        return SQLiteStore(Path(spec[len("sqlite://") :]), synchronous=sqlite_synchronous,
                           **sqlite_options)  # type: ignore[arg-type]
    if spec.startswith("clickhouse://"):
        try:
            from aggregator.store.clickhouse import ClickHouseStore
        except ImportError as e:
            raise StoreError(f"the ClickHouse backend is not available: {e}") from e
        return ClickHouseStore(spec)
    raise ValueError(f"unknown storage {spec!r}: use 'sqlite' or 'clickhouse://HOST:PORT/DATABASE'")
