"""The aggregator: Pyroscope-compatible ingest, 30 s windows, storage, queries."""
