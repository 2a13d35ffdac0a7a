"""The one table of kinds, and the builders held to it (pure).

Covers: group, version and REST path prefix derived from apiVersion (core group
and named groups); the InferenceDeployment's entry matches the CRD's names;
every child the builders make is of a kind in ``kinds.CHILDREN`` (so it is
observed and pruned), in the table's apply order.
"""

from __future__ import annotations

import datetime as dt

from kubeinfer_operator import kinds, naming
from kubeinfer_operator.builders import desired_children
from kubeinfer_operator.certificate_plan import plan_certificates

OWNER = {"apiVersion": naming.API_VERSION, "kind": naming.KIND, "name": "fraud", "uid": "u",
         "controller": True, "blockOwnerDeletion": True}
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_derived_parts():
    assert (kinds.SECRET.group, kinds.SECRET.version, kinds.SECRET.path_prefix) == ("", "v1", "/api/v1")
    assert (kinds.HPA.group, kinds.HPA.version, kinds.HPA.path_prefix) == (
        "autoscaling", "v2", "/apis/autoscaling/v2")
    parent = kinds.INFERENCE_DEPLOYMENT
    assert (parent.group, parent.version, parent.kind, parent.plural) == (
        "kubeinfer.io", "v1alpha1", "InferenceDeployment", "inferencedeployments")
    assert parent.path_prefix == "/apis/kubeinfer.io/v1alpha1"


def test_every_child_is_in_the_table_in_apply_order(make_spec, settings):
    spec = make_spec(autoscaling={"maxReplicas": 4}, tls={"mode": "Mutual", "clients": [{"name": "checkout"}]})
    children = desired_children(spec, plan_certificates(spec, {}, NOW, settings), OWNER)
    order = [(k.api_version, k.kind) for k in kinds.CHILDREN]
    built = [(c["apiVersion"], c["kind"]) for c in children]
    assert set(built) == set(order)
    assert built == sorted(built, key=order.index)
