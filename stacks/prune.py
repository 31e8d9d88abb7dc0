"""Pruning a flame tree to a node budget: :func:`prune` (by total) and :func:`prune_columns`
(by any weight, e.g. a diff's layout width), both through :func:`fit_budget`.

Nodes are kept in the order (weight descending, depth ascending), whole (weight, depth) groups
at a time, while the kept nodes plus one ``other`` per kept parent with a cut child fit the
budget. A parent is never lighter nor deeper than its child, so the kept set is closed under
parents; depth is the tie-break so that a heavy call chain deeper than the budget keeps its
top frames (issue 24, cause 12) instead of being folded whole into ``other``. Cut children of
a kept parent become one ``other`` node carrying their sums, so every total is preserved.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stacks.columns import DEFAULT_MAX_NODES, Columns
from stacks.errors import InputError
from stacks.node import Tree


def check_prune_args(max_nodes: int, min_share: float) -> None:
    """Raise InputError unless ``max_nodes >= 2`` and ``0 <= min_share <= 1``."""
    if max_nodes < 2:
        raise InputError(f"max_nodes={max_nodes}: must be at least 2 (the root and one 'other' node)")
    if not 0.0 <= min_share <= 1.0:
        raise InputError(f"min_share={min_share}: must be between 0 and 1 (e.g. 0.0005 for 1 px of 2000)")


@dataclass(frozen=True)
class Cut:
    """The first (weight, depth) group the budget cut: a node lighter than ``weight``, or as
    heavy and at least ``depth`` deep, is cut (so is one under the ``min_share`` floor).
    ``weight`` -inf: the budget cut nothing."""

    weight: float = float("-inf")
    depth: int = 0

    def keeps(self, weights: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Per node: before this cut in the keep order."""
        return (weights > self.weight) | ((weights == self.weight) & (depth < self.depth))

    def before(self, other: Cut) -> bool:
        """True if this cut comes first in the keep order (it cuts more)."""
        return (self.weight, -self.depth) > (other.weight, -other.depth)


def prune(tree: Tree, *, max_nodes: int = DEFAULT_MAX_NODES, min_share: float = 0.0) -> Tree:
    """A pruned copy of ``tree`` with at most ``max_nodes`` nodes (``other`` nodes included),
    weighed by total; nodes under ``min_share`` of the root's total are cut too. Raises
    InputError if ``max_nodes < 2`` or ``min_share`` is outside [0, 1]."""
    check_prune_args(max_nodes, min_share)
    return prune_columns(tree.cols, tree.cols.total, max_nodes=max_nodes, min_share=min_share)


def prune_columns(cols: Columns, weights: np.ndarray, *, max_nodes: int, min_share: float,
                  fit: Cut | None = None) -> Tree:
    """Prune a columnar tree by ``weights`` (never larger on a child than on its parent).

    ``fit``, if given, is :func:`fit_budget` of exactly these weights, floor and budget (the
    grafted build computes it on its last level). ``pruned`` records the budget and, when it
    cut something, ``cut``: the weight and share of the heaviest nodes folded into ``other``
    and the depth from which nodes of that weight were cut (a deep path keeps its frames above).
    """
    n = len(cols.parent)
    floor = min_share * float(weights[0]) if n else 0.0
    if fit is None:
        fit = fit_budget(cols.parent, cols.depth, weights, floor, max_nodes)
    keep = (weights >= floor) & (weights > 0) & fit.keeps(weights, cols.depth)
    keep[0] = True
    out = cols.kept(keep)
    pruned: dict[str, Any] = {
        "nodes_before": n,
        "nodes_after": len(out.parent),
        "min_share": min_share,
        "max_nodes": max_nodes,
    }
    if fit.weight > float("-inf"):
        root_w = float(weights[0])
        w = int(fit.weight) if float(fit.weight).is_integer() else float(fit.weight)
        pruned["cut"] = {"weight": w, "share": fit.weight / root_w if root_w else 0.0, "depth": fit.depth}
    return Tree(out, pruned)


def fit_budget(parent: np.ndarray, depth: np.ndarray, weights: np.ndarray, floor: float,
               max_nodes: int) -> Cut:
    """The first (weight, depth) group that does not fit ``max_nodes`` when nodes of weight at
    least ``floor`` (and > 0) are kept in the order (weight descending, depth ascending).

    Cost of a kept set: its nodes plus one ``other`` per kept parent with a cut child; it never
    falls as groups are added. First a binary search over the distinct weights finds U, the
    highest weight whose nodes do not all fit; then the nodes of weight U are added depth by
    depth (each adds itself, an ``other`` if it has children, minus its parent's ``other``
    when it was the parent's last cut child), in arrays.

    On a trie whose deeper levels are not built yet, every node at or after the returned cut
    is cut in the full trie too: the missing nodes can only add cost before it.
    """
    n = len(parent)
    up = np.maximum(parent, 0)
    eligible = (weights >= floor) & (weights > 0)
    eligible[0] = True

    def cost(k: np.ndarray) -> int:
        cut = ~k
        cut[0] = False
        has_cut = np.zeros(n, dtype=bool)
        has_cut[up[cut & k[up]]] = True
        return int(k.sum()) + int(has_cut.sum())

    def keep_from(t: float) -> np.ndarray:
        k = eligible & (weights >= t)
        k[0] = True
        return k

    cand = np.unique(weights[eligible])  # ascending; low thresholds keep more
    lo, hi = 0, len(cand)  # answer: first index whose cost fits; len(cand) = root only
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(keep_from(float(cand[mid]))) <= max_nodes:
            hi = mid
        else:
            lo = mid + 1
    if lo == 0:
        return Cut()  # everything eligible fits
    u_weight = float(cand[lo - 1])
    base = keep_from(float(cand[lo])) if lo < len(cand) else keep_from(float("inf"))
    # The group of weight U, depth by depth.
    umask = eligible & (weights == u_weight)
    umask[0] = False
    u = np.flatnonzero(umask)
    if not u.size:
        return Cut(u_weight, 0)
    kids = np.bincount(up[1:], minlength=n)  # children per node
    cut_kids = np.bincount(up[1:][~base[1:]], minlength=n)  # children outside the base set
    upar = up[u]
    u_kids = np.bincount(upar, minlength=n)  # children of weight U per node
    levels, lvl = np.unique(depth[u], return_inverse=True)
    delta = np.bincount(lvl.reshape(-1), weights=1 + (kids[u] > 0), minlength=len(levels))
    pars = np.unique(upar)
    closed = pars[cut_kids[pars] == u_kids[pars]]  # their last cut child has weight U
    delta -= np.bincount(np.searchsorted(levels, depth[closed] + 1), minlength=len(levels))
    over = np.flatnonzero(cost(base) + np.cumsum(delta) > max_nodes)
    # The whole group does not fit (U did not), so some level overflows.
    return Cut(u_weight, int(levels[over[0]]) if over.size else int(levels[-1]) + 1)
