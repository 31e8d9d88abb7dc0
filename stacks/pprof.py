"""pprof protobuf <-> :class:`~stacks.model.Profile` (pure).

Decoding: locations are leaf first in pprof and are reversed to root first;
a location with several ``line`` entries is a run of inlined frames
(``line[0]`` innermost). One sample type is chosen (``cpu/nanoseconds``,
else ``samples/count``, else the default or last one) and turned into sample
counts: ``value / period`` for nanosecond units, otherwise the raw value.
String sample labels split the result into one profile per label set.

Kernel frames: a location whose mapping file is ``[kernel.kallsyms]`` (any
``[kernel...`` name), or whose function name ends in ``_[k]``, is
:attr:`Kind.KERNEL`. :func:`encode_pprof` writes kernel frames with a
``[kernel.kallsyms]`` mapping, so kinds survive a round trip.

Every malformed input raises :class:`~stacks.errors.InputError`.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import chain, pairwise
from operator import itemgetter
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from stacks import _proto
from stacks.errors import InputError
from stacks.gz import maybe_gunzip
from stacks.model import Frame, Kind, Labels, Profile, StackTable, merge
from stacks.profiletype import TIME_UNITS_NS

KERNEL_MAPPING = "[kernel.kallsyms]"
KERNEL_SUFFIX = "_[k]"
DEFAULT_MAX_DECOMPRESSED = 256 << 20


# Frames are immutable, so one cache serves every decode: an app pushes the
# same function names every 10 s. Bounded so odd inputs cannot grow it forever.
_FRAMES: dict[tuple[str, bool], Frame] = {}
_FRAMES_MAX = 200_000


def _frame(name: str, kernel: bool) -> Frame:
    """The frame for a pprof function name; ``_[k]`` or a kernel mapping makes it kernel."""
    fr = _FRAMES.get((name, kernel))
    if fr is None:
        if len(_FRAMES) >= _FRAMES_MAX:
            _FRAMES.clear()
        if name.endswith(KERNEL_SUFFIX):
            fr = Frame(name[: -len(KERNEL_SUFFIX)], Kind.KERNEL)
        else:
            fr = Frame(name, Kind.KERNEL if kernel else Kind.USER)
        _FRAMES[(name, kernel)] = fr
    return fr


@dataclass(frozen=True)
class DecodedProfile:
    """A decoded pprof: one profile per distinct set of string sample labels.

    ``series`` is empty when the pprof has no sample with a positive value.
    Every profile in it shares one :class:`StackTable`.
    """

    series: list[tuple[Labels, Profile]]
    sample_type: str
    unit: str
    period: int
    period_type: str
    time_nanos: int
    duration_nanos: int
    period_unit: str = ""
    types: tuple[tuple[str, str], ...] = ()  # every sample type (column) of the pprof

    def merged(self) -> Profile:
        """All series merged into one profile (sample labels dropped)."""
        if not self.series:
            return Profile.empty()
        return merge([p for _, p in self.series])


def _bad(why: str) -> InputError:
    return InputError(f"pprof profile is malformed: {why}")


def _strings(raw: list[bytes]) -> list[str]:
    # Symbol names are not always UTF-8 (C++ demanglers, Latin-1 paths); keep
    # them readable rather than rejecting the whole profile.
    out = [b.decode("utf-8", "replace") for b in raw]
    if out and out[0] != "":
        raise _bad(f"string_table[0] must be the empty string, got {out[0][:80]!r}")
    return out


def _choose_value(types: list[tuple[str, str]], default_type: str) -> int:
    for wanted in (("cpu", "nanoseconds"), ("samples", "count")):
        if wanted in types:
            return types.index(wanted)
    if default_type:
        for i, (t, _) in enumerate(types):
            if t == default_type:
                return i
    return len(types) - 1


def decode_pprof(
    data: bytes, table: StackTable | None = None, *, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED,
    column: int | None = None,
) -> DecodedProfile:
    """Decode pprof bytes (gzip or plain) into per-label-set profiles on ``table``.

    ``column`` picks the sample type (value index) to read; None chooses as
    :func:`_choose_value` does. Raises :class:`InputError` for bad gzip, bad
    protobuf, dangling ids or a column the profile does not have.
    """
    raw = maybe_gunzip(bytes(data), max_decompressed)
    table = table if table is not None else StackTable()
    # The fast reader gives up (None) on anything unusual or wrong before it
    # touches ``table``; the library decoder then gives the result or the
    # exact error, so both paths agree by construction.
    with _LOCK:
        fast = _decode_compiled(raw, table, column) if _INDEX is not None else None
        if fast is None:
            fast = _decode_fast(raw, table, column)
    if fast is not None:
        return fast
    return _decode_library(raw, table, column)


@dataclass
class _Head:
    """Everything but the samples, shared by both decoders."""

    s: Callable[[int, str], str]
    types: list[tuple[str, str]]
    vi: int
    period: int
    period_type: str
    period_unit: str
    locations: dict[int, tuple[Frame, ...]]  # location id -> frames, root first
    single: dict[int, Frame] | None  # location id -> frame when no location is inlined


def _pick(types: list[tuple[str, str]], default_type: str, column: int | None) -> int:
    if column is None:
        return _choose_value(types, default_type) if types else -1
    if not 0 <= column < len(types):
        raise _bad(f"sample type {column} was asked for, but the profile has {len(types)} sample types")
    return column


def divisor_of(types: list[tuple[str, str]] | tuple[tuple[str, str], ...], vi: int, period: int,
               period_unit: str) -> int:
    """What a column's summed values are divided by: the period for a time column counted in
    its own period unit, or without a period unit (CPU, wall:
    ``stacks.profiletype.ProfileType.as_samples``), else 0 (raw values). A zero or negative
    period counts as 1."""
    if not types or vi < 0:
        return 0
    unit = types[vi][1]
    if unit in TIME_UNITS_NS and period_unit in (unit, ""):
        return period if period > 0 else 1
    return 0


def _head(p: Any, column: int | None = None) -> _Head:
    """Strings, sample types and location frames of a parsed Profile or ProfileSplit."""
    strings = _strings(list(p.string_table))
    n_strings = len(strings)

    def s(i: int, what: str) -> str:
        if 0 <= i < n_strings:
            return strings[i]
        if i == 0:  # an empty table still has an implicit "" at 0
            return ""
        raise _bad(f"{what} refers to string {i}, but string_table has {n_strings} entries")

    types = [(s(vt.type, "sample_type.type"), s(vt.unit, "sample_type.unit")) for vt in p.sample_type]
    period = int(p.period)
    period_type = s(p.period_type.type, "period_type.type") if p.HasField("period_type") else ""
    period_unit = s(p.period_type.unit, "period_type.unit") if p.HasField("period_type") else ""
    default_type = s(p.default_sample_type, "default_sample_type")
    if p.sample and not types:
        raise _bad("it has samples but no sample_type")
    vi = _pick(types, default_type, column)

    # Per-profile lookups are built once; the per-sample work is only dict
    # hits. Index checks run on whole columns (min/max in C) rather than one
    # Python call per string reference.
    def check(idxs: list[int], what: str, ids: list[int]) -> None:
        if idxs and (min(idxs) < 0 or max(idxs) >= max(n_strings, 1)):
            j = next(j for j, i in enumerate(idxs) if not 0 <= i < max(n_strings, 1))
            s(idxs[j], what.format(ids[j]))

    maps = list(p.mapping)
    map_ids = [m.id for m in maps]
    map_files = [m.filename for m in maps]
    check(map_files, "mapping {} filename", map_ids)
    if not n_strings:
        strings = [""]
    mapping_file = {mid: strings[i] for mid, i in zip(map_ids, map_files, strict=True)}
    user_mappings = {mid for mid, f in mapping_file.items() if not f.startswith("[kernel")}
    user_mappings.add(0)

    funcs = list(p.function)
    fn_ids = [f.id for f in funcs]
    fn_names = [f.name for f in funcs]
    fn_sys = [f.system_name for f in funcs]
    check(fn_names, "function {} name", fn_ids)
    check(fn_sys, "function {} system_name", fn_ids)
    functions = {
        fid: strings[n] or strings[sn] for fid, n, sn in zip(fn_ids, fn_names, fn_sys, strict=True)
    }

    frame = _frame

    # The frame of a named function outside the kernel mapping, by function id.
    user_frames = {fid: frame(name, False) for fid, name in functions.items() if name}

    single: dict[int, Frame] = {}
    multi: dict[int, tuple[Frame, ...]] = {}
    for loc in p.location:
        lines = loc.line
        mid = loc.mapping_id
        if len(lines) == 1 and mid in user_mappings:
            fr = user_frames.get(lines[0].function_id)
            if fr is not None:  # the common case: one named, non-kernel function
                single[loc.id] = fr
                continue
        if mid and mid not in mapping_file:
            raise _bad(f"location {loc.id} refers to mapping {mid}, which is not defined")
        mfile = mapping_file.get(mid, "") if mid else ""
        kernel = mfile.startswith("[kernel")
        fallback = f"0x{loc.address:x}" if loc.address else (mfile or "[unknown]")
        names = []
        for ln in lines:
            fid = ln.function_id
            if fid == 0:
                names.append(fallback)
                continue
            name = functions.get(fid)
            if name is None:
                raise _bad(f"location {loc.id} refers to function {fid}, which is not defined")
            names.append(name or fallback)
        if not names:
            names.append(fallback)
        if len(names) == 1:
            single[loc.id] = frame(names[0], kernel)
        else:
            # line[0] is the innermost inlined frame; root first means reversed.
            multi[loc.id] = tuple(frame(n, kernel) for n in reversed(names))
    locations = {lid: (fr,) for lid, fr in single.items()}
    locations.update(multi)
    # Most profiles have no inlining: then one location is one frame.
    return _Head(s, types, vi, period, period_type, period_unit, locations, single if not multi else None)


def _decoded(p: Any, head: _Head, series: list[tuple[Labels, Profile]]) -> DecodedProfile:
    sample_type, unit = head.types[head.vi] if head.types else ("", "")
    return DecodedProfile(
        series=series,
        sample_type=sample_type,
        unit=unit,
        period=head.period,
        period_type=head.period_type,
        time_nanos=int(p.time_nanos),
        duration_nanos=int(p.duration_nanos),
        period_unit=head.period_unit,
        types=tuple(head.types),
    )


def _decode_library(raw: bytes, table: StackTable, column: int | None = None) -> DecodedProfile:
    """The reference decoder: every field through the protobuf library.

    Used for profiles the fast reader declines (odd encodings, malformed
    input) and, in the tests, as the oracle the fast reader must equal.
    """
    try:
        p = _proto.Profile.FromString(raw)
    except (DecodeError, RecursionError, ValueError) as e:
        raise InputError(
            f"pprof profile is not a valid protobuf ({e}); send a pprof profile (gzip or plain)"
        ) from None
    head = _head(p, column)
    s = head.s
    loc_single = head.single.__getitem__ if head.single is not None else None
    loc_multi = head.locations.__getitem__
    intern = table.intern
    stack_ids: dict[tuple[int, ...], int] = {}
    # Values are summed per (label set, stack) in plain dicts: cheaper than
    # numpy for the small profiles SDKs push, and it leaves ids unique.
    groups: dict[tuple[tuple[int, int], ...], dict[int, int]] = {}
    nolabel = groups.setdefault((), {})
    n_types = len(head.types)
    vi = head.vi
    for k, smp in enumerate(p.sample):
        locs = tuple(smp.location_id)
        sid = stack_ids.get(locs)
        if sid is None:
            try:
                # map() over a dict's __getitem__ keeps the per-frame loop in C.
                if loc_single is not None:
                    frames = tuple(map(loc_single, locs[::-1]))
                else:
                    frames = tuple(chain.from_iterable(map(loc_multi, locs[::-1])))
            except KeyError as e:
                raise _bad(f"sample {k} refers to location {e.args[0]}, which is not defined") from None
            sid = stack_ids[locs] = intern(frames)
        values = smp.value
        if len(values) != n_types:
            raise _bad(f"sample {k} has {len(values)} values but there are {n_types} sample types")
        v = values[vi]
        if v <= 0:
            continue  # CPU profiles never carry these; delta profiles might
        if smp.label:
            # String indices now, names later: checked once per label set.
            key = tuple(sorted((lb.key, lb.str) for lb in smp.label if lb.str))
            acc = groups.get(key)
            if acc is None:
                acc = groups[key] = {}
        else:
            acc = nolabel
        acc[sid] = acc.get(sid, 0) + v

    divisor = divisor_of(head.types, vi, head.period, head.period_unit)
    by_labels: dict[Labels, dict[int, int]] = {}
    for key, acc in groups.items():
        if not acc:
            continue
        labels = Labels.of((s(ki, "sample label key"), s(vv, "sample label value")) for ki, vv in key)
        into = by_labels.get(labels)
        if into is None:
            by_labels[labels] = acc
        else:  # label sets that differ only by empty keys or values
            for sid, v in acc.items():
                into[sid] = into.get(sid, 0) + v
    series: list[tuple[Labels, Profile]] = []
    for labels, acc in by_labels.items():
        ids = sorted(acc)
        counts = _to_samples([acc[i] for i in ids], divisor)
        try:
            prof = Profile(table, np.array(ids, dtype=np.int64), np.array(counts, dtype=np.int64))
        except OverflowError:
            raise _bad("sample values for one stack add up past 2**63") from None
        series.append((labels, prof))
    return _decoded(p, head, series)


# -- fast reader ---------------------------------------------------------------------------
# The hot part of a pprof is its samples: one small message each, holding a
# packed varint list of location ids and one value per sample type. Reading
# them through the protobuf library costs a Python object per field (~4 us a
# sample). Instead the library parses ``ProfileSplit`` (samples left as raw
# bytes, everything else as before) and the samples are read here: the usual
# shapes (packed location ids, packed or unpacked values, no labels) with
# numpy over all samples at once, any other shape with a small Python reader.
# Anything the readers do not fully understand makes the decode fall back to
# the library (``None``), which then gives the same result or the same error.

_LOCK = threading.Lock()
_FAST_MIN_SAMPLES = 64  # measured break-even: ~40 samples (bench/pprof_decode.py, SDK-shaped push)
_U64 = (1 << 64) - 1

# Global frame numbers, so a stack is a run of int32s whose bytes key a cache
# from stack to id on one StackTable. The numbers are stable while the cache
# lives; both are cleared together when either grows past its bound.
_FRAME_NO: dict[Frame, int] = {}
_FRAME_BY_NO: list[Frame] = []
_STACKS: dict[bytes, int] = {}
_STACKS_TABLE: list[StackTable | None] = [None]
_STACKS_MAX = 500_000
_KEY_NARROW = [True]  # frame numbers fit 16 bits (until the registry passes 65,536)


def _reset_frames() -> None:
    """Forget every frame number, and so every cache keyed by them."""
    _FRAME_NO.clear()
    _FRAME_BY_NO.clear()
    _STACKS.clear()
    _KEY_NARROW[0] = True
    _NAME_NO[False].clear()
    _NAME_NO[True].clear()
    if _INDEX is not None:
        _INDEX.clear()


def _bound_caches(table: StackTable) -> None:
    """Keep the caches bounded, and tied to the table their stack ids point into."""
    if len(_FRAME_BY_NO) > _FRAMES_MAX or len(_STACKS) > _STACKS_MAX or len(_INDEX or ()) > _STACKS_MAX:
        _reset_frames()
    if _STACKS_TABLE[0] is not table:
        _STACKS.clear()
        if _INDEX is not None:
            _INDEX.clear()
        _STACKS_TABLE[0] = table


def _frame_no(fr: Frame) -> int:
    n = _FRAME_NO.get(fr)
    if n is None:
        n = _FRAME_NO[fr] = len(_FRAME_BY_NO)
        _FRAME_BY_NO.append(fr)
    return n


_RUN0 = itemgetter(0)


class _Fallback(Exception):
    """The fast reader met something it leaves to the protobuf library."""


def _varint(b: bytes, i: int, end: int) -> tuple[int, int]:
    """The unsigned varint at ``b[i]`` and the index after it."""
    v = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _Fallback
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        if c < 0x80:
            if v > _U64:
                raise _Fallback
            return v, i
        shift += 7


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


def _skip(b: bytes, i: int, wire: int, end: int) -> int:
    """Index after an unknown field's payload."""
    if wire == 0:
        return _varint(b, i, end)[1]
    if wire == 1:
        i += 8
    elif wire == 5:
        i += 4
    elif wire == 2:
        n, i = _varint(b, i, end)
        i += n
    else:  # groups and invalid wire types: the library decides
        raise _Fallback
    if i > end:
        raise _Fallback
    return i


def _read_sample(b: bytes) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """A Sample message in any valid encoding: (location ids, values, [(label key, str)])."""
    locs: list[int] = []
    values: list[int] = []
    labels: list[tuple[int, int]] = []
    i, end = 0, len(b)
    while i < end:
        tag, i = _varint(b, i, end)
        field, wire = tag >> 3, tag & 7
        if field in (1, 2) and wire in (0, 2):
            out = locs if field == 1 else values
            if wire == 0:
                v, i = _varint(b, i, end)
                out.append(v)
            else:
                n, i = _varint(b, i, end)
                stop = i + n
                if stop > end:
                    raise _Fallback
                while i < stop:
                    v, i = _varint(b, i, stop)
                    out.append(v)
        elif field == 3 and wire == 2:
            n, i = _varint(b, i, end)
            stop = i + n
            if stop > end:
                raise _Fallback
            key = text = 0
            while i < stop:
                t, i = _varint(b, i, stop)
                if t == 8:
                    key, i = _varint(b, i, stop)
                elif t == 16:
                    text, i = _varint(b, i, stop)
                elif t >> 3 in (1, 2) or t >> 3 == 0:
                    raise _Fallback  # a known field with another wire type
                else:
                    i = _skip(b, i, t & 7, stop)
            labels.append((_signed(key), _signed(text)))
        elif field in (1, 2, 3) or field == 0:
            raise _Fallback
        else:
            i = _skip(b, i, wire, end)
    return locs, [_signed(v) for v in values], labels


