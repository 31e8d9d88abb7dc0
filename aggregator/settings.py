"""The aggregator's settings table (`flamewatch serve`).

Every setting is a flag (``--max-body-bytes``) and an environment variable
(``FLAMEWATCH_MAX_BODY_BYTES``); see flamewatch/settings.py for precedence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from ground.settings import (
    Setting,
    Settings,
    non_negative_float,
    non_negative_int,
    parse_bool,
    port,
    positive_float,
    positive_int,
)


def _storage(text: str) -> str:
    if text == "sqlite" or text.startswith("clickhouse://"):
        return text
    raise ValueError("expected 'sqlite' or 'clickhouse://HOST:PORT/DATABASE'")


SETTINGS: list[Setting] = [
    Setting("host", "0.0.0.0", "Address to listen on (0.0.0.0 = all interfaces, as a cluster service needs)"),
    Setting("port", 4040, "TCP port; 4040 is the pyroscope SDK default, 0 picks a free port", port),
    Setting("otlp_http_port", 0,
            "Also serve every route (OTLP POST /v1development/profiles included) on this port; 4318 is "
            "OTLP/HTTP's default (0: only --port)", port),
    Setting("grpc", False,
            "Serve gRPC (HTTP/2) on --grpc-port: OTLP ProfilesService/Export and push.v1.PusherService/Push",
            parse_bool),
    Setting("grpc_port", 4317, "gRPC port when --grpc true; 4317 is OTLP/gRPC's default, 0 picks a free one",
            port),
    Setting("data_dir", "flamewatch-data", "Directory for the SQLite database (created if missing)"),
    Setting("storage", "sqlite", "Storage backend: 'sqlite' (file in data-dir) or clickhouse://HOST:PORT/DB",
            _storage),
    Setting("window_seconds", 30, "Window size in seconds; windows are aligned to the unix epoch",
            positive_int),
    Setting("late_grace_seconds", 120,
            "A window stays open (unmerged, future-dated data clamped) this long after it ends",
            non_negative_int),
    Setting("retention_seconds", 7 * 24 * 3600, "Delete windows older than this (0 keeps everything)",
            non_negative_int),
    Setting("span_max_rows", 1_000_000,
            "Span profiles (samples tagged span_id/trace_id, kept beside the series in DATA_DIR/spans.sqlite): "
            "at most this many (push, span, type) rows, oldest deleted first; 0 keeps none",
            non_negative_int),
    Setting("push_token", "", "Bearer token required on push routes (empty: no auth)"),
    Setting("read_token", "", "Token required on query routes, as Bearer or as Basic auth's password (empty: no auth)"),
    Setting("max_body_bytes", 16 * 1024 * 1024, "Largest request body accepted (413 beyond)", positive_int),
    Setting("max_decompressed_bytes", 64 * 1024 * 1024,
            "Largest decompressed gzip payload or profile accepted (413 beyond)", positive_int),
    Setting("max_nodes", 4096, "Default node budget for flame JSON (query max_nodes overrides)",
            positive_int),
    Setting("max_query_cells", 4_000_000,
            "Memory bound of a merged read (SQLite): (group, stack) cells held at most (~32 bytes each); "
            "beyond it the lightest are summed into one 'other (truncated ...)' frame per group, noted in the answer",
            positive_int),
    Setting("commit_interval_ms", 5, "Group commit: how long a write batch waits for more pushes",
            non_negative_int),
    Setting("compact_interval_seconds", 30, "How often closed windows are merged and retention applied",
            positive_int),
    Setting("sqlite_synchronous", "FULL",
            "SQLite fsync policy: FULL syncs the WAL on every commit batch, so an acknowledged push "
            "survives power loss and disk errors; NORMAL is faster but may drop the last commits then",
            str.upper, ("NORMAL", "FULL", "EXTRA")),
    Setting("compiled_readers", True,
            "Decode pprof, folded and OTLP bodies with the compiled (Cython) readers where built; false uses the "
            "numpy/Python readers (same results, ~3x more CPU per push), to rule the compiled code out",
            parse_bool),
    Setting("one_producer_per_process", True,
            "A query that does not name pyroscope_spy reads only the host-wide producer's series "
            "(flamewatch-agent, ebpfspy) of a pod that has them, so a process profiled by the agent and "
            "an SDK is not counted twice (docs/aggregator.md, Producers)", parse_bool),
    Setting("max_profiles_per_push", 10000,
            "Most pprof profiles (raw_profile entries, all series together) one push may carry (413 beyond, "
            "checked before any is decoded)", positive_int),
    Setting("max_series_per_push", 10000, "Most series (label sets) one push may carry (413 beyond)",
            positive_int),
    Setting("max_samples_per_push", 2_000_000,
            "Most pprof samples or folded lines one push may carry (413 beyond, before anything is stored)",
            positive_int),
    Setting("max_groups", 100,
            "group_by answers (timeline) keep the N groups with the most samples and sum the rest into "
            "'(other)', with a note; bounds the answer's memory", positive_int),
    Setting("max_label_values", 10000,
            "Most values /api/v1/label/NAME/values (and names /api/v1/labels) lists; the answer says when it "
            "was truncated",
            positive_int),
    Setting("header_timeout_seconds", 10.0,
            "A connection whose request header is not complete this long after it began is closed (slow clients)",
            positive_float),
    Setting("body_timeout_seconds", 60.0, "A request body not received within this many seconds gets a 408",
            positive_float),
    Setting("integrity_check_seconds", 10.0,
            "Time budget of SQLite's PRAGMA quick_check at start (past it, start without a full check, logged)",
            positive_float),
    Setting("sqlite_stack_cache", 2_000_000,
            "Most stacks the SQLite reader keeps resolved in memory (~200 bytes each); past it the cache "
            "restarts, reads stay correct", positive_int),
    Setting("gc_freeze_seconds", 1.0,
            "Every this many seconds serve freezes the objects alive (gc.freeze) so Python's full garbage "
            "collections, which pause every thread, scan only newer ones; 0 turns it off", non_negative_float),
    Setting("gc_collect_seconds", 3600.0,
            "With gc-freeze-seconds: one full collection this often (frees cyclic garbage that was frozen; "
            "one pause per interval)", non_negative_float),
    Setting("log_level", "INFO", "Logging level", str.upper,
            ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
]


# <typed-settings> generated by scripts/readme_settings.py from SETTINGS above
class ServeSettings(Settings):
    """Typed attributes of SETTINGS (generated by scripts/readme_settings.py; a misspelt name fails type checking)."""

    table: ClassVar[Sequence[Setting]] = SETTINGS
    host: str
    port: int
    otlp_http_port: int
    grpc: bool
    grpc_port: int
    data_dir: str
    storage: str
    window_seconds: int
    late_grace_seconds: int
    retention_seconds: int
    span_max_rows: int
    push_token: str
    read_token: str
    max_body_bytes: int
    max_decompressed_bytes: int
    max_nodes: int
    max_query_cells: int
    commit_interval_ms: int
    compact_interval_seconds: int
    sqlite_synchronous: str
    compiled_readers: bool
    one_producer_per_process: bool
    max_profiles_per_push: int
    max_series_per_push: int
    max_samples_per_push: int
    max_groups: int
    max_label_values: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    integrity_check_seconds: float
    sqlite_stack_cache: int
    gc_freeze_seconds: float
    gc_collect_seconds: float
    log_level: str
# </typed-settings>
