"""The Store contract, run against every backend: SQLite and a real ClickHouse.

Each test runs once per backend with the same inputs and exact expected
results, so passing both proves the backends answer identically.
"""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from aggregator.store.base import MERGE_ALL, MergedReads, PrunedMergedReads, SeriesWindow, Store, TopTotals
from stacks.model import Frame, Labels, Profile, StackTable
from stacks.selector import Matcher, Selector

BACKENDS = ["sqlite", "clickhouse"]
HOUR = 3600
T0 = 1_700_006_400  # a multiple of 3600 (and of 30)
ALL = Selector()

K = Frame.kernel
U = Frame.user
M = Frame.metadata


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Store]:
    """An opened, empty store of each backend."""
    if request.param == "sqlite":
        if importlib.util.find_spec("aggregator.store.sqlite") is None:
            pytest.skip(reason="aggregator/store/sqlite.py (SQLiteStore) not written yet")
        from aggregator.store.sqlite import SQLiteStore

        s: Store = SQLiteStore(tmp_path / "flamewatch.db")
    else:
        from aggregator.store.clickhouse import ClickHouseStore

        server = request.getfixturevalue("clickhouse")
        s = ClickHouseStore(server.storage_spec(request.getfixturevalue("clickhouse_db")))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def prof(pairs: dict[tuple[Frame, ...], int], table: StackTable | None = None) -> Profile:
    return Profile.from_pairs(pairs.items(), table)


def sw(start: int, pairs: dict[tuple[Frame, ...], int], **labels: str) -> SeriesWindow:
    return SeriesWindow(Labels.of(labels), start, prof(pairs))


def sel(*terms: tuple[str, str, str]) -> Selector:
    return Selector(tuple(Matcher(n, op, v) for n, op, v in terms))


def as_map(windows: Sequence[SeriesWindow]) -> dict[tuple[Labels, int], dict]:
    """Order-free view of a read result; also checks one entry per (series, window)."""
    out = {}
    for w in windows:
        key = (w.labels, w.start)
        assert key not in out, f"duplicate entry for {key}"
        out[key] = w.profile.as_dict()
    return out


STACK_A = (M("default"), U("main"), U("handle"), K("sys_read"), K("vfs_read"))
STACK_B = (U("main"), U("createSampleImages"))
STACK_C = (U("main"), U("weird;name with spaces ü 🔥"), K("do_syscall_64"))


async def test_round_trip_keeps_frames_kinds_labels(store: Store) -> None:
    labels = dict(namespace="default", pod="admin-1", container="app", node="n1", process="python")
    await store.write([sw(T0, {STACK_A: 5, STACK_B: 7, STACK_C: 1}, **labels)])
    table = StackTable()
    got = await store.read(ALL, T0, T0 + 30, table)
    assert len(got) == 1
    w = got[0]
    assert w.labels == Labels.of(labels)
    assert w.start == T0
    assert w.profile.table is table
    assert w.profile.as_dict() == {STACK_A: 5, STACK_B: 7, STACK_C: 1}
    kinds = {f.name: f.kind for s in w.profile.as_dict() for f in s}
    assert kinds["sys_read"] == "kernel" and kinds["default"] == "metadata" and kinds["main"] == "user"


async def test_same_name_different_kind_are_different_stacks(store: Store) -> None:
    s1 = (U("main"), U("read"))
    s2 = (U("main"), K("read"))
    await store.write([sw(T0, {s1: 2, s2: 3}, pod="p")])
    got = await store.read(ALL, 0, 2**31, StackTable())
    assert got[0].profile.as_dict() == {s1: 2, s2: 3}


async def test_writes_to_the_same_window_add_up(store: Store) -> None:
    await store.write([sw(T0, {STACK_A: 5, STACK_B: 1}, pod="p")])
    await store.write([sw(T0, {STACK_A: 3, STACK_C: 2}, pod="p")])
    # identical repeated writes must add too (no dedup of equal inserts)
    await store.write([sw(T0, {STACK_A: 3, STACK_C: 2}, pod="p")])
    await store.write([sw(T0, {STACK_B: 4}, pod="p"), sw(T0, {STACK_B: 6}, pod="p")])
    got = as_map(await store.read(ALL, T0, T0 + 30, StackTable()))
    assert got == {(Labels.of(pod="p"), T0): {STACK_A: 11, STACK_B: 11, STACK_C: 4}}


