"""The neutral tables every pprof reader produces (pure, no I/O).

A reader's own work is the wire: the protobuf library and the numpy reader parse
messages, the compiled reader (``stacks._pprof_c.scan``) walks the bytes. Each hands
:class:`PprofTables` to ``stacks.pprof``, where what a pprof *means* (naming, kinds,
inlining, producer repairs) is decided once, on these tables. The samples too become
neutral columns (:class:`PprofSamples`): every reader reads the wire, and what follows
(undefined locations, value counts, stacks, label sets, sums) is done once.

Ids (``uint64`` on the wire) are held as ``int64`` bit patterns, as the compiled scan
keeps them; :func:`as_ids` gives them back as Python ints for messages and lookups.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PprofTables:
    """Everything of a pprof but its samples, as flat columns.

    ``location_line0[r]``/``location_nlines[r]`` give location row ``r``'s lines in
    ``line_function`` (``line[0]`` innermost). ``period_type`` is None when the
    profile has no ``period_type`` message. ``function_filename`` (string index per function)
    and ``line_line`` (source line per line row, 0 unknown) are the source locations; None from
    a reader that does not read them.
    """

    strings: list[str]
    types: list[tuple[int, int]]  # sample types as (type, unit) string indexes
    n_samples: int
    period: int
    period_type: int | None
    period_unit: int
    default_sample_type: int
    time_nanos: int
    duration_nanos: int
    mapping_id: np.ndarray
    mapping_file: np.ndarray
    function_id: np.ndarray
    function_name: np.ndarray
    function_system_name: np.ndarray
    location_id: np.ndarray
    location_mapping: np.ndarray
    location_address: np.ndarray
    location_line0: np.ndarray
    location_nlines: np.ndarray
    line_function: np.ndarray
    function_filename: np.ndarray | None = None
    line_line: np.ndarray | None = None

    def with_function_ids(self, ids: Any) -> PprofTables:
        """The same tables with ``function_id`` replaced (a producer repair)."""
        return replace(self, function_id=np.asarray(ids, dtype=np.int64))

    def rows(self, mappings: np.ndarray, functions: np.ndarray, locations: np.ndarray) -> PprofTables:
        """The same tables keeping only the given mapping, function and location rows."""
        return replace(
            self,
            mapping_id=self.mapping_id[mappings], mapping_file=self.mapping_file[mappings],
            function_id=self.function_id[functions], function_name=self.function_name[functions],
            function_system_name=self.function_system_name[functions],
            function_filename=None if self.function_filename is None else self.function_filename[functions],
            location_id=self.location_id[locations], location_mapping=self.location_mapping[locations],
            location_address=self.location_address[locations], location_line0=self.location_line0[locations],
            location_nlines=self.location_nlines[locations],
        )


LabelKey = tuple[tuple[int, int], ...]  # a sample's string labels: sorted (key, value) string indexes


@dataclass(frozen=True)
class PprofSamples:
    """Every sample of a pprof as flat columns, read for one chosen value column.

    Sample ``k``'s location ids (``int64`` bit patterns, leaf first as on the wire) are
    ``locations[bound[k]:bound[k + 1]]``; ``n_values[k]`` is how many values it has and
    ``value[k]`` its value in the chosen column (0 when it has fewer). ``labels`` maps the
    index of each sample with a string label to its :data:`LabelKey`; labels whose value
    is the empty string are left out, so are samples left with none.
    """

    bound: np.ndarray
    locations: np.ndarray
    n_values: np.ndarray
    value: np.ndarray
    labels: dict[int, LabelKey]

    def __len__(self) -> int:
        return len(self.value)


def label_key(pairs: Any) -> LabelKey:
    """A sample's (key, value) string indexes as its :data:`LabelKey` (empty values dropped)."""
    return tuple(sorted((k, v) for k, v in pairs if v))


def samples_of_message(samples: Any, vi: int) -> PprofSamples:
    """The sample columns of parsed ``Sample`` messages (the library reader), value column ``vi``."""
    counts: list[int] = []
    locs: list[int] = []
    n_values: list[int] = []
    value: list[int] = []
    labels: dict[int, LabelKey] = {}
    for k, smp in enumerate(samples):
        ids = smp.location_id
        counts.append(len(ids))
        locs.extend(ids)
        values = smp.value
        nv = len(values)
        n_values.append(nv)
        value.append(values[vi] if 0 <= vi < nv else 0)
        if smp.label:
            key = label_key((lb.key, lb.str) for lb in smp.label)
            if key:
                labels[k] = key
    bound = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=bound[1:])
    return PprofSamples(bound, _u64(locs), _i64(n_values), _i64(value), labels)


