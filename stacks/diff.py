"""Two profiles -> diff flame tree (share or absolute mode) and top-change tables.

Pure. The diff tree is the union of both trees: each node carries the compare
counts (``total``/``self``) and the base counts (``base_total``/``base_self``).
Layout width is ``compare_total + base_total * k`` with ``k = compare_sum /
base_sum`` in share mode and ``k = 1`` in absolute mode, so frames that
vanished from the compare window keep a visible width.

Public API (see docs/tree.md)::

    diff_tree(base, compare) -> Tree
    diff_json(base, compare, *, mode="share", max_nodes=20000, min_share=0.0) -> dict
    diff_table(base, compare, *, mode="share", limit=20) -> dict
    diff_folded(base, compare) -> str     # "stack base_count compare_count" lines
    metadata_diff_json(base_series, compare_series, ...) -> dict   # == diff_json of with_metadata(...)
    metadata_diff_table(base_series, compare_series, ...) -> dict  # == diff_table of with_metadata(...)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from stacks.errors import InputError
from stacks.folded import format_frame
from stacks.graft import build_grafted
from stacks.model import Frame, Kind, Profile
from stacks.prune import check_prune_args
from stacks.tree import (
    DEFAULT_MAX_NODES,
    KINDS,
    METADATA_LEVELS,
    Columns,
    Node,
    Tree,
    _layout,
    _pruned,
    metadata_frames,
    metadata_function_stats_pair,
    metadata_labels,
    prune_columns,
)

MODES = ("share", "absolute")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"diff mode {mode!r} is unknown: use 'share' or 'absolute'")


def scale_factor(base_sum: int, compare_sum: int, mode: str) -> float:
    """``k`` of the layout formula: compare_sum/base_sum in share mode, else 1.

    With an empty side the ratio is undefined; 1 is used so the other side still shows.
    """
    _check_mode(mode)
    if mode == "share" and base_sum > 0 and compare_sum > 0:
        return compare_sum / base_sum
    return 1.0


def diff_tree(base: Profile, compare: Profile) -> Tree:
    """Union tree: ``total``/``self`` from ``compare``, ``base_total``/``base_self`` from ``base``."""
    return Tree(Columns.build([compare, base]))


def diff_json(
    base: Profile,
    compare: Profile,
    *,
    mode: str = "share",
    max_nodes: int = DEFAULT_MAX_NODES,
    min_share: float = 0.0,
    labels: Mapping[tuple[str, ...], str] | None = None,
) -> dict[str, Any]:
    """The "diff" JSON of docs/architecture.md, pruned to ``max_nodes`` by layout width.

    ``labels`` (from :func:`stacks.tree.metadata_labels`) names metadata nodes.
    """
    _check_mode(mode)
    base_sum, compare_sum = base.total, compare.total
    k = scale_factor(base_sum, compare_sum, mode)
    check_prune_args(max_nodes, min_share)
    trie = Columns.build([compare, base], labels=labels)
    assert trie.base_total is not None
    # Prune on the layout width itself so what is dropped is what would be narrowest on screen.
    tree = prune_columns(trie, trie.total + trie.base_total * k, max_nodes=max_nodes, min_share=min_share)
    return _diff_doc(tree, mode, k, base_sum, compare_sum)


def metadata_diff_json(
    base_series: Iterable[tuple[Mapping[str, str], Profile]],
    compare_series: Iterable[tuple[Mapping[str, str], Profile]],
    *,
    mode: str = "share",
    max_nodes: int = DEFAULT_MAX_NODES,
    min_share: float = 0.0,
    levels: Sequence[str] = METADATA_LEVELS,
) -> dict[str, Any]:
    """``diff_json(with_metadata(base_series), with_metadata(compare_series), labels=...)``
    (labels of both sides, compare's winning) without prefixing any stack.

    The union trie is built top-down as :func:`stacks.tree.metadata_tree` does: metadata
    paths walked once per series, and nodes narrower (by layout width) than a lower bound
    of the pruning threshold never expanded. Equal node for node; ``pruned["nodes_before"]``
    counts the nodes examined, not the full union trie.
    """
    _check_mode(mode)
    base_series, compare_series = list(base_series), list(compare_series)
    base_sum = sum(p.total for _, p in base_series)
    compare_sum = sum(p.total for _, p in compare_series)
    k = scale_factor(base_sum, compare_sum, mode)
    check_prune_args(max_nodes, min_share)

    def parts(series: list[tuple[Mapping[str, str], Profile]]) -> list[tuple[tuple[Frame, ...], Profile]]:
        return [(tuple(Frame(v, Kind.METADATA) for _, v in metadata_frames(lab, levels)), p) for lab, p in series]

    labels = {**metadata_labels(base_series, levels), **metadata_labels(compare_series, levels)}
    trie, fit = build_grafted(parts(compare_series), min_share, base_parts=parts(base_series), k=k,
                              max_nodes=max_nodes, labels=labels)
    assert trie.base_total is not None
    tree = prune_columns(trie, trie.total + trie.base_total * k, max_nodes=max_nodes, min_share=min_share,
                         fit=fit)
    return _diff_doc(tree, mode, k, base_sum, compare_sum)


def _diff_doc(tree: Tree, mode: str, k: float, base_sum: int, compare_sum: int) -> dict[str, Any]:
    """The diff JSON of a pruned union tree."""

    def width(n: Node) -> float:
        return n.total + n.base_total * k

    cols, names, max_depth, has_label = _layout(tree, width)
    keys = ("name", "kind", "depth", "start", "width", "total", "self", "base_total", "base_self")
    out: dict[str, Any] = {
        "version": 1,
        "type": "diff",
        "mode": mode,
        "unit": "samples",
        "total": compare_sum,
        "base_sum": base_sum,
        "compare_sum": compare_sum,
        "k": k,
        "names": names,
        "kinds": list(KINDS),
        "nodes": {key: cols[key] for key in keys},
        "max_depth": max_depth,
        "pruned": _pruned(tree, None, len(cols["name"])),
    }
    if has_label:
        out["nodes"]["label"] = cols["label"]
    return out


def node_delta(
    base_count: int, compare_count: int, base_sum: int, compare_sum: int, mode: str
) -> float:
    """Change of one node: share points (percent) in share mode, raw samples in absolute mode."""
    if mode == "absolute":
        return float(compare_count - base_count)
    return _pct(compare_count, compare_sum) - _pct(base_count, base_sum)


def _pct(count: int, total: int) -> float:
    return 100.0 * count / total if total else 0.0


def diff_table(base: Profile, compare: Profile, *, mode: str = "share", limit: int = 20) -> dict[str, Any]:
    """Top regressions and improvements by self and by total.

    Returns ``{"mode", "base_sum", "compare_sum", "self": {"regressions": [...],
    "improvements": [...]}, "total": {...}}``; each row is ``{"name", "kind",
    "base", "compare", "base_pct", "compare_pct", "delta"}``. ``delta`` is in
    percentage points (share) or samples (absolute). Regressions have
    ``delta > 0``, largest first; improvements ``delta < 0``, most negative first.
    """
    _check_mode(mode)
    if limit < 0:
        raise InputError(f"limit={limit}: must be 0 or more")
    trie = Columns.build([compare, base])  # one trie, both sides
    return _table(trie.function_stats(base=True), trie.function_stats(), base.total, compare.total, mode, limit)


def metadata_diff_table(
    base_series: Iterable[tuple[Mapping[str, str], Profile]],
    compare_series: Iterable[tuple[Mapping[str, str], Profile]],
    *,
    mode: str = "share",
    limit: int = 20,
    levels: Sequence[str] = METADATA_LEVELS,
) -> dict[str, Any]:
    """``diff_table(with_metadata(base_series), with_metadata(compare_series))`` without
    prefixing any stack (:func:`stacks.tree.metadata_function_stats_pair`: per side, one plain
    trie for both)."""
    _check_mode(mode)
    if limit < 0:
        raise InputError(f"limit={limit}: must be 0 or more")
    base_series, compare_series = list(base_series), list(compare_series)
    bs, cs = metadata_function_stats_pair(base_series, compare_series, levels)
    return _table(bs, cs, sum(p.total for _, p in base_series), sum(p.total for _, p in compare_series), mode, limit)


def _table(bs: Mapping[tuple[str, str], list[int]], cs: Mapping[tuple[str, str], list[int]], base_sum: int,
           compare_sum: int, mode: str, limit: int) -> dict[str, Any]:
    """The diff table from per-function ``[self, total]`` of each side."""
    out: dict[str, Any] = {"mode": mode, "base_sum": base_sum, "compare_sum": compare_sum}
    for col, idx in (("self", 0), ("total", 1)):
        rows = []
        for key in bs.keys() | cs.keys():
            b = bs[key][idx] if key in bs else 0
            c = cs[key][idx] if key in cs else 0
            delta = node_delta(b, c, base_sum, compare_sum, mode)
            if delta == 0:
                continue
            rows.append(
                {
                    "name": key[0],
                    "kind": key[1],
                    "base": b,
                    "compare": c,
                    "base_pct": _pct(b, base_sum),
                    "compare_pct": _pct(c, compare_sum),
                    "delta": delta,
                }
            )
        reg = sorted((r for r in rows if r["delta"] > 0), key=lambda r: (-r["delta"], r["name"], r["kind"]))
        imp = sorted((r for r in rows if r["delta"] < 0), key=lambda r: (r["delta"], r["name"], r["kind"]))
        out[col] = {"regressions": reg[:limit], "improvements": imp[:limit]}
    return out


def diff_folded(base: Profile, compare: Profile) -> str:
    """``stack base_count compare_count`` lines (the difffolded.pl format), sorted."""
    b = {";".join(format_frame(f) for f in s): c for s, c in base.items()}
    c = {";".join(format_frame(f) for f in s): n for s, n in compare.items()}
    lines = sorted(f"{k} {b.get(k, 0)} {c.get(k, 0)}" for k in b.keys() | c.keys())
    return "\n".join(lines) + ("\n" if lines else "")