async def test_profiles_on_different_tables_in_one_write(store: Store) -> None:
    t1, t2 = StackTable(), StackTable()
    t2.intern((U("padding"),))  # the same stack gets a different id on each table
    w1 = SeriesWindow(Labels.of(pod="a"), T0, prof({STACK_A: 1, STACK_B: 2}, t1))
    w2 = SeriesWindow(Labels.of(pod="b"), T0, prof({STACK_B: 3}, t2))
    await store.write([w1, w2])
    got = as_map(await store.read(ALL, T0, T0 + 30, StackTable()))
    assert got == {(Labels.of(pod="a"), T0): {STACK_A: 1, STACK_B: 2}, (Labels.of(pod="b"), T0): {STACK_B: 3}}


SERIES = [
    dict(namespace="default", pod="admin-service-7f9c", container="app"),
    dict(namespace="default", pod="manipulation-service-1", container="app"),
    dict(namespace="kube-system", pod="coredns-abc", container="coredns"),
    dict(namespace="monitoring", pod="prometheus-0"),  # no container label
]


async def _write_series(store: Store) -> None:
    await store.write([sw(T0, {STACK_B: i + 1}, **lab) for i, lab in enumerate(SERIES)])


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (ALL, [0, 1, 2, 3]),
        (sel(("namespace", "=", "default")), [0, 1]),
        (sel(("namespace", "!=", "default")), [2, 3]),
        (sel(("pod", "=~", "admin-.*|coredns-.*")), [0, 2]),
        (sel(("pod", "=~", "admin")), []),  # anchored: a substring does not match
        (sel(("pod", "!~", ".*-service-.*")), [2, 3]),
        (sel(("container", "=", "")), [3]),  # a missing label equals ""
        (sel(("container", "!=", "")), [0, 1, 2]),
        (sel(("namespace", "=", "default"), ("pod", "!~", "admin.*")), [1]),
        (sel(("nosuchlabel", "=~", ".+")), []),
    ],
)
async def test_selector_filtering(store: Store, selector: Selector, expected: list[int]) -> None:
    await _write_series(store)
    got = as_map(await store.read(selector, T0, T0 + 30, StackTable()))
    assert got == {(Labels.of(SERIES[i]), T0): {STACK_B: i + 1} for i in expected}


async def test_time_range_is_start_inclusive_end_exclusive(store: Store) -> None:
    await store.write([sw(T0 + 30 * i, {STACK_A: i + 1}, pod="p") for i in range(5)])
    t = StackTable()
    starts = lambda ws: sorted(w.start for w in ws)  # noqa: E731
    assert starts(await store.read(ALL, T0 + 30, T0 + 90, t)) == [T0 + 30, T0 + 60]
    assert starts(await store.read(ALL, T0 + 31, T0 + 91, t)) == [T0 + 60, T0 + 90]
    assert starts(await store.read(ALL, T0, T0 + 150, t)) == [T0 + 30 * i for i in range(5)]
    assert await store.read(ALL, T0 + 150, T0 + 10_000, t) == []
    assert await store.read(ALL, T0 + 60, T0 + 60, t) == []
    got = as_map(await store.read(ALL, T0 + 60, T0 + 61, t))
    assert got == {(Labels.of(pod="p"), T0 + 60): {STACK_A: 3}}


async def test_label_names_and_values(store: Store) -> None:
    await _write_series(store)
    await store.write([sw(T0 + HOUR, {STACK_A: 1}, namespace="late", pod="x", region="eu")])
    assert await store.label_names(T0, T0 + 30) == ["container", "namespace", "pod"]
    assert await store.label_names(T0, T0 + 2 * HOUR) == ["container", "namespace", "pod", "region"]
    assert await store.label_names(T0 + 30, T0 + HOUR) == []
    assert await store.label_values("namespace", ALL, T0, T0 + 2 * HOUR) == [
        "default", "kube-system", "late", "monitoring"]
    assert await store.label_values("namespace", ALL, T0 + HOUR, T0 + 2 * HOUR) == ["late"]
    assert await store.label_values("pod", sel(("namespace", "=", "default")), T0, T0 + 30) == [
        "admin-service-7f9c", "manipulation-service-1"]
    assert await store.label_values("container", sel(("namespace", "=~", "kube-.*|monitoring")),
                                    T0, T0 + 30) == ["coredns"]
    assert await store.label_values("nosuch", ALL, T0, T0 + 30) == []


