"""JFR recordings (what pyroscope-java pushes) -> profiles per Pyroscope profile type (pure).

Why our own reader: no maintained Python JFR parser exists on PyPI (the maintained readers are
the JDK's own ``jdk.jfr.consumer``, Grafana's Go ``jfr-parser`` and async-profiler's Java
``JfrReader``), and the aggregator cannot start a JVM per push. So this module reads the JFR
2.x chunk format itself: a header, the metadata event (type 0: every class and its fields) and
the constant pools (type 1: threads, stack traces, methods, classes, symbols), then the events
the profile types come from. Everything is bounded (:data:`MAX_EVENTS`, :data:`MAX_DEPTH`,
counts checked against the bytes left) and every malformed input raises
:class:`~stacks.errors.InputError`; ``tests/core/test_jfr.py`` fuzzes it with hypothesis and
checks real recordings against the JDK's ``jfr print``.

Profile types, as Pyroscope's JFR converter makes them:

===================================  =====================================================
event                                types (values)
===================================  =====================================================
``jdk.ExecutionSample``              ``process_cpu:cpu:nanoseconds:cpu:nanoseconds`` (threads
                                     not in ``STATE_SLEEPING``); also wall when the recording's
                                     ``event`` setting is ``wall``
``profiler.WallClockSample``         ``wall:wall:nanoseconds:wall:nanoseconds`` (``samples``)
``jdk.ObjectAllocationInNewTLAB``    ``memory:alloc_in_new_tlab_objects:count:space:bytes`` (1),
                                     ``memory:alloc_in_new_tlab_bytes:bytes:space:bytes`` (tlabSize)
``jdk.ObjectAllocationOutsideTLAB``  ``memory:alloc_outside_tlab_objects:count:space:bytes`` (1),
                                     ``memory:alloc_outside_tlab_bytes:bytes:space:bytes`` (allocationSize)
``jdk.JavaMonitorEnter``             ``mutex:contentions:count:mutex:count`` (1),
                                     ``mutex:delay:nanoseconds:mutex:count`` (duration)
``jdk.ThreadPark``                   ``block:contentions:count:block:count`` (1),
                                     ``block:delay:nanoseconds:block:count`` (duration)
``profiler.LiveObject``              ``memory:live:count:objects:count`` (1)
===================================  =====================================================

CPU and wall are stored as samples of ``1e9 / sampleRate`` ns. Durations are converted from
ticks to nanoseconds with the chunk's ticks per second. Frames are named as Pyroscope shows
them: ``class.method`` with the class in JVM form (``java/lang/Thread.run``); a frame of type
``Kernel`` is a kernel frame. Decoded into a table with ``lines``, a frame keeps its
``lineNumber`` and, as its file, the source path the class implies (JFR names no source file:
``com/x/Foo$Bar`` -> ``com/x/Foo.java``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from stacks.errors import InputError
from stacks.model import Frame, Kind, Profile, StackTable
from stacks.profiletype import CPU, WALL, ProfileType

MAGIC = b"FLR\x00"
HEADER = 68
MAX_EVENTS = 1_000_000  # ~20 s of decode-thread CPU at worst; pyroscope-java uploads every 10 s
MAX_DEPTH = 16  # nesting of inline structs and of metadata elements
MAX_FRAMES = 4096
MAX_STRING = 1 << 16

ALLOC_IN_OBJECTS = ProfileType("memory", "alloc_in_new_tlab_objects", "count", "space", "bytes")
ALLOC_IN_BYTES = ProfileType("memory", "alloc_in_new_tlab_bytes", "bytes", "space", "bytes")
ALLOC_OUT_OBJECTS = ProfileType("memory", "alloc_outside_tlab_objects", "count", "space", "bytes")
ALLOC_OUT_BYTES = ProfileType("memory", "alloc_outside_tlab_bytes", "bytes", "space", "bytes")
LOCK_COUNT = ProfileType("mutex", "contentions", "count", "mutex", "count")
LOCK_DELAY = ProfileType("mutex", "delay", "nanoseconds", "mutex", "count")
PARK_COUNT = ProfileType("block", "contentions", "count", "block", "count")
PARK_DELAY = ProfileType("block", "delay", "nanoseconds", "block", "count")
LIVE = ProfileType("memory", "live", "count", "objects", "count")

_PRIMITIVE = {"boolean", "byte", "char", "short", "int", "long", "float", "double", "java.lang.String"}
_WANTED = {"jdk.ExecutionSample", "profiler.WallClockSample", "jdk.ObjectAllocationInNewTLAB",
           "jdk.ObjectAllocationOutsideTLAB", "jdk.JavaMonitorEnter", "jdk.ThreadPark", "profiler.LiveObject",
           "jdk.ActiveSetting"}


def _bad(why: str) -> InputError:
    return InputError(f"JFR recording is malformed: {why}")


@dataclass
class _Field:
    name: str
    type_id: int
    pool: bool
    array: bool


@dataclass
class _Class:
    name: str
    fields: list[_Field] = field(default_factory=list)


@dataclass(frozen=True)
class Ref:
    """A constant-pool reference: (class id, key)."""

    type_id: int
    key: int


class _Reader:
    """Bounded reads over one buffer."""

    __slots__ = ("b", "end", "pos")

    def __init__(self, b: bytes, pos: int, end: int) -> None:
        self.b, self.pos, self.end = b, pos, end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise _bad(f"truncated at byte {self.pos}")
        v = self.b[self.pos]
        self.pos += 1
        return v

    def varint(self) -> int:
        """JFR's compressed integer: LEB128, at most 9 bytes (the 9th carries 8 bits)."""
        b, pos, end = self.b, self.pos, self.end
        result = 0
        for shift in range(0, 56, 7):
            if pos >= end:
                raise _bad(f"truncated integer at byte {pos}")
            v = b[pos]
            pos += 1
            result |= (v & 0x7F) << shift
            if v < 0x80:
                self.pos = pos
                return result
        if pos >= end:
            raise _bad(f"truncated integer at byte {pos}")
        result |= b[pos] << 56
        self.pos = pos + 1
        return result

    def signed(self) -> int:
        v = self.varint()
        return v - (1 << 64) if v >= 1 << 63 else v

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise _bad(f"{n} bytes asked at byte {self.pos}, past the end ({self.end})")
        v = self.b[self.pos:self.pos + n]
        self.pos += n
        return v

    def count(self, what: str) -> int:
        n = self.varint()
        if n > self.end - self.pos:
            raise _bad(f"{what} count {n} exceeds the {self.end - self.pos} bytes left")
        return n

    def string(self, strings: Mapping[int, str] | None = None) -> str | Ref | None:
        enc = self.byte()
        if enc == 0:
            return None
        if enc == 1:
            return ""
        if enc == 2:
            key = self.varint()
            return (strings or {}).get(key, "")
        if enc == 3 or enc == 5:
            n = self.count("string length")
            if n > MAX_STRING:
                raise _bad(f"string of {n} bytes (at most {MAX_STRING})")
            return self.raw(n).decode("utf-8" if enc == 3 else "latin-1", "replace")
        if enc == 4:
            n = self.count("string length")
            if n > MAX_STRING:
                raise _bad(f"string of {n} chars (at most {MAX_STRING})")
            return "".join(chr(min(self.varint(), 0x10FFFF)) for _ in range(n))
        raise _bad(f"unknown string encoding {enc} at byte {self.pos - 1}")


