"""Decoding pushes into (labels, time, profile) items for the window writer.

Pure apart from the shared :class:`IngestTables` (table and decoder caches); handlers in app.py
only read the body and call these. Every bad input raises
:class:`stacks.errors.InputError` naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aggregator.params import converted
from stacks import folded, otlp
from stacks.delta import BASELINE, DELTA_LABEL, RESET, needs_delta
from stacks.errors import InputError, LimitError
from stacks.gz import maybe_gunzip
from stacks.model import Labels, Profile, StackTable
from stacks.pprof import PprofDecoder
from stacks.profiletype import CPU, PERIOD_LABEL, TYPE_LABEL, WALL, ProfileType, columns, legacy_name, period_ns
from stacks.push import decode_push_request
from stacks.selector import LABEL_NAME

# Labels that are not dimensions of a series: the profile type marker (``__name__`` picks the
# type, kept as ``__profile_type__``), our own reserved labels (never taken from a client) and
# per-request ids that would make every push its own series. Span and trace ids are kept beside
# the samples instead (SPAN_ID_LABELS, aggregator/spans.py); ``span_name`` stays a label.
DROPPED_LABELS = frozenset({"__name__", "__delta__", "span_id", "profile_id", "trace_id", "__session_id__",
                            TYPE_LABEL, PERIOD_LABEL})
# Sample labels naming the (root) span a sample ran in: pyroscope-otel sets span_id (and trace_id);
# .NET's span processor sets profile_id. The first present is the span's id.
SPAN_ID_LABELS = ("span_id", "profile_id")
TRACE_ID_LABEL = "trace_id"
# The pyroscope-io SDK's wall mode (oncpu=False) sends exactly what its CPU mode sends
# (__name__=process_cpu, cpu/nanoseconds); a series tagged oncpu=false is stored as wall.
WALL_TAG = "oncpu"
_FALSE = frozenset({"false", "0", "no", "off"})
_APP_SUFFIXES = (".cpu", ".itimer")

Item = tuple[Labels, float | None, Profile]

# Label names stored at ingest follow the Prometheus rule, plus '.' as Pyroscope allows (the
# pyroscope-io SDK sends OTel names such as ``otel.scope.name``), so every stored name can be
# named by a selector (issue 24, cause 14). Reserved names (``__name__``...) pass it too.
STORED_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.]*")


def check_label_names(names: object, where: str) -> None:
    """InputError naming the first label name that breaks the Prometheus rule."""
    for k in names:  # type: ignore[attr-defined]
        if not STORED_LABEL_NAME.fullmatch(k):
            shown = k if len(k) <= 80 else k[:80] + "..."
            raise InputError(f"{where}: label name {shown!r} is not valid: label names match "
                             "[a-zA-Z_][a-zA-Z0-9_.]* (letters, digits, '_', '.'; not starting with a digit)")


@dataclass(frozen=True)
class Limits:
    """Per-request bounds of a push (``--max-profiles-per-push`` and friends): LimitError (413)
    naming the setting, checked before the work it bounds (decoding, storing)."""

    profiles: int = 10000
    series: int = 10000
    samples: int = 2_000_000

    def check(self, what: str, n: int, limit: int, setting: str) -> None:
        if n > limit:
            raise LimitError(f"push carries {n} {what}, more than --{setting}={limit}: split it into "
                             "smaller pushes or raise the setting", limit)


NO_LIMITS = Limits(1 << 62, 1 << 62, 1 << 62)

INT64_MAX = (1 << 63) - 1


class SumRefused(InputError):
    """A push whose counts sum past 2^63-1: refused (422) before anything is stored."""


def exact_total(profile: Profile) -> int:
    """The profile's total as an exact Python int (numpy's int64 sum would wrap past 2^63-1)."""
    c = profile.counts
    if not c.size:
        return 0
    if float(c.sum(dtype="float64")) < 2.0**62:
        return int(c.sum())
    return sum(c.tolist())


def check_sums(decoded: Decoded) -> None:
    """SumRefused when the push's counts, summed, pass the 64-bit count limit (issue 24, cause 6):
    counts are stored as exact 64-bit integers, so such a push could never be read back."""
    grand = 0
    for i, (_, _, profile) in enumerate(decoded.items):
        c = profile.counts
        if c.size and (int(c.min()) < 0 or int(c.max()) >= INT64_MAX):
            # Repeated samples are summed in int64, saturating at 2^63-1 (stacks.model): a count
            # that reached it may be such a sum, not the value sent; never store it as exact.
            raise SumRefused(f"push refused: a count of profile {i} reaches 2^63-1 = {INT64_MAX} (alone or "
                             "when its repeated samples were summed); counts are exact 64-bit integers below "
                             "it: send smaller counts")
        grand += exact_total(profile)
        if grand > INT64_MAX:
            raise SumRefused(f"push refused: its counts sum to more than 2^63-1 = {INT64_MAX} (at profile {i}); "
                             "counts are exact 64-bit integers: send smaller counts or fewer in one push")


@dataclass(frozen=True)
class SpanItem:
    """The samples of one span in one push of one profile type, kept beside the series."""

    span_id: str
    trace_id: str
    labels: Labels  # the series the samples were stored in (type, period, span_name included)
    t: float | None
    profile: Profile


@dataclass
class IngestTables:
    """The interning table shared by all ingests, plus the decoders' caches.

    Profiles of concurrent pushes on one table merge without rebasing. The
    table is swapped for a fresh one when it grows past ``limit`` stacks, so a
    long-running aggregator's memory stays bounded; the folded caches (stack
    text -> id on that table, each at most ``limit`` entries) are dropped with
    it, and the pprof decoder empties its own when it meets the new table.
    ``lines`` serves the pure-Python folded parser, ``index`` the compiled one.
    ``compiled`` chooses the compiled (Cython) readers where built
    (``flamewatch serve --compiled-readers``); False rules them out.
    """

    limit: int = 500_000
    table: StackTable = field(default_factory=lambda: StackTable(lines=True))  # pushes keep file:line
    lines: dict[str, int] = field(default_factory=dict)
    index: folded.StackIndex | None = None
    compiled: bool = True
    pprof: PprofDecoder = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.pprof = PprofDecoder(compiled=self.compiled)

    def current(self) -> StackTable:
        """The table to intern into (a fresh one once the current one passed ``limit`` stacks)."""
        if len(self.table) > self.limit:
            self.table = StackTable(lines=True)
            self.lines = {}
            self.index = None
        return self.table

    def folded_index(self) -> folded.StackIndex | None:
        """The compiled index of the current table (made on first use), or None when not compiled."""
        table = self.current()
        if self.index is None or self.index.table is not table:
            self.index = folded.new_index(table, self.limit, compiled=self.compiled)
        return self.index

    def in_use(self) -> dict[str, bool]:
        """Which compiled readers these tables decode with."""
        return {"pprof": self.pprof.compiled, "folded": self.compiled and folded.BUILT,
                "otlp": self.compiled and otlp.BUILT}


@dataclass(frozen=True)
class Cumulative:
    """A running-total profile of a push, waiting to be differenced against its series' last
    push (:func:`take_deltas`); kept aside so the state can live in the store (issue 23 item 5)."""

    labels: Labels
    t: float | None
    profile: Profile
    ptype: str  # profile type id
    span_id: str = ""
    trace_id: str = ""


@dataclass
class Decoded:
    """What one request carried."""

    items: list[Item]
    lines: int = 0  # stack lines / pprof samples merged
    spans: list[SpanItem] = field(default_factory=list)  # span-tagged samples, also in ``items``
    skipped: dict[str, int] = field(default_factory=dict)
    # (reason, profile type id) -> amount accepted but not stored (cumulative baselines)
    not_stored: dict[tuple[str, str], int] = field(default_factory=dict)
    # Running-total profiles not yet differenced: aggregator.cumulative turns them into items.
    cumulative: list[Cumulative] = field(default_factory=list)

    def add(self, other: Decoded) -> None:
        """Take in another request part's items and counts."""
        self.items.extend(other.items)
        self.spans.extend(other.spans)
        self.cumulative.extend(other.cumulative)
        self.lines += other.lines
        for k, v in other.skipped.items():
            self.skipped[k] = self.skipped.get(k, 0) + v
        for key, n in other.not_stored.items():
            self.not_stored[key] = self.not_stored.get(key, 0) + n