async def test_delete_before(store: Store) -> None:
    # Windows in three hour partitions; the cut at T0+60 falls inside the last one.
    starts = [T0 - 2 * HOUR, T0 - 30, T0, T0 + 30, T0 + 60, T0 + 90]
    await store.write([sw(s, {STACK_A: 1}, pod="a") for s in starts])
    await store.write([sw(s, {STACK_B: 2}, pod="b") for s in starts[:3]])
    assert await store.delete_before(T0 + 60) == 4 + 3
    got = as_map(await store.read(ALL, 0, 2**32 - 1, StackTable()))
    assert got == {(Labels.of(pod="a"), T0 + 60): {STACK_A: 1}, (Labels.of(pod="a"), T0 + 90): {STACK_A: 1}}
    assert await store.label_values("pod", ALL, 0, 2**32 - 1) == ["a"]
    assert await store.delete_before(T0 + 60) == 0
    # the store still takes writes for the stacks and series it saw before
    await store.write([sw(T0 + 120, {STACK_B: 5, STACK_A: 1}, pod="b")])
    got = as_map(await store.read(ALL, T0 + 120, T0 + 150, StackTable()))
    assert got == {(Labels.of(pod="b"), T0 + 120): {STACK_B: 5, STACK_A: 1}}


async def test_many_series(store: Store) -> None:
    n, windows = 300, 3
    stacks = [(U("main"), U(f"fn{i % 17}"), K(f"k{i % 5}")) for i in range(40)]
    batch = []
    for s in range(n):
        for w in range(windows):
            pairs = {stacks[(s + j) % 40]: s + j + w + 1 for j in range(4)}
            batch.append(sw(T0 + 30 * w, pairs, pod=f"pod-{s:03d}", namespace=f"ns{s % 3}"))
    await store.write(batch)
    expected = as_map(batch)
    got = as_map(await store.read(ALL, T0, T0 + 30 * windows, StackTable()))
    assert got == expected
    some = sel(("namespace", "=", "ns1"), ("pod", "=~", "pod-0[0-4].*"))
    got = as_map(await store.read(some, T0, T0 + 30 * windows, StackTable()))
    assert got == {k: v for k, v in expected.items() if k[0]["namespace"] == "ns1" and
                   k[0]["pod"] < "pod-050"}
    assert len(got) == 17 * windows
    assert len(await store.label_values("pod", ALL, T0, T0 + 30)) == n


async def test_empty_store_and_empty_write(store: Store) -> None:
    assert await store.read(ALL, 0, 2**32 - 1, StackTable()) == []
    assert await store.label_names(0, 2**32 - 1) == []
    assert await store.label_values("pod", ALL, 0, 2**32 - 1) == []
    await store.write([])
    await store.write([SeriesWindow(Labels.of(pod="p"), T0, Profile.empty())])
    assert await store.read(ALL, 0, 2**32 - 1, StackTable()) == []
    assert await store.delete_before(2**32 - 1) == 0


async def test_read_merged_and_totals_when_offered(store: Store) -> None:
    """The optional fast paths the server uses: same answers as summing ``read``."""
    if not isinstance(store, MergedReads):
        pytest.skip(reason=f"{type(store).__name__} offers no read_merged/totals")
    await _write_series(store)
    await store.write([sw(T0 + 30, {STACK_A: 4, STACK_B: 1}, **SERIES[0])])
    t = StackTable()
    merged = await store.read_merged(ALL, T0, T0 + 60, t)
    assert {k: p.as_dict() for k, p in merged.items()} == {
        Labels.of(SERIES[0]): {STACK_A: 4, STACK_B: 2},
        Labels.of(SERIES[1]): {STACK_B: 2},
        Labels.of(SERIES[2]): {STACK_B: 3},
        Labels.of(SERIES[3]): {STACK_B: 4},
    }
    grouped = await store.read_merged(sel(("namespace", "!=", "monitoring")), T0, T0 + 60, t, ["namespace"])
    assert {k: p.as_dict() for k, p in grouped.items()} == {
        Labels.of(namespace="default"): {STACK_A: 4, STACK_B: 4},
        Labels.of(namespace="kube-system"): {STACK_B: 3},
    }
    totals = sorted((lab.items_, start, n) for lab, start, n in
                    await store.totals(sel(("namespace", "=", "default")), T0, T0 + 60))
    assert totals == sorted([
        (Labels.of(SERIES[0]).items_, T0, 1), (Labels.of(SERIES[0]).items_, T0 + 30, 5),
        (Labels.of(SERIES[1]).items_, T0, 2),
    ])


