"""Query logic behind /api/v1/*: parameters in, data out (handlers only adapt it).

Times are ``[from, until)``: every window whose start lies in
``[window_start(from), until)`` is included, so a query for the last minute
also sees the open window being filled right now.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.store.base import MERGE_ALL, MergedReads, PrunedMergedReads, Store
from aggregator.windows import window_start
from stacks import folded
from stacks.errors import InputError
from stacks.model import Labels, Profile, StackTable, merge
from stacks.profiletype import DEFAULT, PERIOD_LABEL, RESERVED, TYPE_LABEL, ProfileType, parse_query
from stacks.selector import Matcher, Selector, matcher, parse_selector
from stacks.timeexpr import parse_time

FORMATS = ("json", "folded", "pprof", "speedscope", "html")
DIFF_FORMATS = ("json", "folded")
MODES = ("share", "absolute")
MAX_NODES_LIMIT = 200_000
# Default ``min_share`` of flame JSON: a frame under 1/4000 of the root is narrower than a pixel on
# any screen, so it is merged into its parent's ``other`` node (and the tree builder never expands it).
DEFAULT_MIN_SHARE = 1 / 4000
_LABEL_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


@dataclass(frozen=True)
class Range:
    """A query time range and the window size it is read with."""

    start: int
    end: int
    window: int

    @property
    def first_window(self) -> int:
        return window_start(self.start, self.window)


def time_range(params: Mapping[str, str], now: float, window: int, prefix: str = "") -> Range:
    """``from``/``until`` (default ``now-1h``/``now``) -> Range; InputError when bad or reversed."""
    f_key, u_key = f"{prefix}from", f"{prefix}until"
    start = parse_time(params.get(f_key) or "now-1h", now)
    end = parse_time(params.get(u_key) or "now", now)
    if end <= start:
        raise InputError(f"{u_key}={end} is not after {f_key}={start}: give an increasing time range")
    return Range(start, end, window)


def selector(params: Mapping[str, str], key: str = "query") -> Selector:
    """The selector of ``key`` restricted to the query's profile type (see :func:`typed_query`)."""
    return typed_query(params, key)[1]


def typed_query(params: Mapping[str, str], key: str = "query") -> tuple[ProfileType, Selector]:
    """(profile type, selector with a ``__profile_type__`` matcher) of a query parameter.

    The type comes from Pyroscope's ``TYPE{selector}`` form of ``key``, else ``profile_type=``,
    else CPU; both given and different is a 400. A query therefore never mixes types.
    """
    text = params.get(key, "") or ""
    try:
        qtype, rest = parse_query(text)
        sel = parse_selector(rest)
    except InputError as e:
        raise InputError(f"{key}: {e}") from None
    ptype = profile_type_param(params)
    if qtype is not None:
        if params.get("profile_type") and qtype != ptype:
            raise InputError(
                f"{key} asks for profile type {qtype.id} but profile_type={ptype.id}: give one of them"
            )
        ptype = qtype
    user = tuple(m for m in sel.matchers if m.name not in RESERVED)
    return ptype, Selector((*user, type_matcher(ptype)))


def type_matcher(ptype: ProfileType) -> Matcher:
    """The matcher of one type. Series stored before profile types existed have no type label
    and were all CPU, so the default type also matches a missing label (a ClickHouse database
    of the old schema is read this way; SQLite ones are migrated on open)."""
    if ptype == DEFAULT:
        return matcher(TYPE_LABEL, "=~", re.escape(ptype.id) + "|")
    return matcher(TYPE_LABEL, "=", ptype.id)


def profile_type_param(params: Mapping[str, str]) -> ProfileType:
    """``profile_type=`` (a five-part id), default CPU."""
    raw = params.get("profile_type") or ""
    if not raw:
        return DEFAULT
    try:
        return ProfileType.parse(raw)
    except InputError as e:
        raise InputError(f"profile_type: {e}") from None


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


def int_param(
    params: Mapping[str, str], key: str, default: int, lo: int = 1, hi: int = MAX_NODES_LIMIT
) -> int:
    raw = params.get(key)
    if raw in (None, ""):
        return default
    try:
        v = int(raw)
    except ValueError:
        raise InputError(f"{key}={raw!r} is not an integer") from None
    if not lo <= v <= hi:
        raise InputError(f"{key}={v} is out of range: use {lo}..{hi}")
    return v


def choice(params: Mapping[str, str], key: str, options: Sequence[str], default: str) -> str:
    v = params.get(key) or default
    if v not in options:
        raise InputError(f"{key}={v!r} is not supported: use one of {', '.join(options)}")
    return v


