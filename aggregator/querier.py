"""Pyroscope's read API on flamewatch: ``querier.v1.QuerierService`` and ``settings.v1`` over
Connect unary, and the legacy ``/pyroscope/*`` HTTP routes (issue 26; docs/grafana.md).

Handlers are thin: each turns the Pyroscope request into the parameters of the matching
``/api/v1`` route, parses them with :mod:`aggregator.params` and answers with
:mod:`aggregator.query`, so both APIs give the same numbers. The differences are Pyroscope's:
times are unix milliseconds, and a samples-stored type (CPU, wall) is shown in its sample unit
(samples x period in ns) when the matching series agree on one period (else as samples).

Connect: ``POST /<service>/<Method>``, ``application/proto`` or ``application/json`` bodies
(``Content-Encoding: gzip`` inflated under --max-decompressed-bytes), errors as
``{"code": ..., "message": ...}`` with Connect's HTTP status for the code.
"""

from __future__ import annotations

import gzip
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from aggregator import _proto, handlers, heatmap, params, query
from aggregator.spans import MAX_ID_CHARS, SpanStore, user_selector
from aggregator.store import StoreError
from aggregator.store.base import MERGE_ALL, MergedReads, Store
from stacks import flamebearer
from stacks.errors import InputError, LimitError
from stacks.gz import gunzip_capped
from stacks.model import Labels
from stacks.profiletype import CPU, PERIOD_LABEL, RESERVED, ProfileType
from stacks.selector import Selector, parse_selector

log = logging.getLogger(__name__)

QUERIER = "/querier.v1.QuerierService/"
SETTINGS_SERVICE = "/settings.v1.SettingsService/"
CONNECT_PREFIXES = (QUERIER, SETTINGS_SERVICE)
# Connect's HTTP status of each error code (connectrpc.com/docs/protocol, "Error codes").
STATUS = {"invalid_argument": 400, "unauthenticated": 401, "permission_denied": 403, "not_found": 404,
          "resource_exhausted": 429, "internal": 500, "unimplemented": 501, "unavailable": 503}
GZIP_MIN_BYTES = 8192  # smaller answers go as they are: gzip would not pay for its header and time
MAX_MATCHERS = 64
MAX_SERIES = 100_000  # label sets one Series answer lists
MAX_GROUP_BY = 8
PPROF_FORMAT = _proto.enum_value("querier.v1.ProfileFormat", "PROFILE_FORMAT_PPROF")
M = _proto.message