@dataclass
class _Chunk:
    classes: dict[int, _Class]
    by_name: dict[str, int]
    pools: dict[int, dict[int, Any]]
    ticks_per_second: int
    start_nanos: int
    duration_nanos: int


def _header(b: bytes, at: int) -> tuple[int, int, int, int, int, int]:
    if len(b) - at < HEADER:
        raise _bad(f"chunk at byte {at} is shorter than its {HEADER}-byte header")
    if b[at:at + 4] != MAGIC:
        raise InputError("JFR body does not start with 'FLR\\0': send the recording pyroscope-java writes "
                         "(multipart part 'jfr', gzip or plain)")
    major, _minor = struct.unpack_from(">HH", b, at + 4)
    if major != 2:
        raise _bad(f"JFR version {major}.x: only 2.x (JDK 11+, async-profiler) is read")
    size, cp, meta, start_ns, dur_ns, _start_ticks, tps = struct.unpack_from(">qqqqqqq", b, at + 8)
    if size < HEADER or at + size > len(b):
        raise _bad(f"chunk size {size} at byte {at} is outside the {len(b) - at} bytes left")
    if not (HEADER <= meta < size):
        raise _bad(f"metadata offset {meta} is outside the chunk (size {size})")
    return size, cp, meta, start_ns, dur_ns, tps


