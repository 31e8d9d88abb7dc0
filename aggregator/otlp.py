"""OTLP profiles and other producers' requests -> ingest items (the same path as pprof pushes).

:func:`decode_otlp` turns an ``ExportProfilesServiceRequest`` (HTTP body or the message
gRPC parsed) into :class:`aggregator.ingest.Decoded` items on the shared ingest tables, so
OTLP series are stored, limited and answered exactly like Pyroscope pushes. Span ids of the
link table are kept in :attr:`OtlpDecoded.otlp_spans` (profile type -> span id -> amount), the hook
for the spans work; they are never series labels.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf import json_format

from aggregator.ingest import DROPPED_LABELS, Decoded, IngestTables, typed
from stacks import otlp
from stacks.errors import InputError
from stacks.gz import maybe_gunzip
from stacks.model import Labels, StackTable


@dataclass
class OtlpDecoded(Decoded):
    """What one OTLP request carried, plus its per-span amounts (not stored yet)."""

    # Not ``Decoded.spans`` (span-tagged profiles that aggregator/spans.py stores): amounts only.
    otlp_spans: dict[str, dict[str, int]] = field(default_factory=dict)
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


class Worker:
    """The decode thread of one ingest tables object: OTLP and JFR bodies are parsed and walked
    there, off the event loop (a large body takes seconds in Python), on the thread's own
    :class:`StackTable` and OTLP cache, which only that thread touches. The results are rebased
    onto the shared table on the loop (one dict lookup per distinct stack)."""

    def __init__(self, limit: int, compiled: bool = True) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="flamewatch-decode")
        self.limit = limit
        self.table = StackTable(lines=True)  # frames keep file:line
        self.cache = otlp.OtlpCache(compiled)
        self.inline = otlp.OtlpCache(compiled)  # for bodies decoded on the loop, onto the shared table

    def current(self) -> StackTable:
        """The thread's table (a fresh one past ``limit`` stacks, as IngestTables does)."""
        if len(self.table) > self.limit:
            self.table = StackTable(lines=True)
        return self.table

    async def run(self, fn: Callable[[], D], tables: IngestTables) -> D:
        """``fn()`` on the decode thread; its items rebased onto ``tables``' current table."""
        got = await asyncio.get_running_loop().run_in_executor(self.pool, fn)
        table = tables.current()
        got.items[:] = [(labels, t, p.rebase(table)) for labels, t, p in got.items]
        return got


D = TypeVar("D", bound=Decoded)
# One worker per ingest tables object (one per app; a few in tests), kept beside them rather
# than in aggregator/ingest.py's IngestTables. At most 16; the oldest is shut down beyond.
_WORKERS: dict[int, tuple[IngestTables, Worker]] = {}


def worker_of(tables: IngestTables) -> Worker:
    """The decode worker that lives as long as ``tables``."""
    got = _WORKERS.get(id(tables))
    if got is None or got[0] is not tables:
        if len(_WORKERS) >= 16:
            _, old = _WORKERS.pop(next(iter(_WORKERS)))
            old.pool.shutdown(wait=False)
        got = _WORKERS[id(tables)] = (tables, Worker(tables.limit, tables.compiled))
    return got[1]


# Bodies up to this size (as received) are decoded on the loop straight onto the shared table, as
# pprof pushes are (a few ms); larger ones go to the decode thread (plus one rebase per stack).
INLINE_BYTES = 256 * 1024


async def decode_body(body: bytes, content_type: str, tables: IngestTables, max_decompressed: int) -> OtlpDecoded:
    """An OTLP/HTTP (or gRPC) body as ingest items; large bodies are decoded off the loop."""
    w = worker_of(tables)
    if len(body) <= INLINE_BYTES:
        return decode_otlp(parse_body(body, content_type, max_decompressed), tables.current(), w.inline)
    return await w.run(lambda: decode_otlp(parse_body(body, content_type, max_decompressed), w.current(),
                                           w.cache), tables)


def decode_otlp(req: Any, table: StackTable, cache: otlp.OtlpCache | None = None) -> OtlpDecoded:
    """Every series of a parsed request as ingest items on ``table``, typed as pprof pushes are."""
    out = OtlpDecoded([])
    for s in otlp.decode_export_request(req, table, cache=cache):
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
            per = out.otlp_spans.setdefault(s.ptype.id, {})
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
