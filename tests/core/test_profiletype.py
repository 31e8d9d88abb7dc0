"""Profile types (stacks/profiletype.py): ids, derivation rules, units, the query form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stacks.errors import InputError
from stacks.model import Frame, Kind, Profile, StackTable
from stacks.pprof import decode_pprof, divisor_of, encode_pprof
from stacks.profiletype import (
    CPU,
    WALL,
    ProfileType,
    columns,
    derive,
    legacy_name,
    parse_query,
    period_ns,
)


@pytest.mark.parametrize(
    ("text", "unit", "label", "delta"),
    [
        ("process_cpu:cpu:nanoseconds:cpu:nanoseconds", "samples", "CPU", True),
        ("wall:wall:nanoseconds:wall:nanoseconds", "samples", "wall", True),
        ("memory:alloc_space:bytes:space:bytes", "bytes", "alloc space", True),
        ("memory:inuse_objects:count:space:bytes", "count", "in-use objects", False),
        ("mutex:contentions:count:contentions:count", "count", "mutex contentions", True),
        ("block:delay:nanoseconds:contentions:count", "nanoseconds", "block delay", True),
        ("wall:wall:microseconds:wall:microseconds", "samples", "wall", True),
        ("process_cpu:cpu:nanoseconds::nanoseconds", "samples", "CPU", True),  # .NET: no period type
    ],
)
def test_known_types(text: str, unit: str, label: str, delta: bool) -> None:
    t = ProfileType.parse(text)
    assert t.id == text and str(t) == text
    assert (t.unit, t.label, t.delta) == (unit, label, delta)
    d = t.describe()
    assert d["id"] == text and d["unit"] == unit and d["label"] == label
    assert set(d) >= {"id", "name", "sample_type", "sample_unit", "period_type", "period_unit", "unit", "label"}


@pytest.mark.parametrize("bad", ["", "cpu", "a:b:c:d", "a:b:c:d:e:f", "a::c:d:e", "a:b:c:d:e{", "a b:c:d:e:f"])
def test_bad_ids_name_the_form(bad: str) -> None:
    with pytest.raises(InputError, match="name:sample_type:sample_unit:period_type:period_unit"):
        ProfileType.parse(bad)


_part = st.text(alphabet="abcxyz_.-019ABZ", min_size=1, max_size=12)


@given(_part, _part, _part, st.one_of(st.just(""), _part), st.one_of(st.just(""), _part))
def test_id_round_trip(name: str, stype: str, sunit: str, ptype: str, punit: str) -> None:
    t = ProfileType(name, stype, sunit, ptype, punit)
    assert ProfileType.parse(t.id) == t
    assert ProfileType.parse(t.id).id == t.id


def test_period_ns_and_samples_rule() -> None:
    assert period_ns(CPU, 10_000_000) == 10_000_000
    assert period_ns(WALL, 0) == 1  # no period: values are nanoseconds, one "sample" each
    assert period_ns(ProfileType.parse("wall:wall:microseconds:wall:microseconds"), 10_000) == 10_000_000
    assert period_ns(ProfileType.parse("memory:alloc_space:bytes:space:bytes"), 524288) is None
    assert period_ns(ProfileType.parse("block:delay:nanoseconds:contentions:count"), 1) is None


def test_derive_and_columns() -> None:
    # Go heap: four columns, four types, period space/bytes
    heap = [("alloc_objects", "count"), ("alloc_space", "bytes"), ("inuse_objects", "count"), ("inuse_space", "bytes")]
    got = columns("memory", heap, "space", "bytes")
    assert [(i, t.id) for i, t in got] == [
        (0, "memory:alloc_objects:count:space:bytes"),
        (1, "memory:alloc_space:bytes:space:bytes"),
        (2, "memory:inuse_objects:count:space:bytes"),
        (3, "memory:inuse_space:bytes:space:bytes"),
    ]
    # Go CPU: both columns, as Pyroscope keeps them
    cpu = columns("process_cpu", [("samples", "count"), ("cpu", "nanoseconds")], "cpu", "nanoseconds")
    assert [t.id for _, t in cpu] == ["process_cpu:samples:count:cpu:nanoseconds", CPU.id]
    assert derive("wall", "wall", "nanoseconds", "wall", "nanoseconds") == WALL
    assert derive("process_cpu", "alloc-size", "bytes", "", "").id == "process_cpu:alloc_size:bytes::"
    # no period type at all: the period counts in the column's unit
    assert derive("process_cpu", "cpu", "nanoseconds", "", "").id == "process_cpu:cpu:nanoseconds::nanoseconds"


@pytest.mark.parametrize(
    ("types", "name"),
    [
        (["samples", "cpu"], "process_cpu"),
        (["samples"], "process_cpu"),
        (["sample", "wall"], "wall"),
        (["alloc_objects", "alloc_space", "inuse_objects", "inuse_space"], "memory"),
        (["objects", "space"], "memory"),
        (["contentions", "delay"], "mutex"),
        (["goroutine"], "goroutines"),
    ],
)
def test_legacy_names(types: list[str], name: str) -> None:
    assert legacy_name(types) == name


def test_parse_query() -> None:
    t, rest = parse_query('memory:alloc_space:bytes:space:bytes{service_name="api"}')
    assert t == ProfileType.parse("memory:alloc_space:bytes:space:bytes") and rest == '{service_name="api"}'
    assert parse_query(CPU.id) == (CPU, "")
    assert parse_query('{service_name="api"}') == (None, '{service_name="api"}')
    assert parse_query("app{env=prod}") == (None, "app{env=prod}")
    with pytest.raises(InputError):
        parse_query("a:b:c:d:e f{}")


def test_divisor_rule() -> None:
    cpu = [("samples", "count"), ("cpu", "nanoseconds")]
    assert divisor_of(cpu, 1, 10_000_000, "nanoseconds") == 10_000_000
    assert divisor_of(cpu, 0, 10_000_000, "nanoseconds") == 0  # counts stay counts
    assert divisor_of([("delay", "nanoseconds")], 0, 7, "count") == 0  # block delay: raw ns
    assert divisor_of([("wall", "nanoseconds")], 0, 0, "nanoseconds") == 1


def test_decode_each_column_in_its_unit() -> None:
    """encode_pprof writes one column; a hand-built two-column pprof decodes per column."""
    from stacks import _proto

    strings = ["", "alloc_objects", "count", "alloc_space", "bytes", "space", "f", "g"]
    p = _proto.Profile(period=524288)
    p.string_table.extend(s.encode() for s in strings)  # type: ignore[attr-defined]
    p.sample_type.add(type=1, unit=2)
    p.sample_type.add(type=3, unit=4)
    p.period_type.type, p.period_type.unit = 5, 4
    for fid, name in ((1, 6), (2, 7)):
        p.function.add(id=fid, name=name)
        p.location.add(id=fid).line.add(function_id=fid)
    p.sample.add(location_id=[1], value=[3, 3000])
    p.sample.add(location_id=[2, 1], value=[2, 5_000_000])
    raw = p.SerializeToString()
    objs, space = decode_pprof(raw, column=0), decode_pprof(raw, column=1)
    assert (objs.sample_type, objs.merged().total) == ("alloc_objects", 5)
    assert (space.sample_type, space.unit, space.merged().total) == ("alloc_space", "bytes", 5_003_000)
    assert space.types == (("alloc_objects", "count"), ("alloc_space", "bytes"))
    assert (space.period_type, space.period_unit) == ("space", "bytes")
    with pytest.raises(InputError, match="sample type 2"):
        decode_pprof(raw, column=2)


def test_cpu_round_trip_unchanged() -> None:
    t = StackTable()
    prof = Profile.from_pairs([((Frame("main", Kind.USER), Frame("f", Kind.USER)), 7)], t)
    d = decode_pprof(encode_pprof(prof, period_nanos=10_000_000))
    assert d.merged().as_dict() == prof.as_dict()
    assert (d.period_type, d.period_unit, d.types) == ("cpu", "nanoseconds", (("cpu", "nanoseconds"),))
