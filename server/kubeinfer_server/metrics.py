"""Prometheus metrics: declared once, here. Their names are a contract with dashboards and
the autoscaler (docs/serving.md, "Metrics and health").

The request path only touches plain Python values (``ModelMetrics``: counts,
bucket lists, sums); prometheus-client turns them into metric families when
``/metrics`` is scraped (``Collector``). Updating prometheus-client's own metric
objects costs a lock and several calls per update, about a tenth of a small
request's server time under load, for values that are read every few seconds.

``kubeinfer_queue_depth`` is the autoscaling signal: requests accepted and not
yet answered (waiting for a batch or executing), per model. With ``--workers``
each process writes a snapshot of its values to a directory every
``SNAPSHOT_EVERY_S`` seconds (and at exit); the parent serves their sum, where
the gauges count live workers only (a dead worker's queue no longer counts).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SNAPSHOT_EVERY_S = 0.1  # a worker's snapshot lags its live values by at most this

log = logging.getLogger(__name__)

GAUGES = {  # ModelMetrics attribute -> (name, help)
    "in_flight": ("kubeinfer_queue_depth", "Requests accepted and not yet answered (waiting or executing)."),
    "waiting": ("kubeinfer_queue_waiting", "Requests waiting for a batch."),
}
HISTOGRAMS = {  # ModelMetrics attribute -> (name, help, buckets)
    "request_seconds": ("kubeinfer_request_duration_seconds", "Time from receiving a request to answering it.",
                        LATENCY_BUCKETS),
    "queue_seconds": ("kubeinfer_queue_duration_seconds", "Time a request waited for its batch.", LATENCY_BUCKETS),
    "compute_seconds": ("kubeinfer_compute_duration_seconds",
                        "Time to run one batch (concatenate, infer, split).", LATENCY_BUCKETS),
    "batch_rows": ("kubeinfer_batch_size", "Rows in each executed batch.", BATCH_BUCKETS),
}
REQUESTS = ("kubeinfer_requests", "Inference requests answered, by gRPC status code and client identity.")
MODEL_INFO = ("kubeinfer_model_info", "Served models: the execution providers their sessions got, the sha256 of "
              "the file loaded, how it was optimized (none: not by kubeinfer-server optimize) and the "
              "revision it is served as (--model-version).")
# ModelMetrics attributes, in the order of kubeinfer_model_info's labels after ``model``.
INFO_LABELS = ("providers", "instances", "sha256", "optimization_method", "revision")
THREADS = ("kubeinfer_model_intra_op_threads", "ONNX Runtime intra-op threads of each of the model's sessions "
           "(followed when the CPU limit changes; with --workers, the most any worker's sessions have).")


class Histogram:
    """Bucket counts (not cumulative; the last one is +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.sum += value


class Queue(Protocol):
    @property
    def waiting(self) -> int: ...


class _NoQueue:
    waiting = 0


class ModelMetrics:
    """One model's live values, updated in place on the request path; ``waiting`` is read
    from the model's queue (its batcher) when the values are read."""

    __slots__ = ("model", *INFO_LABELS, "in_flight", "queue", "intra_op_threads", *HISTOGRAMS)
    request_seconds: Histogram
    queue_seconds: Histogram
    compute_seconds: Histogram
    batch_rows: Histogram

    def __init__(self, model: str, providers: str, instances: int, sha256: str, optimization_method: str,
                 revision: str) -> None:
        self.model, self.providers, self.instances = model, providers, instances
        self.sha256, self.optimization_method, self.revision = sha256, optimization_method, revision
        self.in_flight = 0
        self.queue: Queue = _NoQueue()
        self.intra_op_threads = 0  # set by the serving core from its sessions, again when they are rebuilt
        for attribute, (_, _, buckets) in HISTOGRAMS.items():
            setattr(self, attribute, Histogram(buckets))

    @property
    def waiting(self) -> int:
        return self.queue.waiting


class Metrics:
    """Every model's live values and the request counts, exposed through ``registry``."""

    def __init__(self) -> None:
        self.models: dict[str, ModelMetrics] = {}
        self.requests: dict[tuple[str, str, str], int] = {}  # (model, code, client) -> answered
        self.registry = CollectorRegistry()
        self.registry.register(Collector(lambda: [self.snapshot()]))

    def model(self, name: str, providers: str, instances: int, sha256: str, optimization_method: str,
              revision: str) -> ModelMetrics:
        self.models[name] = ModelMetrics(name, providers, instances, sha256, optimization_method, revision)
        return self.models[name]

    def count_request(self, model: str, code: str, client: str) -> None:
        key = (model, code, client)
        self.requests[key] = self.requests.get(key, 0) + 1

    def snapshot(self) -> dict:
        """The values as plain data (what a worker writes and the collector reads)."""
        return {
            "models": [
                {"model": m.model, **{label: getattr(m, label) for label in INFO_LABELS},
                 "gauges": {a: getattr(m, a) for a in GAUGES}, "intra_op_threads": m.intra_op_threads,
                 "histograms": {a: [list(getattr(m, a).counts), getattr(m, a).sum] for a in HISTOGRAMS}}
                for m in self.models.values()
            ],
            "requests": [[*key, count] for key, count in self.requests.items()],
        }


@dataclass
class _Totals:
    """Snapshots summed: gauges and histograms by model, request counts by label values."""

    gauges: dict[str, dict[str, float]] = field(default_factory=lambda: {a: {} for a in GAUGES})
    histograms: dict[str, dict[str, list[Any]]] = field(default_factory=lambda: {a: {} for a in HISTOGRAMS})
    requests: dict[tuple[str, ...], float] = field(default_factory=dict)
    info: dict[tuple[str, ...], float] = field(default_factory=dict)
    threads: dict[str, float] = field(default_factory=dict)  # by model: the most of any snapshot (not a sum)

    def add(self, snapshot: dict[str, Any], live: bool) -> None:
        for m in snapshot["models"]:
            name = m["model"]
            self.info[(name, *(str(m[label]) for label in INFO_LABELS))] = 1.0
            self.threads[name] = max(self.threads.get(name, 0), m["intra_op_threads"])
            for attribute, value in m["gauges"].items():
                gauge = self.gauges[attribute]
                gauge[name] = gauge.get(name, 0) + (value if live else 0)
            for attribute, (counts, total) in m["histograms"].items():
                merged = self.histograms[attribute].setdefault(name, [[0] * len(counts), 0.0])
                merged[0] = [a + b for a, b in zip(merged[0], counts, strict=True)]
                merged[1] += total
        for *key, count in snapshot["requests"]:
            self.requests[tuple(key)] = self.requests.get(tuple(key), 0) + count


class Collector:
    """Builds the metric families from snapshots: one process's, or every worker's summed
    (``live`` says, per snapshot, whether its gauges still count)."""

    def __init__(self, snapshots: Callable[[], Iterable[dict]], live: Callable[[dict], bool] = lambda s: True):
        self._snapshots = snapshots
        self._live = live

    def collect(self) -> Iterator[Metric]:
        totals = _Totals()
        for snapshot in self._snapshots():
            totals.add(snapshot, self._live(snapshot))
        for attribute, (name, documentation) in GAUGES.items():
            by_model = (((model,), value) for model, value in totals.gauges[attribute].items())
            yield _family(GaugeMetricFamily(name, documentation, labels=["model"]), by_model)
        yield _family(CounterMetricFamily(*REQUESTS, labels=["model", "code", "client"]), totals.requests.items())
        yield from _histogram_families(totals)
        yield _family(GaugeMetricFamily(*MODEL_INFO, labels=["model", *INFO_LABELS]), totals.info.items())
        yield _family(GaugeMetricFamily(*THREADS, labels=["model"]),
                      (((model,), threads) for model, threads in totals.threads.items()))


FamilyT = TypeVar("FamilyT", GaugeMetricFamily, CounterMetricFamily)


def _family(family: FamilyT, values: Iterable[tuple[Sequence[str], float]]) -> FamilyT:
    """``family`` with one sample per (label values, value)."""
    for labels, value in values:
        family.add_metric(list(labels), value)
    return family


def _histogram_families(totals: _Totals) -> Iterator[HistogramMetricFamily]:
    for attribute, (name, documentation, bounds) in HISTOGRAMS.items():
        family = HistogramMetricFamily(name, documentation, labels=["model"])
        for model, (counts, total) in totals.histograms[attribute].items():
            cumulative, buckets = 0, []
            for bound, count in zip([*bounds, float("inf")], counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(float(bound)), cumulative))
            family.add_metric([model], buckets, total)
        yield family


