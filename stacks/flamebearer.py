"""Pyroscope's "flamebearer" layout of a flame tree, from flamewatch's Flame / diff JSON.

Pyroscope (its ``FlameGraph`` message and the ``/pyroscope/render`` JSON) lays a tree out by
levels: level ``d`` lists the nodes at depth ``d`` left to right, each as 4 integers
``[x offset from the end of the previous node on the level, total, self, name index]`` (a diff
has 7: ``[left offset, left total, left self, right offset, right total, right self, name]``,
left the base, right the compare side, each offset in its own side's coordinates). The root is
named ``total``. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from typing import Any, NamedTuple

import numpy as np

ROOT = "total"


class Levels(NamedTuple):
    """A flamebearer: ``names``, ``levels`` (lists of ints), and the root's total and the
    largest self value (both scaled)."""

    names: list[str]
    levels: list[list[int]]
    total: int
    max_self: int


def _names(doc: Mapping[str, Any], name: np.ndarray) -> tuple[list[str], np.ndarray]:
    # The root gets its own name ``total`` (index 0), every other index moves up by one, so a
    # frame that happens to share the root's name keeps it.
    out = name + 1
    if len(out):
        out[0] = 0
    return [ROOT, *doc["names"]], out


def _by_level(depth: np.ndarray, rows: np.ndarray) -> list[list[int]]:
    """Rows (one per node, pre-order) grouped by depth, each level flattened to one list."""
    order = np.argsort(depth, kind="stable")  # stable: pre-order is left to right on a level
    d = depth[order]
    rows = rows[order]
    cuts = [0, *(np.flatnonzero(d[1:] != d[:-1]) + 1).tolist(), len(d)]
    return [rows[a:b].ravel().tolist() for a, b in pairwise(cuts) if b > a]


def _offsets(depth: np.ndarray, start: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Each node's start minus the end of the node before it on its level (0 for the first)."""
    order = np.argsort(depth, kind="stable")
    d, s = depth[order], start[order]
    prev_end = np.zeros_like(s)
    prev_end[1:] = (s + width[order])[:-1]
    prev_end[np.r_[True, d[1:] != d[:-1]]] = 0
    out = np.empty_like(s)
    out[order] = s - prev_end
    return out


def _starts(depth: np.ndarray, total: np.ndarray) -> np.ndarray:
    """x of each node when every node is as wide as ``total``: a child starts where its parent
    does, a sibling where the previous one ends (nodes in pre-order)."""
    nxt = [0] * (int(depth.max()) + 2 if len(depth) else 1)
    out = []
    for d, t in zip(depth.tolist(), total.tolist(), strict=True):
        s = nxt[d]
        out.append(s)
        nxt[d] = s + t
        nxt[d + 1] = s
    return np.asarray(out, dtype=np.int64)


def single(doc: Mapping[str, Any], scale: int = 1) -> Levels:
    """The flamebearer of a Flame JSON document (``type: flame``), values times ``scale``
    (e.g. the period in ns, to show a samples-stored CPU profile in nanoseconds)."""
    nodes = doc["nodes"]
    depth = np.asarray(nodes["depth"], dtype=np.int64)
    total = np.asarray(nodes["total"], dtype=np.int64) * scale
    self_ = np.asarray(nodes["self"], dtype=np.int64) * scale
    names, name = _names(doc, np.asarray(nodes["name"], dtype=np.int64))
    start = np.rint(np.asarray(nodes["start"], dtype=np.float64)).astype(np.int64) * scale
    off = _offsets(depth, start, total)
    levels = _by_level(depth, np.stack([off, total, self_, name], axis=1))
    return Levels(names, levels, int(total[0]) if len(total) else 0, int(self_.max()) if len(self_) else 0)


class DiffLevels(NamedTuple):
    """A diff flamebearer: 7 values per node; ``left_ticks`` is the base total, ``right_ticks``
    the compare total."""

    names: list[str]
    levels: list[list[int]]
    left_ticks: int
    right_ticks: int
    max_self: int


def diff(doc: Mapping[str, Any]) -> DiffLevels:
    """The double flamebearer of a diff JSON document (``type: diff``, ``mode=absolute`` for
    the raw counts of both sides)."""
    nodes = doc["nodes"]
    depth = np.asarray(nodes["depth"], dtype=np.int64)
    lt = np.asarray(nodes["base_total"], dtype=np.int64)
    ls = np.asarray(nodes["base_self"], dtype=np.int64)
    rt = np.asarray(nodes["total"], dtype=np.int64)
    rs = np.asarray(nodes["self"], dtype=np.int64)
    names, name = _names(doc, np.asarray(nodes["name"], dtype=np.int64))
    loff = _offsets(depth, _starts(depth, lt), lt)
    roff = _offsets(depth, _starts(depth, rt), rt)
    levels = _by_level(depth, np.stack([loff, lt, ls, roff, rt, rs, name], axis=1))
    max_self = int(max(ls.max(), rs.max())) if len(depth) else 0
    return DiffLevels(names, levels, int(lt[0]) if len(lt) else 0, int(rt[0]) if len(rt) else 0, max_self)


def node_totals(levels: list[list[int]], width: int = 4) -> dict[tuple[str, ...], int]:
    """Inverse check used by tests: (path of name indexes as strings) -> total, from levels."""
    out: dict[tuple[str, ...], int] = {}
    spans: list[list[tuple[int, int, tuple[str, ...]]]] = []
    for d, level in enumerate(levels):
        x = 0
        row = []
        for i in range(0, len(level), width):
            off, tot, name = level[i], level[i + 1], level[i + width - 1]
            x += off
            parent: tuple[str, ...] = ()
            if d:
                parent = next(p for s, e, p in spans[d - 1] if s <= x < e or (s == x == e))
            path = (*parent, str(name))
            out[path] = out.get(path, 0) + tot
            row.append((x, x + tot, path))
            x += tot
        spans.append(row)
    return out
