"""The hand-written pprof sample readers behind :class:`stacks.pprof.PprofDecoder` (pure, stateless).

The hot part of a pprof is its samples: one small message each, holding a
packed varint list of location ids and one value per sample type. Reading
them through the protobuf library costs a Python object per field (~4 us a
sample). Instead the library parses ``ProfileSplit`` (samples left as raw
bytes, everything else as before) and the samples are read here: the usual
shapes (packed location ids, packed or unpacked values, no labels) with
numpy over all samples at once (:func:`scan_samples`), any other shape with
a small Python reader (:func:`read_sample`), both into the neutral sample
columns (:func:`sample_columns`). Anything these readers do not fully
understand raises :class:`Fallback` or gives None: the decode then falls back
to the protobuf library, which gives the same result or the same error.
"""

from __future__ import annotations

import numpy as np

from stacks._pprof_tables import LabelKey, PprofSamples, label_key

U64 = (1 << 64) - 1


class Fallback(Exception):
    """The fast reader met something it leaves to the protobuf library."""


def varint(b: bytes, i: int, end: int) -> tuple[int, int]:
    """The unsigned varint at ``b[i]`` and the index after it."""
    v = shift = 0
    while True:
        if i >= end or shift > 63:
            raise Fallback
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        if c < 0x80:
            if v > U64:
                raise Fallback
            return v, i
        shift += 7


def signed(v: int) -> int:
    """A varint read as int64 (two's complement)."""
    return v - (1 << 64) if v >> 63 else v


def skip(b: bytes, i: int, wire: int, end: int) -> int:
    """Index after an unknown field's payload."""
    if wire == 0:
        return varint(b, i, end)[1]
    if wire == 1:
        i += 8
    elif wire == 5:
        i += 4
    elif wire == 2:
        n, i = varint(b, i, end)
        i += n
    else:  # groups and invalid wire types: the library decides
        raise Fallback
    if i > end:
        raise Fallback
    return i


def read_sample(b: bytes) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """A Sample message in any valid encoding: (location ids, values, [(label key, str)])."""
    locs: list[int] = []
    values: list[int] = []
    labels: list[tuple[int, int]] = []
    i, end = 0, len(b)
    while i < end:
        tag, i = varint(b, i, end)
        field, wire = tag >> 3, tag & 7
        if field in (1, 2) and wire in (0, 2):
            out = locs if field == 1 else values
            if wire == 0:
                v, i = varint(b, i, end)
                out.append(v)
            else:
                n, i = varint(b, i, end)
                stop = i + n
                if stop > end:
                    raise Fallback
                while i < stop:
                    v, i = varint(b, i, stop)
                    out.append(v)
        elif field == 3 and wire == 2:
            n, i = varint(b, i, end)
            stop = i + n
            if stop > end:
                raise Fallback
            key = text = 0
            while i < stop:
                t, i = varint(b, i, stop)
                if t == 8:
                    key, i = varint(b, i, stop)
                elif t == 16:
                    text, i = varint(b, i, stop)
                elif t >> 3 in (1, 2) or t >> 3 == 0:
                    raise Fallback  # a known field with another wire type
                else:
                    i = skip(b, i, t & 7, stop)
            labels.append((signed(key), signed(text)))
        elif field in (1, 2, 3) or field == 0:
            raise Fallback
        else:
            i = skip(b, i, wire, end)
    return locs, [signed(v) for v in values], labels



