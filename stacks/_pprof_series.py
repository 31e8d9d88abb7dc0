"""What a pprof's samples mean, once for every reader (pure, stateless).

Every reader hands its samples over as :class:`~stacks._pprof_tables.PprofSamples`;
the steps here judge and sum them alike: the first malformed sample (an undefined
location, a value count other than the sample types') is named as the protobuf-library
reader always named it, samples are grouped by label set (string labels, empty values
dropped, in the order of each set's first positive sample), and values are summed per
(label set, stack) and turned into sample counts. Stack identity (frame numbers,
caches, the compiled hash) is the decoder's, in ``stacks.pprof``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stacks._pprof_tables import LabelKey, PprofSamples
from stacks.errors import InputError
from stacks.model import Labels, Profile, StackTable


def bad(why: str) -> InputError:
    """The error for a malformed profile, saying ``why``."""
    return InputError(f"pprof profile is malformed: {why}")


def check_samples(samples: PprofSamples, location_ids: np.ndarray, n_types: int) -> None:
    """Raise the error of the first malformed sample, or return when there is none.

    A sample is malformed when it refers to a location id not in ``location_ids`` (the
    last such id in the sample is named: the library reader met them root first) or
    has a value count other than ``n_types``; of one sample, the location is named first.
    """
    locs = samples.locations
    undefined = np.flatnonzero(~np.isin(locs, location_ids)) if len(locs) else np.zeros(0, np.int64)
    k_loc = int(np.searchsorted(samples.bound, undefined[0], "right")) - 1 if len(undefined) else len(samples)
    wrong = np.flatnonzero(samples.n_values != n_types)
    k_val = int(wrong[0]) if len(wrong) else len(samples)
    if k_loc <= k_val and k_loc < len(samples):
        b0, b1 = int(samples.bound[k_loc]), int(samples.bound[k_loc + 1])
        lid = int(undefined[np.searchsorted(undefined, b1) - 1])
        assert b0 <= lid < b1
        raise bad(f"sample {k_loc} refers to location {int(locs[lid:lid + 1].view(np.uint64)[0])}, "
                  "which is not defined")
    if k_val < len(samples):
        raise bad(f"sample {k_val} has {int(samples.n_values[k_val])} values but there are {n_types} sample types")


LabelGroups = tuple[np.ndarray, list[list[int]], list[Labels]]  # code per sample, codes per label set, the sets


def label_groups(samples: PprofSamples, s: Callable[[int, str], str]) -> LabelGroups:
    """The label set of every sample with a positive value: (code per sample, codes per label set,
    the label sets), code 0 being "no labels".

    Codes go to label keys in order of their first positive sample; keys that name the same
    label set (they differ only by empty keys) share it. The label strings are checked here,
    ``s`` raising for an index out of range.
    """
    gcode = np.zeros(len(samples), np.int64)
    keys_by_code: list[LabelKey] = [()]
    code_of: dict[LabelKey, int] = {(): 0}
    value = samples.value
    labelled = sorted(samples.labels)
    # One conversion, not a numpy scalar per labelled sample.
    for k, v in zip(labelled, value[labelled].tolist(), strict=True):
        if v > 0:
            key = samples.labels[k]
            c = code_of.get(key)
            if c is None:
                c = code_of[key] = len(keys_by_code)
                keys_by_code.append(key)
            gcode[k] = c
    # A code other than 0 is only given to a positive sample, so its set is present; "no labels"
    # is present when a positive sample has code 0.
    positive = value > 0
    present = [bool((positive & (gcode == 0)).any() if len(keys_by_code) > 1 else positive.any())]
    present += [True] * (len(keys_by_code) - 1)
    by_labels: dict[Labels, list[int]] = {}
    for c, key in enumerate(keys_by_code):
        if present[c]:
            labels = Labels.of((s(ki, "sample label key"), s(vv, "sample label value")) for ki, vv in key)
            by_labels.setdefault(labels, []).append(c)
    return gcode, list(by_labels.values()), list(by_labels)


def label_series(table: StackTable, sids: np.ndarray, samples: PprofSamples, groups: LabelGroups,
                 divisor: int) -> list[tuple[Labels, Profile]]:
    """One profile per label set (:func:`label_groups`), from every sample's stack id."""
    gcode, codes_by_set, label_sets = groups
    vals = samples.value
    positive = vals > 0
    series: list[tuple[Labels, Profile]] = []
    for labels, codes in zip(label_sets, codes_by_set, strict=True):
        if len(label_sets) == 1:
            sel = positive  # one label set: every positive sample
        else:
            sel = positive & (np.isin(gcode, codes) if len(codes) > 1 else gcode == codes[0])
        series.append((labels, summed(table, sids[sel], vals[sel], divisor)))
    return series


_NUMPY_MIN = 64  # fewer samples than this are summed in Python (bench/pprof_decode.py, SDK-shaped push)


def summed(table: StackTable, sids: np.ndarray, vals: np.ndarray, divisor: int) -> Profile:
    """Values summed per stack and turned into sample counts (:func:`to_samples`), in int64 where
    no sum can overflow, else in exact Python ints (InputError past 2**63 - 1). A few samples
    (an SDK's push) are summed in Python too: cheaper than numpy's fixed cost per call."""
    if len(vals) < _NUMPY_MIN or int(vals.max()) > ((1 << 63) - 1 - max(divisor, 0)) // len(vals):
        return _summed_exactly(table, sids.tolist(), vals.tolist(), divisor)
    order = np.argsort(sids)  # a sum per id: any order of equal ids will do
    ss = sids[order]
    bounds = np.flatnonzero(np.concatenate(([True], ss[1:] != ss[:-1])))
    sums = np.add.reduceat(vals[order], bounds)
    if divisor > 0:
        sums = np.maximum((sums + divisor // 2) // divisor, 1)
    return Profile(table, ss[bounds], sums)


def _summed_exactly(table: StackTable, sids: list[int], vals: list[int], divisor: int) -> Profile:
    acc: dict[int, int] = {}
    for sid, v in zip(sids, vals, strict=True):
        acc[sid] = acc.get(sid, 0) + v
    ids = sorted(acc)
    counts = to_samples([acc[i] for i in ids], divisor)
    try:
        return Profile(table, np.array(ids, dtype=np.int64), np.array(counts, dtype=np.int64))
    except OverflowError:
        raise bad("sample values for one stack add up past 2**63") from None


def to_samples(values: list[int], period: int) -> list[int]:
    """Summed positive values to sample counts: round(value / period), at least 1.

    Exact integer arithmetic (Python ints), rounding halves up; ``period <= 0``
    keeps the raw values.
    """
    if period <= 0:
        return values
    half = period // 2
    return [(v + half) // period or 1 for v in values]