def _decode_fast(raw: bytes, table: StackTable, column: int | None = None) -> DecodedProfile | None:
    """The decode with samples read by hand, or None to leave it to the library."""
    try:
        p = _proto.ProfileSplit.FromString(raw)
        samples = list(p.sample)
        n = len(samples)
        if n < _FAST_MIN_SAMPLES:
            return None  # below this, numpy's fixed cost per call makes the library faster
        head = _head(p, column)
    except (DecodeError, RecursionError, ValueError):  # InputError is a ValueError
        return None
    n_types = len(head.types)
    vi = head.vi
    try:
        fast, f_first, locs_all, fvals = _scan_samples(samples, n_types, vi)
    except _Fallback:
        return None

    # Location ids -> runs of global frame numbers (leaf first), as arrays.
    _bound_caches(table)
    loc_frames = head.locations
    lids = np.fromiter(loc_frames, np.uint64, len(loc_frames))
    order = np.argsort(lids)
    lids = lids[order]
    runs = [loc_frames[lid] for lid in lids.tolist()]
    run_len = np.fromiter(map(len, runs), np.int64, len(runs))
    frames = list(map(_RUN0, runs)) if head.single is not None else [f for r in runs for f in reversed(r)]
    nums = list(map(_FRAME_NO.get, frames))
    if None in nums:
        nums = list(map(_frame_no, frames))
    flat = np.array(nums, np.int64)
    run_off = np.cumsum(run_len) - run_len

    fast_idx = np.flatnonzero(fast)
    nf = len(fast_idx)
    if len(locs_all):
        if not len(lids):
            return None
        top = int(lids[-1])
        if top < 4 * len(lids) + 4096:
            # Ids are usually small and dense (1..N): a lookup table beats a search.
            lut = np.full(top + 2, -1, np.int64)
            lut[lids.astype(np.int64)] = np.arange(len(lids))
            li = lut[np.minimum(locs_all, top + 1).astype(np.int64)]
            if int(li.min()) < 0:
                return None  # an undefined location: the library names it
        else:
            li = np.searchsorted(lids, locs_all)
            if not np.array_equal(lids[np.minimum(li, len(lids) - 1)], locs_all):
                return None
    else:
        li = np.zeros(0, np.int64)
    if int(run_len.max(initial=1)) == 1 and int(run_len.min(initial=1)) == 1:
        fnos = flat[li]
        fbound = np.append(f_first, len(locs_all)) if nf else np.zeros(1, np.int64)
    else:
        occ_len = run_len[li]
        cs = np.concatenate(([0], np.cumsum(occ_len)))
        fidx = np.repeat(run_off[li] - cs[:-1], occ_len) + np.arange(int(cs[-1]))
        fnos = flat[fidx]
        fbound = cs[np.append(f_first, len(locs_all))] if nf else np.zeros(1, np.int64)
    # Narrow keys hash faster; the width only changes when the cache is cleared.
    code, width = ("H", 2) if len(_FRAME_BY_NO) < 65536 and _KEY_NARROW[0] else ("i", 4)
    if width == 4 and _KEY_NARROW[0]:
        _KEY_NARROW[0] = False
        _STACKS.clear()
    fb = fnos.astype(np.uint16 if width == 2 else np.int32).tobytes()
    b4 = (fbound * width).tolist()
    keys = [fb[x:y] for x, y in pairwise(b4)]
    cache = _STACKS
    fsids = list(map(cache.get, keys))

    # Samples of other shapes (labels, unpacked ids), read one by one.
    slow_idx = np.flatnonzero(~fast).tolist()
    slow: list[tuple[int, tuple[Frame, ...], int, tuple[tuple[int, int], ...] | None]] = []
    loc_get = head.locations.__getitem__
    try:
        for k in slow_idx:
            locs, values, labels = _read_sample(samples[k])
            if len(values) != n_types:
                return None
            frames = tuple(chain.from_iterable(map(loc_get, reversed(locs))))
            key = tuple(sorted((kk, vv) for kk, vv in labels if vv)) if labels else None
            slow.append((k, frames, values[vi], key))
    except (_Fallback, KeyError):
        return None

    # Everything is read and checked: intern new stacks in sample order, as
    # the library decoder does, so both leave the same table behind.
    intern = table.intern
    by_no = _FRAME_BY_NO.__getitem__
    sids = np.empty(n, np.int64)
    vals = np.empty(n, np.int64)
    if nf:
        vals[fast_idx] = fvals
    misses = [j for j, sid in enumerate(fsids) if sid is None]
    slow_sids = [0] * len(slow)
    if not slow:
        for j in misses:
            key = keys[j]
            fsids[j] = cache[key] = intern(map(by_no, reversed(memoryview(key).cast(code))))
    else:
        todo = [(int(fast_idx[j]), j) for j in misses] + [(k, -1 - m) for m, (k, _, _, _) in enumerate(slow)]
        todo.sort()
        for _, j in todo:
            if j >= 0:
                key = keys[j]
                fsids[j] = cache[key] = intern(map(by_no, reversed(memoryview(key).cast(code))))
            else:
                slow_sids[-1 - j] = intern(slow[-1 - j][1])
    if nf:
        sids[fast_idx] = np.array(fsids, np.int64)

    # Label groups: 0 is "no labels"; others in order of their first positive sample.
    gcode = np.zeros(n, np.int64)
    keys_by_code: list[tuple[tuple[int, int], ...]] = [()]
    code_of: dict[tuple[tuple[int, int], ...], int] = {(): 0}
    for m, (k, _, v, key) in enumerate(slow):
        sids[k] = slow_sids[m]
        vals[k] = v
        if v > 0 and key:
            c = code_of.get(key)
            if c is None:
                c = code_of[key] = len(keys_by_code)
                keys_by_code.append(key)
            gcode[k] = c
    divisor = divisor_of(head.types, vi, head.period, head.period_unit)
    series = _label_series(table, head.s, sids, vals, gcode, keys_by_code, divisor)
    return None if series is None else _decoded(p, head, series)


