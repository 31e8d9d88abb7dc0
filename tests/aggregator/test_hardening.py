"""Unit tests of the issue-24 pieces: group-by truncation, push precount, sums, URL redaction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator import ingest
from aggregator.query import OTHER_GROUP, top_groups
from aggregator.store.base import redacted
from stacks import push
from stacks.errors import InputError, LimitError
from stacks.model import Frame, Profile

groups_st = st.dictionaries(st.text(max_size=4), st.dictionaries(st.integers(0, 5), st.integers(0, 2**62), max_size=4),
                            max_size=30)


@given(groups_st, st.integers(1, 10))
def test_top_groups_keeps_the_heaviest_and_loses_nothing(groups: dict[str, dict[int, int]], n: int) -> None:
    kept, other, note = top_groups(groups, n)
    total = sum(sum(p.values()) for p in groups.values())
    if len(groups) <= n:
        assert kept == groups and other is None and note is None
        return
    assert len(kept) == n and note is not None and note["other_groups"] == len(groups) - n
    assert sum(sum(p.values()) for p in kept.values()) + sum(other.values()) == total  # exact ints
    lightest_kept = min(sum(p.values()) for p in kept.values())
    assert all(sum(groups[g].values()) <= lightest_kept for g in groups if g not in kept)
    assert OTHER_GROUP in note["note"]


@given(st.lists(st.integers(0, 5), max_size=12), st.integers(1, 20))
def test_precount_refuses_exactly_past_the_limit(per_series: list[int], limit: int) -> None:
    raw = push.encode_push_request([push.PushSeries((("service_name", "a"),), tuple(push.RawSample(b"x")
                                    for _ in range(k))) for k in per_series])
    limits = ingest.Limits(profiles=limit, series=1000, samples=1000)
    if sum(per_series) > limit:
        with pytest.raises(LimitError, match="max-profiles-per-push"):
            ingest.precount_push(raw, limits)
    else:
        ingest.precount_push(raw, limits)


def test_check_sums_refuses_past_int64() -> None:
    p = Profile.from_pairs([((Frame.user("a"),), 2**62), ((Frame.user("b"),), 2**62 - 1)])
    ingest.check_sums(ingest.Decoded([(None, None, p)]))  # type: ignore[list-item]
    q = Profile.from_pairs([((Frame.user("c"),), 1)])
    with pytest.raises(ingest.SumRefused, match="2\\^63-1"):
        ingest.check_sums(ingest.Decoded([(None, None, p), (None, None, q)]))  # type: ignore[list-item]


@pytest.mark.parametrize(("name", "ok"), [("pod", True), ("_x9", True), ("otel.scope.name", True), ("5", False),
                                          ("a-b", False), ("<img>", False), ("", False), ("é", False)])
def test_stored_label_names(name: str, ok: bool) -> None:
    if ok:
        ingest.check_label_names([name], "t")
    else:
        with pytest.raises(InputError, match="label name"):
            ingest.check_label_names([name], "t")


@pytest.mark.parametrize(("url", "shown"), [
    ("clickhouse://u:pw@h:8123/db", "clickhouse://u:***@h:8123/db"),
    ("clickhouse://u@h/db", "clickhouse://u@h/db"),
    ("clickhouse://h/db?password=pw&timeout=3", "clickhouse://h/db?password=***&timeout=3"),
    ("sqlite", "sqlite"),
])
def test_redacted(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_check_sums_refuses_a_count_that_saturated_while_summed() -> None:
    wrapped = Profile.from_pairs([((Frame.user("a"),), 2**62), ((Frame.user("a"),), 2**62)])
    assert int(wrapped.counts.max()) == 2**63 - 1  # the int64 sum of the two samples saturated
    with pytest.raises(ingest.SumRefused, match="2\\^63-1"):
        ingest.check_sums(ingest.Decoded([(None, None, wrapped)]))  # type: ignore[list-item]
