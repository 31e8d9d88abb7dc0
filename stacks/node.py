"""The object view of a flame tree: :class:`Tree` (a :class:`~stacks.columns.Columns` plus what
pruning did) and the read-only :class:`Node` objects made from it on demand.

Pure: no I/O, no clock. Every algorithm works on the columns; Node objects are only made when
``Tree.root`` is read (for layout, and for callers that walk a tree) and are never read back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from stacks.columns import DEFAULT_MAX_NODES, KIND_CODE, KINDS, OTHER, ROOT_NAME, Columns, heaviest_kind
from stacks.model import Kind

__all__ = ["DEFAULT_MAX_NODES", "KINDS", "KIND_CODE", "OTHER", "ROOT_NAME", "Node", "Tree", "child_order",
           "heaviest_kind", "materialize"]


class Node:
    """One node of a flame tree (a view: changing it changes nothing else).

    ``total`` counts samples in this subtree, ``self`` samples whose leaf is
    this node, so ``total == self + sum(child.total)``. Diff trees also fill
    ``base_total`` / ``base_self`` (the base side); flame trees leave them 0.
    ``label`` names the label a metadata node came from (``pod``...), if known.
    """

    __slots__ = ("base_self", "base_total", "children", "kind", "label", "name", "self", "total")

    def __init__(node, name: str, kind: str, total: int = 0, self: int = 0, label: str | None = None) -> None:
        node.name = name
        node.kind = kind
        node.total = total
        node.self = self
        node.children: dict[Any, Node] = {}
        node.label = label
        node.base_total = 0
        node.base_self = 0

    def sorted_children(self) -> list[Node]:
        """Children in layout order: by name then kind, ``other`` nodes last."""
        return sorted(self.children.values(), key=child_order)

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.kind!r}, total={self.total}, self={self.self})"


def child_order(n: Node) -> tuple[bool, str, str]:
    """Sort key of the layout order of siblings: by name then kind, ``other`` last."""
    return (n.kind == OTHER, n.name, n.kind)


class Tree:
    """A flame tree: its columns (``cols``) plus what pruning did (``pruned``, or None).

    ``root`` is a Node view of the columns, made on first read; reading it changes nothing
    (every function of :mod:`stacks.tree` reads ``cols``).
    """

    __slots__ = ("_root", "cols", "pruned")

    def __init__(self, cols: Columns, pruned: dict[str, Any] | None = None) -> None:
        if not isinstance(cols, Columns):
            raise TypeError(f"Tree needs Columns, got {type(cols).__name__}")
        self.cols = cols
        self.pruned = pruned
        self._root: Node | None = None

    @property
    def root(self) -> Node:
        """The root node of the Node view (made once, on first read)."""
        if self._root is None:
            self._root = materialize(self.cols)
        return self._root

    @property
    def total(self) -> int:
        """Samples under the root."""
        return int(self.cols.total[0])

    def walk(self) -> Iterator[tuple[Node, int]]:
        """(node, depth) in pre-order, children in layout order."""
        todo: list[tuple[Node, int]] = [(self.root, 0)]
        while todo:
            node, depth = todo.pop()
            yield node, depth
            if node.children:
                todo.extend((c, depth + 1) for c in reversed(node.sorted_children()))

    def node_count(self) -> int:
        """Number of nodes, the root included."""
        return len(self.cols.parent)

    def find(self, *names: str) -> Node:
        """The node reached from the root by child ``names`` (test helper); KeyError if absent."""
        node = self.root
        for name in names:
            matches = [c for c in node.children.values() if c.name == name]
            if not matches:
                raise KeyError("/".join(names))
            node = matches[0]
        return node


def materialize(cols: Columns) -> Node:
    """Node objects for every row of ``cols`` (a pruned trie keeps a few thousand rows)."""
    n = len(cols.parent)
    parent = cols.parent.tolist()
    total, self_ = cols.total.tolist(), cols.self_.tolist()
    if cols.base_total is not None and cols.base_self is not None:
        btotal, bself = cols.base_total.tolist(), cols.base_self.tolist()
    else:  # a flame trie: Node's own 0
        btotal = bself = [0] * n
    nodes: list[Node] = []
    fnames = cols.fnames
    kind_of = [KINDS[c] for c in cols.fkinds]  # per function, not per node
    for up, fi, t, sf, bt, bs in zip(parent, cols.fid.tolist(), total, self_, btotal, bself, strict=True):
        if up < 0:
            node = Node(cols.root_name, cols.root_kind, t, sf)
        else:
            kind = kind_of[fi]
            name = fnames[fi]
            node = Node(name, kind, t, sf)
            nodes[up].children[(name, kind)] = node
        node.base_total = bt
        node.base_self = bs
        nodes.append(node)
    root = nodes[0]
    if cols.labels:
        _attach_labels(root, cols.labels)
    return root


def _attach_labels(root: Node, labels: Mapping[tuple[str, ...], str]) -> None:
    """Set ``label`` on the metadata nodes whose value path from the root is in ``labels``."""
    todo: list[tuple[Node, tuple[str, ...]]] = [(c, ()) for c in root.children.values()]
    while todo:
        node, path = todo.pop()
        if node.kind != Kind.METADATA.value:
            continue  # metadata frames only sit at the top of stacks
        path = (*path, node.name)
        node.label = labels.get(path)
        todo.extend((c, path) for c in node.children.values())


