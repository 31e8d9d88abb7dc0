"""Exact tests of stacks.diff plus hypothesis properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacks import diff, tree
from stacks.errors import InputError
from stacks.folded import parse
from stacks.model import Frame, Kind, Profile, StackTable

BASE = """\
main;admin;createSampleImages;callManipulation 60
main;admin;render 20
main;idle 20
"""
COMPARE = """\
main;admin;createSampleImages;cache_get 5
main;admin;render 20
main;idle 25
"""


def both() -> tuple[Profile, Profile]:
    table = StackTable()
    return parse(BASE, table), parse(COMPARE, table)


def rows(data: dict) -> list[tuple]:
    n = data["nodes"]
    return [
        (
            data["names"][n["name"][i]],
            n["depth"][i],
            n["start"][i],
            n["width"][i],
            n["total"][i],
            n["self"][i],
            n["base_total"][i],
            n["base_self"][i],
        )
        for i in range(len(n["name"]))
    ]


def test_diff_json_share_mode_exact():
    base, compare = both()
    data = diff.diff_json(base, compare)
    assert data["type"] == "diff" and data["mode"] == "share" and data["version"] == 1
    assert (data["base_sum"], data["compare_sum"], data["total"]) == (100, 50, 50)
    assert data["k"] == 0.5
    assert data["kinds"] == list(tree.KINDS)
    # width = compare_total + base_total * 0.5
    assert rows(data) == [
        ("all", 0, 0, 100.0, 50, 0, 100, 0),
        ("main", 1, 0, 100.0, 50, 0, 100, 0),
        ("admin", 2, 0, 65.0, 25, 0, 80, 0),
        ("createSampleImages", 3, 0, 35.0, 5, 0, 60, 0),
        ("cache_get", 4, 0, 5.0, 5, 5, 0, 0),
        ("callManipulation", 4, 5.0, 30.0, 0, 0, 60, 60),
        ("render", 3, 35.0, 30.0, 20, 20, 20, 20),
        ("idle", 2, 65.0, 35.0, 25, 25, 20, 20),
    ]


def test_diff_json_absolute_mode_exact():
    base, compare = both()
    data = diff.diff_json(base, compare, mode="absolute")
    assert data["mode"] == "absolute" and data["k"] == 1.0
    widths = {r[0]: r[3] for r in rows(data)}
    assert widths["all"] == 150 and widths["admin"] == 105 and widths["callManipulation"] == 60


def test_diff_json_prunes_by_width_into_other():
    base, compare = both()
    data = diff.diff_json(base, compare, max_nodes=5)
    r = rows(data)
    assert len(r) <= 5
    assert data["pruned"]["nodes_before"] == 8 and data["pruned"]["nodes_after"] == len(r)
    others = [x for x in r if x[0] == "other"]
    assert others, r
    # totals are preserved on both sides
    assert r[0][4] == 50 and r[0][6] == 100
    kinds = [data["kinds"][k] for k in data["nodes"]["kind"]]
    assert all(kinds[i] == "other" for i, x in enumerate(r) if x[0] == "other")


def test_diff_bad_mode():
    base, compare = both()
    with pytest.raises(InputError, match="mode"):
        diff.diff_json(base, compare, mode="ratio")
    with pytest.raises(InputError, match="mode"):
        diff.diff_table(base, compare, mode="ratio")


def test_diff_empty_sides():
    base, compare = both()
    empty = Profile.empty(base.table)
    d = diff.diff_json(empty, compare)
    assert d["k"] == 1.0 and d["base_sum"] == 0 and d["nodes"]["width"][0] == 50
    d = diff.diff_json(base, empty)
    assert d["k"] == 1.0 and d["total"] == 0 and d["nodes"]["width"][0] == 100


def test_diff_table_share():
    base, compare = both()
    t = diff.diff_table(base, compare)
    assert (t["mode"], t["base_sum"], t["compare_sum"]) == ("share", 100, 50)
    reg = [(r["name"], r["base"], r["compare"], round(r["delta"], 6)) for r in t["self"]["regressions"]]
    imp = [(r["name"], r["base"], r["compare"], round(r["delta"], 6)) for r in t["self"]["improvements"]]
    # self shares: idle 20% -> 50%, render 20% -> 40%, cache_get 0 -> 10%, callManipulation 60% -> 0
    assert reg == [("idle", 20, 25, 30.0), ("render", 20, 20, 20.0), ("cache_get", 0, 5, 10.0)]
    assert imp == [("callManipulation", 60, 0, -60.0)]
    first = t["self"]["regressions"][0]
    assert first["base_pct"] == 20.0 and first["compare_pct"] == 50.0 and first["kind"] == "user"
    tot = {r["name"]: round(r["delta"], 6) for r in t["total"]["regressions"] + t["total"]["improvements"]}
    # main stays at 100% in both windows, so it is not a change
    assert tot == {
        "idle": 30.0,
        "render": 20.0,
        "cache_get": 10.0,
        "callManipulation": -60.0,
        "createSampleImages": -50.0,
        "admin": -30.0,
    }


def test_diff_table_absolute_and_limit():
    base, compare = both()
    t = diff.diff_table(base, compare, mode="absolute", limit=1)
    assert [(r["name"], r["delta"]) for r in t["self"]["regressions"]] == [("cache_get", 5.0)]
    assert [(r["name"], r["delta"]) for r in t["self"]["improvements"]] == [("callManipulation", -60.0)]
    full = diff.diff_table(base, compare, mode="absolute")
    assert [(r["name"], r["delta"]) for r in full["total"]["improvements"]] == [
        ("callManipulation", -60.0),
        ("admin", -55.0),
        ("createSampleImages", -55.0),
        ("main", -50.0),
    ]
    with pytest.raises(InputError):
        diff.diff_table(base, compare, limit=-1)


def test_diff_folded():
    table = StackTable()
    a = parse("x;y_[k] 2\nx 1\n", table)
    b = parse("x;y_[k] 3\nz 4\n", table)
    assert diff.diff_folded(a, b) == "x 1 0\nx;y_[k] 2 3\nz 0 4\n"


# ---------------------------------------------------------------- properties

names = st.sampled_from(["a", "b", "c", "main"])
frames = st.builds(Frame, names, st.sampled_from([Kind.USER, Kind.KERNEL]), file=st.just(""), line=st.just(0))
stacks_st = st.lists(frames, min_size=1, max_size=5).map(tuple)
pairs = st.lists(st.tuples(stacks_st, st.integers(1, 500)), max_size=25)


@given(pairs, st.sampled_from(diff.MODES))
def test_prop_self_diff_is_zero(ps, mode):
    p = Profile.from_pairs(ps)
    t = diff.diff_table(p, p, mode=mode)
    assert t["self"] == {"regressions": [], "improvements": []}
    assert t["total"] == {"regressions": [], "improvements": []}
    data = diff.diff_json(p, p, mode=mode)
    n = data["nodes"]
    for i in range(len(n["name"])):
        sums = data["base_sum"], data["compare_sum"]
        delta = diff.node_delta(n["base_total"][i], n["total"][i], *sums, mode)
        assert delta == 0
        assert n["total"][i] == n["base_total"][i] and n["self"][i] == n["base_self"][i]


@given(pairs, pairs, st.sampled_from(diff.MODES), st.integers(2, 30))
def test_prop_widths_follow_contract(bp, cp, mode, max_nodes):
    table = StackTable()
    base, compare = Profile.from_pairs(bp, table), Profile.from_pairs(cp, table)
    data = diff.diff_json(base, compare, mode=mode, max_nodes=max_nodes)
    n = data["nodes"]
    bs, cs = base.total, compare.total
    k = cs / bs if (mode == "share" and bs and cs) else 1.0
    assert data["k"] == k
    assert len(n["name"]) <= max_nodes
    assert n["total"][0] == cs and n["base_total"][0] == bs
    for i in range(len(n["name"])):
        assert math.isclose(n["width"][i], n["total"][i] + n["base_total"][i] * k, rel_tol=1e-9, abs_tol=1e-9)
    # children totals add up on both sides (pre-order: direct children follow at depth + 1)
    for i in range(len(n["name"])):
        kids = []
        j = i + 1
        while j < len(n["name"]) and n["depth"][j] > n["depth"][i]:
            if n["depth"][j] == n["depth"][i] + 1:
                kids.append(j)
            j += 1
        assert n["total"][i] == n["self"][i] + sum(n["total"][c] for c in kids)
        assert n["base_total"][i] == n["base_self"][i] + sum(n["base_total"][c] for c in kids)


@given(pairs, pairs, st.sampled_from(diff.MODES))
def test_prop_diff_table_matches_top_tables(bp, cp, mode):
    table = StackTable()
    base, compare = Profile.from_pairs(bp, table), Profile.from_pairs(cp, table)
    tb = {(r["name"], r["kind"]): r for r in tree.top_table(base)}
    tc = {(r["name"], r["kind"]): r for r in tree.top_table(compare)}
    t = diff.diff_table(base, compare, mode=mode, limit=1000)
    for col in ("self", "total"):
        rows = t[col]["regressions"] + t[col]["improvements"]
        for r in rows:
            key = (r["name"], r["kind"])
            assert r["base"] == (tb[key][col] if key in tb else 0)
            assert r["compare"] == (tc[key][col] if key in tc else 0)
            assert r["delta"] == diff.node_delta(r["base"], r["compare"], base.total, compare.total, mode)
        # every function whose value changed is listed
        changed = {
            k for k in tb.keys() | tc.keys()
            if diff.node_delta(tb[k][col] if k in tb else 0, tc[k][col] if k in tc else 0,
                               base.total, compare.total, mode) != 0
        }
        assert {(r["name"], r["kind"]) for r in rows} == changed


def test_diff_json_metadata_labels():
    table = StackTable()
    a = [({"namespace": "default", "pod": "admin-1"}, parse("main;work 4\n", table))]
    b = [({"namespace": "default", "pod": "admin-2"}, parse("main;work 2\n", table))]
    labels = {**tree.metadata_labels(a), **tree.metadata_labels(b)}
    data = diff.diff_json(tree.with_metadata(a, table), tree.with_metadata(b, table), labels=labels)
    got = [
        (data["names"][i], data["kinds"][k], lab)
        for i, k, lab in zip(data["nodes"]["name"], data["nodes"]["kind"], data["nodes"]["label"], strict=True)
    ]
    assert got == [
        ("all", "metadata", None),
        ("default", "metadata", "namespace"),
        ("admin-1", "metadata", "pod"),
        ("main", "user", None),
        ("work", "user", None),
        ("admin-2", "metadata", "pod"),
        ("main", "user", None),
        ("work", "user", None),
    ]
    # admin-1 vanished (base only), admin-2 is new (compare only); k = 2 / 4
    assert data["nodes"]["width"][:3] == [2 + 4 * 0.5, 2 + 4 * 0.5, 4 * 0.5]


# ---------------------------------------------------------------- metadata diff fast path

_names = st.sampled_from(["a", "b", "main", "p1", "app"])
_frames = st.builds(Frame, _names, st.sampled_from([Kind.USER, Kind.KERNEL, Kind.METADATA]),
                    file=st.just(""), line=st.just(0))
_pairs = st.lists(st.tuples(st.lists(_frames, max_size=5).map(tuple), st.integers(1, 500)), max_size=10)
_labels = st.fixed_dictionaries({}, optional={
    "node": st.sampled_from(["n1", "n2"]), "namespace": st.sampled_from(["ns", ""]),
    "pod": st.sampled_from(["p1", "p2", "app"]), "container": st.sampled_from(["app", "main"]),
    "process": st.sampled_from(["app", "a"]), "route": st.sampled_from(["/x", "/y"]),
})
_series = st.lists(st.tuples(_labels, _pairs), max_size=5)


def _prefixed_diff(base_series, compare_series, *, mode, max_nodes, min_share=0.0):
    """The old path: prefix every stack of both sides, build the full union trie, prune."""
    table = StackTable()
    labels = {**tree.metadata_labels(base_series), **tree.metadata_labels(compare_series)}
    b, c = tree.with_metadata(base_series, table), tree.with_metadata(compare_series, table)
    return (diff.diff_json(b, c, mode=mode, max_nodes=max_nodes, min_share=min_share, labels=labels or None),
            diff.diff_table(b, c, mode=mode, limit=1000))


def _no_before(doc: dict) -> dict:
    return {**doc, "pruned": {k: v for k, v in doc["pruned"].items() if k != "nodes_before"}}


def test_metadata_diff_exact_hand_built():
    table = StackTable()
    base = [({"namespace": "ns", "pod": "p1", "container": "app"}, parse("main;work 6\nmain 2\n", table)),
            ({"namespace": "ns", "pod": "p2"}, parse("main;idle_[k] 4\n", table))]
    compare = [({"namespace": "ns", "pod": "p1", "container": "app", "route": "/x"}, parse("main;work 3\n", table)),
               ({"namespace": "ns", "pod": "p3"}, parse("app;run 5\n", table)),
               ({}, parse("bare 1\n", table))]
    for mode in diff.MODES:
        want_json, want_table = _prefixed_diff(base, compare, mode=mode, max_nodes=100)
        got = diff.metadata_diff_json(base, compare, mode=mode, max_nodes=100)
        assert got == want_json  # nothing is cut at this budget, so even nodes_before is equal
        assert diff.metadata_diff_table(base, compare, mode=mode, limit=1000) == want_table
    # k = 9/12: p1 is 3 + 8k = 9 wide, p3 5, p2 3k = 3; at 8 nodes p1's main path is kept
    got = diff.metadata_diff_json(base, compare, max_nodes=8)
    want_json, _ = _prefixed_diff(base, compare, mode="share", max_nodes=8)
    assert _no_before(got) == _no_before(want_json)
    assert [(got["names"][i], w) for i, w in zip(got["nodes"]["name"], got["nodes"]["width"], strict=True)] == [
        ("all", 18.0), ("ns", 17.0), ("p1", 9.0), ("app", 9.0), ("main", 9.0), ("work", 7.5), ("other", 8.0),
        ("other", 1.0)]
    # nodes no wider than a width that already overflows the budget are never expanded
    assert (got["pruned"]["nodes_before"], want_json["pruned"]["nodes_before"]) == (12, 13)
    # the table rows of metadata frames: p2 vanished (4 samples, all of base's ns total too)
    rows = {(r["name"], r["kind"]): r for r in diff.metadata_diff_table(base, compare, mode="absolute")["total"]
            ["improvements"]}
    assert rows[("p2", "metadata")]["base"] == 4 and rows[("p2", "metadata")]["compare"] == 0


@given(_series, _series, st.sampled_from(diff.MODES), st.integers(2, 40),
       st.sampled_from([0.0, 0.0, 0.01, 0.2]), st.booleans())
@settings(max_examples=200, deadline=None)
def test_prop_metadata_diff_equals_prefixed_diff(raw_base, raw_cmp, mode, max_nodes, min_share, shared):
    """The viewer's metadata diff (grafted, top-down) equals prefixing every stack, node for node;
    its table equals the prefixed table row for row (stacks may hold metadata frames too)."""
    table = StackTable()
    base = [(lab, Profile.from_pairs(p, table if shared else None)) for lab, p in raw_base]
    compare = [(lab, Profile.from_pairs(p, table if shared else None)) for lab, p in raw_cmp]
    want_json, want_table = _prefixed_diff(base, compare, mode=mode, max_nodes=max_nodes, min_share=min_share)
    got = diff.metadata_diff_json(base, compare, mode=mode, max_nodes=max_nodes, min_share=min_share)
    assert _no_before(got) == _no_before(want_json)
    assert got["pruned"]["nodes_before"] <= want_json["pruned"]["nodes_before"]
    assert diff.metadata_diff_table(base, compare, mode=mode, limit=1000) == want_table


@given(_series, _series, st.sampled_from(diff.MODES), st.integers(2, 40), st.sampled_from([0.0, 0.0, 0.01, 0.2]))
@settings(max_examples=200, deadline=None)
def test_prop_metadata_diff_merged_pairs_build_the_same_trie(raw_base, raw_cmp, mode, max_nodes, min_share):
    """Both sides on one table: (metadata path, stack) pairs present on both sides are walked once
    with both counts. Each base part on a table of its own joins nothing (the unmerged walk);
    the documents must be equal whole, ``pruned.nodes_before`` (nodes examined) included."""
    table = StackTable()
    compare = [(lab, Profile.from_pairs(p, table)) for lab, p in raw_cmp]
    merged = [(lab, Profile.from_pairs(p, table)) for lab, p in raw_base]
    apart = [(lab, Profile.from_pairs(p, StackTable())) for lab, p in raw_base]
    got = diff.metadata_diff_json(merged, compare, mode=mode, max_nodes=max_nodes, min_share=min_share)
    assert got == diff.metadata_diff_json(apart, compare, mode=mode, max_nodes=max_nodes, min_share=min_share)


def test_metadata_diff_merged_pairs_hand_built():
    """Same series, two windows: every pair is on both sides; equal to the unmerged walk and the
    prefixed diff, and a path given by two label sets (route differs) merges as one prefix."""
    table = StackTable()
    lab = {"namespace": "ns", "pod": "p1"}
    base = [(lab, parse("main;work 6\nmain;idle_[k] 2\n", table)),
            ({**lab, "route": "/x"}, parse("main;work 1\n", table)), ({"pod": "p2"}, parse("run 3\n", table))]
    compare = [(lab, parse("main;work 2\nmain;idle_[k] 5\n", table)), ({"pod": "p2"}, parse("run 1\n", table))]
    other = StackTable()
    apart = [(lb, parse("".join(f"{';'.join(f.name + ('_[k]' if f.kind == Kind.KERNEL else '') for f in s)} {c}\n"
                                for s, c in p.items()), other)) for lb, p in base]
    for mode in diff.MODES:
        for max_nodes in (2, 4, 6, 100):
            got = diff.metadata_diff_json(base, compare, mode=mode, max_nodes=max_nodes)
            assert got == diff.metadata_diff_json(apart, compare, mode=mode, max_nodes=max_nodes)
            want, _ = _prefixed_diff(base, compare, mode=mode, max_nodes=max_nodes)
            assert _no_before(got) == _no_before(want)
    got = diff.metadata_diff_json(base, compare, mode="absolute", max_nodes=100)
    nodes = [(got["names"][i], t, b) for i, t, b in
             zip(got["nodes"]["name"], got["nodes"]["total"], got["nodes"]["base_total"], strict=True)]
    assert nodes[:5] == [("all", 8, 12), ("ns", 7, 9), ("p1", 7, 9), ("main", 7, 9), ("idle", 5, 2)]
