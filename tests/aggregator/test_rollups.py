"""Rollups (hour, day) give exactly the totals of the windows they replace, on both stores.

Random writes over two days and a bit, interleaved with compaction (which rolls closed hours
and days up on SQLite; ClickHouse's views roll every INSERT up), late writes into rolled
periods and retention cutting through hours and days; after them, merged profiles and
timeline totals over random ranges and steps must equal a model that sums the surviving
windows one by one.
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.store.base import MERGE_ALL, SeriesWindow
from aggregator.store.rollup import DAY, HOUR, RESOLUTIONS, max_resolution, plan
from stacks.model import Frame, Labels, Profile, StackTable
from stacks.selector import Matcher, Selector

T0 = 1_700_006_400  # a day boundary
STACKS = [(Frame.user("main"), Frame.user(f"f{i}")) for i in range(4)] + [(Frame.kernel("k"),)]
SERIES = [Labels.of(pod=f"p{i}", ns=f"n{i % 2}") for i in range(3)]
# A few hours (either side of two day boundaries) with a few windows each, so hours and days
# fill up, get rolled, and get late writes; ranges mostly of whole hours/days, some off by 30 s.
_HOURS = [-1, 0, 1, 2, 23, 24, 25, 47]
_start = st.builds(lambda h, w: T0 + h * HOUR + w * 30, st.sampled_from(_HOURS), st.sampled_from([0, 1, 59, 119]))
_write = st.tuples(st.just("write"), st.integers(0, 2), _start,
                   st.dictionaries(st.integers(0, len(STACKS) - 1), st.integers(1, 50), min_size=1, max_size=3))
_compact = st.tuples(st.just("compact"), st.sampled_from([0, 1, 3, 24, 26, 49]))  # windows closed before T0 + h
_retain = st.tuples(st.just("retain"), st.sampled_from([-1, 0, 1, 2, 24]).map(lambda h: h * HOUR),
                    st.sampled_from([0, 60, 1800]))
# first writes, then a compaction that rolls the first day's hours, then anything: late writes
# into rolled periods, more compactions, retention cuts
_ops = st.builds(lambda a, b: [*a, ("compact", 26), *b], st.lists(_write, min_size=2, max_size=12),
                 st.lists(st.one_of(_write, _write, _compact, _retain, _retain), min_size=1, max_size=15))
_range = st.builds(lambda h, off, n, tail: (T0 + h * HOUR + off, T0 + h * HOUR + off + n * HOUR + tail),
                   st.sampled_from([-1, 0, 1, 23, 24]), st.sampled_from([0, 0, 30]),
                   st.sampled_from([1, 2, 24, 25, 48, 49]), st.sampled_from([0, 0, 30, -30]))


async def _apply(store, ops) -> list[tuple[Labels, int, dict]]:  # type: ignore[no-untyped-def]
    """Run ``ops`` on ``store``; the model: every write still kept after the retention cuts."""
    writes: list[tuple[Labels, int, dict]] = []
    horizon = None
    for op in ops:
        if op[0] == "write":
            _, s, start, pairs = op
            if horizon is not None and start < horizon:
                continue  # the aggregator drops data older than the retention before the store
            prof = Profile.from_pairs(((STACKS[k], n) for k, n in pairs.items()), StackTable())
            await store.write([SeriesWindow(SERIES[s], start, prof)])
            writes.append((SERIES[s], start, {STACKS[k]: n for k, n in pairs.items()}))
        elif op[0] == "compact":
            if hasattr(store, "compact"):
                for _ in range(100):
                    if not await store.compact(T0 + op[1] * HOUR):
                        break
        else:
            t = T0 + op[1] + op[2]
            horizon = t if horizon is None else max(horizon, t)
            await store.delete_before(horizon)
            writes = [w for w in writes if w[1] >= horizon]
    return writes


async def _check(store, writes, ranges, steps) -> None:  # type: ignore[no-untyped-def]
    for (a, b), step in zip(ranges, steps, strict=True):
        want: dict[Labels, dict] = {}
        want_all: dict = {}
        want_t: dict[tuple[Labels, int], int] = {}
        for labels, start, pairs in writes:
            if not a <= start < b:
                continue
            acc = want.setdefault(labels, {})
            for stack, n in pairs.items():
                acc[stack] = acc.get(stack, 0) + n
                want_all[stack] = want_all.get(stack, 0) + n
            key = (labels, start - start % step)
            want_t[key] = want_t.get(key, 0) + sum(pairs.values())
        got = await store.read_merged(Selector(), a, b, StackTable(), ())
        assert {k: p.as_dict() for k, p in got.items() if p.total} == want, (a, b)
        merged = await store.read_merged(Selector(), a, b, StackTable(), MERGE_ALL)
        assert {k: p.as_dict() for k, p in merged.items() if p.total} == ({Labels.of({}): want_all} if want_all else {})
        # a selector that matches every series (as the type matcher does): the every-series reads
        every = Selector((Matcher("pod", "=~", "p.*"),))
        merged = await store.read_merged(every, a, b, StackTable(), MERGE_ALL)
        assert {k: p.as_dict() for k, p in merged.items() if p.total} == ({Labels.of({}): want_all} if want_all else {})
        assert await store.label_values("pod", Selector(), a, b) == sorted({k["pod"] for k in want})
        one = Selector((Matcher("pod", "=", "p1"),))
        got1 = await store.read_merged(one, a, b, StackTable(), ())
        want1 = {k: v for k, v in want.items() if k["pod"] == "p1"}
        assert {k: p.as_dict() for k, p in got1.items() if p.total} == want1
        got_t: dict[tuple[Labels, int], int] = {}
        for labels, t, n in await store.totals(Selector(), a, b, (), step=step):
            key = (labels, t - t % step)
            got_t[key] = got_t.get(key, 0) + n
        assert {k: v for k, v in got_t.items() if v} == want_t, (a, b, step)
        # the timeline's top-N path (one pod kept, the rest in "other"): the same sums per bucket
        kept, other, _, rest = await store.top_totals(Selector(), a, b, "pod", 1, step=step)
        want_pod: dict[tuple[str, int], int] = {}
        for (labels, t), n in want_t.items():
            want_pod[labels["pod"], t] = want_pod.get((labels["pod"], t), 0) + n
        got_kept = {(labels["pod"], t - t % step): n for labels, t, n in kept if n}
        assert got_kept == {k: v for k, v in want_pod.items() if k[0] in {p for p, _ in got_kept}}, (a, b, step)
        want_other: dict[int, int] = {}
        for (pod, t), n in want_pod.items():
            if (pod, t) not in got_kept:
                want_other[t] = want_other.get(t, 0) + n
        assert {t - t % step: n for t, n in other.items() if n} == want_other, (a, b, step)
        assert rest == sum(want_other.values())


async def _sqlite(tmp_path):  # type: ignore[no-untyped-def]
    from aggregator.store.sqlite import SQLiteStore

    s = SQLiteStore(tmp_path / f"{uuid.uuid4().hex}.db")
    await s.open()
    return s


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops, ranges=st.lists(_range, min_size=3, max_size=3),
       steps=st.lists(st.sampled_from([30, 300, HOUR, 6 * HOUR, DAY]), min_size=3, max_size=3))
async def test_sqlite_rollups_equal_windows(tmp_path, ops, ranges, steps) -> None:  # type: ignore[no-untyped-def]
    store = await _sqlite(tmp_path)
    try:
        writes = await _apply(store, ops)
        await _check(store, writes, ranges, steps)
    finally:
        await store.close()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops, ranges=st.lists(_range, min_size=3, max_size=3),
       steps=st.lists(st.sampled_from([30, HOUR, DAY]), min_size=3, max_size=3))
async def test_clickhouse_rollups_equal_windows(request, ops, ranges, steps) -> None:  # type: ignore[no-untyped-def]
    from aggregator.store.clickhouse import ClickHouseStore

    server = request.getfixturevalue("clickhouse")
    store = ClickHouseStore(server.storage_spec(f"fw_rollup_{uuid.uuid4().hex[:12]}"))
    await store.open()
    try:
        writes = await _apply(store, ops)
        await _check(store, writes, ranges, steps)
    finally:
        await store._run(f"DROP DATABASE IF EXISTS {store.database}")
        await store.close()


async def test_clickhouse_reads_use_the_new_rollups(clickhouse) -> None:  # type: ignore[no-untyped-def]
    """Two days of windows on ClickHouse: with the per-series rows deleted behind the store's back,
    reads of whole periods still answer, from the rollups without the series key (the merged
    profile of every series), the hourly totals (a timeline of step >= an hour) and the series
    per day (label values); a late write into a rolled hour shows at once in all three; retention
    cutting into the first hour reads that hour from what is left."""
    from aggregator.store.clickhouse import ClickHouseStore

    store = ClickHouseStore(clickhouse.storage_spec(f"fw_rollup_{uuid.uuid4().hex[:12]}"))
    await store.open()
    db = store.database
    try:
        prof = Profile.from_pairs([(STACKS[0], 2)], StackTable())
        await store.write([SeriesWindow(SERIES[0], T0 + h * HOUR + 60, prof) for h in range(48)])
        await store.write([SeriesWindow(SERIES[1], T0 + DAY + 120, prof)])
        tables = ("samples", "samples_1h", "samples_1d", "window_totals", "series_windows")
        for t in tables:
            await store._run(f"ALTER TABLE {db}.{t} DELETE WHERE 1")
        await store._await_mutations(list(tables))

        async def check(a: int, b: int, stacks: int, hours: dict[int, int], pods: list[str]) -> None:
            got = await store.read_merged(Selector(), a, b, StackTable(), MERGE_ALL)
            assert {k: p.as_dict() for k, p in got.items()} == {Labels.of({}): {STACKS[0]: stacks}}
            rows = await store.totals(Selector(), a, b, MERGE_ALL, step=HOUR)
            assert {t: n for _, t, n in rows if n} == hours
            kept, other, _, _ = await store.top_totals(Selector(), a, b, "pod", 5, step=6 * HOUR)
            six: dict[int, int] = {}
            for t, n in hours.items():
                six[t - t % (6 * HOUR)] = six.get(t - t % (6 * HOUR), 0) + n
            got_six: dict[int, int] = {}
            for _, t, n in kept:
                got_six[t] = got_six.get(t, 0) + n
            assert {t: n for t, n in got_six.items() if n} == six and not other
            assert await store.label_values("pod", Selector(), a, b) == pods

        two_days = {T0 + h * HOUR: 2 for h in range(48)}
        two_days[T0 + DAY] += 2
        await check(T0, T0 + 2 * DAY, 98, two_days, ["p0", "p1"])
        await store.write([SeriesWindow(SERIES[0], T0 + 90, prof)])  # late, into a rolled hour and day
        two_days[T0] += 2
        await check(T0, T0 + 2 * DAY, 100, two_days, ["p0", "p1"])
        # retention cutting through the first hour: the rest of that day is its hours, the first
        # hour is what samples still has (the late write at T0+90; the rest was deleted above)
        await store.delete_before(T0 + 75)
        day0 = {T0 + h * HOUR: 2 for h in range(24)}
        await check(T0, T0 + DAY, 48, day0, ["p0"])
        await check(T0, T0 + 2 * DAY, 100 - 2, {**two_days, T0: 2}, ["p0", "p1"])
    finally:
        await store._run(f"DROP DATABASE IF EXISTS {db}")
        await store.close()


async def test_clickhouse_new_views_on_an_older_database_read_the_old_tables(clickhouse) -> None:  # type: ignore[no-untyped-def]
    """A database written before the hourly totals, the every-series rollups and series_days
    existed: the views created on open see only periods after its data (and the clock), so
    the reads of the old periods stay exact (from the tables that have them), not empty."""
    from aggregator.store.clickhouse import ClickHouseStore
    from aggregator.store.clickhouse.schema import views

    spec = clickhouse.storage_spec(f"fw_rollup_{uuid.uuid4().hex[:12]}")
    store = ClickHouseStore(spec)
    await store.open()
    db = store.database
    try:
        prof = Profile.from_pairs([(STACKS[0], 2), (STACKS[1], 1)], StackTable())
        await store.write([SeriesWindow(SERIES[h % 2], T0 + h * HOUR + 60, prof) for h in range(48)])

        async def reads(s: ClickHouseStore) -> tuple:  # type: ignore[type-arg]
            got = await s.read_merged(Selector(), T0, T0 + 2 * DAY, StackTable(), MERGE_ALL)
            rows = await s.totals(Selector(), T0, T0 + 2 * DAY, MERGE_ALL, step=HOUR)
            return ({k: p.as_dict() for k, p in got.items()}, sorted((t, n) for _, t, n in rows if n),
                    await s.label_values("pod", Selector(), T0 + DAY, T0 + 2 * DAY))

        want = await reads(store)
        assert want[0] == {Labels.of({}): {STACKS[0]: 96, STACKS[1]: 48}} and len(want[1]) == 48
        # as a database from before this round: without the new views, their tables, their marks
        new = [(key, name) for key, name, _, _ in views(db)
               if key in ("since_totals_1h", "since_all_3600", "since_all_86400", "since_series_days")]
        assert len(new) == 4
        for _, name in new:
            await store._run(f"DROP TABLE {db}.{name}_mv")
            await store._run(f"DROP TABLE {db}.{name}")
        await store._run(f"ALTER TABLE {db}.rollup_meta DELETE WHERE key IN ({','.join(repr(k) for k, _ in new)})")
        await store._await_mutations(["rollup_meta"])
        reopened = ClickHouseStore(spec)
        await reopened.open()
        try:
            meta = await reopened._meta()
            assert all(meta[k] > T0 + 2 * DAY for k, _ in new)
            assert await reads(reopened) == want
        finally:
            await reopened.close()
    finally:
        await store._run(f"DROP DATABASE IF EXISTS {db}")
        await store.close()


async def test_sqlite_reads_use_the_rollups(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two days of windows, compacted: a range of whole days reads day rollups only, and a late
    write into a rolled hour shows at once (it went into the rollups too)."""
    store = await _sqlite(tmp_path)
    try:
        prof = Profile.from_pairs([(STACKS[0], 2)], StackTable())
        await store.write([SeriesWindow(SERIES[0], T0 + h * HOUR + 60, prof) for h in range(48)])
        while await store.compact(T0 + 2 * DAY):
            pass
        r = store._r
        rolled = await store._run(store._rexec, lambda: sorted(r.execute("SELECT res, start FROM rolled").fetchall()))
        assert rolled == sorted([(HOUR, T0 + h * HOUR) for h in range(48)] + [(DAY, T0), (DAY, T0 + DAY)])
        # the windows table is emptied behind the store's back: what still reads comes from rollups
        await store._run(store._wexec, lambda: store._w.execute("DELETE FROM windows WHERE start >= ?", (T0,)))
        got = await store.read_merged(Selector(), T0, T0 + 2 * DAY, StackTable(), MERGE_ALL)
        assert got[Labels.of({})].as_dict() == {STACKS[0]: 96}
        await store.write([SeriesWindow(SERIES[0], T0 + 90, prof)])  # late, into a rolled hour and day
        got = await store.read_merged(Selector(), T0, T0 + DAY, StackTable(), MERGE_ALL)
        assert got[Labels.of({})].as_dict() == {STACKS[0]: 50}
        # retention cutting through the first hour: its rollups go, the rest of the day is hours
        await store.delete_before(T0 + 75)
        got = await store.read_merged(Selector(), T0, T0 + DAY, StackTable(), MERGE_ALL)
        assert got[Labels.of({})].as_dict() == {STACKS[0]: 2 * 23 + 2}  # the late write at T0+90 is a window
    finally:
        await store.close()


