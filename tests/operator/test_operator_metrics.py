"""The operator's own metrics: counted per reconcile by outcome (pure), and served by a real operator.

Covers: ``OperatorMetrics`` counts results and durations per InferenceDeployment, sets the
certificate expiry, and forgets a deleted one's series; a real ``kubeinfer-operator`` against
the real control plane serves them on ``--metrics-port``: a reconciled InferenceDeployment is
counted ``ok`` with its server certificate's expiry, one with a missing client-CA Secret
``missing_dependency``; once it is Ready, resyncs that find nothing to change send no write
to the API server (``kubeinfer_operator_api_writes_total`` stays put); a deleted one's series go away.
"""

from __future__ import annotations

import datetime as dt
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubeinfer_operator.opmetrics import OperatorMetrics


def samples(text: str, name: str) -> dict[tuple, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_counts_by_result_and_forgets_the_deleted():
    metrics = OperatorMetrics()
    expiry = dt.datetime(2027, 3, 1, tzinfo=dt.UTC)
    metrics.reconciled("ml", "fraud", "ok", 0.2, expiry)
    metrics.reconciled("ml", "fraud", "ok", 0.1)
    metrics.reconciled("ml", "fraud", "invalid_spec", 0.01)
    text = generate_latest(metrics.registry).decode()
    counts = samples(text, "kubeinfer_operator_reconciles_total")
    assert counts[(("name", "fraud"), ("namespace", "ml"), ("result", "ok"))] == 2
    assert counts[(("name", "fraud"), ("namespace", "ml"), ("result", "invalid_spec"))] == 1
    assert samples(text, "kubeinfer_operator_reconcile_duration_seconds_count") == {
        (("name", "fraud"), ("namespace", "ml")): 3}
    assert samples(text, "kubeinfer_operator_certificate_expiry_timestamp_seconds") == {
        (("name", "fraud"), ("namespace", "ml")): expiry.timestamp()}
    metrics.forget("ml", "fraud")
    assert "fraud" not in generate_latest(metrics.registry).decode()


class QuietResyncs:
    """Whether three reconciles of one InferenceDeployment went by with no write to the API server.

    Right after Ready the status may still change once or twice (the Deployment's own
    status settling); from then on, resyncs must find nothing to write.
    """

    def __init__(self, operator, key: tuple) -> None:
        self.operator, self.key = operator, key
        self.since: tuple[float, float] | None = None  # (reconciles, writes) when the quiet began

    def seen(self) -> bool:
        text = scrape(self.operator)
        now = (samples(text, "kubeinfer_operator_reconciles_total")[self.key],
               sum(samples(text, "kubeinfer_operator_api_writes_total").values()))
        if self.since is None or now[1] != self.since[1]:
            self.since = now
            return False
        return now[0] >= self.since[0] + 3


def scrape(operator) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as response:
        return response.read().decode()


@pytest.mark.cluster
def test_a_real_operator_serves_its_metrics(cluster, k, operator, make_infd):
    k.apply(make_infd("fraud", replicas=1, tls={"mode": "Mutual", "clients": [{"name": "checkout"}]}))
    k.apply(make_infd("blocked", replicas=1, tls={"mode": "Mutual", "clientCASecretName": "absent"}))
    k.wait_condition("fraud", "True", "Available", timeout=90)
    fraud = (("name", "fraud"), ("namespace", k.namespace))

    def counted():
        text = scrape(operator)
        counts = samples(text, "kubeinfer_operator_reconciles_total")
        blocked = (("name", "blocked"), ("namespace", k.namespace), ("result", "missing_dependency"))
        return text if counts.get((*fraud, ("result", "ok")), 0) >= 1 and counts.get(blocked, 0) >= 1 else None

    text = cluster.wait_for("the reconciles in the operator's metrics", counted, timeout=60)
    not_after = k.get("infd", "fraud")["status"]["certificateNotAfter"]
    expiry = samples(text, "kubeinfer_operator_certificate_expiry_timestamp_seconds")[fraud]
    assert expiry == dt.datetime.fromisoformat(not_after.replace("Z", "+00:00")).timestamp()
    assert samples(text, "kubeinfer_operator_reconcile_duration_seconds_count")[fraud] >= 1
    assert sum(samples(text, "kubeinfer_operator_api_writes_total").values()) > 0
    quiet = QuietResyncs(operator, (*fraud, ("result", "ok")))
    cluster.wait_for("three resyncs in a row that write nothing (the status settled)", quiet.seen, timeout=60)
    cluster.kubectl("delete", "infd", "fraud", "-n", k.namespace)
    cluster.wait_for("a deleted InferenceDeployment's series dropped", lambda: 'name="fraud"' not in scrape(operator),
                     timeout=60)