# --- --workers: one snapshot file per worker, summed by the parent -------------------------
def snapshot_path(directory: str, index: int) -> Path:
    return Path(directory) / f"worker-{index}.json"


def write_snapshot(snapshot: dict, path: Path) -> None:
    """Atomically replace ``path`` with ``snapshot`` (``Metrics.snapshot()``)."""
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"worker": path.stem, **snapshot}))
    os.replace(temporary, path)


async def publish_snapshots(metrics: Metrics, path: Path) -> None:
    """A worker's task: write the snapshot whenever it changed, every ``SNAPSHOT_EVERY_S``.
    The caller writes a last one at exit (cancelling this task)."""
    last = None
    while True:
        current = metrics.snapshot()
        if current != last:
            try:
                write_snapshot(current, path)
                last = current
            except OSError as exc:  # the parent keeps the last snapshot that made it; retried next turn
                log.warning("Could not write the metrics snapshot %s: %s", path, exc)
        await asyncio.sleep(SNAPSHOT_EVERY_S)


def workers_registry(directory: str, is_live: Callable[[str], bool]) -> CollectorRegistry:
    """The parent's view with ``--workers``: every worker's snapshot, summed; ``is_live`` takes
    a worker's name (``worker-N``) and says whether its gauges still count."""

    def snapshots():
        for path in sorted(Path(directory).glob("worker-*.json")):
            try:
                yield json.loads(path.read_text())
            except (OSError, ValueError):  # replaced between listing and reading: next scrape
                continue

    registry = CollectorRegistry()
    registry.register(Collector(snapshots, live=lambda snapshot: is_live(snapshot["worker"])))
    return registry
