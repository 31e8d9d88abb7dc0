"""Source locations through both stores (issue 28 item 1): located frames round-trip, reads
aggregate by function unless the table asks for lines, and data written before locations
(an old SQLite ``frames`` table, an old ClickHouse ``stacks`` table) reads unchanged."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator

import pytest

from aggregator.store.base import MERGE_ALL, SeriesWindow, Store
from aggregator.store.clickhouse.schema import stack_hash
from stacks.model import Frame, Kind, Labels, Profile, StackTable
from stacks.selector import Selector

T0 = 1_700_006_400
ALL = Selector()
U = Frame.user


def at(name: str, file: str, line: int) -> Frame:
    return Frame(name, Kind.USER, file, line)


LOCATED = {
    (at("main", "app/main.py", 3), at("handle", "app/h.py", 10)): 4,
    (at("main", "app/main.py", 3), at("handle", "app/h.py", 12)): 6,
    (at("main", "app/main.py", 3), at("handle", "app/h.py", 12), Frame("sys_read", Kind.KERNEL)): 1,
    (U("main"), U("handle")): 2,  # an unlocated sample of the same functions
}
BY_FUNCTION = {(U("main"), U("handle")): 12, (U("main"), U("handle"), Frame("sys_read", Kind.KERNEL)): 1}


async def _open(kind: str, request: pytest.FixtureRequest, tmp_path) -> Store:
    if kind == "sqlite":
        from aggregator.store.sqlite import SQLiteStore

        s: Store = SQLiteStore(tmp_path / "flamewatch.db")
    else:
        from aggregator.store.clickhouse import ClickHouseStore

        server = request.getfixturevalue("clickhouse")
        s = ClickHouseStore(server.storage_spec(request.getfixturevalue("clickhouse_db")))
    await s.open()
    return s


@pytest.fixture(params=["sqlite", "clickhouse"])
async def store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Store]:
    s = await _open(request.param, request, tmp_path)
    try:
        yield s
    finally:
        await s.close()


async def test_located_frames_round_trip_by_line_and_by_function(store: Store) -> None:
    labels = Labels.of(service_name="app")
    await store.write([SeriesWindow(labels, T0, Profile.from_pairs(LOCATED.items()))])
    got = await store.read(ALL, T0, T0 + 60, StackTable(lines=True))
    assert [(w.labels, w.start) for w in got] == [(labels, T0)]
    assert got[0].profile.as_dict() == LOCATED
    got = await store.read(ALL, T0, T0 + 60, StackTable())
    assert got[0].profile.as_dict() == BY_FUNCTION
    merged = await store.read_merged(ALL, T0, T0 + 60, StackTable(lines=True), MERGE_ALL)  # type: ignore[attr-defined]
    assert merged[Labels()].as_dict() == LOCATED
    merged = await store.read_merged(ALL, T0, T0 + 60, StackTable(), MERGE_ALL)  # type: ignore[attr-defined]
    assert merged[Labels()].as_dict() == BY_FUNCTION


def test_clickhouse_hash_of_unlocated_stacks_is_unchanged() -> None:
    # The value every stored row has (computed before locations existed): must never change.
    assert stack_hash((U("main"), U("handle"))) == 3064309551443531540
    assert stack_hash((at("main", "a.py", 1),)) != stack_hash((U("main"),))
    assert stack_hash((at("main", "a.py", 1),)) != stack_hash((at("main", "a.py", 2),))


OLD_FRAMES = ("CREATE TABLE frames (id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, name TEXT NOT NULL, "
              "UNIQUE (name, kind))")


async def test_sqlite_database_from_before_locations_reads_and_takes_lines(tmp_path) -> None:
    from aggregator.store.sqlite import SQLiteStore

    path = tmp_path / "old.db"
    old = {(U("main"), U("handle")): 5, (U("main"),): 2}
    s = SQLiteStore(path)
    await s.open()
    await s.write([SeriesWindow(Labels.of(service_name="app"), T0, Profile.from_pairs(old.items()))])
    await s.close()
    # Turn the frames table back into the one of earlier releases (same ids, no location columns).
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE frames RENAME TO f2")
        conn.execute(OLD_FRAMES)
        conn.execute("INSERT INTO frames (id, kind, name) SELECT id, kind, name FROM f2")
        conn.execute("DROP TABLE f2")
    with sqlite3.connect(path) as conn:
        assert "file" not in {r[1] for r in conn.execute("PRAGMA table_info(frames)")}
    s = SQLiteStore(path)
    await s.open()
    try:
        for lines in (False, True):
            got = await s.read(ALL, T0, T0 + 60, StackTable(lines=lines))
            assert got[0].profile.as_dict() == old
        await s.write([SeriesWindow(Labels.of(service_name="app"), T0 + 60, Profile.from_pairs(LOCATED.items()))])
        got = await s.read(ALL, T0 + 60, T0 + 120, StackTable(lines=True))
        assert got[0].profile.as_dict() == LOCATED
    finally:
        await s.close()
    with sqlite3.connect(path) as conn:
        cols = {r[1] for r in conn.execute("PRAGMA table_info(frames)")}
        assert {"file", "line"} <= cols


async def test_clickhouse_stacks_table_from_before_locations(request: pytest.FixtureRequest, tmp_path) -> None:
    from aggregator.store.clickhouse import ClickHouseStore

    server = request.getfixturevalue("clickhouse")
    db = request.getfixturevalue("clickhouse_db")
    s = ClickHouseStore(server.storage_spec(db))
    await s.open()
    await s._post(f"ALTER TABLE {db}.stacks DROP COLUMN files")
    await s._post(f"ALTER TABLE {db}.stacks DROP COLUMN lines")
    old = {(U("main"), U("handle")): 5, (U("main"),): 2}
    await s.write([SeriesWindow(Labels.of(service_name="app"), T0, Profile.from_pairs(old.items()))])
    await s.close()
    s = ClickHouseStore(server.storage_spec(db))  # a new release opening the old table
    await s.open()
    try:
        for lines in (False, True):
            got = await s.read(ALL, T0, T0 + 60, StackTable(lines=lines))
            assert got[0].profile.as_dict() == old
        await s.write([SeriesWindow(Labels.of(service_name="app"), T0 + 60, Profile.from_pairs(LOCATED.items()))])
        got = await s.read(ALL, T0 + 60, T0 + 120, StackTable(lines=True))
        assert got[0].profile.as_dict() == LOCATED
    finally:
        await s.close()
