"""The three pprof readers give the same neutral tables (issue 29 item 2).

Every reader (the protobuf library, the numpy reader ``stacks._pprof_read``, the
compiled ``stacks._pprof_c``) turns the wire into :class:`PprofTables` and
:class:`PprofSamples`; what they mean is then decided once. These tests check the
readers' tables are identical, column by column, for profiles built with the
protobuf library (hypothesis), and pin the columns and the shared sample checks
(``stacks._pprof_series``) on hand-built profiles.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacks import _proto
from stacks._pprof_read import Fallback, label_keys, sample_columns
from stacks._pprof_series import check_samples, label_groups
from stacks._pprof_tables import PprofSamples, PprofTables, samples_of_message, tables_of_message, tables_of_scan
from stacks.errors import InputError
from stacks.model import Labels, StackTable
from stacks.pprof import PprofDecoder

try:
    from stacks import _pprof_c
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(f"stacks._pprof_c is not built ({e}): run `pip install -e .` with a C compiler (gcc)") from e

U64 = (1 << 64) - 1


def library_read(raw: bytes, vi: int) -> tuple[PprofTables, PprofSamples]:
    p = _proto.Profile.FromString(raw)
    return tables_of_message(p), samples_of_message(p.sample, vi)


def numpy_read(raw: bytes, vi: int) -> tuple[PprofTables, PprofSamples] | None:
    """The numpy reader's tables, or None where it leaves the profile to the library."""
    p = _proto.ProfileSplit.FromString(raw)
    t = tables_of_message(p)
    try:
        return t, sample_columns(list(p.sample), len(t.types), vi)
    except Fallback:
        return None


def compiled_read(raw: bytes, vi: int) -> tuple[PprofTables, PprofSamples] | None:
    scanned = _pprof_c.scan(raw)
    if scanned is None:
        return None
    t = tables_of_scan(scanned)
    assert t is not None, "the built module is stale (no period_unit)"
    starts, ends = scanned["sample_start"], scanned["sample_end"]
    cols = _pprof_c.sample_columns(raw, starts, ends, vi)
    if cols is None:
        return None
    bound, locations, n_values, value, labelled, hashed = cols
    assert hashed is None  # no index given: nothing hashed
    labels = label_keys(raw, starts, ends, np.flatnonzero(labelled).tolist())
    assert labels is not None
    return t, PprofSamples(bound, locations, n_values, value, labels)


def assert_same(a: tuple[PprofTables, PprofSamples], b: tuple[PprofTables, PprofSamples]) -> None:
    """Every field of the two readers' tables equal, arrays exactly (values and dtype)."""
    for x, y in zip(a, b, strict=True):
        for f in dataclasses.fields(x):
            u, v = getattr(x, f.name), getattr(y, f.name)
            if isinstance(u, np.ndarray):
                assert u.dtype == v.dtype == np.int64, f.name
                assert np.array_equal(u, v), f.name
            else:
                assert u == v, f.name


ids = st.integers(1, 40) | st.integers(1, U64)
values = st.integers(0, 1 << 40) | st.integers(-(1 << 63), (1 << 63) - 1)