def _metadata(b: bytes, start: int, end: int) -> tuple[dict[int, _Class], dict[str, int]]:
    r = _Reader(b, start, end)
    size = r.varint()
    if size < 2 or start + size > end:
        raise _bad(f"metadata event size {size} at byte {start}")
    r.end = start + size
    if r.varint() != 0:
        raise _bad(f"the event at the metadata offset ({start}) is not metadata")
    r.varint()
    r.varint()
    r.varint()  # start, duration, metadata id
    n = r.count("metadata string")
    strings: list[str] = []
    for _ in range(n):
        s = r.string()
        strings.append(s if isinstance(s, str) else "")

    def text(i: int) -> str:
        if not 0 <= i < len(strings):
            raise _bad(f"metadata string index {i} outside its {len(strings)} strings")
        return strings[i]

    classes: dict[int, _Class] = {}

    def element(depth: int) -> tuple[str, dict[str, str], list[Any]]:
        if depth > MAX_DEPTH:
            raise _bad(f"metadata nested deeper than {MAX_DEPTH}")
        name = text(r.varint())
        attrs = {}
        for _ in range(r.count("metadata attribute")):
            k = text(r.varint())
            attrs[k] = text(r.varint())
        children = [element(depth + 1) for _ in range(r.count("metadata element"))]
        return name, attrs, children

    def walk(el: tuple[str, dict[str, str], list[Any]]) -> None:
        name, attrs, children = el
        if name == "class":
            try:
                cid = int(attrs.get("id", ""))
            except ValueError:
                raise _bad(f"class {attrs.get('name')!r} has no numeric id") from None
            cls = _Class(attrs.get("name", ""))
            for cname, cattrs, _ in children:
                if cname == "field":
                    try:
                        ftype = int(cattrs.get("class", ""))
                    except ValueError:
                        raise _bad(f"field {cattrs.get('name')!r} of {cls.name} has no class id") from None
                    cls.fields.append(_Field(cattrs.get("name", ""), ftype, cattrs.get("constantPool") == "true",
                                             cattrs.get("dimension") == "1"))
            classes[cid] = cls
            return
        for c in children:
            walk(c)

    walk(element(0))
    return classes, {c.name: cid for cid, c in classes.items()}


class _Values:
    """Reads values of metadata-described classes."""

    def __init__(self, classes: dict[int, _Class]) -> None:
        self.classes = classes
        self.strings: dict[int, str] = {}

    def value(self, r: _Reader, type_id: int, depth: int = 0) -> Any:
        cls = self.classes.get(type_id)
        if cls is None:
            raise _bad(f"value of unknown class id {type_id}")
        name = cls.name
        if name in _PRIMITIVE:
            if name in ("int", "long", "short", "char"):
                return r.signed() if name != "char" else r.varint()
            if name == "java.lang.String":
                return r.string(self.strings)
            if name in ("boolean", "byte"):
                return r.byte()
            if name == "float":
                return struct.unpack(">f", r.raw(4))[0]
            return struct.unpack(">d", r.raw(8))[0]
        if depth > MAX_DEPTH:
            raise _bad(f"values nested deeper than {MAX_DEPTH} (class {name})")
        out: dict[str, Any] = {}
        for f in cls.fields:
            if f.array:
                n = r.count(f"{name}.{f.name}")
                if f.pool:
                    out[f.name] = [Ref(f.type_id, r.varint()) for _ in range(n)]
                else:
                    out[f.name] = [self.value(r, f.type_id, depth + 1) for _ in range(n)]
            elif f.pool:
                out[f.name] = Ref(f.type_id, r.varint())
            else:
                out[f.name] = self.value(r, f.type_id, depth + 1)
        return out