def typed(labels: Labels, ptype: ProfileType, period: int | None) -> Labels:
    """``labels`` plus the reserved type (and, for samples-stored types, period) labels."""
    extra = {TYPE_LABEL: ptype.id}
    if period is not None:
        extra[PERIOD_LABEL] = str(period)
    return Labels.of({**dict(labels.items_), **extra})


# -- folded ----------------------------------------------------------------------------------
def parse_folded(body: bytes | str, tables: IngestTables) -> tuple[Profile, int]:
    """Folded text -> (profile on the shared table, lines read).

    :func:`stacks.folded.parse` with the shared stack-text caches, so a stack
    seen in an earlier push costs one lookup: in C on the raw bytes when
    ``stacks._folded_c`` is built, else one dict lookup after decoding.
    """
    if isinstance(body, str):
        return folded.parse_counted(body, tables.current(), cache=tables.lines, cache_limit=tables.limit)
    index = tables.folded_index()
    try:
        return folded.parse_bytes(
            body, tables.table, index=index, cache=tables.lines, cache_limit=tables.limit
        )
    except UnicodeDecodeError as e:
        raise InputError(
            f"folded body is not UTF-8 text (byte {e.start}): send 'a;b;c 42' lines"
        ) from None


# -- legacy /ingest ----------------------------------------------------------------------------
def parse_app_name(name: str) -> Labels:
    """``app.cpu{k=v,k2=v2}`` -> labels with service_name=app. Raises InputError."""
    if not name:
        raise InputError("missing ?name=: give the application name, e.g. name=myapp{env=prod}")
    app, brace, rest = name.partition("{")
    app = app.strip()
    for suffix in _APP_SUFFIXES:
        if app.endswith(suffix):
            app = app[: -len(suffix)]
    if not app:
        raise InputError(f"name={name!r} has no application name before '{{': use e.g. myapp{{env=prod}}")
    labels: dict[str, str] = {}
    if brace:
        if not rest.endswith("}"):
            raise InputError(f"name={name!r} is missing the closing '}}': use e.g. myapp{{env=prod}}")
        body = rest[:-1].strip()
        for part in filter(None, (p.strip() for p in body.split(","))):
            k, eq, v = part.partition("=")
            k, v = k.strip(), v.strip().strip('"')
            if not eq or not LABEL_NAME.fullmatch(k):
                raise InputError(f"name={name!r}: tag {part!r} is not key=value (use e.g. myapp{{env=prod}})")
            labels[k] = v
    for k in DROPPED_LABELS:
        labels.pop(k, None)
    check_label_names(labels, f"name={name!r}")
    labels["service_name"] = app
    return Labels.of(labels)


