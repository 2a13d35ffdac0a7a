"""The operator against a real control plane (kwok nodes): what it builds and how it follows changes.

Covers: create -> every child exists with the right fields, applied by field
manager ``kubeinfer`` with an owner reference, Events recorded, and the
InferenceDeployment turns Ready, in a namespace enforcing the restricted Pod
Security Standard; updating the model URI rolls the Deployment
out and the status follows the new generation; autoscaling on (HPA, no
spec.replicas owned by the operator, handed over without a dip to 1) and off (HPA deleted, replicas back); a
GPU product no node has -> Ready=False WaitingForGPU naming the product, and a
product a node has -> scheduled with the GPU toleration; a deleted Service is
recreated and a hand-edited Deployment is put back; deleting the
InferenceDeployment removes every child (garbage collection); the issued
certificates verify against the CA with ``openssl verify``, with the right
SANs, and a client certificate from another InferenceDeployment's CA does not.
"""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
from cryptography import x509

pytestmark = pytest.mark.cluster

CHILD_KINDS = "deployments,services,secrets,configmaps,hpa,pdb"


def _children(k, name):
    found = k.get(CHILD_KINDS, selector=f"app.kubernetes.io/instance={name},app.kubernetes.io/managed-by=kubeinfer")
    return {(o["kind"], o["metadata"]["name"]): o for o in found["items"]}


def _applied_by_kubeinfer(obj):
    return any(m.get("manager") == "kubeinfer" and m.get("operation") == "Apply"
               for m in obj["metadata"].get("managedFields") or [])


def test_create_builds_every_child_and_turns_ready(cluster, k, operator, make_infd):
    # Pods must pass the restricted Pod Security Standard, enforced by admission here.
    cluster.kubectl("label", "namespace", k.namespace, "pod-security.kubernetes.io/enforce=restricted")
    k.apply(make_infd("fraud", replicas=2, tls={"mode": "Mutual", "clients": [{"name": "checkout"}]}))
    k.wait_condition("fraud", "True", "Available", timeout=90)
    parent = k.get("infd", "fraud")
    children = _children(k, "fraud")
    assert set(children) == {
        ("Deployment", "fraud"), ("Service", "fraud"), ("Service", "fraud-headless"),
        ("Secret", "fraud-ca"), ("Secret", "fraud-tls"), ("Secret", "fraud-client-checkout"),
        ("ConfigMap", "fraud-ca-bundle"), ("PodDisruptionBudget", "fraud"),
    }
    for obj in children.values():
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == ("InferenceDeployment", parent["metadata"]["uid"], True)
        assert _applied_by_kubeinfer(obj), obj["metadata"]["name"]

    pod = children[("Deployment", "fraud")]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["args"][:2] == ["fetch", "s3://models/fraud/3/model.onnx"]
    server = pod["containers"][0]
    ports = [(p["name"], p["containerPort"]) for p in server["ports"]]
    assert ports == [("grpc", 8001), ("http", 8000), ("metrics", 8002)]
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert children[("Deployment", "fraud")]["spec"]["replicas"] == 2
    service = children[("Service", "fraud")]["spec"]
    assert service["ports"][0]["appProtocol"] == "grpc" and service["ports"][0]["port"] == 8001
    assert children[("Service", "fraud-headless")]["spec"]["clusterIP"] == "None"

    status = parent["status"]
    assert status["endpoint"] == f"fraud.{k.namespace}.svc:8001"
    assert (status["replicas"], status["readyReplicas"], status["readiness"]) == (2, 2, "2/2")
    assert status["observedGeneration"] == parent["metadata"]["generation"]
    assert "certificateNotAfter" in status
    assert "kopf" not in json.dumps(status)
    events = k.get("events")["items"]
    reasons = {e["reason"] for e in events if e["involvedObject"].get("name") == "fraud"
               and e["involvedObject"].get("kind") == "InferenceDeployment"}
    assert {"Created", "CertificateIssued", "Available"} <= reasons


def test_model_uri_update_rolls_out(k, operator, make_infd):
    k.apply(make_infd("roll", replicas=1, tls={"mode": "Disabled"}))
    k.wait_condition("roll", "True", "Available", timeout=90)
    before = k.get("deployment", "roll")
    k.patch("infd", "roll", {"spec": {"model": {"uri": "s3://models/fraud/4/model.onnx"}}})
    generation = k.get("infd", "roll")["metadata"]["generation"]
    k.wait_condition("roll", "False", "Available", kind="Progressing", timeout=90, generation=generation)
    k.wait_condition("roll", "True", "Available", timeout=30, generation=generation)
    after = k.get("deployment", "roll")
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert after["spec"]["template"]["spec"]["initContainers"][0]["args"][1] == "s3://models/fraud/4/model.onnx"
    assert after["status"]["updatedReplicas"] == 1


