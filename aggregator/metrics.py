"""Self-observation: Prometheus metrics on a per-app registry (tests run several apps)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    """The aggregator's counters; names are documented in docs/aggregator.md."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.pushes = Counter("flamewatch_pushes", "Accepted pushes by route", ["route"], registry=r)
        self.samples = Counter("flamewatch_ingested_samples", "Samples stored", registry=r)
        self.lines = Counter("flamewatch_ingested_stacks", "Stack lines / pprof stacks merged", registry=r)
        self.dropped = Counter("flamewatch_dropped_samples", "Samples not stored, by reason", ["reason"],
                               registry=r)
        self.errors = Counter("flamewatch_http_errors", "Error responses by status", ["status"], registry=r)
        self.store_seconds = Histogram(
            "flamewatch_store_seconds", "Store call latency", ["op"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.open_windows = Gauge("flamewatch_open_windows", "(series, window) pairs not yet compacted",
                                  registry=r)
        self.committed_windows = Counter("flamewatch_committed_windows", "Series windows written", registry=r)
