"""The platform team's pod settings against the real API server and the operator (kwok nodes).

Covers: an InferenceDeployment with imagePullSecrets, a ServiceAccount, extra env (a value and
a Secret reference), pod labels and annotations, a PriorityClass, topology spread and the
server flags workers, maxMessageBytes and accessLogSampleRate turns Ready, and its pods carry
every one of them (the kwok pods are real API objects, admitted by the API server); the CRD's
CEL rules refuse what cannot work, with their message: a KUBEINFER_ variable, a label that
would change the pods' selector, value and valueFrom together.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.cluster

PLATFORM = {
    "imagePullSecrets": [{"name": "regcred"}],
    "serviceAccountName": "model-reader",
    "env": [{"name": "AWS_ENDPOINT_URL", "value": "http://store.example:8333"},
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "store", "key": "secret"}}}],
    "podLabels": {"team": "risk"},
    "podAnnotations": {"example.com/owner": "risk"},
    "priorityClassName": "kubeinfer-test-inference",
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                   "whenUnsatisfiable": "ScheduleAnyway"}],
    "runtime": {"workers": 2, "maxMessageBytes": 1048576, "accessLogSampleRate": 0.5},
}


@pytest.fixture
def platform_objects(cluster, k):
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": "kubeinfer-test-inference"}, "value": 1000}))
    k.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "model-reader"}})
    k.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "store"}, "stringData": {"secret": "s3cr3t"}})
    yield
    cluster.kubectl("delete", "priorityclass", "kubeinfer-test-inference", "--ignore-not-found", check=False)


def test_pods_carry_the_platform_settings(k, operator, make_infd, platform_objects):
    k.apply(make_infd("fraud", replicas=1, **PLATFORM))
    k.wait_condition("fraud", "True", "Available", timeout=90)
    (pod,) = k.get("pods", selector="app.kubernetes.io/instance=fraud")["items"]
    spec = pod["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["serviceAccountName"] == "model-reader"
    assert spec["priorityClassName"] == "kubeinfer-test-inference" and spec["priority"] == 1000
    assert spec["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "fraud"
    assert pod["metadata"]["labels"]["team"] == "risk"
    assert pod["metadata"]["annotations"]["example.com/owner"] == "risk"
    server = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert server["KUBEINFER_WORKERS"]["value"] == "2" and server["KUBEINFER_MAX_MESSAGE_BYTES"]["value"] == "1048576"
    assert server["KUBEINFER_ACCESS_LOG_SAMPLE_RATE"]["value"] == "0.5"
    assert server["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "store", "key": "secret"}
    fetch = {e["name"] for e in spec["initContainers"][0]["env"]}
    assert fetch == {"AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY"}


@pytest.mark.parametrize("extra,message", [
    ({"env": [{"name": "KUBEINFER_MAX_BATCH_SIZE", "value": "1"}]}, "env names must not start with KUBEINFER_"),
    ({"podLabels": {"app.kubernetes.io/instance": "other"}}, "podLabels must not set app.kubernetes.io/name"),
    ({"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
     "an env entry must have value or valueFrom, not both"),
])
def test_the_api_server_refuses_what_cannot_work(k, crd, make_infd, extra, message):
    done = k.apply(make_infd("refused", **extra), check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr
