"""Metadata frames: the label values (node, namespace, pod...) a flame graph shows above stacks.

A fact of the profile model, shared by the tree builders and the storage backends:
which labels become root frames, in what order, and the bound that tells which
(metadata path, first frame) cells of a metadata flame tree stay under a pruning floor
(:func:`invisible_cells`, used by a backend to skip reading them in full). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from stacks.model import Frame, Kind, Profile, StackTable, merge

METADATA_LEVELS: tuple[str, ...] = ("node", "namespace", "pod", "container", "process")
"""Label names turned into root frames, outermost first."""


def metadata_frames(
    labels: Mapping[str, str], levels: Sequence[str] = METADATA_LEVELS
) -> list[tuple[str, str]]:
    """(label, value) pairs of ``levels`` present in ``labels`` (empty values skipped), in order."""
    return [(lv, labels[lv]) for lv in levels if labels.get(lv)]


def metadata_path(labels: Mapping[str, str], levels: Sequence[str] = METADATA_LEVELS) -> tuple[str, ...]:
    """The values of :func:`metadata_frames`: the names of the metadata nodes above the stacks."""
    return tuple(v for _, v in metadata_frames(labels, levels))


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
        prefix = tuple(Frame(v, Kind.METADATA) for v in metadata_path(labels, levels))
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


def invisible_cells(
    paths: Sequence[tuple[str, ...]], firsts: Sequence[Frame], group: np.ndarray, first: np.ndarray,
    counts: np.ndarray, floor: float,
) -> np.ndarray:
    """Which (group, first frame) cells are provably under ``floor`` in the metadata flame tree.

    ``paths[g]`` is group g's metadata path (the label values it is grafted under);
    ``first[i]`` is cell i's first frame, ``firsts[first[i] - 1]`` (0 is the empty stack, never
    cut; ids past ``len(firsts)`` are never cut either). A cell's stacks all pass through the
    node ``paths[g] + (first frame,)``; the true weight W of that node is at most

        U = the cells of every group with the same path and first frame
          + the totals of groups whose path runs through the node (a longer path that continues
            with the first frame's name, when that frame is a metadata frame)
          + the cells of groups with a shorter path whose first frame is the metadata frame that
            continues it toward the node (their stacks may or may not follow the rest of the way).

    Nothing else can reach the node, so ``U < floor`` proves ``W < floor``: the node is never
    kept nor expanded, and its subtree only shows through its total. Returns a bool per cell.
    """
    n_firsts = len(firsts) + 2  # 0 = empty stack, len(firsts) + 1 = unknown
    pid_of: dict[tuple[str, ...], int] = {}
    gp = np.fromiter((pid_of.setdefault(tuple(p), len(pid_of)) for p in paths), dtype=np.int64,
                     count=len(paths))
    first = np.minimum(first.astype(np.int64), n_firsts - 1)
    pc = gp[group]
    key = pc * n_firsts + first
    ukey, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(-1)
    node = np.bincount(inv, weights=counts, minlength=ukey.size)
    extra_path = np.zeros(len(pid_of), dtype=np.float64)
    path_total = np.bincount(pc, weights=counts, minlength=len(pid_of))
    meta_first = {f.name: i + 1 for i, f in enumerate(firsts) if Kind(f.kind) == Kind.METADATA}

    def cell(q: int, fi: int) -> int:
        j = int(np.searchsorted(ukey, q * n_firsts + fi))
        return j if j < ukey.size and ukey[j] == q * n_firsts + fi else -1

    base = node.copy()
    for path, p in pid_of.items():
        for k in range(len(path)):  # shorter paths Q = path[:k] that this path extends
            q = pid_of.get(path[:k])
            fi = meta_first.get(path[k])
            if q is None or fi is None:
                continue
            j = cell(q, fi)
            if j < 0:
                continue
            node[j] += path_total[p]  # every sample of this path passes through Q + (path[k],)
            extra_path[p] += base[j]  # Q's stacks that start with path[k] may follow it down here
    bound = node[inv] + extra_path[pc]
    return (first > 0) & (first <= len(firsts)) & (bound < floor)
