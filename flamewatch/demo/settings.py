"""The demo's settings table (`flamewatch demo`; flags ``--name``, env ``FLAMEWATCH_NAME``)."""

from __future__ import annotations

from ground.settings import Setting, parse_bool


def _port(text: str) -> int:
    v = int(text)
    if not 0 <= v <= 65535:
        raise ValueError(f"expected a TCP port 0..65535 (0 picks a free one), got {text}")
    return v


def _positive_int(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise ValueError(f"expected a positive integer, got {text}")
    return v


def _non_negative_float(text: str) -> float:
    v = float(text)
    if not v >= 0:
        raise ValueError(f"expected a number >= 0, got {text}")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise ValueError(f"expected a number > 0, got {text}")
    return v


# In --fast mode these replace phase_seconds and upload_interval, so a test sees
# both phases in well under two minutes.
FAST_PHASE_SECONDS = 30
FAST_UPLOAD_INTERVAL = 5

SETTINGS: list[Setting] = [
    Setting("host", "127.0.0.1", "Address the demo's server and services listen on"),
    Setting("port", 4040, "Port of the flamewatch server the demo starts (0 picks a free port)", _port),
    Setting("data_dir", "", "Directory for the SQLite database and logs (empty: a new temporary directory, "
            "kept after exit so `flamewatch serve --data-dir` can reopen it)"),
    Setting("storage", "sqlite", "Storage passed to `flamewatch serve --storage` (sqlite or clickhouse://...)"),
    Setting("server", "", "Use this running flamewatch server instead of starting one (e.g. http://host:4040)"),
    Setting("phase_seconds", 180, "Length of each phase: first the slow admin page, then the fix "
            "(rounded up to whole windows)", _positive_int),
    Setting("duration", 0.0, "Stop after this many seconds in all (0: run until Ctrl-C)",
            _non_negative_float),
    Setting("fast", False, f"Short phases for tests: {FAST_PHASE_SECONDS} s phases and "
            f"{FAST_UPLOAD_INTERVAL} s SDK uploads (overrides --phase-seconds and --upload-interval)",
            parse_bool),
    Setting("agent", "auto", "Run `flamewatch agent` too: auto (when root and a working perf are present), "
            "on (fail without them), off", str, ("auto", "on", "off")),
    Setting("sdk", True, "Profile each service with the pyroscope-io SDK (works without root)", parse_bool),
    Setting("rate", 2.0, "Load generator: admin page requests per second", _positive_float),
    Setting("hats", 6, "Hats awaiting approval, i.e. /manipulate calls per admin page view while slow",
            _positive_int),
    Setting("window_seconds", 30,
            "Aggregator window (passed to serve); phases switch on window boundaries so the diff is clean",
            _positive_int),
    Setting("upload_interval", 10, "pyroscope-io SDK upload interval in seconds", _positive_int),
    Setting("sample_rate", 100, "pyroscope-io SDK sampling rate in Hz", _positive_int),
]
