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

:class:`PprofDecoder` holds the caches that make repeated pushes cheap; its
owner (the aggregator's ingest tables) keeps one for the life of the
process. :func:`decode_pprof` decodes with a decoder passed in, or a fresh one.

Every malformed input raises :class:`~stacks.errors.InputError`.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from stacks import _proto
from stacks._pprof_read import U64, Fallback, label_keys, location_rows, positions, sample_columns, sample_frames
from stacks._pprof_series import bad as _bad
from stacks._pprof_series import check_samples, label_groups, label_series
from stacks._pprof_tables import (
    PprofSamples,
    PprofTables,
    as_ids,
    samples_of_message,
    tables_of_message,
    tables_of_scan,
)
from stacks.errors import InputError
from stacks.folded import KERNEL_SUFFIX  # the kernel mark of folded text, which pprof names carry too
from stacks.gz import maybe_gunzip
from stacks.model import Frame, Kind, Labels, Profile, StackTable, merge
from stacks.profiletype import TIME_UNITS_NS

# ``stacks._pprof_c`` (Cython, built by ``pip install``) reads the whole
# profile in C: one pass for the tables, one for the samples, where each
# sample's frame numbers are hashed and looked up in a compiled index. Python
# only maps functions to frame numbers (a dict hit each) and interns new
# stacks. Without a C compiler the module is absent and the numpy reader
# (stacks._pprof_read) does the work.
try:
    from stacks import _pprof_c
except ImportError:  # pragma: no cover - exercised where no compiler was available
    _pprof_c = None

BUILT = _pprof_c is not None
"""True when the compiled reader was built (a :class:`PprofDecoder` may then use it)."""

KERNEL_MAPPING = "[kernel.kallsyms]"
DEFAULT_MAX_DECOMPRESSED = 256 << 20

# Bounds of a decoder's caches, so odd inputs cannot grow them forever.
_FRAMES_MAX = 200_000
_STACKS_MAX = 500_000
STACK_FRAMES_CHUNK = 2048  # new stacks named per call into the compiled reader (bounds its GIL hold)
_FAST_MIN_SAMPLES = 64  # measured break-even: ~40 samples (bench/pprof_decode.py, SDK-shaped push)
Runs = tuple[np.ndarray, np.ndarray, np.ndarray]  # every location row's frame numbers: (offsets, lengths, frames)
# The compiled reader's stacks: (stack id or -1, h1, h2) per sample, the location lut and int32 runs.
Hashed = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, ...]]


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


def decode_pprof(
    data: bytes, table: StackTable | None = None, *, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED,
    column: int | None = None, decoder: PprofDecoder | None = None,
) -> DecodedProfile:
    """Decode pprof bytes (gzip or plain) into per-label-set profiles on ``table``.

    :meth:`PprofDecoder.decode` of ``decoder``, or of a fresh decoder (no caches
    carried over from earlier calls) when it is None.
    """
    dec = decoder if decoder is not None else PprofDecoder()
    return dec.decode(data, table, max_decompressed=max_decompressed, column=column)


def _string_getter(strings: list[str]) -> Callable[[int, str], str]:
    """``s(i, what)``: string ``i``, or an InputError saying ``what`` refers to a missing string."""
    n_strings = len(strings)

    def s(i: int, what: str) -> str:
        if 0 <= i < n_strings:
            return strings[i]
        if i == 0:  # an empty table still has an implicit "" at 0
            return ""
        raise _bad(f"{what} refers to string {i}, but string_table has {n_strings} entries")

    return s


def _choose_value(types: list[tuple[str, str]], default_type: str) -> int:
    """The column read by default: CPU time, else sample counts, else the default type, else the last."""
    for wanted in (("cpu", "nanoseconds"), ("samples", "count")):
        if wanted in types:
            return types.index(wanted)
    if default_type:
        for i, (t, _) in enumerate(types):
            if t == default_type:
                return i
    return len(types) - 1


@dataclass
class _Head:
    """Everything but the samples, shared by the decoders."""

    s: Callable[[int, str], str]
    types: list[tuple[str, str]]
    vi: int
    period: int
    period_type: str
    period_unit: str


def _pick(types: list[tuple[str, str]], default_type: str, column: int | None) -> int:
    """``column``, checked (InputError when the profile lacks it), or the default column when None."""
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