def _label_series(
    table: StackTable,
    s: Callable[[int, str], str],
    sids: np.ndarray,
    vals: np.ndarray,
    gcode: np.ndarray,
    keys_by_code: list[tuple[tuple[int, int], ...]],
    divisor: int,
) -> list[tuple[Labels, Profile]] | None:
    """One profile per label set, from per-sample stack ids, values and label-group codes.

    ``keys_by_code[c]`` is group c's sorted (key, value) string indexes; None
    when a string index is out of range or a sum could overflow int64 (the
    library decoder then gives the error or the exact sum).
    """
    positive = vals > 0
    by_labels: dict[Labels, list[int]] = {}
    present = np.bincount(gcode[positive], minlength=len(keys_by_code)) > 0
    try:
        for c, key in enumerate(keys_by_code):
            if not present[c]:
                continue
            labels = Labels.of((s(ki, "sample label key"), s(vv, "sample label value")) for ki, vv in key)
            by_labels.setdefault(labels, []).append(c)
    except InputError:
        return None
    series: list[tuple[Labels, Profile]] = []
    for labels, codes in by_labels.items():
        if len(by_labels) == 1 and len(codes) == len(keys_by_code):
            sel = positive  # one label set: every positive sample
        else:
            sel = positive & (np.isin(gcode, codes) if len(codes) > 1 else gcode == codes[0])
        prof = _summed(table, sids[sel], vals[sel], divisor)
        if prof is None:
            return None  # sums near 2**63: exact Python ints in the library path
        series.append((labels, prof))
    return series


