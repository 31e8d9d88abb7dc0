"""The vectorised half of :mod:`stacks.otlp` (pure): stack tables and the common sample shape read
from the raw protobuf bytes with numpy instead of one Python object per field.

:data:`SplitRequest` is the ``opentelemetry-proto`` package's ``ExportProfilesServiceRequest``
with ``ProfilesDictionary.stack_table`` and ``Profile.samples`` left as raw bytes (its descriptors,
copied into a private pool with those two fields retyped), so the hot repeated messages are read
here in bulk; anything off the common shapes returns None and the caller parses those entries
with the package's own classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2
from opentelemetry.proto.profiles.v1development import profiles_pb2

_RAW = {("ProfilesDictionary", "stack_table"), ("ProfilesDictionary", "location_table"), ("Profile", "samples")}


def _split_classes() -> tuple[Any, Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    done: set[str] = set()

    def add(fd: Any) -> None:
        if fd.name in done:
            return
        for dep in fd.dependencies:
            add(dep)
        fdp = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(fdp)
        if fd.name == profiles_pb2.DESCRIPTOR.name:
            for msg in fdp.message_type:
                for f in msg.field:
                    if (msg.name, f.name) in _RAW:
                        f.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                        f.ClearField("type_name")
        pool.Add(fdp)
        done.add(fd.name)

    add(profiles_service_pb2.DESCRIPTOR)
    name = "opentelemetry.proto.collector.profiles.v1development.ExportProfilesServiceRequest"
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName(name)),
            profiles_pb2.Stack, profiles_pb2.Sample, profiles_pb2.Location)


SplitRequest, StackMsg, SampleMsg, LocationMsg = _split_classes()

# ``Sample``'s field numbers differ between profiles proto versions that share the package name
# ``v1development``: v1.8.0 (opentelemetry-proto 1.40, the Collector's pdata 1.46 / pprofile 0.140,
# hence the OpenTelemetry eBPF profiler v0.0.202547 and opentelemetry-sdk-extension-profiling 0.63b)
# has values 2, attribute_indices 3, link_index 4; v1.9.0 (opentelemetry-proto 1.45) has
# attribute_indices 2, link_index 3, values 4. stack_index 1 and timestamps_unix_nano 5 are the
# same. Both are built here, whichever the installed package has (the compiled and numpy readers
# read v1.9.0's numbers).
_NUMBERS = {"v1_8": {"values": 2, "attribute_indices": 3, "link_index": 4},
            "v1_9": {"attribute_indices": 2, "link_index": 3, "values": 4}}


def _sample_numbered(version: str) -> Any:
    """The package's ``Sample`` with ``version``'s field numbers, in a private pool (same field names)."""
    fdp = descriptor_pb2.FileDescriptorProto(name=f"flamewatch/otlp_sample_{version}.proto",
                                             package=f"flamewatch.otlp.{version}", syntax="proto3")
    profiles_pb2.Sample.DESCRIPTOR.CopyToProto(fdp.message_type.add())
    for f in fdp.message_type[0].field:
        f.number = _NUMBERS[version].get(f.name, f.number)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"flamewatch.otlp.{version}.Sample"))


SampleV1_8 = _sample_numbered("v1_8")
SampleV1_9 = _sample_numbered("v1_9")


# How many samples of a profile are looked at to tell its field numbers (one producer writes one
# version; looking at all of them cost ~8 us a sample, half the message path's cost).
LAYOUT_PROBE = 64


def v1_8_samples(entries: list[bytes]) -> bool:
    """Whether raw ``Sample`` entries use v1.8.0's field numbers: one of the first
    :data:`LAYOUT_PROBE` entries holds field 3 length-delimited (v1.8.0's packed attribute_indices;
    v1.9.0's field 3 is the int32 link_index, never length-delimited). Walks the top-level tags
    only; stops at anything malformed (the parser then names it)."""
    for b in entries[:LAYOUT_PROBE]:
        i, n = 0, len(b)
        while i < n:
            tag, i = _varint(b, i)
            wire = tag & 7
            if tag >> 3 == 3 and wire == 2:
                return True
            if wire == 0:
                _, i = _varint(b, i)
            elif wire == 2:
                size, i = _varint(b, i)
                i += size
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:
                break
    return False


def _varint(b: bytes, i: int) -> tuple[int, int]:
    """(value, next offset) of the varint at ``i`` (at most 10 bytes; a cut one ends at len(b))."""
    v = shift = 0
    for k in range(i, min(i + 10, len(b))):
        v |= (b[k] & 0x7F) << shift
        shift += 7
        if b[k] < 0x80:
            return v, k + 1
    return v, len(b)


def varints(a: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(start byte, value) of every varint of ``a`` (which must end on a varint's last byte);
    None when a varint runs past 9 bytes (negative or not varints at all)."""
    if not len(a):
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    term = a < 0x80
    if not term[-1]:
        return None
    starts = np.flatnonzero(term[:-1]) + 1
    starts = np.concatenate(([0], starts))
    vlen = np.diff(starts, append=len(a))
    if int(vlen.max()) > 9:
        return None
    values = (a[starts] & 0x7F).astype(np.uint64)
    sel = np.flatnonzero(vlen > 1)
    j = 1
    while len(sel):
        values[sel] |= (a[starts[sel] + j] & 0x7F).astype(np.uint64) << np.uint64(7 * j)
        j += 1
        sel = sel[vlen[sel] > j]
    return starts, values


def stack_gids(entries: list[bytes], loc_gid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Every raw ``Stack`` entry's global location ids: (all gids as int32, each stack's first,
    each stack's count); None when an entry is not the packed form or names a bad location."""
    n = len(entries)
    lens = np.fromiter(map(len, entries), np.int64, n)
    buf = np.frombuffer(b"".join(entries), np.uint8)
    offs = np.concatenate(([0], np.cumsum(lens)[:-1])) if n else np.zeros(0, np.int64)
    nonempty = lens > 0
    # Packed location_indices: tag 0x0a, a 1- or 2-byte length, the varints.
    o = offs[nonempty]
    ln = lens[nonempty]
    head = np.zeros(0, np.int64)
    two = np.zeros(0, bool)
    if len(o):
        if not (buf[o] == 0x0A).all() or not (ln >= 2).all():
            return None
        b1 = buf[o + 1].astype(np.int64)
        two = b1 >= 0x80
        if (two & (ln < 3)).any():
            return None
        b2 = np.where(two, buf[np.minimum(o + 2, len(buf) - 1)].astype(np.int64), 0)
        plen = np.where(two, (b1 & 0x7F) | (b2 << 7), b1)
        head = np.where(two, 3, 2)
        if (two & (b2 >= 0x80)).any() or not (head + plen == ln).all():
            return None
    mask = np.ones(len(buf), bool)
    if len(o):
        mask[o] = False
        mask[o + 1] = False
        mask[(o + 2)[two]] = False
    payload = buf[mask]
    got = varints(payload)
    if got is None:
        return None
    _, idx = got
    if len(idx) and int(idx.max()) >= len(loc_gid):
        return None
    gids = loc_gid[idx.astype(np.int64)].astype(np.int32)
    plens = np.zeros(n, np.int64)
    if len(o):
        plens[nonempty] = ln - head
    cterm = np.concatenate(([0], np.cumsum((payload < 0x80).astype(np.int64))))
    pend = np.cumsum(plens)
    counts = cterm[pend] - cterm[pend - plens]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])) if n else np.zeros(0, np.int64)
    return gids, starts, counts