@st.composite
def library_profiles(draw: st.DrawFn) -> tuple[bytes, int]:
    """A random pprof built with the protobuf library, and a value column to read.

    Ids repeat, dangle and pass 2**63 at times (the tables carry them as they are; the
    shared rules judge them); samples have any number of values and labels.
    """
    p = _proto.Profile()
    strings = ["", "cpu", "nanoseconds", "samples", "count", "main", "work", "[kernel.kallsyms]", "route", "/a"]
    n_str = len(strings)
    sidx = st.integers(0, n_str - 1)
    p.string_table.extend(s.encode() for s in strings)
    n_types = draw(st.integers(0, 3))
    for _ in range(n_types):
        p.sample_type.add(type=draw(sidx), unit=draw(sidx))
    if draw(st.booleans()):
        p.period_type.type = draw(sidx)
        p.period_type.unit = draw(sidx)
    p.period = draw(st.integers(-5, 1 << 40))
    p.default_sample_type = draw(sidx)
    p.time_nanos = draw(st.integers(0, 1 << 62))
    p.duration_nanos = draw(st.integers(0, 1 << 40))
    for _ in range(draw(st.integers(0, 3))):
        p.mapping.add(id=draw(ids), filename=draw(sidx))
    fids = [draw(ids) for _ in range(draw(st.integers(0, 6)))]
    for fid in fids:
        p.function.add(id=fid, name=draw(sidx), system_name=draw(sidx))
    lids = [draw(ids) for _ in range(draw(st.integers(0, 8)))]
    for lid in lids:
        loc = p.location.add(id=lid, mapping_id=draw(st.integers(0, 3)), address=draw(st.integers(0, U64)))
        for _ in range(draw(st.integers(0, 3))):
            loc.line.add(function_id=draw(st.sampled_from(fids)) if fids and draw(st.booleans()) else 0)
    for _ in range(draw(st.integers(0, 30))):
        smp = p.sample.add()
        smp.location_id.extend(draw(st.lists(st.sampled_from(lids) if lids else ids, max_size=12)))
        k = n_types if draw(st.integers(0, 9)) else draw(st.integers(0, 4))  # mostly the right count
        smp.value.extend(draw(st.lists(values, min_size=k, max_size=k)))
        for _ in range(draw(st.integers(0, 2))):
            smp.label.add(key=draw(sidx), str=draw(sidx), num=draw(st.integers(0, 9)))
    vi = draw(st.integers(0, n_types - 1)) if n_types else -1  # as _head_of picks it
    return p.SerializeToString(), vi


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300, deadline=None)
@given(library_profiles())
def test_every_reader_gives_the_same_tables(profile: tuple[bytes, int]) -> None:
    raw, vi = profile
    lib = library_read(raw, vi)
    compiled = compiled_read(raw, vi)
    assert compiled is not None, "the compiled reader reads whatever the protobuf library writes"
    assert_same(compiled, lib)
    fast = numpy_read(raw, vi)
    if fast is None:  # only 10-byte varints (negative values, ids past 2**63) or odd shapes
        assert any(v < 0 for smp in _proto.Profile.FromString(raw).sample for v in smp.value) or any(
            lid >> 63 for lid in lib[1].locations.view(np.uint64).tolist()), "the numpy reader declined a usual profile"
    else:
        assert_same(fast, lib)


def _profile(samples: list[tuple[list[int], list[int], list[tuple[int, int]]]]) -> bytes:
    """A profile with locations 1 and 2 (functions main, work; 2 inlines work into main) and ``samples``
    as (location ids, values, labels as string indexes)."""
    p = _proto.Profile()
    p.string_table.extend(s.encode() for s in ["", "cpu", "nanoseconds", "main", "work", "route", "/a", "/b"])
    p.sample_type.add(type=1, unit=2)
    p.period = 10
    p.function.add(id=1, name=3)
    p.function.add(id=2, name=4)
    p.location.add(id=1).line.add(function_id=1)
    loc = p.location.add(id=2)
    loc.line.add(function_id=2)
    loc.line.add(function_id=1)
    for locs, vals, labels in samples:
        smp = p.sample.add(location_id=locs, value=vals)
        for k, v in labels:
            smp.label.add(key=k, str=v)
    return p.SerializeToString()


def test_sample_columns_are_exact() -> None:
    raw = _profile([([2, 1], [30], []), ([1], [5], [(5, 6)]), ([], [0], [(5, 0)]), ([2], [7], [(5, 7), (5, 0)])])
    for read in (library_read, numpy_read, compiled_read):
        got = read(raw, 0)
        assert got is not None, read.__name__
        t, sm = got
        assert sm.bound.tolist() == [0, 2, 3, 3, 4]
        assert sm.locations.tolist() == [2, 1, 1, 2]  # leaf first, as on the wire
        assert sm.n_values.tolist() == [1, 1, 1, 1] and sm.value.tolist() == [30, 5, 0, 7]
        assert sm.labels == {1: ((5, 6),), 3: ((5, 7),)}  # the empty value is dropped, so is sample 2's only label
        assert t.location_id.tolist() == [1, 2] and t.location_nlines.tolist() == [1, 2]
        assert t.line_function.tolist() == [1, 2, 1] and t.location_line0.tolist() == [0, 1]