def flag(params: Mapping[str, str], key: str) -> bool:
    v = (params.get(key) or "0").lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise InputError(f"{key}={v!r}: use 0 or 1")


def label_name(name: str) -> str:
    if not name or not set(name) <= _LABEL_NAME_CHARS:
        raise InputError(f"label name {name!r} is invalid: use letters, digits, '_', '.', '-'")
    return name


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


def share_param(params: Mapping[str, str], key: str = "min_share", default: float = DEFAULT_MIN_SHARE) -> float:
    """``min_share`` in [0, 1]: frames narrower than this share of the root merge into ``other``."""
    raw = params.get(key)
    if raw in (None, ""):
        return default
    try:
        v = float(raw)
    except ValueError:
        raise InputError(f"{key}={raw!r} is not a number: use e.g. 0.00025 (1/4000 of the root)") from None
    if not 0.0 <= v <= 1.0:
        raise InputError(f"{key}={v} is out of range: use 0..1 (0 keeps every frame the budget allows)")
    return v


def _title(sel: Selector, rng: Range) -> str:
    return f"flamewatch {sel} {rng.start}..{rng.end}"


async def render(store: Store, params: Mapping[str, str], now: float, window: int,
                 default_max_nodes: int) -> tuple[str, Any, str]:
    """(content type, body, filename suffix) for /api/v1/render."""
    ptype, sel = typed_query(params)
    rng = time_range(params, now, window)
    fmt = choice(params, "format", FORMATS, "json")
    max_nodes = int_param(params, "max_nodes", default_max_nodes)
    metadata = flag(params, "metadata")
    min_share = share_param(params)
    table = StackTable()
    if fmt in ("json", "html"):
        series = await flame_series(store, sel, rng, table, metadata, min_share)
        doc = flame_json_series(series, metadata, max_nodes, min_share)
        doc["from"], doc["until"], doc["query"] = rng.start, rng.end, user_query(sel)
        doc.update(await type_fields(store, ptype, sel, rng))
        if fmt == "html":
            from viewer.standalone import standalone_html

            return "text/html; charset=utf-8", standalone_html(doc, _title(sel, rng)), "html"
        return "application/json", doc, "json"
    profile, _ = merged(await query_series(store, sel, rng, table, metadata), table, metadata)
    if fmt == "folded":
        return "text/plain; charset=utf-8", folded.dumps(profile), "txt"
    if fmt == "pprof":
        from stacks.pprof import encode_pprof

        fields = await type_fields(store, ptype, sel, rng)
        body = encode_pprof(profile, sample_type=(ptype.sample_type, "count" if ptype.as_samples and
                                                  not fields["period_ns"] else ptype.sample_unit),
                            period_nanos=fields["period_ns"] or 0)
        return "application/octet-stream", gzip.compress(body, 6), "pb.gz"
    if fmt == "speedscope":
        from stacks.export import to_speedscope

        return "application/json", to_speedscope(profile, _title(sel, rng)), "speedscope.json"
    raise AssertionError(fmt)  # every format is handled above


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


async def diff(store: Store, params: Mapping[str, str], now: float, window: int,
               default_max_nodes: int) -> tuple[str, Any]:
    """(content type, body) for /api/v1/diff."""
    from stacks.diff import diff_folded, diff_json, diff_table, metadata_diff_json, metadata_diff_table

    ptype, base_sel = typed_query(params, "base")
    cmp_type, cmp_sel = typed_query(params, "compare") if params.get("compare") is not None else (ptype, base_sel)
    if cmp_type != ptype:
        raise InputError(
            f"base is profile type {ptype.id} but compare is {cmp_type.id}: a diff compares one type"
        )
    base_rng = time_range(params, now, window, "base_")
    cmp_rng = time_range(params, now, window, "compare_")
    mode = choice(params, "mode", MODES, "share")
    fmt = choice(params, "format", DIFF_FORMATS, "json")
    max_nodes = int_param(params, "max_nodes", default_max_nodes)
    metadata = flag(params, "metadata")
    table = StackTable()
    if metadata and fmt == "json":
        # The viewer's default: graft each side's metadata paths instead of prefixing every
        # stack (equal output, docs/tree.md); the union trie is built top-down within max_nodes.
        base_series = await query_series(store, base_sel, base_rng, table, True)
        cmp_series = await query_series(store, cmp_sel, cmp_rng, table, True)
        doc = metadata_diff_json(base_series, cmp_series, mode=mode, max_nodes=max_nodes)
        doc["table"] = metadata_diff_table(base_series, cmp_series, mode=mode)
    else:
        base, bl = await profile_for(store, base_sel, base_rng, table, metadata)
        compare, cl = await profile_for(store, cmp_sel, cmp_rng, table, metadata)
        if fmt == "folded":
            return "text/plain; charset=utf-8", diff_folded(base, compare)
        labels = {**(bl or {}), **(cl or {})} or None
        doc = diff_json(base, compare, mode=mode, max_nodes=max_nodes, labels=labels)
        doc["table"] = diff_table(base, compare, mode=mode)
    doc["base_query"], doc["compare_query"] = user_query(base_sel), user_query(cmp_sel)
    doc.update(await type_fields(store, ptype, base_sel, base_rng))
    doc["base_from"], doc["base_until"] = base_rng.start, base_rng.end
    doc["compare_from"], doc["compare_until"] = cmp_rng.start, cmp_rng.end
    return "application/json", doc


