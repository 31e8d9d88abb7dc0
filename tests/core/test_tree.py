"""Exact tests of stacks.tree on hand-built profiles, plus hypothesis properties."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacks import tree
from stacks.errors import InputError
from stacks.folded import parse
from stacks.model import Frame, Kind, Labels, Profile, StackTable

U = Frame.user
K = Frame.kernel


def prof(text: str, table: StackTable | None = None) -> Profile:
    return parse(text, table)


SIMPLE = """\
main;a;b 3
main;a 2
main;c_[k] 5
"""


def columns(data: dict) -> list[tuple]:
    """Rows (name, kind, depth, start, width, total, self) of a Flame JSON."""
    n = data["nodes"]
    return [
        (
            data["names"][n["name"][i]],
            data["kinds"][n["kind"][i]],
            n["depth"][i],
            n["start"][i],
            n["width"][i],
            n["total"][i],
            n["self"][i],
        )
        for i in range(len(n["name"]))
    ]


def check_invariants(t: tree.Tree) -> None:
    for node, _ in t.walk():
        assert node.total == node.self + sum(c.total for c in node.children.values())


# ---------------------------------------------------------------- build / layout


def test_build_tree_totals_and_selfs():
    t = tree.build_tree(prof(SIMPLE))
    assert t.total == 10
    assert t.root.name == "all" and t.root.kind == "metadata" and t.root.self == 0
    main = t.find("main")
    assert (main.total, main.self) == (10, 0)
    a = t.find("main", "a")
    assert (a.total, a.self, a.kind) == (5, 2, "user")
    assert (t.find("main", "a", "b").total, t.find("main", "a", "b").self) == (3, 3)
    c = t.find("main", "c")
    assert (c.total, c.self, c.kind) == (5, 5, "kernel")
    assert t.node_count() == 5
    check_invariants(t)


def test_to_json_exact_preorder_layout():
    data = tree.to_json(tree.build_tree(prof(SIMPLE)))
    assert data["version"] == 1 and data["type"] == "flame" and data["unit"] == "samples"
    assert data["total"] == 10
    assert data["kinds"] == ["user", "kernel", "metadata", "other"]
    assert columns(data) == [
        ("all", "metadata", 0, 0, 10, 10, 0),
        ("main", "user", 1, 0, 10, 10, 0),
        ("a", "user", 2, 0, 5, 5, 2),
        ("b", "user", 3, 0, 3, 3, 3),
        ("c", "kernel", 2, 5, 5, 5, 5),
    ]
    assert data["max_depth"] == 3
    assert data["pruned"] == {"nodes_before": 5, "nodes_after": 5, "min_share": 0.0}
    assert "label" not in data["nodes"]
    # the string table has each name once
    assert sorted(data["names"]) == sorted(set(data["names"]))
    json.dumps(data)  # plain JSON types only


def test_same_name_different_kind_are_distinct_nodes():
    p = Profile.from_pairs([((U("main"), U("read")), 2), ((U("main"), K("read")), 3)])
    data = tree.to_json(tree.build_tree(p))
    rows = columns(data)
    # same name: ordered by kind name, so kernel before user
    assert rows[2:] == [("read", "kernel", 2, 0, 3, 3, 3), ("read", "user", 2, 3, 2, 2, 2)]


def test_children_sorted_by_name_and_starts_accumulate():
    p = prof("r;z 1\nr;b 2\nr;m 4\n")
    rows = columns(tree.to_json(tree.build_tree(p)))
    assert [(r[0], r[3], r[4]) for r in rows[2:]] == [("b", 0, 2), ("m", 2, 4), ("z", 6, 1)]


def test_stack_with_self_on_interior_and_recursion():
    t = tree.build_tree(prof("f;f;f 2\nf 1\nf;f 4\n"))
    assert [(n.name, n.total, n.self, d) for n, d in t.walk()] == [
        ("all", 7, 0, 0),
        ("f", 7, 1, 1),
        ("f", 6, 4, 2),
        ("f", 2, 2, 3),
    ]


def test_empty_profile():
    t = tree.build_tree(Profile.empty())
    data = tree.to_json(t)
    assert columns(data) == [("all", "metadata", 0, 0, 0, 0, 0)]
    assert data["total"] == 0 and data["max_depth"] == 0


# ---------------------------------------------------------------- metadata


def test_with_metadata_prefix_order_and_skips_absent():
    table = StackTable()
    p1 = prof("main;work 3\n", table)
    p2 = prof("main;work 2\nmain;idle 1\n", table)
    series = [
        (Labels.of(node="n1", namespace="default", pod="admin-7f9c", container="admin", process="py"), p1),
        ({"namespace": "default", "pod": "admin-7f9c", "container": "", "process": "python"}, p2),
    ]
    out = tree.with_metadata(series, table)
    md = Kind.METADATA
    assert out.as_dict() == {
        (
            Frame("n1", md),
            Frame("default", md),
            Frame("admin-7f9c", md),
            Frame("admin", md),
            Frame("py", md),
            U("main"),
            U("work"),
        ): 3,
        (Frame("default", md), Frame("admin-7f9c", md), Frame("python", md), U("main"), U("work")): 2,
        (Frame("default", md), Frame("admin-7f9c", md), Frame("python", md), U("main"), U("idle")): 1,
    }
    assert out.table is table and out.total == 6


def test_with_metadata_merges_equal_series_and_levels():
    table = StackTable()
    a = prof("x 1\n", table)
    b = prof("x 4\n", table)
    out = tree.with_metadata([({"namespace": "ns", "pod": "p1"}, a), ({"namespace": "ns", "pod": "p2"}, b)],
                             table, levels=("namespace",))
    assert out.as_dict() == {(Frame("ns", Kind.METADATA), U("x")): 5}
    assert tree.with_metadata([], table).total == 0
    # a series without any metadata label keeps its stacks unchanged
    other_table = StackTable()
    c = prof("y 2\n", other_table)
    assert tree.with_metadata([({}, c)], table).as_dict() == {(U("y"),): 2}


def test_metadata_labels_reach_json():
    table = StackTable()
    series = [
        ({"namespace": "default", "pod": "admin", "process": "python"}, prof("main 3\n", table)),
        ({"namespace": "default", "container": "python", "process": "python"}, prof("main 1\n", table)),
    ]
    labels = tree.metadata_labels(series)
    assert labels[("default",)] == "namespace"
    assert labels[("default", "python")] == "container"
    assert labels[("default", "python", "python")] == "process"
    t = tree.build_tree(tree.with_metadata(series, table), labels=labels)
    data = tree.to_json(t)
    rows = columns(data)
    got = [(r[0], r[1], data["nodes"]["label"][i]) for i, r in enumerate(rows)]
    assert got == [
        ("all", "metadata", None),
        ("default", "metadata", "namespace"),
        ("admin", "metadata", "pod"),
        ("python", "metadata", "process"),
        ("main", "user", None),
        ("python", "metadata", "container"),
        ("python", "metadata", "process"),
        ("main", "user", None),
    ]


# ---------------------------------------------------------------- prune


WIDE = "\n".join(f"main;f{i:02d} {i + 1}" for i in range(10)) + "\n"  # f00..f09 with 1..10


def test_prune_merges_small_children_into_other():
    t = tree.build_tree(prof(WIDE))  # 12 nodes: all, main, f00..f09; total 55
    p = tree.prune(t, max_nodes=6)
    rows = columns(tree.to_json(p))
    # all, main, f09(10), f08(9), f07(8) and one 'other' for f00..f06 (1+..+7 = 28)
    assert rows == [
        ("all", "metadata", 0, 0, 55, 55, 0),
        ("main", "user", 1, 0, 55, 55, 0),
        ("f07", "user", 2, 0, 8, 8, 8),
        ("f08", "user", 2, 8, 9, 9, 9),
        ("f09", "user", 2, 17, 10, 10, 10),
        ("other", "other", 2, 27, 28, 28, 28),
    ]
    # the note names the heaviest cut: f06 (7 samples, 7/55 of the root) at depth 2
    assert p.pruned == {"nodes_before": 12, "nodes_after": 6, "min_share": 0.0, "max_nodes": 6,
                        "cut": {"weight": 7, "share": 7 / 55, "depth": 2}}
    assert tree.to_json(p)["pruned"]["nodes_before"] == 12
    # the input tree is untouched
    assert t.node_count() == 12


def test_prune_min_share():
    t = tree.build_tree(prof(WIDE))
    p = tree.prune(t, min_share=9 / 55)  # keeps f08 (9) and f09 (10)
    names = [n.name for n, _ in p.walk()]
    assert names == ["all", "main", "f08", "f09", "other"]
    assert p.find("main", "other").total == 36


def test_prune_other_counts_deep_subtrees_and_keeps_totals():
    t = tree.build_tree(prof("a;b;c 5\na;b;d 1\na;e 1\n"))
    p = tree.prune(t, max_nodes=5)
    # all, a, b, c + other(d) = 5; a's child e must also go into an 'other' -> over budget,
    # so the best fit is: all, a, b, other(e), other(c+d)
    assert [(n.name, n.kind, n.total, n.self, d) for n, d in p.walk()] == [
        ("all", "metadata", 7, 0, 0),
        ("a", "user", 7, 0, 1),
        ("b", "user", 6, 0, 2),
        ("other", "other", 6, 6, 3),
        ("other", "other", 1, 1, 2),
    ]


def test_prune_no_cut_returns_equal_tree():
    t = tree.build_tree(prof(SIMPLE))
    p = tree.prune(t, max_nodes=100)
    assert columns(tree.to_json(p)) == columns(tree.to_json(t))


def test_prune_bad_arguments():
    t = tree.build_tree(prof(SIMPLE))
    with pytest.raises(InputError, match="max_nodes"):
        tree.prune(t, max_nodes=1)
    with pytest.raises(InputError, match="min_share"):
        tree.prune(t, min_share=1.5)


def test_pruned_info_override():
    data = tree.to_json(tree.build_tree(prof(SIMPLE)), pruned_info={"nodes_before": 9, "nodes_after": 5})
    assert data["pruned"] == {"nodes_before": 9, "nodes_after": 5}


# ---------------------------------------------------------------- focus / search


RECUR = """\
main;handle;parse;handle;render 4
main;handle;db 3
main;idle 2
worker;handle 1
"""


def test_focus_by_name_merges_outermost_occurrences():
    f = tree.focus(prof(RECUR), "handle")
    assert f.root.name == "handle" and f.root.kind == "user"
    assert [(n.name, n.total, n.self, d) for n, d in f.walk()] == [
        ("handle", 8, 1, 0),
        ("db", 3, 3, 1),
        ("parse", 4, 0, 1),
        ("handle", 4, 0, 2),
        ("render", 4, 4, 3),
    ]
    check_invariants(f)


def test_focus_by_path_and_on_a_tree():
    t = tree.build_tree(prof(RECUR))
    f = tree.focus(t, ["main", "handle"])
    assert f.total == 7 and [c.name for c in f.root.sorted_children()] == ["db", "parse"]
    assert tree.focus(t, ["worker", "handle"]).total == 1
    with pytest.raises(InputError, match="nope"):
        tree.focus(t, "nope")
    with pytest.raises(InputError):
        tree.focus(t, [])


def test_search_counts_recursion_once():
    p = prof(RECUR)
    assert tree.search(p, "^handle$") == {"matched": 8, "total": 10, "share": 0.8}
    assert tree.search(p, "render|db") == {"matched": 7, "total": 10, "share": 0.7}
    assert tree.search(tree.build_tree(p), "zzz")["matched"] == 0
    assert tree.search(Profile.empty(), "a") == {"matched": 0, "total": 0, "share": 0.0}


def test_search_bad_regex():
    with pytest.raises(InputError, match="regex"):
        tree.search(prof(RECUR), "(unclosed")


# ---------------------------------------------------------------- top table / sandwich


def test_top_table_self_total_with_recursion():
    rows = tree.top_table(prof(RECUR))
    assert rows == [
        {"name": "render", "kind": "user", "self": 4, "total": 4},
        {"name": "db", "kind": "user", "self": 3, "total": 3},
        {"name": "idle", "kind": "user", "self": 2, "total": 2},
        {"name": "handle", "kind": "user", "self": 1, "total": 8},
        {"name": "main", "kind": "user", "self": 0, "total": 9},
        {"name": "parse", "kind": "user", "self": 0, "total": 4},
        {"name": "worker", "kind": "user", "self": 0, "total": 1},
    ]
    assert tree.top_table(prof(RECUR), limit=2) == rows[:2]
    with pytest.raises(InputError):
        tree.top_table(prof(RECUR), limit=-1)


def test_top_table_kernel_kind():
    rows = tree.top_table(prof(SIMPLE))
    assert rows[0] == {"name": "c", "kind": "kernel", "self": 5, "total": 5}


def test_sandwich_callers_and_callees():
    callers, callees = tree.sandwich(prof(RECUR), "handle")
    assert [(n.name, n.total, n.self, d) for n, d in callers.walk()] == [
        ("handle", 8, 0, 0),
        ("main", 7, 7, 1),
        ("worker", 1, 1, 1),
    ]
    assert [(n.name, n.total, n.self, d) for n, d in callees.walk()] == [
        ("handle", 8, 1, 0),
        ("db", 3, 3, 1),
        ("parse", 4, 0, 1),
        ("handle", 4, 0, 2),
        ("render", 4, 4, 3),
    ]
    # deep callers are inverted: render <- handle <- parse <- handle <- main
    callers, _ = tree.sandwich(prof(RECUR), "render")
    assert [n.name for n, _ in callers.walk()] == ["render", "handle", "parse", "handle", "main"]
    data = tree.to_json(callers)
    assert data["total"] == 4 and data["nodes"]["depth"] == [0, 1, 2, 3, 4]
    with pytest.raises(InputError, match="nothing"):
        tree.sandwich(prof(RECUR), "nothing")


def test_sandwich_root_keeps_function_kind():
    callers, callees = tree.sandwich(prof(SIMPLE), "c")
    assert callers.root.kind == callees.root.kind == "kernel"
    assert callers.find("main").total == 5


# ---------------------------------------------------------------- properties

names = st.sampled_from(["a", "b", "c", "d", "main", "other"])
frames = st.builds(Frame, names, st.sampled_from([Kind.USER, Kind.KERNEL]), file=st.just(""), line=st.just(0))
stacks_st = st.lists(frames, min_size=0, max_size=6).map(tuple)
profiles = st.lists(st.tuples(stacks_st, st.integers(1, 1000)), max_size=30).map(Profile.from_pairs)


@given(profiles)
def test_prop_root_total_and_node_sums(p):
    t = tree.build_tree(p)
    assert t.total == p.total
    check_invariants(t)
    data = tree.to_json(t)
    n = data["nodes"]
    assert n["width"] == n["total"]
    # pre-order: each node starts inside its parent, siblings tile the parent without overlap
    stack: list[int] = []
    for i in range(len(n["name"])):
        while stack and n["depth"][stack[-1]] >= n["depth"][i]:
            stack.pop()
        if stack:
            parent = stack[-1]
            assert n["depth"][i] == n["depth"][parent] + 1
            assert n["start"][parent] <= n["start"][i]
            assert n["start"][i] + n["width"][i] <= n["start"][parent] + n["width"][parent]
        stack.append(i)


@given(profiles, st.integers(2, 40), st.floats(0, 0.5))
@settings(max_examples=150)
def test_prop_prune_keeps_totals_and_budget(p, max_nodes, min_share):
    t = tree.build_tree(p)
    pr = tree.prune(t, max_nodes=max_nodes, min_share=min_share)
    assert pr.node_count() <= max_nodes
    assert pr.total == p.total
    check_invariants(pr)
    # at most one 'other' per parent, and only as a leaf
    for node, _ in pr.walk():
        others = [c for c in node.children.values() if c.kind == "other"]
        assert len(others) <= 1
        assert all(not o.children for o in others)


@given(profiles, names)
def test_prop_search_equals_brute_force(p, name):
    want = sum(c for s, c in p.items() if any(f.name == name for f in s))
    assert tree.search(p, f"^{name}$")["matched"] == want
    rows = {(r["name"], r["kind"]): r for r in tree.top_table(p)}
    for kind in ("user", "kernel"):
        total = sum(c for s, c in p.items() if any(f.name == name and f.kind.value == kind for f in s))
        self_ = sum(c for s, c in p.items() if s and s[-1].name == name and s[-1].kind.value == kind)
        if total:
            assert rows[(name, kind)]["total"] == total and rows[(name, kind)]["self"] == self_
    if want:
        assert tree.focus(p, name).total == want
        callers, callees = tree.sandwich(p, name)
        assert callers.total == callees.total == want
        check_invariants(callers)
        check_invariants(callees)


def reference_prune(t: tree.Tree, max_nodes: int, min_share: float) -> list[tuple]:
    """The documented rule, slowly, on the Node view: whole (weight, depth) groups in the order
    (total descending, depth ascending) while kept nodes plus one ``other`` per kept parent with
    a cut child fit; rows (name, kind, total, self, depth) in layout order."""
    nodes = [(n, d) for n, d in t.walk()]
    floor = min_share * t.total
    eligible = [(n, d) for n, d in nodes[1:] if n.total >= floor and n.total > 0]
    groups = sorted({(-n.total, d) for n, d in eligible})
    kept = {id(nodes[0][0])}

    def cost(k: set[int]) -> int:
        return len(k) + sum(1 for n, _ in nodes if id(n) in k and any(id(c) not in k for c in n.children.values()))

    for g in groups:
        trial = kept | {id(n) for n, d in eligible if (-n.total, d) == g}
        if cost(trial) > max_nodes:
            break
        kept = trial
    out = []

    def emit(n: tree.Node, d: int) -> None:
        out.append((n.name, n.kind, n.total, n.self, d))
        cut = [c for c in n.children.values() if id(c) not in kept]
        for c in sorted((c for c in n.children.values() if id(c) in kept), key=lambda c: (c.name, c.kind)):
            emit(c, d + 1)
        if cut:
            s = sum(c.total for c in cut)
            out.append(("other", "other", s, s, d + 1))

    emit(nodes[0][0], 0)
    return out


@given(profiles, st.integers(2, 30), st.sampled_from([0.0, 0.05, 0.3]))
@settings(max_examples=200)
def test_prop_prune_equals_reference(p, max_nodes, min_share):
    got = tree.prune(tree.build_tree(p), max_nodes=max_nodes, min_share=min_share)
    want = reference_prune(tree.build_tree(p), max_nodes, min_share)
    assert [(n.name, n.kind, n.total, n.self, d) for n, d in got.walk()] == want
    # pruning a pruned tree again under the same budget changes nothing
    again = tree.prune(got, max_nodes=max_nodes)
    assert tree.to_json(again)["nodes"] == tree.to_json(got)["nodes"]


@given(profiles, names, st.integers(2, 30))
@settings(max_examples=100)
def test_prop_reading_root_changes_nothing(p, name, max_nodes):
    fresh = tree.build_tree(p)
    read = tree.build_tree(p)
    read.root.children.clear()  # a view: changing it changes no answer
    assert tree.to_json(tree.prune(read, max_nodes=max_nodes)) == tree.to_json(tree.prune(fresh, max_nodes=max_nodes))
    assert tree.search(read, f"^{name}$|^a") == tree.search(fresh, f"^{name}$|^a")
    if any(f.name == name for s, _ in p.items() for f in s):
        assert tree.to_json(tree.focus(read, name)) == tree.to_json(tree.focus(fresh, name))
        assert [tree.to_json(x) for x in tree.sandwich(read, name)] == [
            tree.to_json(x) for x in tree.sandwich(fresh, name)]


def test_deep_heavy_chain_keeps_its_top_frames():
    # A chain 50 frames deep holding 30 % of the samples, next to 70 % spread over 35 light
    # functions: the budget of 20 nodes cannot hold the chain, whose frames all weigh the same.
    chain = ";".join(["main"] + [f"deep{i:02d}" for i in range(50)]) + " 30\n"
    light = "".join(f"main;f{i:02d} 2\n" for i in range(35))
    p = tree.prune(tree.build_tree(prof(chain + light)), max_nodes=20)
    rows = [(n.name, d) for n, d in p.walk()]
    assert p.node_count() <= 20
    # the chain keeps its top frames (breadth first among equal weights) ...
    kept = [name for name, _ in rows if name.startswith("deep")]
    assert kept == [f"deep{i:02d}" for i in range(len(kept))] and len(kept) >= 10
    assert p.find("main", "deep00").total == 30
    # ... its rest is one 'other' below the last kept frame, and the note says where it was cut
    last = p.find("main", *kept)
    assert [(c.name, c.total) for c in last.children.values()] == [("other", 30)]
    assert p.pruned["cut"] == {"weight": 30, "share": 30 / 100, "depth": len(kept) + 2}
    check_invariants(p)


def node_rows(root: tree.Node) -> list[tuple]:
    """(name, kind, total, self, depth) in layout order (children by name, kind)."""
    out: list[tuple] = []
    todo = [(root, 0)]
    while todo:
        n, d = todo.pop()
        out.append((n.name, n.kind, n.total, n.self, d))
        todo.extend((c, d + 1) for c in reversed(n.sorted_children()))
    return out


def reference_sandwich(p: Profile, name: str) -> tuple[tree.Node, tree.Node]:
    """Straightforward per-stack sandwich: outermost occurrence, callers reversed."""
    callers, callees = tree.Node(name, "user"), tree.Node(name, "user")
    kinds: dict[str, int] = {}

    def insert(root: tree.Node, frames, count: int) -> None:
        root.total += count
        node = root
        for f in frames:
            key = (f.name, f.kind.value)
            node = node.children.setdefault(key, tree.Node(f.name, f.kind.value))
            node.total += count
        node.self += count

    for s, c in p.items():
        i = next((j for j, f in enumerate(s) if f.name == name), -1)
        if i < 0:
            continue
        kinds[s[i].kind.value] = kinds.get(s[i].kind.value, 0) + c
        insert(callees, s[i + 1 :], c)
        insert(callers, s[:i][::-1], c)
    callers.kind = callees.kind = max(kinds.items(), key=lambda kv: (kv[1], kv[0] == "user"))[0]
    return callers, callees


@given(profiles, names)
def test_prop_sandwich_equals_reference(p, name):
    if not any(f.name == name for s, _ in p.items() for f in s):
        with pytest.raises(InputError):
            tree.sandwich(p, name)
        return
    got = tree.sandwich(p, name)
    want = reference_sandwich(p, name)
    for g, w in zip(got, want, strict=True):
        gr, wr = node_rows(g.root), node_rows(w)
        if g.root.kind != w.kind:  # equal weight of a user and a kernel frame: either is right
            gr[0] = wr[0]
        assert gr == wr
    # a tree of the profile gives the same answer
    again = tree.sandwich(tree.build_tree(p), name)
    assert [tree.to_json(t) for t in again] == [tree.to_json(t) for t in got]
