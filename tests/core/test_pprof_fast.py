"""The fast pprof reader equals the protobuf-library decoder (differential tests).

``decode_pprof`` reads samples by hand (numpy for the usual shapes, a small
Python reader for the rest) and falls back to ``_decode_library`` for
anything unusual. These tests build random valid profiles at the wire level,
in every legal shape (packed and unpacked repeated fields, labels, inlined
lines, kernel mappings, sparse and huge ids, unknown fields, any field
order), and check both decoders give the same series, the same metadata and
the same stack table; on broken bytes, the same result or the same error.
"""

from __future__ import annotations

import gzip
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacks import pprof
from stacks.errors import InputError
from stacks.model import Frame, Kind, Labels, Profile, StackTable
from stacks.pprof import encode_pprof


def _numpy_decoder() -> pprof.PprofDecoder:
    """A decoder on which every profile, small ones too, takes the numpy reader.

    Small profiles normally go to the library. The compiled reader is off too (it is tested in
    test_pprof_compiled.py), so these tests cover the path an install without a C compiler takes.
    """
    dec = pprof.PprofDecoder(compiled=False)
    dec.fast_min_samples = 0
    return dec


# One decoder for the whole module, so its caches carry across decodes and tests.
DEC = _numpy_decoder()
_decode_fast = DEC._decode_fast
_decode_library = DEC._decode_library


def decode_pprof(data: bytes, table: StackTable | None = None, **kw: Any) -> pprof.DecodedProfile:
    """:func:`stacks.pprof.decode_pprof` with :data:`DEC`."""
    return pprof.decode_pprof(data, table, decoder=DEC, **kw)


def _varint(x: int) -> bytes:
    x &= (1 << 64) - 1
    out = bytearray()
    while x >= 0x80:
        out.append(x & 0x7F | 0x80)
        x >>= 7
    out.append(x)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _len(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _ints(field: int, xs: list[int], packed: bool) -> bytes:
    if packed:
        return _len(field, b"".join(map(_varint, xs))) if xs else b""
    return b"".join(_key(field, 0) + _varint(x) for x in xs)


def _int(field: int, x: int) -> bytes:
    return _key(field, 0) + _varint(x) if x else b""


NAMES = ["main", "work", "", "read_[k]", "f\u00e9", "alloc", "loop"]
TYPES = [("cpu", "nanoseconds"), ("samples", "count"), ("alloc_space", "bytes"), ("wall", "nanoseconds")]


ID_BASES = [0, 0, 0, 0, 1000, 1 << 40, (1 << 63) + 5]  # dense, sparse, huge ids


@st.composite
def wire_profiles(draw: st.DrawFn, id_bases: list[int] = ID_BASES) -> bytes:
    """A valid pprof in a random legal wire shape (ids start above one of ``id_bases``)."""
    strings = [""]

    def sx(text: str) -> int:
        if text not in strings:
            strings.append(text)
        return strings.index(text)

    big = draw(st.sampled_from(id_bases))
    n_funcs = draw(st.integers(1, 6))
    funcs = []
    for f in range(n_funcs):
        name = draw(st.sampled_from(NAMES))
        funcs.append(_int(1, big + f + 1) + _int(2, sx(name)) + _int(3, sx(draw(st.sampled_from(NAMES)))))
    maps = []
    map_ids = [0]
    for m, file in enumerate(draw(st.lists(st.sampled_from(["[kernel.kallsyms]", "/lib/x.so", ""]), max_size=2))):
        maps.append(_int(1, m + 1) + _int(5, sx(file)) + _int(7, 1))
        map_ids.append(m + 1)
    n_locs = draw(st.integers(1, 8))
    locs = []
    for lo in range(n_locs):
        lines = b"".join(
            _len(4, _int(1, draw(st.sampled_from([0] + [big + f + 1 for f in range(n_funcs)])))
                 + _int(2, draw(st.integers(0, 99))))
            for _ in range(draw(st.integers(0, 3) if draw(st.booleans()) else st.just(1)))
        )
        locs.append(_int(1, big + lo + 1) + _int(2, draw(st.sampled_from(map_ids)))
                    + _int(3, draw(st.sampled_from([0, 0x4005D0]))) + lines)
    n_types = draw(st.integers(1, 3))
    types = draw(st.permutations(TYPES))[:n_types]
    type_msgs = [_int(1, sx(t)) + _int(2, sx(u)) for t, u in types]
    label_keys = [sx("route"), sx("tid")]
    label_vals = [0, sx("/admin"), sx("/api"), sx("")]
    samples = []
    for _ in range(draw(st.integers(0, 25))):
        ids = draw(st.lists(st.integers(1, n_locs), max_size=7))
        rare_negative = st.integers(-3, -1) if draw(st.integers(0, 30)) == 0 else st.integers(0, 3)
        values = draw(st.lists(st.one_of(st.integers(1, 10**12), rare_negative),
                               min_size=n_types, max_size=n_types))
        parts = [
            _ints(1, [big + i for i in ids], draw(st.integers(0, 3)) > 0),
            _ints(2, values, draw(st.booleans())),
        ]
        for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
            parts.append(_len(3, _int(1, draw(st.sampled_from(label_keys)))
                              + _int(2, draw(st.sampled_from(label_vals))) + _int(3, draw(st.integers(0, 9)))))
        if draw(st.integers(0, 9)) == 0:
            parts.append(_int(9, 7))  # an unknown varint field
        if draw(st.integers(0, 19)) == 0:
            parts.append(_key(10, 1) + bytes([0x80, 1, 2, 3, 4, 5, 6, 0xFF]))  # unknown fixed64
        if draw(st.integers(0, 4)) == 0:
            parts = draw(st.permutations(parts))
        samples.append(b"".join(parts))
    period = draw(st.sampled_from([0, 10_000_000, 1_000_003]))
    sections = [
        b"".join(_len(1, m) for m in type_msgs),
        b"".join(_len(2, s) for s in samples),
        b"".join(_len(3, m) for m in maps),
        b"".join(_len(4, m) for m in locs),
        b"".join(_len(5, m) for m in funcs),
        _int(9, 1_700_000_000_000_000_000) + _int(10, 10**10) + _int(12, period),
        _len(11, _int(1, sx("cpu")) + _int(2, sx("nanoseconds"))),
    ]
    if draw(st.integers(0, 3)) == 0:
        sections = draw(st.permutations(sections))
    sections.append(b"".join(_len(6, t.encode()) for t in strings))
    return b"".join(sections)


def _same(a: pprof.DecodedProfile, b: pprof.DecodedProfile) -> None:
    assert [lab for lab, _ in a.series] == [lab for lab, _ in b.series]
    for (_, pa), (_, pb) in zip(a.series, b.series, strict=True):
        assert pa == pb
        assert pa.ids.tolist() == pb.ids.tolist()
        assert pa.counts.tolist() == pb.counts.tolist()
    assert (a.sample_type, a.unit, a.period, a.period_type, a.time_nanos, a.duration_nanos) == (
        b.sample_type, b.unit, b.period, b.period_type, b.time_nanos, b.duration_nanos)


def _outcome(fn, data: bytes, table: StackTable) -> object:  # type: ignore[no-untyped-def]
    try:
        return fn(data, table)
    except InputError as e:
        return str(e)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200, deadline=None)
