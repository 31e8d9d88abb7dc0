"""The object form of a flame tree: :class:`Node` and :class:`Tree`, and the fixed kind table.

Pure: no I/O, no clock. A :class:`Tree` built from a profile holds its columnar trie
(:class:`stacks.columns.Columns`) and only makes :class:`Node` objects when ``root``
is first read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stacks.columns import Columns

KINDS: tuple[str, ...] = ("user", "kernel", "metadata", "other")
"""Fixed kind table of the Flame JSON; index = code used in ``nodes.kind``."""

OTHER = "other"
"""Name and kind of the node that stands for pruned children of one parent."""

ROOT_NAME = "all"
DEFAULT_MAX_NODES = 20000

KIND_CODE: dict[str, int] = {k: i for i, k in enumerate(KINDS)}
"""Kind name -> its index in :data:`KINDS`."""


class Node:
    """One node of a flame tree.

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

    def copy(self) -> Node:
        """A deep copy of this subtree."""
        out = Node(self.name, self.kind, self.total, self.self, self.label)
        out.base_total, out.base_self = self.base_total, self.base_self
        out.children = {k: c.copy() for k, c in self.children.items()}
        return out

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.kind!r}, total={self.total}, self={self.self})"


def child_order(n: Node) -> tuple[bool, str, str]:
    """Sort key of the layout order of siblings: by name then kind, ``other`` last."""
    return (n.kind == OTHER, n.name, n.kind)


def heaviest_kind(kinds: Mapping[str, int]) -> str:
    """The kind with the most samples; ties go to the first in KINDS order, so the answer
    never depends on the order occurrences were met in (node ids follow memory addresses)."""
    return max(kinds.items(), key=lambda kv: (kv[1], -KIND_CODE.get(kv[0], len(KINDS))))[0]


class Tree:
    """A flame tree: a root node plus what pruning did (``pruned``, or None).

    Trees from :func:`stacks.tree.build_tree` / :func:`stacks.diff.diff_tree` are stored
    columnar (``cols``); their :class:`Node` objects are only made when
    ``root`` is first read, so build -> prune -> to_json never creates the
    nodes that pruning drops.
    """

    __slots__ = ("_root", "cols", "pruned")

    def __init__(
        self, root: Node | None = None, pruned: dict[str, Any] | None = None, cols: Columns | None = None
    ) -> None:
        if root is None and cols is None:
            raise TypeError("Tree needs a root node or columns")
        self._root = root
        self.cols = cols
        self.pruned = pruned

    @property
    def root(self) -> Node:
        """The root node, made from the columns on first read."""
        if self._root is None:
            assert self.cols is not None
            self._root = self.cols.materialize(None)
        return self._root

    @property
    def columnar(self) -> bool:
        """True while the tree is only columns (no Node read yet): the vectorised paths apply."""
        return self._root is None and self.cols is not None

    @property
    def total(self) -> int:
        """Samples under the root."""
        if self._root is None and self.cols is not None:
            return int(self.cols.total[0])
        return self.root.total

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
        if self._root is None and self.cols is not None:
            return len(self.cols.parent)
        n = 0
        todo = [self.root]
        while todo:
            node = todo.pop()
            n += 1
            todo.extend(node.children.values())
        return n

    def find(self, *names: str) -> Node:
        """The node reached from the root by child ``names`` (test helper); KeyError if absent."""
        node = self.root
        for name in names:
            matches = [c for c in node.children.values() if c.name == name]
            if not matches:
                raise KeyError("/".join(names))
            node = matches[0]
        return node
