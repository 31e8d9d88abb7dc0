"""The SQLite stack encoding 2 (aggregator/store/stackcodec.py, issue 28): exact bytes, round
trips (hypothesis: any located stack encodes and decodes to itself, and a store reads any set
of located stacks back by line and by function), and databases in encoding 1 read unchanged,
taking new stacks beside their old rows."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.store import sqlite as sq
from aggregator.store import stackcodec
from aggregator.store.base import CorruptionError, SeriesWindow
from aggregator.store.sqlite import SQLiteStore
from stacks.model import Frame, Kind, Labels, Profile, StackTable, function_stack
from stacks.selector import Selector

T0 = 1_700_006_400
ALL = Selector()


located = st.tuples(st.integers(1, 2**32 - 1), st.integers(0, 2**31), st.integers(-(2**63), 2**63 - 1))


# -- the codec ------------------------------------------------------------------------------
def test_exact_bytes() -> None:
    # no prefix; function 5 unlocated; function 7 at file 2 line 300; function 9 in the same file
    # at line 4; function 1 at file 3, line -2 (zigzag 3)
    blob = stackcodec.encode(0, 0, [(5, 0, 0), (7, 2, 300), (9, 2, 4), (1, 3, -2)])
    assert blob == bytes([0, 5 << 2, 7 << 2 | 1, 2, 0xAC, 0x02, 9 << 2 | 2, 4, 1 << 2 | 3, 3, 3])
    assert stackcodec.decode(blob) == (0, 0, [(5, 0, 0), (7, 2, 300), (9, 2, 4), (1, 3, -2)])
    # 3 frames of stack 130 (varint 0x82 0x01), then one frame
    blob = stackcodec.encode(3, 130, [(2, 0, 0)])
    assert blob == bytes([3, 0x82, 0x01, 8])
    assert stackcodec.decode(blob) == (3, 130, [(2, 0, 0)])
    # a line without a file, a file without a line
    assert stackcodec.decode(stackcodec.encode(0, 0, [(4, 0, 12), (4, 6, 0)])) == (0, 0, [(4, 0, 12), (4, 6, 0)])


def test_canonical_bytes_of_a_stack_without_locations_are_encoding_1s() -> None:
    # so a database's encoding-1 rows (hashed over uint32 frame ids) are found again
    assert stackcodec.canonical([(1, 0, 0), (300, 0, 0)]) == np.array([1, 300], dtype="<u4").tobytes()
    assert stackcodec.canonical([(1, 0, 0), (300, 4, 9)]) != stackcodec.canonical([(1, 0, 0), (300, 4, 8)])


def test_a_line_variant_of_the_bases_next_frame_is_its_line_difference() -> None:
    base = [(5, 0, 0), (7, 2, 300), (9, 2, 40)]
    # the base's first two frames, then function 9 of file 2 at line 52 instead of 40
    blob = stackcodec.encode(2, 17, [(9, 2, 52), (4, 2, 8)], after=base[2])
    assert blob == bytes([2, 17, 0, 24, 4 << 2 | 1, 2, 8])
    prefix, b, rest = stackcodec.decode(blob)
    assert (prefix, b, rest) == (2, 17, [(stackcodec.SAME, 0, 12), (4, 2, 8)])
    assert stackcodec.resolve(base, prefix, rest) == [(5, 0, 0), (7, 2, 300), (9, 2, 52), (4, 2, 8)]
    # another file, or an unlocated frame, is written whole
    assert stackcodec.decode(stackcodec.encode(2, 17, [(9, 3, 52)], after=base[2]))[2] == [(9, 3, 52)]
    assert stackcodec.decode(stackcodec.encode(2, 17, [(9, 0, 0)], after=base[2]))[2] == [(9, 0, 0)]
    with pytest.raises(ValueError):
        stackcodec.encode(0, 0, [(0, 1, 1)])  # function ids start at 1


@given(st.lists(located, min_size=1, max_size=30), st.data())
def test_any_stack_based_on_any_other_resolves_to_itself(base: list, data: st.DataObject) -> None:
    prefix = data.draw(st.integers(0, len(base)))
    frames = base[:prefix] + data.draw(st.lists(st.one_of(located, st.sampled_from(base)), max_size=10))
    after = base[prefix] if prefix < len(base) else None
    got = stackcodec.decode(stackcodec.encode(prefix, 9, frames[prefix:], after))
    assert stackcodec.resolve(base, got[0], got[2]) == frames
    # a line variant of the base's next frame
    if prefix and after is not None and (after[1] or after[2]):
        variant = [*base[:prefix], (after[0], after[1], after[2] + 1)]
        got = stackcodec.decode(stackcodec.encode(prefix, 9, variant[prefix:], after))
        assert got[2][0][0] == stackcodec.SAME and stackcodec.resolve(base, got[0], got[2]) == variant


@pytest.mark.parametrize("blob", [b"", b"\x80", b"\x01", b"\x00\x05\x02", b"\x00\x06", b"\x00\x05" + b"\xff" * 10,
                                  b"\x00\x00\x02", b"\x01\x03\x04\x00\x02"])
def test_damaged_blobs_are_named_errors(blob: bytes) -> None:
    with pytest.raises(stackcodec.StackCodecError):
        stackcodec.decode(blob)




@given(st.integers(0, 500), st.integers(1, 2**40), st.lists(located, max_size=60))
def test_any_located_stack_round_trips(prefix: int, base: int, frames: list[tuple[int, int, int]]) -> None:
    # (f, 0, 0) is an unlocated frame; every other triple a located one, kept exactly
    got = stackcodec.decode(stackcodec.encode(prefix, base, frames))
    assert got == (prefix, base if prefix else 0, frames)


@given(st.lists(st.tuples(st.integers(0, 500), st.integers(1, 2**40), st.lists(located, max_size=20)), max_size=8))
def test_decode_many_and_head_agree_with_decode(stacks: list) -> None:
    blobs = [stackcodec.encode(p, b, f) for p, b, f in stacks]
    assert stackcodec.decode_many(blobs) == [stackcodec.decode(b) for b in blobs]
    assert [stackcodec.head(b) for b in blobs] == [stackcodec.decode(b)[:2] for b in blobs]


@given(st.lists(st.tuples(st.lists(located, min_size=1, max_size=8), st.data()), max_size=6))
def test_decode_many_agrees_on_line_variants_of_any_lines(cases: list) -> None:
    # the bulk decoder reads 64-bit varints: a difference of two 64-bit lines may not fit, and
    # is then written whole
    blobs = []
    for base, data in cases:
        prefix = data.draw(st.integers(1, len(base)))
        after = base[prefix] if prefix < len(base) else base[-1]
        line = data.draw(st.integers(-(2**63), 2**63 - 1))
        blobs.append(stackcodec.encode(prefix, 3, [(after[0], after[1], line)], after))
    assert stackcodec.decode_many(blobs) == [stackcodec.decode(b) for b in blobs]


def test_decode_many_names_a_blob_cut_inside_a_frame_beside_whole_ones() -> None:
    whole = stackcodec.encode(0, 0, [(3, 1, 7)])
    cut = stackcodec.encode(0, 0, [(3, 1, 7)])[:-1]  # ends after the file: the line is in no blob
    with pytest.raises(stackcodec.StackCodecError):
        stackcodec.decode_many([cut, whole])
    with pytest.raises(stackcodec.StackCodecError):
        stackcodec.decode_many([whole, b""])


# -- the store ------------------------------------------------------------------------------
NAMES = [f"fn{i} (mod{i % 4}.py)" for i in range(12)]
frame = st.builds(lambda n, f, line, k: Frame(n, k, f, line),
                  st.sampled_from(NAMES), st.sampled_from(["", "a.py", "pkg/b.py", "/usr/lib/c.py"]),
                  st.integers(0, 2000), st.sampled_from([Kind.USER, Kind.USER, Kind.KERNEL]))
stack = st.lists(frame, min_size=1, max_size=12).map(tuple)


def _by_function(d: dict) -> dict:
    out: dict = {}
    for s, n in d.items():
        k = function_stack(s)
        out[k] = out.get(k, 0) + n
    return out


async def _round_trip(path: Path, batches: list[dict]) -> None:
    labels = Labels.of(service_name="app")
    want: dict = {}
    for i, batch in enumerate(batches):
        s = SQLiteStore(path)  # a new writer per batch: stacks of earlier processes are found again
        await s.open()
        try:
            await s.write([SeriesWindow(labels, T0 + 10 * i, Profile.from_pairs(batch.items()))])
        finally:
            await s.close()
        for k, n in batch.items():
            want[k] = want.get(k, 0) + n
    s = SQLiteStore(path)
    await s.open()
    try:
        for lines, expect in ((True, want), (False, _by_function(want))):
            got = await s.read(ALL, T0, T0 + 3600, StackTable(lines=lines))
            merged: dict = {}
            for w in got:
                for k, n in w.profile.items():
                    merged[k] = merged.get(k, 0) + n
            assert merged == expect
            m = await s.read_merged(ALL, T0, T0 + 3600, StackTable(lines=lines), ("",))
            assert m[Labels.of({"": ""})].as_dict() == expect
    finally:
        await s.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.dictionaries(stack, st.integers(1, 10**12), min_size=1, max_size=25), min_size=1, max_size=3))
def test_store_reads_any_located_stacks_back_by_line_and_by_function(tmp_path_factory, batches) -> None:
    asyncio.run(_round_trip(tmp_path_factory.mktemp("db") / "f.db", batches))


def _chain(conn: sqlite3.Connection, sid: int) -> int:
    n = 0
    while True:
        (blob,) = conn.execute("SELECT frames FROM stacks WHERE id = ?", (sid,)).fetchone()
        prefix, base, _ = stackcodec.decode(blob)
        if not prefix:
            return n
        sid, n = base, n + 1


async def test_line_variants_share_their_prefix_and_chains_stay_bounded(tmp_path: Path) -> None:
    root = tuple(Frame(f"f{i}", Kind.USER, "m.py", 10 + i) for i in range(30))
    # each stack one frame deeper than the last: every one could be based on the one before
    deep = [root + tuple(Frame(f"g{j}", Kind.USER, "n.py", j + 1) for j in range(k)) for k in range(1, 40)]
    leaf = [(*root[:-1], Frame("f29", Kind.USER, "m.py", line)) for line in range(40, 50)]
    data = {s: 1 for s in deep + leaf}
    s = SQLiteStore(tmp_path / "f.db")
    await s.open()
    await s.write([SeriesWindow(Labels.of(a="b"), T0, Profile.from_pairs(data.items()))])
    await s.close()
    with sqlite3.connect(tmp_path / "f.db") as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM stacks")]
        assert max(_chain(conn, i) for i in ids) == sq._MAX_CHAIN
        sizes = dict(conn.execute("SELECT id, length(frames) FROM stacks"))
    # a leaf-line variant of a 30-frame stack: prefix, base, 0 and the difference of the lines
    assert sorted(sizes.values())[:10] == [4] * 10
    s = SQLiteStore(tmp_path / "f.db")  # a cold reader resolves the chains
    await s.open()
    try:
        got = await s.read(ALL, T0, T0 + 60, StackTable(lines=True))
        assert got[0].profile.as_dict() == data
    finally:
        await s.close()


async def test_trie_past_its_bound_starts_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sq, "_MAX_TRIE_NODES", 40)
    stacks = {tuple(Frame(f"f{i}", Kind.USER, "m.py", i + k) for i in range(8)): k + 1 for k in range(30)}
    await _round_trip(tmp_path / "f.db", [stacks])


@pytest.mark.parametrize(("blob", "match"), [(stackcodec.encode(1, 5, []), "base 5"), (b"", "does not decode"),
                                            (b"\x01", "does not decode"), (b"\x00\x09", "does not decode"),
                                            (stackcodec.encode(0, 0, [(1000, 0, 0)]), "frame, file or stack")])
async def test_a_damaged_stack_row_is_named_corruption(tmp_path: Path, blob: bytes, match: str) -> None:
    s = SQLiteStore(tmp_path / "f.db")
    await s.open()
    data = {(Frame("a", Kind.USER, "x.py", 1),): 1}
    await s.write([SeriesWindow(Labels.of(a="b"), T0, Profile.from_pairs(data.items()))])
    await s.close()
    with sqlite3.connect(tmp_path / "f.db") as conn:
        conn.execute("UPDATE stacks SET frames = ? WHERE id = 1", (blob,))
    s = SQLiteStore(tmp_path / "f.db")
    await s.open()
    try:
        with pytest.raises(CorruptionError, match=match):
            await s.read(ALL, T0, T0 + 60, StackTable(lines=True))
    finally:
        await s.close()


# -- a database in encoding 1 ---------------------------------------------------------------
ENCODING_1 = """
CREATE TABLE frames (id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, name TEXT NOT NULL,
                     file INTEGER NOT NULL DEFAULT 0, line INTEGER NOT NULL DEFAULT 0,
                     func INTEGER NOT NULL DEFAULT 0, UNIQUE (name, kind, func, file, line));
CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE stacks (id INTEGER PRIMARY KEY, hash INTEGER NOT NULL UNIQUE, frames BLOB NOT NULL);
"""


def _encoding_1(path: Path, data: dict) -> None:
    """The database the release before encoding 2 wrote for one window of ``data``: a frames row
    per function and per located frame (its function's row in ``func``), stacks as uint32 frame
    ids hashed with blake2b-64, the window in codec 1."""
    conn = sqlite3.connect(path)
    conn.executescript(ENCODING_1 + sq.SCHEMA)
    conn.execute("PRAGMA user_version = 1")
    frames: dict = {}
    files: dict = {}

    def fid(f: Frame) -> int:
        if f not in frames:
            code = sq._KIND_CODE[f.kind]
            if f.located:
                if f.file and f.file not in files:
                    files[f.file] = conn.execute("INSERT INTO files (path) VALUES (?)", (f.file,)).lastrowid
                key = ("", code, fid(f.function()), files.get(f.file, 0), f.line)
            else:
                key = (f.name, code, 0, 0, 0)
            frames[f] = conn.execute("INSERT INTO frames (name, kind, func, file, line) VALUES (?, ?, ?, ?, ?)",
                                     key).lastrowid
        return frames[f]

    ids, counts = [], []
    for s, n in data.items():
        blob = np.array([fid(f) for f in s], dtype="<u4").tobytes()
        h = int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little", signed=True)
        ids.append(conn.execute("INSERT INTO stacks (hash, frames) VALUES (?, ?)", (h, blob)).lastrowid)
        counts.append(n)
    order = np.argsort(ids)
    conn.execute("INSERT INTO series (labels) VALUES (?)", ('[["service_name","app"]]',))
    conn.execute("INSERT INTO windows (series_id, start, total, data) VALUES (1, ?, ?, ?)",
                 (T0, sum(counts), sq.codec.encode(np.array(ids)[order], np.array(counts)[order])))
    conn.commit()
    conn.close()


OLD = {
    (Frame("main", Kind.USER, "app/main.py", 3), Frame("handle", Kind.USER, "app/h.py", 10)): 4,
    (Frame("main", Kind.USER, "app/main.py", 3), Frame("handle", Kind.USER, "app/h.py", 12)): 6,
    (Frame("main"), Frame("handle"), Frame("sys_read", Kind.KERNEL)): 1,
    (Frame("main"), Frame("handle")): 2,
}


async def test_encoding_1_database_reads_unchanged_and_takes_new_stacks(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _encoding_1(path, OLD)
    s = SQLiteStore(path)
    await s.open()
    try:
        for lines in (True, False):
            got = await s.read(ALL, T0, T0 + 60, StackTable(lines=lines))
            assert got[0].profile.as_dict() == (OLD if lines else _by_function(OLD))
        # the same stacks again (found by their encoding-1 hash where unlocated), and new ones
        new = {**OLD, (Frame("main", Kind.USER, "app/main.py", 3), Frame("handle", Kind.USER, "app/h.py", 14)): 5,
               (Frame("main"), Frame("other")): 7}
        await s.write([SeriesWindow(Labels.of(service_name="app"), T0 + 30, Profile.from_pairs(new.items()))])
        got = await s.read(ALL, T0 + 30, T0 + 60, StackTable(lines=True))
        assert got[0].profile.as_dict() == new
        merged = await s.read_merged(ALL, T0, T0 + 60, StackTable(), ("",))
        both = {k: OLD.get(k, 0) + new.get(k, 0) for k in OLD.keys() | new.keys()}
        assert merged[Labels.of({"": ""})].as_dict() == _by_function(both)
    finally:
        await s.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'stacks_v2_from'").fetchone() == ("5",)
        # unlocated stacks were found again, not stored twice; the old layout is kept
        # (the two located ones are stored again once, under their encoding-2 hash: reads sum both ids)
        assert conn.execute("SELECT count(*) FROM stacks").fetchone()[0] == 8
        assert conn.execute("SELECT count(*) FROM stack_ids").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM stacks WHERE id >= 5 AND hash IS NOT NULL").fetchone()[0] >= 2


async def test_new_stacks_are_found_again_within_a_write_past_the_cache_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # stack_ids rows are written in hash order at the end of a write: until then, a stack the
    # (bounded) writer cache forgot is found among the write's new hashes, not stored twice
    monkeypatch.setattr(sq, "_MAX_CACHED_STACKS", 2)
    stacks = [tuple(Frame(f"f{i}", Kind.USER, "m.py", k + i) for i in range(4)) for k in range(6)]
    windows = [SeriesWindow(Labels.of(pod=str(p)), T0, Profile.from_pairs([(s, 1) for s in stacks], StackTable()))
               for p in range(3)]  # each window its own table: the ids map is rebuilt per window
    for _ in range(2):  # the second time, from stack_ids
        s = SQLiteStore(tmp_path / "f.db")
        await s.open()
        try:
            await s.write(windows)
        finally:
            await s.close()
    with sqlite3.connect(tmp_path / "f.db") as conn:
        assert conn.execute("SELECT count(*) FROM stacks").fetchone()[0] == 6
        assert conn.execute("SELECT count(*) FROM stack_ids").fetchone()[0] == 6
