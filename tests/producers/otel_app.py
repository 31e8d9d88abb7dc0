"""A small Python program profiled by opentelemetry-sdk-extension-profiling (OTLP/HTTP export).

Run in that package's own virtualenv (scripts/setup.sh makes it) by tests/producers/test_otel_python.py:
a worker thread runs ``heavy_work`` about twice as long as ``light_work`` for FW_SECONDS seconds; the
profiler's export goes to OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT.
"""

from __future__ import annotations

import os
import threading
import time

from opentelemetry.sdk.extension.profiling.export.http import OTLPHTTPProfileExporter
from opentelemetry.sdk.extension.profiling.runtime import Profiler
from opentelemetry.sdk.resources import Resource


def heavy_work(until: float) -> None:
    while time.monotonic() < until:
        sum(i * i for i in range(2000))


def light_work(until: float) -> None:
    while time.monotonic() < until:
        sum(i * i for i in range(2000))


def worker(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = time.monotonic()
        heavy_work(now + 0.2)
        light_work(now + 0.3)


def main() -> None:
    seconds = float(os.environ.get("FW_SECONDS", "4"))
    resource = Resource.create({"service.name": "otel-py-app", "k8s.namespace.name": "oteltest",
                                "k8s.pod.name": "otel-py-1", "k8s.container.name": "app"})
    profiler = Profiler(exporter=OTLPHTTPProfileExporter(), resource=resource, sample_interval=0.01,
                        export_interval=2.0)
    profiler.start()
    t = threading.Thread(target=worker, args=(seconds,), name="burner")
    t.start()
    t.join()
    profiler.stop(flush=True)
    print("done")


if __name__ == "__main__":
    main()