def _check_strings(s: Callable[[int, str], str], n_strings: int, idxs: list[int], what: str,
                   ids: list[int]) -> None:
    """Raise the InputError of ``s`` for the first out-of-range string index in ``idxs``.

    Whole columns are checked at once (min/max in C) rather than one Python call per reference.
    """
    if idxs and (min(idxs) < 0 or max(idxs) >= max(n_strings, 1)):
        j = next(j for j, i in enumerate(idxs) if not 0 <= i < max(n_strings, 1))
        s(idxs[j], what.format(ids[j]))


# --------------------------------------------------------------------------- the pprof rules
# What a pprof means, once for every reader (library, numpy, compiled): which frames are
# kernel frames, what an unnamed frame is called, how a location's lines make a run of
# inlined frames, and the repair of a producer's known defect.


def is_kernel_mapping(filename: str) -> bool:
    """A location in a mapping whose file is ``[kernel.kallsyms]`` (any ``[kernel...`` name)
    holds kernel frames."""
    return filename.startswith("[kernel")


def run_names(line_functions: Iterable[int], name_of: Callable[[int], str | None], address: int,
              mapping_file: str) -> list[str] | int:
    """The function names of one location's lines, leaf first (``line[0]`` is the innermost
    inlined frame), or the first function id ``name_of`` does not know (None from it).

    A line without a function (id 0), or with an unnamed one, and a location without lines,
    are named by the location's address, else its mapping's file, else ``[unknown]``.
    """
    fallback = f"0x{address & U64:x}" if address else (mapping_file or "[unknown]")
    names: list[str] = []
    for fid in line_functions:
        if fid == 0:
            names.append(fallback)
            continue
        name = name_of(fid)
        if name is None:
            return fid
        names.append(name or fallback)
    return names or [fallback]


def zero_id_repair(function_ids: Collection[int], location_ids: Collection[int]) -> list[int] | None:
    """The function ids to use instead, for a profile whose every function id is 0 (else None).

    Some .NET profilers write one function per location, in location order, and leave every
    function id 0, so each location's function reference dangles. Id 0 is never valid, so
    this shape cannot mean anything else; Pyroscope reads such profiles the same way: the
    functions take their locations' ids.
    """
    if len(function_ids) and len(function_ids) == len(location_ids) and not any(function_ids):
        return list(location_ids)
    return None


def _head_of(t: PprofTables, column: int | None) -> _Head:
    """Strings, sample types, period and the chosen column of ``t`` (locations come later).

    Raises the InputError the library decoder names for a malformed head.
    """
    strings = t.strings
    if strings and strings[0] != "":
        raise _bad(f"string_table[0] must be the empty string, got {strings[0][:80]!r}")
    s = _string_getter(strings)
    types = [(s(a, "sample_type.type"), s(u, "sample_type.unit")) for a, u in t.types]
    pt = t.period_type
    period_type = s(pt, "period_type.type") if pt is not None else ""
    period_unit = s(t.period_unit, "period_type.unit") if pt is not None else ""
    default_type = s(t.default_sample_type, "default_sample_type")
    if t.n_samples and not types:
        raise _bad("it has samples but no sample_type")
    vi = _pick(types, default_type, column)
    return _Head(s, types, vi, t.period, period_type, period_unit)


def _repaired(t: PprofTables) -> PprofTables:
    """``t`` after the producer repairs (:func:`zero_id_repair`)."""
    ids = zero_id_repair(t.function_id, t.location_id)
    return t if ids is None else t.with_function_ids(ids)


def _raise_table_error(t: PprofTables) -> None:
    """Raise the first error of the tables' symbols, in the order the library decoder meets them:
    string indexes of mapping files, function names and system names, then each location's
    undefined mapping or function. Returns when there is none."""
    s = _string_getter(t.strings)
    n = len(t.strings)
    m_ids, f_ids = as_ids(t.mapping_id), as_ids(t.function_id)
    _check_strings(s, n, t.mapping_file.tolist(), "mapping {} filename", m_ids)
    _check_strings(s, n, t.function_name.tolist(), "function {} name", f_ids)
    _check_strings(s, n, t.function_system_name.tolist(), "function {} system_name", f_ids)
    maps, funcs = set(m_ids), set(f_ids)
    line_fn = as_ids(t.line_function)
    for lid, mid, first, count in zip(as_ids(t.location_id), as_ids(t.location_mapping), t.location_line0.tolist(),
                                      t.location_nlines.tolist(), strict=True):
        if mid and mid not in maps:
            raise _bad(f"location {lid} refers to mapping {mid}, which is not defined")
        for fid in line_fn[first : first + count]:
            if fid and fid not in funcs:
                raise _bad(f"location {lid} refers to function {fid}, which is not defined")


