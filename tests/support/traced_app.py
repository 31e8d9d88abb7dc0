"""Requests of known duration and known work, traced with the real OpenTelemetry SDK and linked to
profiles by the real ``pyroscope-otel`` span processor, profiled by the real ``pyroscope-io`` SDK
in wall-clock mode (issue 28: span profiles and slow requests)::

    python tests/support/traced_app.py --server http://127.0.0.1:4040 --app-name traced

Each request is one root span; the app prints, as one JSON line, every span the SDK exported
(``span_id``, ``trace_id`` in pyroscope-otel's hex form, ``name``, ``duration_ns``), so a test can
compare what the aggregator keeps with what ran. Exits 2 when a package is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# (span name, seconds burning CPU, seconds asleep) of each request, in order.
REQUESTS = (
    ("GET /admin", 0.9, 0.0),
    ("GET /health", 0.1, 0.0),
    ("GET /report", 0.2, 0.35),
    ("GET /admin", 0.3, 0.0),
)


def create_sample_images(seconds: float) -> int:
    """The slow request's work: burn CPU for ``seconds``."""
    acc, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for i in range(2000):
            acc = (acc * 31 + i) % 1_000_003
    return acc


def wait_for_database(seconds: float) -> None:
    """Off-CPU time: only wall-clock samples see it."""
    time.sleep(seconds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", default="http://127.0.0.1:4040")
    ap.add_argument("--app-name", default="traced-app")
    args = ap.parse_args(argv)
    try:
        import pyroscope
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from pyroscope.otel import PyroscopeSpanProcessor
    except ImportError as e:
        print(f"{e}: pip install pyroscope-io pyroscope-otel opentelemetry-sdk", file=sys.stderr)
        return 2
    pyroscope.configure(application_name=args.app_name, server_address=args.server, sample_rate=100,
                        upload_interval=1, tags={"oncpu": "false", "pod": "traced-1"}, enable_logging=False,
                        oncpu=False, gil_only=False)  # wall time: sleeping threads too
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(PyroscopeSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("traced_app")
    time.sleep(0.3)  # the sampler is running before the first request
    for name, busy, sleep in REQUESTS:
        with tracer.start_as_current_span(name):
            create_sample_images(busy)
            if sleep:
                wait_for_database(sleep)
    time.sleep(0.2)
    pyroscope.shutdown()
    spans = [{"span_id": format(s.context.span_id, "016x"), "trace_id": format(s.context.trace_id, "032x"),
              "name": s.name, "duration_ns": s.end_time - s.start_time} for s in exporter.get_finished_spans()]
    print(json.dumps(spans))
    return 0


if __name__ == "__main__":
    sys.exit(main())
