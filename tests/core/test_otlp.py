"""stacks.otlp: OTLP profiles requests -> typed, labelled profiles (exact cases + properties)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacks.errors import InputError
from stacks.model import Frame, Kind, StackTable
from stacks.otlp import OtlpCache, decode_export_request, profile_type, spy_of
from stacks.profiletype import CPU, WALL
from tests.support.otlp_build import Builder

K8S = {"service.name": "api", "k8s.namespace.name": "shop", "k8s.pod.name": "api-1",
       "k8s.container.name": "app", "k8s.node.name": "n1", "deployment.environment": "prod",
       "process.pid": "42"}


def test_cpu_samples_labels_and_kernel_frames() -> None:
    b = Builder()
    b.profile(K8S, [(["main", "work"], 3), (["main", "read", "vfs_read_[k]"], 2), (["main", "work"], 4)],
              time_ns=1_700_000_000_000_000_000)
    table = StackTable()
    [s] = decode_export_request(b.bytes(), table)
    assert s.ptype == CPU and s.period == 10_000_000
    assert s.labels == {"service_name": "api", "namespace": "shop", "pod": "api-1", "container": "app",
                        "node": "n1", "deployment_environment": "prod", "pyroscope_spy": "otlp"}
    got = s.profile.as_dict()
    assert got == {
        (Frame("main"), Frame("work")): 7,
        (Frame("main"), Frame("read"), Frame("vfs_read", Kind.KERNEL)): 2,
    }
    assert s.samples == 3 and s.time_nanos == 1_700_000_000_000_000_000


def test_sample_service_name_wins_over_the_resource() -> None:
    b = Builder()
    b.profile({"service.name": "res"}, [(["a"], 2)], sample_attrs={"service.name": "apm-svc", "thread.name": "t"})
    b.profile({}, [(["a"], 1)], sample_attrs={"thread.name": "t"})
    got = decode_export_request(b.bytes(), StackTable())
    assert [(s.labels.get("service_name"), s.profile.total) for s in got] == [("apm-svc", 2), (None, 1)]


def test_wall_timestamps_only_and_span_links() -> None:
    b = Builder()
    b.profile({"service.name": "py"}, [(["a", "b"], 5)], period_type=("wall", "nanoseconds"),
              as_timestamps=True, span=bytes.fromhex("0102030405060708"),
              sample_attrs={"thread.name": "MainThread", "thread.id": "99"})
    [s] = decode_export_request(b.bytes(), StackTable())
    assert s.ptype == WALL and s.profile.total == 5
    assert s.labels["thread_name"] == "MainThread" and "thread_id" not in s.labels
    assert s.spans == {"0102030405060708": 5}


@pytest.mark.parametrize(("types", "want"), [
    (("samples", "count", "cpu", "nanoseconds"), CPU.id),
    (("samples", "count", "wall", "nanoseconds"), WALL.id),
    (("cpu", "nanoseconds", "cpu", "nanoseconds"), CPU.id),
    (("alloc_space", "bytes", "space", "bytes"), "memory:alloc_space:bytes:space:bytes"),
    (("memory.heap.bytes", "bytes", "memory.heap", "count"), "memory:memory_heap_bytes:bytes:memory_heap:count"),
    (("lock.wait", "nanoseconds", "lock.wait", "count"), "mutex:lock_wait:nanoseconds:lock_wait:count"),
    (("exceptions", "count", "exceptions", "count"), "exceptions:exceptions:count:exceptions:count"),
])
def test_profile_types(types: tuple[str, str, str, str], want: str) -> None:
    assert profile_type(*types).id == want


def test_time_values_become_samples_of_the_period() -> None:
    b = Builder()
    b.profile({"service.name": "go"}, [(["main"], 30_000_000)], sample_type=("cpu", "nanoseconds"))
    [s] = decode_export_request(b.bytes(), StackTable())
    assert s.ptype == CPU and s.period == 10_000_000 and s.profile.total == 3


def test_spy_from_scope_and_resource_override() -> None:
    assert spy_of("go.opentelemetry.io/ebpf-profiler") == "ebpfspy"
    b = Builder()
    b.profile({"service.name": "x", "pyroscope.spy": "javaspy"}, [(["m"], 1)])
    [s] = decode_export_request(b.bytes(), StackTable())
    assert s.labels["pyroscope_spy"] == "javaspy"


@pytest.mark.parametrize(("mutate", "why"), [
    (lambda r: r.resource_profiles[0].scope_profiles[0].profiles[0].samples[0].__setattr__("stack_index", 99),
     "outside the stack table"),
    (lambda r: r.dictionary.stack_table[1].location_indices.append(77), "outside the location table"),
    (lambda r: r.dictionary.location_table[1].lines[0].__setattr__("function_index", 50),
     "outside the function table"),
    (lambda r: r.dictionary.function_table[1].__setattr__("name_strindex", 1000), "outside the string table"),
])
def test_bad_indices_are_named(mutate, why: str) -> None:  # type: ignore[no-untyped-def]
    b = Builder()
    b.profile({"service.name": "x"}, [(["m", "n"], 1)])
    mutate(b.req)
    with pytest.raises(InputError, match=why):
        decode_export_request(b.bytes(), StackTable())


def test_not_protobuf() -> None:
    with pytest.raises(InputError, match="ExportProfilesServiceRequest"):
        decode_export_request(b"\xff\xff\xff", StackTable())


def test_too_many_attributes() -> None:
    b = Builder()
    b.profile({f"a{i}": "v" for i in range(70)}, [(["m"], 1)])
    with pytest.raises(InputError, match="at most 64"):
        decode_export_request(b.bytes(), StackTable())


names = st.sampled_from(["main", "a", "b", "c", "sys_read_[k]"])
stacks_ = st.lists(names, min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(stacks_, st.integers(1, 1000)), min_size=1, max_size=20))
def test_totals_equal_what_was_sent(samples: list[tuple[list[str], int]]) -> None:
    b = Builder()
    b.profile({"service.name": "p"}, samples)
    out = decode_export_request(b.bytes(), StackTable())
    assert sum(s.profile.total for s in out) == sum(v for _, v in samples)
    want: dict[tuple[str, ...], int] = {}
    for frames, v in samples:
        k = tuple(f.removesuffix("_[k]") for f in frames)
        want[k] = want.get(k, 0) + v
    got = {tuple(f.name for f in stack): c for stack, c in out[0].profile.items()}
    assert got == want


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(body: bytes) -> None:
    try:
        decode_export_request(body, StackTable())
    except InputError:
        pass


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(stacks_, st.integers(1, 1 << 40)), min_size=1, max_size=30),
       st.sampled_from([b"", bytes.fromhex("00000000000000ab")]), st.booleans())
def test_bulk_reader_equals_message_reader(samples: list[tuple[list[str], int]], span: bytes, wall: bool) -> None:
    """stacks/_otlp_fast.py (raw bytes, numpy; the reader without the compiled one) gives exactly
    what the per-message path gives."""
    import stacks._otlp_fast as fast

    b = Builder()
    b.profile({"service.name": "p"}, samples, span=span, period_type=("wall" if wall else "cpu", "nanoseconds"))
    body = b.bytes()
    assert fast.simple_samples(list(fast.SplitRequest.FromString(body).resource_profiles[0]
                                    .scope_profiles[0].profiles[0].samples)) is not None
    from stacks.otlp import OtlpCache

    got = decode_export_request(body, StackTable(), cache=OtlpCache(compiled=False))
    saved = fast.simple_samples, fast.stack_gids, fast.simple_locations
    fast.simple_samples = lambda entries: None  # type: ignore[assignment]
    fast.stack_gids = lambda entries, loc: None  # type: ignore[assignment]
    fast.simple_locations = lambda entries: None  # type: ignore[assignment]
    try:
        want = decode_export_request(body, StackTable(), cache=OtlpCache(compiled=False))
    finally:
        fast.simple_samples, fast.stack_gids, fast.simple_locations = saved
    assert [(s.ptype, s.labels, s.profile.as_dict(), s.spans, s.samples) for s in got] == \
        [(s.ptype, s.labels, s.profile.as_dict(), s.spans, s.samples) for s in want]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(stacks_, st.integers(1, 1 << 40)), min_size=1, max_size=30),
       st.lists(st.tuples(st.integers(0, 1 << 33), st.booleans()), min_size=1, max_size=8))
def test_bulk_reader_by_line_equals_message_reader(samples: list[tuple[list[str], int]],
                                                   lines: list[tuple[int, bool]]) -> None:
    """By line (a table that keeps locations), the bulk scan reads each one-line location's line
    (and leaves one with a column to the message path): the same frames as the message path."""
    import stacks._otlp_fast as fast
    from stacks.otlp import OtlpCache

    b = Builder()
    b.profile({"service.name": "p"}, samples)
    for i, loc in enumerate(b.req.dictionary.location_table):
        if loc.lines:
            line, column = lines[i % len(lines)]
            loc.lines[0].line = line
            if column:
                loc.lines[0].column = 7
    body = b.bytes()
    got = decode_export_request(body, StackTable(lines=True), cache=OtlpCache(compiled=False))
    saved = fast.simple_locations
    fast.simple_locations = lambda entries: None  # type: ignore[assignment]
    try:
        want = decode_export_request(body, StackTable(lines=True), cache=OtlpCache(compiled=False))
    finally:
        fast.simple_locations = saved
    assert [s.profile.as_dict() for s in got] == [s.profile.as_dict() for s in want]
    located = {f.line for s in got for stack in s.profile.as_dict() for f in stack}
    assert located <= {line for line, _ in lines} | {0}


def test_unsymbolized_and_inlined_frames() -> None:
    """The eBPF profiler's shapes: a native frame known only by mapping and address, and a location
    with two lines (an inlined call: lines[0] innermost)."""
    b = Builder()
    b.profile({"service.name": "native"}, [(["main", "leaf"], 2)])
    d = b.req.dictionary
    fname = b.s("/usr/lib/libfoo.so")
    d.mapping_table.add(filename_strindex=fname)
    mi = len(d.mapping_table) - 1
    raw = d.location_table.add(mapping_index=mi, address=0x1F2A)
    raw_i = len(d.location_table) - 1
    inl = d.location_table.add()
    inl.lines.add(function_index=b.funcs["leaf"])
    d.function_table.add(name_strindex=b.s("caller_of_leaf"))
    inl.lines.add(function_index=len(d.function_table) - 1)
    st = d.stack_table.add()
    st.location_indices.extend([raw_i, len(d.location_table) - 1, b.loc("main")])  # leaf first
    p = b.req.resource_profiles[0].scope_profiles[0].profiles[0]
    p.samples.add(stack_index=len(d.stack_table) - 1, values=[5])
    [s] = decode_export_request(b.bytes(), StackTable())
    got = {tuple(f.name for f in stack): n for stack, n in s.profile.items()}
    assert got == {("main", "leaf"): 2, ("main", "caller_of_leaf", "leaf", "libfoo.so+0x1f2a"): 5}
    assert raw.address == 0x1F2A


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(stacks_, st.integers(1, 100)), min_size=1, max_size=20), st.randoms())
def test_cache_across_requests_with_other_dictionary_orders(samples: list[tuple[list[str], int]], rnd) -> None:  # type: ignore[no-untyped-def]
    """Indices are per request: the same stacks sent with shuffled dictionaries, decoded with one
    cache on one table, give what a fresh decode gives."""
    from stacks.otlp import OtlpCache

    table, cache = StackTable(), OtlpCache()
    for _ in range(3):
        shuffled = list(samples)
        rnd.shuffle(shuffled)
        b = Builder()
        b.loc(rnd.choice(["zz_unused", "a"]))  # shift the location indices
        b.profile({"service.name": "p"}, shuffled)
        got = decode_export_request(b.bytes(), table, cache=cache)
        want = decode_export_request(b.bytes(), StackTable())
        assert [s.profile.as_dict() for s in got] == [s.profile.as_dict() for s in want]


def test_cache_follows_its_table() -> None:
    """A cache used with a new table (the ingest table is swapped past its limit) forgets the
    stack ids of the old one."""
    from stacks.otlp import OtlpCache

    cache = OtlpCache()
    b = Builder()
    b.profile({"service.name": "p"}, [(["main", "a"], 1), (["main", "b"], 2)])
    old = StackTable()
    old.intern([])  # shift ids so the two tables disagree
    decode_export_request(b.bytes(), old, cache=cache)
    new = StackTable()
    [s] = decode_export_request(b.bytes(), new, cache=cache)
    assert s.profile.table is new
    assert {tuple(f.name for f in st): n for st, n in s.profile.items()} == {("main", "a"): 1, ("main", "b"): 2}
    cache.LIMIT = 0  # past the limit: emptied, still right
    [s] = decode_export_request(b.bytes(), new, cache=cache)
    assert {tuple(f.name for f in st): n for st, n in s.profile.items()} == {("main", "a"): 1, ("main", "b"): 2}


def _message_path(body: bytes) -> object:
    """The reference: every entry through the opentelemetry-proto message classes."""
    import stacks._otlp_fast as fast
    from stacks.otlp import OtlpCache

    saved = fast.simple_samples, fast.stack_gids, fast.simple_locations
    fast.simple_samples = lambda entries: None  # type: ignore[assignment]
    fast.stack_gids = lambda entries, loc: None  # type: ignore[assignment]
    fast.simple_locations = lambda entries: None  # type: ignore[assignment]
    try:
        return _outcome(body, OtlpCache(compiled=False))
    finally:
        fast.simple_samples, fast.stack_gids, fast.simple_locations = saved


def _outcome(body: bytes, cache: object, table: StackTable | None = None) -> object:
    try:
        out = decode_export_request(body, table or StackTable(), cache=cache)  # type: ignore[arg-type]
    except InputError as e:
        return ("error", str(e))
    return [(s.ptype, s.labels, s.profile.as_dict(), s.spans, s.samples) for s in out]


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """Random requests in the dictionary shape: stacks of random (sometimes out-of-table or
    negative) location indices, empty stacks, samples with values, timestamps or both, links,
    sometimes a sample attribute, kernel locations, several profiles sharing the dictionary."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    b = Builder()
    d = b.req.dictionary
    for name in draw(st.lists(st.sampled_from(["main", "a", "b", "c", "sys_read_[k]", "d"]), max_size=6)):
        b.loc(name)
    n_loc = len(d.location_table)
    bad_ok = draw(st.booleans())
    index = st.integers(-1 if bad_ok else 0, n_loc - 1 + bad_ok)
    for _ in range(draw(st.integers(0, 8))):
        d.stack_table.add().location_indices.extend(draw(st.lists(index, max_size=6)))
    b.link(bytes.fromhex("00000000000000ab"))
    d.attribute_table.add(key_strindex=b.s("thread.name"), value=AnyValue(string_value="t1"))
    n_stacks = len(d.stack_table)
    for _ in range(draw(st.integers(1, 2))):
        b.profile({"service.name": "p"}, [], period_type=(draw(st.sampled_from(["cpu", "wall"])), "nanoseconds"))
        p = b.req.resource_profiles[-1].scope_profiles[0].profiles[0]
        for _ in range(draw(st.integers(0, 10))):
            smp = p.samples.add(stack_index=draw(st.integers(0, n_stacks - 1 + bad_ok)))
            smp.values.extend(draw(st.lists(st.one_of(st.integers(0, 20), st.integers(0, 1 << 40)), max_size=2)))
            smp.timestamps_unix_nano.extend(draw(st.lists(st.integers(1, 1 << 60), max_size=2)))
            smp.link_index = draw(st.sampled_from([0, 1, 0]))
            if draw(st.integers(0, 9)) == 0:
                smp.attribute_indices.append(len(d.attribute_table) - 1)
    return b.bytes()