def _last_rows(ids: np.ndarray) -> np.ndarray:
    """The rows that keep the last of each id, in row order."""
    _, first = np.unique(ids[::-1], return_index=True)
    return np.sort(len(ids) - 1 - first)


def _repeats(ids: np.ndarray) -> bool:
    """Whether an id occurs twice."""
    if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()):
        return False  # the usual order (1..N, as int64 bit patterns): no sort needed
    return len(np.unique(ids)) != len(ids)


def _last_defined(t: PprofTables) -> PprofTables:
    """Repeated ids resolved as protobuf readers resolve them (legal protobuf, odd pprof): the
    last mapping and function of an id; of a location's rows, the last with inlined lines
    (several), else the last one (the library decoder's rule since its first version)."""
    l_id = t.location_id
    order = np.lexsort((np.arange(len(l_id)), t.location_nlines > 1, l_id))
    srt = l_id[order]
    last = np.flatnonzero(np.append(srt[1:] != srt[:-1], True)) if len(srt) else np.zeros(0, np.int64)
    return t.rows(_last_rows(t.mapping_id), _last_rows(t.function_id), np.sort(order[last]))


def _odd_run(t: PprofTables, j: int, mfile: str, fi_line: np.ndarray, names: list[str]) -> list[str] | None:
    """The function names (leaf first) of location row ``j`` (:func:`run_names`); None for an
    undefined function."""
    first = int(t.location_line0[j])
    lines = range(first, first + int(t.location_nlines[j]))
    line_fn = t.line_function
    # run_names looks functions up by id; here a line's function row is already known.
    rows = {int(line_fn[q]): int(fi_line[q]) for q in lines}
    run = run_names([int(line_fn[q]) for q in lines], lambda fid: names[rows[fid]] if rows[fid] >= 0 else None,
                    int(t.location_address[j]), mfile)
    return None if isinstance(run, int) else run


def _decoded(head: _Head, series: list[tuple[Labels, Profile]], time_nanos: int,
             duration_nanos: int) -> DecodedProfile:
    """The result of a decode: ``series`` with the metadata of ``head``."""
    sample_type, unit = head.types[head.vi] if head.types else ("", "")
    return DecodedProfile(
        series=series,
        sample_type=sample_type,
        unit=unit,
        period=head.period,
        period_type=head.period_type,
        time_nanos=time_nanos,
        duration_nanos=duration_nanos,
        period_unit=head.period_unit,
        types=tuple(head.types),
    )


def _parse_library(raw: bytes) -> Any:
    """The ``Profile`` message through the protobuf library; InputError when it is not one."""
    try:
        return _proto.Profile.FromString(raw)
    except (DecodeError, RecursionError, ValueError) as e:
        raise InputError(
            f"pprof profile is not a valid protobuf ({e}); send a pprof profile (gzip or plain)"
        ) from None


def _sample_rows(lids: np.ndarray, locs_all: np.ndarray) -> np.ndarray | None:
    """The location row of every sample location id (:func:`location_rows`); None when one is undefined."""
    if len(lids) < 2 or bool((lids[1:] > lids[:-1]).all()):
        return location_rows(lids, locs_all)  # the usual order (1..N): no gather over every sample's ids
    order = np.argsort(lids, kind="stable")
    li = location_rows(lids[order], locs_all)
    return None if li is None else order[li]


def _in_range(col: np.ndarray, n: int) -> bool:
    """Every index in ``col`` is in ``range(n)``."""
    return not len(col) or (int(col.min()) >= 0 and int(col.max()) < n)


def _location_lut(l_id: np.ndarray) -> np.ndarray | None:
    """Location id -> location row (-1: undefined); None for sparse, huge or repeated ids."""
    n_loc = len(l_id)
    top = int(l_id.max()) if n_loc else -1
    if n_loc and (int(l_id.min()) < 0 or top >= 4 * n_loc + 4096):
        return None  # sparse or huge ids: the numpy reader searches instead
    lut = np.full(top + 1, -1, np.int32)
    lut[l_id] = np.arange(n_loc, dtype=np.int32)
    if len(np.unique(l_id)) != n_loc:
        return None  # a location defined twice
    return lut