def _scan_samples(
    samples: list[bytes], n_types: int, vi: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Find the samples of the usual shape and read them with numpy.

    The shape: ``location_id`` packed first (length < 2**14), then the values,
    either packed (``0x12``) or one ``0x10`` varint each, and nothing else.
    Such a sample is nothing but varints (tags and lengths included), so one
    vectorised varint decode over all sample bytes reads every field.
    Returns (mask of those samples, the index of each one's first location
    id, all their location ids in order, their chosen values).
    """
    n = len(samples)
    lens = np.fromiter(map(len, samples), np.int64, n)
    ends = np.cumsum(lens)
    starts = ends - lens
    a = np.frombuffer(b"".join(samples) + b"\x00" * 8, np.uint8)
    b0 = a[starts]
    b1 = a[starts + 1].astype(np.int64)
    b2 = a[starts + 2].astype(np.int64)
    one = b1 < 0x80
    ll = np.where(one, b1, (b1 & 0x7F) | (b2 << 7))
    ls = starts + np.where(one, 2, 3)
    le = ls + ll
    ok = (lens >= 2) & (b0 == 0x0A) & (one | (b2 < 0x80)) & (le < ends)
    le = np.where(ok, le, starts)  # keep indexes in range for rejected samples
    t0 = a[le]
    m1 = a[le + 1].astype(np.int64)
    m2 = a[le + 2].astype(np.int64)
    mone = m1 < 0x80
    ml = np.where(mone, m1, (m1 & 0x7F) | (m2 << 7))
    vs_packed = le + np.where(mone, 2, 3)
    packed = ok & (t0 == 0x12) & (mone | (m2 < 0x80)) & (vs_packed + ml == ends) & (ml > 0)
    unpacked = ok & (t0 == 0x10)
    fast = packed | unpacked
    # Both ranges must end on a varint's final byte; otherwise the library decides.
    fast &= a[np.maximum(ends - 1, 0)] < 0x80
    fast &= (le == ls) | (a[np.maximum(le - 1, 0)] < 0x80)
    if not fast.any():
        return fast, np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.int64)

    # Every varint in the buffer: its first byte, its value; vix = varint index per byte.
    term = a < 0x80
    if not term[ends - 1].all():
        # A sample ending mid-varint (a fixed-width field, say) would shift
        # the varint boundaries of the samples after it.
        raise _Fallback
    vstarts = np.flatnonzero(term[:-1])
    vstarts += 1
    vstarts = np.concatenate(([0], vstarts))
    vlen = np.diff(vstarts, append=len(a))
    if int(vlen.max()) > 9:
        raise _Fallback  # 10-byte varints (negative values, huge ids), or not varints at all
    values = (a[vstarts] & 0x7F).astype(np.uint64)
    # Byte j of every varint longer than j, one pass per byte position over a
    # shrinking set: ids are mostly 1-2 bytes, so few bytes are touched twice.
    sel = np.flatnonzero(vlen > 1)
    j = 1
    while len(sel):
        values[sel] |= (a[vstarts[sel] + j] & 0x7F).astype(np.uint64) << np.uint64(7 * j)
        j += 1
        sel = sel[vlen[sel] > j]

    def vix(p: np.ndarray) -> np.ndarray:
        """The index of the varint starting at byte ``p``."""
        return np.searchsorted(vstarts, p)

    vfirst_all = vix(np.where(packed, vs_packed, le))
    stride_all = np.where(packed, 1, 2)
    # Unpacked values must be exactly ``0x10 v`` pairs, one per sample type:
    # any other field (labels, unknown ones) sends the sample to the Python reader.
    fast &= vix(ends) - vfirst_all == n_types * stride_all
    unp = np.flatnonzero(fast & ~packed)
    if len(unp):
        tag_idx = vfirst_all[unp][:, None] + 2 * np.arange(n_types)[None, :]
        fast[unp[~(values[tag_idx] == 0x10).all(axis=1)]] = False
    fs, fe = ls[fast], le[fast]
    vfirst = vfirst_all[fast]
    is_packed = packed[fast]
    stride = stride_all[fast]
    chosen = values[vfirst + vi * stride + (1 - is_packed.astype(np.int64))].astype(np.int64)
    lfirst = vix(fs)
    lcount = vix(fe) - lfirst
    # Location ids of the fast samples, concatenated in order.
    total = int(lcount.sum())
    off = np.cumsum(lcount) - lcount
    lidx = np.repeat(lfirst - off, lcount) + np.arange(total)
    return fast, off, values[lidx], chosen


# -- compiled reader ---------------------------------------------------------------------------
# ``stacks._pprof_c`` (Cython, built by ``pip install``) reads the whole
# profile in C: one pass for the tables, one for the samples, where each
# sample's frame numbers are hashed and looked up in a compiled index. Python
# only maps functions to frame numbers (a dict hit each) and interns new
# stacks. Without a C compiler the module is absent and the numpy reader
# above does the work.
try:
    from stacks import _pprof_c
except ImportError:  # pragma: no cover - exercised where no compiler was available
    _pprof_c = None



def _new_index() -> Any:
    """A compiled stack index, keyed at random (SipHash): colliding stacks cannot be prepared offline."""
    assert _pprof_c is not None
    return _pprof_c.StackIndex(secrets.randbits(64), secrets.randbits(64))


# The compiled reader is used while this is set (see stacks.compiled.use).
_INDEX = _new_index() if _pprof_c is not None else None
# Frame numbers by function name, for user (False) and kernel (True) frames.
_NAME_NO: dict[bool, dict[str, int]] = {False: {}, True: {}}


def _name_no(name: str, kernel: bool) -> int:
    """The frame number of a function name (the frame's kind as :func:`_frame` decides it)."""
    n = _NAME_NO[kernel].get(name)
    if n is None:
        n = _NAME_NO[kernel][name] = _frame_no(_frame(name, kernel))
    return n


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray | None:
    """Index of each ``wanted`` id in ``ids`` (-1 when absent); None when ``ids`` repeat.

    Repeated ids are legal protobuf (the library keeps the last); they are
    left to it.
    """
    if not len(ids):
        return np.full(len(wanted), -1, np.int64)
    order = np.argsort(ids)
    srt = ids[order]
    if len(srt) > 1 and bool((srt[1:] == srt[:-1]).any()):
        return None
    pos = np.minimum(np.searchsorted(srt, wanted), len(srt) - 1)
    return np.where(srt[pos] == wanted, order[pos], -1)


def _decode_compiled(raw: bytes, table: StackTable, column: int | None = None) -> DecodedProfile | None:
    """The decode through ``stacks._pprof_c``, or None to leave it to the other readers."""
    assert _pprof_c is not None and _INDEX is not None
    t = _pprof_c.scan(raw)
    if t is None:
        return None
    strings: list[str] = t["strings"]
    n_strings = len(strings)
    if not n_strings or strings[0] != "":
        return None  # an empty or malformed string table: the library has the rules

    def s(i: int, what: str) -> str:
        if 0 <= i < n_strings:
            return strings[i]
        raise _bad(f"{what} refers to string {i}, but string_table has {n_strings} entries")

    try:
        types = [(s(a, "sample_type.type"), s(u, "sample_type.unit")) for a, u in t["types"]]
        period_type = s(t["period_type"], "period_type.type") if t["period_type"] >= 0 else ""
        if "period_unit" not in t:
            return None  # a stale build of the extension: the other readers have the unit
        period_unit = s(t["period_unit"], "period_type.unit") if t["period_type"] >= 0 else ""
        default_type = s(t["default_sample_type"], "default_sample_type")
    except InputError:
        return None
    starts, ends = t["sample_start"], t["sample_end"]
    n = len(starts)
    if n and not types:
        return None
    if column is not None and not 0 <= column < len(types):
        return None  # the library names the error
    vi = _pick(types, default_type, column)
    _bound_caches(table)

    # Mappings: which are kernel ones.
    m_file = t["mapping_file"]
    if len(m_file) and (int(m_file.min()) < 0 or int(m_file.max()) >= n_strings):
        return None
    m_kernel = np.fromiter((strings[f].startswith("[kernel") for f in m_file.tolist()), bool, len(m_file))
    # Functions: name (or system name) and its user frame number.
    f_name, f_sys = t["function_name"], t["function_system_name"]
    for col in (f_name, f_sys):
        if len(col) and (int(col.min()) < 0 or int(col.max()) >= n_strings):
            return None
    names = [strings[a] or strings[b] for a, b in zip(f_name.tolist(), f_sys.tolist(), strict=True)]
    nos = list(map(_NAME_NO[False].get, names))  # the loop in C: names are known after the first push
    if None in nos:
        nos = [n if n is not None else (_name_no(nm, False) if nm else -1) for n, nm in zip(nos, names, strict=True)]
    user_no = np.array(nos, np.int64)

    # Locations: one frame each in the usual case, found with numpy.
    l_map, nlines, line0 = t["location_mapping"], t["location_nlines"], t["location_line0"]
    line_fn = t["line_function"]
    n_loc = len(l_map)
    mi = _positions(t["mapping_id"], l_map)
    fi_line = _positions(t["function_id"], line_fn)
    if mi is None or fi_line is None:
        return None
    if bool(((mi < 0) & (l_map != 0)).any()):
        return None  # an undefined mapping
    kernel = np.zeros(n_loc, bool)
    has_map = mi >= 0
    kernel[has_map] = m_kernel[mi[has_map]]
    single = nlines == 1
    fi = np.full(n_loc, -1, np.int64)
    fi[single] = fi_line[line0[single]]
    frame_no = np.full(n_loc, -1, np.int64)
    ok = single & (fi >= 0)
    frame_no[ok] = user_no[fi[ok]]
    ok &= frame_no >= 0  # a named function
    kern = ok & kernel
    if kern.any():
        frame_no[kern] = [_name_no(names[f], True) for f in fi[kern].tolist()]
    run_len = np.ones(n_loc, np.int64)
    odd = np.flatnonzero(~ok).tolist()
    extra: dict[int, list[int]] = {}
    if odd:
        # Inlined runs, unnamed functions, addresses: the rules of _head, one location at a time.
        addr = t["location_address"]
        mfile = [strings[f] for f in m_file.tolist()]
        for j in odd:
            mfile_j = mfile[mi[j]] if mi[j] >= 0 else ""
            fallback = f"0x{int(addr[j]) & _U64:x}" if addr[j] else (mfile_j or "[unknown]")
            run: list[str] = []
            for q in range(int(line0[j]), int(line0[j] + nlines[j])):
                if line_fn[q] == 0:
                    run.append(fallback)
                    continue
                f = int(fi_line[q])
                if f < 0:
                    return None  # an undefined function
                run.append(names[f] or fallback)
            if not run:
                run.append(fallback)
            extra[j] = [_name_no(nm, bool(kernel[j])) for nm in run]  # leaf first, as lines are
            run_len[j] = len(run)
    if len(_FRAME_BY_NO) >= 1 << 31:
        return None
    run_off = np.cumsum(run_len) - run_len
    if extra:
        run_frames = np.repeat(frame_no, run_len)
        for j, nos in extra.items():
            run_frames[run_off[j] : run_off[j] + len(nos)] = nos
    else:
        run_frames = frame_no
    l_id = t["location_id"]
    top = int(l_id.max()) if n_loc else -1
    if n_loc and (int(l_id.min()) < 0 or top >= 4 * n_loc + 4096):
        return None  # sparse or huge ids: the numpy reader searches instead
    lut = np.full(top + 1, -1, np.int32)
    lut[l_id] = np.arange(n_loc, dtype=np.int32)
    if len(np.unique(l_id)) != n_loc:
        return None  # a location defined twice
    i32 = np.int32
    run_off32, run_len32, frames32 = run_off.astype(i32), run_len.astype(i32), run_frames.astype(i32)
    got = _pprof_c.read_samples(raw, starts, ends, lut, run_off32, run_len32, frames32, len(types), vi, _INDEX)
    if got is None:
        return None
    sids, vals, h1, h2, labelled = got

    # Labelled samples: their label sets, read by the small Python reader.
    lab_idx = np.flatnonzero(labelled).tolist()
    lab_keys: list[tuple[tuple[int, int], ...] | None] = []
    try:
        for k in lab_idx:
            _, _, labels = _read_sample(raw[starts[k] : ends[k]])
            lab_keys.append(tuple(sorted((kk, vv) for kk, vv in labels if vv)) if labels else None)
    except _Fallback:
        return None

    # New stacks, interned in sample order (as the library decoder does).
    misses = np.flatnonzero(sids < 0).tolist()
    if misses:
        intern = table.intern
        by_no = _FRAME_BY_NO.__getitem__
        index = _INDEX
        frames_of = _pprof_c.sample_frames
        h1l, h2l = h1[misses].tolist(), h2[misses].tolist()
        sl, el = starts[misses].tolist(), ends[misses].tolist()
        for m, j in enumerate(misses):
            sid = index.lookup(h1l[m], h2l[m])  # an earlier sample of this push may have added it
            if sid < 0:
                nos = frames_of(raw, sl[m], el[m], lut, run_off32, run_len32, frames32)
                sid = intern(tuple(map(by_no, nos)))
                index.insert(h1l[m], h2l[m], sid)
            sids[j] = sid

    gcode = np.zeros(n, np.int64)
    keys_by_code: list[tuple[tuple[int, int], ...]] = [()]
    if lab_idx:
        code_of: dict[tuple[tuple[int, int], ...], int] = {(): 0}
        for k, key in zip(lab_idx, lab_keys, strict=True):
            if key and vals[k] > 0:
                c = code_of.get(key)
                if c is None:
                    c = code_of[key] = len(keys_by_code)
                    keys_by_code.append(key)
                gcode[k] = c
    period = t["period"]
    divisor = divisor_of(types, vi, period, period_unit)
    series = _label_series(table, s, sids, vals, gcode, keys_by_code, divisor)
    if series is None:
        return None
    sample_type, unit = types[vi] if types else ("", "")
    return DecodedProfile(series, sample_type, unit, period, period_type, t["time_nanos"], t["duration_nanos"],
                          period_unit, tuple(types))


def _summed(table: StackTable, sids: np.ndarray, vals: np.ndarray, divisor: int) -> Profile | None:
    """Values summed per stack and turned into sample counts; None when int64 could overflow."""
    if not len(vals):
        return None
    if int(vals.max()) > ((1 << 63) - 1 - max(divisor, 0)) // len(vals):
        return None
    order = np.argsort(sids)  # a sum per id: any order of equal ids will do
    ss = sids[order]
    bounds = np.flatnonzero(np.concatenate(([True], ss[1:] != ss[:-1])))
    sums = np.add.reduceat(vals[order], bounds)
    if divisor > 0:
        sums = np.maximum((sums + divisor // 2) // divisor, 1)
    return Profile(table, ss[bounds], sums)


def _to_samples(values: list[int], period: int) -> list[int]:
    """Summed positive values to sample counts: round(value / period), at least 1.

    Exact integer arithmetic (Python ints), rounding halves up; ``period <= 0``
    keeps the raw values.
    """
    if period <= 0:
        return values
    half = period // 2
    return [(v + half) // period or 1 for v in values]


def encode_pprof(
    profile: Profile,
    *,
    period_nanos: int = 10_000_000,
    time_nanos: int = 0,
    duration_nanos: int = 0,
    sample_type: tuple[str, str] = ("cpu", "nanoseconds"),
    sample_labels: Mapping[str, str] | None = None,
) -> bytes:
    """Encode a profile as plain (not gzipped) pprof bytes.

    Counts are written as ``count * period_nanos`` when the sample unit is
    nanoseconds, else as they are. ``sample_labels`` go on every sample.
    """
    strings: dict[str, int] = {"": 0}

    def sx(text: str) -> int:
        i = strings.get(text)
        if i is None:
            i = strings[text] = len(strings)
        return i

    p = _proto.Profile()
    p.sample_type.add(type=sx(sample_type[0]), unit=sx(sample_type[1]))
    p.period_type.type = sx("cpu")
    p.period_type.unit = sx("nanoseconds")
    p.period = period_nanos
    p.time_nanos = time_nanos
    p.duration_nanos = duration_nanos
    scale = period_nanos if sample_type[1] == "nanoseconds" and period_nanos > 0 else 1

    label_pairs = [(sx(k), sx(v)) for k, v in sorted((sample_labels or {}).items()) if v != ""]
    functions: dict[str, int] = {}
    locations: dict[Frame, int] = {}
    kernel_mapping = 0

    def location(fr: Frame) -> int:
        nonlocal kernel_mapping
        lid = locations.get(fr)
        if lid is not None:
            return lid
        fid = functions.get(fr.name)
        if fid is None:
            fid = functions[fr.name] = len(functions) + 1
            p.function.add(id=fid, name=sx(fr.name), system_name=sx(fr.name))
        lid = locations[fr] = len(locations) + 1
        loc = p.location.add(id=lid)
        loc.line.add(function_id=fid)
        if fr.kind is Kind.KERNEL:
            if not kernel_mapping:
                kernel_mapping = 1
                p.mapping.add(id=1, filename=sx(KERNEL_MAPPING), has_functions=True)
            loc.mapping_id = kernel_mapping
        return lid

    for stack, count in profile.items():
        smp = p.sample.add(location_id=[location(fr) for fr in reversed(stack)], value=[count * scale])
        for k, v in label_pairs:
            smp.label.add(key=k, str=v)
    p.string_table.extend(t.encode("utf-8") for t in strings)
    return p.SerializeToString()