async def test_merged_reads_group_in_the_store(store: Store) -> None:
    """``group_by`` as MergedReads defines it: ``MERGE_ALL`` is one profile under ``{}``, label
    names group by their values (absent -> left out of the key), answers equal summing ``read``."""
    assert isinstance(store, MergedReads), f"{type(store).__name__} should offer read_merged/totals"
    await _write_series(store)
    await store.write([sw(T0 + 30, {STACK_A: 4, STACK_C: 1}, **SERIES[0]),
                       sw(T0 + 30, {STACK_C: 7}, **SERIES[3]),
                       sw(T0 + 60, {STACK_A: 100}, **SERIES[2])])  # outside [T0, T0 + 60)
    t = StackTable()

    async def merged(selector: Selector, group_by: Sequence[str]) -> dict[Labels, dict]:
        return {k: p.as_dict() for k, p in (await store.read_merged(selector, T0, T0 + 60, t, group_by)).items()}

    everything = {STACK_A: 4, STACK_B: 1 + 2 + 3 + 4, STACK_C: 1 + 7}
    assert await merged(ALL, MERGE_ALL) == {Labels.of(): everything}
    assert await merged(ALL, MERGE_ALL) == {Labels.of(): _summed(await store.read(ALL, T0, T0 + 60, t))}
    assert await merged(sel(("namespace", "=", "default")), MERGE_ALL) == {
        Labels.of(): {STACK_A: 4, STACK_B: 3, STACK_C: 1}}
    assert await merged(sel(("pod", "=", "nosuch")), MERGE_ALL) == {}
    # a label some series lack: their key leaves it out, so it reads as "" like in selectors
    assert await merged(ALL, ["container"]) == {
        Labels.of(container="app"): {STACK_A: 4, STACK_B: 3, STACK_C: 1},
        Labels.of(container="coredns"): {STACK_B: 3},
        Labels.of(): {STACK_B: 4, STACK_C: 7},
    }
    # the metadata levels the flame graph groups by: one group per series here
    levels = ("node", "namespace", "pod", "container", "process")
    assert await merged(sel(("namespace", "!=", "kube-system")), levels) == {
        Labels.of(SERIES[0]): {STACK_A: 4, STACK_B: 1, STACK_C: 1},
        Labels.of(SERIES[1]): {STACK_B: 2},
        Labels.of(SERIES[3]): {STACK_B: 4, STACK_C: 7},
    }
    assert await merged(ALL, ["nosuch"]) == {Labels.of(): everything}
    assert await store.read_merged(ALL, T0 + 90, T0 + 120, t, MERGE_ALL) == {}

    async def totals(selector: Selector, group_by: Sequence[str]) -> list:
        return sorted((lab.items_, start, n) for lab, start, n in
                      await store.totals(selector, T0, T0 + 60, group_by))

    assert await totals(ALL, MERGE_ALL) == [((), T0, 10), ((), T0 + 30, 12)]
    assert await totals(ALL, ["namespace"]) == sorted([
        ((("namespace", "default"),), T0, 3), ((("namespace", "default"),), T0 + 30, 5),
        ((("namespace", "kube-system"),), T0, 3),
        ((("namespace", "monitoring"),), T0, 4), ((("namespace", "monitoring"),), T0 + 30, 7)])
    assert await totals(sel(("container", "=", "")), ["container"]) == [((), T0, 4), ((), T0 + 30, 7)]
    assert await totals(sel(("pod", "=~", "admin-.*")), ()) == [
        (Labels.of(SERIES[0]).items_, T0, 1), (Labels.of(SERIES[0]).items_, T0 + 30, 5)]
    assert await totals(sel(("pod", "=", "nosuch")), MERGE_ALL) == []


