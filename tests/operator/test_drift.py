"""Drift detection: when a live child must be applied again, and when not.

Covers: a missing child; an unchanged child with server-added defaults; a
hand-edited field; a deleted field; a changed desired state (hash) including a
field we stopped setting; extra list items (injected sidecars) tolerated;
quantities equal by value; the stamp is deterministic and does not change the
input.
"""

from __future__ import annotations

import copy

from kubeinfer_operator.drift import HASH_ANNOTATION, contains, needs_apply, quantity, stamp

DESIRED = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "fraud", "namespace": "ml", "labels": {"a": "b"}},
    "spec": {"replicas": 2, "template": {"spec": {"containers": [
        {"name": "server", "image": "i:1", "resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}}}]}}},
}


def _live(desired):
    live = copy.deepcopy(desired)
    live["metadata"].update({"uid": "u", "resourceVersion": "9", "generation": 1})
    live["spec"]["strategy"] = {"type": "RollingUpdate"}
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicy"] = "IfNotPresent"
    container["resources"]["requests"] = {"cpu": "500m", "memory": "1Gi"}
    live["status"] = {"replicas": 2}
    return live


def test_missing_child_is_applied():
    assert needs_apply(stamp(DESIRED), None)


def test_unchanged_child_with_defaults_is_left_alone():
    desired = stamp(DESIRED)
    assert not needs_apply(desired, _live(desired))


def test_hand_edits_are_detected():
    desired = stamp(DESIRED)
    edited = _live(desired)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    assert needs_apply(desired, edited)
    removed = _live(desired)
    del removed["metadata"]["labels"]["a"]
    assert needs_apply(desired, removed)


def test_changed_desired_state_is_detected_by_hash():
    old = stamp(DESIRED)
    new = copy.deepcopy(DESIRED)
    del new["spec"]["replicas"]  # e.g. autoscaling switched on: a field we stop setting
    assert needs_apply(stamp(new), _live(old))


def test_extra_list_items_are_tolerated():
    desired = stamp(DESIRED)
    live = _live(desired)
    live["spec"]["template"]["spec"]["containers"].append({"name": "sidecar"})
    assert not needs_apply(desired, live)
    live["spec"]["template"]["spec"]["containers"] = []
    assert needs_apply(desired, live)


def test_stamp_is_deterministic_and_pure():
    before = copy.deepcopy(DESIRED)
    assert stamp(DESIRED) == stamp(copy.deepcopy(DESIRED))
    assert DESIRED == before
    assert len(stamp(DESIRED)["metadata"]["annotations"][HASH_ANNOTATION]) == 16


def test_quantities_compare_by_value():
    assert quantity("500m") == quantity("0.5")
    assert quantity("1Gi") == quantity("1024Mi") == quantity("1073741824")
    assert quantity("1e3") == quantity("1k")
    assert quantity("grpc") is None
    assert contains("2", "2000m") and not contains("2", "3")
    assert not contains(1, True) and contains(8001, 8001)
