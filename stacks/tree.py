"""Profile -> flame tree: build, prune, focus, search, top table, sandwich, Flame JSON.

Pure: no I/O, no clock. :func:`build_tree` makes a columnar trie
(:class:`Columns`, numpy arrays built level by level); pruning picks the
nodes to keep on those arrays, and only the kept ones become :class:`Node`
objects (children keyed by ``(name, kind)``). :func:`to_json` lays a tree out
in pre-order as the columnar "Flame JSON" of ``docs/architecture.md``.

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
from itertools import chain
from typing import Any

import numpy as np

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
    """A flame tree: a root node plus what pruning did (``pruned``, or None).

    Trees from :func:`build_tree` / :func:`stacks.diff.diff_tree` are stored
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
        if self._root is None:
            assert self.cols is not None
            self._root = self.cols.materialize(None)
        return self._root

    @property
    def total(self) -> int:
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


def metadata_function_stats(
    series: Iterable[tuple[Mapping[str, str], Profile]], levels: Sequence[str] = METADATA_LEVELS
) -> dict[tuple[str, str], list[int]]:
    """``function_stats(with_metadata(series, t))`` without prefixing any stack.

    A prefixed stack ``P + S`` contains a function if ``P`` or ``S`` does, and ends at
    ``S``'s last frame (``P``'s if ``S`` is empty). So the stats are those of the plain
    merge of all series, plus each series' total once for every distinct function of its
    metadata path, plus its empty-stack samples as self of the path's last frame, minus
    what was counted twice: samples of stacks that themselves hold a metadata frame of
    their series' path (only possible for hand-made input; walked in Python, rarely).
    """
    series = [(lab, p) for lab, p in series if len(p)]
    if not series:
        return {}
    merged = _sum_profiles([p for _, p in series])
    return _metadata_stats(series, merged, Columns.build([merged]).function_stats(), levels)


def metadata_function_stats_pair(
    base_series: Iterable[tuple[Mapping[str, str], Profile]],
    compare_series: Iterable[tuple[Mapping[str, str], Profile]],
    levels: Sequence[str] = METADATA_LEVELS,
) -> tuple[dict[tuple[str, str], list[int]], dict[tuple[str, str], list[int]]]:
    """``(metadata_function_stats(base_series), metadata_function_stats(compare_series))`` with one
    trie of both plain merges when they share a table (a diff's two windows of the same stacks)."""
    bs = [(lab, p) for lab, p in base_series if len(p)]
    cs = [(lab, p) for lab, p in compare_series if len(p)]
    if not bs or not cs:
        return metadata_function_stats(bs, levels), metadata_function_stats(cs, levels)
    mb, mc = _sum_profiles([p for _, p in bs]), _sum_profiles([p for _, p in cs])
    if mb.table is not mc.table:
        return metadata_function_stats(bs, levels), metadata_function_stats(cs, levels)
    # Per-function self/total only read the side's own columns; functions absent from a side
    # have total 0 there and are left out, as in a trie of that side alone.
    trie = Columns.build([mc, mb])
    return (_metadata_stats(bs, mb, trie.function_stats(base=True), levels),
            _metadata_stats(cs, mc, trie.function_stats(), levels))


def _metadata_stats(series: list[tuple[Mapping[str, str], Profile]], merged: Profile,
                    stats: dict[tuple[str, str], list[int]], levels: Sequence[str]
                    ) -> dict[tuple[str, str], list[int]]:
    """The metadata path terms of :func:`metadata_function_stats` added to the plain merge's
    ``stats`` (non-empty ``series``, ``merged`` their merge)."""
    meta = Kind.METADATA.value
    in_stacks = {name for name, kind in stats if kind == meta}
    empty_of = _empty_stack_ids([p for _, p in series], merged)
    for lab, p in series:
        path = [v for _, v in metadata_frames(lab, levels)]
        if not path:
            continue
        t = p.total
        for v in set(path):
            row = stats.setdefault((v, meta), [0, 0])
            row[1] += t
        both = in_stacks.intersection(path)
        if both:  # stacks holding one of the path's metadata frames were counted already
            stack = p.table.stack
            for sid, c in zip(p.ids.tolist(), p.counts.tolist(), strict=True):
                for v in both.intersection(f.name for f in stack(sid) if f.kind == meta):
                    stats[(v, meta)][1] -= c
        e = empty_of.get(id(p.table))
        if e is not None:
            i = int(np.searchsorted(p.ids, e))
            if i < len(p.ids) and p.ids[i] == e:
                stats[(path[-1], meta)][0] += int(p.counts[i])
    return {key: row for key, row in stats.items() if row[1]}


