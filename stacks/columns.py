"""The columnar form of a flame trie (:class:`Columns`) and its two builders.

:meth:`Columns.build` makes the full trie of some profiles level by level in numpy;
:meth:`Columns.build_grafted` makes the trie of ``prefix + stack`` over (prefix, profile)
parts top-down, leaving unexpanded the nodes that pruning can never keep. Node objects
are only made by :meth:`Columns.materialize` (for the kept nodes). Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from stacks.errors import InputError
from stacks.model import Frame, Kind, Profile, Stack, StackTable
from stacks.node import KIND_CODE, KINDS, OTHER, ROOT_NAME, Node, heaviest_kind
from stacks.prune import fit_threshold

Part = tuple[tuple[Frame, ...], Profile]
"""A profile whose stacks hang below a prefix of frames (its metadata path)."""


def _kind_code(kind: object) -> int:
    """Kind -> index in KINDS for kinds given as plain strings (rare; Kind members take a fast path)."""
    try:
        return KIND_CODE[Kind(kind).value]
    except ValueError:
        raise InputError(f"frame kind {kind!r} is unknown: use user, kernel or metadata") from None


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
        self.total = subtree_sums(selfs[0], parent, depth) if total is None else total
        self.base_self = selfs[1] if len(selfs) > 1 else None
        self.base_total = (None if len(selfs) < 2 else
                           subtree_sums(selfs[1], parent, depth) if base_total is None else base_total)
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
        fnames, fkinds, flat_fid = function_ids(flat)
        starts = _starts(lens)
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
    @staticmethod
    def build_grafted(
        parts: Sequence[Part],
        min_share: float = 0.0,
        *,
        base_parts: Sequence[Part] | None = None,
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
        p = _graft_pairs(parts, base_parts)
        if p.cb is not None and len(p.cc):
            _merge_equal_prefixes(p)
        p.lay_out()
        root_w = float(p.root_c) + float(p.root_b) * k if p.cb is not None else float(p.root_c)
        share_floor = min_share * root_w
        walk = _walk_levels(p, root_w, share_floor, k, max_nodes)
        return _graft_columns(p, walk, share_floor, max_nodes)

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
            root.kind = heaviest_kind(kinds)
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


def function_ids(flat: list[Frame]) -> tuple[list[str], list[int], np.ndarray]:
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


def subtree_sums(selfs: np.ndarray, parent: np.ndarray, depth: np.ndarray) -> np.ndarray:
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
    """Set ``label`` on the metadata nodes whose value path from the root is in ``labels``."""
    todo: list[tuple[Node, tuple[str, ...]]] = [(c, ()) for c in root.children.values()]
    while todo:
        node, path = todo.pop()
        if node.kind != Kind.METADATA.value:
            continue  # metadata frames only sit at the top of stacks
        path = (*path, node.name)
        node.label = labels.get(path)
        todo.extend((c, path) for c in node.children.values())



def _starts(lens: np.ndarray) -> np.ndarray:
    """Offsets of consecutive runs of ``lens`` items in one flat array."""
    out = np.zeros(len(lens), dtype=np.int64)
    if len(lens) > 1:
        np.cumsum(lens[:-1], out=out[1:])
    return out


# --------------------------------------------------------------------------- grafted build
# Columns.build_grafted in steps: _graft_pairs (the input as arrays), _merge_equal_prefixes
# (diff only), _walk_levels (the trie, level by level), _graft_columns (the result).

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(eq=False)
class _Pairs:
    """A grafted build's input as arrays: one row per (part, distinct stack) pair.

    Parts (their prefixes, in ``pre_fid``) and distinct stacks (in ``body_fid``) are stored
    once each; a pair names its part and its stack. ``cc``/``cb`` are the pair's counts on
    the compare/base side (``cb`` None outside a diff); ``part_tc``/``part_tb`` the parts'
    totals, the weight each part adds to its prefix nodes. ``part_ok`` is False for a part
    without stacks and, during the walk, once its prefix node was left unexpanded.
    """

    fnames: list[str]
    fkinds: list[int]
    body_fid: np.ndarray
    pre_fid: np.ndarray
    slens: np.ndarray
    sstart: np.ndarray
    prefixes: list[tuple[Frame, ...]]
    plen: np.ndarray
    pstart: np.ndarray
    part_tc: np.ndarray
    part_tb: np.ndarray
    part_ok: np.ndarray
    pair_part: np.ndarray
    body: np.ndarray
    cc: np.ndarray
    cb: np.ndarray | None
    root_c: int
    root_b: int
    exact: bool  # float64 sums are exact (the root total is under 2**53)
    pplen: np.ndarray = field(default_factory=lambda: _EMPTY)
    bstart: np.ndarray = field(default_factory=lambda: _EMPTY)
    lens: np.ndarray = field(default_factory=lambda: _EMPTY)

    def lay_out(self) -> None:
        """Per pair: its prefix length, where its frame at depth d >= that length is
        (``body_fid[bstart + d]``) and its full length."""
        self.pplen = self.plen[self.pair_part]
        self.bstart = self.sstart[self.body] - self.pplen
        self.lens = self.pplen + self.slens[self.body]


def _sums(inv: np.ndarray, vals: np.ndarray, size: int, exact: bool) -> np.ndarray:
    """Per group ``0 <= g < size`` the sum of ``vals`` with ``inv == g``, exact in int64."""
    if exact:  # bincount adds in float64: exact while the root total is under 2**53
        return np.bincount(inv, weights=vals, minlength=size).astype(np.int64)
    out = np.zeros(size, dtype=np.int64)
    np.add.at(out, inv, vals)
    return out


def _group(key: np.ndarray, space: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys, index of each key among them) for keys in ``[0, space)``: marked
    in a dense array when ``space`` is small next to the keys, else with ``np.unique``."""
    if space <= max(4 * key.size, 1 << 16):
        present = np.zeros(space, dtype=bool)
        present[key] = True
        return np.flatnonzero(present), np.cumsum(present, dtype=np.int64)[key] - 1
    ukey, inv = np.unique(key, return_inverse=True)
    return ukey, inv.reshape(-1)


