"""Selector parsing: exact cases, errors naming the position, and hypothesis round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stacks.errors import InputError
from stacks.model import Labels
from stacks.selector import Matcher, Selector, matcher, parse_selector


def terms(sel: Selector) -> list[tuple[str, str, str]]:
    return [(m.name, m.op, m.value) for m in sel.matchers]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("{}", []),
        ("  { }  ", []),
        ('{namespace="default"}', [("namespace", "=", "default")]),
        ('{namespace="default",pod=~"admin-.*"}', [("namespace", "=", "default"), ("pod", "=~", "admin-.*")]),
        ('{ a != "x" , b !~ "y|z", }', [("a", "!=", "x"), ("b", "!~", "y|z")]),
        ("{a='single'}", [("a", "=", "single")]),
        ("{a=`raw\\d`}", [("a", "=", "raw\\d")]),
        ('{a="q\\"uote\\\\"}', [("a", "=", 'q"uote\\')]),
        ('{otel.scope.name="pyroscope"}', [("otel.scope.name", "=", "pyroscope")]),
        ("myapp", [("service_name", "=", "myapp")]),
        ('myapp{env="prod"}', [("service_name", "=", "myapp"), ("env", "=", "prod")]),
    ],
)
def test_parse(text: str, expected: list[tuple[str, str, str]]) -> None:
    assert terms(parse_selector(text)) == expected


@pytest.mark.parametrize(
    ("text", "where", "why"),
    [
        ("{a=b}", 3, "expected a quoted value"),
        ('{a="x"', 6, "expected ',' or '}'"),
        ('{a="x', 3, "unterminated"),
        ('{=""}', 1, "expected a label name"),
        ('{a==""}', 3, "expected a quoted value"),
        ('{a~""}', 2, "expected one of = != =~ !~"),
        ('{a=~"("}', 4, "regex"),
        ('{a="x"} junk', 8, "unexpected text"),
        ('{a="\\q"}', 4, "unknown escape"),
        ("x y", 1, "expected '{'"),
    ],
)
def test_errors_name_position_and_fix(text: str, where: int, why: str) -> None:
    with pytest.raises(InputError) as e:
        parse_selector(text)
    msg = str(e.value)
    assert f"position {where}" in msg
    assert why in msg
    assert repr(text) in msg and "e.g." in msg


def test_matching_semantics() -> None:
    labels = Labels.of(namespace="default", pod="admin-7f9c", container="app")
    assert parse_selector('{namespace="default",pod=~"admin-.*"}').matches(labels)
    assert not parse_selector('{pod=~"admin"}').matches(labels)  # anchored: no partial match
    assert parse_selector('{pod!~"web-.*"}').matches(labels)
    assert parse_selector('{node=""}').matches(labels)  # absent label reads as ""
    assert not parse_selector('{node!=""}').matches(labels)
    assert parse_selector('{node=~".*"}').matches(labels)
    assert not parse_selector('{namespace!="default"}').matches(labels)
    assert parse_selector("{}").matches(Labels.of())


def test_bad_operator_in_matcher_helper() -> None:
    with pytest.raises(InputError, match="operator"):
        matcher("a", "==", "x")


NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,8}", fullmatch=True)
VALUES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
OPS = st.sampled_from(["=", "!="])


@given(st.lists(st.tuples(NAMES, OPS, VALUES), max_size=5))
def test_str_round_trips(items: list[tuple[str, str, str]]) -> None:
    sel = Selector(tuple(Matcher(n, op, v) for n, op, v in items))
    assert terms(parse_selector(str(sel))) == items


@given(st.dictionaries(NAMES, VALUES, max_size=5), st.lists(st.tuples(NAMES, OPS, VALUES), max_size=4))
def test_conjunction(labels: dict[str, str], items: list[tuple[str, str, str]]) -> None:
    lab = Labels.of(labels)
    sel = Selector(tuple(Matcher(n, op, v) for n, op, v in items))
    each = [Selector((m,)).matches(lab) for m in sel.matchers]
    assert sel.matches(lab) == all(each)


@given(st.text(max_size=30))
def test_never_crashes_on_garbage(text: str) -> None:
    try:
        parse_selector(text)
    except InputError:
        pass


@pytest.mark.parametrize("rx", ["(" * 500 + ")" * 500, "a{99999999999}"])
def test_pathological_regex_is_input_error(rx: str) -> None:
    with pytest.raises(InputError, match="regex"):
        parse_selector('{a=~"' + rx + '"}')


# -- RE2 (issue 24, cause 1) -------------------------------------------------------------------
def test_regex_is_linear_time_and_fully_anchored() -> None:
    import time

    m = matcher("pod", "=~", "(.|.)*Q")
    t0 = time.perf_counter()
    assert not m.matches({"pod": "a" * 40})  # exponential in Python's re: hours at 40 chars
    assert time.perf_counter() - t0 < 0.5
    assert matcher("pod", "=~", "adm").matches({"pod": "adm"})
    assert not matcher("pod", "=~", "adm").matches({"pod": "admin"})  # anchored, as Prometheus
    assert not matcher("pod", "=~", "adm|x").matches({"pod": "xadm"})  # ^(?:adm|x)$, not ^adm|x$
    assert matcher("pod", "!~", "a.*").matches({"pod": "b"})


@pytest.mark.parametrize(("rx", "words"), [
    ("(a)\\1", "RE2"), ("(?=a)", "RE2"), ("a{1001}", "1000"), ("(" * 101 + ")" * 101, "nested"),
])
def test_regex_refused_by_re2_rules_names_the_rule(rx: str, words: str) -> None:
    with pytest.raises(InputError, match=words):
        matcher("pod", "=~", rx)


@given(st.lists(st.text(alphabet="ab.-x", max_size=6), max_size=30), st.sampled_from(["a.*", "(a|b)+", "x?-.", ""]))
def test_memoized_regex_results_equal_fresh_matching(values: list[str], rx: str) -> None:
    import re2

    m = matcher("k", "=~", rx)
    for v in values + values:  # second pass answers from the memo
        assert m.matches({"k": v}) == (re2.fullmatch(rx, v) is not None)
