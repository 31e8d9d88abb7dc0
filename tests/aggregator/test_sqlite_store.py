"""SQLite-specific behaviour beyond the shared contract: codec, fragments, failures, restart."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.store import codec, open_store
from aggregator.store.base import SeriesWindow, StoreError
from aggregator.store.sqlite import SQLiteStore
from stacks.folded import dumps, parse
from stacks.model import Labels, StackTable
from stacks.selector import Selector, parse_selector

T0 = 1_700_000_010


@given(st.dictionaries(st.integers(0, 2**40), st.integers(1, 2**62), max_size=200))
def test_codec_round_trip(pairs: dict[int, int]) -> None:
    ids = np.array(sorted(pairs), dtype=np.int64)
    counts = np.array([pairs[i] for i in sorted(pairs)], dtype=np.int64)
    got_ids, got_counts = codec.decode(codec.encode(ids, counts))
    assert got_ids.tolist() == ids.tolist() and got_counts.tolist() == counts.tolist()


def test_codec_is_compact_for_dense_ids() -> None:
    ids = np.arange(0, 3000, 3, dtype=np.int64)
    counts = np.full(len(ids), 7, dtype=np.int64)
    assert len(codec.encode(ids, counts)) < 100  # 1000 pairs in well under a byte each


async def test_fragments_sum_then_compact_and_survive_reopen(tmp_path) -> None:
    s = SQLiteStore(tmp_path / "a.db")
    await s.open()
    a = Labels.of(service_name="a", pod="p")
    for text in ("m;f 1\nm;g_[k] 2\n", "m;f 10\n", "m;h 5\n"):
        await s.write([SeriesWindow(a, T0, parse(text))])
    expected = "m;f 11\nm;g_[k] 2\nm;h 5\n"
    got = await s.read(Selector(), T0, T0 + 30, StackTable())
    assert [dumps(w.profile) for w in got] == [expected]
    await s.close()
    # reopen: the fragments left behind are found and merged
    s = SQLiteStore(tmp_path / "a.db")
    await s.open()
    assert await s.compact(T0 + 1) == 1
    assert s._r is not None
    rows = s._w.execute("SELECT count(*) FROM windows").fetchone()[0]  # type: ignore[union-attr]
    assert rows == 1
    got = await s.read(parse_selector('{pod="p"}'), T0, T0 + 30, StackTable())
    assert [dumps(w.profile) for w in got] == [expected]
    merged = await s.read_merged(Selector(), 0, 2 * T0, StackTable(), ("service_name",))
    assert {k: dumps(v) for k, v in merged.items()} == {Labels.of(service_name="a"): expected}
    assert await s.totals(Selector(), 0, 2 * T0) == [(a, T0, 18)]
    await s.close()


async def test_disk_full_raises_store_error_and_store_recovers(tmp_path) -> None:
    s = SQLiteStore(tmp_path / "full.db", max_pages=40)
    await s.open()
    a = Labels.of(service_name="a")
    small = parse("main;ok 1\n")
    await s.write([SeriesWindow(a, T0, small)])
    big = parse("".join(f"main;fn_{i:06d}_{'x' * 60} {i + 1}\n" for i in range(5000)))
    with pytest.raises(StoreError, match="full"):
        await s.write([SeriesWindow(a, T0 + 30, big)])
    # the failed transaction left nothing behind and the store still works
    await s.write([SeriesWindow(a, T0, small)])
    got = await s.read(Selector(), 0, 2 * T0, StackTable())
    assert [(w.start, dumps(w.profile)) for w in got] == [(T0, "main;ok 2\n")]
    await s.close()


async def test_unusable_data_dir_raises_store_error(tmp_path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data dir should be")
    s = open_store("sqlite", blocker / "data")
    with pytest.raises(StoreError, match="not-a-dir"):
        await s.open()


def test_open_store_specs(tmp_path) -> None:
    assert isinstance(open_store("sqlite", tmp_path), SQLiteStore)
    assert open_store("sqlite", tmp_path).path == tmp_path / "flamewatch.db"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="clickhouse://"):
        open_store("postgres://x", tmp_path)
