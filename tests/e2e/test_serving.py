"""End to end: the chart's operator pod reconciles an InferenceDeployment whose pods really run.

Covers (issue 6, tests 1, 2 and 5):
  * helm install -> the operator pod runs on the real node with its ServiceAccount
    token (in-cluster config, chart RBAC) -> an InferenceDeployment (model from the
    model store, mutual TLS, one allowed client) turns Ready;
  * tritonclient with the client Secret's certificate, dialling a pod IP from the
    EndpointSlices with the Service DNS name as TLS server name, gets predictions
    equal to in-process onnxruntime;
  * no client certificate, or one from another CA: refused; a client the CA signed
    but not in allowedClients: PERMISSION_DENIED;
  * the operator's own metrics, scraped by the stack's Prometheus from the chart's annotations;
  * OIP v2 REST through the Service's ``http`` port (its ClusterIP, through
    kube-proxy): the client's certificate gets the same predictions as gRPC,
    no certificate gets 401, the health endpoint answers without one;
  * a model URI that does not exist: the init container really fails and the
    InferenceDeployment says ModelFetchFailed with the URI.
"""

from __future__ import annotations

import json
import time

import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.utils import InferenceServerException

from devkit.x509 import client_cert, make_ca
from e2ekit.clients import (
    NODE_PLACEMENT,
    batch,
    client,
    get_json,
    infer,
    query,
    ready_addresses,
    rest_call,
    write_secret,
)

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


def infd(name: str, namespace: str, uri: str, **spec) -> dict:
    return {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"uri": uri},
                     "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                     **NODE_PLACEMENT, **spec}}


def apply(cluster, body: dict) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def condition(cluster, namespace: str, name: str, kind: str = "Ready") -> dict:
    obj = get_json(cluster, "infd", name, "-n", namespace)
    for cond in obj.get("status", {}).get("conditions", []):
        if cond["type"] == kind:
            return cond
    return {}


MTLS = {"tls": {"mode": "Mutual", "clients": [{"name": "checkout"}, {"name": "intruder"}],
                "allowedClients": ["checkout"]}}


@pytest.fixture(scope="module")
def served(cluster, stack, installed):
    name = "fraud"
    apply(cluster, infd(name, installed.apps, stack.store.url("mlp.onnx"), replicas=1, **MTLS))
    cluster.wait_for("InferenceDeployment Ready", lambda: condition(
        cluster, installed.apps, name).get("status") == "True", timeout=120)
    return name


def test_operator_pod_runs_in_cluster(cluster, installed):
    from e2e.conftest import operator_pod
    pod = operator_pod(cluster, installed)
    assert pod["status"]["podIP"].startswith("10.244.")
    assert pod["status"]["containerStatuses"][0]["state"].get("running")
    assert pod["spec"]["serviceAccountName"]


def test_predictions_over_mtls_match_onnxruntime(cluster, stack, installed, served, tmp_path):
    ns = installed.apps
    addresses = ready_addresses(cluster, ns, served)
    assert addresses, "no ready endpoint"
    certs = write_secret(cluster, ns, f"{served}-client-checkout", tmp_path / "checkout")
    x = batch(8, seed=3)
    got = infer(client(addresses[:1], certs, f"{served}.{ns}.svc"), served, x)
    session = ort.InferenceSession(str(stack.store_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])
    want = session.run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_rest_through_the_service_port(cluster, stack, installed, served, tmp_path):
    ns = installed.apps
    service = get_json(cluster, "service", served, "-n", ns)["spec"]
    port = next(p["port"] for p in service["ports"] if p["name"] == "http")
    assert port == 8000
    certs = write_secret(cluster, ns, f"{served}-client-checkout", tmp_path / "checkout")
    x = batch(2, seed=5)
    body = {"id": "e2e-rest-1", "inputs": [{"name": "input", "shape": [2, 256], "datatype": "FP32",
                                             "data": x.ravel().tolist()}]}
    name, ip = f"{served}.{ns}.svc", service["clusterIP"]
    status, answer = rest_call(ip, port, name, certs, "POST", f"/v2/models/{served}/infer", body)
    assert status == 200 and answer["id"] == "e2e-rest-1", answer
    session = ort.InferenceSession(str(stack.store_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])
    got = np.asarray(answer["outputs"][0]["data"], np.float32).reshape(answer["outputs"][0]["shape"])
    np.testing.assert_allclose(got, session.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)
    assert rest_call(ip, port, name, certs, "GET", f"/v2/models/{served}", present_certificate=False)[0] == 401
    assert rest_call(ip, port, name, certs, "GET", "/v2/health/ready", present_certificate=False) == \
        (200, {"ready": True})


def test_the_operators_own_metrics_are_scraped(cluster, stack, installed, served):
    """The chart's operator pod carries the scrape annotations; the e2e stack's Prometheus finds it."""
    promql = f'kubeinfer_operator_reconciles_total{{name="{served}",result="ok"}}'
    found = cluster.wait_for("the operator's reconciles in Prometheus",
                             lambda: query(stack.prometheus, promql), timeout=90)
    assert float(found[0]["value"][1]) >= 1
    expiry = query(stack.prometheus, f'kubeinfer_operator_certificate_expiry_timestamp_seconds{{name="{served}"}}')
    assert expiry and float(expiry[0]["value"][1]) > time.time()


def test_refuses_without_certificate_or_from_another_ca(cluster, installed, served, tmp_path):
    ns = installed.apps
    address = ready_addresses(cluster, ns, served)[:1]
    certs = write_secret(cluster, ns, f"{served}-client-checkout", tmp_path / "checkout")
    server = f"{served}.{ns}.svc"
    with pytest.raises(InferenceServerException):
        infer(client(address, None, server, ca=certs / "ca.crt"), served, batch(1), timeout=10)
    other = tmp_path / "other"
    other.mkdir()
    stranger = client_cert(make_ca("someone else's CA"), "checkout")
    (other / "tls.crt").write_bytes(stranger.cert_pem)
    (other / "tls.key").write_bytes(stranger.key_pem)
    (other / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())  # trusts the server
    with pytest.raises(InferenceServerException):
        infer(client(address, other, server), served, batch(1), timeout=10)


def test_client_not_allowed_is_permission_denied(cluster, installed, served, tmp_path):
    ns = installed.apps
    certs = write_secret(cluster, ns, f"{served}-client-intruder", tmp_path / "intruder")
    c = client(ready_addresses(cluster, ns, served)[:1], certs, f"{served}.{ns}.svc")
    with pytest.raises(InferenceServerException) as err:
        infer(c, served, batch(1), timeout=10)
    assert "PERMISSION_DENIED" in str(err.value.status())


def test_missing_model_is_model_fetch_failed(cluster, stack, installed):
    uri = stack.store.url("no-such-model.onnx")
    apply(cluster, infd("missing", installed.apps, uri, replicas=1))
    cond = cluster.wait_for("Ready=False ModelFetchFailed", lambda: (lambda c: c if c.get(
        "reason") == "ModelFetchFailed" else None)(condition(cluster, installed.apps, "missing")),
        timeout=90)
    assert cond["status"] == "False"
    assert uri in cond["message"]
    pods = get_json(cluster, "pods", "-n", installed.apps, "-l", "app.kubernetes.io/instance=missing")
    fetch = pods["items"][0]["status"]["initContainerStatuses"][0]
    assert fetch["restartCount"] >= 1 or fetch["state"].get("terminated", {}).get("exitCode")