def _distinct_stacks(allp: Sequence[Part]) -> tuple[list[Stack], list[int], np.ndarray]:
    """(distinct stacks, part order, stack index per pair): each table's distinct stacks once,
    however many parts hold them; pairs are laid out table by table (``order`` lists the parts
    in that layout; the order does not matter to the trie)."""
    by_table: dict[int, list[int]] = {}
    tables: dict[int, StackTable] = {}
    for pi, (_, prof) in enumerate(allp):
        by_table.setdefault(id(prof.table), []).append(pi)
        tables[id(prof.table)] = prof.table
    stacks: list[Stack] = []
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
    return stacks, order, np.concatenate(bodies) if bodies else np.zeros(0, dtype=np.int64)


def _graft_pairs(parts: Sequence[Part], base_parts: Sequence[Part] | None) -> _Pairs:
    """The arrays of a grafted build of ``parts`` (and ``base_parts`` for a diff)."""
    diff = base_parts is not None
    allp = list(parts) + list(base_parts or ())
    nparts, n_cmp = len(allp), len(parts)
    stacks, order, body = _distinct_stacks(allp)
    prefixes = [pre for pre, _ in allp]
    slens = np.fromiter(map(len, stacks), dtype=np.int64, count=len(stacks))
    plen = np.fromiter(map(len, prefixes), dtype=np.int64, count=nparts)
    flat = list(chain.from_iterable(stacks))
    n_body = len(flat)
    flat.extend(chain.from_iterable(prefixes))
    fnames, fkinds, flat_fid = function_ids(flat)
    sizes = np.fromiter((len(allp[pi][1].ids) for pi in order), dtype=np.int64, count=nparts)
    pair_part = np.repeat(np.asarray(order, dtype=np.int64), sizes)
    counts = (np.concatenate([allp[pi][1].counts for pi in order]) if order
              else np.zeros(0, dtype=np.int64)).astype(np.int64, copy=False)
    on_base = pair_part >= n_cmp
    # Part totals (the weight of a part's prefix nodes), exact in int64.
    part_t = np.fromiter((int(prof.counts.sum()) for _, prof in allp), dtype=np.int64, count=nparts)
    base_part = np.arange(nparts) >= n_cmp
    part_tc, part_tb = np.where(base_part, 0, part_t), np.where(base_part, part_t, 0)
    root_c, root_b = int(part_tc.sum()), int(part_tb.sum())
    return _Pairs(
        fnames=fnames, fkinds=fkinds, body_fid=flat_fid[:n_body], pre_fid=flat_fid[n_body:],
        slens=slens, sstart=_starts(slens), prefixes=prefixes, plen=plen, pstart=_starts(plen),
        part_tc=part_tc, part_tb=part_tb,
        # A part without stacks has no nodes (its prefix is not walked).
        part_ok=np.fromiter((len(prof.ids) > 0 for _, prof in allp), dtype=bool, count=nparts),
        pair_part=pair_part, body=body,
        cc=np.where(on_base, 0, counts) if diff else counts, cb=np.where(on_base, counts, 0) if diff else None,
        root_c=root_c, root_b=root_b, exact=root_c + root_b < 2**53,
    )