def _float_param(params: Mapping[str, str], key: str) -> float | None:
    """A time parameter of /ingest in unix seconds (nanoseconds and milliseconds are scaled)."""
    v = converted(params, key, float, "is not a number: give unix seconds")
    if v is None:
        return None
    if v > 1e15:  # nanoseconds
        v /= 1e9
    elif v > 1e12:  # milliseconds
        v /= 1e3
    return v


def _midpoint(start: float | None, end: float | None) -> float | None:
    if start and end:
        if end < start:
            raise InputError(f"until={end} is before from={start}")
        return (start + end) / 2
    return start or end


def decode_ingest(
    params: Mapping[str, str], body: bytes, tables: IngestTables, max_decompressed: int,
    limits: Limits = NO_LIMITS,
) -> Decoded:
    """The legacy ``/ingest`` route: folded (default) or pprof body."""
    got = _decode_ingest(params, body, tables, max_decompressed)
    limits.check("samples", got.lines, limits.samples, "max-samples-per-push")
    return got


def _decode_ingest(
    params: Mapping[str, str], body: bytes, tables: IngestTables, max_decompressed: int
) -> Decoded:
    base = parse_app_name(params.get("name", ""))
    t = _midpoint(_float_param(params, "from"), _float_param(params, "until"))
    rate = params.get("sampleRate")
    period: int | None = None
    if rate not in (None, ""):
        try:
            if float(rate) <= 0:
                raise ValueError
        except ValueError:
            raise InputError(f"sampleRate={rate!r} must be a positive number (Hz)") from None
        period = round(1e9 / float(rate))
    fmt = (params.get("format") or "folded").lower()
    raw = maybe_gunzip(body, max_decompressed)
    if fmt in ("folded", "lines", "collapsed", "trie"):
        if fmt == "trie":
            raise InputError("format=trie is not supported: send format=folded or format=pprof")
        profile, n = parse_folded(raw, tables)
        # Folded text is CPU samples (Pyroscope's legacy default); sampleRate gives the period.
        return Decoded([(typed(base, CPU, period), t, profile)], n)
    if fmt == "pprof":
        return _from_pprof(base, raw, t, tables, max_decompressed, None)
    raise InputError(f"format={fmt!r} is not supported: use format=folded or format=pprof")