@given(wire_profiles())
def test_fast_reader_equals_library(data: bytes) -> None:
    fast_table, lib_table = StackTable(), StackTable()
    got = decode_pprof(data, fast_table)
    want = _decode_library(data, lib_table)
    _same(got, want)
    # Stacks are interned in the same order, so ids match too.
    assert [fast_table.stack(i) for i in range(len(fast_table))] == [
        lib_table.stack(i) for i in range(len(lib_table))]


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=40, deadline=None)
@given(st.lists(wire_profiles(), min_size=2, max_size=4))
def test_shared_table_and_stack_cache_across_decodes(profiles: list[bytes]) -> None:
    """The cross-decode stack cache gives the same ids as interning every time."""
    fast_table, lib_table = StackTable(), StackTable()
    for data in profiles + profiles[::-1]:
        _same(decode_pprof(data, fast_table), _decode_library(data, lib_table))
    assert len(fast_table) == len(lib_table)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150, deadline=None)
@given(wire_profiles(), st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 1 << 20))
def test_broken_bytes_give_the_same_result_or_error(data: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    buf = bytearray(data)
    for pos, byte in edits:
        if buf:
            buf[pos % len(buf)] = byte
    broken = bytes(buf[: max(1, cut % (len(buf) + 1))])
    got = _outcome(decode_pprof, broken, StackTable())
    want = _outcome(_decode_library, broken, StackTable())
    if isinstance(want, str):
        assert got == want
    else:
        assert not isinstance(got, str)
        _same(got, want)  # type: ignore[arg-type]


def _profile(n: int, depth: int) -> Profile:
    names = [f"fn_{i}" for i in range(50)]
    pairs = [(tuple(Frame(names[(i * 7 + d) % 50], Kind.KERNEL if d == depth - 1 and i % 3 == 0 else Kind.USER)
                    for d in range(depth)), i % 5 + 1) for i in range(n)]
    return Profile.from_pairs(pairs)


def test_usual_shapes_take_the_fast_path() -> None:
    """encode_pprof output (and its gzip) is read without the library fallback, exactly."""
    prof = _profile(200, 12)
    raw = encode_pprof(prof, sample_labels={"route": "/x"})
    table = StackTable()
    fast = _decode_fast(raw, table)
    assert fast is not None
    assert fast.series[0][0] == Labels.of({"route": "/x"})
    assert fast.series[0][1] == prof
    assert decode_pprof(gzip.compress(encode_pprof(prof)), table).merged() == prof


def test_odd_shapes_fall_back_to_the_library() -> None:
    # A negative value is a 10-byte varint: the library path decodes it.
    data = (_len(1, _int(1, 1) + _int(2, 2)) + _len(2, _ints(1, [1], True) + _ints(2, [-5], True))
            + _len(2, _ints(1, [1], True) + _ints(2, [7], True))
            + _len(4, _int(1, 1) + _len(4, _int(1, 1))) + _len(5, _int(1, 1) + _int(2, 3))
            + b"".join(_len(6, t) for t in (b"", b"samples", b"count", b"main")))
    assert _decode_fast(data, StackTable()) is None
    d = decode_pprof(data)
    assert d.merged().as_dict() == {(Frame("main", Kind.USER),): 7}
