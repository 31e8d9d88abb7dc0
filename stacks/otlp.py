"""OTLP profiles (``ExportProfilesServiceRequest``, profiles ``v1development``) -> profiles (pure).

The messages are the ``opentelemetry-proto`` package's (the shape with one
request-wide ``ProfilesDictionary`` and a ``stack_table``, opentelemetry-proto
1.40 to 1.45). ``Sample``'s field numbers differ between profiles proto v1.8.0
(values 2, attribute_indices 3, link_index 4: opentelemetry-proto 1.40 and the
Collector's pdata 1.46, e.g. the OpenTelemetry eBPF profiler v0.0.202547 and the
Python SDK extension 0.63b) and v1.9.0 (attribute_indices 2, link_index 3,
values 4: opentelemetry-proto 1.45); a profile whose first samples hold field 3
length-delimited is read with v1.8.0's numbers (``stacks._otlp_fast.SampleV1_8``), others with
v1.9.0's (``SampleV1_9``), whichever the installed package has. One
:class:`OtlpSeries` comes out per (resource, scope, profile, series labels):
every OTLP ``Profile`` has exactly one sample type, which becomes its Pyroscope
five-part profile type (:func:`profile_type`).

Labels: resource and scope attributes (string, int, bool values) become labels,
keys made label-safe (``.`` and ``-`` to ``_``), the usual OpenTelemetry ones
renamed to flamewatch's (:data:`RENAMED`: ``service.name`` -> ``service_name``,
``k8s.namespace.name`` -> ``namespace``, ...). A few sample attributes that
name a process or a thread (:data:`SAMPLE_LABELS`) split a profile into series
as pprof string labels do; per-event ids (``thread.id``, ``process.pid``) do not.

Span ids: the link table's ``span_id`` of every sample is not a series label
(one series per span would be unbounded); the amounts per span are kept aside
in :attr:`OtlpSeries.spans` (span id hex -> value), the hook for attributing
profiles to spans (docs/aggregator.md, "OTLP profiles").

Bounds: at most :data:`MAX_LABELS` labels per series, label values cut at
:data:`MAX_VALUE` characters, and every index checked against its table
(:class:`~stacks.errors.InputError` naming the table otherwise).

Readers: the stack table and samples are read by ``stacks._otlp_c`` (compiled, stacks found by a
keyed hash) where built and chosen (``OtlpCache(compiled=...)``), else in bulk with numpy
(``stacks._otlp_fast``); both step aside for anything unusual, and the per-message path (the
``opentelemetry-proto`` classes, the reference) reads it or names the bad field.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
    ExportProfilesServiceResponse,
)

from stacks import _otlp_fast as _fast
from stacks.errors import InputError
from stacks.model import Frame, Kind, Profile, StackTable
from stacks.profiletype import CPU, TIME_UNITS_NS, WALL, ProfileType, derive, legacy_name

# ``stacks._otlp_c`` (Cython, built by ``pip install``) reads the stack table in C and finds
# known stacks by hash; without it (or with ``OtlpCache(compiled=False)``) the numpy reader
# and a dict of id sequences give the same stacks.
try:
    from stacks import _otlp_c
except ImportError:  # pragma: no cover - no C compiler at install time
    _otlp_c = None

BUILT = _otlp_c is not None

__all__ = [
    "ExportProfilesServiceRequest",
    "ExportProfilesServiceResponse",
    "OtlpSeries",
    "decode_export_request",
    "profile_type",
]

OTLP_PATH = "/v1development/profiles"
"""The OTLP/HTTP route of profiles (OTLP exporters append it to their endpoint)."""
GRPC_EXPORT = "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export"

# OpenTelemetry semantic-convention attributes -> flamewatch's label names.
RENAMED = {
    "service.name": "service_name",
    "k8s.namespace.name": "namespace",
    "k8s.pod.name": "pod",
    "k8s.container.name": "container",
    "k8s.node.name": "node",
    "host.name": "host",
}
# Sample attributes that become series labels (bounded sets: a process or thread name);
# everything else on a sample (thread.id, process.pid, exception messages) is per event.
SAMPLE_LABELS = {
    "process.executable.name": "process",
    # The eBPF profiler names a sample's service when the process's APM agent told it (it wins
    # over the resource's, which that profiler never sets).
    "service.name": "service_name",
    "thread.name": "thread_name",
    "container.id": "container_id",
}
# Attributes never taken as labels: per-process ids that would make a series per restart,
# and our own reserved names.
_SKIPPED = frozenset({"process.pid", "process.parent_pid", "thread.id", "service.instance.id",
                      "__profile_type__", "__period__", "__name__", "__delta__"})
# The eBPF profiler's location attribute naming a frame's kind (kernel frames are drawn green).
FRAME_TYPE = "profile.frame.type"
MAX_LABELS = 64
MAX_VALUE = 1024
SPY_LABEL = "pyroscope_spy"
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
# Scope names of host-wide profilers: their series say pyroscope_spy=ebpfspy, like
# Pyroscope's own eBPF profiler (the rule that never counts a process twice reads it).
_EBPF_SCOPES = ("go.opentelemetry.io/ebpf-profiler", "ebpf-profiler", "otel-ebpf-profiler")


@dataclass
class OtlpSeries:
    """One series of a request: labels (without the type), type, period (ns, or None for types
    stored as sent), the profile's time, and counts per stack in the type's stored unit."""

    labels: dict[str, str]
    ptype: ProfileType
    period: int | None
    time_nanos: int
    duration_nanos: int
    profile: Profile
    samples: int = 0
    spans: dict[str, int] = field(default_factory=dict)


def _label_key(key: str) -> str:
    name = RENAMED.get(key)
    if name:
        return name
    name = _UNSAFE.sub("_", key)
    return name if not name[:1].isdigit() else "_" + name


def _any_value(v: Any) -> str | None:
    """A label value from an OTLP ``AnyValue`` (string, int, bool, double); None for the rest."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value[:MAX_VALUE]
    if kind == "int_value":
        return str(v.int_value)
    if kind == "bool_value":
        return "true" if v.bool_value else "false"
    if kind == "double_value":
        return repr(v.double_value)
    return None