# -- pprof / push ------------------------------------------------------------------------------
def _from_pprof(
    base: Labels, raw: bytes, t: float | None, tables: IngestTables, max_decompressed: int, name: str | None,
    delta: str | None = "false",
) -> Decoded:
    """Every sample type (column) of one pprof as its own profile type.

    ``name`` is the push's ``__name__`` (None on ``/ingest``: Pyroscope's rule by sample types).
    ``delta`` is the push's ``__delta__`` label: unless ``"false"``, Go's cumulative allocation
    columns are differenced against the series' last push (:mod:`stacks.delta`); ``/ingest``
    bodies are deltas already (Pyroscope's ingest adapter sets ``__delta__="false"``).
    """
    raw = maybe_gunzip(raw, max_decompressed)  # once, not once per column
    decode = tables.pprof.decode
    first = decode(raw, tables.current(), max_decompressed=max_decompressed, column=None)
    out = Decoded([])
    if not first.types:
        return out
    if name is None:
        name = legacy_name([st for st, _ in first.types])
    wall_mode = base.get(WALL_TAG, "").lower() in _FALSE
    if WALL_TAG in base:
        base = Labels.of({k: v for k, v in base.items_ if k != WALL_TAG})
    if first.time_nanos:
        t = (first.time_nanos + first.duration_nanos / 2) / 1e9
    head = (first.sample_type, first.unit)
    chosen = first.types.index(head) if head in first.types else -1
    for col, ptype in columns(name, list(first.types), first.period_type, first.period_unit):
        if wall_mode and ptype == CPU:
            ptype = WALL
        d = first if col == chosen else decode(raw, tables.current(), max_decompressed=max_decompressed, column=col)
        series_base = typed(base, ptype, period_ns(ptype, first.period))
        cumulative = needs_delta(ptype, delta)
        for sample_labels, profile in d.series:
            labels = series_base
            if sample_labels:
                extra = {k: v for k, v in sample_labels.items() if k not in DROPPED_LABELS}
                check_label_names(extra, "pprof sample label")
                labels = Labels.of({**extra, **dict(series_base.items_)}) if extra else series_base
            span = next((sample_labels[k] for k in SPAN_ID_LABELS if sample_labels and sample_labels.get(k)), "")
            if cumulative:  # differenced against the shared state later (aggregator.cumulative)
                trace = sample_labels.get(TRACE_ID_LABEL, "") if span else ""
                out.cumulative.append(Cumulative(labels, t, profile, ptype.id, span, trace))
                continue
            out.items.append((labels, t, profile))
            out.lines += len(profile)
            if span:
                out.spans.append(SpanItem(span, sample_labels.get(TRACE_ID_LABEL, ""), labels, t, profile))
    return out


