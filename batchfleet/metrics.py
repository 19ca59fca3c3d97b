"""Prometheus metrics of every role, served on ``BATCHFLEET_METRICS_HOST:BATCHFLEET_METRICS_PORT`` (0 = off).

Labels are bounded: topic, reason, outcome, role, partition.  Never a batch or station id.
The four headline figures of a batch pipeline, one PromQL expression each (see README "Metrics"):

- batch completion rate:  sum(rate(batchfleet_batches_uploaded_total[5m])) / sum(rate(batchfleet_batches_created_total[5m]))
- station success rate:   sum(rate(batchfleet_stations_uploaded_total{outcome="ok"}[5m]))
                          / sum(rate(batchfleet_stations_uploaded_total[5m]))
- average batch latency:  sum(rate(batchfleet_batch_latency_seconds_sum[5m]))
                          / sum(rate(batchfleet_batch_latency_seconds_count[5m]))
- timeout rate:           sum(rate(batchfleet_batches_finalized_total{reason="deadline"}[5m]))
                          / sum(rate(batchfleet_batches_finalized_total[5m]))
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["REGISTRY", "serve_metrics"]

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60, 120)
_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

BATCHES_CREATED = Counter("batchfleet_batches_created", "Batches created by dispatchers", ["topic"], registry=REGISTRY)
STATIONS_DISPATCHED = Counter("batchfleet_stations_dispatched", "Stations enqueued (in jobs)", ["topic"], registry=REGISTRY)
JOBS_DISPATCHED = Counter("batchfleet_jobs_dispatched", "arq jobs enqueued (stations in groups)", ["topic"], registry=REGISTRY)
INGEST_FENCED = Counter(
    "batchfleet_ingest_fenced",
    "Times Redis held another next offset than the dispatcher expected (lost writes, stale dispatcher): re-seeked",
    ["topic", "partition"],
    registry=REGISTRY,
)
MESSAGES_QUARANTINED = Counter("batchfleet_messages_quarantined", "Messages quarantined", ["topic"], registry=REGISTRY)
KAFKA_LAG = Gauge("batchfleet_kafka_lag", "Kafka consumer lag (highwater - position)", ["topic", "partition"], registry=REGISTRY)
OPEN_BATCHES = Gauge("batchfleet_open_batches", "Batches not yet uploaded or dead-lettered", registry=REGISTRY)
QUEUE_DEPTH = Gauge("batchfleet_queue_depth", "Station jobs waiting in the arq queue", registry=REGISTRY)
DISPATCHER_PAUSED = Gauge("batchfleet_dispatcher_paused", "1 while backpressure pauses consumption", registry=REGISTRY)

STATIONS = Counter("batchfleet_stations", "Station outcomes recorded by workers", ["topic", "outcome"], registry=REGISTRY)
STATION_SECONDS = Histogram(
    "batchfleet_station_duration_seconds", "Processor time per station", ["outcome"], buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
LATE_RESULTS = Counter("batchfleet_late_results", "Outcomes that arrived after finalization", ["topic"], registry=REGISTRY)
STATIONS_SKIPPED = Counter(
    "batchfleet_stations_skipped", "Jobs not run because the batch was already finalized", ["topic"], registry=REGISTRY
)

BATCHES_FINALIZED = Counter("batchfleet_batches_finalized", "Batches finalized, by reason", ["topic", "reason"], registry=REGISTRY)
BATCHES_UPLOADED = Counter("batchfleet_batches_uploaded", "Batches uploaded", ["topic", "reason"], registry=REGISTRY)
BATCHES_DEAD = Counter("batchfleet_batches_dead_lettered", "Batches moved to the dead-letter set", ["topic"], registry=REGISTRY)
STATIONS_UPLOADED = Counter(
    "batchfleet_stations_uploaded", "Stations in uploaded batches, by outcome", ["topic", "outcome"], registry=REGISTRY
)
UPLOAD_UNREPLICATED = Counter(
    "batchfleet_upload_unreplicated",
    "Upload attempts held back: the frozen body was not on the WAIT's replicas within half the lease",
    ["topic"],
    registry=REGISTRY,
)
UPLOAD_REDUCED_PROTECTION = Counter(
    "batchfleet_upload_reduced_protection",
    "Uploads sent once fewer replicas held the body than BATCHFLEET_UPLOAD_WAIT_REPLICAS (fewer could be promoted)",
    ["topic"],
    registry=REGISTRY,
)
UPLOAD_FAILURES = Counter("batchfleet_upload_failures", "Failed upload attempts", ["topic"], registry=REGISTRY)
UPLOAD_SECONDS = Histogram(
    "batchfleet_upload_duration_seconds", "Upload attempt duration", ["topic"], buckets=_FAST_BUCKETS, registry=REGISTRY
)
BATCH_LATENCY = Histogram(
    "batchfleet_batch_latency_seconds", "Batch creation to upload", ["topic"], buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
FINALIZE_TO_UPLOAD = Histogram(
    "batchfleet_completion_to_upload_seconds",
    "Batch finalization (complete or deadline) to upload",
    ["topic", "reason"],
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)


def serve_metrics(port: int, addr: str = "127.0.0.1") -> None:
    """Start the /metrics HTTP endpoint on ``addr`` (BATCHFLEET_METRICS_HOST) in a background thread
    (no-op when port is 0)."""
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)