def test_autoscaling_on_and_off(cluster, k, operator, make_infd):
    k.apply(make_infd("scale", replicas=2, tls={"mode": "Disabled"}))
    k.wait_condition("scale", "True", "Available", timeout=90)
    k.patch("infd", "scale", {"spec": {"replicas": None, "autoscaling": {
        "minReplicas": 2, "maxReplicas": 5, "targetQueueDepth": 4, "scaleDownStabilizationSeconds": 60}}})
    hpa = cluster.wait_for("the HPA", lambda: k.get("hpa", "scale"), timeout=60)
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "kubeinfer_queue_depth"
    assert hpa["spec"]["metrics"][0]["pods"]["target"] == {"type": "AverageValue", "averageValue": "4"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 60

    def operator_stopped_owning_replicas():
        dep = k.get("deployment", "scale")
        ours = [m for m in dep["metadata"]["managedFields"] if m["manager"] == "kubeinfer"]
        return ours and all("f:replicas" not in json.dumps(m.get("fieldsV1", {})) for m in ours)

    cluster.wait_for("the operator to give up spec.replicas", operator_stopped_owning_replicas, timeout=30)
    managers = {m["manager"]: json.dumps(m.get("fieldsV1", {}))
                for m in k.get("deployment", "scale")["metadata"]["managedFields"]}
    assert "f:replicas" in managers["kubeinfer-handover-to-hpa"]  # no fall back to 1 replica on the way
    assert k.get("infd", "scale")["status"]["autoscaling"] == "2-5 @ queue 4"

    k.patch("infd", "scale", {"spec": {"autoscaling": None, "replicas": 3}})
    cluster.wait_for("the HPA to be deleted", lambda: k.get("hpa", "scale") is None, timeout=60)
    cluster.wait_for("3 replicas", lambda: k.get("deployment", "scale")["spec"]["replicas"] == 3, timeout=30)
    k.wait_condition("scale", "True", "Available", timeout=60)


def test_gpu_product_no_node_has_waits_for_gpu(k, operator, make_infd):
    k.apply(make_infd("b200", gpu={"count": 1, "product": "NVIDIA-B200"}, tls={"mode": "Disabled"}))
    ready = k.wait_condition("b200", "False", "WaitingForGPU", timeout=90)
    assert "NVIDIA-B200" in ready["message"]
    assert k.condition("b200", "Degraded")["reason"] == "WaitingForGPU"


def test_gpu_product_a_node_has_is_scheduled(k, operator, make_infd):
    k.apply(make_infd("a10", gpu={"count": 1, "product": "NVIDIA-A10"}, tls={"mode": "Disabled"}))
    k.wait_condition("a10", "True", "Available", timeout=90)
    (pod,) = k.get("pods", selector="app.kubernetes.io/instance=a10")["items"]
    assert pod["spec"]["nodeName"] == "kwok-gpu-a10-0"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]


def test_deleted_and_edited_children_are_put_back(cluster, k, operator, make_infd):
    k.apply(make_infd("drift", tls={"mode": "Disabled"}))
    k.wait_condition("drift", "True", "Available", timeout=90)
    old = k.get("service", "drift")["metadata"]["uid"]
    cluster.kubectl("delete", "service", "drift", "-n", k.namespace)
    back = cluster.wait_for("the Service to come back",
                            lambda: (s := k.get("service", "drift")) and s["metadata"]["uid"] != old and s, timeout=30)
    assert back["spec"]["ports"][0]["port"] == 8001
    cluster.kubectl("set", "image", "deployment/drift", "server=evil.invalid/x:1", "-n", k.namespace)
    cluster.wait_for("the image to be put back", lambda: k.get("deployment", "drift")["spec"]["template"]["spec"]
                     ["containers"][0]["image"] == "example.invalid/kubeinfer-server:test", timeout=30)


def test_deleting_removes_everything(cluster, k, operator, make_infd):
    k.apply(make_infd("gone", replicas=2))
    k.wait_condition("gone", "True", "Available", timeout=90)
    assert len(_children(k, "gone")) >= 6
    cluster.kubectl("delete", "infd", "gone", "-n", k.namespace, "--wait=true", timeout=60)
    cluster.wait_for("children to be garbage-collected", lambda: not _children(k, "gone"), timeout=60)


def _secret_file(k, name, key, path):
    data = k.get("secret", name)["data"][key]
    path.write_bytes(base64.b64decode(data))
    return path


def test_issued_certificates_verify(k, operator, make_infd, tmp_path):
    k.apply(make_infd("tls", tls={"mode": "Mutual", "clients": [{"name": "checkout"}]}))
    k.apply(make_infd("other", tls={"mode": "Mutual", "clients": [{"name": "checkout"}]}))
    k.wait_condition("tls", "True", "Available", timeout=90)
    k.wait_condition("other", "True", "Available", timeout=90)
    ca = _secret_file(k, "tls-client-checkout", "ca.crt", tmp_path / "ca.crt")
    server = _secret_file(k, "tls-tls", "tls.crt", tmp_path / "server.crt")
    client = _secret_file(k, "tls-client-checkout", "tls.crt", tmp_path / "client.crt")
    foreign = _secret_file(k, "other-client-checkout", "tls.crt", tmp_path / "foreign.crt")

    def verify(cert, purpose):
        return subprocess.run(["openssl", "verify", "-CAfile", str(ca), "-purpose", purpose, str(cert)],
                              capture_output=True, text=True)

    assert verify(server, "sslserver").returncode == 0
    assert verify(client, "sslclient").returncode == 0
    assert verify(foreign, "sslclient").returncode != 0
    cert = x509.load_pem_x509_certificate(server.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    ns = k.namespace
    assert sorted(sans) == sorted([
        "tls", f"tls.{ns}", f"tls.{ns}.svc", f"tls.{ns}.svc.cluster.local",
        "tls-headless", f"tls-headless.{ns}", f"tls-headless.{ns}.svc", f"tls-headless.{ns}.svc.cluster.local"])
    bundle = k.get("configmap", "tls-ca-bundle")["data"]["ca.crt"]
    assert bundle.encode() == ca.read_bytes()