@pytest.mark.skipif(not __import__("stacks.otlp").otlp.BUILT, reason="stacks._otlp_c not built (no C compiler)")
@settings(max_examples=150, deadline=None)
@given(raw_requests())
def test_compiled_reader_equals_message_reader(body: bytes) -> None:
    """stacks/_otlp_c.pyx gives what the opentelemetry-proto message path gives on random requests
    and the numpy reader (the same series, or the same error text), on a fresh cache and on a
    cache that has seen the request."""
    from stacks.otlp import OtlpCache

    want = _message_path(body)
    cache = OtlpCache(compiled=True)
    assert cache.compiled
    got = _outcome(body, cache)
    bulk = _outcome(body, OtlpCache(compiled=False))
    assert got == want == bulk
    if isinstance(want, tuple):
        return
    table = StackTable()
    again = OtlpCache(compiled=True)
    assert _outcome(body, again, table) == want
    assert _outcome(body, again, table) == want  # every stack found by hash this time


@pytest.mark.skipif(not __import__("stacks.otlp").otlp.BUILT, reason="stacks._otlp_c not built (no C compiler)")
@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=12), max_size=3), st.lists(st.binary(max_size=12), max_size=3))
def test_compiled_reader_on_corrupt_entries(stacks: list[bytes], samples: list[bytes]) -> None:
    """Random bytes as Stack and Sample entries of an otherwise good request: the compiled reader
    gives what the message path gives (series or error), never an exception of its own."""
    import stacks._otlp_fast as fast
    from stacks.otlp import OtlpCache

    b = Builder()
    b.profile({"service.name": "p"}, [(["main", "a"], 3), (["main", "sys_read_[k]"], 2)])
    req = fast.SplitRequest.FromString(b.bytes())
    req.dictionary.stack_table.extend(stacks)
    req.resource_profiles[0].scope_profiles[0].profiles[0].samples.extend(samples)
    body = req.SerializeToString()
    assert _outcome(body, OtlpCache(compiled=True)) == _message_path(body)


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _sample_v1_8(s) -> bytes:  # type: ignore[no-untyped-def]
    """A Sample written with proto v1.8.0's field numbers (Collector pdata 1.46, the eBPF profiler
    v0.0.202547): stack_index 1, values 2, attribute_indices 3, link_index 4, timestamps 5."""
    def packed(field: int, xs: list[int]) -> bytes:
        body = b"".join(map(_varint, xs))
        return _varint(field << 3 | 2) + _varint(len(body)) + body if xs else b""

    out = _varint(1 << 3) + _varint(s.stack_index) if s.stack_index else b""
    out += packed(2, list(s.values)) + packed(3, list(s.attribute_indices))
    out += _varint(4 << 3) + _varint(s.link_index) if s.link_index else b""
    ts = b"".join(t.to_bytes(8, "little") for t in s.timestamps_unix_nano)
    return out + (_varint(5 << 3 | 2) + _varint(len(ts)) + ts if ts else b"")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(stacks_, st.integers(1, 1 << 40)), min_size=1, max_size=20),
       st.sampled_from([b"", bytes.fromhex("00000000000000ab")]), st.booleans(),
       st.sampled_from(["python3.11", "busy", ""]))
