"""The compiled pprof reader (``stacks._pprof_c``) equals the protobuf-library decoder.

``decode_pprof`` tries the compiled reader first. These tests call it
directly (``_decode_compiled``) on the random wire-level profiles of
test_pprof_fast.py, and check it takes the usual shapes itself, gives the
library's result exactly (series, metadata, the stack table), declines
(None) rather than guess on odd or broken input, and keeps its stack index
right across decodes, table swaps and cache resets.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacks import pprof
from stacks.model import Frame, Kind, Profile, StackTable
from stacks.pprof import DecodedProfile, PprofDecoder, encode_pprof
from tests.core.test_pprof_fast import _same, _varint, wire_profiles

# ``pip install -e .`` builds the extension (CI does); a missing one is a broken install.
try:
    from stacks import _pprof_c
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(f"stacks._pprof_c is not built ({e}): run `pip install -e .` with a C compiler (gcc)") from e

DENSE = [0, 0, 1000]  # location ids the compiled reader indexes directly

# One decoder for the whole module, so its caches and stack index carry across decodes and tests.
DEC = PprofDecoder()
_decode_compiled = DEC._decode_compiled
_decode_library = DEC._decode_library


def decode_pprof(data: bytes, table: StackTable | None = None) -> DecodedProfile:
    """:func:`stacks.pprof.decode_pprof` with :data:`DEC`."""
    return pprof.decode_pprof(data, table, decoder=DEC)


def _tables_equal(a: StackTable, b: StackTable) -> None:
    assert [a.stack(i) for i in range(len(a))] == [b.stack(i) for i in range(len(b))]


def test_the_extension_is_built_and_used() -> None:
    assert pprof._pprof_c is _pprof_c and pprof.BUILT and DEC.compiled and DEC._index is not None


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300, deadline=None)
@given(wire_profiles(DENSE))
def test_compiled_reader_equals_library(data: bytes) -> None:
    ct, lt = StackTable(), StackTable()
    got = _decode_compiled(data, ct)
    # Every valid profile with dense ids is the compiled reader's own work.
    assert got is not None
    _same(got, _decode_library(data, lt))
    _tables_equal(ct, lt)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=60, deadline=None)
@given(wire_profiles([1 << 40, (1 << 63) + 5]))
def test_sparse_ids_are_declined_and_still_decoded(data: bytes) -> None:
    assert _decode_compiled(data, StackTable()) is None
    _same(decode_pprof(data, StackTable()), _decode_library(data, StackTable()))


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=40, deadline=None)
@given(st.lists(wire_profiles(DENSE), min_size=2, max_size=5))
def test_stack_index_across_decodes_and_tables(profiles: list[bytes]) -> None:
    """Repeated stacks hit the index; a new table empties it; ids always match the library's."""
    for _ in range(2):  # the second round starts on fresh tables with a warm index
        ct, lt = StackTable(), StackTable()
        for data in profiles + profiles[::-1]:
            got = _decode_compiled(data, ct)
            assert got is not None
            _same(got, _decode_library(data, lt))
        _tables_equal(ct, lt)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200, deadline=None)
@given(wire_profiles(DENSE), st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1,
                                      max_size=4), st.integers(0, 1 << 20))