def _pools(b: bytes, events: list[tuple[int, int]], values: _Values) -> dict[int, dict[int, Any]]:
    pools: dict[int, dict[int, Any]] = {}
    string_id = next((cid for cid, c in values.classes.items() if c.name == "java.lang.String"), -1)
    for start, end in events:
        r = _Reader(b, start, end)
        r.varint()
        r.varint()  # size, type
        r.varint()
        r.varint()
        r.varint()  # start, duration, delta
        r.byte()  # checkpoint type
        for _ in range(r.count("constant pool")):
            tid = r.varint()
            pool = pools.setdefault(tid, {})
            for _ in range(r.count("constant pool entry")):
                key = r.varint()
                v = values.value(r, tid)
                pool[key] = v
                if tid == string_id and isinstance(v, str):
                    values.strings[key] = v
    return pools


class _Names:
    """Frame names and stacks from the pools, cached per recording."""

    def __init__(self, pools: dict[int, dict[int, Any]], table: StackTable) -> None:
        self.pools = pools
        self.table = table
        self.frames: dict[tuple[int, int], Frame] = {}
        self.stacks: dict[Ref, int | None] = {}

    def get(self, ref: Any) -> Any:
        if isinstance(ref, Ref):
            return self.pools.get(ref.type_id, {}).get(ref.key)
        return ref

    def text(self, ref: Any) -> str:
        v = self.get(ref)
        if isinstance(v, dict):  # a Symbol {string: ...}
            v = self.get(v.get("string"))
        return v if isinstance(v, str) else ""

    def frame(self, f: Mapping[str, Any]) -> Frame:
        mref = f.get("method")
        ftype = self.get(f.get("type"))
        kind_text = ftype.get("description", "") if isinstance(ftype, dict) else ftype or ""
        line = _int(f.get("lineNumber")) if self.table.lines else 0
        key = (mref.key if isinstance(mref, Ref) else -1, hash(kind_text), max(line, 0))
        got = self.frames.get(key)
        if got is not None:
            return got
        method = self.get(mref) or {}
        cls = self.get(method.get("type")) if isinstance(method, dict) else None
        mname = self.text(method.get("name")) if isinstance(method, dict) else ""
        cname = self.text(cls.get("name")) if isinstance(cls, dict) else ""
        name = f"{cname}.{mname}" if cname else (mname or "[unknown]")
        kind = Kind.KERNEL if kind_text == "Kernel" else Kind.USER
        # JFR names no source file: the outer class's path is the one javac compiled it from.
        file = cname.split("$", 1)[0] + ".java" if line > 0 and cname else ""
        got = Frame(name, kind, file, line if file else 0)
        self.frames[key] = got
        return got

    def stack(self, ref: Any) -> int | None:
        """The interned id of a StackTrace (root first); None for a missing or empty one."""
        if not isinstance(ref, Ref):
            return None
        if ref in self.stacks:
            return self.stacks[ref]
        st = self.get(ref)
        sid = None
        if isinstance(st, dict):
            frames = st.get("frames") or []
            if len(frames) > MAX_FRAMES:
                frames = frames[:MAX_FRAMES]  # leaf first: keep the leaf end, as pyroscope-java's depth cap does
            names = [self.frame(f) for f in frames if isinstance(f, dict)]
            if names:
                names.reverse()
                sid = self.table.intern(names)
        self.stacks[ref] = sid
        return sid


@dataclass
class JfrSeries:
    """One profile type (and sample-label set) of a recording; ``period`` in ns for CPU/wall."""

    ptype: ProfileType
    labels: dict[str, str]
    profile: Profile
    period: int | None
    events: int