def _len_prefix(a: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The length prefix after the one-byte tag at each ``a[at]``, read as a 1-2 byte varint.

    Returns (length, index of the payload's first byte, mask of prefixes that end within
    two bytes); lengths of longer prefixes are garbage and must be masked out.
    """
    b1 = a[at + 1].astype(np.int64)
    b2 = a[at + 2].astype(np.int64)
    one = b1 < 0x80
    length = np.where(one, b1, (b1 & 0x7F) | (b2 << 7))
    return length, at + np.where(one, 2, 3), one | (b2 < 0x80)


def _usual_shapes(
    a: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which samples have the usual shape (see :func:`scan_samples`), judged by their first bytes.

    Returns (mask of such samples, mask of those with packed values, first byte of
    each sample's location ids, the byte after them, first byte of packed values).
    """
    ll, ls, l_fits = _len_prefix(a, starts)
    le = ls + ll
    ok = (ends - starts >= 2) & (a[starts] == 0x0A) & l_fits & (le < ends)
    le = np.where(ok, le, starts)  # keep indexes in range for rejected samples
    t0 = a[le]
    ml, vs_packed, m_fits = _len_prefix(a, le)
    packed = ok & (t0 == 0x12) & m_fits & (vs_packed + ml == ends) & (ml > 0)
    unpacked = ok & (t0 == 0x10)
    fast = packed | unpacked
    # Both ranges must end on a varint's final byte; otherwise the library decides.
    fast &= a[np.maximum(ends - 1, 0)] < 0x80
    fast &= (le == ls) | (a[np.maximum(le - 1, 0)] < 0x80)
    return fast, packed, ls, le, vs_packed


def _all_varints(a: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every varint in the buffer ``a``: (index of its first byte, its value).

    Raises :class:`Fallback` when a sample ends mid-varint or a varint is 10 bytes long.
    """
    term = a < 0x80
    if not term[ends - 1].all():
        # A sample ending mid-varint (a fixed-width field, say) would shift
        # the varint boundaries of the samples after it.
        raise Fallback
    vstarts = np.flatnonzero(term[:-1])
    vstarts += 1
    vstarts = np.concatenate(([0], vstarts))
    vlen = np.diff(vstarts, append=len(a))
    if int(vlen.max()) > 9:
        raise Fallback  # 10-byte varints (negative values, huge ids), or not varints at all
    values = (a[vstarts] & 0x7F).astype(np.uint64)
    # Byte j of every varint longer than j, one pass per byte position over a
    # shrinking set: ids are mostly 1-2 bytes, so few bytes are touched twice.
    sel = np.flatnonzero(vlen > 1)
    j = 1
    while len(sel):
        values[sel] |= (a[vstarts[sel] + j] & 0x7F).astype(np.uint64) << np.uint64(7 * j)
        j += 1
        sel = sel[vlen[sel] > j]
    return vstarts, values


def scan_samples(
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
    fast, packed, ls, le, vs_packed = _usual_shapes(a, starts, ends)
    if not fast.any():
        return fast, np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.int64)
    vstarts, values = _all_varints(a, ends)

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


def sample_columns(samples: list[bytes], n_types: int, vi: int) -> PprofSamples:
    """The neutral sample columns of raw ``Sample`` messages, value column ``vi`` of ``n_types``.

    The usual shapes are read with numpy (:func:`scan_samples`), the others one by one
    (:func:`read_sample`). Raises :class:`Fallback` for what only the library reads.
    """
    n = len(samples)
    fast, f_first, locs_all, fvals = scan_samples(samples, n_types, vi)
    fast_idx = np.flatnonzero(fast)
    f_count = np.diff(np.append(f_first, len(locs_all))) if len(fast_idx) else np.zeros(0, np.int64)
    odd_idx = np.flatnonzero(~fast).tolist()
    if not odd_idx:  # the usual case: the numpy reader's columns as they are
        bound = np.zeros(n + 1, np.int64)
        bound[1:] = len(locs_all)
        bound[:n] = f_first
        return PprofSamples(bound, locs_all.view(np.int64), np.full(n, n_types, np.int64), fvals, {})
    counts = np.zeros(n, np.int64)
    counts[fast_idx] = f_count
    n_values = np.full(n, n_types, np.int64)
    value = np.zeros(n, np.int64)
    value[fast_idx] = fvals
    labels: dict[int, LabelKey] = {}
    odd: list[list[int]] = []
    for k in odd_idx:
        locs, values, pairs = read_sample(samples[k])
        odd.append(locs)
        counts[k] = len(locs)
        n_values[k] = len(values)
        value[k] = values[vi] if 0 <= vi < len(values) else 0
        key = label_key(pairs)
        if key:
            labels[k] = key
    bound = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=bound[1:])
    out = np.empty(int(bound[-1]), np.uint64)
    if len(locs_all):  # the numpy-read ids, each sample's run moved to its place
        out[np.repeat(bound[fast_idx] - f_first, f_count) + np.arange(len(locs_all))] = locs_all
    for k, locs in zip(odd_idx, odd, strict=True):
        out[bound[k] : bound[k + 1]] = locs
    return PprofSamples(bound, out.view(np.int64), n_values, value, labels)


def location_rows(lids: np.ndarray, locs_all: np.ndarray) -> np.ndarray | None:
    """The row in the sorted ``lids`` of every location id in ``locs_all``; None when one is undefined."""
    if not len(locs_all):
        return np.zeros(0, np.int64)
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
        return li
    li = np.searchsorted(lids, locs_all)
    if not np.array_equal(lids[np.minimum(li, len(lids) - 1)], locs_all):
        return None
    return li


def sample_frames(
    flat: np.ndarray, run_len: np.ndarray, run_off: np.ndarray, li: np.ndarray, f_first: np.ndarray, nf: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The frame numbers of ``nf`` samples, concatenated, and the bounds of each sample's run.

    Location row ``r`` stands for ``flat[run_off[r]:run_off[r] + run_len[r]]``; ``li`` are the
    rows of all samples' location ids, sample k's starting at ``f_first[k]``.
    """
    n_locs = len(li)
    if int(run_len.max(initial=1)) == 1 and int(run_len.min(initial=1)) == 1:
        fnos = flat[li]
        fbound = np.append(f_first, n_locs) if nf else np.zeros(1, np.int64)
    else:
        occ_len = run_len[li]
        cs = np.concatenate(([0], np.cumsum(occ_len)))
        fidx = np.repeat(run_off[li] - cs[:-1], occ_len) + np.arange(int(cs[-1]))
        fnos = flat[fidx]
        fbound = cs[np.append(f_first, n_locs)] if nf else np.zeros(1, np.int64)
    return fnos, fbound


def label_keys(raw: bytes, starts: np.ndarray, ends: np.ndarray, idx: list[int]) -> dict[int, LabelKey] | None:
    """The non-empty label key of each sample ``raw[starts[k]:ends[k]]`` for k in ``idx`` (the
    labels of :class:`PprofSamples`); None if one is unusual."""
    out: dict[int, LabelKey] = {}
    try:
        for k in idx:
            key = label_key(read_sample(raw[starts[k] : ends[k]])[2])
            if key:
                out[k] = key
    except Fallback:
        return None
    return out


def positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray | None:
    """Index of each ``wanted`` id in ``ids`` (-1 when absent); None when ``ids`` repeat.

    Repeated ids are legal protobuf (the library keeps the last); they are
    left to it.
    """
    if not len(ids):
        return np.full(len(wanted), -1, np.int64)
    if len(ids) > 1 and bool((ids[1:] > ids[:-1]).all()):
        # The usual order (1..N): already sorted and without repeats, no sort needed.
        pos = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)
        return np.where(ids[pos] == wanted, pos, -1)
    order = np.argsort(ids)
    srt = ids[order]
    if len(srt) > 1 and bool((srt[1:] == srt[:-1]).any()):
        return None
    pos = np.minimum(np.searchsorted(srt, wanted), len(srt) - 1)
    return np.where(srt[pos] == wanted, order[pos], -1)
