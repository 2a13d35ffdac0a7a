"""Prometheus metrics: declared once, here. Names are a contract (ARCHITECTURE.md).

``kubeinfer_queue_depth`` is the autoscaling signal: requests accepted and not
yet answered (waiting for a batch or executing), per model. With ``--workers``
each process writes its values to ``PROMETHEUS_MULTIPROC_DIR`` and the parent
serves their sum (gauges ``livesum``: a dead worker's queue no longer counts).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge(
            "kubeinfer_queue_depth", "Requests accepted and not yet answered (waiting or executing).",
            ["model"], registry=r, multiprocess_mode="livesum",
        )
        self.queue_waiting = Gauge(
            "kubeinfer_queue_waiting", "Requests waiting for a batch.", ["model"], registry=r,
            multiprocess_mode="livesum",
        )
        self.requests = Counter(
            "kubeinfer_requests", "Inference requests answered, by gRPC status code and client identity.",
            ["model", "code", "client"], registry=r,
        )
        self.request_duration = Histogram(
            "kubeinfer_request_duration_seconds", "Time from receiving a request to answering it.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_duration = Histogram(
            "kubeinfer_queue_duration_seconds", "Time a request waited for its batch.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.compute_duration = Histogram(
            "kubeinfer_compute_duration_seconds", "Time to run one batch (concatenate, infer, split).",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "kubeinfer_batch_size", "Rows in each executed batch.", ["model"], buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "kubeinfer_model_info", "Served models and the execution providers their sessions got.",
            ["model", "providers", "instances"], registry=r, multiprocess_mode="max",
        )


def multiprocess_registry() -> CollectorRegistry:
    """The parent's view with ``--workers``: every worker's values, combined."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
