"""stacks.flamebearer: Pyroscope's level layout, exact on hand-built trees and, as a property, the
inverse of the layout gives back every node's path and total."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stacks import flamebearer
from stacks.diff import diff_json
from stacks.folded import parse
from stacks.model import StackTable
from stacks.tree import pruned_tree, to_json

TEXT = "a;b 3\na;c 2\nd 1\n"


def _doc(text: str, max_nodes: int = 1000) -> dict:
    return to_json(pruned_tree(parse(text, StackTable()), max_nodes=max_nodes, min_share=0))


def test_single_exact() -> None:
    got = flamebearer.single(_doc(TEXT))
    assert got.names == ["total", "all", "a", "b", "c", "d"]
    # level 2: b at x=0 (offset 0), c right after b (offset 0), both under a
    assert got.levels == [[0, 6, 0, 0], [0, 5, 0, 2, 0, 1, 1, 5], [0, 3, 3, 3, 0, 2, 2, 4]]
    assert (got.total, got.max_self) == (6, 3)


def test_single_scaled_and_gap_offsets() -> None:
    got = flamebearer.single(_doc("a;b 3\na 2\nc;d 1\n"), scale=10)
    # d sits under c, after a (width 50): its offset from the start of the level is 50
    assert got.levels == [[0, 60, 0, 0], [0, 50, 20, 2, 0, 10, 0, 4], [0, 30, 30, 3, 20, 10, 10, 5]]
    assert got.total == 60 and got.max_self == 30


def test_root_name_kept_apart_from_a_frame_named_like_it() -> None:
    got = flamebearer.single(_doc("all;x 2\n"))
    assert got.names[0] == "total" and got.levels[1][3] == 1 and got.names[1] == "all"


def test_empty_profile() -> None:
    got = flamebearer.single(_doc(""))
    assert got.levels == [[0, 0, 0, 0]] and got.total == 0


def test_diff_exact() -> None:
    t = StackTable()
    base, cmp_ = parse(TEXT, t), parse("a;b 1\na;c 2\nd 4\n", t)
    got = flamebearer.diff(diff_json(base, cmp_, mode="absolute"))
    assert (got.left_ticks, got.right_ticks, got.max_self) == (6, 7, 4)
    assert got.levels[0] == [0, 6, 0, 0, 7, 0, 0]
    # d: left x = 5 (after a's 5), right x = 3 (after a's 3)
    assert got.levels[1] == [0, 5, 0, 0, 3, 0, 2, 0, 1, 1, 0, 4, 4, 5]
    left = flamebearer.node_totals([[v for i, v in enumerate(lv) if i % 7 in (0, 1, 6)] for lv in got.levels], 3)
    assert left[("0", "2", "3")] == 3


FRAMES = st.sampled_from(["a", "b", "c", "d", "all", "total"])
STACKS = st.lists(st.tuples(st.lists(FRAMES, min_size=1, max_size=6), st.integers(1, 50)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(STACKS, st.sampled_from([3, 10, 1000]), st.integers(1, 7))
def test_levels_give_back_every_node(stacks: list[tuple[list[str], int]], max_nodes: int, scale: int) -> None:
    text = "".join(f"{';'.join(fr)} {n}\n" for fr, n in stacks)
    doc = _doc(text, max_nodes)
    got = flamebearer.single(doc, scale)
    want: dict[tuple[str, ...], int] = {}
    path: list[str] = []
    for i, (n, d) in enumerate(zip(doc["nodes"]["name"], doc["nodes"]["depth"], strict=True)):
        del path[d:]
        path.append("0" if i == 0 else str(n + 1))
        want[tuple(path)] = want.get(tuple(path), 0) + doc["nodes"]["total"][i] * scale
    assert flamebearer.node_totals(got.levels) == want
    assert got.total == doc["total"] * scale
    assert sum(len(lv) for lv in got.levels) == 4 * len(doc["nodes"]["name"])
    # offsets never negative: nodes on a level never overlap
    assert all(v >= 0 for lv in got.levels for v in lv[0::4])


@settings(max_examples=100, deadline=None)
@given(STACKS, STACKS, st.sampled_from([4, 1000]))
def test_diff_levels_give_back_both_sides(base: list, compare: list, max_nodes: int) -> None:
    t = StackTable()
    b = parse("".join(f"{';'.join(fr)} {n}\n" for fr, n in base), t)
    c = parse("".join(f"{';'.join(fr)} {n}\n" for fr, n in compare), t)
    doc = diff_json(b, c, mode="absolute", max_nodes=max_nodes)
    got = flamebearer.diff(doc)
    # Drawn as Pyroscope draws a diff: x = left x + right x, width = left total + right total.
    combined = [[v for j in range(0, len(lv), 7)
                 for v in (lv[j] + lv[j + 3], lv[j + 1] + lv[j + 4], lv[j + 2] + lv[j + 5], lv[j + 6])]
                for lv in got.levels]
    nodes = doc["nodes"]
    want: dict[tuple[str, ...], int] = {}
    path: list[str] = []
    for i, (n, d) in enumerate(zip(nodes["name"], nodes["depth"], strict=True)):
        del path[d:]
        path.append("0" if i == 0 else str(n + 1))
        want[tuple(path)] = nodes["base_total"][i] + nodes["total"][i]
    assert flamebearer.node_totals(combined) == want
    lt = [lv[j + 1] for lv in got.levels for j in range(0, len(lv), 7)]
    rt = [lv[j + 4] for lv in got.levels for j in range(0, len(lv), 7)]
    assert sorted(lt) == sorted(nodes["base_total"]) and sorted(rt) == sorted(nodes["total"])
    assert (got.left_ticks, got.right_ticks) == (b.total, c.total)
