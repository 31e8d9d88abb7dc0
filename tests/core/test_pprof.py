"""stacks.pprof: pprof <-> Profile, exact cases, a Go-style profile and properties."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacks import _proto
from stacks.errors import InputError
from stacks.model import Frame, Kind, Labels, Profile, StackTable
from stacks.pprof import DecodedProfile, decode_pprof, encode_pprof

U, K = Frame.user, Frame.kernel


# --- a tiny protobuf writer that encodes the way Go's runtime/pprof does ---
# (packed repeated fields only when there are more than two values, zero
# scalars omitted), so the decoder sees the other legal wire shapes too.


class GoWriter:
    def __init__(self) -> None:
        self.buf = bytearray()

    def _varint(self, x: int) -> None:
        x &= (1 << 64) - 1
        while x >= 0x80:
            self.buf.append(x & 0x7F | 0x80)
            x >>= 7
        self.buf.append(x)

    def _tag(self, field: int, wire: int) -> None:
        self._varint(field << 3 | wire)

    def int64(self, field: int, x: int) -> GoWriter:
        if x:
            self._tag(field, 0)
            self._varint(x)
        return self

    def bool(self, field: int, x: bool) -> GoWriter:
        return self.int64(field, int(x))

    def int64s(self, field: int, xs: list[int]) -> GoWriter:
        if len(xs) > 2:
            inner = GoWriter()
            for x in xs:
                inner._varint(x)
            return self.bytes(field, bytes(inner.buf))
        for x in xs:
            self._tag(field, 0)
            self._varint(x)
        return self

    def bytes(self, field: int, data: bytes) -> GoWriter:
        self._tag(field, 2)
        self._varint(len(data))
        self.buf += data
        return self

    def msg(self, field: int, w: GoWriter) -> GoWriter:
        return self.bytes(field, bytes(w.buf))


def go_cpu_profile() -> bytes:
    """A gzip CPU profile laid out like Go's net/http/pprof output, from known data.

    Stacks (root first), at 100 Hz:
      runtime.main;main.main;main.work;main.helper   7  (main.helper inlined into main.work)
      runtime.main;main.main;main.spin               3
      runtime.main;main.main;0x4567ab                1  (unsymbolised PC)
    """
    strings = [
        "", "samples", "count", "cpu", "nanoseconds", "/usr/local/bin/app", "abc123",
        "runtime.main", "main.main", "main.work", "main.helper", "main.spin",
        "/usr/local/go/src/runtime/proc.go", "/src/app/main.go",
    ]  # fmt: skip
    si = {s: i for i, s in enumerate(strings)}
    w = GoWriter()
    for typ, unit in (("samples", "count"), ("cpu", "nanoseconds")):
        w.msg(1, GoWriter().int64(1, si[typ]).int64(2, si[unit]))
    period = 10_000_000
    # Location ids: 1 runtime.main, 2 main.main, 3 main.work+inlined helper, 4 main.spin, 5 bare PC.
    for locs, n in (([3, 2, 1], 7), ([4, 2, 1], 3), ([5, 2, 1], 1)):
        w.msg(2, GoWriter().int64s(1, locs).int64s(2, [n, n * period]))
    w.msg(
        3,
        GoWriter()
        .int64(1, 1)
        .int64(2, 0x400000)
        .int64(3, 0x800000)
        .int64(5, si["/usr/local/bin/app"])
        .int64(6, si["abc123"])
        .bool(7, True)
        .bool(8, True)
        .bool(9, True),
    )
    loc_lines = {1: [(1, 250)], 2: [(2, 20)], 3: [(4, 31), (3, 12)], 4: [(5, 40)], 5: []}
    for lid, lines in loc_lines.items():
        lw = GoWriter().int64(1, lid).int64(2, 1).int64(3, 0x4567A0 + lid if lid != 5 else 0x4567AB)
        for fid, line in lines:
            lw.msg(4, GoWriter().int64(1, fid).int64(2, line))
        w.msg(4, lw)
    funcs = [
        (1, "runtime.main", "/usr/local/go/src/runtime/proc.go"),
        (2, "main.main", "/src/app/main.go"),
        (3, "main.work", "/src/app/main.go"),
        (4, "main.helper", "/src/app/main.go"),
        (5, "main.spin", "/src/app/main.go"),
    ]
    for fid, name, fname in funcs:
        w.msg(5, GoWriter().int64(1, fid).int64(2, si[name]).int64(3, si[name]).int64(4, si[fname]))
    for s in strings:
        w.bytes(6, s.encode())
    w.int64(9, 1_700_000_000_000_000_000).int64(10, 10_000_000_000)
    w.msg(11, GoWriter().int64(1, si["cpu"]).int64(2, si["nanoseconds"]))
    w.int64(12, period)
    return gzip.compress(bytes(w.buf))


def test_go_style_cpu_profile() -> None:
    d = decode_pprof(go_cpu_profile())
    assert (d.sample_type, d.unit, d.period, d.period_type) == ("cpu", "nanoseconds", 10_000_000, "cpu")
    assert (d.time_nanos, d.duration_nanos) == (1_700_000_000_000_000_000, 10_000_000_000)
    assert len(d.series) == 1
    labels, prof = d.series[0]
    assert labels == Labels()
    rt, mm = U("runtime.main"), U("main.main")
    assert prof.as_dict() == {
        (rt, mm, U("main.work"), U("main.helper")): 7,
        (rt, mm, U("main.spin")): 3,
        (rt, mm, U("0x4567ab")): 1,
    }


def _profile(**kw: object) -> _proto.Profile:
    """A protobuf Profile with a string table built from the ``strings`` keyword."""
    strings = kw.pop("strings")
    p = _proto.Profile(**kw)
    p.string_table.extend(s.encode() for s in strings)  # type: ignore[attr-defined]
    return p


def _simple(values: list[int], sample_types: list[tuple[int, int]], period: int = 0, **kw: object) -> bytes:
    strings = ["", "cpu", "nanoseconds", "samples", "count", "f", "alloc_space", "bytes"]
    p = _profile(strings=strings, period=period, **kw)
    for t, u in sample_types:
        p.sample_type.add(type=t, unit=u)
    p.function.add(id=1, name=5)
    p.location.add(id=1).line.add(function_id=1)
    p.sample.add(location_id=[1], value=values)
    return p.SerializeToString()


def _count(data: bytes) -> tuple[str, int]:
    d = decode_pprof(data)
    return d.sample_type, (d.series[0][1].total if d.series else 0)


def test_sample_type_choice_and_conversion() -> None:
    cpu, samples, alloc = (1, 2), (3, 4), (6, 7)
    # cpu/nanoseconds wins, divided by the period
    assert _count(_simple([5, 50_000_000], [samples, cpu], period=10_000_000)) == ("cpu", 5)
    # samples/count beats anything but cpu
    assert _count(_simple([9, 4], [alloc, samples], period=10_000_000)) == ("samples", 4)
    # neither: the default_sample_type, else the last
    assert _count(_simple([9, 4], [alloc, (6, 4)], default_sample_type=6)) == ("alloc_space", 9)
    assert _count(_simple([9, 4], [alloc, (5, 4)])) == ("f", 4)


@pytest.mark.parametrize(
    ("value", "period", "expected"),
    [
        (14_999_999, 10_000_000, 1),
        (15_000_000, 10_000_000, 2),
        (1, 10_000_000, 1),  # a non-zero value is at least one sample
        (0, 10_000_000, 0),
        (-10_000_000, 10_000_000, 0),  # negative values are dropped
        (12_345, 0, 12_345),  # no period: raw value
        (10**18, 1, 10**18),  # exact int64, no float rounding
    ],
)
def test_nanoseconds_to_samples(value: int, period: int, expected: int) -> None:
    assert _count(_simple([value], [(1, 2)], period=period)) == ("cpu", expected)


def test_inlined_kernel_and_name_fallbacks() -> None:
    strings = ["", "cpu", "nanoseconds", "[kernel.kallsyms]", "/bin/app", "leaf", "inl_outer",
               "sysname_only", "do_syscall_64_[k]", "main", "[kernel.kallsyms]_text"]  # fmt: skip
    p = _profile(strings=strings, period=10)
    p.sample_type.add(type=1, unit=2)
    p.mapping.add(id=1, filename=3)
    p.mapping.add(id=2, filename=4)
    p.mapping.add(id=3, filename=10)
    p.function.add(id=1, name=5)
    p.function.add(id=2, name=6)
    p.function.add(id=3, system_name=7)
    p.function.add(id=4, name=8)
    p.function.add(id=5, name=9)
    p.function.add(id=6)  # no name at all
    main = p.location.add(id=10, mapping_id=2)
    main.line.add(function_id=5)
    inl = p.location.add(id=11, mapping_id=2)  # leaf inlined into inl_outer
    inl.line.add(function_id=1)
    inl.line.add(function_id=2)
    p.location.add(id=12, mapping_id=2).line.add(function_id=3)
    p.location.add(id=13, mapping_id=1).line.add(function_id=4)  # kernel mapping; suffix stripped too
    p.location.add(id=14, mapping_id=3, address=0xFFFF1234)  # kernel mapping, no symbol
    p.location.add(id=15, mapping_id=2)  # no address, no lines -> mapping file
    p.location.add(id=16, address=0xABC).line.add(function_id=6)  # nameless function -> address
    p.location.add(id=17).line.add(function_id=4)  # no mapping but _[k] suffix -> kernel
    p.sample.add(location_id=[11, 10], value=[30])
    p.sample.add(location_id=[14, 13, 12, 10], value=[20])
    p.sample.add(location_id=[16, 15, 10], value=[10])
    p.sample.add(location_id=[17, 10], value=[10])
    d = decode_pprof(p.SerializeToString())
    assert d.series[0][1].as_dict() == {
        (U("main"), U("inl_outer"), U("leaf")): 3,
        (U("main"), U("sysname_only"), K("do_syscall_64"), K("0xffff1234")): 2,
        (U("main"), U("/bin/app"), U("0xabc")): 1,
        (U("main"), K("do_syscall_64")): 1,
    }


def test_sample_labels_split_series() -> None:
    strings = ["", "cpu", "nanoseconds", "f", "g", "route", "/admin", "thread_id", "/home", "bytes"]
    p = _profile(strings=strings, period=1)
    p.sample_type.add(type=1, unit=2)
    p.function.add(id=1, name=3)
    p.function.add(id=2, name=4)
    p.location.add(id=1).line.add(function_id=1)
    p.location.add(id=2).line.add(function_id=2)
    p.sample.add(location_id=[1], value=[5])
    s = p.sample.add(location_id=[1], value=[2])
    s.label.add(key=7, num=42, num_unit=9)  # numeric label: ignored
    s = p.sample.add(location_id=[2, 1], value=[3])
    s.label.add(key=5, str=6)
    s.label.add(key=7, str=8)
    s = p.sample.add(location_id=[2, 1], value=[4])  # same label set, other order
    s.label.add(key=7, str=8)
    s.label.add(key=5, str=6)
    s = p.sample.add(location_id=[1], value=[1])
    s.label.add(key=5, str=8)
    d = decode_pprof(p.SerializeToString())
    got = {labels: prof.as_dict() for labels, prof in d.series}
    assert got == {
        Labels(): {(U("f"),): 7},
        Labels.of(route="/admin", thread_id="/home"): {(U("f"), U("g")): 7},
        Labels.of(route="/home"): {(U("f"),): 1},
    }
    tables = {id(prof.table) for _, prof in d.series}
    assert len(tables) == 1
    assert d.merged().as_dict() == {(U("f"),): 8, (U("f"), U("g")): 7}


def test_decodes_onto_a_shared_table() -> None:
    table = StackTable()
    a = Profile.from_pairs([((U("a"), U("b")), 3)])
    b = Profile.from_pairs([((U("a"), U("b")), 1), ((U("c"),), 2)])
    da = decode_pprof(encode_pprof(a), table).series[0][1]
    db = decode_pprof(encode_pprof(b), table).series[0][1]
    assert da.table is table and db.table is table
    assert len(table) == 2
    assert da == a and db == b


def test_empty_profiles() -> None:
    assert decode_pprof(b"").series == []
    d = decode_pprof(encode_pprof(Profile.empty()))
    assert d.series == [] and d.sample_type == "cpu"
    assert d.merged() == Profile.empty()


def test_encode_layout() -> None:
    prof = Profile.from_pairs([((U("main"), K("sys_read")), 4)])
    raw = encode_pprof(prof, period_nanos=1_000_000, time_nanos=5, duration_nanos=6, sample_labels={"r": "x"})
    p = _proto.Profile.FromString(raw)
    st_ = [s.decode() for s in p.string_table]
    assert st_[0] == ""
    assert [(st_[t.type], st_[t.unit]) for t in p.sample_type] == [("cpu", "nanoseconds")]
    assert (p.period, p.time_nanos, p.duration_nanos) == (1_000_000, 5, 6)
    assert [list(s.value) for s in p.sample] == [[4_000_000]]
    leaf = {loc.id: loc for loc in p.location}[p.sample[0].location_id[0]]
    assert st_[{m.id: m for m in p.mapping}[leaf.mapping_id].filename] == "[kernel.kallsyms]"
    assert [(st_[lb.key], st_[lb.str]) for lb in p.sample[0].label] == [("r", "x")]
    # samples/count: the raw count is written
    p2 = _proto.Profile.FromString(encode_pprof(prof, sample_type=("samples", "count")))
    assert [list(s.value) for s in p2.sample] == [[4]]


# --- malformed input: always InputError, with a message naming the problem ---


def _malformed(mutate) -> bytes:  # type: ignore[no-untyped-def]
    p = _proto.Profile.FromString(encode_pprof(Profile.from_pairs([((U("a"), K("b")), 2)])))
    mutate(p)
    return p.SerializeToString()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x0a\x05ab", "not a valid protobuf"),
        (b"\x1f\x8b\x08\x00garbage", "gzip body is (corrupt|truncated)"),
        (_malformed(lambda p: setattr(p.function[0], "name", 99)), "function 1 name refers to string 99"),
        (_malformed(lambda p: setattr(p.sample_type[0], "unit", -1)), "sample_type.unit refers to string -1"),
        (_malformed(lambda p: p.sample[0].location_id.append(77)), "refers to location 77"),
        (_malformed(lambda p: setattr(p.location[0].line[0], "function_id", 9)), "refers to function 9"),
        (_malformed(lambda p: setattr(p.location[1], "mapping_id", 5)), "refers to mapping 5"),
        (_malformed(lambda p: p.sample[0].value.append(1)), "has 2 values but there are 1 sample types"),
        (_malformed(lambda p: p.sample_type.pop()), "samples but no sample_type"),
        (_malformed(lambda p: p.string_table.__setitem__(0, b"x")), "string_table\\[0\\] must be the empty"),
        (_malformed(lambda p: p.sample[0].label.add(key=1, str=1000)), "label value refers to string 1000"),
        (_malformed(lambda p: setattr(p, "default_sample_type", 1000)), "default_sample_type"),
    ],
)
def test_malformed_is_input_error(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        decode_pprof(data)


def test_decompression_limit() -> None:
    data = gzip.compress(encode_pprof(Profile.from_pairs([((U("x" * 5000),), 1)])))
    with pytest.raises(InputError, match="past the limit of 1000 bytes"):
        decode_pprof(data, max_decompressed=1000)


# --- properties ---

_names = st.text(min_size=1, max_size=12).filter(lambda s: not s.endswith("_[k]"))
_frames = st.builds(Frame, _names, st.sampled_from([Kind.USER, Kind.KERNEL]), file=st.just(""), line=st.just(0))
_profiles = st.lists(
    st.tuples(st.lists(_frames, max_size=6).map(tuple), st.integers(1, 10**6)), max_size=20
).map(Profile.from_pairs)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(
    _profiles,
    st.sampled_from([("cpu", "nanoseconds"), ("samples", "count"), ("wall", "nanoseconds")]),
    st.sampled_from([10_000_000, 1, 1_000_003]),
    st.dictionaries(st.text(min_size=1, max_size=5), st.text(min_size=1, max_size=5), max_size=3),
    st.booleans(),
)
def test_round_trip_property(
    prof: Profile, sample_type: tuple[str, str], period: int, labels: dict[str, str], zipped: bool
) -> None:
    raw = encode_pprof(prof, period_nanos=period, sample_type=sample_type, sample_labels=labels, time_nanos=7)
    d = decode_pprof(gzip.compress(raw) if zipped else raw)
    assert isinstance(d, DecodedProfile)
    assert (d.sample_type, d.unit, d.period, d.time_nanos) == (*sample_type, period, 7)
    if len(prof) == 0:
        assert d.series == []
    else:
        assert len(d.series) == 1
        assert d.series[0][0] == Labels.of(labels)
        assert d.series[0][1] == prof  # kinds are part of the frames compared


@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        decode_pprof(data)
    except InputError:
        pass


_VALID = encode_pprof(
    Profile.from_pairs([((U("main"), U("f"), K("k")), 3), ((U("main"),), 1)]), sample_labels={"a": "b"}
)


@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, len(_VALID)))  # fmt: skip
def test_fuzz_mutated_valid_profile(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_VALID)
    for pos, byte in edits:
        data[pos] = byte
    try:
        d = decode_pprof(bytes(data[:cut]) if cut % 2 else bytes(data))
    except InputError:
        return
    for _, prof in d.series:
        assert (prof.counts > 0).all()


def test_values_are_summed_before_dividing() -> None:
    strings = ["", "cpu", "nanoseconds", "f"]
    p = _profile(strings=strings, period=10_000_000)
    p.sample_type.add(type=1, unit=2)
    p.function.add(id=1, name=3)
    p.location.add(id=1).line.add(function_id=1)
    for _ in range(3):
        p.sample.add(location_id=[1], value=[5_000_000])  # 3 x half a period
    assert _count(p.SerializeToString()) == ("cpu", 2)
    p.period = 0  # raw values: two int64 maxima add up past int64
    p.sample.add(location_id=[1], value=[2**63 - 1])
    p.sample.add(location_id=[1], value=[2**63 - 1])
    with pytest.raises(InputError, match="past 2\\*\\*63"):
        decode_pprof(p.SerializeToString())


def _zero_function_ids(p: _proto.Profile) -> None:
    """The .NET shape: one function per location, in location order, every function id 0."""
    assert len(p.function) == len(p.location)
    for f in p.function:
        f.id = 0


def test_profiles_whose_function_ids_are_all_zero_read_by_location_order() -> None:
    prof = Profile.from_pairs([((U("Main"), U("Work"), U("Spin")), 5), ((U("Main"), U("Idle")), 2)])
    broken = _proto.Profile.FromString(encode_pprof(prof))
    # encode_pprof writes function i for location i with the same id: the repair's premise
    assert [f.id for f in broken.function] == [loc.line[0].function_id for loc in broken.location]
    _zero_function_ids(broken)
    assert decode_pprof(broken.SerializeToString()).merged().as_dict() == prof.as_dict()
    # not the .NET shape (a function id set, or counts differ): still a dangling reference
    other = _proto.Profile.FromString(broken.SerializeToString())
    other.function[0].id = 42
    with pytest.raises(InputError, match="which is not defined"):
        decode_pprof(other.SerializeToString())
    fewer = _proto.Profile.FromString(broken.SerializeToString())
    fewer.function.pop()
    with pytest.raises(InputError, match="which is not defined"):
        decode_pprof(fewer.SerializeToString())
