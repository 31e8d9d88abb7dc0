"""stacks.folded: exact parsing, errors with line numbers, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacks.errors import FoldedError, InputError
from stacks.folded import dumps, format_frame, format_lines, parse, parse_frame
from stacks.model import Frame, Kind, Profile, StackTable

K = Kind.KERNEL


def test_parse_frame_markers() -> None:
    assert parse_frame("sys_read_[k]") == Frame("sys_read", K)
    assert parse_frame("[k] sys_read") == Frame("sys_read", K)
    assert parse_frame("main") == Frame("main")
    assert parse_frame("x_[j]") == Frame("x_[j]")  # only _[k] is a kind marker
    assert format_frame(Frame("sys_read", K)) == "sys_read_[k]"
    assert format_frame(Frame("main")) == "main"


def test_parse_exact() -> None:
    text = "main;work;sys_read_[k] 5\r\n\n  \nmain;work 2\nmain;[k] sys_read 1\nmain;work 3\n"
    p = parse(text)
    assert p.as_dict() == {
        (Frame("main"), Frame("work"), Frame("sys_read", K)): 5,
        (Frame("main"), Frame("work")): 5,
        (Frame("main"), Frame("sys_read", K)): 1,
    }
    assert parse(text.splitlines()) == p
    assert parse("a b c 7").as_dict() == {(Frame("a b c"),): 7}  # split at the last space


def test_parse_shares_table() -> None:
    t = StackTable()
    p = parse("a;b 1\n", t)
    q = parse("a;b 2\nc 1\n", t)
    assert p.table is q.table is t and len(t) == 2
    assert q.ids.tolist() == [0, 1]


def test_zero_counts_dropped() -> None:
    assert parse("a 0\nb 1\n").as_dict() == {(Frame("b"),): 1}


@pytest.mark.parametrize(
    ("text", "lineno", "why"),
    [
        ("a 1\nnocount\n", 2, "no stack before the count"),
        ("a 1\nb 1\nc x\n", 3, "count 'x' is not an integer"),
        ("\n\na -3\n", 3, "count is negative"),
        (" 5\n", 1, "no stack before the count"),
        ("a;b 1.5\n", 1, "not an integer"),
    ],
)
def test_errors_name_line_number_and_line(text: str, lineno: int, why: str) -> None:
    with pytest.raises(FoldedError) as ei:
        parse(text)
    e = ei.value
    assert isinstance(e, InputError) and isinstance(e, ValueError)
    assert e.lineno == lineno
    bad = text.splitlines()[lineno - 1]
    assert e.line == bad
    assert f"line {lineno}:" in str(e) and why in str(e) and repr(bad) in str(e)


def test_long_bad_line_is_shortened() -> None:
    with pytest.raises(FoldedError) as ei:
        parse("x" * 500 + " nope")
    assert "..." in str(ei.value) and len(str(ei.value)) < 400


def test_dumps_exact_sorted() -> None:
    p = Profile.from_pairs([((Frame("b"), Frame("k", K)), 2), ((Frame("a"),), 10)])
    assert format_lines(p) == ["a 10", "b;k_[k] 2"]
    assert dumps(p) == "a 10\nb;k_[k] 2\n"
    assert dumps(Profile.empty()) == ""


# str.splitlines() also breaks at these; see test_line_separators_inside_names.
SPLITLINES = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
name = st.text(
    alphabet=st.characters(blacklist_characters=";" + SPLITLINES, blacklist_categories=("Cs",)),
    min_size=1,
    max_size=8,
).filter(lambda s: s.strip() and not s.endswith("_[k]") and not s.startswith("[k] "))
frame = st.builds(Frame, name, st.sampled_from([Kind.USER, Kind.KERNEL]), file=st.just(""), line=st.just(0))
stack = st.lists(frame, min_size=1, max_size=5).map(tuple)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(stack, st.integers(1, 10**15)), max_size=15))
def test_round_trip(pairs: list) -> None:
    p = Profile.from_pairs(pairs)
    text = dumps(p)
    assert parse(text) == p
    assert dumps(parse(text)) == text
    assert text.count("_[k]") == sum(f.kind is K for s, _ in p.items() for f in s)


def test_line_separators_inside_names() -> None:
    # \x85 is common in latin-1-decoded perf output; only \n ends a folded line.
    p = Profile.from_pairs([((Frame("caf\x85e"), Frame("a\x1eb")), 2)])
    assert parse(dumps(p)) == p


def test_empty_stack_is_not_written() -> None:
    # An empty stack has no folded form; dumps leaves it out rather than write " 3".
    p = Profile.from_pairs([((), 3), ((Frame("a"),), 1)])
    assert dumps(p) == "a 1\n"
    assert parse(dumps(p)).as_dict() == {(Frame("a"),): 1}
