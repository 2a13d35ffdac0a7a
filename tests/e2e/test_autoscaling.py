"""End to end: the queue-depth autoscaling loop with pods that really run (issue 6, test 4).

Sustained load from a client-side load-balancing client (round robin over the
headless Service's ready endpoints, re-resolved every second) drives
kubeinfer_queue_depth over target; Prometheus scrapes it, prometheus-adapter serves
it through custom.metrics.k8s.io, the operator's HPA scales the Deployment out, the
runner starts the new pods, EndpointSlices pick them up and they serve traffic
(Prometheus sees their request counters move). After the load drops the HPA scales
back in after the shortened window; requests in flight meanwhile all succeed.
"""

from __future__ import annotations

import time

import pytest

from e2e.test_serving import apply, condition, infd
from e2ekit.clients import Load, get_json, served_by, write_secret

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]



def hpa(cluster, namespace: str, name: str) -> dict:
    return get_json(cluster, "hpa", name, "-n", namespace).get("status", {})


def test_queue_depth_scales_out_serves_and_scales_in(cluster, stack, installed, tmp_path):
    ns, name = installed.apps, "scaler"
    apply(cluster, infd(name, ns, stack.store.url("mlp.onnx"),
                        autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetQueueDepth": 4,
                                     "scaleDownStabilizationSeconds": 5},
                        tls={"mode": "Mutual", "clients": [{"name": "load"}]}))
    cluster.wait_for("InferenceDeployment Ready", lambda: condition(cluster, ns, name).get("status") == "True",
                     timeout=120)
    certs = write_secret(cluster, ns, f"{name}-client-load", tmp_path / "load")

    load = Load(cluster, ns, name, certs, workers=16, rows=32).start()
    try:
        cluster.wait_for("the HPA to scale out", lambda: hpa(cluster, ns, name).get("desiredReplicas", 0) >= 2,
                         timeout=90)
        cluster.wait_for("two or more pods serving traffic", lambda: len(
            [p for p, n in served_by(stack.prometheus, ns).items() if n > 0 and p.startswith(name)]) >= 2,
            timeout=120)
    finally:
        load.stop()
    assert load.ok > 0 and not load.failures, load.failures[:5]

    trickle = Load(cluster, ns, name, certs, workers=2, rows=1).start()
    try:
        cluster.wait_for("the HPA to scale back in", lambda: (lambda s: s.get("currentReplicas") == 1 and
                         s.get("desiredReplicas") == 1)(hpa(cluster, ns, name)), timeout=150)
        cluster.wait_for("the removed pods gone", lambda: len(get_json(
            cluster, "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={name}")["items"]) == 1, timeout=90)
        time.sleep(2)
    finally:
        trickle.stop()
    assert trickle.ok > 0 and not trickle.failures, trickle.failures[:5]
