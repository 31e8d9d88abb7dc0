"""stacks._folded_c: the compiled folded fast path gives exactly what the pure parser gives.

The reference everywhere is the pure path as the aggregator ran it before the
extension: ``folded.parse_counted(body.decode("utf-8"), table, cache=dict)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.ingest import IngestTables, parse_folded
from stacks import compiled, folded
from stacks.errors import FoldedError, InputError
from stacks.model import Frame, Kind, StackTable

try:
    from stacks import _folded_c
except ImportError:  # test_extension_is_built says what to do; the others fail through need()
    _folded_c = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[2]
K = Kind.KERNEL


def need() -> Any:
    """The compiled module; a failure (not a skip) when it is missing."""
    if _folded_c is None:
        pytest.fail("stacks._folded_c is not built: run `pip install -e .` with a C compiler (CI builds it)")
    return _folded_c


def test_extension_is_built() -> None:
    need()
    assert folded.BUILT and compiled.built() == {"pprof": True, "folded": True, "otlp": True}


# -- SipHash ----------------------------------------------------------------------------------------
MASK = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & MASK


def _siphash128_py(key: bytes, data: bytes, c: int, d: int) -> bytes:
    """SipHash-c-d with 128-bit output, straight from the paper's description (slow, for tests)."""
    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:], "little")
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D ^ 0xEE, k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def rounds(n: int) -> None:
        for _ in range(n):
            v[0] = (v[0] + v[1]) & MASK
            v[1] = _rotl(v[1], 13) ^ v[0]
            v[0] = _rotl(v[0], 32)
            v[2] = (v[2] + v[3]) & MASK
            v[3] = _rotl(v[3], 16) ^ v[2]
            v[0] = (v[0] + v[3]) & MASK
            v[3] = _rotl(v[3], 21) ^ v[0]
            v[2] = (v[2] + v[1]) & MASK
            v[1] = _rotl(v[1], 17) ^ v[2]
            v[2] = _rotl(v[2], 32)

    tail = len(data) - len(data) % 8
    words = [int.from_bytes(data[i : i + 8], "little") for i in range(0, tail, 8)]
    words.append(int.from_bytes(data[tail:], "little") | ((len(data) & 0xFF) << 56))
    for m in words:
        v[3] ^= m
        rounds(c)
        v[0] ^= m
    v[2] ^= 0xEE
    rounds(d)
    lo = v[0] ^ v[1] ^ v[2] ^ v[3]
    v[1] ^= 0xDD
    rounds(d)
    hi = v[0] ^ v[1] ^ v[2] ^ v[3]
    return lo.to_bytes(8, "little") + hi.to_bytes(8, "little")


def test_siphash_reference_vectors() -> None:
    # The SipHash-2-4 128-bit reference vectors: key 00..0f, message 00..(n-1).
    c = need()
    key = bytes(range(16))
    assert c.siphash128(key, b"", 2, 4).hex() == "a3817f04ba25a8e66df67214c7550293"
    assert c.siphash128(key, b"\x00", 2, 4).hex() == "da87c1d86b99af44347659119b22fc45"
    assert _siphash128_py(key, b"", 2, 4).hex() == "a3817f04ba25a8e66df67214c7550293"
    with pytest.raises(ValueError, match="16 bytes"):
        c.siphash128(b"short", b"")


@given(st.binary(min_size=16, max_size=16), st.binary(max_size=80), st.sampled_from([(1, 3), (2, 4)]))
def test_siphash_matches_python(key: bytes, data: bytes, rounds: tuple[int, int]) -> None:
    c = need()
    assert c.siphash128(key, data, *rounds) == _siphash128_py(key, data, *rounds)
    if rounds == (1, 3):
        assert c.siphash128(key, data) == c.siphash128(key, data, 1, 3)  # the default is what the index uses


