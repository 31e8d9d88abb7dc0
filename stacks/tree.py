"""Profile -> flame tree: build, prune, focus, search, top table, sandwich, Flame JSON.

Pure: no I/O, no clock. :func:`build_tree` makes a columnar trie
(:class:`Columns`, numpy arrays built level by level); every algorithm (prune, focus,
search, sandwich) works on those arrays and returns new ones. :class:`Node` objects are a
read-only view made when ``Tree.root`` is read (children keyed by ``(name, kind)``).
:func:`to_json` lays a tree out in pre-order as the columnar "Flame JSON" of
``docs/architecture.md``.

This module is the public entry: it holds the builders and re-exports the rest, which
lives by concern in :mod:`stacks.columns` (the columnar trie), :mod:`stacks.node` (Tree and
its Node view), :mod:`stacks.metadata` (metadata frames), :mod:`stacks.prune`,
:mod:`stacks.graft` (the top-down build), :mod:`stacks.views` (focus, search, tables,
sandwich) and :mod:`stacks.flamejson`. Imports run one way: columns, node, prune, graft,
views, flamejson, tree.

Public API (see docs/tree.md)::

    with_metadata(series, table, levels=METADATA_LEVELS) -> Profile
    metadata_labels(series, levels=METADATA_LEVELS) -> dict[tuple[str, ...], str]
    build_tree(profile, *, labels=None) -> Tree
    prune(tree, *, max_nodes=20000, min_share=0.0) -> Tree
    focus(profile_or_tree, name_or_path) -> Tree
    search(profile_or_tree, regex) -> {"matched", "total", "share"}
    top_table(profile, limit=None) -> [{"name", "kind", "self", "total"}]
    sandwich(profile, name) -> (callers, callees)
    to_json(tree, *, pruned_info=None) -> dict
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from stacks.columns import DEFAULT_MAX_NODES, KINDS, OTHER, ROOT_NAME, Columns
from stacks.flamejson import layout, pruned_member, to_json
from stacks.graft import Part, build_grafted
from stacks.metadata import METADATA_LEVELS, metadata_frames, metadata_labels, metadata_path, with_metadata
from stacks.model import Frame, Kind, Profile
from stacks.node import Node, Tree
from stacks.prune import check_prune_args, prune, prune_columns
from stacks.views import (
    focus,
    function_stats,
    metadata_function_stats,
    metadata_function_stats_pair,
    sandwich,
    search,
    top_table,
)

# The names stacks.diff has always imported from here.
_layout = layout
_pruned = pruned_member

__all__ = [
    "DEFAULT_MAX_NODES", "KINDS", "METADATA_LEVELS", "OTHER", "ROOT_NAME", "Columns", "Node", "Tree",
    "build_tree", "focus", "function_stats", "grafted_tree", "metadata_frames", "metadata_function_stats",
    "metadata_function_stats_pair", "metadata_labels", "metadata_tree", "prune", "prune_columns",
    "pruned_tree", "sandwich", "search", "to_json", "top_table", "with_metadata",
]


def build_tree(profile: Profile, *, labels: Mapping[tuple[str, ...], str] | None = None) -> Tree:
    """The flame tree of ``profile``: root ``all`` (kind metadata), one node per distinct path.

    Built columnar (see :class:`Columns`): no per-frame Python work, and Node
    objects only appear when ``root`` is read. ``labels`` (from :func:`metadata_labels`)
    names the label of metadata nodes.
    """
    return Tree(Columns.build([profile], labels=labels))


def pruned_tree(
    profile: Profile,
    *,
    max_nodes: int = DEFAULT_MAX_NODES,
    min_share: float = 0.0,
    labels: Mapping[tuple[str, ...], str] | None = None,
) -> Tree:
    """``prune(build_tree(profile, labels=labels), max_nodes=, min_share=)``, built faster.

    The trie is built top-down and a node narrower than ``min_share`` of the
    root is never expanded: it can never be kept (its descendants are no wider),
    so only its total matters (it goes into its parent's ``other``). The kept
    nodes, their counts and the ``other`` nodes equal the full build's exactly;
    ``pruned["nodes_before"]`` counts the nodes examined (a lower bound of the
    full trie's size when something was left unexpanded).
    """
    return grafted_tree([((), profile)], max_nodes=max_nodes, min_share=min_share, labels=labels)


def metadata_tree(
    series: Iterable[tuple[Mapping[str, str], Profile]],
    *,
    max_nodes: int = DEFAULT_MAX_NODES,
    min_share: float = 0.0,
    levels: Sequence[str] = METADATA_LEVELS,
) -> Tree:
    """The pruned tree of :func:`with_metadata` (labels from :func:`metadata_labels`) without
    prefixing any stack: each series' stacks are walked below its metadata path in the trie.

    Equals ``prune(build_tree(with_metadata(series, t), labels=metadata_labels(series)), ...)``
    node for node (``pruned["nodes_before"]`` as in :func:`pruned_tree`).
    """
    series = list(series)
    parts = [(tuple(Frame(v, Kind.METADATA) for v in metadata_path(lab, levels)), p) for lab, p in series]
    return grafted_tree(parts, max_nodes=max_nodes, min_share=min_share,
                        labels=metadata_labels(series, levels) or None)


def grafted_tree(
    parts: Sequence[Part],
    *,
    max_nodes: int = DEFAULT_MAX_NODES,
    min_share: float = 0.0,
    labels: Mapping[tuple[str, ...], str] | None = None,
) -> Tree:
    """Pruned tree of the merge of ``prefix + stack`` over ``(prefix, profile)`` parts
    (see :func:`pruned_tree`); the prefixed stacks are never made."""
    check_prune_args(max_nodes, min_share)
    # With min_share > 0, nodes_before is already "nodes examined"; then also stop at the
    # max_nodes bound. At min_share 0 it stays the full trie's size (every node is built).
    cols, fit = build_grafted(parts, min_share, max_nodes=max_nodes if min_share > 0 else None, labels=labels)
    return prune_columns(cols, cols.total, max_nodes=max_nodes, min_share=min_share, fit=fit)