def simple_locations(entries: list[bytes]) -> tuple[np.ndarray, np.ndarray] | None:
    """(function index, line) of every raw ``Location`` holding exactly one ``lines`` entry and
    nothing else (no mapping, address or attributes): function index -1 for the others; line
    -1 where that ``Line`` holds more than its function index and line (a column), 0 where it
    has no line. None when the entries are not all varints (then every location takes the
    message path)."""
    n = len(entries)
    if not n:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lens = np.fromiter(map(len, entries), np.int64, n)
    buf = np.frombuffer(b"".join(entries), np.uint8)
    out = np.full(n, -1, np.int64)
    if not len(buf):
        return out, out.copy()
    ends = np.cumsum(lens)
    term = buf < 0x80
    nz = lens > 0
    if not term[ends[nz] - 1].all():
        return None
    got = varints(buf)
    if got is None:
        return None
    vstarts, vals = got
    m = len(vals)
    cterm = np.concatenate(([0], np.cumsum(term.astype(np.int64))))
    nv = cterm[ends] - cterm[ends - lens]
    first = np.concatenate(([0], np.cumsum(nv)[:-1]))
    last = first + nv

    def at(i: np.ndarray) -> np.ndarray:
        return np.where(i < last, vals[np.minimum(i, m - 1)], np.uint64(1 << 63))

    # 0x1a LEN (one lines message to the end of the entry), then optionally 0x08 function_index
    # and 0x10 line, in field order as protobuf writes them.
    ok = nz & (at(first) == 26)
    body = np.where(first + 2 < last, vstarts[np.minimum(first + 2, m - 1)], ends)
    ok &= (ends - body).astype(np.uint64) == at(first + 1)
    has_fi = at(first + 2) == 8
    fi = np.where(has_fi, at(first + 3), 0)
    ok &= fi < np.uint64(1 << 31)
    out[ok] = fi[ok].astype(np.int64)
    at_line = np.where(has_fi, first + 4, first + 2)
    has_line = at(at_line) == 16
    line = np.where(has_line, at(at_line + 1), 0)
    exact = ok & (at_line + np.where(has_line, 2, 0) == last) & (line < np.uint64(1 << 31))
    lines = np.full(n, -1, np.int64)
    lines[exact] = line[exact].astype(np.int64)
    return out, lines


