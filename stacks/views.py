"""Views of a profile besides the flame graph: focus, search, the top table, sandwich, and
per-function stats (also of a metadata view, without prefixing any stack).

Each works on the columnar trie (vectorised) and returns new columns. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from stacks.columns import LOC_SEP, Columns, split_location
from stacks.errors import InputError
from stacks.metadata import METADATA_LEVELS, metadata_path
from stacks.model import Kind, Profile, StackTable, merge
from stacks.namematch import NameMatcher, compile_regex
from stacks.node import Tree


def _columns(profile_or_tree: Profile | Tree) -> Columns:
    """The columns of ``profile_or_tree``: a tree's own, or the trie of a profile."""
    if isinstance(profile_or_tree, Tree):
        return profile_or_tree.cols
    if isinstance(profile_or_tree, Profile):
        return Columns.build([profile_or_tree])
    raise TypeError(f"expected a Profile or a Tree, got {type(profile_or_tree).__name__}")


# --------------------------------------------------------------------------- focus / search


def _matched(cols: Columns, fn: str | NameMatcher) -> tuple[np.ndarray, str]:
    """(outermost nodes of the functions ``fn`` names, the name of a tree rooted at them): a
    string is one exact name; a :class:`NameMatcher` may name several functions (a suffix, a
    regex), and the root takes the matched name when it is only one, else the matcher's text."""
    if isinstance(fn, str):
        return cols.outermost(cols.name_mask(lambda n: n == fn)), fn
    mask = cols.name_mask(fn)
    tops = cols.outermost(mask)
    names = {cols.fnames[f] for f in np.unique(cols.fid[np.flatnonzero(tops)]).tolist()}
    return tops, (next(iter(names)) if len(names) == 1 else fn.text)


def matched_names(profile_or_tree: Profile | Tree, fn: NameMatcher, limit: int = 100) -> list[str]:
    """The distinct function names ``fn`` matches (sorted, at most ``limit``)."""
    cols = _columns(profile_or_tree)
    return sorted({n for n in cols.fnames if fn(n)})[:limit]


def focus(profile_or_tree: Profile | Tree, name_or_path: str | NameMatcher | Sequence[str]) -> Tree:
    """The subtree(s) rooted at a function, merged, as a tree whose root is that function.

    ``name_or_path`` is a function name (every outermost occurrence counts, so
    recursion is not double counted), a :class:`NameMatcher` (every function it
    names: a suffix, a regex; outermost occurrences of any of them), or a sequence
    of names from the first frame below ``all`` (only that path). The root's kind
    is the kind with the most samples over the matches (ties: user, kernel,
    metadata, other). Raises InputError if nothing matches.
    """
    cols = _columns(profile_or_tree)
    if isinstance(name_or_path, str | NameMatcher):
        tops, target = _matched(cols, name_or_path)
        if not tops.any():
            what = name_or_path.describe() if isinstance(name_or_path, NameMatcher) else repr(target)
            raise InputError(f"focus: no frame matches {what} in the profile (check the function name)")
        return Tree(cols.subtrees(tops, target))
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
    return Tree(cols.subtrees(tops, target))


def search(profile_or_tree: Profile | Tree, regex: str | NameMatcher) -> dict[str, Any]:
    """Samples in stacks with at least one frame whose name matches ``regex`` (an RE2 search,
    or a :class:`NameMatcher` such as a name suffix).

    Returns ``{"matched", "total", "share"}``; a matching subtree counts once
    even if it matches again deeper (recursion). The root ``all`` is not matched.
    Raises InputError on a bad regex.
    """
    pat = compile_regex(regex, "search regex") if isinstance(regex, str) else regex
    pred = pat if isinstance(pat, NameMatcher) else (lambda n: pat.search(n) is not None)
    c = _columns(profile_or_tree)
    total = int(c.total[0])
    matched = int(c.total[c.outermost(c.name_mask(pred))].sum())
    return {"matched": matched, "total": total, "share": matched / total if total else 0.0}


# --------------------------------------------------------------------------- tables


def function_stats(profile: Profile) -> dict[tuple[str, str], list[int]]:
    """``{(name, kind): [self, total]}``; total counts a function once per stack."""
    return Columns.build([profile]).function_stats()


def top_table(profile: Profile, limit: int | None = None) -> list[dict[str, Any]]:
    """Functions by self samples (then total, then name): ``[{"name", "kind", "self", "total"}]``.

    ``total`` counts each function once per stack, even when it recurses. A profile read by
    line has one row per function and line, with its ``location`` (``file:line``).
    """
    if limit is not None and limit < 0:
        raise InputError(f"limit={limit}: must be 0 or more")
    rows = [
        _located({"name": name, "kind": kind, "self": s, "total": t})
        for (name, kind), (s, t) in function_stats(profile).items()
    ]
    rows.sort(key=lambda r: (-r["self"], -r["total"], r["name"], r["kind"], r.get("location", "")))
    return rows if limit is None else rows[:limit]


def _located(row: dict[str, Any]) -> dict[str, Any]:
    """A top-table row with a located name key parted into ``name`` and ``location``."""
    if LOC_SEP in row["name"]:
        row["name"], row["location"] = split_location(row["name"])
    return row


def sandwich(profile: Profile | Tree, name: str | NameMatcher) -> tuple[Tree, Tree]:
    """(callers, callees) of function ``name``, both rooted at ``name`` (a :class:`NameMatcher`
    centres it on every function it names, merged, the root named as in :func:`focus`).

    For each stack the outermost occurrence of ``name`` is used, so both roots
    total the samples of stacks containing it. Callers is inverted: its
    children are the direct callers, their children the callers' callers; the
    callers root's ``self`` counts stacks that start with ``name``. Raises
    InputError if no frame has that name.
    """
    cols = _columns(profile)
    tops, root = _matched(cols, name)
    if not tops.any():
        what = name.describe() if isinstance(name, NameMatcher) else repr(name)
        raise InputError(f"sandwich: no frame matches {what} in the profile (check the function name)")
    callees = cols.subtrees(tops, root)
    return Tree(cols.callers(tops, root, callees.root_kind)), Tree(callees)


# --------------------------------------------------------------------------- metadata stats


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
        path = list(metadata_path(lab, levels))
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
