"""Query logic behind /api/v1/*: typed requests in (aggregator.params), data out.

Times are ``[from, until)``: every window whose start lies in
``[window_start(from), until)`` is included, so a query for the last minute
also sees the open window being filled right now. The HTTP layer parses each
request once and adapts the answer; output formats come from :data:`render.RENDERERS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from aggregator.params import (
    DiffRequest,
    LabelsRequest,
    LabelValuesRequest,
    Range,
    RangeRequest,
    RenderRequest,
    SandwichRequest,
    TimelineRequest,
    TopRequest,
    type_matcher,
)
from aggregator.store.base import MERGE_ALL, MergedReads, PrunedMergedReads, Store, TopTotals
from render import RENDERERS, Output, Subject
from stacks.errors import InputError
from stacks.model import Labels, Profile, StackTable, merge
from stacks.profiletype import DEFAULT, PERIOD_LABEL, RESERVED, TYPE_LABEL, ProfileType
from stacks.selector import Selector, matcher


def user_query(sel: Selector) -> str:
    """The selector as the user wrote it (without the reserved type matcher)."""
    return str(Selector(tuple(m for m in sel.matchers if m.name not in RESERVED)))


async def type_fields(store: Store, ptype: ProfileType, sel: Selector, rng: Range) -> dict[str, Any]:
    """``profile_type``, ``unit`` and ``period_ns`` of an answer. ``period_ns`` is the period of
    a samples-stored type when every matching series that has one agrees, else null."""
    period: int | None = None
    if ptype.as_samples:
        values = await store.label_values(PERIOD_LABEL, sel, rng.first_window, rng.end)
        if len(values) == 1 and values[0].isdigit():
            period = int(values[0])
    return {"profile_type": ptype.id, "unit": ptype.unit, "period_ns": period}


async def series_profiles(
    store: Store, sel: Selector, rng: Range, table: StackTable, per_series: bool = True
) -> list[tuple[Labels, Profile]]:
    """One merged profile per matching series over the range (store fast path when it has one);
    with ``per_series=False`` the fast path merges everything in the store into one profile
    under empty labels (``MERGE_ALL``: the backend sums per stack, not per (series, stack))."""
    if isinstance(store, MergedReads):
        got = await store.read_merged(sel, rng.first_window, rng.end, table, () if per_series else MERGE_ALL)
        return sorted(got.items(), key=lambda kv: kv[0].items_)
    by: dict[Labels, list[Profile]] = {}
    for w in await store.read(sel, rng.first_window, rng.end, table):
        by.setdefault(w.labels, []).append(w.profile)
    return sorted(((k, merge(v, table)) for k, v in by.items()), key=lambda kv: kv[0].items_)


async def query_series(
    store: Store, sel: Selector, rng: Range, table: StackTable, metadata: bool
) -> list[tuple[Labels, Profile]]:
    """The profiles a query merges: one per metadata path (``metadata``), else possibly one."""
    if metadata:
        from stacks.tree import METADATA_LEVELS

        # Series that differ only in other labels (SDK tags, routes) share their metadata frames:
        # merge them in the store first, so each stack is walked once per metadata path.
        if isinstance(store, MergedReads):
            got = await store.read_merged(sel, rng.first_window, rng.end, table, tuple(METADATA_LEVELS))
            return sorted(got.items(), key=lambda kv: kv[0].items_)
        return await series_profiles(store, sel, rng, table)
    return await series_profiles(store, sel, rng, table, per_series=False)


async def flame_series(
    store: Store, sel: Selector, rng: Range, table: StackTable, metadata: bool, min_share: float
) -> list[tuple[Labels, Profile]]:
    """What :func:`flame_json_series` needs for one flame graph pruned at ``min_share``: with
    ``metadata`` and a store that offers ``read_merged_pruned`` (ClickHouse), the metadata groups
    with every (group, first frame) cell that provably stays under the floor collapsed to one
    frame, which builds the same pruned tree (aggregator/store/base.py, PrunedMergedReads); else
    :func:`query_series`. Only for the flame tree: folded/pprof/diff need every stack."""
    if metadata and min_share > 0 and isinstance(store, PrunedMergedReads):
        from stacks.tree import METADATA_LEVELS

        got = await store.read_merged_pruned(sel, rng.first_window, rng.end, table, tuple(METADATA_LEVELS),
                                             min_share)
        return sorted(got.items(), key=lambda kv: kv[0].items_)
    return await query_series(store, sel, rng, table, metadata)


def merged(series: list[tuple[Labels, Profile]], table: StackTable, metadata: bool
           ) -> tuple[Profile, dict[tuple[str, ...], str] | None]:
    """One profile of ``series`` (metadata frames prepended when asked) and its metadata labels."""
    from stacks.tree import metadata_labels, with_metadata

    if metadata:
        return with_metadata(series, table), metadata_labels(series)
    if not series:
        return Profile.empty(table), None
    return merge([p for _, p in series], table), None


async def profile_for(
    store: Store, sel: Selector, rng: Range, table: StackTable, metadata: bool
) -> tuple[Profile, dict[tuple[str, ...], str] | None]:
    """The merged profile of a query, with metadata root frames when asked."""
    return merged(await query_series(store, sel, rng, table, metadata), table, metadata)


def _title(sel: Selector, rng: Range) -> str:
    return f"flamewatch {sel} {rng.start}..{rng.end}"


# The frame a store sums the cells cut by its memory bound into (aggregator.store.sqlite.TRUNCATED).
TRUNCATED_PREFIX = "other (truncated"


async def render(store: Store, req: RenderRequest) -> Output:
    """The /api/v1/render answer in ``req.format``: the pruned flame tree, or the merged profile."""
    r = RENDERERS[req.format]
    table = StackTable(lines=req.lines)
    title = _title(req.sel, req.rng)
    if req.focus is not None:
        return r.output(Subject(title, doc=await focus_json(store, req)))
    if r.tree:
        series = await flame_series(store, req.sel, req.rng, table, req.metadata, req.min_share)
        doc = flame_json_series(series, req.metadata, req.max_nodes, req.min_share)
        doc["from"], doc["until"], doc["query"] = req.rng.start, req.rng.end, user_query(req.sel)
        if any(str(n).startswith(TRUNCATED_PREFIX) for n in doc.get("names", ())):
            doc["truncated"] = ("the answer crossed the server's memory bound (--max-query-cells): the lightest "
                                "stacks of some groups are summed into their 'other (truncated ...)' frame; "
                                "narrow the selector or the range for the full detail")
        doc.update(await type_fields(store, req.ptype, req.sel, req.rng))
        if req.lines:
            doc.update(await source_fields(store, req.sel, req.rng))
        return r.output(Subject(title, doc=doc))
    profile, _ = merged(await query_series(store, req.sel, req.rng, table, req.metadata), table, req.metadata)
    subject = Subject(title, profile=profile)
    if r.typed:
        fields = await type_fields(store, req.ptype, req.sel, req.rng)
        ptype = req.ptype
        unit = "count" if ptype.as_samples and not fields["period_ns"] else ptype.sample_unit
        subject = replace(subject, sample_type=(ptype.sample_type, unit), period_ns=fields["period_ns"] or 0,
                          period_type=(ptype.period_type, ptype.period_unit))
    return r.output(subject)


# Pyroscope's labels naming where a service's source lives (its SDKs and the OTel resource attributes).
SOURCE_LABELS = {"repository": "service_repository", "ref": "service_git_ref", "root_path": "service_root_path"}


async def source_fields(store: Store, sel: Selector, rng: Range) -> dict[str, Any]:
    """``{"source": {repository, ref, root_path}}`` when every matching series names one
    repository and one git ref (labels ``service_repository``, ``service_git_ref`` and the optional
    ``service_root_path``), so the viewer can link a frame's ``file:line`` to its source; else {}."""
    got: dict[str, str] = {}
    for key, label in SOURCE_LABELS.items():
        values = await store.label_values(label, sel, rng.first_window, rng.end)
        if len(values) > 1 or (not values and key != "root_path"):
            return {}
        got[key] = values[0] if values else ""
    return {"source": got}


