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

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain

import numpy as np
from google.protobuf.message import DecodeError

from stacks import _proto
from stacks.errors import InputError
from stacks.gz import maybe_gunzip
from stacks.model import Frame, Kind, Labels, Profile, StackTable, merge

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
    data: bytes, table: StackTable | None = None, *, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED
) -> DecodedProfile:
    """Decode pprof bytes (gzip or plain) into per-label-set profiles on ``table``.

    Raises :class:`InputError` for bad gzip, bad protobuf or dangling ids.
    """
    raw = maybe_gunzip(bytes(data), max_decompressed)
    try:
        p = _proto.Profile.FromString(raw)
    except (DecodeError, RecursionError, ValueError) as e:
        raise InputError(
            f"pprof profile is not a valid protobuf ({e}); send a pprof profile (gzip or plain)"
        ) from None
    table = table if table is not None else StackTable()
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
    default_type = s(p.default_sample_type, "default_sample_type")
    samples = p.sample
    if samples and not types:
        raise _bad("it has samples but no sample_type")
    vi = _choose_value(types, default_type) if types else -1
    sample_type, unit = types[vi] if types else ("", "")

    # Per-profile lookups are built once; the per-sample loop below is only
    # dict hits on tuples of location ids. Index checks run on whole columns
    # (min/max in C) rather than one Python call per string reference.
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

    # Most profiles have no inlining: then one location is one frame.
    loc_single = single.__getitem__ if not multi else None
    locations = {lid: (fr,) for lid, fr in single.items()}
    locations.update(multi)
    loc_multi = locations.__getitem__
    intern = table.intern
    stack_ids: dict[tuple[int, ...], int] = {}
    # Values are summed per (label set, stack) in plain dicts: cheaper than
    # numpy for the small profiles SDKs push, and it leaves ids unique.
    groups: dict[tuple[tuple[int, int], ...], dict[int, int]] = {}
    nolabel = groups.setdefault((), {})
    n_types = len(types)
    for k, smp in enumerate(samples):
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

    divisor = period if unit == "nanoseconds" and period > 0 else 0
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
    return DecodedProfile(
        series=series,
        sample_type=sample_type,
        unit=unit,
        period=period,
        period_type=period_type,
        time_nanos=int(p.time_nanos),
        duration_nanos=int(p.duration_nanos),
    )


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