@given(rolled=st.sets(st.tuples(st.sampled_from(RESOLUTIONS), st.integers(0, 60)).map(lambda t: (t[0], t[1] * t[0]))),
       start=st.integers(0, 5 * DAY), length=st.integers(0, 5 * DAY), max_res=st.sampled_from([0, HOUR, DAY]))
def test_plan_covers_the_range_exactly_once(rolled, start, length, max_res) -> None:  # type: ignore[no-untyped-def]
    end = start + length
    got = plan(start, end, rolled, max_res)
    spans = [(p, p + res) for res, ps in got.periods.items() for p in ps] + got.windows
    spans.sort()
    at = start
    for a, b in spans:
        assert a == at and b > a
        at = b
    assert at == end or (not spans and start == end)
    for res, ps in got.periods.items():
        assert res <= max_res and all((res, p) in rolled for p in ps)
    # coarsest: no rolled day inside the range is left to hours or windows
    if max_res >= DAY:
        chosen_days = set(got.periods.get(DAY, []))
        assert all(p in chosen_days for r, p in rolled if r == DAY and start <= p and p + DAY <= end)


@pytest.mark.parametrize(("step", "res"), [(30, 0), (300, 0), (3600, 3600), (7200, 3600), (86400, 86400),
                                           (604800, 86400), (5400, 0)])
def test_max_resolution(step: int, res: int) -> None:
    assert max_resolution(step) == res