def test_v1_8_sample_numbers_read_as_v1_9(samples: list[tuple[list[str], int]], span: bytes, stamps: bool,
                                          process: str) -> None:
    """A request whose samples carry proto v1.8.0's field numbers (what the OpenTelemetry eBPF
    profiler v0.0.202547 sends) decodes to what the same request in v1.9.0's numbers does, sample
    attributes (process, thread) and links included."""
    import stacks._otlp_fast as fast

    b = Builder()
    if stamps:
        samples = [(f, v % 5 + 1) for f, v in samples]
    b.profile({"service.name": "p"}, samples, span=span, as_timestamps=stamps,
              sample_attrs={"thread.name": "t1", "process.pid": "7",
                            **({"process.executable.name": process} if process else {})})
    body = b.bytes()
    req = fast.SplitRequest.FromString(body)
    prof = req.resource_profiles[0].scope_profiles[0].profiles[0]
    old = [_sample_v1_8(fast.SampleV1_9.FromString(raw)) for raw in prof.samples]
    assert fast.v1_8_samples(old) and not fast.v1_8_samples(list(prof.samples))
    del prof.samples[:]
    prof.samples.extend(old)
    for compiled in (True, False):
        want = decode_export_request(body, StackTable(), cache=OtlpCache(compiled=compiled))
        got = decode_export_request(req.SerializeToString(), StackTable(), cache=OtlpCache(compiled=compiled))
        assert [(s.ptype, s.labels, s.profile.as_dict(), s.spans, s.samples) for s in got] == \
            [(s.ptype, s.labels, s.profile.as_dict(), s.spans, s.samples) for s in want]
        assert got[0].labels["thread_name"] == "t1"
        assert got[0].labels.get("process", "") == process


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=5))
def test_v1_8_detection_never_crashes(entries: list[bytes]) -> None:
    import stacks._otlp_fast as fast

    assert fast.v1_8_samples(entries) in (True, False)
