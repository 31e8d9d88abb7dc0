"""OTLP profiles and other producers' requests -> ingest items (the same path as pprof pushes).

:func:`decode_otlp` turns an ``ExportProfilesServiceRequest`` (HTTP body or the message
gRPC parsed) into :class:`aggregator.ingest.Decoded` items on the shared ingest tables, so
OTLP series are stored, limited and answered exactly like Pyroscope pushes. Span ids of the
link table are kept in :attr:`OtlpDecoded.spans` (profile type -> span id -> amount), the hook
for the spans work; they are never series labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from aggregator.ingest import DROPPED_LABELS, Decoded, IngestTables, typed
from stacks import otlp
from stacks.errors import InputError
from stacks.gz import maybe_gunzip
from stacks.model import Labels


@dataclass
class OtlpDecoded(Decoded):
    """What one OTLP request carried, plus its per-span amounts (not stored yet)."""

    spans: dict[str, dict[str, int]] = field(default_factory=dict)
    profiles: int = 0


def parse_body(body: bytes, content_type: str, max_decompressed: int) -> Any:
    """The request message of an OTLP/HTTP body: protobuf (default) or OTLP JSON, gzip or plain."""
    raw = maybe_gunzip(body, max_decompressed)
    if content_type == "application/json":
        try:
            return json_format.Parse(raw, otlp.ExportProfilesServiceRequest(), ignore_unknown_fields=True)
        except (json_format.ParseError, json.JSONDecodeError, UnicodeDecodeError, RecursionError,
                ValueError) as e:
            raise InputError(f"OTLP JSON body is not an ExportProfilesServiceRequest ({e})") from None
    return otlp.parse_request(raw)


# The OTLP stack caches of each ingest tables object (one per app; a few in tests), kept beside
# them rather than in aggregator/ingest.py's IngestTables.
_CACHES: dict[int, tuple[IngestTables, otlp.OtlpCache]] = {}


def cache_of(tables: IngestTables) -> otlp.OtlpCache:
    """The OTLP cache that lives as long as ``tables`` (at most 16 kept)."""
    got = _CACHES.get(id(tables))
    if got is None or got[0] is not tables:
        if len(_CACHES) >= 16:
            _CACHES.pop(next(iter(_CACHES)))
        got = _CACHES[id(tables)] = (tables, otlp.OtlpCache())
    return got[1]


def decode_otlp(req: Any, tables: IngestTables) -> OtlpDecoded:
    """Every series of a parsed request as ingest items, typed as pprof pushes are."""
    out = OtlpDecoded([])
    for s in otlp.decode_export_request(req, tables.current(), cache=cache_of(tables)):
        labels = {k: v for k, v in s.labels.items() if k not in DROPPED_LABELS}
        if "service_name" not in labels:
            # OTLP's own default for a resource without service.name.
            labels["service_name"] = "unknown_service"
        item_labels = typed(Labels.of(labels), s.ptype, s.period)
        t = (s.time_nanos + s.duration_nanos / 2) / 1e9 if s.time_nanos else None
        out.items.append((item_labels, t, s.profile))
        out.lines += s.samples
        out.profiles += 1
        if s.spans:
            per = out.spans.setdefault(s.ptype.id, {})
            for span, v in s.spans.items():
                per[span] = per.get(span, 0) + v
    return out


def response_bytes(answer: dict[str, Any]) -> bytes:
    """The ``ExportProfilesServiceResponse`` of a stored request: a partial success naming what
    was not stored (e.g. older than the retention), empty otherwise."""
    resp = otlp.ExportProfilesServiceResponse()
    if answer.get("not_stored"):
        resp.partial_success.rejected_profiles = len(answer["not_stored"])
        resp.partial_success.error_message = answer.get("warning", "")
    return resp.SerializeToString()
