"""stacks.model: exact unit tests and merge properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacks.model import Frame, Kind, Labels, Profile, StackTable, combine, merge

A, B, C = Frame("a"), Frame("b"), Frame("c")
K = Frame("sys_read", Kind.KERNEL)


def test_frame_defaults_and_constructors() -> None:
    assert Frame("x") == Frame("x", Kind.USER) == Frame.user("x")
    assert Frame.kernel("x") == Frame("x", Kind.KERNEL) != Frame("x")
    assert Frame.metadata("pod").kind is Kind.METADATA
    assert Kind("kernel") is Kind.KERNEL and Kind.USER == "user"


def test_stack_table_interns_stably() -> None:
    t = StackTable()
    assert t.intern((A, B)) == 0
    assert t.intern([A, C]) == 1
    assert t.intern(iter((A, B))) == 0
    assert len(t) == 2 and t.stack(1) == (A, C)


def test_from_pairs_sums_sorts_and_drops_zero() -> None:
    t = StackTable()
    t.intern((C,))  # id 0, so ids below are not in insertion order of the pairs
    p = Profile.from_pairs([((B,), 2), ((A, K), 3), ((B,), 5), ((C,), 0)], t)
    assert p.ids.tolist() == [1, 2] and p.counts.tolist() == [7, 3]
    assert p.ids.dtype == np.int64 and p.counts.dtype == np.int64
    assert p.as_dict() == {(B,): 7, (A, K): 3}
    assert p.total == 10 and len(p) == 2
    assert list(p.items()) == [((B,), 7), ((A, K), 3)]


def test_from_arrays_reduces_and_drops_non_positive() -> None:
    t = StackTable()
    for s in [(A,), (B,), (C,)]:
        t.intern(s)
    p = Profile.from_arrays(t, np.array([2, 0, 2, 1, 1]), np.array([1, 4, 2, 3, -3]))
    assert p.ids.tolist() == [0, 2] and p.counts.tolist() == [4, 3]


def test_empty_profile() -> None:
    e = Profile.empty()
    assert e.total == 0 and len(e) == 0 and e.as_dict() == {}
    assert merge([]).total == 0
    assert combine(e, e) == e


def test_equality_is_by_content_across_tables() -> None:
    p = Profile.from_pairs([((A, B), 1), ((C,), 2)])
    q = Profile.from_pairs([((C,), 2), ((A, B), 1)])
    assert p.table is not q.table and p == q
    assert p != Profile.from_pairs([((C,), 2)])
    assert (p == 3) is False
    with pytest.raises(TypeError):
        hash(p)


def test_rebase_and_merge_exact() -> None:
    p = Profile.from_pairs([((A,), 1), ((A, B), 2)])
    q = Profile.from_pairs([((A, B), 3), ((K,), 4)])
    m = merge([p, q])
    assert m.table is p.table
    assert m.as_dict() == {(A,): 1, (A, B): 5, (K,): 4}
    shared = StackTable()
    r = q.rebase(shared)
    assert r.table is shared and r == q and q.rebase(q.table) is q
    assert merge([p, q], table=shared).table is shared


def test_scale_rounds_and_drops_zero() -> None:
    p = Profile.from_pairs([((A,), 3), ((B,), 1)])
    assert p.scale(0.5).as_dict() == {(A,): 2}  # rint(1.5) == 2, rint(0.5) == 0 (half to even)
    assert p.scale(2).as_dict() == {(A,): 6, (B,): 2}


def test_map_stacks_merges_and_drops() -> None:
    p = Profile.from_pairs([((A, B), 1), ((A, C), 2), ((K,), 5)])
    q = p.map_stacks(lambda s: None if s[0].kind is Kind.KERNEL else s[:1])
    assert q.as_dict() == {(A,): 3}


def test_labels() -> None:
    lab = Labels.of({"pod": "p1", "namespace": "default", "empty": ""}, node="n1")
    assert dict(lab) == {"namespace": "default", "node": "n1", "pod": "p1"}
    assert list(lab) == ["namespace", "node", "pod"] and len(lab) == 3
    assert lab["pod"] == "p1" and "empty" not in lab
    with pytest.raises(KeyError):
        lab["nope"]
    assert lab.with_(pod="p2")["pod"] == "p2" and lab["pod"] == "p1"
    assert "pod" not in lab.with_(pod="")
    assert hash(lab) == hash(Labels.of([("node", "n1"), ("pod", "p1"), ("namespace", "default")]))
    assert repr(Labels.of(a="1", b="2")) == '{a="1",b="2"}'


frames = st.builds(Frame, st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(list(Kind)),
                   file=st.just(""), line=st.just(0))
stacks_ = st.lists(frames, min_size=1, max_size=4).map(tuple)
pairs = st.lists(st.tuples(stacks_, st.integers(0, 10**12)), max_size=12)


def as_counter(p: Profile) -> dict:
    return p.as_dict()


@settings(max_examples=150, deadline=None)
@given(pairs, pairs, pairs)
def test_merge_associative_commutative_identity(a: list, b: list, c: list) -> None:
    t = StackTable()  # one shared table, and also separate tables: both must agree
    pa, pb, pc = (Profile.from_pairs(x, t) for x in (a, b, c))
    qa, qb, qc = (Profile.from_pairs(x) for x in (a, b, c))
    assert combine(combine(pa, pb), pc) == combine(pa, combine(pb, pc))
    assert combine(qa, qb) == combine(qb, qa) == combine(pa, pb)
    assert combine(pa, Profile.empty(t)) == pa == combine(Profile.empty(), qa)
    assert merge([pa, pb, pc]) == combine(combine(qa, qb), qc)
    expected: dict = {}
    for s, n in [*a, *b, *c]:
        expected[s] = expected.get(s, 0) + n
    assert merge([pa, pb, pc]).as_dict() == {s: n for s, n in expected.items() if n > 0}
    m = merge([pa, pb, pc])
    assert np.all(np.diff(m.ids) > 0) and np.all(m.counts > 0)


@settings(max_examples=100, deadline=None)
@given(pairs)
def test_total_is_sum_and_order_independent(a: list) -> None:
    p = Profile.from_pairs(a)
    assert p.total == sum(n for _, n in a)
    assert Profile.from_pairs(list(reversed(a))) == p


def test_sums_saturate_at_count_max_instead_of_wrapping() -> None:
    from stacks.model import COUNT_MAX

    half = 1 << 62
    p = Profile.from_arrays(StackTable(), np.array([3, 3, 1, 3]), np.array([half, half, 5, 7]))
    assert p.ids.tolist() == [1, 3] and p.counts.tolist() == [5, COUNT_MAX]
    # Merging two saturated profiles stays saturated (and positive).
    assert merge([p, p]).counts.tolist() == [10, COUNT_MAX]
    # Below the danger zone the fast int64 path is exact.
    q = Profile.from_arrays(StackTable(), np.array([2, 2]), np.array([COUNT_MAX // 2, COUNT_MAX // 2]))
    assert q.counts.tolist() == [COUNT_MAX - 1]
