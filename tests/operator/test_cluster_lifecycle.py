"""The operator's lifecycle against a real control plane: validation, restarts, quiet resyncs.

Covers: invalid specs are rejected by the API server with the CRD's CEL
message (replicas with autoscaling, minReplicas > maxReplicas, GPU product
without a count, Mutual TLS without clients, a bad pvc:// URI); schema defaults
are applied by the API server; the operator killed (SIGKILL) mid-reconcile and
restarted converges with exactly one of each child; a resync that finds nothing
to do makes zero write calls (no resourceVersion moves, no writes logged); no
finalizer is put on an InferenceDeployment, and the operator-wide resync loop
(not a kopf timer) puts a hand-edited status back, which no watch event would.
"""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize(("spec", "message"), [
    ({"replicas": 2, "autoscaling": {"maxReplicas": 3}}, "spec.replicas and spec.autoscaling must not both be set"),
    ({"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}, "autoscaling.minReplicas must be at most"),
    ({"gpu": {"product": "NVIDIA-A10"}}, "gpu.product needs gpu.count"),
    ({"tls": {"mode": "Mutual"}}, "tls.mode Mutual needs at least one entry in tls.clients"),
    ({"model": {"uri": "pvc://claim"}}, "a pvc:// model.uri must look like pvc://CLAIM/path"),
    ({"batching": {"maxBatchSize": 4, "preferredBatchSizes": [8]}}, "preferredBatchSizes entry must be at most"),
])
def test_invalid_specs_are_rejected_with_the_cel_message(k, crd, make_infd, spec, message):
    result = k.apply(make_infd("bad", **spec), check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert k.get("infd", "bad") is None


def test_schema_defaults_are_applied(k, crd, make_infd):
    k.apply(make_infd("defaults", autoscaling={"maxReplicas": 3}))
    spec = k.get("infd", "defaults")["spec"]
    assert spec["autoscaling"] == {"minReplicas": 1, "maxReplicas": 3, "targetQueueDepth": 8,
                                   "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 300,
                                   "engine": "HPA"}
    assert spec["tls"] == {"mode": "Server"}
    assert spec["batching"]["maxBatchSize"] == 32
    assert spec["runtime"]["executionProviders"] == ["CPU"]


def test_killed_mid_reconcile_converges_without_duplicates(cluster, k, start_operator, make_infd):
    names = [f"r{i}" for i in range(6)]
    for name in names:
        k.apply(make_infd(name, replicas=2, tls={"mode": "Mutual", "clients": [{"name": "c"}]}))
    first = start_operator("first.log")
    cluster.wait_for("the first operator to create something",
                     lambda: "Created" in first.log(), timeout=60, interval=0.05)
    first.stop(signal.SIGKILL)
    second = start_operator("second.log")
    try:
        for name in names:
            k.wait_condition(name, "True", "Available", timeout=120)
    finally:
        second.stop()
    deployments = [d["metadata"]["name"] for d in k.get("deployments")["items"]]
    services = [s["metadata"]["name"] for s in k.get("services")["items"]]
    assert sorted(deployments) == sorted(names)
    assert sorted(services) == sorted(names + [f"{n}-headless" for n in names])
    managed = k.get("secrets", selector="app.kubernetes.io/managed-by=kubeinfer")["items"]
    secrets = [s["metadata"]["name"] for s in managed]
    assert sorted(secrets) == sorted(f"{n}-{s}" for n in names for s in ("ca", "tls", "client-c"))
    for name in names:
        assert len(k.get("replicasets", selector=f"app.kubernetes.io/instance={name}")["items"]) == 1


WRITE_LOG = re.compile(r"(Created|Updated|Deleted) ")


def test_noop_resync_writes_nothing(cluster, k, operator, make_infd):
    k.apply(make_infd("quiet", replicas=2, tls={"mode": "Mutual", "clients": [{"name": "c"}]}))
    k.apply(make_infd("quiet-hpa", autoscaling={"minReplicas": 2, "maxReplicas": 4}))
    k.wait_condition("quiet", "True", "Available", timeout=90)
    k.wait_condition("quiet-hpa", "True", "Available", timeout=90)

    def versions():
        """What only a write of ours would move: whole objects we alone write, else spec and our fields."""
        objects = k.get("infd,deployments,services,secrets,configmaps,hpa,pdb")["items"]
        seen = {}
        for o in objects:
            meta = o["metadata"]
            if o["kind"] != "InferenceDeployment" and meta.get("labels", {}).get(
                    "app.kubernetes.io/managed-by") != "kubeinfer":
                continue
            if o["kind"] in ("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
                ours = [m.get("time") for m in meta.get("managedFields") or [] if m["manager"] == "kubeinfer"]
                seen[(o["kind"], meta["name"])] = (meta.get("generation"), ours)
            else:
                seen[(o["kind"], meta["name"])] = meta["resourceVersion"]
        return seen

    # Settled: two resync periods in a row without any version moving.
    def settled():
        before = versions()
        time.sleep(2 * operator.resync_seconds + 1)
        return versions() == before and before

    settled_versions = cluster.wait_for("a settled state", settled, timeout=90, interval=0)
    log_before = len(operator.log())
    time.sleep(3 * operator.resync_seconds + 1)
    assert versions() == settled_versions
    quiet_log = operator.log()[log_before:]
    assert not WRITE_LOG.search(quiet_log), quiet_log
    assert "Updated status" not in quiet_log


def test_no_finalizer_and_the_resync_loop_repairs_status(cluster, k, operator, make_infd):
    k.apply(make_infd("loop", replicas=1))
    k.wait_condition("loop", "True", "Available", timeout=90)
    assert not k.get("infd", "loop")["metadata"].get("finalizers")

    def quiet():
        before = k.get("infd", "loop")["metadata"]["resourceVersion"]
        time.sleep(2 * operator.resync_seconds + 1)
        return k.get("infd", "loop")["metadata"]["resourceVersion"] == before

    cluster.wait_for("the InferenceDeployment to settle", quiet, timeout=90, interval=0)
    # kopf ignores status changes and nothing else moves now: only the resync loop can put it back.
    cluster.kubectl("patch", "infd", "loop", "-n", k.namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"readyReplicas": 0}}))
    cluster.wait_for("the resync loop to restore readyReplicas",
                     lambda: k.get("infd", "loop")["status"].get("readyReplicas") == 1,
                     timeout=10 * operator.resync_seconds)
