"""Profile -> flame tree: build, prune, focus, search, top table, sandwich, Flame JSON.

Pure: no I/O, no clock. A :class:`Tree` is a trie of :class:`Node` objects
(children keyed by frame) built in one pass over the distinct stacks of a
profile. :func:`to_json` lays it out in pre-order as the columnar "Flame JSON"
of ``docs/architecture.md``.

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

import heapq
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from stacks.errors import InputError
from stacks.model import Frame, Kind, Profile, StackTable, merge

METADATA_LEVELS: tuple[str, ...] = ("node", "namespace", "pod", "container", "process")
"""Label names turned into root frames, outermost first."""

KINDS: tuple[str, ...] = ("user", "kernel", "metadata", "other")
"""Fixed kind table of the Flame JSON; index = code used in ``nodes.kind``."""

OTHER = "other"
"""Name and kind of the node that stands for pruned children of one parent."""

ROOT_NAME = "all"
DEFAULT_MAX_NODES = 20000

_KIND_CODE = {k: i for i, k in enumerate(KINDS)}


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
        return sorted(self.children.values(), key=_child_order)

    def copy(self) -> Node:
        """A deep copy of this subtree."""
        out = Node(self.name, self.kind, self.total, self.self, self.label)
        out.base_total, out.base_self = self.base_total, self.base_self
        out.children = {k: c.copy() for k, c in self.children.items()}
        return out

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.kind!r}, total={self.total}, self={self.self})"


def _child_order(n: Node) -> tuple[bool, str, str]:
    return (n.kind == OTHER, n.name, n.kind)


class Tree:
    """A flame tree: a root node plus what pruning did (``pruned``, or None)."""

    __slots__ = ("pruned", "root")

    def __init__(self, root: Node, pruned: dict[str, Any] | None = None) -> None:
        self.root = root
        self.pruned = pruned

    @property
    def total(self) -> int:
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


# --------------------------------------------------------------------------- metadata


def metadata_frames(
    labels: Mapping[str, str], levels: Sequence[str] = METADATA_LEVELS
) -> list[tuple[str, str]]:
    """(label, value) pairs of ``levels`` present in ``labels`` (empty values skipped), in order."""
    return [(lv, labels[lv]) for lv in levels if labels.get(lv)]


def with_metadata(
    series: Iterable[tuple[Mapping[str, str], Profile]],
    table: StackTable,
    levels: Sequence[str] = METADATA_LEVELS,
) -> Profile:
    """Merge series into one profile on ``table``, each stack prefixed by its metadata frames.

    The frames are the bare label values (``default``, ``admin-7f9c``) of
    ``levels`` in order, kind :attr:`Kind.METADATA`; absent labels are skipped.
    """
    parts = []
    for labels, profile in series:
        prefix = tuple(Frame(v, Kind.METADATA) for _, v in metadata_frames(labels, levels))
        if not prefix:
            parts.append(profile.rebase(table))
            continue
        # Intern each distinct stack once with its prefix; counts stay exact.
        src = profile.table.stack
        intern = table.intern
        ids = [intern(prefix + src(s)) for s in profile.ids.tolist()]
        parts.append(Profile.from_arrays(table, ids, profile.counts))  # type: ignore[arg-type]
    if not parts:
        return Profile.empty(table)
    return merge(parts, table)


def metadata_labels(
    series: Iterable[tuple[Mapping[str, str], object]], levels: Sequence[str] = METADATA_LEVELS
) -> dict[tuple[str, ...], str]:
    """Map each metadata path (tuple of values from the root) to the label of its last value.

    Pass it to ``build_tree(profile, labels=...)`` so metadata nodes carry
    ``label`` (the viewer's tooltip shows "pod: admin-7f9c"). Paths, not bare
    values, are keys because one value can be both a container and a process.
    """
    out: dict[tuple[str, ...], str] = {}
    for labels, _ in series:
        path: tuple[str, ...] = ()
        for name, value in metadata_frames(labels, levels):
            path += (value,)
            out.setdefault(path, name)
    return out


# --------------------------------------------------------------------------- building


def _new_root(total: int = 0) -> Node:
    return Node(ROOT_NAME, Kind.METADATA.value, total)


def _insert(root: Node, stack: Sequence[Frame], count: int) -> None:
    """Add ``count`` samples of ``stack`` (root first) below ``root``; root.total included."""
    root.total += count
    node = root
    for f in stack:
        children = node.children
        child = children.get(f)
        if child is None:
            child = children[f] = Node(f[0], f[1].value if isinstance(f[1], Kind) else str(f[1]))
        child.total += count
        node = child
    node.self += count


def build_tree(profile: Profile, *, labels: Mapping[tuple[str, ...], str] | None = None) -> Tree:
    """The flame tree of ``profile``: root ``all`` (kind metadata), one node per distinct path.

    One dict lookup per frame of each distinct stack. ``labels`` (from
    :func:`metadata_labels`) names the label of metadata nodes.
    """
    root = _new_root()
    stack_of = profile.table.stack
    for sid, count in zip(profile.ids.tolist(), profile.counts.tolist(), strict=True):
        _insert(root, stack_of(sid), count)
    tree = Tree(root)
    if labels:
        _attach_labels(root, labels)
    return tree


def _attach_labels(root: Node, labels: Mapping[tuple[str, ...], str]) -> None:
    todo: list[tuple[Node, tuple[str, ...]]] = [(c, ()) for c in root.children.values()]
    while todo:
        node, path = todo.pop()
        if node.kind != Kind.METADATA.value:
            continue  # metadata frames only sit at the top of stacks
        path = (*path, node.name)
        node.label = labels.get(path)
        todo.extend((c, path) for c in node.children.values())


def _as_tree(profile_or_tree: Profile | Tree) -> Tree:
    if isinstance(profile_or_tree, Tree):
        return profile_or_tree
    if isinstance(profile_or_tree, Profile):
        return build_tree(profile_or_tree)
    raise TypeError(f"expected a Profile or a Tree, got {type(profile_or_tree).__name__}")


# --------------------------------------------------------------------------- pruning


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
    if max_nodes < 2:
        raise InputError(f"max_nodes={max_nodes}: must be at least 2 (the root and one 'other' node)")
    if not 0.0 <= min_share <= 1.0:
        raise InputError(f"min_share={min_share}: must be between 0 and 1 (e.g. 0.0005 for 1 px of 2000)")
    w: Callable[[Node], float] = weight or (lambda n: n.total)
    root = tree.root
    before = tree.node_count()
    floor = min_share * w(root)

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

    new_root = _copy_kept(root, kept)
    out = Tree(new_root)
    out.pruned = {
        "nodes_before": before,
        "nodes_after": out.node_count(),
        "min_share": min_share,
        "max_nodes": max_nodes,
    }
    return out


def _copy_kept(root: Node, kept: set[int]) -> Node:
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


# --------------------------------------------------------------------------- focus / search


def _merge_into(dst: Node, src: Node) -> None:
    """Add the counts of subtree ``src`` into ``dst`` (same position)."""
    todo = [(dst, src)]
    while todo:
        d, s = todo.pop()
        d.total += s.total
        d.self += s.self
        d.base_total += s.base_total
        d.base_self += s.base_self
        for key, c in s.children.items():
            dc = d.children.get(key)
            if dc is None:
                dc = d.children[key] = Node(c.name, c.kind, label=c.label)
            todo.append((dc, c))


def focus(profile_or_tree: Profile | Tree, name_or_path: str | Sequence[str]) -> Tree:
    """The subtree(s) rooted at a function, merged, as a tree whose root is that function.

    ``name_or_path`` is a function name (every outermost occurrence counts, so
    recursion is not double counted) or a sequence of names from the first
    frame below ``all`` (only that path). The root's kind is the kind of the
    heaviest match. Raises InputError if nothing matches.
    """
    tree = _as_tree(profile_or_tree)
    matches: list[Node] = []
    if isinstance(name_or_path, str):
        target = name_or_path
        todo = list(tree.root.children.values())
        while todo:
            node = todo.pop()
            if node.name == target:
                matches.append(node)  # nested occurrences are inside this subtree already
            else:
                todo.extend(node.children.values())
    else:
        path = list(name_or_path)
        if not path:
            raise InputError("focus path is empty: give at least one function name")
        target = path[-1]
        level = [tree.root]
        for name in path:
            level = [c for n in level for c in n.children.values() if c.name == name]
        matches = level
    if not matches:
        raise InputError(f"focus: no frame named {target!r} in the profile (check the function name)")
    kind = max(matches, key=lambda n: n.total).kind
    root = Node(target, kind)
    for m in matches:
        _merge_into(root, m)
    return Tree(root)


def _compile(regex: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except re.error as e:
        raise InputError(f"search regex {regex!r} is invalid: {e} (escape special characters)") from None


def search(profile_or_tree: Profile | Tree, regex: str) -> dict[str, Any]:
    """Samples in stacks with at least one frame whose name matches ``regex`` (``re.search``).

    Returns ``{"matched", "total", "share"}``; a matching subtree counts once
    even if it matches again deeper (recursion). The root ``all`` is not matched.
    Raises InputError on a bad regex.
    """
    pat = _compile(regex)
    tree = _as_tree(profile_or_tree)
    matched = 0
    cache: dict[str, bool] = {}
    todo = list(tree.root.children.values())
    while todo:
        node = todo.pop()
        hit = cache.get(node.name)
        if hit is None:
            hit = cache[node.name] = pat.search(node.name) is not None
        if hit:
            matched += node.total
        else:
            todo.extend(node.children.values())
    total = tree.total
    return {"matched": matched, "total": total, "share": matched / total if total else 0.0}


# --------------------------------------------------------------------------- tables


def function_stats(profile: Profile) -> dict[tuple[str, str], list[int]]:
    """``{(name, kind): [self, total]}``; total counts a function once per stack."""
    stats: dict[tuple[str, str], list[int]] = {}
    stack_of = profile.table.stack
    for sid, count in zip(profile.ids.tolist(), profile.counts.tolist(), strict=True):
        stack = stack_of(sid)
        if not stack:
            continue
        for f in set(stack):
            key = (f[0], f[1].value if isinstance(f[1], Kind) else str(f[1]))
            s = stats.get(key)
            if s is None:
                s = stats[key] = [0, 0]
            s[1] += count
        leaf = stack[-1]
        stats[(leaf[0], leaf[1].value if isinstance(leaf[1], Kind) else str(leaf[1]))][0] += count
    return stats


def top_table(profile: Profile, limit: int | None = None) -> list[dict[str, Any]]:
    """Functions by self samples (then total, then name): ``[{"name", "kind", "self", "total"}]``.

    ``total`` counts each function once per stack, even when it recurses.
    """
    if limit is not None and limit < 0:
        raise InputError(f"limit={limit}: must be 0 or more")
    rows = [
        {"name": name, "kind": kind, "self": s, "total": t}
        for (name, kind), (s, t) in function_stats(profile).items()
    ]
    rows.sort(key=lambda r: (-r["self"], -r["total"], r["name"], r["kind"]))
    return rows if limit is None else rows[:limit]


def sandwich(profile: Profile, name: str) -> tuple[Tree, Tree]:
    """(callers, callees) of function ``name``, both rooted at ``name``.

    For each stack the outermost occurrence of ``name`` is used, so both roots
    total the samples of stacks containing it. Callers is inverted: its
    children are the direct callers, their children the callers' callers.
    Raises InputError if no frame has that name.
    """
    kinds: dict[str, int] = {}
    stack_of = profile.table.stack
    callers_root = Node(name, "user")
    callees_root = Node(name, "user")
    for sid, count in zip(profile.ids.tolist(), profile.counts.tolist(), strict=True):
        stack = stack_of(sid)
        i = next((j for j, f in enumerate(stack) if f[0] == name), -1)
        if i < 0:
            continue
        f = stack[i]
        kv = f[1].value if isinstance(f[1], Kind) else str(f[1])
        kinds[kv] = kinds.get(kv, 0) + count
        _insert(callees_root, stack[i + 1 :], count)
        _insert(callers_root, stack[i - 1 :: -1] if i else (), count)
    if not kinds:
        raise InputError(f"sandwich: no frame named {name!r} in the profile (check the function name)")
    kind = max(kinds.items(), key=lambda kv: kv[1])[0]
    callers_root.kind = callees_root.kind = kind
    return Tree(callers_root), Tree(callees_root)


# --------------------------------------------------------------------------- JSON


def to_json(tree: Tree, *, pruned_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The "Flame JSON" of ``docs/architecture.md``: pre-order columnar nodes, width == total.

    ``pruned`` is ``pruned_info`` if given, else what :func:`prune` recorded,
    else the unpruned node count. Metadata nodes with a known label add a
    ``nodes.label`` array (null elsewhere).
    """
    cols, names, max_depth, has_label = _layout(tree, lambda n: n.total)
    out: dict[str, Any] = {
        "version": 1,
        "type": "flame",
        "unit": "samples",
        "total": tree.total,
        "names": names,
        "kinds": list(KINDS),
        "nodes": {k: cols[k] for k in ("name", "kind", "depth", "start", "width", "total", "self")},
        "max_depth": max_depth,
        "pruned": _pruned(tree, pruned_info, len(cols["name"])),
    }
    if has_label:
        out["nodes"]["label"] = cols["label"]
    return out


def _pruned(tree: Tree, pruned_info: Mapping[str, Any] | None, count: int) -> dict[str, Any]:
    if pruned_info is not None:
        return dict(pruned_info)
    if tree.pruned is not None:
        return dict(tree.pruned)
    return {"nodes_before": count, "nodes_after": count, "min_share": 0.0}


def _layout(tree: Tree, width: Callable[[Node], float]) -> tuple[dict[str, list[Any]], list[str], int, bool]:
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
    todo: list[tuple[Node, int, float]] = [(tree.root, 0, 0)]
    while todo:
        node, depth, start = todo.pop()
        i = name_idx.get(node.name)
        if i is None:
            i = name_idx[node.name] = len(names)
            names.append(node.name)
        w = width(node)
        c_name.append(i)
        c_kind.append(_KIND_CODE.get(node.kind, 0))
        c_depth.append(depth)
        c_start.append(start)
        c_width.append(w)
        c_total.append(node.total)
        c_self.append(node.self)
        c_label.append(node.label)
        c_bt.append(node.base_total)
        c_bs.append(node.base_self)
        has_label = has_label or node.label is not None
        max_depth = max(max_depth, depth)
        if node.children:
            kids = node.sorted_children()
            starts = []
            s = start
            for c in kids:
                starts.append(s)
                s += width(c)
            todo.extend((c, depth + 1, st) for c, st in zip(reversed(kids), reversed(starts), strict=True))
    return cols, names, max_depth, has_label
