"""A read whose caller goes away stops its work (the viewer aborts superseded requests)."""

from __future__ import annotations

import asyncio
import time

from aggregator.store.sqlite import SQLiteStore

# ~10^8 rows of a recursive CTE: many seconds of SQLite work unless it is interrupted
SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000000) SELECT count(*) FROM c"


async def test_a_cancelled_sqlite_read_frees_the_reader_thread(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = SQLiteStore(tmp_path / "f.db")
    await store.open()
    try:
        def slow() -> int:
            assert store._r is not None
            return store._r.execute(SLOW).fetchone()[0]

        def quick() -> int:
            assert store._r is not None
            return store._r.execute("SELECT 42").fetchone()[0]

        task = asyncio.create_task(store._run(store._rexec, slow))
        await asyncio.sleep(0.3)  # the slow query is running on the reader thread
        queued = asyncio.create_task(store._run(store._rexec, slow))  # queued behind it, never started
        await asyncio.sleep(0.05)
        task.cancel()
        queued.cancel()
        t = time.perf_counter()
        assert await store._run(store._rexec, quick) == 42
        # the reader thread was free at once: neither slow query ran to its end
        assert time.perf_counter() - t < 2.0
        for tk in (task, queued):
            try:
                await tk
            except asyncio.CancelledError:
                pass
            else:
                raise AssertionError("the cancelled read finished instead")
    finally:
        await store.close()