def _new_index() -> Any:
    """A compiled stack index, keyed at random (SipHash): colliding stacks cannot be prepared offline."""
    assert _pprof_c is not None
    return _pprof_c.StackIndex(secrets.randbits(64), secrets.randbits(64))


class PprofDecoder:
    """Decodes pprof bytes, keeping the caches that make repeated pushes cheap.

    The caches: frames by function name; frame numbers, so that a stack is a run
    of small ints; stack bytes -> stack id, and with the compiled reader a keyed
    hash -> stack id index, both on the one table decoded into last (decoding into
    another table empties them). All are bounded. A lock lets one decode at a
    time use them, so threads may share a decoder; the aggregator keeps one in its
    ingest tables. ``compiled=False`` (or an install without a C compiler) leaves
    the work to the numpy and library readers: same results and errors, more CPU.
    """

    def __init__(self, *, compiled: bool = True) -> None:
        self._lock = threading.Lock()
        self._frames: dict[tuple[str, bool], Frame] = {}  # (name, kernel mapping) -> frame
        self._frame_nos: dict[Frame, int] = {}
        self._frame_by_no: list[Frame] = []
        self._name_no: dict[bool, dict[str, int]] = {False: {}, True: {}}  # by kernel mapping
        self._located: dict[tuple[int, str, int], int] = {}  # (frame number, file, line) -> number
        self._lines = False  # the decode in progress keeps source locations (its table's ``lines``)
        self._stacks: dict[bytes, int] = {}  # frame numbers (uint16 or int32 bytes) -> stack id
        self._stacks_table: StackTable | None = None
        self._key_narrow = True  # frame numbers fit 16 bits (until the registry passes 65,536)
        self._index = _new_index() if compiled and BUILT else None
        self.fast_min_samples = _FAST_MIN_SAMPLES  # below this, the library is faster than numpy

    @property
    def compiled(self) -> bool:
        """Whether this decoder uses the compiled reader."""
        return self._index is not None

    def decode(self, data: bytes, table: StackTable | None = None, *,
               max_decompressed: int = DEFAULT_MAX_DECOMPRESSED, column: int | None = None) -> DecodedProfile:
        """Decode pprof bytes (gzip or plain) into per-label-set profiles on ``table``.

        ``column`` picks the sample type (value index) to read; None chooses as
        :func:`_choose_value` does. Raises :class:`InputError` for bad gzip, bad
        protobuf, dangling ids or a column the profile does not have. Frames keep their source
        file and line (``Function.filename``, ``Line.line``) when ``table.lines`` is set.
        """
        raw = maybe_gunzip(bytes(data), max_decompressed)
        table = table if table is not None else StackTable()
        # The fast readers give up (None) on anything unusual or wrong before they
        # touch ``table``; the library decoder then gives the result or the
        # exact error, so all paths agree by construction.
        with self._lock:
            self._lines = table.lines
            fast = self._decode_compiled(raw, table, column) if self._index is not None else None
            if fast is None:
                fast = self._decode_fast(raw, table, column)
            if fast is not None:
                return fast
            return self._decode_library(raw, table, column)  # it numbers frames in the shared registry

    # -- caches ----------------------------------------------------------------------------------
    def _frame(self, name: str, kernel: bool) -> Frame:
        """The frame for a pprof function name; ``_[k]`` or a kernel mapping makes it kernel."""
        fr = self._frames.get((name, kernel))
        if fr is None:
            if len(self._frames) >= _FRAMES_MAX:
                self._frames.clear()
            if name.endswith(KERNEL_SUFFIX):
                fr = Frame(name[: -len(KERNEL_SUFFIX)], Kind.KERNEL)
            else:
                fr = Frame(name, Kind.KERNEL if kernel else Kind.USER)
            self._frames[(name, kernel)] = fr
        return fr

    def _frame_no(self, fr: Frame) -> int:
        """The frame's number, assigned on first sight."""
        n = self._frame_nos.get(fr)
        if n is None:
            n = self._frame_nos[fr] = len(self._frame_by_no)
            self._frame_by_no.append(fr)
        return n

    def _name_to_no(self, name: str, kernel: bool) -> int:
        """The frame number of a function name (the frame's kind as :meth:`_frame` decides it)."""
        n = self._name_no[kernel].get(name)
        if n is None:
            n = self._name_no[kernel][name] = self._frame_no(self._frame(name, kernel))
        return n

    def _reset_frames(self) -> None:
        """Forget every frame number, and so every cache keyed by them."""
        for cache in (self._frame_nos, self._frame_by_no, self._stacks, self._located, *self._name_no.values()):
            cache.clear()
        self._key_narrow = True
        if self._index is not None:
            self._index.clear()

    def _bound_caches(self, table: StackTable) -> None:
        """Keep the caches bounded, and tied to the table their stack ids point into."""
        n_index = len(self._index) if self._index is not None else 0
        if len(self._frame_by_no) > _FRAMES_MAX or len(self._stacks) > _STACKS_MAX or n_index > _STACKS_MAX:
            self._reset_frames()
        if self._stacks_table is not table:
            self._stacks.clear()
            if self._index is not None:
                self._index.clear()
            self._stacks_table = table

    # -- the pprof rules on the tables -------------------------------------------------------------
    def _strict_runs(self, t: PprofTables) -> tuple[PprofTables, Runs]:
        """:meth:`_runs` of ``t`` as the library decoder reads it: the exact InputError for a
        malformed table, repeated ids resolved (:func:`_last_defined`); the tables used and the runs."""
        runs = self._runs(t)
        if runs is None or _repeats(t.location_id):
            _raise_table_error(t)
            t = _last_defined(t)
            runs = self._runs(t)
            assert runs is not None, "tables without errors or repeated ids have runs"
        return t, runs

    def _runs(self, t: PprofTables) -> Runs | None:
        """Every location row as a run of frame numbers, leaf first: (offsets, lengths, frames) int64
        arrays. Naming, kinds and inlining are decided here, for every reader.

        None when a string index is out of range, a mapping or function id repeats, or a location
        refers to an undefined mapping or function.
        """
        strings = t.strings or [""]  # an empty table still has an implicit "" at 0
        n = len(strings)
        m_file = t.mapping_file
        if not (_in_range(m_file, n) and _in_range(t.function_name, n) and _in_range(t.function_system_name, n)):
            return None
        m_kernel = np.fromiter(map(is_kernel_mapping, (strings[f] for f in m_file.tolist())), bool, len(m_file))
        names, user_no = self._function_numbers(t, strings)
        located = self._location_numbers(t, names, user_no, m_kernel)
        if located is None:
            return None
        frame_no, kernel, odd, mi, fi_line = located
        run_len = np.ones(len(frame_no), np.int64)
        extra: dict[int, list[int]] = {}
        if odd:
            mfile = [strings[f] for f in m_file.tolist()]
            for j in odd:
                run = _odd_run(t, j, mfile[mi[j]] if mi[j] >= 0 else "", fi_line, names)
                if run is None:
                    return None  # an undefined function
                extra[j] = [self._name_to_no(nm, bool(kernel[j])) for nm in run]  # leaf first, as lines are
                run_len[j] = len(run)
        run_off = np.cumsum(run_len) - run_len
        if extra:
            run_frames = np.repeat(frame_no, run_len)
            for j, nos in extra.items():
                run_frames[run_off[j] : run_off[j] + len(nos)] = nos
        else:
            run_frames = frame_no
        return run_off, run_len, self._located_runs(t, strings, run_off, run_len, run_frames, fi_line)

    def _located_runs(self, t: PprofTables, strings: list[str], run_off: np.ndarray, run_len: np.ndarray,
                      run_frames: np.ndarray, fi_line: np.ndarray) -> np.ndarray:
        """``run_frames`` with each frame that has a source location (its line's ``line`` and
        its function's ``filename``) numbered as that located frame. A run of ``k`` frames of a
        location with ``k`` lines is those lines, leaf first; a location without lines has none."""
        lines, ffile = t.line_line, t.function_filename
        if not self._lines or lines is None or ffile is None or not (lines.any() or ffile.any()):
            return run_frames
        n = len(strings)
        ffile = np.where((ffile > 0) & (ffile < n), ffile, 0)  # an index out of range: no file, not an error
        loc = np.repeat(np.arange(len(run_len)), run_len)  # location row of each run element
        k = np.arange(len(run_frames)) - run_off[loc]
        has = k < t.location_nlines[loc]
        q = np.where(has, t.location_line0[loc] + k, 0)
        line = np.where(has, np.maximum(lines[q], 0) if len(lines) else 0, 0)
        fi = np.where(has, fi_line[q] if len(fi_line) else -1, -1)
        file = np.where(fi >= 0, ffile[np.maximum(fi, 0)] if len(ffile) else 0, 0)
        where = np.flatnonzero((line > 0) | (file > 0))
        if not where.size:
            return run_frames
        out = run_frames.copy()
        triples = np.stack([run_frames[where], file[where], line[where]], axis=1)
        uniq, inv = np.unique(triples, axis=0, return_inverse=True)
        nos = [self._located_no(int(no), strings[int(f)], int(ln)) for no, f, ln in uniq.tolist()]
        out[where] = np.asarray(nos, np.int64)[inv.reshape(-1)]
        return out

    def _located_no(self, no: int, file: str, line: int) -> int:
        """The number of frame ``no`` at ``file:line``, assigned on first sight."""
        key = (no, file, line)
        got = self._located.get(key)
        if got is None:
            got = self._located[key] = self._frame_no(self._frame_by_no[no]._replace(file=file, line=line))
        return got

    def _function_numbers(self, t: PprofTables, strings: list[str]) -> tuple[list[str], np.ndarray]:
        """Each function's name (or system name) and its user frame number (-1: unnamed)."""
        names = [strings[a] or strings[b]
                 for a, b in zip(t.function_name.tolist(), t.function_system_name.tolist(), strict=True)]
        nos = list(map(self._name_no[False].get, names))  # the loop in C: names are known after the first push
        if None in nos:
            nos = [n if n is not None else (self._name_to_no(nm, False) if nm else -1)
                   for n, nm in zip(nos, names, strict=True)]
        return names, np.array(nos, np.int64)

    def _location_numbers(
        self, t: PprofTables, names: list[str], user_no: np.ndarray, m_kernel: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[int], np.ndarray, np.ndarray] | None:
        """The frame number of every one-frame location with a named function, found with numpy.

        Returns (frame number per location, -1 for the others; kernel mapping per
        location; the other locations; mapping row per location; function row per
        line); None for repeated ids or an undefined mapping.
        """
        l_map, nlines, line0 = t.location_mapping, t.location_nlines, t.location_line0
        n_loc = len(l_map)
        mi = positions(t.mapping_id, l_map)
        fi_line = positions(t.function_id, t.line_function)
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
            frame_no[kern] = [self._name_to_no(names[f], True) for f in fi[kern].tolist()]
        return frame_no, kernel, np.flatnonzero(~ok).tolist(), mi, fi_line

    # -- the samples, once for every reader -----------------------------------------------------------
    def _series(self, t: PprofTables, head: _Head, sm: PprofSamples, table: StackTable, runs: Runs,
                hashed: Hashed | None = None) -> list[tuple[Labels, Profile]]:
        """What the sample columns mean, whichever reader read them: the first malformed sample's
        error, stack ids interned in sample order, one profile per label set (InputError as the
        library reader always raised them). ``t`` has no repeated location ids.

        ``hashed``: the compiled reader's stack hashes, taken while it read the samples (else
        the frame-number cache finds the stacks)."""
        n_types = len(head.types)
        rows = _sample_rows(t.location_id.view(np.uint64), sm.locations.view(np.uint64)) if hashed is None else None
        if (hashed is None and rows is None) or bool((sm.n_values != n_types).any()):
            check_samples(sm, t.location_id, n_types)
            raise AssertionError("check_samples found no error where the readers did")
        groups = label_groups(sm, head.s)  # label strings checked before anything is interned
        if hashed is not None:
            sids = self._intern_hashed(table, sm, hashed)
        else:
            assert rows is not None
            sids = self._intern_rows(table, sm, rows, runs)
        divisor = divisor_of(head.types, head.vi, head.period, head.period_unit)
        return label_series(table, sids, sm, groups, divisor)

    def _intern_hashed(self, table: StackTable, sm: PprofSamples, hashed: Hashed) -> np.ndarray:
        """Every sample's stack id, the ones the compiled index did not know interned in sample order."""
        assert _pprof_c is not None and self._index is not None
        sids, h1, h2, lut, runs32 = hashed
        miss_idx = np.flatnonzero(sids < 0)
        if not len(miss_idx):
            return sids
        misses = miss_idx.tolist()
        intern = table.intern
        by_no = self._frame_by_no.__getitem__
        index = self._index
        h1l, h2l = h1[misses].tolist(), h2[misses].tolist()
        # The new stacks' frames come from C a chunk at a time: one call per stack is slow, and one
        # call for all of a 60,000-stack push holds the GIL long enough to stall the event loop
        # beside the decode thread (/healthz p99 past 100 ms, tests/reliability/test_issue24.py).
        for c in range(0, len(misses), STACK_FRAMES_CHUNK):
            stacks = _pprof_c.stack_frames(sm.bound, sm.locations, lut, *runs32,
                                           miss_idx[c:c + STACK_FRAMES_CHUNK])
            for m, st in enumerate(stacks, c):
                sid = index.lookup(h1l[m], h2l[m])  # an earlier sample of this push may have added it
                if sid < 0:
                    sid = intern(tuple(map(by_no, st)))
                    index.insert(h1l[m], h2l[m], sid)
                sids[misses[m]] = sid
        return sids

    def _intern_rows(self, table: StackTable, sm: PprofSamples, rows: np.ndarray, runs: Runs) -> np.ndarray:
        """Every sample's stack id through the frame-number cache, new stacks interned in sample order."""
        run_off, run_len, run_frames = runs
        fnos, fbound = sample_frames(run_frames, run_len, run_off, rows, sm.bound[:-1], len(sm))
        keys, code = self._stack_keys(fnos, fbound)
        cache = self._stacks
        fsids = list(map(cache.get, keys))
        intern = table.intern
        by_no = self._frame_by_no.__getitem__
        for j, sid in enumerate(fsids):
            if sid is None:
                key = keys[j]
                sid = cache.get(key)  # an earlier sample of this push may have added it
                if sid is None:
                    sid = cache[key] = intern(map(by_no, reversed(memoryview(key).cast(code))))
                fsids[j] = sid
        return np.array(fsids, np.int64)

    def _stack_keys(self, fnos: np.ndarray, fbound: np.ndarray) -> tuple[list[bytes], str]:
        """Each sample's frame numbers as bytes (the key of the stack cache), and their struct code."""
        # Narrow keys hash faster; the width only changes when the cache is cleared.
        code, width = ("H", 2) if len(self._frame_by_no) < 65536 and self._key_narrow else ("i", 4)
        if width == 4 and self._key_narrow:
            self._key_narrow = False
            self._stacks.clear()
        fb = fnos.astype(np.uint16 if width == 2 else np.int32).tobytes()
        b4 = (fbound * width).tolist()
        return [fb[x:y] for x, y in pairwise(b4)], code

    # -- the readers: wire to tables ----------------------------------------------------------------
    def _decode_library(self, raw: bytes, table: StackTable, column: int | None = None) -> DecodedProfile:
        """The reference reader: every field through the protobuf library.

        Used for profiles the fast readers decline (odd encodings, malformed
        input) and, in the tests, as the oracle the fast readers must equal.
        """
        p = _parse_library(raw)
        t = _repaired(tables_of_message(p, lines=self._lines))
        head = _head_of(t, column)
        self._bound_caches(table)
        t, runs = self._strict_runs(t)
        series = self._series(t, head, samples_of_message(p.sample, head.vi), table, runs)
        return _decoded(head, series, t.time_nanos, t.duration_nanos)

    def _decode_fast(self, raw: bytes, table: StackTable, column: int | None = None) -> DecodedProfile | None:
        """The decode with samples read by hand (stacks._pprof_read), or None to leave it to the library."""
        try:
            p = _proto.ProfileSplit.FromString(raw)
            samples = list(p.sample)
            if len(samples) < self.fast_min_samples:
                return None  # below this, numpy's fixed cost per call makes the library faster
            t = _repaired(tables_of_message(p, lines=self._lines))
            head = _head_of(t, column)
            sm = sample_columns(samples, len(head.types), head.vi)
        except (DecodeError, RecursionError, ValueError, Fallback):  # InputError is a ValueError
            return None
        self._bound_caches(table)
        try:
            t, runs = self._strict_runs(t)
            series = self._series(t, head, sm, table, runs)
        except InputError:
            return None  # the library names the error
        return _decoded(head, series, t.time_nanos, t.duration_nanos)

    def _decode_compiled(self, raw: bytes, table: StackTable, column: int | None = None) -> DecodedProfile | None:
        """The decode through ``stacks._pprof_c``, or None to leave it to the other readers."""
        assert _pprof_c is not None and self._index is not None
        scanned = _pprof_c.scan(raw)
        if scanned is None:
            return None
        t = tables_of_scan(scanned)
        if t is None or not t.strings or t.strings[0] != "":
            return None  # a stale build, an empty or malformed string table: the others have the rules
        t = _repaired(t)
        try:
            head = _head_of(t, column)
        except InputError:
            return None  # the library names the error
        self._bound_caches(table)
        runs = self._runs(t)
        lut = _location_lut(t.location_id)
        if runs is None or lut is None or len(self._frame_by_no) >= 1 << 31:
            return None  # sparse ids: the numpy reader; repeated ones: the library, as it always did
        runs32 = tuple(a.astype(np.int32) for a in runs)
        starts, ends = scanned["sample_start"], scanned["sample_end"]
        cols = _pprof_c.sample_columns(raw, starts, ends, head.vi, lut, *runs32, self._index)
        if cols is None:
            return None
        bound, locations, n_values, value, labelled, got = cols
        labels = label_keys(raw, starts, ends, np.flatnonzero(labelled).tolist())
        if labels is None:
            return None
        hashed = None if got is None else (*got, lut, runs32)
        try:
            series = self._series(t, head, PprofSamples(bound, locations, n_values, value, labels), table, runs,
                                  hashed)
        except InputError:
            return None  # the library names the error
        return _decoded(head, series, t.time_nanos, t.duration_nanos)