def _attributes(kvs: Any, out: dict[str, str], what: str) -> None:
    for kv in kvs:
        if kv.key in _SKIPPED:
            continue
        value = _any_value(kv.value)
        if value:
            out[_label_key(kv.key)] = value
    if len(out) > MAX_LABELS:
        raise InputError(f"{what} has {len(out)} attributes: at most {MAX_LABELS} become labels; "
                         "drop some with the collector's resource processor")


def profile_type(sample_type: str, sample_unit: str, period_type: str, period_unit: str) -> ProfileType:
    """The Pyroscope type of an OTLP profile's one sample type.

    ``samples``/``count`` counted at a time period (what the eBPF profiler and the Python SDK
    send: one sample per ``period`` of CPU or wall time) is the time itself, as Pyroscope shows it:
    CPU (``process_cpu:cpu:nanoseconds:cpu:nanoseconds``) for a ``cpu`` period, wall for ``wall``.
    Every other sample type keeps its own type and unit, named by Pyroscope's rule
    (:func:`~stacks.profiletype.legacy_name`, then the period type).
    """
    st, su, pt, pu = sample_type.strip(), sample_unit.strip(), period_type.strip(), period_unit.strip()
    if st in ("samples", "sample", "") and su in ("count", "") and pu in TIME_UNITS_NS:
        if pt in ("cpu", ""):
            return CPU
        if pt == "wall":
            return WALL
    if st == "cpu" and su in TIME_UNITS_NS:
        return CPU if su == "nanoseconds" else derive("process_cpu", st, su, pt, pu)
    if st == "wall" and su in TIME_UNITS_NS:
        return WALL if su == "nanoseconds" else derive("wall", st, su, pt, pu)
    name = legacy_name([st]) if st else ""
    if name in ("", "process_cpu") or name == st:
        # No rule matched: the period type names the kind (lock.wait, memory.heap, exceptions).
        base = pt.split(".")[0] if pt else st.split(".")[0]
        name = {"lock": "mutex", "memory": "memory", "exceptions": "exceptions"}.get(base, base or "process_cpu")
        if "cpu" in st and su in TIME_UNITS_NS:
            name = "process_cpu"
    return derive(name, st.replace(".", "_"), su, pt.replace(".", "_"), pu)