def _sum_profiles(profiles: Sequence[Profile]) -> Profile:
    """The merge of ``profiles``: a dense bincount over table ids when they share one table
    (hundreds of groups of the same stacks), else :func:`stacks.model.merge`."""
    table = profiles[0].table
    if any(p.table is not table for p in profiles):
        return merge(profiles, table)
    ids = np.concatenate([p.ids for p in profiles])
    counts = np.concatenate([p.counts for p in profiles])
    if not ids.size or len(table) > 4 * ids.size + 4096 or int(counts.sum()) >= 2**53:
        return Profile.from_arrays(table, ids, counts)
    flat = np.bincount(ids, weights=counts, minlength=len(table))
    nz = np.flatnonzero(flat)
    return Profile(table, nz.astype(np.int64), np.rint(flat[nz]).astype(np.int64))


def _empty_stack_ids(profiles: Sequence[Profile], merged: Profile) -> dict[int, int]:
    """Per table (by ``id``) the id of the empty stack, for tables whose profiles hold it
    (``merged``, their merge, already lists the distinct ids of its own table)."""
    out: dict[int, int] = {}
    seen: dict[int, StackTable] = {}
    for p in profiles:
        seen.setdefault(id(p.table), p.table)
    for tid, table in seen.items():
        ids = merged.ids if table is merged.table and len(seen) == 1 else np.unique(
            np.concatenate([p.ids for p in profiles if p.table is table]))
        for sid in ids.tolist():
            if not table.stack(sid):
                out[tid] = sid
                break
    return out


# --------------------------------------------------------------------------- building


def _kind_code(kind: object) -> int:
    """Kind -> index in KINDS for kinds given as plain strings (rare; Kind members take a fast path)."""
    try:
        return _KIND_CODE[Kind(kind).value]
    except ValueError:
        raise InputError(f"frame kind {kind!r} is unknown: use user, kernel or metadata") from None


def build_tree(profile: Profile, *, labels: Mapping[tuple[str, ...], str] | None = None) -> Tree:
    """The flame tree of ``profile``: root ``all`` (kind metadata), one node per distinct path.

    Built columnar (see :class:`Columns`): no per-frame Python work, and Node
    objects only appear when ``root`` is read (after pruning, only for the
    kept nodes). ``labels`` (from :func:`metadata_labels`) names the label of
    metadata nodes.
    """
    cols = Columns.build([profile])
    if labels:
        cols.labels = labels
    return Tree(cols=cols)


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
    parts = [(tuple(Frame(v, Kind.METADATA) for _, v in metadata_frames(lab, levels)), p) for lab, p in series]
    return grafted_tree(parts, max_nodes=max_nodes, min_share=min_share,
                        labels=metadata_labels(series, levels) or None)


def grafted_tree(
    parts: Sequence[tuple[tuple[Frame, ...], Profile]],
    *,
    max_nodes: int = DEFAULT_MAX_NODES,
    min_share: float = 0.0,
    labels: Mapping[tuple[str, ...], str] | None = None,
) -> Tree:
    """Pruned tree of the merge of ``prefix + stack`` over ``(prefix, profile)`` parts
    (see :func:`pruned_tree`); the prefixed stacks are never made."""
    if max_nodes < 2:
        raise InputError(f"max_nodes={max_nodes}: must be at least 2 (the root and one 'other' node)")
    if not 0.0 <= min_share <= 1.0:
        raise InputError(f"min_share={min_share}: must be between 0 and 1 (e.g. 0.0005 for 1 px of 2000)")
    # With min_share > 0, nodes_before is already "nodes examined"; then also stop at the
    # max_nodes bound. At min_share 0 it stays the full trie's size (every node is built).
    cols = Columns.build_grafted(parts, min_share, max_nodes=max_nodes if min_share > 0 else None)
    if labels:
        cols.labels = labels
    return prune_columns(cols, cols.total, max_nodes=max_nodes, min_share=min_share)