def take_deltas(decoded: Decoded, results: Sequence[tuple[Profile | None, str]]) -> None:
    """Put the differenced ``decoded.cumulative`` profiles (``results``, in their order, from
    :mod:`aggregator.cumulative`) among the push's items; a baseline (None) is counted in
    ``not_stored`` with its reason, a push where nothing grew adds nothing."""
    for p, (got, why) in zip(decoded.cumulative, results, strict=True):
        if got is None:
            key = (why, p.ptype)
            decoded.not_stored[key] = decoded.not_stored.get(key, 0) + p.profile.total
            continue
        if not len(got):
            continue
        decoded.items.append((p.labels, p.t, got))
        decoded.lines += len(got)
        if p.span_id:
            decoded.spans.append(SpanItem(p.span_id, p.trace_id, p.labels, p.t, got))
    decoded.cumulative = []


def _series_labels(pairs: tuple[tuple[str, str], ...]) -> tuple[Labels, str, str | None]:
    """A push series' labels without the reserved ones, its ``__name__`` and its ``__delta__``."""
    d = dict(pairs)
    check_label_names(d, "push series")
    name, delta = d.get("__name__", ""), d.get(DELTA_LABEL)
    for k in DROPPED_LABELS:
        d.pop(k, None)
    return Labels.of(d), name, delta


def _fields(buf: bytes, start: int, end: int) -> Any:
    """(field number, (value start, value end) or None) of the protobuf fields in buf[start:end];
    stops quietly at malformed bytes (the real decoder names them)."""
    i = start
    while i < end:
        key, shift = 0, 0
        while True:
            if i >= end or shift > 63:
                return
            c = buf[i]
            i += 1
            key |= (c & 0x7F) << shift
            shift += 7
            if c < 0x80:
                break
        wt = key & 7
        if wt == 0:
            while i < end and buf[i] & 0x80:
                i += 1
            i += 1
            yield key >> 3, None
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        elif wt == 2:
            n, shift = 0, 0
            while True:
                if i >= end or shift > 63:
                    return
                c = buf[i]
                i += 1
                n |= (c & 0x7F) << shift
                shift += 7
                if c < 0x80:
                    break
            if i + n > end:
                return
            yield key >> 3, (i, i + n)
            i += n
        else:
            return


def precount_push(raw: bytes, limits: Limits) -> None:
    """Series and raw_profile entries of a PushRequest counted on the wire, stopping just past
    the limits: a 1 KB push of 500,000 empty profiles is refused before protobuf builds them
    (one long C call that holds the GIL, so it would stall the event loop; issue 24, cause 2)."""
    if limits is NO_LIMITS:
        return
    series = profiles = 0
    for field_no, span in _fields(raw, 0, len(raw)):
        if field_no != 1 or span is None:
            continue
        series += 1
        limits.check("series", series, limits.series, "max-series-per-push")
        for inner, _ in _fields(raw, span[0], span[1]):
            if inner == 2:
                profiles += 1
                if profiles > limits.profiles:
                    limits.check("profiles (raw_profile entries; counting stopped there)", profiles,
                                 limits.profiles, "max-profiles-per-push")


def decode_push(body: bytes, tables: IngestTables, max_decompressed: int, limits: Limits = NO_LIMITS) -> Decoded:
    """A Connect ``PushRequest`` (gzip or plain protobuf)."""
    raw = maybe_gunzip(body, max_decompressed)
    precount_push(raw, limits)
    series = decode_push_request(raw)
    return _decode_series([(s.labels, [r.raw_profile for r in s.samples]) for s in series],
                          tables, max_decompressed, limits)


