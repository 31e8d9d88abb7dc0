"""The grafted build: the trie of ``prefix + stack`` over (prefix, profile) parts, top-down,
leaving unexpanded the nodes that pruning can never keep; the prefixed stacks are never made.

Used by :func:`stacks.tree.grafted_tree` (flame trees, metadata view) and
:func:`stacks.diff.metadata_diff_json`. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from stacks.columns import Columns, _starts, function_ids
from stacks.model import Frame, Profile, Stack, StackTable
from stacks.prune import Cut, fit_budget

Part = tuple[tuple[Frame, ...], Profile]
"""A profile whose stacks hang below a prefix of frames (its metadata path)."""


def build_grafted(
    parts: Sequence[Part],
    min_share: float = 0.0,
    *,
    base_parts: Sequence[Part] | None = None,
    k: float = 1.0,
    max_nodes: int | None = None,
    labels: Mapping[tuple[str, ...], str] | None = None,
) -> tuple[Columns, Cut | None]:
    """Trie of ``prefix + stack`` over all parts, built top-down; nodes under
    ``min_share`` of the root's weight keep their exact total but are not expanded
    (their self is 0 and they have no children), so the result is only fit for pruning
    with the same ``min_share``. ``labels`` names metadata nodes (see :class:`Columns`).
    Returns the trie and, when the build already fitted the budget over the whole finished
    trie (with ``max_nodes``), that :class:`~stacks.prune.Cut` for
    :func:`stacks.prune.prune_columns` (else None).

    ``base_parts`` makes a diff trie (``base_self``/``base_total`` from them, weight
    ``total + base_total * k`` as :func:`stacks.diff.diff_json` prunes by). With
    ``max_nodes``, a node is also left unexpanded when it is at or after the budget's cut
    among the nodes known so far (more nodes can only move the cut earlier), so the insides
    of cut subtrees are not built even at ``min_share`` 0.

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
    return _graft_columns(p, walk, labels)


# build_grafted in steps: _graft_pairs (the input as arrays), _merge_equal_prefixes
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
    last_fit: tuple[int, Cut] | None = None  # (n, cut) of the last fit_budget
    cut: Cut = field(default_factory=Cut)  # nodes at or after it are cut whatever lies below (max_nodes)


def _walk_levels(p: _Pairs, root_w: float, share_floor: float, k: float, max_nodes: int | None) -> _Walk:
    """Build the trie level by level from the root, not expanding nodes that are provably cut:
    under ``share_floor`` or, with ``max_nodes``, at or after a (weight, depth) cut that
    already overflows the budget."""
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
            fit = fit_budget(np.concatenate(walk.parents), np.concatenate(walk.depths), w_all, share_floor,
                             max_nodes)
            walk.last_fit = (walk.n, fit)
            if fit.before(walk.cut):
                walk.cut = fit
        if share_floor > 0 or walk.cut.weight >= 0:
            # A node under the floor, or at or after a cut that already overflows the budget,
            # is never kept: stop walking what lies under it.
            wk = w[kinv]
            small = (wk < share_floor) | ~walk.cut.keeps(wk, np.full(wk.shape, d + 1))
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


def _graft_columns(p: _Pairs, walk: _Walk, labels: Mapping[tuple[str, ...], str] | None
                   ) -> tuple[Columns, Cut | None]:
    """The walked trie as Columns: self counts only from pairs whose node was fully expanded."""
    complete = walk.complete & p.part_ok[p.pair_part]
    n = walk.n
    selfs = [_sums(walk.node_of[complete], p.cc[complete], n, p.exact)]
    base_total = None
    if p.cb is not None:
        selfs.append(_sums(walk.node_of[complete], p.cb[complete], n, p.exact))
        base_total = np.concatenate(walk.tot_b)
    out = Columns(p.fnames, p.fkinds, np.concatenate(walk.fids), np.concatenate(walk.parents),
                  np.concatenate(walk.depths), selfs, total=np.concatenate(walk.tot_c), base_total=base_total,
                  labels=labels)
    # A fit made when the last level added nothing is the fit of the finished trie.
    return out, (walk.last_fit[1] if walk.last_fit is not None and walk.last_fit[0] == n else None)