class ConnectError(Exception):
    """A Connect error: ``code`` (one of :data:`STATUS`) and a message naming the input and the fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def connect_error(code: str, message: str) -> web.Response:
    """The Connect error response of ``code``."""
    return web.json_response({"code": code, "message": message}, status=STATUS[code])


@dataclass(frozen=True)
class Call:
    """What a method needs besides its request: the store, the parse context and settings."""

    store: Store
    ctx: params.Context
    retention_seconds: int
    spans: SpanStore | None = None  # span-tagged samples (aggregator/spans.py)


# -- conversions between Pyroscope's requests and the /api/v1 parameters -----------------------

def _range_params(start_ms: int, end_ms: int) -> dict[str, str]:
    """Pyroscope's millisecond range as ``from``/``until`` seconds covering it."""
    return {"from": str(start_ms // 1000), "until": str(-(-end_ms // 1000))}


def _rng(start_ms: int, end_ms: int, call: Call) -> params.Range:
    if start_ms == 0 and end_ms == 0:  # no range given: everything retained
        now = int(call.ctx.now)
        start = now - call.retention_seconds if call.retention_seconds else 0
        return params.Range(max(start, 0), now + call.ctx.window, call.ctx.window)
    return params.time_range(_range_params(start_ms, end_ms), call.ctx.now, call.ctx.window)


def _query(msg: Message) -> dict[str, str]:
    """``query``, ``profile_type`` and the range of a request with profile_typeID/label_selector."""
    sel = msg.label_selector.strip() or "{}"  # type: ignore[attr-defined]
    return {"query": sel, "profile_type": msg.profile_typeID.strip(),  # type: ignore[attr-defined]
            **_range_params(msg.start, msg.end)}  # type: ignore[attr-defined]


def _selectors(matchers: Any) -> list[Selector]:
    """Pyroscope's matchers (series match any of them); none means every series."""
    if len(matchers) > MAX_MATCHERS:
        raise InputError(f"{len(matchers)} matchers: give at most {MAX_MATCHERS} (each is one store query)")
    out = []
    for m in matchers:
        try:
            out.append(parse_selector(m or "{}"))
        except InputError as e:
            raise InputError(f"matchers: {e}") from None
    return out or [Selector(())]


def _max_nodes(value: int, ctx: params.Context) -> str:
    return str(value if value > 0 else ctx.max_nodes)


def _scale(ptype: ProfileType, period_ns: int | None) -> int:
    """Multiplier from stored values to the type's sample unit."""
    return period_ns if ptype.as_samples and period_ns else 1


def _no_selectors(msg: Message, *names: str) -> None:
    """Refuse the selectors flamewatch cannot apply rather than answer without them (an empty
    one, as some clients send, is no selector)."""
    for name in names:
        value = getattr(msg, name)
        if value.ByteSize() if name == "stack_trace_selector" else len(value):
            raise ConnectError("unimplemented", f"{name} is not supported by flamewatch yet: leave it empty")


# -- querier.v1 methods --------------------------------------------------------------------------

async def profile_types(call: Call, msg: Message) -> Message:
    rng = _rng(msg.start, msg.end, call)  # type: ignore[attr-defined]
    got = await query.profile_types(call.store, params.RangeRequest(rng))
    out = M("querier.v1.ProfileTypesResponse")()
    for t in got["profile_types"]:
        out.profile_types.add(ID=t["id"], name=t["name"], sample_type=t["sample_type"], sample_unit=t["sample_unit"],
                              period_type=t["period_type"], period_unit=t["period_unit"])
    return out


async def label_names(call: Call, msg: Message) -> Message:
    rng = _rng(msg.start, msg.end, call)  # type: ignore[attr-defined]
    names: set[str] = set()
    for sel in _selectors(msg.matchers):  # type: ignore[attr-defined]
        names.update(await call.store.label_names(rng.first_window, rng.end, sel))
    return M("types.v1.LabelNamesResponse")(names=sorted(names - {PERIOD_LABEL}))


async def label_values(call: Call, msg: Message) -> Message:
    name = params.label_name(msg.name)  # type: ignore[attr-defined]
    rng = _rng(msg.start, msg.end, call)  # type: ignore[attr-defined]
    values: set[str] = set()
    for sel in _selectors(msg.matchers):  # type: ignore[attr-defined]
        values.update(await call.store.label_values(name, sel, rng.first_window, rng.end))
    return M("types.v1.LabelValuesResponse")(names=sorted(values))


async def series(call: Call, msg: Message) -> Message:
    """The label sets of the matching series (restricted to ``label_names`` when given)."""
    rng = _rng(msg.start, msg.end, call)  # type: ignore[attr-defined]
    keep = [params.label_name(n) for n in msg.label_names]  # type: ignore[attr-defined]
    found: set[tuple[tuple[str, str], ...]] = set()
    for sel in _selectors(msg.matchers):  # type: ignore[attr-defined]
        async for rows in _series_rows(call.store, sel, rng):
            for lab, _, _ in rows:
                found.add(tuple((k, v) for k, v in lab.items()
                                if k != PERIOD_LABEL and (not keep or k in keep)))
            if len(found) > MAX_SERIES:
                raise LimitError(f"more than {MAX_SERIES} series match: narrow the matchers or give "
                                 "label_names", MAX_SERIES)
    out = M("querier.v1.SeriesResponse")()
    for items in sorted(found):
        ls = out.labels_set.add()
        for k, v in items:
            ls.labels.add(name=k, value=v)
    return out


async def _series_rows(store: Store, sel: Selector, rng: params.Range
                       ) -> AsyncIterator[list[tuple[Labels, int, int]]]:
    """The matching series' rows, a bounded chunk at a time: with merged reads, totals summed
    per week (the timeline's largest step, so the store reads its day rollups) four weeks per
    call, a few rows per series whatever the range; else the series windows in time chunks."""
    if not isinstance(store, MergedReads):
        async for rows in heatmap.series_windows(store, sel, rng, HEATMAP_CHUNK_ROWS):
            yield rows
        return
    week = query.TIMELINE_STEPS[-1]
    t = rng.first_window
    while t < rng.end:
        end = min(rng.end, t - t % week + 4 * week)
        yield await store.totals(sel, t, end, (), step=week)
        t = end


async def _grouped(call: Call, req: params.TimelineRequest, group_by: list[str]
                   ) -> tuple[list[tuple[tuple[tuple[str, str], ...], list[list[int]]]], int | None]:
    """(labels of the group, [[window start, samples], ...]) per group, and the period.

    No or one label: ``/api/v1/timeline`` itself. Several labels (which /api/v1 has no route
    for): the same store totals, keyed by every label's value."""
    if len(group_by) <= 1:
        got = await query.timeline(call.store, replace(req, group_by=group_by[0] if group_by else ""))
        return [(((group_by[0], s["group"]),) if group_by and s["group"] else (), s["points"])
                for s in got["series"]], got["period_ns"]
    rng = req.rng
    if isinstance(call.store, MergedReads):
        rows = await call.store.totals(req.sel, rng.first_window, rng.end, tuple(group_by))
    else:
        from stacks.model import StackTable

        rows = [(w.labels, w.start, w.profile.total)
                for w in await call.store.read(req.sel, rng.first_window, rng.end, StackTable())]
    groups: dict[tuple[tuple[str, str], ...], dict[int, int]] = {}
    for lab, t, n in rows:
        key = tuple((g, lab.get(g, "")) for g in group_by if lab.get(g, ""))
        pts = groups.setdefault(key, {})
        pts[t] = pts.get(t, 0) + n
    fields = await query.type_fields(call.store, req.ptype, req.sel, rng)
    return [(k, sorted([t, n] for t, n in v.items())) for k, v in sorted(groups.items())], fields["period_ns"]


async def select_series(call: Call, msg: Message) -> Message:
    """``/api/v1/timeline`` points summed into ``step`` buckets, one series per group."""
    _no_selectors(msg, "stack_trace_selector")
    group_by = [params.label_name(g) for g in msg.group_by]  # type: ignore[attr-defined]
    if len(group_by) > MAX_GROUP_BY:
        raise InputError(f"group_by has {len(group_by)} labels: give at most {MAX_GROUP_BY}")
    req = params.TimelineRequest.parse({**_query(msg), "group_by": group_by[0] if group_by else ""}, call.ctx)
    groups, period_ns = await _grouped(call, req, group_by)
    scale = _scale(req.ptype, period_ns)
    window = req.rng.window
    step = msg.step  # type: ignore[attr-defined]
    if not (math.isfinite(step) and step >= 0):
        raise InputError(f"step={step} is not a number of seconds >= 0")
    bucket = max(window, math.ceil(step / window) * window) if step else window
    rows = []
    for labels, pts in groups:
        points: dict[int, int] = {}
        for t, n in pts:
            b = req.rng.first_window + (t - req.rng.first_window) // bucket * bucket
            points[b] = points.get(b, 0) + n
        rows.append((labels, points))
    limit = msg.limit  # type: ignore[attr-defined]
    if limit > 0 and len(rows) > limit:  # the heaviest series, as Pyroscope's limit keeps
        rows = sorted(rows, key=lambda r: -sum(r[1].values()))[:limit]
    out = M("querier.v1.SelectSeriesResponse")()
    for labels, points in rows:
        s = out.series.add()
        for k, v in labels:
            s.labels.add(name=k, value=v)
        for t in sorted(points):
            s.points.add(value=float(points[t] * scale), timestamp=t * 1000)
    return out


async def _flamegraph(call: Call, msg: Message) -> Message:
    p = {**_query(msg), "max_nodes": _max_nodes(msg.max_nodes, call.ctx), "format": "json"}  # type: ignore[attr-defined]
    req = params.RenderRequest.parse(p, call.ctx)
    doc = (await query.render(call.store, req)).body
    assert isinstance(doc, dict)
    fb = flamebearer.single(doc, _scale(req.ptype, doc["period_ns"]))
    fg = M("querier.v1.FlameGraph")(names=fb.names, total=fb.total, max_self=fb.max_self)
    add = fg.levels.add
    for level in fb.levels:
        add(values=level)
    return fg


async def _pprof(call: Call, msg: Message) -> bytes:
    """The merged profile as plain pprof bytes (the /api/v1/render?format=pprof answer, unzipped)."""
    req = params.RenderRequest.parse({**_query(msg), "format": "pprof"}, call.ctx)
    body = (await query.render(call.store, req)).body
    assert isinstance(body, bytes)
    return gzip.decompress(body)


async def select_merge_stacktraces(call: Call, msg: Message) -> Message:
    _no_selectors(msg, "stack_trace_selector", "profile_id_selector", "trace_id_selector", "span_selector")
    out = M("querier.v1.SelectMergeStacktracesResponse")()
    if msg.format == PPROF_FORMAT:  # type: ignore[attr-defined]
        out.pprof.profile.ParseFromString(await _pprof(call, msg))
    else:
        out.flamegraph.CopyFrom(await _flamegraph(call, msg))
    return out


async def select_merge_profile(call: Call, msg: Message) -> tuple[type, bytes]:
    _no_selectors(msg, "stack_trace_selector", "profile_id_selector", "trace_id_selector")
    return M("google.v1.Profile"), await _pprof(call, msg)


async def get_profile_stats(call: Call, msg: Message) -> Message:
    """Whether anything is stored, and the first and last window with data (ms)."""
    rng = _rng(0, 0, call)
    if isinstance(call.store, MergedReads):
        starts = [t for _, t, _ in await call.store.totals(Selector(()), rng.first_window, rng.end, MERGE_ALL)]
    else:
        from stacks.model import StackTable

        starts = [w.start for w in await call.store.read(Selector(()), rng.first_window, rng.end, StackTable())]
    out = M("types.v1.GetProfileStatsResponse")(data_ingested=bool(starts))
    if starts:
        out.oldest_profile_time, out.newest_profile_time = min(starts) * 1000, (max(starts) + rng.window) * 1000
    return out


MAX_SPAN_SELECTOR = 1000  # span ids one SelectMergeSpanProfile may name


async def select_merge_span_profile(call: Call, msg: Message) -> Message:
    """The merged flame graph of the samples tagged with the given span ids (what Grafana shows
    for a trace's span), from the span store: the same samples /api/v1/span_profile reads."""
    from stacks.tree import pruned_tree, to_json

    ids = [i.strip() for i in msg.span_selector if i.strip()]  # type: ignore[attr-defined]
    if not ids:
        raise ConnectError("invalid_argument", "span_selector is empty: give the span ids (hex) to merge")
    if len(ids) > MAX_SPAN_SELECTOR or any(len(i) > MAX_ID_CHARS for i in ids):
        raise ConnectError("invalid_argument", f"span_selector: at most {MAX_SPAN_SELECTOR} ids of at most "
                                               f"{MAX_ID_CHARS} characters")
    if msg.format == PPROF_FORMAT:  # type: ignore[attr-defined]
        raise ConnectError("unimplemented", "SelectMergeSpanProfile answers a flame graph (format 0), not pprof")
    if call.spans is None:
        raise ConnectError("unavailable", "the span store is not open")
    q = _query(msg)
    ptype = params.profile_type_param(q) if q["profile_type"] else None
    sel = user_selector(q)
    rng = _rng(msg.start, msg.end, call)  # type: ignore[attr-defined]
    got, profile, n, period = await call.spans.profile("span_id", ids, ptype, rng, sel)
    out = M("querier.v1.SelectMergeSpanProfileResponse")()
    if got is None or not n:
        return out  # nothing tagged with these spans: an empty flame graph, as Pyroscope answers
    max_nodes = int(_max_nodes(msg.max_nodes, call.ctx))  # type: ignore[attr-defined]
    doc = to_json(pruned_tree(profile, max_nodes=max_nodes))
    fb = flamebearer.single(doc, _scale(got, period))
    fg = out.flamegraph
    fg.names.extend(fb.names)
    fg.total, fg.max_self = fb.total, fb.max_self
    for level in fb.levels:
        fg.levels.add(values=level)
    return out


HEATMAP_CHUNK_ROWS = 500_000  # (series, window) rows one heatmap read holds at a time
HEATMAP_MAX_SPANS = 200_000  # root spans one span heatmap counts
SPAN_HEATMAP = _proto.enum_value("querier.v1.HeatmapQueryType", "HEATMAP_QUERY_TYPE_SPAN")


async def select_heatmap(call: Call, msg: Message) -> Message:
    """Counts of individual profiles (series windows) or root spans per (time slot, log value
    bucket), per group (aggregator/heatmap.py)."""
    group_by = [params.label_name(g) for g in msg.group_by]  # type: ignore[attr-defined]
    if len(group_by) > MAX_GROUP_BY:
        raise InputError(f"group_by has {len(group_by)} labels: give at most {MAX_GROUP_BY}")
    req = params.TimelineRequest.parse({**_query(msg), "group_by": ""}, call.ctx)
    rng = req.rng
    try:
        width = heatmap.slot_width(msg.step, rng.window, rng.end - rng.first_window)  # type: ignore[attr-defined]
    except ValueError as e:
        raise InputError(str(e)) from None
    hm = heatmap.Heatmap(rng.first_window, width)
    if msg.query_type == SPAN_HEATMAP:  # type: ignore[attr-defined]
        if call.spans is None:
            raise ConnectError("unavailable", "the span store is not open")
        spans, more = await call.spans.root_spans(user_selector(_query(msg)), rng, HEATMAP_MAX_SPANS)
        if more:
            raise LimitError(f"more than {HEATMAP_MAX_SPANS} root spans in the range: narrow the range or "
                             "the label selector", HEATMAP_MAX_SPANS)
        cpu = req.ptype == CPU  # a span's CPU time for the CPU type, its wall time for any other
        for labels, first, wall_ns, cpu_ns in spans:
            hm.add(heatmap.group_key(labels, group_by), first, cpu_ns if cpu else wall_ns)
    else:
        async for rows in heatmap.series_windows(call.store, req.sel, rng, HEATMAP_CHUNK_ROWS):
            for labels, t, total in rows:
                hm.add(heatmap.group_key(labels, group_by), t, heatmap.profile_value(req.ptype, labels, total))
    out = M("querier.v1.SelectHeatmapResponse")()
    limit = msg.limit  # type: ignore[attr-defined]
    for key, slots in hm.series(limit):
        s = out.series.add()
        for k, v in key:
            s.labels.add(name=k, value=v)
        for t, ys, counts in slots:
            s.slots.add(timestamp=t * 1000, y_min=ys, counts=counts)
    return out


async def settings_get(call: Call, msg: Message) -> Message:
    return M("settings.v1.GetSettingsResponse")()  # flamewatch keeps no per-tenant settings


Run = Callable[[Call, Message], Awaitable[Message | tuple[type, bytes]]]


@dataclass(frozen=True)
class Method:
    """One Connect method: its request message and what answers it."""

    path: str
    request: str
    run: Run


METHODS = (
    Method(QUERIER + "ProfileTypes", "querier.v1.ProfileTypesRequest", profile_types),
    Method(QUERIER + "LabelNames", "types.v1.LabelNamesRequest", label_names),
    Method(QUERIER + "LabelValues", "types.v1.LabelValuesRequest", label_values),
    Method(QUERIER + "Series", "querier.v1.SeriesRequest", series),
    Method(QUERIER + "SelectSeries", "querier.v1.SelectSeriesRequest", select_series),
    Method(QUERIER + "SelectMergeStacktraces", "querier.v1.SelectMergeStacktracesRequest", select_merge_stacktraces),
    Method(QUERIER + "SelectMergeProfile", "querier.v1.SelectMergeProfileRequest", select_merge_profile),
    Method(QUERIER + "SelectMergeSpanProfile", "querier.v1.SelectMergeSpanProfileRequest", select_merge_span_profile),
    Method(QUERIER + "SelectHeatmap", "querier.v1.SelectHeatmapRequest", select_heatmap),
    Method(QUERIER + "GetProfileStats", "types.v1.GetProfileStatsRequest", get_profile_stats),
    Method(SETTINGS_SERVICE + "Get", "settings.v1.GetSettingsRequest", settings_get),
)


# -- Connect unary transport -----------------------------------------------------------------------

def _codec(request: web.Request) -> str:
    ctype = request.content_type
    if ctype in ("application/proto", "application/x-protobuf", "application/protobuf"):
        return "proto"
    if ctype == "application/json":
        return "json"
    raise ConnectError("invalid_argument", f"Content-Type {ctype!r} is not supported: send application/proto "
                                           "or application/json (Connect unary)")


def _call(app: web.Application) -> Call:
    s = app[handlers.SETTINGS]
    return Call(app[handlers.READ_STORE], handlers.query_context(app), s.retention_seconds,  # as /api/v1
                app.get(handlers.SPANS))


async def _decode(request: web.Request, cls: type, codec: str) -> Message:
    body = await handlers.read_body(request)
    enc = (request.headers.get("Content-Encoding") or request.headers.get("Connect-Content-Encoding")
           or "identity").lower()
    if enc == "gzip":
        body = gunzip_capped(body, request.app[handlers.SETTINGS].max_decompressed_bytes)
    elif enc != "identity":
        raise ConnectError("unimplemented", f"Content-Encoding {enc!r} is not supported: send gzip or identity")
    msg = cls()
    try:
        if codec == "json":
            json_format.Parse(body or b"{}", msg, ignore_unknown_fields=True)
        else:
            msg.ParseFromString(body)
    except (json_format.ParseError, DecodeError, UnicodeDecodeError) as e:
        raise ConnectError("invalid_argument", f"request body is not a {cls.DESCRIPTOR.full_name} in "
                                               f"{codec}: {e}") from None
    return msg


def _encode(out: Message | tuple[type, bytes], codec: str, gzip_ok: bool) -> web.Response:
    if codec == "proto":
        body = out[1] if isinstance(out, tuple) else out.SerializeToString()
    else:
        if isinstance(out, tuple):
            msg = out[0]()
            msg.ParseFromString(out[1])
            out = msg
        body = json_format.MessageToJson(out, indent=None).encode()
    headers = {}
    if gzip_ok and len(body) >= GZIP_MIN_BYTES:
        # Connect unary response compression: the client asked with Accept-Encoding. Level 1: a
        # flame graph shrinks 2-5x in a few ms, which pays for itself on any real network.
        body, headers["Content-Encoding"] = gzip.compress(body, 1), "gzip"
    return web.Response(body=body, content_type=f"application/{codec}", headers=headers)


def _accepts_gzip(request: web.Request) -> bool:
    return any(e.split(";")[0].strip().lower() == "gzip" for e in request.headers.get("Accept-Encoding", "").split(","))


def connect_handler(method: Method) -> handlers.Handler:
    """The aiohttp handler of ``method``: decode, run, encode; every failure a Connect error."""
    cls = M(method.request)

    async def handle(request: web.Request) -> web.Response:
        m = request.app[handlers.METRICS]
        try:
            codec = _codec(request)
            msg = await _decode(request, cls, codec)
            return _encode(await method.run(_call(request.app), msg), codec, _accepts_gzip(request))
        except ConnectError as e:
            code, text = e.code, str(e)
        except LimitError as e:
            code, text = "resource_exhausted", str(e)
        except InputError as e:
            code, text = "invalid_argument", str(e)
        except web.HTTPRequestEntityTooLarge:
            code = "resource_exhausted"
            text = f"request body is larger than --max-body-bytes={request.app[handlers.SETTINGS].max_body_bytes}"
        except StoreError as e:
            log.error("storage failure on %s: %s", request.path, e)
            code, text = "unavailable", f"storage unavailable: {e}"
        except Exception as e:
            log.exception("internal error on %s", request.path)
            code, text = "internal", f"internal error: {type(e).__name__}: {e}"
        m.errors.labels(str(STATUS[code])).inc()
        return connect_error(code, text)

    return handle


async def _unknown(request: web.Request) -> web.Response:
    known = ", ".join(m.path.rsplit("/", 1)[1] for m in METHODS if m.path.startswith(QUERIER))
    return connect_error("unimplemented", f"{request.path} is not served by flamewatch; QuerierService has: {known}")


# -- legacy /pyroscope/* HTTP routes ---------------------------------------------------------------

def _legacy_time(value: str | None) -> str | None:
    """Pyroscope's legacy from/until: ``now-1h``, unix seconds, or unix milliseconds."""
    if value and value.isdigit() and len(value) >= 12:
        return str(int(value) // 1000)
    return value


def _legacy_params(q: Mapping[str, str], *keys: str) -> dict[str, str]:
    p = dict(q)
    for k in keys:
        if k in p:
            p[k] = _legacy_time(p[k]) or ""
    return p


# Pyroscope's legacy ``units`` of a flamebearer, by sample type.
def _units(ptype: ProfileType) -> str:
    if ptype.as_samples:
        return "samples"
    if ptype.sample_unit == "bytes":
        return "bytes"
    if "objects" in ptype.sample_type:
        return "objects"
    if ptype.sample_type.startswith("goroutine"):
        return "goroutines"
    if ptype.name in ("mutex", "block"):
        return "lock_nanoseconds" if ptype.sample_unit == "nanoseconds" else "lock_samples"
    return ""


def _metadata(ptype: ProfileType, period_ns: int | None, fmt: str) -> dict[str, Any]:
    rate = round(1e9 / period_ns) if ptype.as_samples and period_ns else 100
    return {"format": fmt, "spyName": "", "sampleRate": rate, "units": _units(ptype), "name": ptype.id}


async def handle_render(request: web.Request) -> web.Response:
    """``GET /pyroscope/render?query=TYPE{sel}&from&until&format=json``: Pyroscope's flamebearer."""
    call = _call(request.app)
    q = _legacy_params(request.query, "from", "until")
    if q.get("format", "json") != "json":
        raise InputError(f"format={q['format']!r}: /pyroscope/render answers json; use /api/v1/render "
                         "for folded, pprof and the rest")
    q["format"] = "json"
    q.setdefault("max_nodes", q.get("max-nodes") or q.get("maxNodes") or "")
    req = params.RenderRequest.parse(q, call.ctx)
    doc = (await query.render(call.store, req)).body
    assert isinstance(doc, dict)
    fb = flamebearer.single(doc)
    tl = await query.timeline(call.store, params.TimelineRequest.parse({**q, "group_by": ""}, call.ctx))
    points = tl["series"][0]["points"] if tl["series"] else []
    return web.json_response({
        "version": 1,
        "flamebearer": {"names": fb.names, "levels": fb.levels, "numTicks": fb.total, "maxSelf": fb.max_self},
        "metadata": {**_metadata(req.ptype, doc["period_ns"], "single"), "startTime": req.rng.start,
                     "endTime": req.rng.end, "query": q.get("query", "")},
        "timeline": {"startTime": req.rng.first_window, "samples": [n for _, n in points],
                     "durationDelta": tl["window"]},
    })


async def handle_render_diff(request: web.Request) -> web.Response:
    """``GET /pyroscope/render-diff?leftQuery&leftFrom&leftUntil&rightQuery&rightFrom&rightUntil``."""
    call = _call(request.app)
    q = _legacy_params(request.query, "leftFrom", "leftUntil", "rightFrom", "rightUntil")
    p = {"base": q.get("leftQuery", ""), "base_from": q.get("leftFrom", ""), "base_until": q.get("leftUntil", ""),
         "compare": q.get("rightQuery") or q.get("leftQuery", ""), "compare_from": q.get("rightFrom", ""),
         "compare_until": q.get("rightUntil", ""), "mode": "absolute", "format": "json",
         "max_nodes": q.get("max-nodes") or q.get("maxNodes") or ""}
    req = params.DiffRequest.parse(p, call.ctx)
    doc = (await query.diff(call.store, req)).body
    assert isinstance(doc, dict)
    fb = flamebearer.diff(doc)
    return web.json_response({
        "version": 1,
        "flamebearer": {"names": fb.names, "levels": fb.levels, "numTicks": fb.left_ticks + fb.right_ticks,
                        "maxSelf": fb.max_self},
        "metadata": _metadata(req.ptype, doc["period_ns"], "double"),
        "leftTicks": fb.left_ticks, "rightTicks": fb.right_ticks,
    })


async def handle_label_values(request: web.Request) -> web.Response:
    """``GET /pyroscope/label-values?label=NAME&query=SEL&from&until``: a JSON array."""
    call = _call(request.app)
    q = _legacy_params(request.query, "from", "until")
    name = q.get("label") or q.get("name") or ""
    ctx = params.Context(call.ctx.now, call.ctx.window, call.ctx.max_nodes, {"name": name})
    got = await query.label_values(call.store, params.LabelValuesRequest.parse(q, ctx))
    return web.json_response(got["values"])


async def handle_labels(request: web.Request) -> web.Response:
    """``GET /pyroscope/labels?query=TYPE{...}&from&until``: a JSON array of label names."""
    call = _call(request.app)
    q = _legacy_params(request.query, "from", "until")
    ptype, _ = params.typed_query(q)
    got = await query.labels(call.store, params.LabelsRequest(ptype, params.time_range(q, call.ctx.now,
                                                                                        call.ctx.window)))
    return web.json_response([n for n in got["names"] if n not in RESERVED])


def add_routes(app: web.Application) -> None:
    """Register the Connect methods and the /pyroscope/* routes on the aggregator's app."""
    for method in METHODS:
        app.router.add_post(method.path, connect_handler(method))
    app.router.add_post(QUERIER + "{method}", _unknown)
    app.router.add_get("/pyroscope/render", handle_render)
    app.router.add_get("/pyroscope/render-diff", handle_render_diff)
    app.router.add_get("/pyroscope/label-values", handle_label_values)
    app.router.add_get("/pyroscope/labels", handle_labels)
    app.router.add_post("/pyroscope/ingest", handlers.handle_ingest)