class OtlpCache:
    """What later requests can reuse (each request's dictionary indices are its own): a global id
    per distinct location (its frames), and the interned stack of each sequence of those ids, on
    one :class:`StackTable` (reset when the caller moves to a fresh table). Both bounded."""

    LIMIT = 500_000

    def __init__(self, compiled: bool = True) -> None:
        self.compiled = compiled and BUILT
        self.table: StackTable | None = None
        self.gids: dict[tuple[Frame, ...], int] = {}
        self.frames: list[tuple[Frame, ...]] = []
        self.by_name: dict[str, int] = {}  # a one-line user frame's name -> its global id
        self.by_line: dict[tuple[str, str, int], int] = {}  # the same by (name, file, line)
        self.stacks: dict[bytes, int] = {}  # int32 gids (native order) -> stack id; -1: empty
        self.index: Any = None  # compiled: hash of a gid sequence -> stack id (stacks/_otlp_c.pyx)

    def on(self, table: StackTable) -> OtlpCache:
        """This cache for ``table``: emptied when the table is another one or a part is past
        ``LIMIT`` (stack ids belong to one table, and stack keys are made of location ids)."""
        big = len(self.index) > self.LIMIT if self.index is not None else False
        if table is not self.table or len(self.gids) > self.LIMIT or len(self.stacks) > self.LIMIT or big:
            self.table = table
            self.gids, self.frames = {}, []
            self.by_name, self.by_line = {}, {}
            self.stacks = {}
            self.index = None
        if self.compiled and self.index is None:
            assert _otlp_c is not None
            # A random key per cache: colliding stacks cannot be prepared offline (as for pprof).
            self.index = _otlp_c.OtlpIndex(secrets.randbits(64), secrets.randbits(64))
        return self

    def gid(self, frames: tuple[Frame, ...]) -> int:
        g = self.gids.get(frames)
        if g is None:
            g = self.gids[frames] = len(self.frames)
            self.frames.append(frames)
        return g


