"""Pyroscope ``push.v1.PushRequest`` <-> plain Python values (pure).

The body of ``POST /push.v1.PusherService/Push`` is a protobuf PushRequest:
series, each with label pairs and raw samples (pprof bytes plus an ID).
Callers un-gzip the HTTP body first (see :mod:`stacks.gz`) and decode each
``raw_profile`` with :func:`stacks.pprof.decode_pprof`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from stacks import _proto
from stacks.errors import InputError

PUSH_PATH = "/push.v1.PusherService/Push"
"""The Connect route the Pyroscope SDKs post to."""


@dataclass(frozen=True)
class RawSample:
    """One uploaded profile: pprof bytes (plain or gzip) and the sender's ID."""

    raw_profile: bytes
    id: str = ""


@dataclass(frozen=True)
class PushSeries:
    """One label set and its raw profiles, labels in the order they were sent."""

    labels: tuple[tuple[str, str], ...]
    samples: tuple[RawSample, ...]


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"push request {what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None


def decode_push_request(body: bytes) -> list[PushSeries]:
    """Decode a plain (already un-gzipped) PushRequest protobuf.

    Raises :class:`InputError` when ``body`` is not a PushRequest.
    """
    try:
        req = _proto.PushRequest.FromString(bytes(body))
    except (DecodeError, RecursionError, ValueError) as e:
        raise InputError(
            f"push body is not a valid PushRequest protobuf ({e}); send a gzip or plain "
            "push.v1.PushRequest with Content-Type: application/proto"
        ) from None
    out: list[PushSeries] = []
    for i, s in enumerate(req.series):
        labels = tuple(
            (_text(lp.name, f"series {i} label name"), _text(lp.value, f"series {i} label value"))
            for lp in s.labels
        )
        samples = tuple(
            RawSample(bytes(rs.raw_profile), _text(rs.ID, f"series {i} sample ID")) for rs in s.samples
        )
        out.append(PushSeries(labels, samples))
    return out


def encode_push_request(series: Sequence[PushSeries]) -> bytes:
    """Encode series as a plain PushRequest protobuf (the caller gzips it)."""
    req = _proto.PushRequest()
    for s in series:
        ps = req.series.add()
        for name, value in s.labels:
            ps.labels.add(name=name.encode("utf-8"), value=value.encode("utf-8"))
        for rs in s.samples:
            ps.samples.add(raw_profile=bytes(rs.raw_profile), ID=rs.id.encode("utf-8"))
    return req.SerializeToString()