async def labels(store: Store, params: Mapping[str, str], now: float, window: int) -> dict[str, Any]:
    ptype = profile_type_param(params)
    rng = time_range(params, now, window)
    only = Selector((type_matcher(ptype),))
    names = [n for n in await store.label_names(rng.first_window, rng.end, only) if n not in RESERVED]
    return {"names": names, **await type_fields(store, ptype, only, rng)}


async def profile_types(store: Store, params: Mapping[str, str], now: float, window: int) -> dict[str, Any]:
    """The profile types with data in the range (``/api/v1/profile_types``)."""
    rng = time_range(params, now, window)
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


async def label_values(store: Store, name: str, params: Mapping[str, str], now: float,
                       window: int) -> dict[str, Any]:
    name = label_name(name)
    ptype, sel = typed_query(params)
    rng = time_range(params, now, window)
    return {"name": name, "values": await store.label_values(name, sel, rng.first_window, rng.end),
            **await type_fields(store, ptype, sel, rng)}


async def timeline(store: Store, params: Mapping[str, str], now: float, window: int) -> dict[str, Any]:
    """Samples per window, one series per value of ``group_by`` (one "all" series without it)."""
    ptype, sel = typed_query(params)
    rng = time_range(params, now, window)
    group_by = params.get("group_by") or ""
    if group_by:
        label_name(group_by)
    if isinstance(store, MergedReads):
        # Summed per group in the store: rows per (group, window), not per (series, window).
        rows = await store.totals(sel, rng.first_window, rng.end, (group_by,) if group_by else MERGE_ALL)
    else:
        rows = [(w.labels, w.start, w.profile.total)
                for w in await store.read(sel, rng.first_window, rng.end, StackTable())]
    groups: dict[str, dict[int, int]] = {}
    for lab, t, n in rows:
        g = lab.get(group_by, "") if group_by else "all"
        pts = groups.setdefault(g, {})
        pts[t] = pts.get(t, 0) + n
    starts = range(rng.first_window, rng.end, window)
    dense = len(starts) <= 2880  # fill empty windows with 0 up to a day of points
    series = []
    for g in sorted(groups):
        pts = groups[g]
        points = [[t, pts.get(t, 0)] for t in starts] if dense else sorted([t, n] for t, n in pts.items())
        series.append({"group": g, "points": points})
    return {"window": window, "from": rng.start, "until": rng.end, "group_by": group_by, "series": series,
            **await type_fields(store, ptype, sel, rng)}


async def top(store: Store, params: Mapping[str, str], now: float, window: int) -> dict[str, Any]:
    from stacks.tree import top_table

    ptype, sel = typed_query(params)
    rng = time_range(params, now, window)
    limit = int_param(params, "limit", 100, 1, 100_000)
    profile, _ = await profile_for(store, sel, rng, StackTable(), False)
    return {"query": user_query(sel), "from": rng.start, "until": rng.end, "total": profile.total,
            "rows": top_table(profile, limit), **await type_fields(store, ptype, sel, rng)}


async def sandwich(store: Store, params: Mapping[str, str], now: float, window: int,
                   default_max_nodes: int) -> dict[str, Any]:
    from stacks.tree import prune, to_json
    from stacks.tree import sandwich as sw

    ptype, sel = typed_query(params)
    rng = time_range(params, now, window)
    fn = params.get("function") or ""
    if not fn:
        raise InputError("missing ?function=NAME: the function to centre the sandwich view on")
    max_nodes = int_param(params, "max_nodes", default_max_nodes)
    profile, _ = await profile_for(store, sel, rng, StackTable(), False)
    callers, callees = sw(profile, fn)
    fields = await type_fields(store, ptype, sel, rng)
    sides = [to_json(prune(t, max_nodes=max_nodes)) for t in (callers, callees)]
    for doc in sides:
        doc["unit"] = ptype.unit
    return {"function": fn, "query": user_query(sel), "from": rng.start, "until": rng.end,
            "callers": sides[0], "callees": sides[1], **fields}