async def test_top_totals_keeps_the_heaviest_groups_and_sums_the_rest(store: Store) -> None:
    """TopTotals (issue 24, cause 3), same answers on both stores: the ``n`` heaviest values of
    the label (ties by value, absent = ""), their samples per window or bucket of ``step``, the
    others summed per window, the number of groups and the others' samples, exact past 2^64."""
    assert isinstance(store, TopTotals), f"{type(store).__name__} should offer top_totals"
    big = 2**62 + 1  # five of them pass 2^64: exact only as integers (not float64, not UInt64)
    pods = {"a": [5, 0, 1], "b": [3, 3, 0], "c": [6, 0, 0], "d": [0, 0, 2], "e": [big, big, 0]}
    writes = [sw(T0 + 30 * w, {STACK_B: c}, namespace="ns", pod=pod)
              for pod, counts in pods.items() for w, c in enumerate(counts) if c]
    writes += [sw(T0 + 30 * (i % 3), {STACK_A: big}, namespace="other", pod=f"q{i}") for i in range(5)]
    writes += [sw(T0, {STACK_C: 6}, namespace="ns"),  # no pod label: the group ""
               sw(T0 + 60, {STACK_A: 4}, namespace="ns", pod="c", container="x"),  # a second series of c
               sw(T0 + 90, {STACK_A: 1000}, namespace="ns", pod="late")]  # outside [T0, T0 + 90)
    await store.write(writes)
    ns = sel(("namespace", "=", "ns"))

    async def top(selector: Selector, n: int, step: int = 0) -> tuple:
        rows, other, groups, rest = await store.top_totals(selector, T0, T0 + 90, "pod", n, step)
        assert all(isinstance(v, int) for _, _, v in rows) and all(isinstance(v, int) for v in other.values())
        return sorted((lab.get("pod", ""), t, v) for lab, t, v in rows), other, groups, rest

    # weights in ns: e 2big, c 10, "" 6, a 6, b 6, d 2: ties ("", a, b) by value
    assert await top(ns, 3) == (
        [("", T0, 6), ("c", T0, 6), ("c", T0 + 60, 4), ("e", T0, big), ("e", T0 + 30, big)],
        {T0: 5 + 3, T0 + 30: 3, T0 + 60: 1 + 2}, 6, 14)
    assert await top(ns, 1, step=60) == (
        [("e", T0, 2 * big)], {T0: 6 + 5 + 3 + 3 + 6, T0 + 60: 1 + 2 + 4}, 6, 30)
    # every group kept: nothing in the rest
    everything = await top(ns, 6)
    assert everything[1:] == ({}, 6, 0) and len(everything[0]) == 10
    # a regex selector (read in Python on both stores), ties among the q pods by value
    rows, other, groups, rest = await top(sel(("pod", "=~", "[a-d]|q.*")), 2)
    assert rows == [("q0", T0, big), ("q1", T0 + 30, big)] and groups == 9
    assert other == {T0: 5 + 3 + 6 + big, T0 + 30: 3 + big, T0 + 60: 1 + 2 + 4 + big} and rest == 24 + 3 * big
    # all series: the rest passes 2^64 (five q pods)
    rows, other, groups, rest = await top(ALL, 1)
    assert rows == [("e", T0, big), ("e", T0 + 30, big)] and groups == 11
    assert rest == 30 + 5 * big > 2**64 and sum(other.values()) == rest
    # the same as the unbounded totals, group for group
    want: dict[tuple[str, int], int] = {}
    for lab, t, v in await store.totals(ALL, T0, T0 + 90, ("pod",)):
        want[lab.get("pod", ""), t] = want.get((lab.get("pod", ""), t), 0) + v
    assert (await top(ALL, 100))[0] == sorted((g, t, v) for (g, t), v in want.items())
    assert await top(sel(("pod", "=", "nosuch")), 3) == ([], {}, 0, 0)
    assert await store.top_totals(ALL, T0 + 120, T0 + 150, "pod", 3) == ([], {}, 0, 0)


def _summed(windows: Sequence[SeriesWindow]) -> dict:
    out: dict = {}
    for w in windows:
        for stack, c in w.profile.items():
            out[stack] = out.get(stack, 0) + c
    return out


