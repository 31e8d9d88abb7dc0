"""stacks.delta: cumulative (running-total) profiles become per-push deltas, Pyroscope's rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stacks.delta import BASELINE, RESET, CumulativeDeltas, difference, needs_delta
from stacks.model import Frame, Kind, Labels, Profile, StackTable
from stacks.profiletype import ProfileType

A = (Frame("main", Kind.USER), Frame("alloc", Kind.USER))
B = (Frame("main", Kind.USER), Frame("grow", Kind.USER))
S = Labels.of({"service_name": "api"})


def prof(table: StackTable, **counts: int) -> Profile:
    stacks = {"a": A, "b": B}
    return Profile.from_pairs([(stacks[k], v) for k, v in counts.items() if v], table)


def test_only_pushed_go_allocations_are_differenced() -> None:
    alloc = ProfileType.parse("memory:alloc_space:bytes:space:bytes")
    objects = ProfileType.parse("memory:alloc_objects:count:space:bytes")
    inuse = ProfileType.parse("memory:inuse_space:bytes:space:bytes")
    cpu = ProfileType.parse("process_cpu:cpu:nanoseconds:cpu:nanoseconds")
    assert needs_delta(alloc, None) and needs_delta(objects, "true")
    assert not needs_delta(alloc, "false") and not needs_delta(alloc, "FALSE")
    assert not needs_delta(inuse, None) and not needs_delta(cpu, None)


def test_first_is_baseline_then_deltas_then_reset() -> None:
    t, d = StackTable(), CumulativeDeltas()
    assert d.delta(S, prof(t, a=100, b=10)) == (None, BASELINE)
    got, why = d.delta(S, prof(t, a=150, b=10))
    assert why == "" and got is not None and got.as_dict() == {A: 50}
    got, _ = d.delta(S, prof(t, a=150, b=40))
    assert got is not None and got.as_dict() == {B: 30}
    # a stack new since the baseline counts in full
    d2 = CumulativeDeltas()
    d2.delta(S, prof(t, a=5))
    got, _ = d2.delta(S, prof(t, a=5, b=7))
    assert got is not None and got.as_dict() == {B: 7}
    # a fall is a restart: this push becomes the baseline, the next is differenced from it
    assert d.delta(S, prof(t, a=20, b=40)) == (None, RESET)
    got, _ = d.delta(S, prof(t, a=25, b=41))
    assert got is not None and got.as_dict() == {A: 5, B: 1}


def test_series_are_independent_and_bounded() -> None:
    t, d = StackTable(), CumulativeDeltas(max_series=2)
    other = Labels.of({"service_name": "db"})
    third = Labels.of({"service_name": "web"})
    d.delta(S, prof(t, a=1))
    d.delta(other, prof(t, a=100))
    got, _ = d.delta(S, prof(t, a=3))
    assert got is not None and got.as_dict() == {A: 2}
    d.delta(third, prof(t, a=1))  # evicts `other`, the least recently pushed
    assert len(d) == 2
    assert d.delta(other, prof(t, a=200)) == (None, BASELINE)


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=12))
def test_deltas_add_up_to_the_growth_since_the_baseline(increments: list[tuple[int, int]]) -> None:
    # Monotonic running totals: the stored deltas sum to the last total minus the baseline.
    t, d = StackTable(), CumulativeDeltas()
    a, b = 10, 10
    d.delta(S, prof(t, a=a, b=b))
    stored = {A: 0, B: 0}
    for da, db in increments:
        a, b = a + da, b + db
        got, why = d.delta(S, prof(t, a=a, b=b))
        assert why == "" and got is not None
        for stack, v in got.as_dict().items():
            assert v > 0
            stored[stack] += v
    assert stored == {A: a - 10, B: b - 10}


@given(st.lists(st.dictionaries(st.integers(0, 5), st.integers(0, 10**12), max_size=6), min_size=1, max_size=10))
def test_difference_on_any_key_matches_the_per_series_state(pushes: list[dict[int, int]]) -> None:
    # The shared stores key stacks by hash: `difference` on int keys, with the highest values
    # carried as a shared store keeps them, gives what CumulativeDeltas gives on stacks.
    t, d = StackTable(), CumulativeDeltas()
    stacks = {k: (Frame("main", Kind.USER), Frame(f"f{k}", Kind.USER)) for k in range(6)}
    highest: dict[int, int] | None = None
    for push in pushes:
        values = {k: v for k, v in push.items() if v}
        want, why = d.delta(S, Profile.from_pairs([(stacks[k], v) for k, v in values.items()], t))
        grown, why2 = difference(highest, values)
        assert why == why2
        if grown is None:
            assert want is None
            highest = dict(values)
            continue
        assert want is not None and want.as_dict() == {stacks[k]: v for k, v in grown.items()}
        assert all(v > 0 for v in grown.values())
        highest.update(values)
