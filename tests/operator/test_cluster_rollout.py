"""Canary rollouts against a real control plane (kwok nodes: the pods run nowhere, so every interval is
judged on no requests; the judging itself is on the real node in tests/e2e/test_canary.py).

Covers: with ``strategy: Canary`` a new model keeps the stable Deployment (its pods untouched) and adds
``NAME-REVISION`` at the step's share; with ``minRequests: 0`` the canary passes, is scaled up and
promoted: it becomes the stable side with its own pods (same UIDs, not restarted), the old Deployment is
pruned, and the status and Events say so; ``abort`` rolls a canary back (its Deployment pruned, the
annotation taken away, Degraded=True RolledBack) and ``promote`` skips the steps; an operator restarted
in the middle of a rollout carries on from the status (same step, same canary Deployment).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.cluster

SERVER = "app.kubernetes.io/name=kubeinfer-server"


def _canary_spec(**analysis) -> dict:
    return {"strategy": "Canary", "steps": [{"weight": 50, "pauseSeconds": 0}],
            "analysis": {"intervalSeconds": 5, "minRequests": 0, **analysis}}


def _rollout(k, name: str) -> dict:
    return ((k.get("infd", name) or {}).get("status") or {}).get("rollout") or {}


def _deployments(k, name: str) -> dict[str, dict]:
    found = k.get("deployments", selector=f"app.kubernetes.io/instance={name}")["items"]
    return {d["metadata"]["name"]: d for d in found}


def _pods_of(k, name: str, deployment: str) -> set[str]:
    selector = f"{SERVER},app.kubernetes.io/instance={name},kubeinfer.io/deployment={deployment}"
    return {p["metadata"]["uid"] for p in k.get("pods", selector=selector)["items"]
            if not p["metadata"].get("deletionTimestamp")}


def _wait_phase(cluster, k, name: str, phase: str, timeout: float = 90) -> dict:
    return cluster.wait_for(f"status.rollout.phase {phase} on {name}",
                            lambda: (r := _rollout(k, name)).get("phase") == phase and r, timeout=timeout)


def _reasons(k, name: str) -> list[str]:
    return [e["reason"] for e in k.get("events")["items"]
            if e["involvedObject"].get("name") == name and e["involvedObject"].get("kind") == "InferenceDeployment"]


def _new_model(k, name: str, version: int, **analysis) -> None:
    k.patch("infd", name, {"spec": {"model": {"uri": f"s3://models/fraud/{version}/model.onnx"},
                                    "rollout": _canary_spec(**analysis)}})


def test_a_canary_that_passes_is_promoted_with_its_own_pods(cluster, k, operator, make_infd):
    k.apply(make_infd("fraud", replicas=2, rollout=_canary_spec()))
    k.wait_condition("fraud", "True", "Available", timeout=90)
    first = _wait_phase(cluster, k, "fraud", "Stable")
    stable_pods = _pods_of(k, "fraud", "fraud") or {p["metadata"]["uid"] for p in k.get(
        "pods", selector=f"{SERVER},app.kubernetes.io/instance=fraud")["items"]}

    _new_model(k, "fraud", 4, minRequests=1_000_000)  # never judged a pass: it waits at its step
    progressing = _wait_phase(cluster, k, "fraud", "Progressing")
    revision = progressing["canaryRevision"]
    canary = f"fraud-{revision}"
    assert progressing["stableRevision"] == first["stableRevision"] and progressing["weight"] == 50
    deployments = cluster.wait_for("the canary beside the stable side", lambda: (
        d := _deployments(k, "fraud")).get(canary) and d["fraud"]["spec"]["replicas"] == 1 and d)
    assert deployments[canary]["spec"]["replicas"] == 1
    assert deployments[canary]["spec"]["template"]["metadata"]["labels"]["kubeinfer.io/revision"] == revision
    assert deployments["fraud"]["spec"]["template"]["spec"]["initContainers"][0]["args"][1] == \
        "s3://models/fraud/3/model.onnx", "the stable side keeps its own model"
    canary_pods = cluster.wait_for("the canary's pod", lambda: _pods_of(k, "fraud", canary))
    progressing_condition = k.wait_condition("fraud", "True", "CanaryInProgress", kind="Progressing")
    assert revision in progressing_condition["message"]
    assert _pods_of(k, "fraud", "fraud") <= stable_pods, "no stable pod was replaced"

    k.patch("infd", "fraud", {"spec": {"rollout": _canary_spec(minRequests=0)}})  # now every interval passes
    promoted = _wait_phase(cluster, k, "fraud", "Promoted", timeout=120)
    assert promoted["stableRevision"] == revision and promoted["history"][-1]["outcome"] == "Promoted"
    deployments = cluster.wait_for("the old Deployment pruned", lambda: (
        d := _deployments(k, "fraud")) and "fraud" not in d and d)
    assert set(deployments) == {canary}
    assert deployments[canary]["metadata"]["labels"]["kubeinfer.io/track"] == "stable"
    assert deployments[canary]["spec"]["replicas"] == 2
    assert canary_pods <= _pods_of(k, "fraud", canary), "the canary's pods serve on, not restarted"
    k.wait_condition("fraud", "True", "Available", timeout=60)
    assert {"RolloutStarted", "RolloutStep", "Promoted"} <= set(_reasons(k, "fraud"))


def test_abort_rolls_back_and_promote_skips_the_steps(cluster, k, operator, make_infd):
    k.apply(make_infd("aborted", replicas=2, rollout=_canary_spec(minRequests=1_000_000)))
    _wait_phase(cluster, k, "aborted", "Stable")
    _new_model(k, "aborted", 4, minRequests=1_000_000)
    revision = _wait_phase(cluster, k, "aborted", "Progressing")["canaryRevision"]
    cluster.kubectl("annotate", "infd", "aborted", "-n", k.namespace, "kubeinfer.io/rollout=abort")
    rolled_back = _wait_phase(cluster, k, "aborted", "RolledBack")
    assert rolled_back["canaryRevision"] == revision and "abort" in rolled_back["message"]
    cluster.wait_for("the canary pruned", lambda: set(_deployments(k, "aborted")) == {"aborted"})
    degraded = k.wait_condition("aborted", "True", "RolledBack", kind="Degraded")
    assert revision in degraded["message"]
    annotations = k.get("infd", "aborted")["metadata"].get("annotations") or {}
    assert "kubeinfer.io/rollout" not in annotations, "the command is taken away once acted on"
    assert _deployments(k, "aborted")["aborted"]["spec"]["replicas"] == 2

    _new_model(k, "aborted", 5, minRequests=1_000_000)
    second = _wait_phase(cluster, k, "aborted", "Progressing")["canaryRevision"]
    assert second != revision
    cluster.kubectl("annotate", "infd", "aborted", "-n", k.namespace, "kubeinfer.io/rollout=promote")
    promoted = _wait_phase(cluster, k, "aborted", "Promoted", timeout=120)
    assert promoted["stableRevision"] == second and "promote" in promoted["history"][-1]["reason"]
    assert set(_deployments(k, "aborted")) == {f"aborted-{second}"}


def test_a_restarted_operator_carries_on_from_the_status(cluster, k, start_operator, make_infd):
    first = start_operator("first.log")
    k.apply(make_infd("resumed", replicas=2, rollout=_canary_spec(minRequests=1_000_000)))
    _wait_phase(cluster, k, "resumed", "Stable")
    _new_model(k, "resumed", 4, minRequests=1_000_000)
    before = _wait_phase(cluster, k, "resumed", "Progressing")
    canary = f"resumed-{before['canaryRevision']}"
    uid = cluster.wait_for("the canary Deployment", lambda: (_deployments(k, "resumed").get(canary) or {}).get(
        "metadata", {}).get("uid"))
    first.stop()
    second = start_operator("second.log")
    cluster.wait_for("the second operator's first reconcile of it",
                     lambda: "resumed" in second.log() and "succeeded" in second.log(), timeout=60)
    after = _wait_phase(cluster, k, "resumed", "Progressing")
    assert (after["step"], after["stepStartedAt"], after["canaryRevision"]) == (
        before["step"], before["stepStartedAt"], before["canaryRevision"])
    assert _deployments(k, "resumed")[canary]["metadata"]["uid"] == uid