POOL_LABELS = [dict(namespace="default", pod="admin-1"), dict(namespace="default", pod="manip-1"),
               dict(namespace="kube-system", pod="dns-1"), dict(namespace="default", pod="admin-2", extra="x")]
POOL_STACKS = [STACK_A, STACK_B, STACK_C, (U("main"),), (U("main"), K("read")), (U("main"), U("read"))]
POOL_SELECTORS = [ALL, sel(("namespace", "=", "default")), sel(("pod", "!~", "admin-.*")),
                  sel(("pod", "=~", "admin-.*"), ("extra", "!=", "x"))]

_write_st = st.lists(  # a write: (series, window index, [(stack, count)])
    st.tuples(st.integers(0, 3), st.integers(0, 5),
              st.lists(st.tuples(st.integers(0, 5), st.integers(1, 20)), min_size=1, max_size=4)),
    min_size=1, max_size=5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(_write_st, min_size=1, max_size=4), cut=st.integers(0, 6),
       lo=st.integers(0, 6), hi=st.integers(0, 6), which=st.integers(0, 3))
def test_backends_agree_with_a_reference_model(
    clickhouse, tmp_path_factory: pytest.TempPathFactory, writes, cut: int, lo: int, hi: int, which: int
) -> None:
    """Random additive writes, reads, label queries and retention: both backends == a dict model."""
    if importlib.util.find_spec("aggregator.store.sqlite") is None:
        pytest.skip(reason="aggregator/store/sqlite.py (SQLiteStore) not written yet")
    from aggregator.store.clickhouse import ClickHouseStore
    from aggregator.store.sqlite import SQLiteStore
    from tests.support.clickhouse import query

    model: dict[tuple[Labels, int], dict] = {}
    batches = []
    for write in writes:
        batch = []
        for si, wi, pairs in write:
            labels, start = Labels.of(POOL_LABELS[si]), T0 + 30 * wi
            p = Profile.from_pairs(((POOL_STACKS[k], c) for k, c in pairs), StackTable())
            batch.append(SeriesWindow(labels, start, p))
            cell = model.setdefault((labels, start), {})
            for stack, c in p.items():
                cell[stack] = cell.get(stack, 0) + c
        batches.append(batch)
    selector = POOL_SELECTORS[which]
    start, end = T0 + 30 * min(lo, hi), T0 + 30 * max(lo, hi)

    async def exercise(store: Store) -> tuple:
        await store.open()
        try:
            for b in batches:
                await store.write(b)
            everything = as_map(await store.read(ALL, 0, 2**32 - 1, StackTable()))
            ranged = as_map(await store.read(selector, start, end, StackTable()))
            names = await store.label_names(start, end)
            pods = await store.label_values("pod", selector, 0, 2**32 - 1)
            grouped = {}
            for gb in ((), MERGE_ALL, ("namespace",), ("namespace", "extra")):
                got = await store.read_merged(selector, start, end, StackTable(), gb)
                tot = await store.totals(selector, start, end, gb)
                grouped[gb] = ({k: p.as_dict() for k, p in got.items()}, sorted((k.items_, t, n) for k, t, n in tot))
            await store.delete_before(T0 + 30 * cut)
            after = as_map(await store.read(ALL, 0, 2**32 - 1, StackTable()))
            return everything, ranged, names, pods, after, grouped
        finally:
            await store.close()

    db = f"flamewatch_prop_{uuid.uuid4().hex[:12]}"
    try:
        got_ch = asyncio.run(exercise(ClickHouseStore(clickhouse.storage_spec(db))))
    finally:
        query(clickhouse.url, f"DROP DATABASE IF EXISTS {db}", timeout=30)
    got_sq = asyncio.run(exercise(SQLiteStore(tmp_path_factory.mktemp("prop") / "f.db")))
    assert got_ch == got_sq
    everything, ranged, names, pods, after, grouped = got_ch
    assert everything == model
    assert ranged == {k: v for k, v in model.items() if start <= k[1] < end and selector.matches(k[0])}
    assert names == sorted({n for (lab, t) in model if start <= t < end for n in lab})
    assert pods == sorted({lab["pod"] for (lab, _) in model if selector.matches(lab)})
    assert after == {k: v for k, v in model.items() if k[1] >= T0 + 30 * cut}
    for gb, (profiles, totals) in grouped.items():
        want: dict[Labels, dict] = {}
        want_totals: dict[tuple, int] = {}
        for (lab, t), cell in ranged.items():
            key = Labels.of({k: lab.get(k, "") for k in gb}) if gb else lab
            acc = want.setdefault(key, {})
            for stack, c in cell.items():
                acc[stack] = acc.get(stack, 0) + c
            want_totals[key.items_, t] = want_totals.get((key.items_, t), 0) + sum(cell.values())
        assert profiles == want, gb
        assert totals == sorted((k, t, n) for (k, t), n in want_totals.items()), gb