class Columns:
    """A trie in arrays: node 0 is the root; every parent id is smaller than its children's.

    Per node: ``parent``, ``depth``, ``fid`` (function id: index into ``fnames``
    / ``fkinds``; the root has -1), ``self_``/``total`` (counts of the first
    profile) and, for diff trees, ``base_self``/``base_total`` (the second
    profile), else None. ``recursive()`` tells which nodes have an ancestor of
    the same function.
    """

    __slots__ = (
        "_rec", "base_self", "base_total", "depth", "fid", "fit", "fkinds", "fnames", "labels", "parent",
        "self_", "total",
    )

    def __init__(self, fnames: list[str], fkinds: list[int], fid: np.ndarray, parent: np.ndarray,
                 depth: np.ndarray, selfs: list[np.ndarray], total: np.ndarray | None = None,
                 base_total: np.ndarray | None = None) -> None:
        self.fnames = fnames
        self.fkinds = fkinds
        self.fid = fid
        self.parent = parent
        self.depth = depth
        self.self_ = selfs[0]
        self.total = _subtree_sums(selfs[0], parent, depth) if total is None else total
        self.base_self = selfs[1] if len(selfs) > 1 else None
        self.base_total = (None if len(selfs) < 2 else
                           _subtree_sums(selfs[1], parent, depth) if base_total is None else base_total)
        self.labels: Mapping[tuple[str, ...], str] | None = None
        self._rec: np.ndarray | None = None
        # (weights, floor, max_nodes, T) of a _fit_threshold run over this whole trie, if one was
        # made while building it; prune_columns reuses T when asked the same question.
        self.fit: tuple[np.ndarray, float, int, float] | None = None

    @staticmethod
    def build(profiles: Sequence[Profile]) -> Columns:
        """Trie of the union of ``profiles``' stacks, with one self-count array per profile.

        Built level by level in numpy, so Python does no per-frame work: frames
        are mapped to function ids through their object identity (``map(id, ...)``
        runs in C; parsers share one Frame object per distinct frame, and equal
        frames held by different objects still merge by (name, kind)), then each
        depth's (parent node, function) pairs are made unique to give that
        level's nodes. About 10x faster than a dict-of-children trie walk.
        """
        stacks: list[tuple[Frame, ...]] = []
        which: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        for pi, prof in enumerate(profiles):
            stacks.extend(map(prof.table.stack, prof.ids.tolist()))
            which.append(np.full(len(prof.ids), pi, dtype=np.int64))
            counts.append(prof.counts)
        ns = len(stacks)
        lens = np.fromiter(map(len, stacks), dtype=np.int64, count=ns)
        flat = list(chain.from_iterable(stacks))
        fnames, fkinds, flat_fid = _function_ids(flat)
        starts = np.zeros(ns, dtype=np.int64)
        if ns > 1:
            np.cumsum(lens[:-1], out=starts[1:])
        nf = max(len(fnames), 1)
        parents = [np.array([-1], dtype=np.int64)]
        fids = [np.array([-1], dtype=np.int64)]
        depths = [np.array([0], dtype=np.int32)]
        node_of = np.zeros(ns, dtype=np.int64)  # deepest node reached by each stack so far
        alive = np.arange(ns, dtype=np.int64)
        n = 1
        d = 0
        while True:
            alive = alive[lens[alive] > d]
            if not alive.size:
                break
            key = node_of[alive] * nf + flat_fid[starts[alive] + d]
            ukey, kinv = np.unique(key, return_inverse=True)
            parents.append(ukey // nf)
            fids.append(ukey % nf)
            depths.append(np.full(len(ukey), d + 1, dtype=np.int32))
            node_of[alive] = n + kinv.reshape(-1)
            n += len(ukey)
            d += 1
        all_which = np.concatenate(which) if which else np.zeros(0, dtype=np.int64)
        all_counts = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
        selfs = []
        for pi in range(max(len(profiles), 1)):
            s = np.zeros(n, dtype=np.int64)
            m = all_which == pi
            np.add.at(s, node_of[m], all_counts[m])
            selfs.append(s)
        return Columns(
            fnames, fkinds, np.concatenate(fids), np.concatenate(parents), np.concatenate(depths), selfs
        )

    @staticmethod
    def build_grafted(
        parts: Sequence[tuple[tuple[Frame, ...], Profile]],
        min_share: float = 0.0,
        *,
        base_parts: Sequence[tuple[tuple[Frame, ...], Profile]] | None = None,
        k: float = 1.0,
        max_nodes: int | None = None,
    ) -> Columns:
        """Trie of ``prefix + stack`` over all parts, built top-down; nodes under
        ``min_share`` of the root's weight keep their exact total but are not expanded
        (their self is 0 and they have no children), so the result is only fit for pruning
        with the same ``min_share``.

        ``base_parts`` makes a diff trie (``base_self``/``base_total`` from them, weight
        ``total + base_total * k`` as :func:`stacks.diff.diff_json` prunes by). With
        ``max_nodes``, a node is also left unexpanded when it is lighter than a lower bound of
        the final pruning threshold (the threshold of the nodes known so far: more nodes can
        only raise it), so the insides of cut subtrees are not built even at ``min_share`` 0.

        Each distinct stack of a table is flattened once however many parts hold it (the
        metadata view has the same few thousand stacks under hundreds of pods). Prefix levels
        are walked once per part (weighted by the part's total), not once per (part, stack)
        pair; pairs join at the depth where their part's prefix ends and then read their
        frames from the stack. Each depth's (parent, function) keys are grouped with a dense
        bincount when the level is small enough, else with ``np.unique``.
        """
        diff = base_parts is not None
        allp = list(parts) + list(base_parts or ())
        nparts = len(allp)
        # Distinct stacks per table; pairs are laid out table by table (order does not matter).
        by_table: dict[int, list[int]] = {}
        tables: dict[int, StackTable] = {}
        for pi, (_, prof) in enumerate(allp):
            by_table.setdefault(id(prof.table), []).append(pi)
            tables[id(prof.table)] = prof.table
        stacks: list[tuple[Frame, ...]] = []
        order: list[int] = []
        bodies: list[np.ndarray] = []
        for tid, pis in by_table.items():
            cat = np.concatenate([allp[pi][1].ids for pi in pis])
            size = len(tables[tid])
            off = len(stacks)
            if cat.size and size <= 4 * cat.size + 4096:  # table ids are dense: mark instead of sort
                mark = np.zeros(size, dtype=bool)
                mark[cat] = True
                uniq = np.flatnonzero(mark)
                lookup = np.zeros(size, dtype=np.int64)
                lookup[uniq] = np.arange(off, off + len(uniq), dtype=np.int64)
                bodies.append(lookup[cat])
            else:
                uniq, inv = np.unique(cat, return_inverse=True)
                bodies.append(off + inv.reshape(-1))
            stacks.extend(map(tables[tid].stack, uniq.tolist()))
            order.extend(pis)
        prefixes = [pre for pre, _ in allp]
        slens = np.fromiter(map(len, stacks), dtype=np.int64, count=len(stacks))
        plen = np.fromiter(map(len, prefixes), dtype=np.int64, count=nparts)
        flat = list(chain.from_iterable(stacks))
        n_body = len(flat)
        flat.extend(chain.from_iterable(prefixes))
        fnames, fkinds, flat_fid = _function_ids(flat)
        body_fid, pre_fid = flat_fid[:n_body], flat_fid[n_body:]
        sstart = np.zeros(len(stacks), dtype=np.int64)
        if len(stacks) > 1:
            np.cumsum(slens[:-1], out=sstart[1:])
        pstart = np.zeros(nparts, dtype=np.int64)
        if nparts > 1:
            np.cumsum(plen[:-1], out=pstart[1:])
        # One row per (part, stack) pair; compare counts in cc, base counts in cb.
        sizes = np.fromiter((len(allp[pi][1].ids) for pi in order), dtype=np.int64, count=nparts)
        pair_part = np.repeat(np.asarray(order, dtype=np.int64), sizes)
        body = np.concatenate(bodies) if bodies else np.zeros(0, dtype=np.int64)
        counts = (np.concatenate([allp[pi][1].counts for pi in order]) if order
                  else np.zeros(0, dtype=np.int64)).astype(np.int64, copy=False)
        n_cmp = len(parts)
        on_base = pair_part >= n_cmp
        cc = np.where(on_base, 0, counts) if diff else counts
        cb = np.where(on_base, counts, 0) if diff else None
        pplen = plen[pair_part]
        bstart = sstart[body] - pplen  # frame at depth d >= plen is body_fid[bstart + d]
        lens = pplen + slens[body]
        # Part totals (the weight of a part's prefix nodes), exact in int64.
        part_tc = np.zeros(nparts, dtype=np.int64)
        part_tb = np.zeros(nparts, dtype=np.int64)
        for pi in range(nparts):
            t = int(allp[pi][1].counts.sum())
            if pi < n_cmp:
                part_tc[pi] = t
            else:
                part_tb[pi] = t
        root_c, root_b = int(part_tc.sum()), int(part_tb.sum())
        exact_float = root_c + root_b < 2**53

        def sums(inv: np.ndarray, vals: np.ndarray, size: int) -> np.ndarray:
            if exact_float:  # bincount adds in float64: exact while the root total is under 2**53
                return np.bincount(inv, weights=vals, minlength=size).astype(np.int64)
            out = np.zeros(size, dtype=np.int64)
            np.add.at(out, inv, vals)
            return out

        # A part without stacks has no nodes (its prefix is not walked).
        part_ok = np.fromiter((len(p.ids) > 0 for _, p in allp), dtype=bool, count=nparts)
        if diff and len(cc):
            # Both sides of a diff usually hold the same (metadata path, stack) pairs (two windows
            # of the same series): walk each such path once, carrying both counts. Every level
            # sums counts per (parent, frame) and both pairs of a path always reach the same
            # nodes (cuts depend on node weights only), so the trie is the same node for node.
            pid_of: dict[tuple[Frame, ...], int] = {}
            ppid = np.fromiter((pid_of.setdefault(tuple(pre), len(pid_of)) for pre in prefixes),
                               dtype=np.int64, count=nparts)
            npid, nb = len(pid_of), max(len(stacks), 1)
            pkey = ppid[pair_part] * nb + body
            pspace = npid * nb
            if pspace <= max(4 * pkey.size, 1 << 16):
                present = np.zeros(pspace, dtype=bool)
                present[pkey] = True
                ukey = np.flatnonzero(present)
                pinv = (np.cumsum(present, dtype=np.int64) - 1)[pkey]
            else:
                ukey, pinv = np.unique(pkey, return_inverse=True)
                pinv = pinv.reshape(-1)
            cc, cb = sums(pinv, cc, len(ukey)), sums(pinv, cb, len(ukey))  # type: ignore[arg-type]
            pair_part, body = ukey // nb, ukey % nb
            # Merged parts are the distinct prefixes; rep = one original part of each (its frames).
            rep = np.zeros(npid, dtype=np.int64)
            rep[ppid] = np.arange(nparts, dtype=np.int64)  # any of the equal prefixes will do
            plen, pstart = plen[rep], pstart[rep]
            mtc = np.zeros(npid, dtype=np.int64)
            np.add.at(mtc, ppid, part_tc)
            mtb = np.zeros(npid, dtype=np.int64)
            np.add.at(mtb, ppid, part_tb)
            part_tc, part_tb = mtc, mtb
            mok = np.zeros(npid, dtype=bool)
            mok[ppid[part_ok]] = True
            part_ok, nparts = mok, npid
            pplen = plen[pair_part]
            bstart = sstart[body] - pplen
            lens = pplen + slens[body]
            counts = cc
        root_w = float(root_c) + float(root_b) * k if diff else float(root_c)
        share_floor = min_share * root_w
        last_fit: tuple[int, np.ndarray, float] | None = None
        cut_upto = float("-inf")  # nodes of weight <= this are cut whatever lies below (max_nodes)
        nf = max(len(fnames), 1)
        parents = [np.array([-1], dtype=np.int64)]
        fids = [np.array([-1], dtype=np.int64)]
        depths = [np.array([0], dtype=np.int32)]
        tot_c = [np.array([root_c], dtype=np.int64)]
        tot_b = [np.array([root_b], dtype=np.int64)]
        weights: list[np.ndarray] = [np.array([root_w])]
        npairs = len(counts)
        node_of = np.zeros(npairs, dtype=np.int64)  # deepest node reached by each pair so far
        complete = np.ones(npairs, dtype=bool)  # False once a pair's node was left unexpanded
        part_node = np.zeros(nparts, dtype=np.int64)  # node reached by each part's prefix so far
        # part_ok (above) turns False once a part's prefix node was left unexpanded.
        max_plen = int(plen.max()) if nparts else 0
        alive = np.zeros(0, dtype=np.int64)
        empty = np.zeros(0, dtype=np.int64)
        n, lvl_start, d = 1, 0, 0
        while True:
            alive = alive[lens[alive] > d]
            if d <= max_plen:  # pairs whose part's prefix ends here join, below the part's node
                enter = np.flatnonzero(pplen == d)
                if enter.size:
                    node_of[enter] = part_node[pair_part[enter]]
                    enter = enter[part_ok[pair_part[enter]] & (lens[enter] > d)]
                    alive = np.concatenate([alive, enter]) if alive.size else enter
            pin = np.flatnonzero((plen > d) & part_ok) if d < max_plen else empty
            if not alive.size and not pin.size:
                break
            na = alive.size
            f = np.concatenate([body_fid[bstart[alive] + d], pre_fid[pstart[pin] + d]])
            local = np.concatenate([node_of[alive], part_node[pin]]) - lvl_start
            key = local * nf + f
            space = (n - lvl_start) * nf
            if space <= max(4 * key.size, 1 << 16):
                present = np.zeros(space, dtype=bool)
                present[key] = True
                ukey = np.flatnonzero(present)
                rank = np.cumsum(present, dtype=np.int64)
                kinv = rank[key] - 1
            else:
                ukey, kinv = np.unique(key, return_inverse=True)
                kinv = kinv.reshape(-1)
            m = len(ukey)
            tc = sums(kinv, np.concatenate([cc[alive], part_tc[pin]]), m)
            tot_c.append(tc)
            if diff:
                assert cb is not None
                tb = sums(kinv, np.concatenate([cb[alive], part_tb[pin]]), m)
                tot_b.append(tb)
                w = tc + tb * k
            else:
                w = tc.astype(np.float64)
            weights.append(w)
            parents.append(lvl_start + ukey // nf)
            fids.append(ukey % nf)
            depths.append(np.full(m, d + 1, dtype=np.int32))
            node_of[alive] = n + kinv[:na]
            part_node[pin] = n + kinv[na:]
            lvl_start = n
            n += m
            if max_nodes is not None and 2 * n > max_nodes:
                w_all = np.concatenate(weights)
                fit_t, unfit = _fit_threshold(np.maximum(np.concatenate(parents), 0), w_all, share_floor, max_nodes)
                last_fit = (n, w_all, fit_t)
                cut_upto = max(cut_upto, unfit)
            if share_floor > 0 or cut_upto >= 0:
                # A node under the floor, or no heavier than a weight that already overflows the
                # budget, is never kept: stop walking what lies under it.
                wk = w[kinv]
                small = (wk < share_floor) | (wk <= cut_upto)
                complete[alive[small[:na]]] = False
                alive = alive[~small[:na]]
                part_ok[pin[small[na:]]] = False
            d += 1
        complete &= part_ok[pair_part]
        sc = sums(node_of[complete], cc[complete], n)
        selfs = [sc]
        base_total = None
        if diff:
            assert cb is not None
            selfs.append(sums(node_of[complete], cb[complete], n))
            base_total = np.concatenate(tot_b)
        out = Columns(fnames, fkinds, np.concatenate(fids), np.concatenate(parents), np.concatenate(depths),
                      selfs, total=np.concatenate(tot_c), base_total=base_total)
        if last_fit is not None and last_fit[0] == n and max_nodes is not None:
            out.fit = (last_fit[1], share_floor, max_nodes, last_fit[2])  # the last level added nothing
        return out

    def recursive(self) -> np.ndarray:
        """Per node: True if some ancestor is the same function (so its samples are counted there)."""
        if self._rec is not None:
            return self._rec
        n = len(self.parent)
        rec = np.zeros(n, dtype=bool)
        cur = np.maximum(self.parent, 0)
        todo = np.flatnonzero(cur > 0)
        while todo.size:
            up = cur[todo]
            rec[todo] = self.fid[up] == self.fid[todo]
            cur[todo] = np.maximum(self.parent[up], 0)
            todo = todo[~rec[todo] & (cur[todo] > 0)]
        self._rec = rec
        return rec

    def function_stats(self, base: bool = False) -> dict[tuple[str, str], list[int]]:
        """``{(name, kind): [self, total]}`` of the first profile (or the base side of a
        diff trie); total counts a function once per stack even when it recurses."""
        self_, total = (self.base_self, self.base_total) if base else (self.self_, self.total)
        if self_ is None or total is None:
            raise ValueError("this trie has no base side")
        nf = len(self.fnames)
        f = self.fid[1:]
        selfs = np.zeros(nf, dtype=np.int64)
        np.add.at(selfs, f, self_[1:])
        outer = ~self.recursive()[1:]
        totals = np.zeros(nf, dtype=np.int64)
        np.add.at(totals, f[outer], total[1:][outer])
        rows = zip(self.fnames, self.fkinds, selfs.tolist(), totals.tolist(), strict=True)
        return {(name, KINDS[code]): [s, t] for name, code, s, t in rows if t}

    def levels(self) -> list[np.ndarray]:
        """Node ids per depth (index = depth)."""
        order = np.argsort(self.depth, kind="stable")
        top = int(self.depth.max()) if len(self.depth) else 0
        bounds = np.searchsorted(self.depth[order], np.arange(top + 2))
        return [order[bounds[d] : bounds[d + 1]] for d in range(top + 1)]

    def outermost(self, match: np.ndarray) -> np.ndarray:
        """Nodes that match and have no matching ancestor (the root never matches)."""
        covered = np.zeros(len(self.parent), dtype=bool)
        for idx in self.levels()[2:]:
            par = self.parent[idx]
            covered[idx] = covered[par] | match[par]
        return match & ~covered

    def name_mask(self, pred: Callable[[str], bool]) -> np.ndarray:
        """Per node: ``pred(name)``, evaluated once per distinct function."""
        per_func = np.fromiter((pred(n) for n in self.fnames), dtype=bool, count=len(self.fnames))
        out = np.zeros(len(self.parent), dtype=bool)
        if len(self.parent) > 1:
            out[1:] = per_func[self.fid[1:]]
        return out

    def merged_subtrees(self, tops: np.ndarray, name: str) -> Node:
        """One Node tree rooted at ``name``: the subtrees under the ``tops`` nodes, merged."""
        inside = tops.copy()
        for idx in self.levels()[1:]:
            inside[idx] |= inside[self.parent[idx]]
        kinds: dict[str, int] = {}
        mapped: dict[int, Node] = {}
        root = Node(name, "user")
        parent, fid = self.parent.tolist(), self.fid.tolist()
        total, self_ = self.total.tolist(), self.self_.tolist()
        top_list = tops.tolist()
        for i in np.flatnonzero(inside).tolist():
            if top_list[i]:
                node = root
                k = KINDS[self.fkinds[fid[i]]]
                kinds[k] = kinds.get(k, 0) + total[i]
            else:
                fi = fid[i]
                key = (self.fnames[fi], KINDS[self.fkinds[fi]])
                up = mapped[parent[i]]
                node = up.children.get(key)  # type: ignore[assignment]
                if node is None:
                    node = up.children[key] = Node(key[0], key[1])
            node.total += total[i]
            node.self += self_[i]
            mapped[i] = node
        if kinds:
            root.kind = _heaviest_kind(kinds)
        return root

    def materialize(self, keep: np.ndarray | None) -> Node:
        """Node objects for the kept ids (all if None); cut children of a kept parent
        become one ``other`` node. ``keep`` must be closed under parents."""
        n = len(self.parent)
        # Only the kept rows go through Python (a pruned trie keeps a few thousand of millions).
        idx = np.arange(n) if keep is None else np.flatnonzero(keep)
        ids = idx.tolist()
        parent = self.parent[idx].tolist()
        total, self_ = self.total[idx].tolist(), self.self_[idx].tolist()
        diff = self.base_total is not None
        if diff:
            btotal = self.base_total[idx].tolist()  # type: ignore[index]
            bself = self.base_self[idx].tolist()  # type: ignore[index]
        else:  # a flame trie: Node's own 0
            btotal = bself = [0] * len(ids)
        nodes: dict[int, Node] = {}
        fid = self.fid[idx].tolist()
        fnames = self.fnames
        kind_of = [KINDS[c] for c in self.fkinds]  # per function, not per node
        for i, fi, up, t, sf, bt, bs in zip(ids, fid, parent, total, self_, btotal, bself, strict=True):
            if fi < 0:
                node = Node(ROOT_NAME, Kind.METADATA.value, t, sf)
            else:
                kind = kind_of[fi]
                name = fnames[fi]
                node = Node(name, kind, t, sf)
                nodes[up].children[(name, kind)] = node
            node.base_total = bt
            node.base_self = bs
            nodes[i] = node
        if keep is not None:
            cut = ~keep
            cut[0] = False
            cut &= keep[np.maximum(self.parent, 0)]
            cut_ids = np.flatnonzero(cut)
            if cut_ids.size:
                owners = self.parent[cut_ids]
                other_t = np.zeros(n, dtype=np.int64)
                np.add.at(other_t, owners, self.total[cut_ids])
                if diff:
                    other_b = np.zeros(n, dtype=np.int64)
                    np.add.at(other_b, owners, self.base_total[cut_ids])  # type: ignore[index]
                for o in np.unique(owners).tolist():
                    t = int(other_t[o])
                    other = nodes[o].children[(OTHER, OTHER)] = Node(OTHER, OTHER, t, t)
                    if diff:
                        b = int(other_b[o])
                        other.base_total = other.base_self = b
        root = nodes[0]
        if self.labels:
            _attach_labels(root, self.labels)
        return root


def _function_ids(flat: list[Frame]) -> tuple[list[str], list[int], np.ndarray]:
    """(names, kind codes, per-frame function id) for a flat frame list; frames are grouped by
    object identity first (C speed), then equal frames held by different objects merge."""
    objs = np.fromiter(map(id, flat), dtype=np.int64, count=len(flat))
    uobj, inv = np.unique(objs, return_inverse=True)
    inv = inv.reshape(-1)
    first = np.empty(len(uobj), dtype=np.int64)
    first[inv] = np.arange(len(objs), dtype=np.int64)
    funcs: dict[tuple[str, int], int] = {}
    fnames: list[str] = []
    fkinds: list[int] = []
    obj_fid = np.empty(len(uobj), dtype=np.int64)
    user, kernel, meta = Kind.USER, Kind.KERNEL, Kind.METADATA
    for j, i in enumerate(first.tolist()):
        name, kind = flat[i]
        code = 0 if kind is user else 1 if kind is kernel else 2 if kind is meta else _kind_code(kind)
        key = (name, code)
        fi = funcs.get(key)
        if fi is None:
            fi = funcs[key] = len(fnames)
            fnames.append(name)
            fkinds.append(code)
        obj_fid[j] = fi
    flat_fid = obj_fid[inv] if len(flat) else np.zeros(0, dtype=np.int64)
    return fnames, fkinds, flat_fid


def _subtree_sums(selfs: np.ndarray, parent: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Subtree totals: add each level into its parents, deepest level first (exact int64)."""
    total = selfs.copy()
    if len(parent) <= 1:
        return total
    order = np.argsort(depth, kind="stable")
    bounds = np.searchsorted(depth[order], np.arange(int(depth.max()) + 2))
    for d in range(int(depth.max()), 0, -1):
        idx = order[bounds[d] : bounds[d + 1]]
        np.add.at(total, parent[idx], total[idx])
    return total


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
    if tree.cols is not None and tree._root is None and weight is None:
        return prune_columns(tree.cols, tree.cols.total, max_nodes=max_nodes, min_share=min_share)
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
        t, _ = _fit_threshold(np.maximum(cols.parent, 0), weights, floor, max_nodes)
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


def _fit_threshold(parent: np.ndarray, weights: np.ndarray, floor: float, max_nodes: int) -> tuple[float, float]:
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
    frame below ``all`` (only that path). The root's kind is the kind with the
    most samples over the matches (ties: user, kernel, metadata, other). Raises
    InputError if nothing matches.
    """
    tree = _as_tree(profile_or_tree)
    if tree.cols is not None and tree._root is None:
        return _focus_columns(tree.cols, name_or_path)
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
    kinds: dict[str, int] = {}
    for m in matches:
        kinds[m.kind] = kinds.get(m.kind, 0) + m.total
    root = Node(target, _heaviest_kind(kinds))
    for m in matches:
        _merge_into(root, m)
    return Tree(root)


def _heaviest_kind(kinds: Mapping[str, int]) -> str:
    """The kind with the most samples; ties go to the first in KINDS order, so the answer
    never depends on the order occurrences were met in (node ids follow memory addresses)."""
    return max(kinds.items(), key=lambda kv: (kv[1], -_KIND_CODE.get(kv[0], len(KINDS))))[0]


def _focus_columns(cols: Columns, name_or_path: str | Sequence[str]) -> Tree:
    if isinstance(name_or_path, str):
        target = name_or_path
        tops = cols.outermost(cols.name_mask(lambda n: n == target))
    else:
        path = list(name_or_path)
        if not path:
            raise InputError("focus path is empty: give at least one function name")
        target = path[-1]
        ok = np.zeros(len(cols.parent), dtype=bool)
        ok[0] = True
        lv = cols.levels()
        for d, want in enumerate(path, 1):
            if d >= len(lv):
                ok[:] = False
                break
            idx = lv[d]
            ok[idx] = ok[cols.parent[idx]] & cols.name_mask(lambda n, w=want: n == w)[idx]
        tops = np.zeros_like(ok)
        if len(path) < len(lv):
            tops[lv[len(path)]] = ok[lv[len(path)]]
    if not tops.any():
        raise InputError(f"focus: no frame named {target!r} in the profile (check the function name)")
    return Tree(cols.merged_subtrees(tops, target))


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
    if tree.cols is not None and tree._root is None:
        c = tree.cols
        total = int(c.total[0])
        matched = int(c.total[c.outermost(c.name_mask(lambda n: pat.search(n) is not None))].sum())
        return {"matched": matched, "total": total, "share": matched / total if total else 0.0}
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
    return Columns.build([profile]).function_stats()


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


def sandwich(profile: Profile | Tree, name: str) -> tuple[Tree, Tree]:
    """(callers, callees) of function ``name``, both rooted at ``name``.

    For each stack the outermost occurrence of ``name`` is used, so both roots
    total the samples of stacks containing it. Callers is inverted: its
    children are the direct callers, their children the callers' callers; the
    callers root's ``self`` counts stacks that start with ``name``. Raises
    InputError if no frame has that name.
    """
    tree = profile if isinstance(profile, Tree) else build_tree(profile)
    if tree.cols is None or tree._root is not None:
        tree = Tree(cols=Columns.build([_tree_profile(tree)])) if tree.cols is None else Tree(cols=tree.cols)
    cols = tree.cols
    assert cols is not None
    tops = cols.outermost(cols.name_mask(lambda n: n == name))
    if not tops.any():
        raise InputError(f"sandwich: no frame named {name!r} in the profile (check the function name)")
    callees = cols.merged_subtrees(tops, name)
    callers = Node(name, callees.kind)
    parent, fid, total = cols.parent.tolist(), cols.fid.tolist(), cols.total.tolist()
    keys = [(n, KINDS[k]) for n, k in zip(cols.fnames, cols.fkinds, strict=True)]
    for i in np.flatnonzero(tops).tolist():
        count = total[i]
        callers.total += count
        node = callers
        j = parent[i]
        while j > 0:  # walk up to (not including) the root "all"
            key = keys[fid[j]]
            child = node.children.get(key)
            if child is None:
                child = node.children[key] = Node(key[0], key[1])
            child.total += count
            node = child
            j = parent[j]
        node.self += count
    return Tree(callers), Tree(callees)


def _tree_profile(tree: Tree) -> Profile:
    """A profile with the same stacks as an object tree (each node's self at its path)."""
    pairs: list[tuple[tuple[Frame, ...], int]] = []
    todo: list[tuple[Node, tuple[Frame, ...]]] = [(c, ()) for c in tree.root.children.values()]
    while todo:
        node, path = todo.pop()
        kind = Kind(node.kind) if node.kind in _KIND_CODE and node.kind != OTHER else Kind.USER
        path = (*path, Frame(node.name, kind))
        if node.self:
            pairs.append((path, node.self))
        todo.extend((c, path) for c in node.children.values())
    return Profile.from_pairs(pairs)


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
    order = _child_order
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
        c_kind.append(_KIND_CODE.get(node.kind, 0))
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
