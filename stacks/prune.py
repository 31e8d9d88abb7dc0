"""Pruning a flame tree to a node budget: :func:`prune` (any tree, by any weight) and
:func:`prune_columns` (a columnar trie, vectorised), sharing :func:`fit_threshold`.

Cut children of a kept parent become one ``other`` node carrying their sums, so every
total is preserved. Pure: no I/O, no clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from stacks.errors import InputError
from stacks.node import DEFAULT_MAX_NODES, OTHER, Node, Tree

if TYPE_CHECKING:
    from stacks.columns import Columns


def check_prune_args(max_nodes: int, min_share: float) -> None:
    """Raise InputError unless ``max_nodes >= 2`` and ``0 <= min_share <= 1``."""
    if max_nodes < 2:
        raise InputError(f"max_nodes={max_nodes}: must be at least 2 (the root and one 'other' node)")
    if not 0.0 <= min_share <= 1.0:
        raise InputError(f"min_share={min_share}: must be between 0 and 1 (e.g. 0.0005 for 1 px of 2000)")


def prune(
    tree: Tree,
    *,
    max_nodes: int = DEFAULT_MAX_NODES,
    min_share: float = 0.0,
    weight: Callable[[Node], float] | None = None,
) -> Tree:
    """A pruned copy of ``tree`` with at most ``max_nodes`` nodes (``other`` nodes included).

    Nodes are kept heaviest first (best-first from the root, so a kept node's
    parent is always kept) while their weight is at least ``min_share`` of the
    root's. The children of a parent that were cut become one node named
    ``other`` of kind ``other`` whose total/self are their sums, so every
    total is preserved. ``weight`` defaults to ``node.total`` (diff trees pass
    their layout width). Raises InputError if ``max_nodes < 2`` or
    ``min_share`` is outside [0, 1].
    """
    check_prune_args(max_nodes, min_share)
    if tree.columnar and weight is None:
        assert tree.cols is not None
        return prune_columns(tree.cols, tree.cols.total, max_nodes=max_nodes, min_share=min_share)
    w: Callable[[Node], float] = weight or (lambda n: n.total)
    root = tree.root
    before = tree.node_count()
    out = Tree(_copy_kept(root, _best_first(root, w, max_nodes, min_share * w(root))))
    out.pruned = {
        "nodes_before": before,
        "nodes_after": out.node_count(),
        "min_share": min_share,
        "max_nodes": max_nodes,
    }
    return out


def _best_first(root: Node, w: Callable[[Node], float], max_nodes: int, floor: float) -> set[int]:
    """``id()`` of the nodes :func:`prune` keeps: heaviest first from the root while they weigh
    at least ``floor`` (and > 0) and the kept nodes plus their ``other`` nodes fit ``max_nodes``."""
    kept: set[int] = {id(root)}
    # Number of kept nodes that still have at least one child not kept: each needs an 'other'.
    open_parents = 1 if root.children else 0
    unkept_children: dict[int, int] = {id(root): len(root.children)}
    heap: list[tuple[float, int, Node, Node]] = []
    seq = 0
    for c in root.children.values():
        heap.append((-w(c), seq, c, root))
        seq += 1
    heapq.heapify(heap)
    while heap:
        neg, _, node, parent = heap[0]
        if -neg < floor or -neg <= 0:
            break
        # Cost of keeping `node`: itself, plus an 'other' if it has children, minus the
        # parent's 'other' if node is the parent's last unkept child.
        last = unkept_children[id(parent)] == 1
        after = len(kept) + 1 + open_parents + (1 if node.children else 0) - (1 if last else 0)
        if after > max_nodes:
            break
        heapq.heappop(heap)
        kept.add(id(node))
        unkept_children[id(parent)] -= 1
        if last:
            open_parents -= 1
        if node.children:
            open_parents += 1
            unkept_children[id(node)] = len(node.children)
            for c in node.children.values():
                seq += 1
                heapq.heappush(heap, (-w(c), seq, c, node))
    return kept


def prune_columns(cols: Columns, weights: np.ndarray, *, max_nodes: int, min_share: float) -> Tree:
    """Prune a columnar tree by ``weights`` (never larger on a child than on its parent).

    Keeps every node whose weight is at least a threshold T; T is the lowest
    value (found by binary search over the distinct weights) whose cost, kept
    nodes plus one ``other`` per kept parent with a cut child, fits
    ``max_nodes``. Nodes of equal weight are kept or cut together, so the
    result can be a little under the budget.
    """
    n = len(cols.parent)
    floor = min_share * float(weights[0]) if n else 0.0
    fit = cols.fit
    if (fit is not None and fit[1] == floor and fit[2] == max_nodes and fit[0].shape == weights.shape
            and np.array_equal(fit[0], weights)):
        t = fit[3]  # the build already fitted these exact weights on this exact trie
    else:
        t, _ = fit_threshold(np.maximum(cols.parent, 0), weights, floor, max_nodes)
    keep = (weights >= floor) & (weights > 0) & (weights >= t)
    keep[0] = True
    root = cols.materialize(keep)
    out = Tree(root)
    out.pruned = {
        "nodes_before": n,
        "nodes_after": out.node_count(),
        "min_share": min_share,
        "max_nodes": max_nodes,
    }
    return out


def fit_threshold(parent: np.ndarray, weights: np.ndarray, floor: float, max_nodes: int) -> tuple[float, float]:
    """(T, U): T is the lowest weight such that keeping the nodes of weight >= max(T, floor)
    (and > 0), plus one ``other`` per kept parent with a cut child, costs at most
    ``max_nodes`` (inf when only the root fits); U is the highest weight that does not fit
    (-inf if all do). Binary search over the distinct weights (cost falls as T rises).

    On a trie whose deeper levels are not built yet, every node of weight <= U is cut in the
    full trie too: its missing nodes can only add cost at any threshold. (T itself is no such
    bound: a deeper, lighter node may still fit.)
    """
    n = len(parent)
    eligible = (weights >= floor) & (weights > 0)
    eligible[0] = True

    def cost(t: float) -> int:
        k = eligible & (weights >= t)
        k[0] = True
        cut = ~k
        cut[0] = False
        has_cut = np.zeros(n, dtype=bool)
        has_cut[parent[cut & k[parent]]] = True
        return int(k.sum()) + int(has_cut.sum())

    cand = np.unique(weights[eligible])  # ascending; low thresholds keep more
    lo, hi = 0, len(cand)  # answer: first index whose cost fits; len(cand) = root only
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(float(cand[mid])) <= max_nodes:
            hi = mid
        else:
            lo = mid + 1
    return (float(cand[lo]) if lo < len(cand) else float("inf")), (float(cand[lo - 1]) if lo else float("-inf"))


def _copy_kept(root: Node, kept: set[int]) -> Node:
    """A copy of the kept nodes under ``root``; each parent's cut children become one ``other``."""
    def shallow(n: Node) -> Node:
        m = Node(n.name, n.kind, n.total, n.self, n.label)
        m.base_total, m.base_self = n.base_total, n.base_self
        return m

    new_root = shallow(root)
    todo = [(root, new_root)]
    while todo:
        src, dst = todo.pop()
        other: Node | None = None
        for key, c in src.children.items():
            if id(c) in kept:
                d = dst.children[key] = shallow(c)
                todo.append((c, d))
            else:
                if other is None:
                    other = dst.children[(OTHER, OTHER)] = Node(OTHER, OTHER)
                other.total += c.total
                other.self += c.total
                other.base_total += c.base_total
                other.base_self += c.base_total
    return new_root