class _Tables:
    """The request's dictionary, with its locations mapped to the cache's global ids."""

    def __init__(self, d: Any, table: StackTable, cache: OtlpCache) -> None:
        self.strings = list(d.string_table)
        self.functions = d.function_table
        self.locations = d.location_table
        self.mappings = d.mapping_table
        self.stacks = d.stack_table
        self.links = d.link_table
        self.attrs = d.attribute_table
        self.table = table
        self.lines = table.lines  # frames keep Function.filename_strindex and Line.line
        self.cache = cache.on(table)
        self.sids: dict[int, int] = {}
        self.frame_type_key = -1
        for i, s in enumerate(self.strings):
            if s == FRAME_TYPE:
                self.frame_type_key = i
                break
        n_str = len(self.strings)
        self.fnames = [self.strings[f.name_strindex] if 0 <= f.name_strindex < n_str else None
                       for f in self.functions]
        gid = self.cache.gid
        simple = _fast.simple_locations(list(self.locations))
        if simple is None:
            self.loc_gid = [gid(self.location_frames(li)) for li in range(len(self.locations))]
        else:
            # One line, no attributes (no kernel mark): the frame is the function's name.
            fnames = self.fnames
            n_f = len(fnames)
            by_name = self.cache.by_name
            loc_gid = []
            fis, line_of = simple
            if not self.lines:
                for li, fi in enumerate(fis.tolist()):
                    name = fnames[fi] if 0 <= fi < n_f else None
                    if not name:
                        loc_gid.append(gid(self.location_frames(li)))
                        continue
                    g = by_name.get(name)
                    if g is None:
                        g = by_name[name] = gid((Frame(name),))
                    loc_gid.append(g)
            else:
                # By line, the frame is (name, file, line): the scan read the line too; a
                # location whose Line holds more (a column) takes the message path.
                by_line = self.cache.by_line
                files = self.files
                for li, (fi, line) in enumerate(zip(fis.tolist(), line_of.tolist(), strict=True)):
                    name = fnames[fi] if 0 <= fi < n_f else None
                    if not name or line < 0:
                        loc_gid.append(gid(self.location_frames(li)))
                        continue
                    key = (name, files[fi], line)
                    g = by_line.get(key)
                    if g is None:
                        g = by_line[key] = gid((Frame(name, Kind.USER, files[fi], line),))
                    loc_gid.append(g)
            self.loc_gid = loc_gid
        # Every stack's id at once from the raw entries (stacks/_otlp_fast.py); None: per stack below.
        self.sid_of: np.ndarray | None = None
        if self.cache.index is not None:
            self.sid_of = self._compiled_sids()
            if self.sid_of is not None:
                return
        got = _fast.stack_gids(self.stacks, np.asarray(self.loc_gid, np.int64))
        if got is not None:
            self.sid_of = self._sids(*got)

    def _compiled_sids(self) -> np.ndarray | None:
        """Every stack's id through ``stacks._otlp_c`` (known stacks found by hash in C; the new
        ones interned here, once each); None for an unusual table (the other readers decide)."""
        assert _otlp_c is not None
        index = self.cache.index
        entries = list(self.stacks)
        got = _otlp_c.stack_ids(entries, np.asarray(self.loc_gid, np.int32), index)
        if got is None:
            return None
        ids, h1, h2 = got
        new = np.flatnonzero(ids == -2)
        if len(new):
            loc_gid = self.loc_gid
            lookup, insert = index.lookup, index.insert
            for k, a, b in zip(new.tolist(), h1[new].tolist(), h2[new].tolist(), strict=True):
                sid = lookup(a, b)
                if sid < 0:
                    try:
                        idx = _fast.StackMsg.FromString(entries[k]).location_indices
                    except (DecodeError, RecursionError, ValueError) as e:
                        raise InputError(f"OTLP stack {k} is not a Stack message ({e})") from None
                    sid = self._intern([loc_gid[i] for i in idx])
                    insert(a, b, sid)
                ids[k] = sid
        return ids

    def _sids(self, gids: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        gb = gids.tobytes()
        cache = self.cache.stacks
        ends = (starts + counts) * 4
        keys = [gb[a:b] for a, b in zip((starts * 4).tolist(), ends.tolist(), strict=True)]
        get = cache.get
        sids = [get(k, -2) for k in keys]
        for i, sid in enumerate(sids):
            if sid == -2:  # not seen before: intern once
                a = int(starts[i])
                sids[i] = cache[keys[i]] = self._intern(gids[a:a + int(counts[i])].tolist())
        return np.asarray(sids, np.int64)

    def _intern(self, gids: list[int]) -> int:
        """The interned stack of a leaf-first list of global location ids (-1 when it has no frames)."""
        if not gids:
            return -1
        frames_of = self.cache.frames
        return self.table.intern([f for g in reversed(gids) for f in reversed(frames_of[g])])

    def string(self, i: int, what: str) -> str:
        if not 0 <= i < len(self.strings):
            raise InputError(f"OTLP {what} string index {i} is outside the string table "
                             f"({len(self.strings)} strings)")
        return self.strings[i]

    def location_frames(self, li: int) -> tuple[Frame, ...]:
        """Frames of location ``li``, leaf (innermost inline) first."""
        try:
            loc = _fast.LocationMsg.FromString(self.locations[li])
        except (DecodeError, RecursionError, ValueError) as e:
            raise InputError(f"OTLP location {li} is not a Location message ({e})") from None
        lines = loc.lines
        if len(lines) == 1 and not loc.attribute_indices:  # the common case, without the checks below
            fi = lines[0].function_index
            name = self.fnames[fi] if 0 <= fi < len(self.fnames) else None
            if name:
                return (self._frame(name, Kind.USER, fi, lines[0].line),)
        kind = Kind.USER
        if self.frame_type_key >= 0:
            for ai in loc.attribute_indices:
                if 0 <= ai < len(self.attrs):
                    kv = self.attrs[ai]
                    if kv.key_strindex == self.frame_type_key and kv.value.string_value == "kernel":
                        kind = Kind.KERNEL
        frames: list[Frame] = []
        for line in loc.lines:
            fi = line.function_index
            if not 0 <= fi < len(self.functions):
                raise InputError(f"OTLP location {li} names function {fi}, outside the function table "
                                 f"({len(self.functions)} functions)")
            name = self.string(self.functions[fi].name_strindex, "function name")
            if name:
                frames.append(self._frame(name, kind, fi, line.line))
        if not frames:
            frames.append(Frame(self._unsymbolized(loc), kind))
        return tuple(frames)

    @functools.cached_property
    def files(self) -> list[str]:
        """The source file of every function ("" when it names none): the one file rule of both
        paths (the bulk scan and :meth:`_frame`), read once per request."""
        strings, n = self.strings, len(self.strings)
        return [strings[f.filename_strindex] if 0 < f.filename_strindex < n else "" for f in self.functions]

    def _frame(self, name: str, kind: Kind, fi: int, line: int) -> Frame:
        """The frame of function ``fi`` at ``line``; located (its file, the line) when reading by line."""
        if not self.lines:
            return Frame(name, kind)
        return Frame(name, kind, self.files[fi], max(int(line), 0))

    def _unsymbolized(self, loc: Any) -> str:
        """A frame without a function name: its mapping's file name and address, as pprof tools show."""
        mi = loc.mapping_index
        if 0 < mi < len(self.mappings):
            fname = self.string(self.mappings[mi].filename_strindex, "mapping file name")
            if fname:
                return f"{fname.rsplit('/', 1)[-1]}+0x{loc.address:x}"
        return f"0x{loc.address:x}"

    def stack_id(self, si: int) -> int:
        """The id on the shared table of stack ``si`` (root first; -1 for an empty stack)."""
        if not 0 <= si < len(self.stacks):
            raise InputError(f"OTLP sample names stack {si}, outside the stack table ({len(self.stacks)} stacks)")
        if self.sid_of is not None:
            return int(self.sid_of[si])
        sid = self.sids.get(si)
        if sid is not None:
            return sid
        try:
            idx = list(_fast.StackMsg.FromString(self.stacks[si]).location_indices)
        except (DecodeError, RecursionError, ValueError) as e:
            raise InputError(f"OTLP stack {si} is not a Stack message ({e})") from None
        try:
            if idx and min(idx) < 0:
                raise IndexError
            gids = list(map(self.loc_gid.__getitem__, idx))
        except IndexError:
            bad = next(i for i in idx if not 0 <= i < len(self.loc_gid))
            raise InputError(f"OTLP stack names location {bad}, outside the location table "
                             f"({len(self.loc_gid)} locations)") from None
        key = np.asarray(gids, np.int32).tobytes()
        sid = self.cache.stacks.get(key)
        if sid is None:
            sid = self.cache.stacks[key] = self._intern(gids)
        self.sids[si] = sid
        return sid

    def span(self, li: int) -> str:
        if 0 < li < len(self.links):
            return self.links[li].span_id.hex()
        return ""

    def sample_labels(self, indices: Any) -> tuple[tuple[str, str], ...]:
        out = []
        for ai in indices:
            if not 0 <= ai < len(self.attrs):
                raise InputError(f"OTLP sample names attribute {ai}, outside the attribute table "
                                 f"({len(self.attrs)} attributes)")
            kv = self.attrs[ai]
            key = self.string(kv.key_strindex, "attribute key")
            name = SAMPLE_LABELS.get(key)
            if name:
                value = _any_value(kv.value)
                if value:
                    out.append((name, value))
        return tuple(out)


def parse_request(body: bytes) -> Any:
    """The ``ExportProfilesServiceRequest`` message of a plain (un-gzipped) body."""
    try:
        return _fast.SplitRequest.FromString(bytes(body))
    except (DecodeError, RecursionError, ValueError) as e:
        raise InputError(
            f"OTLP body is not an ExportProfilesServiceRequest protobuf ({e}); send "
            "opentelemetry.proto.collector.profiles.v1development.ExportProfilesServiceRequest "
            "with Content-Type: application/x-protobuf"
        ) from None


def decode_export_request(
    body: bytes | Any, table: StackTable, *, spy: Callable[[str], str] | None = None,
    cache: OtlpCache | None = None,
) -> list[OtlpSeries]:
    """Every series of an OTLP request (bytes, or a parsed message as gRPC hands it over).

    ``spy`` maps the scope name to the ``pyroscope_spy`` label (default :func:`spy_of`); a
    resource or scope attribute ``pyroscope.spy`` wins over it. ``cache`` (kept by the caller
    across requests) makes stacks seen before cost one lookup.
    """
    if isinstance(body, bytes | bytearray | memoryview):
        req = parse_request(body)
    elif not isinstance(body, _fast.SplitRequest):  # e.g. parsed from OTLP JSON
        req = _fast.SplitRequest.FromString(body.SerializeToString())
    else:
        req = body
    spy = spy or spy_of
    t = _Tables(req.dictionary, table, cache if cache is not None else OtlpCache())
    out: list[OtlpSeries] = []
    for ri, rp in enumerate(req.resource_profiles):
        res_labels: dict[str, str] = {}
        _attributes(rp.resource.attributes, res_labels, f"resource_profiles[{ri}].resource")
        for si, sp in enumerate(rp.scope_profiles):
            labels = dict(res_labels)
            _attributes(sp.scope.attributes, labels, f"resource_profiles[{ri}].scope_profiles[{si}].scope")
            labels.setdefault(SPY_LABEL, spy(sp.scope.name))
            for pi, prof in enumerate(sp.profiles):
                try:
                    out.extend(_profile(prof, labels, t))
                except InputError as e:
                    raise e.within(f"resource_profiles[{ri}].scope_profiles[{si}].profiles[{pi}]") from None
    return out


def spy_of(scope_name: str) -> str:
    """The ``pyroscope_spy`` of an OTLP scope: ``ebpfspy`` for the host-wide eBPF profiler, else ``otlp``."""
    return "ebpfspy" if any(s in scope_name for s in _EBPF_SCOPES) else "otlp"


def _profile(prof: Any, labels: dict[str, str], t: _Tables) -> list[OtlpSeries]:
    st = prof.sample_type
    ptype = profile_type(t.string(st.type_strindex, "sample type"), t.string(st.unit_strindex, "sample unit"),
                         t.string(prof.period_type.type_strindex, "period type"),
                         t.string(prof.period_type.unit_strindex, "period unit"))
    src_unit = t.string(st.unit_strindex, "sample unit")
    period, divisor = _period(ptype, src_unit, t.string(prof.period_type.unit_strindex, "period unit"),
                              prof.period)
    groups: dict[tuple[tuple[str, str], ...], tuple[list[int], list[int], dict[str, int]]] = {}
    raw = list(prof.samples)
    fast = None
    if t.sid_of is not None:
        fast = _otlp_c.samples(raw) if _otlp_c is not None and t.cache.compiled else _fast.simple_samples(raw)
    if fast is not None:
        return _fast_profile(prof, labels, t, fast, ptype, period, divisor)
    # The eBPF profiler (Collector pdata 1.46) numbers Sample's fields as proto v1.8.0 did.
    cls = _fast.SampleV1_8 if _fast.v1_8_samples(raw) else _fast.SampleV1_9
    try:
        samples = [cls.FromString(b) for b in raw]
    except (DecodeError, RecursionError, ValueError) as e:
        raise InputError(f"OTLP sample is not a Sample message ({e})") from None
    stack_id = t.stack_id
    n = 0
    for s in samples:
        values = s.values
        v = sum(values) if values else len(s.timestamps_unix_nano)
        if v <= 0:
            continue
        key = t.sample_labels(s.attribute_indices) if s.attribute_indices else ()
        g = groups.get(key)
        if g is None:
            g = groups[key] = ([], [], {})
        sid = stack_id(s.stack_index)
        if sid < 0:
            continue  # a stack without frames
        g[0].append(sid)
        g[1].append(v)
        if s.link_index:
            span = t.span(s.link_index)
            if span:
                g[2][span] = g[2].get(span, 0) + v
        n += 1
    out = []
    for key, (ids, vals, spans) in groups.items():
        if divisor != 1:
            vals = [round(v / divisor) for v in vals]  # time values -> samples of one period
        profile = Profile.from_arrays(t.table, _arr(ids), _arr(vals))
        if not len(profile):
            continue
        out.append(OtlpSeries({**labels, **dict(key)}, ptype, period, prof.time_unix_nano, prof.duration_nano,
                              profile, len(ids), spans))
    return out


def _fast_profile(prof: Any, labels: dict[str, str], t: _Tables, fast: tuple[np.ndarray, np.ndarray, np.ndarray],
                  ptype: ProfileType, period: int | None, divisor: float) -> list[OtlpSeries]:
    """:func:`_profile` for samples read in bulk (no attributes, no timestamps)."""
    si, totals, link = fast
    assert t.sid_of is not None
    # Samples without a value are skipped before their stack is looked at, as the message path does.
    counted = totals > 0
    si, totals, link = si[counted], totals[counted], link[counted]
    if len(si) and int(si.max()) >= len(t.sid_of):
        bad = int(si[np.flatnonzero(si >= len(t.sid_of))[0]])
        raise InputError(f"OTLP sample names stack {bad}, outside the stack table ({len(t.sid_of)} stacks)")
    ids = t.sid_of[si]
    keep = ids >= 0
    ids, totals, link = ids[keep], totals[keep], link[keep]
    spans: dict[str, int] = {}
    if link.any():
        for li in np.unique(link[link > 0]).tolist():
            span = t.span(li)
            if span:
                spans[span] = spans.get(span, 0) + int(totals[link == li].sum())
    vals = np.rint(totals / divisor).astype(np.int64) if divisor != 1 else totals
    profile = Profile.from_arrays(t.table, ids, vals)
    if not len(profile):
        return []
    return [OtlpSeries(dict(labels), ptype, period, prof.time_unix_nano, prof.duration_nano, profile, len(ids),
                       spans)]


def _period(ptype: ProfileType, sample_unit: str, period_unit: str, period: int) -> tuple[int | None, float]:
    """(period in ns, divisor of the values) of a profile stored as samples; (None, 1) otherwise.

    A count of samples is stored as is; a time value is divided by the period (both in ns).
    A period <= 0 counts as one unit, as for pprof.
    """
    if not ptype.as_samples:
        return None, 1
    unit = TIME_UNITS_NS.get(period_unit) or TIME_UNITS_NS.get(sample_unit) or 1
    p_ns = max(period, 1) * unit
    if sample_unit in TIME_UNITS_NS:
        return p_ns, p_ns / TIME_UNITS_NS[sample_unit]
    return p_ns, 1


def _arr(xs: list[int]) -> Any:
    import numpy as np

    return np.asarray(xs, dtype=np.int64)
