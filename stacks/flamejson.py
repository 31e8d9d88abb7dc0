"""The "Flame JSON" of ``docs/architecture.md``: a tree laid out in pre-order as columns.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stacks.columns import LOC_SEP, split_location
from stacks.node import KIND_CODE, KINDS, Node, Tree, child_order


def to_json(tree: Tree, *, pruned_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The "Flame JSON" of ``docs/architecture.md``: pre-order columnar nodes, width == total.

    ``pruned`` is ``pruned_info`` if given, else what :func:`prune` recorded,
    else the unpruned node count. Metadata nodes with a known label add a
    ``nodes.label`` array (null elsewhere). A tree read by line adds ``locations``, parallel to
    ``names`` (``file:line``, "" where unknown); one function at two lines is two names.
    """
    cols, names, max_depth, has_label = layout(tree, lambda n: n.total)
    names, locations = split_names(names)
    out: dict[str, Any] = {
        "version": 1,
        "type": "flame",
        "unit": "samples",
        "total": tree.total,
        "names": names,
        "kinds": list(KINDS),
        "nodes": {k: cols[k] for k in ("name", "kind", "depth", "start", "width", "total", "self")},
        "max_depth": max_depth,
        "pruned": pruned_member(tree, pruned_info, len(cols["name"])),
    }
    if has_label:
        out["nodes"]["label"] = cols["label"]
    if locations is not None:
        out["locations"] = locations
    return out


def split_names(keys: list[str]) -> tuple[list[str], list[str] | None]:
    """(names, locations) of a layout's name keys; locations None when no frame has one."""
    if not any(LOC_SEP in k for k in keys):
        return keys, None
    pairs = [split_location(k) for k in keys]
    return [n for n, _ in pairs], [loc for _, loc in pairs]


def pruned_member(tree: Tree, given: Mapping[str, Any] | None, count: int) -> dict[str, Any]:
    """The ``pruned`` member: ``given`` if not None, else what pruning recorded, else the
    unpruned node count."""
    if given is not None:
        return dict(given)
    if tree.pruned is not None:
        return dict(tree.pruned)
    return {"nodes_before": count, "nodes_after": count, "min_share": 0.0}


def layout(tree: Tree, width: Callable[[Node], float]) -> tuple[dict[str, list[Any]], list[str], int, bool]:
    """Pre-order columns. A child's start is its parent's start plus the widths before it."""
    name_idx: dict[str, int] = {}
    names: list[str] = []
    keys = ("name", "kind", "depth", "start", "width", "total", "self", "label", "base_total", "base_self")
    cols: dict[str, list[Any]] = {k: [] for k in keys}
    c_name, c_kind, c_depth = cols["name"], cols["kind"], cols["depth"]
    c_start, c_width, c_total, c_self = cols["start"], cols["width"], cols["total"], cols["self"]
    c_label, c_bt, c_bs = cols["label"], cols["base_total"], cols["base_self"]
    max_depth = 0
    has_label = False
    order = child_order
    # Each node's width is computed once, by its parent (which needs it for the starts anyway).
    root = tree.root
    todo: list[tuple[Node, int, float, float]] = [(root, 0, 0, width(root))]
    pop, extend = todo.pop, todo.extend
    while todo:
        node, depth, start, w = pop()
        name = node.name
        i = name_idx.get(name)
        if i is None:
            i = name_idx[name] = len(names)
            names.append(name)
        c_name.append(i)
        c_kind.append(KIND_CODE.get(node.kind, 0))
        c_depth.append(depth)
        c_start.append(start)
        c_width.append(w)
        c_total.append(node.total)
        c_self.append(node.self)
        label = node.label
        c_label.append(label)
        c_bt.append(node.base_total)
        c_bs.append(node.base_self)
        if label is not None:
            has_label = True
        if depth > max_depth:
            max_depth = depth
        children = node.children
        if children:
            s = start
            d = depth + 1
            entries = []
            for c in sorted(children.values(), key=order):
                cw = width(c)
                entries.append((c, d, s, cw))
                s += cw
            entries.reverse()  # popped in layout order
            extend(entries)
    return cols, names, max_depth, has_label