def test_label_groups_go_by_first_positive_sample() -> None:
    raw = _profile([([1], [0], [(5, 7)]), ([1], [3], [(5, 6)]), ([1], [4], [(5, 7)]), ([1], [2], [])])
    t, sm = library_read(raw, 0)
    strings = t.strings
    gcode, codes, sets = label_groups(sm, lambda i, what: strings[i])
    assert gcode.tolist() == [0, 1, 2, 0]  # sample 0 is not positive: it joins no group
    assert sets == [Labels(), Labels.of({"route": "/a"}), Labels.of({"route": "/b"})] and codes == [[0], [1], [2]]


def test_the_first_malformed_sample_is_named() -> None:
    # Sample 1 has two undefined locations: the last on the wire is named (the library met them root first).
    raw = _profile([([1], [1], []), ([9, 1, 8], [1], []), ([1], [1, 2], [])])
    t, sm = library_read(raw, 0)
    with pytest.raises(InputError, match=r"sample 1 refers to location 8, which is not defined"):
        check_samples(sm, t.location_id, 1)
    raw = _profile([([1], [1], []), ([1], [1, 2], []), ([7], [1], [])])
    t, sm = library_read(raw, 0)
    with pytest.raises(InputError, match=r"sample 1 has 2 values but there are 1 sample types"):
        check_samples(sm, t.location_id, 1)
    big = (1 << 64) - 3
    t, sm = library_read(_profile([([big], [1], [])]), 0)
    with pytest.raises(InputError, match=f"location {big}, which"):
        check_samples(sm, t.location_id, 1)
    check_samples(library_read(_profile([([2, 1], [1], [])]), 0)[1], t.location_id, 1)  # none: returns


def test_every_reader_gives_the_shared_errors() -> None:
    """A malformed sample read by a fast reader is declined there and named by the library's read, with
    the one message :func:`check_samples` gives."""
    raw = _profile([([1], [1], []), ([9, 1, 8], [1], [])] * 40)
    for dec in (PprofDecoder(), PprofDecoder(compiled=False)):
        with pytest.raises(InputError, match="sample 1 refers to location 8, which is not defined"):
            dec.decode(raw)
    assert PprofDecoder()._decode_compiled(raw, StackTable()) is None


def test_compiled_columns_hash_each_stack_on_the_way() -> None:
    """Given the runs, the compiled read hashes every stack (its frame numbers, leaf first) as
    ``StackIndex.hash_frames`` does; an undefined location leaves the hashes out, not the columns."""
    from stacks.pprof import _location_lut

    dec = PprofDecoder()
    for raw, want_hashed in ((_profile([([2, 1], [30], []), ([1], [5], [(5, 6)]), ([], [1], [])]), True),
                             (_profile([([2, 1], [30], []), ([1, 9], [5], [])]), False)):
        scanned = _pprof_c.scan(raw)
        t = tables_of_scan(scanned)
        assert t is not None
        runs = dec._runs(t)
        lut = _location_lut(t.location_id)
        assert runs is not None and lut is not None
        run_off, run_len, run_frames = (a.astype(np.int32) for a in runs)
        starts, ends = scanned["sample_start"], scanned["sample_end"]
        got = _pprof_c.sample_columns(raw, starts, ends, 0, lut, run_off, run_len, run_frames, dec._index)
        plain = _pprof_c.sample_columns(raw, starts, ends, 0)
        assert got is not None and plain is not None
        for a, b in zip(got[:5], plain[:5], strict=True):
            assert np.array_equal(a, b)
        if not want_hashed:
            assert got[5] is None
            continue
        ids, h1, h2 = got[5]
        assert ids.tolist() == [-1, -1, -1]  # a fresh index knows no stack
        bound, locs = got[0], got[1]
        for k in range(3):
            rows = [int(lut[lid]) for lid in locs[bound[k] : bound[k + 1]]]
            frames = [int(f) for r in rows for f in run_frames[run_off[r] : run_off[r] + run_len[r]]]
            assert (int(h1[k]), int(h2[k])) == dec._index.hash_frames(np.array(frames, np.int32))
