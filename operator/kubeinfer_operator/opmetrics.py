"""The operator's own Prometheus metrics, on a port of its own (``--metrics-port``, 8081).

- ``kubeinfer_operator_reconciles_total{namespace,name,result}``: reconciles of
  each InferenceDeployment, by outcome: ``ok``, ``invalid_spec`` (the spec
  cannot be served), ``missing_dependency`` (a Secret it names is not there
  yet), ``error`` (the API server refused, or anything else);
- ``kubeinfer_operator_reconcile_duration_seconds{namespace,name}``: how long each took;
- ``kubeinfer_operator_certificate_expiry_timestamp_seconds{namespace,name}``: when the
  server certificate the operator issued for it expires (renewed at a third of its life left);
- ``kubeinfer_operator_api_writes_total{kind,verb}``: the writes it sent to the API server
  (server-side applies and deletes). A resync that finds nothing to change writes nothing.

A deleted InferenceDeployment's series are dropped (``forget``).
"""

from __future__ import annotations

import datetime as dt

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

OK, INVALID_SPEC, MISSING_DEPENDENCY, ERROR = "ok", "invalid_spec", "missing_dependency", "error"
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("namespace", "name")
        self.reconciles = Counter("kubeinfer_operator_reconciles", "Reconciles of each InferenceDeployment, by result.",
                                  (*labels, "result"), registry=self.registry)
        self.duration = Histogram("kubeinfer_operator_reconcile_duration_seconds",
                                  "Time one reconcile of an InferenceDeployment took.", labels,
                                  buckets=DURATION_BUCKETS, registry=self.registry)
        self.api_writes = Counter("kubeinfer_operator_api_writes", "Writes sent to the API server, by kind and verb.",
                                  ("kind", "verb"), registry=self.registry)
        self.certificate_expiry = Gauge("kubeinfer_operator_certificate_expiry_timestamp_seconds",
                                        "When the server certificate issued for an InferenceDeployment expires.",
                                        labels, registry=self.registry)

    def reconciled(self, namespace: str, name: str, result: str, seconds: float,
                   certificate_not_after: dt.datetime | None = None) -> None:
        self.reconciles.labels(namespace, name, result).inc()
        self.duration.labels(namespace, name).observe(seconds)
        if certificate_not_after is not None:
            self.certificate_expiry.labels(namespace, name).set(certificate_not_after.timestamp())

    def api_write(self, kind: str, verb: str) -> None:
        self.api_writes.labels(kind, verb).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted InferenceDeployment's series."""
        for result in (OK, INVALID_SPEC, MISSING_DEPENDENCY, ERROR):
            _remove(self.reconciles, namespace, name, result)
        _remove(self.duration, namespace, name)
        _remove(self.certificate_expiry, namespace, name)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``port`` in a thread of its own (0: not at all)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)


def _remove(metric, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