# Metadata paths that nest (a path that is a prefix of another, the empty path) and stacks that
# start with metadata frames continuing a shorter path: the cases where a (group, first frame)
# cell's node gets samples from other groups.
FLAME_LABELS = [dict(node="n1"), dict(node="n1", namespace="default"),
                dict(node="n1", namespace="default", pod="admin-1", container="app"),
                dict(namespace="default", pod="admin-1"), dict(node="n2", namespace="kube", pod="dns-1", process="dns"),
                dict(extra="x"), dict(node="n1", namespace="default", extra="y")]
FLAME_STACKS = [(U("main"),), (U("main"), U("a")), (U("main"), U("b"), K("sys")), (M("default"), U("main")),
                (M("default"), M("admin-1"), U("x")), (M("n1"),), (U("other"), U("main")), (), (K("irq"),),
                (M("app"), U("main"), U("a")), (M("admin-1"), M("app"), U("main")), (U("a"), U("main"))]
FLAME_SHARES = (0.0, 1 / 4000, 0.01, 0.05, 0.1, 0.3)
FLAME_NODES = (2, 3, 5, 12, 20000)

_flame_write = st.lists(  # (series, window index, [(stack, count)]); counts skewed so one pod can dominate
    st.tuples(st.integers(0, len(FLAME_LABELS) - 1), st.integers(0, 3),
              st.lists(st.tuples(st.integers(0, len(FLAME_STACKS) - 1), st.sampled_from([1, 2, 3, 7, 40, 900])),
                       min_size=1, max_size=6)),
    min_size=1, max_size=8)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=_flame_write, which=st.integers(0, 3))
