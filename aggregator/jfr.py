"""pyroscope-java's JFR push (``POST /ingest?format=jfr``) -> ingest items (the pprof path's tables,
typing and limits). The recording is read by :mod:`stacks.jfr`."""

from __future__ import annotations

from collections.abc import Mapping

from aggregator.ingest import DROPPED_LABELS, Decoded, _float_param, _midpoint, parse_app_name, typed
from stacks.errors import InputError
from stacks.gz import maybe_gunzip
from stacks.jfr import decode_jfr
from stacks.model import Labels, StackTable


def decode_jfr_ingest(params: Mapping[str, str], jfr: bytes, labels: bytes, table: StackTable,
                      max_decompressed: int) -> Decoded:
    """Every profile type of a JFR recording as items of the ``name=`` series (plus the labels
    part's per-context labels)."""
    base = parse_app_name(params.get("name", ""))
    t = _midpoint(_float_param(params, "from"), _float_param(params, "until"))
    rate = params.get("sampleRate") or "100"
    try:
        sample_rate = int(float(rate))
        if sample_rate <= 0:
            raise ValueError
    except ValueError:
        raise InputError(f"sampleRate={rate!r} must be a positive number (Hz)") from None
    raw = maybe_gunzip(jfr, max_decompressed)
    lab = maybe_gunzip(labels, max_decompressed) if labels else b""
    got = decode_jfr(raw, table, sample_rate=sample_rate, labels=lab)
    out = Decoded([])
    for s in got.series:
        extra = {k: v for k, v in s.labels.items() if k not in DROPPED_LABELS}
        series = Labels.of({**extra, **dict(base.items_)}) if extra else base
        out.items.append((typed(series, s.ptype, s.period), t, s.profile))
        out.lines += s.events
    return out