async def focus_json(store: Store, req: RenderRequest) -> dict[str, Any]:
    """Flame JSON of ``req.focus``: every outermost occurrence of the functions it names, merged
    under one root (``stacks.views.focus``), pruned like a flame graph; ``focus_matched`` lists
    the names matched (at most 100)."""
    from stacks.tree import focus, prune, to_json
    from stacks.views import matched_names

    assert req.focus is not None
    profile, _ = await profile_for(store, req.sel, req.rng, StackTable(), req.metadata)
    tree = focus(profile, req.focus)
    doc = to_json(prune(tree, max_nodes=req.max_nodes, min_share=req.min_share))
    doc["focus"], doc["focus_matched"] = req.focus.text, matched_names(tree, req.focus)
    doc["from"], doc["until"], doc["query"] = req.rng.start, req.rng.end, user_query(req.sel)
    doc.update(await type_fields(store, req.ptype, req.sel, req.rng))
    return doc


def flame_json_series(
    series: list[tuple[Labels, Profile]], metadata: bool, max_nodes: int, min_share: float = 0.0
) -> dict[str, Any]:
    """Flame JSON of the merge of ``series`` (metadata frames on top when asked), pruned.

    The tree is built straight from the series (no prefixed stacks, no merged
    profile) and nodes under ``min_share`` of the root are never expanded; the
    result equals pruning the full tree of the merged profile (docs/tree.md).
    """
    from stacks.tree import metadata_tree, pruned_tree, to_json

    if metadata:
        return to_json(metadata_tree(series, max_nodes=max_nodes, min_share=min_share))
    if len(series) == 1:
        return to_json(pruned_tree(series[0][1], max_nodes=max_nodes, min_share=min_share))
    # Several unlabelled parts (the Protocol fallback): graft them all under the root.
    return to_json(metadata_tree(series, max_nodes=max_nodes, min_share=min_share, levels=()))