# {node=n1}'s light cell 'default;main' joins the heavy {node=n1,namespace=default} node below it
@example(writes=[(0, 0, [(3, 3)]), (1, 0, [(1, 900)])], which=0)
# {node=n1,namespace=default}'s light cell 'admin-1' lies on the way of {node=n1}'s heavy stacks
@example(writes=[(0, 0, [(4, 900)]), (1, 1, [(10, 1), (0, 40)])], which=0)
def test_metadata_render_pushdown_equals_sqlite_and_the_unpruned_read(
    clickhouse, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, writes, which: int
) -> None:
    """``/api/v1/render?metadata=1`` JSON on ClickHouse (first-frame pushdown, read_merged_pruned)
    == the same render on SQLite == the ClickHouse render through the full grouped read_merged,
    document for document (nodes, labels, pruned counts), for every min_share (0 = no pushdown)
    and max_nodes (down to 2), on random nested metadata paths and metadata frames in stacks."""
    if importlib.util.find_spec("aggregator.store.sqlite") is None:
        pytest.skip(reason="aggregator/store/sqlite.py (SQLiteStore) not written yet")
    from aggregator import query
    from aggregator.params import Context, RenderRequest
    from aggregator.store.clickhouse import ClickHouseStore
    from aggregator.store.sqlite import SQLiteStore
    from tests.support.clickhouse import query as ch_query

    monkeypatch.setattr("aggregator.store.clickhouse.planner._PUSHDOWN_MIN_KEYS", 0)  # push down however small
    monkeypatch.setattr("aggregator.store.clickhouse.planner._PUSHDOWN_MIN_GROUPS", 0)
    batch = [SeriesWindow(Labels.of(FLAME_LABELS[si]), T0 + 30 * wi,
                          Profile.from_pairs(((FLAME_STACKS[k], c) for k, c in pairs), StackTable()))
             for si, wi, pairs in writes]
    selector = [ALL, sel(("node", "=", "n1")), sel(("pod", "!=", "dns-1")), sel(("extra", "=", ""))][which]
    rng = query.Range(T0, T0 + 120, 30)
    base = {"from": str(T0), "until": str(T0 + 120), "metadata": "1", "query": str(selector)}

    async def renders(store: Store, unpruned: bool) -> tuple[dict, list]:
        await store.open()
        try:
            await store.write(batch)
            out, used = {}, []
            for share in FLAME_SHARES:
                for max_nodes in FLAME_NODES:
                    if unpruned:  # the path before the pushdown: every (group, stack) row
                        series = await query.query_series(store, selector, rng, StackTable(), True)
                        doc = query.flame_json_series(series, True, max_nodes, share)
                    else:
                        params = {**base, "min_share": repr(share), "max_nodes": str(max_nodes)}
                        _, doc, _ = await query.render(store, RenderRequest.parse(params, Context(T0 + 120, 30, 20000)))
                        for key in ("from", "until", "query", "profile_type", "period_ns"):
                            doc.pop(key)
                        pushdown = getattr(store, "last_pushdown", None)
                        used.append(None if pushdown is None else dict(pushdown))
                        if pushdown is not None:
                            event(f"pushdown cut={bool(pushdown.get('cut'))} fetched={pushdown.get('fetched')}")
                            pushdown.clear()
                    out[share, max_nodes] = doc
            return out, used
        finally:
            await store.close()

    db = f"flamewatch_flame_{uuid.uuid4().hex[:12]}"
    try:
        pushed, used = asyncio.run(renders(ClickHouseStore(clickhouse.storage_spec(db)), False))
        full, _ = asyncio.run(renders(ClickHouseStore(clickhouse.storage_spec(db + "_full")), True))
    finally:
        for name in (db, db + "_full"):
            ch_query(clickhouse.url, f"DROP DATABASE IF EXISTS {name}", timeout=30)
    sqlite, _ = asyncio.run(renders(SQLiteStore(tmp_path_factory.mktemp("flame") / "f.db"), False))
    for key in pushed:
        assert pushed[key] == full[key], key
        assert pushed[key] == sqlite[key], key
    # ClickHouse took the pushdown for every min_share > 0 (0 = the plain grouped read)
    assert [bool(u) for u in used] == [share > 0 for share in FLAME_SHARES for _ in FLAME_NODES]


async def test_metadata_render_pushdown_cuts_and_refetches(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """One pod holds most samples (its stacks are visible: fetched in full), ten light pods are
    visible but their first-frame cells are cut to totals; the render equals the unpruned read on
    both backends."""
    from aggregator import query

    monkeypatch.setattr("aggregator.store.clickhouse.planner._PUSHDOWN_MIN_KEYS", 0)  # push down however small
    monkeypatch.setattr("aggregator.store.clickhouse.planner._PUSHDOWN_MIN_GROUPS", 0)
    batch = [sw(T0, {(U("main"), U("serve"), U(f"h{i}")): 2000 for i in range(5)},
                node="n1", namespace="prod", pod="big", container="app")]
    batch += [sw(T0 + 30, {(U(f"f{j}"), U(f"g{j}")): 40 for j in range(6)} | {(U(f"r{i}"),): 5},
                 node="n2", namespace="batch", pod=f"small-{i}") for i in range(10)]
    await store.write(batch)
    rng = query.Range(T0, T0 + 60, 30)
    for share in (0.0, 1 / 4000, 0.3, 0.01):
        for max_nodes in (2, 4, 9, 20000):
            series = await query.query_series(store, ALL, rng, StackTable(), True)
            want = query.flame_json_series(series, True, max_nodes, share)
            got = query.flame_json_series(await query.flame_series(store, ALL, rng, StackTable(), True, share),
                                          True, max_nodes, share)
            assert got == want, (share, max_nodes)
    # share 0.01 of 12,450 = 124.5: every pod (245) and the big pod's h0..h4 (2,000) are drawn,
    # no small pod's f0..f5 (40) or r (5)
    names = {want["names"][i] for i in want["nodes"]["name"]}
    assert {"h4", "small-3", "other"} <= names and not names & {"f0", "g0", "r3"}
    if isinstance(store, PrunedMergedReads):
        # the big pod's 'main' cell is fetched in full, the small pods' 7 cells each are cut
        assert store.last_pushdown == {"cells": 71, "cut": 70, "fetched": 1}  # type: ignore[attr-defined]