def _merge_equal_prefixes(p: _Pairs) -> None:
    """Merge the pairs of parts with equal prefixes into one pair carrying both sides' counts.

    Both sides of a diff usually hold the same (metadata path, stack) pairs (two windows of the
    same series): walk each such path once. Every level sums counts per (parent, frame) and
    both pairs of a path always reach the same nodes (cuts depend on node weights only), so the
    trie is the same node for node. Afterwards the parts are the distinct prefixes.
    """
    assert p.cb is not None
    nparts = len(p.plen)
    pid_of: dict[tuple[Frame, ...], int] = {}
    ppid = np.fromiter((pid_of.setdefault(tuple(pre), len(pid_of)) for pre in p.prefixes),
                       dtype=np.int64, count=nparts)
    npid, nb = len(pid_of), max(len(p.slens), 1)
    ukey, pinv = _group(ppid[p.pair_part] * nb + p.body, npid * nb)
    p.cc, p.cb = _sums(pinv, p.cc, len(ukey), p.exact), _sums(pinv, p.cb, len(ukey), p.exact)
    p.pair_part, p.body = ukey // nb, ukey % nb
    # rep = one original part of each distinct prefix (for its frames); any of the equal ones will do.
    rep = np.zeros(npid, dtype=np.int64)
    rep[ppid] = np.arange(nparts, dtype=np.int64)
    p.plen, p.pstart = p.plen[rep], p.pstart[rep]
    p.prefixes = [p.prefixes[i] for i in rep.tolist()]
    mtc = np.zeros(npid, dtype=np.int64)
    np.add.at(mtc, ppid, p.part_tc)
    mtb = np.zeros(npid, dtype=np.int64)
    np.add.at(mtb, ppid, p.part_tb)
    p.part_tc, p.part_tb = mtc, mtb
    mok = np.zeros(npid, dtype=bool)
    mok[ppid[p.part_ok]] = True
    p.part_ok = mok


@dataclass(eq=False)
class _Walk:
    """State of the level-by-level walk: the levels built so far (one array per level in each
    list) and, per pair / part, the deepest node reached."""

    parents: list[np.ndarray]
    fids: list[np.ndarray]
    depths: list[np.ndarray]
    tot_c: list[np.ndarray]
    tot_b: list[np.ndarray]
    weights: list[np.ndarray]
    node_of: np.ndarray  # per pair: deepest node reached so far
    complete: np.ndarray  # per pair: False once its node was left unexpanded
    part_node: np.ndarray  # per part: node reached by its prefix so far
    alive: np.ndarray = field(default_factory=lambda: _EMPTY)  # pairs still walking down
    n: int = 1  # nodes so far
    lvl_start: int = 0  # first node of the last level
    last_fit: tuple[int, np.ndarray, float] | None = None  # (n, weights, T) of the last fit_threshold
    cut_upto: float = float("-inf")  # nodes of weight <= this are cut whatever lies below (max_nodes)


def _walk_levels(p: _Pairs, root_w: float, share_floor: float, k: float, max_nodes: int | None) -> _Walk:
    """Build the trie level by level from the root, not expanding nodes that are provably cut:
    under ``share_floor`` or, with ``max_nodes``, no heavier than a weight that already
    overflows the budget."""
    npairs = len(p.cc)
    walk = _Walk(
        parents=[np.array([-1], dtype=np.int64)], fids=[np.array([-1], dtype=np.int64)],
        depths=[np.array([0], dtype=np.int32)], tot_c=[np.array([p.root_c], dtype=np.int64)],
        tot_b=[np.array([p.root_b], dtype=np.int64)], weights=[np.array([root_w])],
        node_of=np.zeros(npairs, dtype=np.int64), complete=np.ones(npairs, dtype=bool),
        part_node=np.zeros(len(p.plen), dtype=np.int64))
    nf = max(len(p.fnames), 1)
    max_plen = int(p.plen.max()) if len(p.plen) else 0
    d = 0
    while True:
        pin = _walkers(p, walk, d, max_plen)
        if not walk.alive.size and not pin.size:
            break
        w, kinv = _add_level(p, walk, pin, d, nf, k)
        if max_nodes is not None and 2 * walk.n > max_nodes:
            w_all = np.concatenate(walk.weights)
            fit_t, unfit = fit_threshold(np.maximum(np.concatenate(walk.parents), 0), w_all, share_floor, max_nodes)
            walk.last_fit = (walk.n, w_all, fit_t)
            walk.cut_upto = max(walk.cut_upto, unfit)
        if share_floor > 0 or walk.cut_upto >= 0:
            # A node under the floor, or no heavier than a weight that already overflows the
            # budget, is never kept: stop walking what lies under it.
            wk = w[kinv]
            small = (wk < share_floor) | (wk <= walk.cut_upto)
            na = walk.alive.size
            walk.complete[walk.alive[small[:na]]] = False
            walk.alive = walk.alive[~small[:na]]
            p.part_ok[pin[small[na:]]] = False
        d += 1
    return walk


