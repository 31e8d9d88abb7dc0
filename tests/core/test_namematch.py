"""stacks.namematch (names, suffixes, RE2 regexes) and the views that take a matcher: sandwich,
focus, search (issue 28, navigation)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacks import tree
from stacks.errors import InputError
from stacks.folded import parse
from stacks.namematch import MAX_PATTERN_CHARS, NameMatcher
from stacks.views import matched_names

ADMIN = """\
main;Admin.handle;Admin.createSampleImages;resize 6
main;Admin.handle;Admin.createSampleImages 2
main;jobs::createSampleImages;resize 3
main;Admin.handle;fetchSampleImages 4
main;createSampleImagesLater 5
"""


@pytest.mark.parametrize(("text", "mode", "name", "want"), [
    ("createSampleImages", "name", "createSampleImages", True),
    ("createSampleImages", "name", "Admin.createSampleImages", True),
    ("createSampleImages", "name", "jobs::createSampleImages", True),
    ("createSampleImages", "name", "app/admin.py:createSampleImages", True),
    ("Images", "name", "createSampleImages", False),  # a suffix starts at a separator
    ("createSampleImages", "name", "createSampleImagesLater", False),
    (".createSampleImages", "name", "Admin.createSampleImages", True),
    ("createSampleImages", "exact", "Admin.createSampleImages", False),
    ("createSampleImages", "exact", "createSampleImages", True),
    ("^Admin\\.", "regex", "Admin.handle", True),
    ("^Admin\\.", "regex", "jobs::Admin.handle", False),
    ("Sample", "regex", "fetchSampleImages", True),
])
def test_matcher(text: str, mode: str, name: str, want: bool) -> None:
    assert NameMatcher(text, mode)(name) is want


@pytest.mark.parametrize(("text", "mode", "words"), [
    ("(unclosed", "regex", ["regex", "invalid", "RE2"]),
    ("a" * (MAX_PATTERN_CHARS + 1), "regex", ["at most 1000"]),
    ("a" * (MAX_PATTERN_CHARS + 1), "name", ["at most 1000"]),
    ("x", "glob", ["match='glob'", "name, exact, regex"]),
    ("", "name", ["empty"]),
    ("((a{1000}){1000}){1000}", "regex", ["invalid"]),  # past RE2's memory bound: refused, not built
])
def test_bad_matchers_name_the_fix(text: str, mode: str, words: list[str]) -> None:
    with pytest.raises(InputError) as e:
        NameMatcher(text, mode)
    for w in words:
        assert w in str(e.value)


def test_regex_is_linear_time() -> None:
    """The classic catastrophic pattern: Python's re takes exponential time on it, RE2 does not."""
    m = NameMatcher("(a+)+$", "regex")
    t0 = time.perf_counter()
    assert not m("a" * 5000 + "!")
    assert time.perf_counter() - t0 < 0.5


def test_sandwich_by_suffix_merges_every_qualified_name() -> None:
    p = parse(ADMIN)
    with pytest.raises(InputError, match="createSampleImages"):
        tree.sandwich(p, "createSampleImages")  # a plain string stays the exact name
    callers, callees = tree.sandwich(p, NameMatcher("createSampleImages"))
    assert callers.root.name == callees.root.name == "createSampleImages"  # two names matched
    assert callees.total == 11 and callees.root.self == 2
    assert callees.find("resize").total == 9
    assert sorted((n.name, n.total) for n, d in callers.walk() if d == 1) == [
        ("Admin.handle", 8), ("main", 3)]
    # one function matched: the root is its full name
    callers, callees = tree.sandwich(p, NameMatcher("handle"))
    assert callees.root.name == "Admin.handle" and callees.total == 12
    assert matched_names(p, NameMatcher("createSampleImages")) == [
        "Admin.createSampleImages", "jobs::createSampleImages"]


def test_sandwich_and_focus_by_regex() -> None:
    p = parse(ADMIN)
    _, callees = tree.sandwich(p, NameMatcher("Sample", "regex"))
    assert callees.root.name == "Sample"  # several functions: named after the pattern
    # outermost occurrences only: fetchSampleImages and the create* ones never nest here
    assert callees.total == 20
    f = tree.focus(p, NameMatcher("^Admin\\.", "regex"))
    assert f.total == 12 and f.root.name == "Admin.handle"  # the outermost match holds the other
    with pytest.raises(InputError, match="regex 'nope'"):
        tree.focus(p, NameMatcher("nope", "regex"))


def test_focus_by_suffix_equals_focus_of_each_name_merged() -> None:
    p = parse(ADMIN)
    f = tree.focus(p, NameMatcher("createSampleImages"))
    a, j = tree.focus(p, "Admin.createSampleImages"), tree.focus(p, "jobs::createSampleImages")
    assert f.total == a.total + j.total
    assert f.find("resize").total == a.find("resize").total + j.find("resize").total


def test_search_takes_re2_or_a_matcher() -> None:
    p = parse(ADMIN)
    assert tree.search(p, "create")["matched"] == 16
    assert tree.search(p, NameMatcher("createSampleImages"))["matched"] == 11
    with pytest.raises(InputError, match="search regex"):
        tree.search(p, "(unclosed")


NAMES = st.sampled_from(["a", "b", "x.a", "y::a", "ab", "b.ab"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(NAMES, min_size=1, max_size=4), st.integers(1, 9)), min_size=1, max_size=8))
def test_suffix_focus_total_counts_stacks_with_a_match(stacks: list[tuple[list[str], int]]) -> None:
    """focus(suffix).total is the samples of stacks holding a matched frame; search agrees."""
    p = parse("".join(f"{';'.join(s)} {c}\n" for s, c in stacks))
    m = NameMatcher("a")
    want = sum(c for s, c in stacks if any(m(n) for n in s))
    assert tree.search(p, m)["matched"] == want
    if want:
        assert tree.focus(p, m).total == want
        assert tree.sandwich(p, m)[0].total == want
    else:
        with pytest.raises(InputError):
            tree.focus(p, m)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab_.:/ ", min_size=1, max_size=6), st.text(alphabet="ab_.:/ ", max_size=8))
def test_suffix_equals_an_anchored_re2_regex(text: str, prefix: str) -> None:
    """The name mode agrees with the RE2 regex ``(^|[^A-Za-z0-9_])TEXT$`` (or ``TEXT$`` when the
    text starts with a separator), on names ending with the text and on any other name."""
    import re

    anchored = (r"(^|[^A-Za-z0-9_])" if text[0].isalnum() or text[0] == "_" else "") + re.escape(text) + "$"
    rx = NameMatcher(anchored, "regex")
    m = NameMatcher(text)
    for name in (prefix + text, prefix, text + prefix):
        if name:
            assert m(name) == rx(name), (text, name)