# -- StackIndex and scan --------------------------------------------------------------------------
def test_index_get_put_limit_clear() -> None:
    c = need()
    t = StackTable()
    idx = c.StackIndex(t, 2)
    assert idx.table is t and idx.limit == 2 and len(idx) == 0
    assert idx.get(b"a;b") == -1
    assert idx.put(b"a;b", 0) and idx.put(b"c", 7)
    assert idx.put(b"a;b", 0)  # already there: not a new entry
    assert not idx.put(b"d", 1)  # full: refused, nothing stored
    assert (idx.get(b"a;b"), idx.get(b"c"), idx.get(b"d"), len(idx)) == (0, 7, -1, 2)
    with pytest.raises(ValueError, match="negative"):
        idx.put(b"e", -1)
    idx.clear()
    assert len(idx) == 0 and idx.get(b"a;b") == -1
    with pytest.raises(ValueError, match="limit"):
        c.StackIndex(t, -1)


def test_index_grows_and_keeps_every_entry() -> None:
    c = need()
    idx = c.StackIndex(StackTable(), 1 << 20)
    keys = [f"main;f{i};g{i % 7}".encode() for i in range(20_000)]  # many growths past 1024 slots
    for i, k in enumerate(keys):
        assert idx.put(k, i)
    assert len(idx) == len(keys)
    assert [idx.get(k) for k in keys] == list(range(len(keys)))
    assert idx.get(b"main;f20000;g0") == -1


def test_index_keys_differ_per_index() -> None:
    # Random key per index: the same stacks land in different slots, so no body collides everywhere.
    c = need()
    a, b = c.StackIndex(StackTable(), 10), c.StackIndex(StackTable(), 10)
    a.put(b"x", 1)
    assert b.get(b"x") == -1 and a.get(b"x") == 1


def _ranges(body: bytes) -> list[tuple[int, int, int]]:
    out, pos = [], 0
    for lineno, line in enumerate(body.split(b"\n"), 1):
        out.append((lineno, pos, pos + len(line)))
        pos += len(line) + 1
    return out


def test_scan_exact() -> None:
    c = need()
    idx = c.StackIndex(StackTable(), 100)
    idx.put(b"a;b", 0)
    idx.put(b"c", 1)
    idx.put(b"sp ace", 2)
    body = (
        b"a;b 5\nx 1\r\n\n  \nc 7\nq 99999999999999999999\nd -1\n 3\nc\t4\nc 9223372036854775807\n"
        b"c 9223372036854775808\nsp ace 0012\nc 3\r\na;b 12"
    )
    hits, ids, counts, rest = idx.scan(body)
    assert hits == 5
    assert np.frombuffer(ids, np.int64, hits).tolist() == [0, 1, 1, 2, 0]
    assert np.frombuffer(counts, np.int64, hits).tolist() == [5, 7, 2**63 - 1, 12, 12]
    r = _ranges(body)
    # Line 3 is empty (skipped); 2 (CR), 4 (blanks), 6 (20 digits), 7 (sign), 8 (no stack), 9 (tab),
    # 11 (2**63) and 13 (CR) are left to Python.
    assert rest == [r[i - 1] for i in (2, 4, 6, 7, 8, 9, 11, 13)]
    assert idx.scan(b"")[0::3] == (0, [])
    assert idx.scan(b"\n\n")[0::3] == (0, [])
    assert idx.scan(b"c 1")[0] == 1 and idx.scan(b"c 1\n")[0] == 1
    # Short lines: more hits than the outputs' first guess (a line per 200 bytes), so they grow.
    body = b"".join(b"c %d\n" % i for i in range(5000)) + b"x 1"
    hits, ids, counts, rest = idx.scan(body)
    assert (hits, rest) == (5000, [(5001, len(body) - 3, len(body))])
    assert np.frombuffer(counts, np.int64, hits).tolist() == list(range(5000))
    assert np.frombuffer(ids, np.int64, hits).tolist() == [1] * 5000