@dataclass
class JfrProfiles:
    series: list[JfrSeries]
    start_nanos: int
    duration_nanos: int
    events: int


def decode_jfr(body: bytes, table: StackTable, *, sample_rate: int = 100,
               labels: bytes = b"", max_events: int = MAX_EVENTS) -> JfrProfiles:
    """Every chunk of a (plain, un-gzipped) JFR recording, with the ``labels`` part (a
    ``LabelsSnapshot`` protobuf) giving events' ``contextId`` their labels."""
    snapshot = decode_labels(labels) if labels else {}
    period = round(1e9 / sample_rate) if sample_rate > 0 else 10_000_000
    acc: dict[tuple[ProfileType, int], dict[int, int]] = {}
    counts: dict[tuple[ProfileType, int], int] = {}
    start_ns = dur_end = 0
    n_events = 0
    at = 0
    b = bytes(body)
    wall_mode = False
    while at < len(b):
        size, _cp, meta, c_start, c_dur, tps = _header(b, at)
        start_ns = c_start if not start_ns else min(start_ns, c_start)
        dur_end = max(dur_end, c_start + c_dur)
        end = at + size
        classes, by_name = _metadata(b, at + meta, end)
        values = _Values(classes)
        # One pass for the positions of every event; pools first (events refer to them).
        events: list[tuple[int, int, int]] = []
        cps: list[tuple[int, int]] = []
        r = _Reader(b, at + HEADER, end)
        while r.pos < end:
            s = r.pos
            esize = r.varint()
            if esize < 1 or s + esize > end:
                raise _bad(f"event size {esize} at byte {s} runs past the chunk end ({end})")
            etype = r.varint()
            if etype == 1:
                cps.append((s, s + esize))
            elif etype > 1:
                events.append((s, s + esize, etype))
                if len(events) + n_events > max_events:
                    raise InputError(f"JFR recording has more than {max_events} events: send shorter recordings "
                                     "(pyroscope-java's uploadInterval)")
            r.pos = s + esize
        pools = _pools(b, cps, values)
        names = _Names(pools, table)
        wanted = {by_name[n]: n for n in _WANTED if n in by_name}
        ticks = tps if tps > 0 else 1_000_000_000
        for s, e, etype in events:
            ename = wanted.get(etype)
            if ename is None:
                continue
            r = _Reader(b, s, e)
            r.varint()
            r.varint()
            ev = values.value(r, etype)
            n_events += 1
            if ename == "jdk.ActiveSetting":
                if names.text(ev.get("name")) == "event" and names.text(ev.get("value")) == "wall":
                    wall_mode = True
                continue
            sid = names.stack(ev.get("stackTrace"))
            if sid is None:
                continue
            ctx = ev.get("contextId", 0) if snapshot else 0
            ctx = ctx if isinstance(ctx, int) else 0
            for ptype, v in _values(ename, ev, names, ticks):
                if v <= 0:
                    continue
                key = (ptype, ctx)
                d = acc.setdefault(key, {})
                d[sid] = d.get(sid, 0) + v
                counts[key] = counts.get(key, 0) + 1
            if ename == "jdk.ExecutionSample" and wall_mode:
                key = (WALL, ctx)
                d = acc.setdefault(key, {})
                d[sid] = d.get(sid, 0) + 1
                counts[key] = counts.get(key, 0) + 1
        at = end
    import numpy as np

    out = []
    for (ptype, ctx), d in sorted(acc.items(), key=lambda kv: (kv[0][0].id, kv[0][1])):
        ids = np.fromiter(d.keys(), np.int64, len(d))
        vals = np.fromiter(d.values(), np.int64, len(d))
        prof = Profile.from_arrays(table, ids, vals)
        if len(prof):
            out.append(JfrSeries(ptype, dict(snapshot.get(ctx, {})), prof,
                                 period if ptype in (CPU, WALL) else None, counts[(ptype, ctx)]))
    return JfrProfiles(out, start_ns, max(dur_end - start_ns, 0), n_events)