def test_broken_bytes_are_declined_or_read_exactly(data: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    buf = bytearray(data)
    for pos, byte in edits:
        buf[pos % len(buf)] = byte
    broken = bytes(buf[: max(1, cut % (len(buf) + 1))])
    got = _decode_compiled(broken, StackTable())  # never raises
    if got is not None:
        _same(got, _decode_library(broken, StackTable()))


def _profile(n: int, depth: int, seed: int = 0) -> Profile:
    rng = np.random.default_rng(seed)
    names = [f"pkg.fn_{i}" for i in range(300)]
    pairs = []
    for i in range(n):
        frames = [Frame(names[j], Kind.USER) for j in rng.integers(0, 300, depth)]
        if i % 3 == 0:
            frames.append(Frame("do_syscall_64", Kind.KERNEL))
        pairs.append((tuple(frames), i % 7 + 1))
    return Profile.from_pairs(pairs)


def test_agent_sized_profile_round_trips_through_the_compiled_reader() -> None:
    prof = _profile(5000, 20)
    raw = encode_pprof(prof, period_nanos=10_000_000)
    table = StackTable()
    first = _decode_compiled(raw, table)
    assert first is not None and first.merged() == prof
    n = len(table)
    again = _decode_compiled(raw, table)  # every stack from the index, nothing new interned
    assert again is not None and again.merged() == prof and len(table) == n
    assert len(DEC._index) >= len(prof)


def test_sample_labels_split_series_like_the_library() -> None:
    prof = _profile(300, 8, seed=1)
    raw = encode_pprof(prof, sample_labels={"route": "/admin", "thread": "main"})
    got = _decode_compiled(raw, StackTable())
    assert got is not None
    _same(got, _decode_library(raw, StackTable()))
    assert dict(got.series[0][0]) == {"route": "/admin", "thread": "main"}


def test_frame_registry_reset_clears_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frame numbers are reassigned after a reset, so stale hashes must not survive it."""
    table = StackTable()
    a, b = _profile(200, 10, seed=2), _profile(200, 10, seed=3)
    ra, rb = encode_pprof(a), encode_pprof(b)
    assert _decode_compiled(ra, table).merged() == a  # type: ignore[union-attr]
    monkeypatch.setattr(pprof, "_FRAMES_MAX", 10)  # the next decode resets the registry
    assert _decode_compiled(rb, table).merged() == b  # type: ignore[union-attr]
    assert _decode_compiled(ra, table).merged() == a  # type: ignore[union-attr]
    assert len(DEC._frame_by_no) < 700


def test_index_insert_lookup_grow_clear() -> None:
    idx = _pprof_c.StackIndex(1, 2, capacity=16)
    for k in range(5000):  # far past the first capacity: grows by rehashing
        idx.insert(k * 0x9E3779B97F4A7C15 % (1 << 64), k, k)
    assert len(idx) == 5000
    assert all(idx.lookup(k * 0x9E3779B97F4A7C15 % (1 << 64), k) == k for k in range(5000))
    assert idx.lookup(5, 5) == -1 and idx.lookup(0, 1) == -1
    idx.insert(5, 5, 7)
    idx.insert(5, 5, 9)  # the same key again replaces, not duplicates
    assert idx.lookup(5, 5) == 9 and len(idx) == 5001
    idx.clear()
    assert len(idx) == 0 and idx.lookup(5, 5) == -1 and idx.lookup(0, 0) == -1
    with pytest.raises(ValueError):
        idx.insert(1, 1, -1)


def test_stack_hash_is_keyed_siphash_of_the_frame_numbers() -> None:
    """The streamed per-frame hash equals SipHash-1-3/128 of the frame numbers as uint64 words.

    ``_folded_c.siphash128`` is checked against the reference vectors in test_folded_compiled.py.
    """
    from stacks import _folded_c

    k0, k1 = 0x0706050403020100, 0x0F0E0D0C0B0A0908
    idx = _pprof_c.StackIndex(k0, k1)
    key = k0.to_bytes(8, "little") + k1.to_bytes(8, "little")
    for frames in ([], [0], [1, 2], [2, 1], [70000, 3, 3, 9] * 5):
        a = np.array(frames, np.int32)
        digest = _folded_c.siphash128(key, a.astype("<u8").tobytes(), 1, 3)
        want = (int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little"))
        assert idx.hash_frames(a) == want
    h = idx.hash_frames
    assert h(np.array([1, 2], np.int32)) != h(np.array([2, 1], np.int32))
    assert _pprof_c.StackIndex(k0 + 1, k1).hash_frames(np.array([1, 2], np.int32)) != h(np.array([1, 2], np.int32))


def test_scan_reads_the_tables() -> None:
    raw = encode_pprof(Profile.from_pairs([((Frame("main", Kind.USER), Frame("read", Kind.KERNEL)), 3)]),
                       period_nanos=10_000_000)
    t = _pprof_c.scan(raw)
    assert t is not None
    strings = t["strings"]
    assert strings[0] == "" and "main" in strings and "read" in strings
    assert [(strings[a], strings[b]) for a, b in t["types"]] == [("cpu", "nanoseconds")]
    assert t["period"] == 10_000_000 and len(t["sample_start"]) == 1
    assert sorted(strings[i] for i in t["function_name"]) == ["main", "read"]
    assert "[kernel.kallsyms]" in [strings[f] for f in t["mapping_file"]]
    # A varint running past the end, and field 0, are declined.
    assert _pprof_c.scan(b"\x10" + b"\xff" * 3) is None
    assert _pprof_c.scan(b"\x00\x01") is None
    assert _pprof_c.scan(b"\x60" + _varint(-1)) is not None  # a negative period is legal int64


def test_decoders_keep_their_own_caches() -> None:
    """No process-wide state: a decode fills only its own decoder's caches and index."""
    a, b, off = PprofDecoder(), PprofDecoder(), PprofDecoder(compiled=False)
    raw = encode_pprof(_profile(100, 8, seed=4))
    assert a.decode(raw).merged() == off.decode(raw).merged()
    assert len(a._index) > 0 and a._frame_by_no
    assert len(b._index) == 0 and not b._frame_by_no and not b._frames
    assert not off.compiled and off._index is None


def test_every_reader_repairs_zero_function_ids_and_names_alike() -> None:
    """The .NET repair and the naming rules (kernel mapping, unnamed frames) are one set of rules
    (stacks.pprof: zero_id_repair, run_names, is_kernel_mapping) that every reader applies: the
    compiled and numpy readers read such a profile themselves, equal to the library."""
    from stacks import _proto

    pairs = [((Frame.user(f"Main{i}"), Frame.user("Work"), Frame.kernel("do_sys")), 5 + i) for i in range(80)]
    prof = Profile.from_pairs(pairs)
    msg = _proto.Profile.FromString(encode_pprof(prof))
    for f in msg.function:
        f.id = 0  # the .NET shape: one function per location, in location order, ids all 0
    msg.function[1].name = 0  # an unnamed function: named by its mapping's file or address
    data = msg.SerializeToString()
    lib = _decode_library(data, StackTable())
    compiled = _decode_compiled(data, StackTable())
    assert compiled is not None, "the compiled reader left a repairable profile to the library"
    _same(compiled, lib)
    fast = PprofDecoder(compiled=False)
    fast.fast_min_samples = 1
    numpy_read = fast._decode_fast(data, StackTable())
    assert numpy_read is not None
    _same(numpy_read, lib)
    frames = {f for s, _ in lib.merged().items() for f in s}
    assert Frame.kernel("do_sys") in frames and len(frames) == 82


_FRAMES = st.builds(Frame, st.sampled_from(["main", "run", "f", "g;h", "ünï", ""]),
                    st.sampled_from([Kind.USER, Kind.KERNEL]), st.sampled_from(["", "a.py"]),
                    st.integers(0, 1 << 20))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.lists(_FRAMES, max_size=12).map(tuple), st.integers(1, 1 << 40), max_size=30),
       st.integers(0, 1 << 24), st.dictionaries(st.sampled_from(["thread", "span", "x"]),
                                                st.sampled_from(["", "t1", "1234"]), max_size=3),
       st.sampled_from([("cpu", "nanoseconds"), ("samples", "count")]))
def test_compiled_writer_writes_the_librarys_message(stacks: dict[tuple[Frame, ...], int], period: int,
                                                      labels: dict[str, str], sample_type: tuple[str, str]) -> None:
    """The samples written in C (``encode_samples``, the agent's push: issue 25) and the rest by the library
    parse to exactly the message the library writes alone, in the same sample order, and decode alike."""
    from stacks import _proto

    kw = dict(period_nanos=period, time_nanos=5, duration_nanos=7, sample_labels=labels, sample_type=sample_type)
    try:
        slow = encode_pprof(stacks, encode_compiled=False, **kw)  # type: ignore[arg-type]
    except ValueError as e:  # a value past int64: refused alike
        with pytest.raises(ValueError, match="out of range"):
            encode_pprof(stacks, **kw)  # type: ignore[arg-type]
        assert "out of range" in str(e)
        return
    fast = encode_pprof(stacks, **kw)  # type: ignore[arg-type]
    assert _proto.Profile.FromString(fast) == _proto.Profile.FromString(slow)
    assert len(fast) == len(slow)
    if stacks:
        _same(decode_pprof(fast, StackTable()), decode_pprof(slow, StackTable()))