# -- parse_bytes against the pure path ----------------------------------------------------------
def _outcome(fn: Any) -> tuple[Any, ...]:
    try:
        p, n = fn()
    except FoldedError as e:
        return ("folded", e.lineno, e.line, str(e))
    except UnicodeDecodeError as e:
        return ("utf8", e.start, e.end, e.reason)
    except OverflowError as e:
        return ("overflow", str(e))
    return ("ok", p.ids.tolist(), p.counts.tolist(), n, p.as_dict())


class Pair:
    """The pure reference and the compiled path, each with its own table and cache, fed the same bodies."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.swap()

    def swap(self) -> None:
        self.ref_table, self.ref_cache = StackTable(), {}
        self.table = StackTable()
        self.index = need().StackIndex(self.table, self.limit)

    def feed(self, body: bytes) -> None:
        ref = _outcome(lambda: folded.parse_counted(
            body.decode("utf-8"), self.ref_table, cache=self.ref_cache, cache_limit=self.limit))
        got = _outcome(lambda: folded.parse_bytes(body, self.table, index=self.index))
        assert got == ref, body
        assert self.tables() == ([self.ref_table.stack(i) for i in range(len(self.ref_table))])
        assert len(self.index) <= self.limit

    def tables(self) -> list[tuple[Frame, ...]]:
        return [self.table.stack(i) for i in range(len(self.table))]


def test_parse_bytes_exact() -> None:
    pair = Pair(1 << 20)
    body = "main;work;sys_read_[k] 5\r\n\n  \nmain;work 2\nmain;[k] sys_read 1\nmain;work 3\nü;🔥 x 4\n".encode()
    for _ in range(3):  # the second and later calls take the compiled hits
        pair.feed(body)
    p, n = folded.parse_bytes(body, pair.table, index=pair.index)
    assert n == 5 and len(pair.index) == 4
    assert p.as_dict() == {
        (Frame("main"), Frame("work"), Frame("sys_read", K)): 5,
        (Frame("main"), Frame("work")): 5,
        (Frame("main"), Frame("sys_read", K)): 1,
        (Frame("ü"), Frame("🔥 x")): 4,
    }
    assert folded.parse_bytes(bytearray(body), pair.table, index=pair.index)[0] == p
    assert folded.parse_bytes(memoryview(body), index=pair.index)[0] == p  # table defaults to the index's


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        (b"a 1\nnocount\n", ("folded", 2)),
        (b"a 1\nb 1\nc x\n", ("folded", 3)),
        (b"\n\na -3\n", ("folded", 3)),
        (b" 5\n", ("folded", 1)),
        (b"a;b 1.5\n", ("folded", 1)),
        (b"a 1\nb \xd9\xa1\n", ("folded", 2)),  # an Arabic-Indic digit is not a count
        (b"a 1\nb x\nc \xff 1\n", ("utf8", 10)),  # a bad byte anywhere wins over a bad line
        (b"a 1\n\xc3\nb x\n", ("utf8", 4)),  # truncated sequence before the bad line
        (b"a 1\nb 1\xed\xa0\x80\n", ("utf8", 7)),  # an encoded surrogate is not UTF-8
        (b"a 9223372036854775808\nb x\n", ("folded", 1)),  # 2**63 is past COUNT_MAX: a bad line
        (b"a 9223372036854775808\n", ("folded", 1, "a 9223372036854775808")),
        (b"a 9223372036854775807\n", ("ok", [0], [2**63 - 1])),
        (b"a 00000000000000000000000001\n", ("ok", [0], [1])),  # many digits, small value
        # Sums past COUNT_MAX saturate rather than wrap negative (and vanish).
        (b"a 4611686018427387904\na 4611686018427387904\nb 1\n", ("ok", [0, 1], [2**63 - 1, 1])),
    ],
)
def test_errors_match_pure(body: bytes, expect: tuple[Any, ...]) -> None:
    pair = Pair(1 << 20)
    pair.feed(b"a 1\nb 1\nc 1\n")  # the good stacks are known: the bad lines sit among hits
    pair.feed(body)
    got = _outcome(lambda: folded.parse_bytes(body, pair.table, index=pair.index))
    assert got[: len(expect)] == expect


def test_new_stacks_before_a_bad_line_are_interned_like_pure() -> None:
    pair = Pair(1 << 20)
    pair.feed(b"x 1\ny;z 2\nx 3\nbad\nw 1\n")  # FoldedError on line 4 after two new stacks
    assert pair.tables() == [(Frame("x"),), (Frame("y"), Frame("z"))]
    pair.feed(b"v 1\n\xff\n")  # not UTF-8: nothing interned
    assert len(pair.table) == 2


def test_index_tied_to_its_table() -> None:
    idx = need().StackIndex(StackTable(), 10)
    with pytest.raises(ValueError, match="another StackTable"):
        folded.parse_bytes(b"a 1\n", StackTable(), index=idx)


@pytest.mark.parametrize("limit", [0, 1, 3])
def test_small_limits_match_pure(limit: int) -> None:
    pair = Pair(limit)
    bodies = [b"a 1\nb 2\nc 3\n", b"c 1\nd 1\na 5\n", b"a;b 1\na 1\nd 2\n", b"a 1\nb 2\nc 3\n"]
    for body in bodies * 2:
        pair.feed(body)
    assert len(pair.index) == limit


# Frames exercise kernel markers, separators inside names, unicode and spaces around counts.
FRAME = st.one_of(
    st.sampled_from(["main", "a", "b b", "do_sys_[k]", "[k] irq", "_[k]", "[k] ", "ü🔥", "x;y", "7", " ", "\r"]),
    st.text(st.characters(exclude_characters="\n", codec="utf-8"), max_size=5),
)
COUNT = st.one_of(
    st.integers(0, 60).map(str),
    st.integers(2**62 - 2, 2**64 + 2).map(str),
    st.sampled_from(["", "-3", "+5", "1_0", "\u0661", "1.5", "0x10", "007", "00000000000000000000001", "9" * 30]),
)
LINE = st.one_of(
    st.builds(
        lambda frames, sep, count, end: ";".join(frames) + sep + count + end,
        st.lists(FRAME, min_size=1, max_size=4),
        st.sampled_from([" ", " ", " ", "  ", "\t", ""]),
        COUNT,
        st.sampled_from(["", "", "", "\r", " ", "\r\r"]),
    ),
    st.sampled_from(["", "  ", "\r", "bad", " 4", "a  3", "\u2028"]),
)
CORRUPT = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    # Lines are drawn from a small pool so bodies repeat stacks (the cached case that matters).
    pool = draw(st.lists(LINE, min_size=1, max_size=6))
    lines = draw(st.lists(st.sampled_from(pool), max_size=10))
    body = ("\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))).encode()
    if draw(st.integers(0, 9)) == 0:  # now and then, bytes that are not UTF-8
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(CORRUPT) + body[at:]
    return body


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(bodies(), st.just(None)), min_size=1, max_size=5), st.sampled_from([2, 1 << 20]))
def test_differential(steps: list[bytes | None], limit: int) -> None:
    """Repeated calls share table and cache; None swaps both sides to fresh tables."""
    pair = Pair(limit)
    for body in steps:
        if body is None:
            pair.swap()
        else:
            pair.feed(body)
            pair.feed(body)  # again: now through the hits


@settings(max_examples=150, deadline=None)
@given(st.lists(bodies(), min_size=1, max_size=4))
def test_aggregator_matches_pure(steps: list[bytes]) -> None:
    """parse_folded with the compiled index vs the pre-extension code, across table swaps (limit 4)."""
    need()
    ours, ref = IngestTables(limit=4, compiled=True), IngestTables(limit=4)
    for body in steps * 2:
        def reference(b: bytes = body) -> Any:
            # The table is renewed (past its limit) when a request starts, before its body is
            # decoded, as parse_folded does; a rejected body may thus still start a fresh table.
            table = ref.current()
            try:
                text = b.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"folded body is not UTF-8 text (byte {e.start}): send 'a;b;c 42' lines") from None
            return folded.parse_counted(text, table, cache=ref.lines, cache_limit=ref.limit)

        got = _ingest_outcome(lambda b=body: parse_folded(b, ours))
        assert got == _ingest_outcome(reference)
        assert isinstance(ours.index, _folded_c.StackIndex) and ours.index.table is ours.table
        assert [ours.table.stack(i) for i in range(len(ours.table))] == [
            ref.table.stack(i) for i in range(len(ref.table))
        ]
        assert not ours.lines  # the compiled path leaves the dict cache alone


def _ingest_outcome(fn: Any) -> tuple[Any, ...]:
    try:
        p, n = fn()
    except InputError as e:
        return ("error", type(e).__name__, str(e))
    except OverflowError as e:
        return ("overflow", str(e))
    return ("ok", p.ids.tolist(), p.counts.tolist(), n)


# -- the aggregator's tables --------------------------------------------------------------------
def test_ingest_tables_index_follows_table_swap() -> None:
    need()
    tables = IngestTables(limit=3, compiled=True)
    first = tables.current()
    p, n = parse_folded(b"a 1\nb 1\nc 1\nd 1\n", tables)
    assert n == 4 and isinstance(tables.index, _folded_c.StackIndex)
    assert tables.index.table is first and len(tables.index) == 3  # bounded by the limit
    p, n = parse_folded(b"d 2\n", tables)  # the table outgrew the limit: fresh table, fresh index
    assert tables.table is not first and tables.index.table is tables.table
    assert len(tables.table) == 1 and len(tables.index) == 1 and p.as_dict() == {(Frame("d"),): 2}
    tables.table = StackTable()  # replaced from outside: the index is not reused for it
    assert tables.folded_index().table is tables.table  # type: ignore[union-attr]


def test_pure_fallback_through_the_aggregator() -> None:
    """Without the extension (or with compiled=False), parse_folded decodes and uses the dict cache."""
    tables = IngestTables(limit=3, compiled=False)
    for _ in range(2):
        p, n = parse_folded(b"a;b 1\r\nc_[k] 2\n\n", tables)
        assert n == 2 and p.as_dict() == {(Frame("a"), Frame("b")): 1, (Frame("c", K),): 2}
    assert tables.index is None and tables.lines == {"a;b": 0, "c_[k]": 1}
    with pytest.raises(InputError, match=r"not UTF-8 text \(byte 4\)"):
        parse_folded(b"a 1\n\xff", tables)
    with pytest.raises(FoldedError, match="line 2"):
        parse_folded(b"a 1\nb x\n", tables)


def test_switch_turns_both_compiled_readers_off_and_on() -> None:
    """IngestTables(compiled=...) (flamewatch serve --compiled-readers false) without a rebuild."""
    need()
    assert compiled.chosen(False) == {"pprof": False, "folded": False, "otlp": False}
    t = IngestTables(compiled=False)
    assert t.in_use() == {"pprof": False, "folded": False, "otlp": False} and not t.pprof.compiled
    assert parse_folded(b"a 1\n", t)[1] == 1
    assert folded.new_index(t.table, compiled=False) is None and t.index is None and t.lines == {"a": 0}
    assert compiled.chosen(True) == {"pprof": True, "folded": True, "otlp": True}
    t = IngestTables()
    assert t.in_use() == {"pprof": True, "folded": True, "otlp": True} and t.pprof.compiled
    assert parse_folded(b"a 1\n", t)[1] == 1
    assert isinstance(t.index, _folded_c.StackIndex) and not t.lines
