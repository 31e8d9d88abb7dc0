"""The columnar form of a flame trie (:class:`Columns`): the one representation every tree
algorithm works on (build, prune, focus, search, sandwich, stats), and the fixed kind table.

:meth:`Columns.build` makes the full trie of some profiles level by level in numpy
(:mod:`stacks.graft` makes the trie of ``prefix + stack`` top-down). :class:`stacks.node.Node`
objects are only a read-only view made from a Columns. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import chain

import numpy as np

from stacks.errors import InputError
from stacks.model import Frame, Kind, Profile

KINDS: tuple[str, ...] = ("user", "kernel", "metadata", "other")
"""Fixed kind table of the Flame JSON; index = code used in ``nodes.kind``."""

OTHER = "other"
"""Name and kind of the node that stands for pruned children of one parent."""

ROOT_NAME = "all"
DEFAULT_MAX_NODES = 20000

KIND_CODE: dict[str, int] = {k: i for i, k in enumerate(KINDS)}
"""Kind name -> its index in :data:`KINDS`."""

OTHER_CODE = KIND_CODE[OTHER]


def heaviest_kind(kinds: Mapping[str, int]) -> str:
    """The kind with the most samples; ties go to the first in KINDS order, so the answer
    never depends on the order occurrences were met in (node ids follow memory addresses)."""
    return max(kinds.items(), key=lambda kv: (kv[1], -KIND_CODE.get(kv[0], len(KINDS))))[0]


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
    the same function. The root is named ``root_name`` of kind ``root_kind`` (``all``,
    metadata; a focus names it after the function); ``labels`` names the label of
    metadata nodes by their value path. Algorithms return new Columns; none changes one.
    """

    __slots__ = (
        "_rec", "base_self", "base_total", "depth", "fid", "fkinds", "fnames", "labels", "parent",
        "root_kind", "root_name", "self_", "total",
    )

    def __init__(self, fnames: list[str], fkinds: list[int], fid: np.ndarray, parent: np.ndarray,
                 depth: np.ndarray, selfs: list[np.ndarray], total: np.ndarray | None = None,
                 base_total: np.ndarray | None = None, *, labels: Mapping[tuple[str, ...], str] | None = None,
                 root_name: str = ROOT_NAME, root_kind: str = Kind.METADATA.value) -> None:
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
        self.labels = labels or None
        self.root_name = root_name
        self.root_kind = root_kind
        self._rec: np.ndarray | None = None

    @staticmethod
    def build(profiles: Sequence[Profile], *, labels: Mapping[tuple[str, ...], str] | None = None) -> Columns:
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
        lens = np.fromiter(map(len, stacks), dtype=np.int64, count=len(stacks))
        fnames, fkinds, flat_fid = function_ids(list(chain.from_iterable(stacks)))
        fid, parent, depth, node_of = _paths_trie(flat_fid, lens, len(fnames))
        n = len(parent)
        all_which = np.concatenate(which) if which else np.zeros(0, dtype=np.int64)
        all_counts = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
        selfs = []
        for pi in range(max(len(profiles), 1)):
            s = np.zeros(n, dtype=np.int64)
            m = all_which == pi
            np.add.at(s, node_of[m], all_counts[m])
            selfs.append(s)
        return Columns(fnames, fkinds, fid, parent, depth, selfs, labels=labels)

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


    def subtrees(self, tops: np.ndarray, name: str) -> Columns:
        """One trie rooted at ``name``: the subtrees under the ``tops`` nodes (none inside
        another), merged; the root's kind is the heaviest kind among the tops."""
        inside = tops.copy()
        rel = np.zeros(len(self.parent), dtype=np.int64)  # depth below the node's top
        for idx in self.levels()[1:]:
            par = self.parent[idx]
            below = inside[par] & ~tops[idx]
            inside[idx] |= below
            rel[idx] = np.where(below, rel[par] + 1, 0)
        top_ids = np.flatnonzero(tops)
        kinds: dict[str, int] = {}
        for code, t in zip(np.asarray(self.fkinds)[self.fid[top_ids]].tolist(), self.total[top_ids].tolist(),
                           strict=True):
            kinds[KINDS[code]] = kinds.get(KINDS[code], 0) + t
        ids = np.flatnonzero(inside)
        ids = ids[np.argsort(rel[ids], kind="stable")]
        new_id = np.zeros(len(self.parent), dtype=np.int64)  # tops -> 0 (the new root)
        nf = max(len(self.fnames), 1)
        bounds = np.searchsorted(rel[ids], np.arange(int(rel[ids].max()) + 2 if ids.size else 1))
        fids, parents, depths = [np.array([-1], dtype=np.int64)], [np.array([-1], dtype=np.int64)], [
            np.array([0], dtype=np.int32)]
        n = 1
        for r in range(1, len(bounds) - 1):
            lvl = ids[bounds[r] : bounds[r + 1]]
            ukey, inv = np.unique(new_id[self.parent[lvl]] * nf + self.fid[lvl], return_inverse=True)
            parents.append(ukey // nf)
            fids.append(ukey % nf)
            depths.append(np.full(len(ukey), r, dtype=np.int32))
            new_id[lvl] = n + inv.reshape(-1)
            n += len(ukey)
        total = np.zeros(n, dtype=np.int64)
        self_ = np.zeros(n, dtype=np.int64)
        np.add.at(total, new_id[ids], self.total[ids])
        np.add.at(self_, new_id[ids], self.self_[ids])
        total[0] = int(self.total[top_ids].sum())
        return Columns(self.fnames, self.fkinds, np.concatenate(fids), np.concatenate(parents),
                       np.concatenate(depths), [self_], total=total, root_name=name,
                       root_kind=heaviest_kind(kinds) if kinds else Kind.USER.value)

    def callers(self, tops: np.ndarray, name: str, kind: str) -> Columns:
        """The inverted trie of the ``tops`` nodes' callers, rooted at ``name``: its children
        are the direct callers, theirs the callers' callers; each top's total lands as self on
        its outermost caller (on the root for a top right below it)."""
        top_ids = np.flatnonzero(tops)
        lens = self.depth[top_ids].astype(np.int64) - 1  # ancestors between the root and the top
        starts = _starts(lens)
        flat = np.zeros(int(lens.sum()), dtype=np.int64)
        cur = self.parent[top_ids]
        for s in range(int(lens.max()) if lens.size else 0):
            live = lens > s
            flat[starts[live] + s] = self.fid[cur[live]]
            cur = np.where(live, self.parent[np.maximum(cur, 0)], cur)
        fid, parent, depth, node_of = _paths_trie(flat, lens, len(self.fnames))
        self_ = np.zeros(len(parent), dtype=np.int64)
        np.add.at(self_, node_of, self.total[top_ids])
        return Columns(self.fnames, self.fkinds, fid, parent, depth, [self_], root_name=name, root_kind=kind)

    def kept(self, keep: np.ndarray) -> Columns:
        """The kept nodes (``keep`` closed under parents, the root kept); each kept parent's cut
        children become one ``other`` leaf carrying their totals (base side too), so every
        total is preserved."""
        n = len(self.parent)
        idx = np.flatnonzero(keep)
        new_id = np.cumsum(keep, dtype=np.int64) - 1
        cut = ~keep
        cut[0] = False
        cut &= keep[np.maximum(self.parent, 0)]
        cut_ids = np.flatnonzero(cut)
        owners, oinv = np.unique(self.parent[cut_ids], return_inverse=True)
        oinv = oinv.reshape(-1)
        fnames, fkinds = self.fnames, self.fkinds
        other_fid = next((i for i, (nm, k) in enumerate(zip(fnames, fkinds, strict=True))
                          if k == OTHER_CODE and nm == OTHER), None) if owners.size else None
        if owners.size and other_fid is None:
            fnames, fkinds, other_fid = [*fnames, OTHER], [*fkinds, OTHER_CODE], len(fnames)

        def sums(col: np.ndarray) -> np.ndarray:
            cut_sum = np.zeros(len(owners), dtype=np.int64)
            np.add.at(cut_sum, oinv, col[cut_ids])
            return np.concatenate([col[idx], cut_sum])

        total = sums(self.total)
        selfs = [np.concatenate([self.self_[idx], total[len(idx):]])]
        base_total = None
        if self.base_total is not None and self.base_self is not None:
            base_total = sums(self.base_total)
            selfs.append(np.concatenate([self.base_self[idx], base_total[len(idx):]]))
        parent = np.concatenate([np.where(idx == 0, -1, new_id[np.maximum(self.parent[idx], 0)]), new_id[owners]])
        fid = np.concatenate([self.fid[idx], np.full(len(owners), -1 if other_fid is None else other_fid)])
        depth = np.concatenate([self.depth[idx], self.depth[owners] + 1]).astype(np.int32)
        del n
        return Columns(fnames, fkinds, fid, parent, depth, selfs, total=total, base_total=base_total,
                       labels=self.labels, root_name=self.root_name, root_kind=self.root_kind)


def _paths_trie(flat_fid: np.ndarray, lens: np.ndarray, nfuncs: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fid, parent, depth, node of each path) of the trie of paths given as one flat array of
    function ids (``lens`` per path): one ``np.unique`` of (parent, function) keys per depth."""
    ns = len(lens)
    starts = _starts(lens)
    nf = max(nfuncs, 1)
    parents = [np.array([-1], dtype=np.int64)]
    fids = [np.array([-1], dtype=np.int64)]
    depths = [np.array([0], dtype=np.int32)]
    node_of = np.zeros(ns, dtype=np.int64)  # deepest node reached by each path so far
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
    return np.concatenate(fids), np.concatenate(parents), np.concatenate(depths), node_of


LOC_SEP = "\x00"
"""Joins a located frame's name and ``file:line`` in ``Columns.fnames``: a frame read by line is
its own "function" in the trie; :func:`split_location` parts them again for the Flame JSON."""


def split_location(key: str) -> tuple[str, str]:
    """(name, location) of an ``fnames`` entry; location "" for an unlocated frame."""
    name, sep, loc = key.rpartition(LOC_SEP)
    return (name, loc) if sep else (key, "")


def function_ids(flat: list[Frame]) -> tuple[list[str], list[int], np.ndarray]:
    """(names, kind codes, per-frame function id) for a flat frame list; frames are grouped by
    object identity first (C speed), then equal frames held by different objects merge. A
    located frame (read by line) is named ``name + LOC_SEP + file:line``."""
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
        f = flat[i]
        name, kind = f[0], f[1]
        if len(f) > 2 and (f[2] or f[3]):
            name = f"{name}{LOC_SEP}{f[2]}:{f[3]}" if f[3] else f"{name}{LOC_SEP}{f[2]}"
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


def _starts(lens: np.ndarray) -> np.ndarray:
    """Offsets of consecutive runs of ``lens`` items in one flat array."""
    out = np.zeros(len(lens), dtype=np.int64)
    if len(lens) > 1:
        np.cumsum(lens[:-1], out=out[1:])
    return out