def _walkers(p: _Pairs, walk: _Walk, d: int, max_plen: int) -> np.ndarray:
    """Set ``walk.alive`` to the pairs with a frame at depth ``d`` (pairs whose part's prefix
    ends at ``d`` join, below the part's node) and return the parts whose prefix does."""
    alive = walk.alive[p.lens[walk.alive] > d]
    if d <= max_plen:
        enter = np.flatnonzero(p.pplen == d)
        if enter.size:
            walk.node_of[enter] = walk.part_node[p.pair_part[enter]]
            enter = enter[p.part_ok[p.pair_part[enter]] & (p.lens[enter] > d)]
            alive = np.concatenate([alive, enter]) if alive.size else enter
    walk.alive = alive
    return np.flatnonzero((p.plen > d) & p.part_ok) if d < max_plen else _EMPTY


def _add_level(p: _Pairs, walk: _Walk, pin: np.ndarray, d: int, nf: int, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Add the nodes at depth ``d + 1``: one per distinct (parent, function) among the walking
    pairs' and parts' frames at ``d``. Returns (the new nodes' weights, node of each walker
    among them: pairs first, then parts)."""
    alive, n, lvl_start = walk.alive, walk.n, walk.lvl_start
    na = alive.size
    f = np.concatenate([p.body_fid[p.bstart[alive] + d], p.pre_fid[p.pstart[pin] + d]])
    local = np.concatenate([walk.node_of[alive], walk.part_node[pin]]) - lvl_start
    ukey, kinv = _group(local * nf + f, (n - lvl_start) * nf)
    m = len(ukey)
    tc = _sums(kinv, np.concatenate([p.cc[alive], p.part_tc[pin]]), m, p.exact)
    walk.tot_c.append(tc)
    if p.cb is not None:
        tb = _sums(kinv, np.concatenate([p.cb[alive], p.part_tb[pin]]), m, p.exact)
        walk.tot_b.append(tb)
        w = tc + tb * k
    else:
        w = tc.astype(np.float64)
    walk.weights.append(w)
    walk.parents.append(lvl_start + ukey // nf)
    walk.fids.append(ukey % nf)
    walk.depths.append(np.full(m, d + 1, dtype=np.int32))
    walk.node_of[alive] = n + kinv[:na]
    walk.part_node[pin] = n + kinv[na:]
    walk.lvl_start, walk.n = n, n + m
    return w, kinv


def _graft_columns(p: _Pairs, walk: _Walk, share_floor: float, max_nodes: int | None) -> Columns:
    """The walked trie as Columns: self counts only from pairs whose node was fully expanded."""
    complete = walk.complete & p.part_ok[p.pair_part]
    n = walk.n
    selfs = [_sums(walk.node_of[complete], p.cc[complete], n, p.exact)]
    base_total = None
    if p.cb is not None:
        selfs.append(_sums(walk.node_of[complete], p.cb[complete], n, p.exact))
        base_total = np.concatenate(walk.tot_b)
    out = Columns(p.fnames, p.fkinds, np.concatenate(walk.fids), np.concatenate(walk.parents),
                  np.concatenate(walk.depths), selfs, total=np.concatenate(walk.tot_c), base_total=base_total)
    if walk.last_fit is not None and walk.last_fit[0] == n and max_nodes is not None:
        out.fit = (walk.last_fit[1], share_floor, max_nodes, walk.last_fit[2])  # the last level added nothing
    return out