def _values(ename: str, ev: Mapping[str, Any], names: _Names, ticks: int) -> list[tuple[ProfileType, int]]:
    """(type, value) pairs of one event; CPU/wall in samples."""
    if ename == "jdk.ExecutionSample":
        state = names.get(ev.get("state"))
        sname = state.get("name", "") if isinstance(state, dict) else (state or "")
        return [] if names.text(sname) == "STATE_SLEEPING" or sname == "STATE_SLEEPING" else [(CPU, 1)]
    if ename == "profiler.WallClockSample":
        n = ev.get("samples", 1)
        return [(WALL, n if isinstance(n, int) else 1)]
    if ename == "jdk.ObjectAllocationInNewTLAB":
        return [(ALLOC_IN_OBJECTS, 1), (ALLOC_IN_BYTES, _int(ev.get("tlabSize")))]
    if ename == "jdk.ObjectAllocationOutsideTLAB":
        return [(ALLOC_OUT_OBJECTS, 1), (ALLOC_OUT_BYTES, _int(ev.get("allocationSize")))]
    if ename == "jdk.JavaMonitorEnter":
        return [(LOCK_COUNT, 1), (LOCK_DELAY, _int(ev.get("duration")) * 1_000_000_000 // ticks)]
    if ename == "jdk.ThreadPark":
        return [(PARK_COUNT, 1), (PARK_DELAY, _int(ev.get("duration")) * 1_000_000_000 // ticks)]
    if ename == "profiler.LiveObject":
        return [(LIVE, 1)]
    return []


def _int(v: Any) -> int:
    return v if isinstance(v, int) else 0


# -- the labels part (pyroscope-java's LabelsSnapshot protobuf) ---------------------------------
def _labels_classes() -> tuple[Any, Any]:
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="flamewatch/jfr_labels.proto", package="flamewatch.jfr",
                                             syntax="proto3")

    def msg(name: str, fields: list[tuple[str, int, int, str]]) -> None:
        m = fdp.message_type.add(name=name)
        for fname, num, ftype, tname in fields:
            f = m.field.add(name=fname, number=num, type=ftype,
                            label=F.LABEL_REPEATED if tname.endswith("Entry") else F.LABEL_OPTIONAL)
            if tname:
                f.type_name = f".flamewatch.jfr.{tname}"

    # Maps on the wire are repeated {key = 1, value = 2} entries.
    msg("LabelEntry", [("key", 1, F.TYPE_INT64, ""), ("value", 2, F.TYPE_INT64, "")])
    msg("Context", [("labels", 1, F.TYPE_MESSAGE, "LabelEntry")])
    msg("ContextEntry", [("key", 1, F.TYPE_INT64, ""), ("value", 2, F.TYPE_MESSAGE, "Context")])
    msg("StringEntry", [("key", 1, F.TYPE_INT64, ""), ("value", 2, F.TYPE_STRING, "")])
    msg("LabelsSnapshot", [("contexts", 1, F.TYPE_MESSAGE, "ContextEntry"),
                           ("strings", 2, F.TYPE_MESSAGE, "StringEntry")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("flamewatch.jfr.LabelsSnapshot")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("flamewatch.jfr.Context")))


LabelsSnapshot, LabelsContext = _labels_classes()


def decode_labels(raw: bytes) -> dict[int, dict[str, str]]:
    """contextId -> labels of a ``LabelsSnapshot`` (the multipart ``labels`` part)."""
    try:
        snap = LabelsSnapshot.FromString(bytes(raw))
    except (DecodeError, RecursionError, ValueError) as e:
        raise InputError(f"JFR 'labels' part is not a LabelsSnapshot protobuf ({e})") from None
    strings = {e.key: e.value for e in snap.strings}
    out: dict[int, dict[str, str]] = {}
    for c in snap.contexts:
        out[c.key] = {strings.get(lab.key, ""): strings.get(lab.value, "") for lab in c.value.labels
                      if strings.get(lab.key)}
    return out
