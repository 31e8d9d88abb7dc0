"""The pruned read of ``metadata=1`` flame trees (``read_merged_pruned``), pushed into ClickHouse.

The tree invariant it relies on: **a node's weight is the sum of the counts of the stacks that
pass through it** (a flame tree of merged stacks; nothing else adds weight). Every stack of a
(metadata group, first frame) cell passes through the node ``group's path + (first frame,)``,
so that node's weight is bounded from above by the cells that can reach it
(:func:`stacks.metadata.invisible_cells`), and each descendant weighs at most its ancestor. A
cell whose bound is under the floor (``min_share`` of the root) can only show as its total:
it is read as the one stack ``(first frame,)`` with that total, which gives the same pruned
tree. If flame trees ever gained weight not carried by a stack through a node (e.g. a node
total kept apart from its stacks), this planner would have to change with them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from aggregator.store.clickhouse.transport import GROUP_FIRST, STACK, chunks, in_list
from aggregator.store.rollup import DAY
from stacks.metadata import invisible_cells, metadata_path
from stacks.model import Frame, Labels, Profile, StackTable
from stacks.selector import Selector

_UNKNOWN_FIRST = 0xFFFFFFFF  # first-frame id of a stack written after the pushdown listed the stacks
# read_merged_pruned reads (group, stack) rows directly when groups x distinct stacks is under this.
_PUSHDOWN_MIN_KEYS = 200_000
_PUSHDOWN_MIN_GROUPS = 32  # ... and, with a selector, when there are fewer groups than this
# Pushdown reads with up to this many (group, first frame) cells never give up for the plain
# grouped read (it is cheap either way), so small data always exercises the pushdown.
_SMALL_CELLS = 10_000


def _first_frames(table: StackTable, tids: np.ndarray) -> tuple[list[Frame], np.ndarray]:
    """(distinct first frames of the stacks ``tids`` on ``table``, per stack the id of its first
    frame: its index in that list + 1, or 0 for the empty stack)."""
    firsts: dict[Frame, int] = {}
    first_of = np.fromiter(
        ((firsts.setdefault(st[0], len(firsts) + 1) if st else 0) for st in map(table.stack, tids.tolist())),
        dtype=np.int64, count=len(tids))
    return list(firsts), first_of


def _first_frame_expr(hashes: np.ndarray, first_of: np.ndarray) -> str:
    """SQL of the first-frame id of ``stack``: a ``transform`` over the listed stack hashes,
    :data:`_UNKNOWN_FIRST` for any other stack."""
    return (f"transform(stack, CAST([{in_list(hashes.tolist())}] AS Array(UInt64)), "
            f"CAST([{','.join(map(str, first_of.tolist()))}] AS Array(UInt32)), "
            f"toUInt32({_UNKNOWN_FIRST}))")


class PrunedReads:
    """Mixin of :class:`~aggregator.store.clickhouse.store.ClickHouseStore`: ``read_merged_pruned``
    (:class:`aggregator.store.base.PrunedMergedReads`) over the store's grouped reads."""

    last_pushdown: dict[str, int]

    async def read_merged_pruned(
        self, selector: Selector, start: int, end: int, table: StackTable, levels: Sequence[str], min_share: float
    ) -> dict[Labels, Profile]:
        """``read_merged(..., group_by=levels)`` for a flame tree pruned at ``min_share`` of the
        root (:class:`aggregator.store.base.PrunedMergedReads`): (group, stack) rows are fetched
        only for the (group, first frame) cells whose node may be visible; every other cell comes
        back as one stack ``(first frame,)`` with the cell's total.

        Three reads instead of one ``GROUP BY g, stack`` over ~600,000 keys: the distinct stacks in
        range (their first frames numbered in Python), the totals per (group, first frame) with the
        first frame computed in the query by ``transform(stack, [hashes], [first-frame ids])``, and
        the full rows of the cells :func:`stacks.metadata.invisible_cells` cannot rule out
        (skipped when there are none). The root total, hence the floor, is the sum of the second.
        Where the pushdown would not pay, or cannot be exact, the plain grouped read answers.
        """
        group_by = tuple(levels)
        if min_share <= 0:
            return await self.read_merged(selector, start, end, table, group_by)
        self.last_pushdown = {"cells": 0, "cut": 0, "fetched": 0}
        (keys, gid, everything), hashes = await self._groups_and_stacks(selector, start, end, group_by)
        grouped = (keys, gid, everything, start, end, table)
        if hashes is None:
            return await self._pushdown_declined(*grouped)
        if not keys or not hashes.size:
            return {}
        if len(keys) * hashes.size < _PUSHDOWN_MIN_KEYS:
            # Few (group, stack) keys at most: the plain grouped read is one cheap query, and
            # the two reads below would cost more than they save.
            return await self._pushdown_declined(*grouped)
        tids = await self._resolve(hashes, table)
        frames, first_of = _first_frames(table, tids)
        space = len(keys) * len(frames)
        if space > _SMALL_CELLS and min_share * space < 2:
            # At most 1 / min_share nodes of the first-frame level can reach the floor; when that is
            # over half of the possible cells, little can be ruled out: skip the two extra reads.
            return await self._pushdown_declined(*grouped)
        first_expr = _first_frame_expr(hashes, first_of)
        cells = await self._first_frame_cells(gid, len(keys), everything, start, end, first_expr)
        if cells is None:
            return await self._pushdown_declined(*grouped)
        ucell, ccounts = cells
        if not ucell.size:
            return {}
        cg, cf = ucell >> 32, ucell & 0xFFFFFFFF
        full = self._visible_cells([metadata_path(key, group_by) for key in keys], frames, cg, cf, ccounts,
                                   min_share * float(ccounts.sum()))  # the tree's floor: min_share of the root
        if ucell.size > _SMALL_CELLS and 2 * int(full.sum()) > ucell.size:
            # Most cells may be visible (a tiny min_share): the filtered read would cost about
            # as much as the plain one, which needs no cell list.
            return await self._pushdown_declined(*grouped)
        # Cut cells become the stack (first frame,), the empty-stack cells the empty stack.
        one_frame = np.array([table.intern(())] + [table.intern((f,)) for f in frames], dtype=np.int64)
        parts_g, parts_t, parts_c = [cg[~full]], [one_frame[cf[~full]]], [ccounts[~full]]
        if full.any():
            rows = await self._full_cells(gid, len(keys), everything, start, end, first_expr, ucell[full],
                                          hashes, tids)
            if rows is None:
                return await self._pushdown_declined(*grouped)
            parts_g.append(rows[0])
            parts_t.append(rows[1])
            parts_c.append(rows[2])
        return self._profiles(keys, np.concatenate(parts_g), np.concatenate(parts_t), np.concatenate(parts_c),
                              table)

    async def _pushdown_declined(self, keys: dict[Labels, int], gid: dict[int, int], everything: bool,
                                 start: int, end: int, table: StackTable) -> dict[Labels, Profile]:
        """The plain grouped read, for a pushdown that would not pay or cannot be exact
        (``last_pushdown["fetched"]`` -1 says so)."""
        self.last_pushdown["fetched"] = -1
        return await self._read_grouped(keys, gid, everything, start, end, table)

    async def _groups_and_stacks(self, selector: Selector, start: int, end: int, group_by: tuple[str, ...]
                                 ) -> tuple[tuple[dict[Labels, int], dict[int, int], bool], np.ndarray | None]:
        """(:meth:`_groups`, sorted distinct stack hashes of the matching series in range); the
        hashes are None for a selection too narrow for the pushdown to pay."""
        def distinct(sources: list[tuple[str, str]], extra: str = "") -> str:
            union = " UNION ALL ".join(f"SELECT DISTINCT stack FROM {self.database}.{table} WHERE {where}{extra}"
                                       for table, where in sources)
            return union if len(sources) == 1 else f"SELECT DISTINCT stack FROM ({union})"
        if not selector.matchers:
            # Every series in range is read: list the stacks while the series are looked up,
            # from the rollups without the series key. (Stacks of series written after that
            # lookup only lengthen the transform below.)
            groups, every = await asyncio.gather(
                self._groups(selector, start, end, group_by),
                self._binary_rows(distinct(await self._sources(start, end, DAY, every=True)), STACK))
            found = [every]
        else:
            groups = await self._groups(selector, start, end, group_by)
            if groups[2]:
                # The selector matches every series in range (the type matcher of a one-type
                # store): the same stack list, from the rollups without the series key.
                found = [await self._binary_rows(distinct(await self._sources(start, end, DAY, every=True)),
                                                 STACK)]
            elif len(groups[0]) < _PUSHDOWN_MIN_GROUPS:
                # A narrow selection (one namespace: 20 pods): its grouped read is small, and
                # one more round trip for the stack list costs more than the pushdown saves.
                return groups, None
            else:
                sources = await self._sources(start, end, DAY)
                found = [await self._binary_rows(distinct(sources, f" AND series IN ({in_list(c)})"), STACK)
                         for c in chunks(sorted(groups[1]))]
        return groups, np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.uint64)

    async def _first_frame_cells(self, gid: dict[int, int], n_groups: int, everything: bool, start: int,
                                 end: int, first_expr: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(cell ``group << 32 | first-frame id``, ascending; its summed count): the totals per
        (group, first frame), the first frame computed in the query by ``first_expr``. None when
        a stack written since the stacks were listed shows up: its first frame is unknown here,
        so nothing can be ruled out cheaply (the plain grouped read is always exact)."""
        g, first, counts = await self._group_sums(gid, n_groups, "first", everything, start, end,
                                                  expr=first_expr, dtype=GROUP_FIRST, packed=True)
        if counts.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        first = first.astype(np.int64)
        if (first == _UNKNOWN_FIRST).any():
            return None
        # Several series chunks may hold one group's cell: sum them, as the tree would.
        ucell, inv = np.unique(g * (1 << 32) + first, return_inverse=True)
        return ucell, np.bincount(inv.reshape(-1), weights=counts, minlength=ucell.size).astype(np.int64)

    def _visible_cells(self, paths: list[tuple[str, ...]], frames: list[Frame], cg: np.ndarray, cf: np.ndarray,
                       ccounts: np.ndarray, floor: float) -> np.ndarray:
        """Per cell: True if its stacks must be read in full (its node may reach ``floor``, and it
        is not the empty stack); counted in ``last_pushdown``."""
        cut = invisible_cells(paths, frames, cg, cf, ccounts, floor)
        full = ~cut & (cf > 0)
        self.last_pushdown = {"cells": int(cf.size), "cut": int(cut.sum()), "fetched": int(full.sum())}
        return full

    async def _full_cells(self, gid: dict[int, int], n_groups: int, everything: bool, start: int, end: int,
                          first_expr: str, wanted: np.ndarray, hashes: np.ndarray, tids: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(group index, table id, count) rows of the cells ``wanted``; None when a stack written
        since ``hashes`` were listed shows up."""
        # A transform, not IN (...): a literal array is one AST node (IN lists count every
        # element against max_ast_elements, 50,000), and it is looked up by hash.
        cells = wanted.tolist()
        fg, fstack, fcounts = await self._group_sums(
            gid, n_groups, "stack", everything, start, end,
            extra=f" AND transform(bitOr(bitShiftLeft(toUInt64(g), 32), {first_expr}), "
                  f"CAST([{in_list(cells)}] AS Array(UInt64)), CAST([{','.join('1' * len(cells))}] "
                  "AS Array(UInt8)), toUInt8(0)) = 1")
        at = np.searchsorted(hashes, fstack)
        if (at >= hashes.size).any() or (hashes[np.minimum(at, hashes.size - 1)] != fstack).any():
            return None
        return fg, tids[at], fcounts