def encode_pprof(
    profile: Profile | Mapping[tuple[Frame, ...], int],
    *,
    period_nanos: int = 10_000_000,
    time_nanos: int = 0,
    duration_nanos: int = 0,
    sample_type: tuple[str, str] = ("cpu", "nanoseconds"),
    sample_labels: Mapping[str, str] | None = None,
    period_type: tuple[str, str] = ("cpu", "nanoseconds"),
    encode_compiled: bool = True,
) -> bytes:
    """Encode a profile (or a mapping of distinct stacks to counts, in its order) as plain (not gzipped)
    pprof bytes.

    Counts are written as ``count * period_nanos`` when the sample unit is
    nanoseconds, else as they are. ``sample_labels`` go on every sample;
    ``period_type`` is the (type, unit) the period is counted in. A located frame keeps its
    file (``Function.filename``; one function per name and file) and line (``Line.line``).
    ``stacks._pprof_c`` writes it where it is built (``encode_compiled``): the same message, other bytes.
    """
    scale = period_nanos if sample_type[1] == "nanoseconds" and period_nanos > 0 else 1
    label_pairs = [(k, v) for k, v in sorted((sample_labels or {}).items()) if v != ""]
    if _pprof_c is not None and encode_compiled:
        # written in C: a library message per frame and per sample was most of the agent's push (issue 25)
        return _pprof_c.encode_profile(profile.items(), scale, sample_type, period_type, period_nanos, time_nanos,
                                       duration_nanos, label_pairs, Kind.KERNEL, KERNEL_MAPPING)
    strings: dict[str, int] = {"": 0}

    def sx(text: str) -> int:
        i = strings.get(text)
        if i is None:
            i = strings[text] = len(strings)
        return i

    p = _proto.Profile()
    p.sample_type.add(type=sx(sample_type[0]), unit=sx(sample_type[1]))
    p.period_type.type = sx(period_type[0])
    p.period_type.unit = sx(period_type[1])
    p.period = period_nanos
    p.time_nanos = time_nanos
    p.duration_nanos = duration_nanos
    label_ids = [(sx(k), sx(v)) for k, v in label_pairs]
    functions: dict[tuple[str, str], int] = {}
    locations: dict[Frame, int] = {}
    kernel_mapping = 0

    def new_location(fr: Frame) -> int:  # a frame not in ``locations`` yet
        nonlocal kernel_mapping
        fid = functions.get((fr.name, fr.file))
        if fid is None:
            fid = functions[(fr.name, fr.file)] = len(functions) + 1
            p.function.add(id=fid, name=sx(fr.name), system_name=sx(fr.name), filename=sx(fr.file))
        lid = locations[fr] = len(locations) + 1
        loc = p.location.add(id=lid)
        loc.line.add(function_id=fid, line=fr.line)
        if fr.kind is Kind.KERNEL:
            if not kernel_mapping:
                kernel_mapping = 1
                p.mapping.add(id=1, filename=sx(KERNEL_MAPPING), has_functions=True)
            loc.mapping_id = kernel_mapping
        return lid

    known = locations.get  # most frames repeat: a dictionary hit, not a call per frame
    for stack, count in profile.items():
        smp = p.sample.add(location_id=[known(fr) or new_location(fr) for fr in reversed(stack)],
                           value=[count * scale])
        for k, v in label_ids:
            smp.label.add(key=k, str=v)
    p.string_table.extend(t.encode("utf-8") for t in strings)
    return p.SerializeToString()