def decode_push_json(body: bytes, tables: IngestTables, max_decompressed: int,
                     limits: Limits = NO_LIMITS) -> Decoded:
    """The Connect JSON form: ``{"series": [{"labels": [...], "samples": [{"rawProfile": b64}]}]}``."""
    raw = maybe_gunzip(body, max_decompressed)
    try:
        doc = json.loads(raw)
        series = []
        for s in doc.get("series", []):
            labels = tuple((str(lp["name"]), str(lp.get("value", ""))) for lp in s.get("labels", []))
            profiles = [
                base64.b64decode(x.get("rawProfile", ""), validate=True) for x in s.get("samples", [])
            ]
            series.append((labels, profiles))
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error, RecursionError) as e:
        raise InputError(
            f"push JSON is not a Connect PushRequest ({type(e).__name__}: {e}); expected "
            '{"series": [{"labels": [{"name": ..., "value": ...}], "samples": [{"rawProfile": BASE64}]}]}'
        ) from None
    return _decode_series(series, tables, max_decompressed, limits)


def _decode_series(
    series: list[tuple[tuple[tuple[str, str], ...], list[bytes]]], tables: IngestTables, max_decompressed: int,
    limits: Limits = NO_LIMITS,
) -> Decoded:
    limits.check("series", len(series), limits.series, "max-series-per-push")
    limits.check("profiles (raw_profile entries)", sum(len(p) for _, p in series), limits.profiles,
                 "max-profiles-per-push")
    out = Decoded([])
    for i, (pairs, profiles) in enumerate(series):
        labels, name, delta = _series_labels(pairs)
        if "service_name" not in labels:
            raise InputError(
                f"push series {i} has no service_name label: set the application name in the SDK"
            )
        for j, rawp in enumerate(profiles):
            try:
                d = _from_pprof(labels, rawp, None, tables, max_decompressed, name or None, delta)
            except InputError as e:
                raise e.within(f"push series {i} sample {j}") from None
            out.add(d)
            limits.check("samples", out.lines, limits.samples, "max-samples-per-push")
    return out


def answer(placed: Any, decoded: Decoded, retention_seconds: int) -> dict[str, Any]:
    """The JSON answer of a push: what was stored per profile type, and what was not and why.

    ``placed`` is :class:`aggregator.windows.Placed`. ``not_stored`` lists every amount that
    was accepted but not kept; ``warning`` says the same in a sentence (empty when all was kept).
    """
    dropped = dict(placed.dropped_by_type)
    for key, n in decoded.not_stored.items():
        dropped[key] = dropped.get(key, 0) + n
    not_stored = [
        {"reason": reason, "profile_type": ptype, "unit": _unit(ptype), "amount": n}
        for (reason, ptype), n in sorted(dropped.items())
    ]
    why = {"older_than_retention": f"older than the retention of {retention_seconds} s", **_DELTA_WHY}
    warning = "; ".join(
        f"{x['amount']} {x['unit']} of {x['profile_type']} not stored: {why.get(x['reason'], x['reason'])}"
        for x in not_stored
    )
    return {
        "samples": placed.samples, "series": len({i[0] for i in decoded.items}),
        "windows": sorted(placed.windows), "dropped": placed.dropped, "skipped": decoded.skipped,
        "stored": dict(sorted(placed.by_type.items())), "not_stored": not_stored, "warning": warning,
    }  # fmt: skip


# Reasons a 2xx answer gives for amounts it kept only as a cumulative baseline.
_DELTA_WHY = {
    BASELINE: "first running-total (cumulative) profile of its series, kept as the baseline the next "
              "push is differenced from; send __delta__=false if the SDK already sends deltas",
    RESET: "values fell below the last push (the process restarted), kept as the new baseline",
}
# Reasons that refuse data: a push whose every amount has one of these gets a 422.
REFUSED = frozenset({"older_than_retention"})


def _unit(type_id: str) -> str:
    try:
        return ProfileType.parse(type_id).unit
    except InputError:
        return "samples"