def flame_json(
    profile: Profile, labels: Mapping[tuple[str, ...], str] | None, max_nodes: int, min_share: float = 0.0
) -> dict[str, Any]:
    """Flame JSON of a profile, pruned to ``max_nodes`` (and ``min_share`` of the root)."""
    from stacks.tree import pruned_tree, to_json

    return to_json(pruned_tree(profile, max_nodes=max_nodes, min_share=min_share, labels=labels))


async def diff(store: Store, req: DiffRequest) -> Output:
    """The /api/v1/diff answer in ``req.format``: diff JSON (with its table), or folded diff lines."""
    from stacks.diff import diff_json, diff_table, metadata_diff_json, metadata_diff_table

    r = RENDERERS[req.format]
    table = StackTable()
    mode, max_nodes = req.mode, req.max_nodes
    if req.metadata and r.tree:
        # The viewer's default: graft each side's metadata paths instead of prefixing every
        # stack (equal output, docs/tree.md); the union trie is built top-down within max_nodes.
        base_series = await query_series(store, req.base_sel, req.base_rng, table, True)
        cmp_series = await query_series(store, req.cmp_sel, req.cmp_rng, table, True)
        doc = metadata_diff_json(base_series, cmp_series, mode=mode, max_nodes=max_nodes)
        doc["table"] = metadata_diff_table(base_series, cmp_series, mode=mode)
    else:
        base, bl = await profile_for(store, req.base_sel, req.base_rng, table, req.metadata)
        compare, cl = await profile_for(store, req.cmp_sel, req.cmp_rng, table, req.metadata)
        if not r.tree:
            return r.output(Subject("", profile=base, compare=compare))
        labels = {**(bl or {}), **(cl or {})} or None
        doc = diff_json(base, compare, mode=mode, max_nodes=max_nodes, labels=labels)
        doc["table"] = diff_table(base, compare, mode=mode)
    doc["base_query"], doc["compare_query"] = user_query(req.base_sel), user_query(req.cmp_sel)
    doc.update(await type_fields(store, req.ptype, req.base_sel, req.base_rng))
    doc["base_from"], doc["base_until"] = req.base_rng.start, req.base_rng.end
    doc["compare_from"], doc["compare_until"] = req.cmp_rng.start, req.cmp_rng.end
    return r.output(Subject("", doc=doc))