def as_ids(col: np.ndarray) -> list[int]:
    """An id column as the unsigned Python ints the wire carries."""
    return col.view(np.uint64).tolist()


def _u64(xs: list[int]) -> np.ndarray:
    # array("Q") converts a list of ints ~4x faster than np.array(dtype=uint64) does.
    return np.frombuffer(array("Q", xs), np.uint64).view(np.int64)


def _i64(xs: list[int]) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


def tables_of_message(p: Any, *, lines: bool = True) -> PprofTables:
    """The tables of a parsed ``Profile`` or ``ProfileSplit`` message (the library and numpy readers).

    ``lines=False`` leaves the source locations unread (``function_filename`` and ``line_line``
    None), for a decode that does not keep them: one field fewer per function and per line.
    """
    # Iterating a repeated field builds a wrapper per element each time; a list keeps them, so
    # the column passes below only read attributes (~3.5x cheaper on an SDK's 300 functions).
    maps, funcs = list(p.mapping), list(p.function)
    # One pass over the locations, each field read once: every access builds a Python object.
    l_id: list[int] = []
    l_map: list[int] = []
    l_addr: list[int] = []
    nlines: list[int] = []
    line_fn: list[int] = []
    line_no: list[int] = []
    for loc in p.location:
        loc_lines = loc.line
        k = len(loc_lines)
        l_id.append(loc.id)
        l_map.append(loc.mapping_id)
        l_addr.append(loc.address)
        nlines.append(k)
        if k == 1:
            ln = loc_lines[0]
            line_fn.append(ln.function_id)
            if lines:
                line_no.append(ln.line)
        elif k:
            line_fn.extend([ln.function_id for ln in loc_lines])
            if lines:
                line_no.extend([ln.line for ln in loc_lines])
    n_lines = _i64(nlines)
    has_pt = p.HasField("period_type")
    return PprofTables(
        # Symbol names are not always UTF-8 (C++ demanglers, Latin-1 paths); keep them readable.
        strings=[b.decode("utf-8", "replace") for b in p.string_table],
        types=[(vt.type, vt.unit) for vt in p.sample_type],
        n_samples=len(p.sample),
        period=int(p.period),
        period_type=p.period_type.type if has_pt else None,
        period_unit=p.period_type.unit if has_pt else 0,
        default_sample_type=p.default_sample_type,
        time_nanos=int(p.time_nanos),
        duration_nanos=int(p.duration_nanos),
        mapping_id=_u64([m.id for m in maps]),
        mapping_file=_i64([m.filename for m in maps]),
        function_id=_u64([f.id for f in funcs]),
        function_name=_i64([f.name for f in funcs]),
        function_system_name=_i64([f.system_name for f in funcs]),
        location_id=_u64(l_id),
        location_mapping=_u64(l_map),
        location_address=_u64(l_addr),
        location_line0=np.cumsum(n_lines) - n_lines,
        location_nlines=n_lines,
        line_function=_u64(line_fn),
        function_filename=_i64([f.filename for f in funcs]) if lines else None,
        line_line=_i64(line_no) if lines else None,
    )


def tables_of_scan(t: dict[str, Any]) -> PprofTables | None:
    """The tables of a compiled scan (``stacks._pprof_c.scan``); None for a stale build without
    ``period_unit`` (the other readers then read the profile)."""
    if "period_unit" not in t or "line_line" not in t:
        return None
    return PprofTables(
        strings=t["strings"],
        types=t["types"],
        n_samples=len(t["sample_start"]),
        period=t["period"],
        period_type=t["period_type"] if t["period_type"] >= 0 else None,
        period_unit=t["period_unit"],
        default_sample_type=t["default_sample_type"],
        time_nanos=t["time_nanos"],
        duration_nanos=t["duration_nanos"],
        mapping_id=t["mapping_id"],
        mapping_file=t["mapping_file"],
        function_id=t["function_id"],
        function_name=t["function_name"],
        function_system_name=t["function_system_name"],
        location_id=t["location_id"],
        location_mapping=t["location_mapping"],
        location_address=t["location_address"],
        location_line0=t["location_line0"],
        location_nlines=t["location_nlines"],
        line_function=t["line_function"],
        function_filename=t["function_filename"],
        line_line=t["line_line"],
    )