def simple_samples(entries: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(stack index, summed values, link index) of samples that hold only ``stack_index``,
    ``link_index`` and packed ``values`` (in field order, each at most once); None for any other
    shape (attributes, timestamps), which the caller reads with the package's Sample class."""
    n = len(entries)
    if not n:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    lens = np.fromiter(map(len, entries), np.int64, n)
    if not lens.all():
        return None
    buf = np.frombuffer(b"".join(entries), np.uint8)
    ends = np.cumsum(lens)
    term = buf < 0x80
    if not term[ends - 1].all():
        return None
    got = varints(buf)
    if got is None:
        return None
    vstarts, vals = got
    cterm = np.concatenate(([0], np.cumsum(term.astype(np.int64))))
    nv = cterm[ends] - cterm[ends - lens]
    first = np.concatenate(([0], np.cumsum(nv)[:-1]))
    last = first + nv  # one past the sample's last varint
    m = len(vals)

    def at(i: np.ndarray) -> np.ndarray:
        return np.where(i < last, vals[np.minimum(i, m - 1)], np.uint64(1 << 63))

    k = first
    has_si = at(k) == 8
    si = np.where(has_si, at(k + 1), 0)
    k = k + 2 * has_si
    has_link = at(k) == 24
    link = np.where(has_link, at(k + 1), 0)
    k = k + 2 * has_link
    if not (at(k) == 34).all():
        return None
    plen = at(k + 1).astype(np.int64)
    vfirst = k + 2
    # The values' bytes run from the first value varint (or the sample end when none) to the end.
    vbyte = np.where(vfirst < last, vstarts[np.minimum(vfirst, m - 1)], ends)
    if not (ends - vbyte == plen).all():
        return None
    if (si >= np.uint64(1 << 31)).any() or (link >= np.uint64(1 << 31)).any() or (vals >= np.uint64(1 << 62)).any():
        return None
    cv = np.concatenate(([0], np.cumsum(vals.astype(np.int64))))
    totals = cv[last] - cv[np.minimum(vfirst, last)]
    return si.astype(np.int64), totals, link.astype(np.int64)