async def labels(store: Store, req: LabelsRequest) -> dict[str, Any]:
    """The label names of one profile type in the range (``/api/v1/labels``)."""
    rng = req.rng
    only = Selector((type_matcher(req.ptype),))
    names = [n for n in await store.label_names(rng.first_window, rng.end, only) if n not in RESERVED]
    extra: dict[str, Any] = {}
    if len(names) > req.limit:  # bounded answer, as label values
        extra = {"truncated": {"names": len(names), "shown": req.limit,
                               "note": f"{len(names)} label names, first {req.limit} shown (--max-label-values)"}}
        names = names[: req.limit]
    return {"names": names, **extra, **await type_fields(store, req.ptype, only, rng)}


async def profile_types(store: Store, req: RangeRequest) -> dict[str, Any]:
    """The profile types with data in the range (``/api/v1/profile_types``)."""
    rng = req.rng
    ids = await store.label_values(TYPE_LABEL, Selector(()), rng.first_window, rng.end)
    if DEFAULT.id not in ids:  # old-schema series (no type label) are CPU
        untyped = Selector((matcher(TYPE_LABEL, "=", ""),))
        if await store.label_values("service_name", untyped, rng.first_window, rng.end):
            ids = [*ids, DEFAULT.id]
    types = []
    for i in ids:
        try:
            types.append(ProfileType.parse(i))
        except InputError:
            continue  # never written by this version; not listable
    return {"profile_types": [t.describe() for t in sorted(types)], "default": DEFAULT.id}


async def label_values(store: Store, req: LabelValuesRequest) -> dict[str, Any]:
    """The values of label ``req.name`` among the matching series (``/api/v1/label/{name}/values``)."""
    name, sel, rng = req.name, req.sel, req.rng
    values = await store.label_values(name, sel, rng.first_window, rng.end)
    extra: dict[str, Any] = {}
    if len(values) > req.limit:
        # Bounded answer (issue 24): the first values in order, and how many there were.
        extra = {"truncated": {"values": len(values), "shown": req.limit,
                               "note": f"{len(values)} values, first {req.limit} shown (--max-label-values); "
                                       "narrow the query to see the rest"}}
        values = values[: req.limit]
    return {"name": name, "values": values, **extra, **await type_fields(store, req.ptype, sel, rng)}


OTHER_GROUP = "(other)"


def top_groups(groups: dict[str, dict[int, int]], n: int
               ) -> tuple[dict[str, dict[int, int]], dict[int, int] | None, dict[str, Any] | None]:
    """The ``n`` groups with the most samples (ties by name), the rest summed per window, and
    a note saying what was cut; ``(groups, None, None)`` when there are at most ``n``.

    Bounds every group_by answer (timeline ``group_by``, the viewer's split): 100,000 pods
    would otherwise answer 100,000 series (issue 24, cause 3). Sums are Python ints: exact.
    """
    if len(groups) <= n:
        return groups, None, None
    weight = {g: sum(pts.values()) for g, pts in groups.items()}
    ranked = sorted(groups, key=lambda g: (-weight[g], g))
    kept = {g: groups[g] for g in ranked[:n]}
    other: dict[int, int] = {}
    for g in ranked[n:]:
        for t, v in groups[g].items():
            other[t] = other.get(t, 0) + v
    return kept, other, truncation_note(len(groups), n, sum(weight[g] for g in ranked[n:]))


def truncation_note(groups: int, n: int, other_samples: int) -> dict[str, Any]:
    """The ``truncated`` note of a group_by answer that kept ``n`` of ``groups`` groups."""
    rest = groups - n
    return {"groups": groups, "shown": n, "other_groups": rest, "other_samples": other_samples,
            "note": f"{groups} groups: the {n} largest shown, {rest} more summed into {OTHER_GROUP!r} (--max-groups)"}


# Timeline steps, multiples of each other and of the 30 s window: the smallest that keeps a
# series under TIMELINE_POINTS points is taken (Pyroscope's step): an hour is 120 points of
# 30 s, a day 288 of 5 min, a week 168 of an hour (read from the hour rollups).
TIMELINE_STEPS = (60, 300, 600, 1800, 3600, 21600, 86400, 604800)
TIMELINE_POINTS = 300


