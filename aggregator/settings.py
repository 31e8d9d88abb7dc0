"""The aggregator's settings table (`flamewatch serve`).

Every setting is a flag (``--max-body-bytes``) and an environment variable
(``FLAMEWATCH_MAX_BODY_BYTES``); see flamewatch/settings.py for precedence.
"""

from __future__ import annotations

from ground.settings import Setting, parse_bool


def _positive_int(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise ValueError(f"expected a positive integer, got {text}")
    return v


def _non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise ValueError(f"expected an integer >= 0, got {text}")
    return v


def _port(text: str) -> int:
    v = int(text)
    if not 0 <= v <= 65535:
        raise ValueError(f"expected a TCP port 0..65535, got {text}")
    return v


def _storage(text: str) -> str:
    if text == "sqlite" or text.startswith("clickhouse://"):
        return text
    raise ValueError("expected 'sqlite' or 'clickhouse://HOST:PORT/DATABASE'")


SETTINGS: list[Setting] = [
    Setting("host", "0.0.0.0", "Address to listen on (0.0.0.0 = all interfaces, as a cluster service needs)"),
    Setting("port", 4040, "TCP port; 4040 is the pyroscope SDK default, 0 picks a free port", _port),
    Setting("data_dir", "flamewatch-data", "Directory for the SQLite database (created if missing)"),
    Setting("storage", "sqlite", "Storage backend: 'sqlite' (file in data-dir) or clickhouse://HOST:PORT/DB",
            _storage),
    Setting("window_seconds", 30, "Window size in seconds; windows are aligned to the unix epoch",
            _positive_int),
    Setting("late_grace_seconds", 120,
            "A window stays open (unmerged, future-dated data clamped) this long after it ends",
            _non_negative_int),
    Setting("retention_seconds", 7 * 24 * 3600, "Delete windows older than this (0 keeps everything)",
            _non_negative_int),
    Setting("push_token", "", "Bearer token required on push routes (empty: no auth)"),
    Setting("read_token", "", "Bearer token required on query routes (empty: no auth)"),
    Setting("max_body_bytes", 16 * 1024 * 1024, "Largest request body accepted (413 beyond)", _positive_int),
    Setting("max_decompressed_bytes", 64 * 1024 * 1024,
            "Largest decompressed gzip payload or profile accepted (413 beyond)", _positive_int),
    Setting("max_nodes", 4096, "Default node budget for flame JSON (query max_nodes overrides)",
            _positive_int),
    Setting("max_query_cells", 4_000_000,
            "Memory bound of a merged read (SQLite): (group, stack) cells held at most (~32 bytes each); "
            "beyond it the lightest are summed into one 'other (truncated ...)' frame per group, noted in the answer",
            _positive_int),
    Setting("commit_interval_ms", 5, "Group commit: how long a write batch waits for more pushes",
            _non_negative_int),
    Setting("compact_interval_seconds", 30, "How often closed windows are merged and retention applied",
            _positive_int),
    Setting("sqlite_synchronous", "FULL",
            "SQLite fsync policy: FULL syncs the WAL on every commit batch, so an acknowledged push "
            "survives power loss and disk errors; NORMAL is faster but may drop the last commits then",
            str.upper, ("NORMAL", "FULL", "EXTRA")),
    Setting("compiled_readers", True,
            "Decode pprof and folded bodies with the compiled (Cython) readers where built; false uses the "
            "numpy/Python readers (same results, ~3x more CPU per push), to rule the compiled code out",
            parse_bool),
    Setting("log_level", "INFO", "Logging level", str.upper,
            ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
]
