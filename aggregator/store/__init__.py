"""Storage backends behind :class:`aggregator.store.base.Store`."""

from __future__ import annotations

from pathlib import Path

from aggregator.store.base import (
    MERGE_ALL,
    Compacting,
    MergedReads,
    PrunedMergedReads,
    SeriesWindow,
    Store,
    StoreError,
)

__all__ = [
    "MERGE_ALL", "Compacting", "MergedReads", "PrunedMergedReads", "SeriesWindow", "Store", "StoreError",
    "open_store",
]


def open_store(spec: str, data_dir: str | Path, *, sqlite_synchronous: str = "FULL",
               max_cells: int = 4_000_000) -> Store:
    """A store (not yet opened) for ``sqlite`` or ``clickhouse://host:port/db``."""
    if spec in ("", "sqlite"):
        from aggregator.store.sqlite import SQLiteStore

        return SQLiteStore(Path(data_dir) / "flamewatch.db", synchronous=sqlite_synchronous, max_cells=max_cells)
    if spec.startswith("sqlite://"):
        from aggregator.store.sqlite import SQLiteStore

        return SQLiteStore(Path(spec[len("sqlite://") :]), synchronous=sqlite_synchronous, max_cells=max_cells)
    if spec.startswith("clickhouse://"):
        try:
            from aggregator.store.clickhouse import ClickHouseStore
        except ImportError as e:
            raise StoreError(f"the ClickHouse backend is not available: {e}") from e
        return ClickHouseStore(spec)
    raise ValueError(f"unknown storage {spec!r}: use 'sqlite' or 'clickhouse://HOST:PORT/DATABASE'")