def timeline_step(first_window: int, end: int, window: int) -> int:
    """The bucket width of a timeline over ``[first_window, end)`` (a multiple of ``window``)."""
    span = max(end - first_window, window)
    for step in (window, *(s for s in TIMELINE_STEPS if s > window and s % window == 0)):
        if span / step <= TIMELINE_POINTS:
            return step
    return -(-span // (TIMELINE_POINTS * window)) * window


async def timeline(store: Store, req: TimelineRequest) -> dict[str, Any]:
    """Samples per step (:func:`timeline_step`), one series per value of ``group_by`` (one
    "all" series without it)."""
    ptype, sel, rng, group_by = req.ptype, req.sel, req.rng, req.group_by
    window = rng.window
    step = timeline_step(rng.first_window, rng.end, window)
    other: dict[int, int] | None = None
    note: dict[str, Any] | None = None
    if group_by and isinstance(store, TopTotals):
        # The store keeps only the top groups while it reads: memory bounded by --max-groups x
        # buckets of step however many groups there are.
        rows, rest, ngroups, rest_samples = await store.top_totals(sel, rng.first_window, rng.end, group_by,
                                                                   req.max_groups, step=step)
        if ngroups > req.max_groups:
            other, note = {}, truncation_note(ngroups, req.max_groups, rest_samples)
            for t, n in rest.items():
                b = t - t % step
                other[b] = other.get(b, 0) + n
    elif isinstance(store, MergedReads):
        # Summed per group in the store: rows per (group, window), not per (series, window).
        rows = await store.totals(sel, rng.first_window, rng.end, (group_by,) if group_by else MERGE_ALL,
                                  step=step)
    else:
        rows = [(w.labels, w.start, w.profile.total)
                for w in await store.read(sel, rng.first_window, rng.end, StackTable())]
    groups: dict[str, dict[int, int]] = {}
    for lab, t, n in rows:
        g = lab.get(group_by, "") if group_by else "all"
        pts = groups.setdefault(g, {})
        b = t - t % step
        pts[b] = pts.get(b, 0) + n
    if other is None:
        groups, other, note = top_groups(groups, req.max_groups)
    starts = range(rng.first_window - rng.first_window % step, rng.end, step)

    def points(pts: dict[int, int]) -> list[list[int]]:
        return [[t, pts.get(t, 0)] for t in starts]

    series: list[dict[str, Any]] = [{"group": g, "points": points(groups[g])} for g in sorted(groups)]
    extra: dict[str, Any] = {}
    if other is not None:
        series.append({"group": OTHER_GROUP, "other": True, "points": points(other)})
        extra["truncated"] = note
    return {"window": window, "step": step, "from": rng.start, "until": rng.end, "group_by": group_by,
            "series": series, **extra, **await type_fields(store, ptype, sel, rng)}


async def top(store: Store, req: TopRequest) -> dict[str, Any]:
    """The ``limit`` functions with the most self samples (``/api/v1/top``)."""
    from stacks.tree import top_table

    sel, rng = req.sel, req.rng
    profile, _ = await profile_for(store, sel, rng, StackTable(lines=req.lines), False)
    return {"query": user_query(sel), "from": rng.start, "until": rng.end, "total": profile.total,
            "rows": top_table(profile, req.limit), **await type_fields(store, req.ptype, sel, rng)}


async def sandwich(store: Store, req: SandwichRequest) -> dict[str, Any]:
    """Callers and callees of ``req.function``, each a pruned flame tree (``/api/v1/sandwich``)."""
    from stacks.tree import prune, to_json
    from stacks.tree import sandwich as sw

    sel, rng, fn = req.sel, req.rng, req.function
    profile, _ = await profile_for(store, sel, rng, StackTable(), False)
    from stacks.views import matched_names

    callers, callees = sw(profile, fn)
    fields = await type_fields(store, req.ptype, sel, rng)
    sides = [to_json(prune(t, max_nodes=req.max_nodes)) for t in (callers, callees)]
    for doc in sides:
        doc["unit"] = req.ptype.unit
    return {"function": callees.cols.root_name, "matched": matched_names(callees, fn), "query": user_query(sel),
            "from": rng.start, "until": rng.end, "callers": sides[0], "callees": sides[1], **fields}
