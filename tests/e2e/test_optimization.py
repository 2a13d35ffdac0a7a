"""End to end: spec.optimization, run by the server pods' optimize init step on the real node.

The trained classifier (``devkit.classifier``: an MLP whose top-1 on its validation rows
is 0.98) and those rows are objects in the test bed's S3 server (``devkit.s3server``, on
the node's bridge address, where pods reach it), read with the credentials Secret of
``model.credentials`` by both init steps. Covers (issue 14):
- ``optimization: {method: Dynamic}``: the pod turns Ready serving the quantized model:
  status.optimization holds the decision (NotMeasured: no validation data) and both sides'
  figures, its servedSha256 is the quantized file's, which ModelMetadata's parameters and
  ``kubeinfer_model_info`` name too, with the method; the condition Optimized is True; the
  quantized model's predictions agree with the original's;
- an impossible budget (validation rows with labels, ``minSpeedup: 100``): the candidate
  is Rejected, the pod serves the original (its sha256, method none) and says why in the
  Optimized condition (ServingOriginal), with the validation rows really measured (top-1);
- the decision is announced as an Event on the InferenceDeployment.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest

from devkit.classifier import Classifier, make_classifier
from devkit.direct import DIRECT
from devkit.s3server import S3Server
from e2e.test_serving import apply, condition, infd
from e2ekit.clients import get_json, ready_addresses
from localcluster.nodeconfig import NODE_IP

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

BUCKET = "optimize"
MODEL_URI = f"s3://{BUCKET}/models/classifier.onnx"
VALIDATION_URI = f"s3://{BUCKET}/data/validation.parquet"
SECRET = "optimize-store-keys"
CRD = Path(__file__).resolve().parents[2] / "crds" / "kubeinfer.io_inferencedeployments.yaml"
# The fetch, the optimize step (about 5 s of it timing, plus imports; slower on a busy node), the load.
READY_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Classifier:
    return make_classifier(tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="module")
def store(classifier):
    with S3Server(host=NODE_IP) as server:
        server.create_bucket(BUCKET)
        server.put(BUCKET, "models/classifier.onnx", classifier.model.read_bytes())
        server.put(BUCKET, "data/validation.parquet", classifier.validation.read_bytes())
        yield server


@pytest.fixture(scope="module")
def current_crd(cluster, installed) -> None:
    """The repository's CRD, whatever the cluster held: helm install skips a CRD that exists, and a
    reused cluster's older one would prune spec.optimization from what the tests apply."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/inferencedeployments.kubeinfer.io")


@pytest.fixture(scope="module")
def keys(cluster, installed, store) -> str:
    literals = [f"--from-literal={k}={v}" for k, v in store.env().items()]
    cluster.kubectl("delete", "secret", SECRET, "-n", installed.apps, "--ignore-not-found")
    cluster.kubectl("create", "secret", "generic", SECRET, "-n", installed.apps, *literals)
    return SECRET


def optimized(name: str, namespace: str, optimization: dict) -> dict:
    """An InferenceDeployment of the classifier from the private bucket, plaintext (REST to the pod IP)."""
    body = infd(name, namespace, MODEL_URI, replicas=1, tls={"mode": "Disabled"}, optimization=optimization)
    body["spec"]["model"]["credentials"] = {"secretRef": {"name": SECRET}}
    # The optimize step and quantizers import onnx next to ONNX Runtime: more than the default 256Mi request.
    body["spec"]["resources"] = {"requests": {"cpu": "250m", "memory": "512Mi"}}
    return body


def ready(cluster, namespace: str, name: str) -> dict:
    """The InferenceDeployment once Ready=True with status.optimization set (both happen after the init steps)."""
    def check():
        obj = get_json(cluster, "infd", name, "-n", namespace)
        ok = condition(cluster, namespace, name).get("status") == "True"
        return obj if ok and (obj.get("status") or {}).get("optimization") else None

    return cluster.wait_for(f"{name} Ready with status.optimization", check, timeout=READY_TIMEOUT_S)


def served(cluster, namespace: str, name: str) -> tuple[str, dict, str]:
    """The ready pod's address, its REST ModelMetadata, and its /metrics text."""
    (address,) = ready_addresses(cluster, namespace, name)
    with DIRECT.open(f"http://{address}:8000/v2/models/{name}", timeout=15) as response:
        metadata = json.load(response)
    with DIRECT.open(f"http://{address}:8002/metrics", timeout=15) as response:
        metrics = response.read().decode()
    return address, metadata, metrics


def top1(address: str, name: str, x: np.ndarray) -> np.ndarray:
    """The served model's top-1 class of each row, over REST (JSON)."""
    body = {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    request = urllib.request.Request(f"http://{address}:8000/v2/models/{name}/infer", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with DIRECT.open(request, timeout=30) as response:
        output = json.load(response)["outputs"][0]
    return np.asarray(output["data"], np.float32).reshape(output["shape"]).argmax(axis=1)


def validation_rows(classifier: Classifier, rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(classifier.validation).slice(0, rows)
    x = np.stack(table.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    return x, table.column("label").to_numpy()


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def events(cluster, namespace: str, name: str) -> list[dict]:
    return get_json(cluster, "events", "-n", namespace, "--field-selector",
                    f"involvedObject.kind=InferenceDeployment,involvedObject.name={name}")["items"]


@pytest.fixture(scope="module")
def deployed(cluster, installed, keys, current_crd):
    """Both InferenceDeployments applied at once (their pods' init steps run side by side)."""
    ns = installed.apps
    apply(cluster, optimized("quantized", ns, {"method": "Dynamic"}))
    apply(cluster, optimized("impossible", ns, {
        "method": "Dynamic", "validation": {"uri": VALIDATION_URI, "labelColumn": "label"},
        "maxDegradation": 0, "minSpeedup": 100}))
    yield {name: ready(cluster, ns, name) for name in ("quantized", "impossible")}
    # The node is shared by the whole e2e session: free its CPU and memory for the next tests.
    cluster.kubectl("delete", "infd", "quantized", "impossible", "-n", ns, "--wait=true", "--timeout=60s",
                    check=False, timeout=90)


def test_dynamic_quantization_is_served_and_said(cluster, installed, classifier, deployed):
    ns, obj = installed.apps, deployed["quantized"]
    status = obj["status"]["optimization"]
    assert (status["decision"], status["method"], status["candidate"]["method"]) == \
        ("NotMeasured", "Dynamic", "Dynamic"), status
    assert status["baseline"]["bytes"] == classifier.model.stat().st_size
    assert 0 < status["candidate"]["bytes"] < status["baseline"]["bytes"] / 3
    assert status["candidate"]["throughput"] >= status["baseline"]["throughput"] > 0
    assert status["baseline"]["p50Ms"] > 0 and "metric" not in status["baseline"]
    assert "accuracy not measured" in status["reason"]
    quantized_sha = status["servedSha256"]
    assert len(quantized_sha) == 64 and quantized_sha != sha256(classifier.model)
    optimized_condition = condition(cluster, ns, "quantized", kind="Optimized")
    assert (optimized_condition["status"], optimized_condition["reason"]) == ("True", "OptimizationNotMeasured")

    address, metadata, metrics = served(cluster, ns, "quantized")
    assert metadata["parameters"]["sha256"] == quantized_sha
    assert metadata["parameters"]["optimization_method"] == "dynamic"
    assert f'sha256="{quantized_sha}"' in metrics and 'optimization_method="dynamic"' in metrics
    x, _ = validation_rows(classifier)
    original = ort.InferenceSession(str(classifier.model), providers=["CPUExecutionProvider"])
    want = original.run(None, {"features": x})[0].argmax(axis=1)
    assert (top1(address, "quantized", x) == want).mean() >= 0.95


def test_an_impossible_budget_serves_the_original_and_says_rejected(cluster, installed, classifier, deployed):
    ns, obj = installed.apps, deployed["impossible"]
    status = obj["status"]["optimization"]
    original_sha = sha256(classifier.model)
    assert (status["decision"], status["method"], status["servedSha256"]) == ("Rejected", "None", original_sha), status
    assert "under --min-speedup 100" in status["reason"]
    assert abs(status["baseline"]["metric"] - classifier.accuracy) <= 0.01  # the validation rows were read from S3
    optimized_condition = condition(cluster, ns, "impossible", kind="Optimized")
    assert (optimized_condition["status"], optimized_condition["reason"]) == ("False", "ServingOriginal")
    assert "Serving the original model" in optimized_condition["message"]
    assert condition(cluster, ns, "impossible")["reason"] == "Available"

    address, metadata, _ = served(cluster, ns, "impossible")
    assert (metadata["parameters"]["sha256"], metadata["parameters"]["optimization_method"]) == (original_sha, "none")
    x, labels = validation_rows(classifier)
    assert (top1(address, "impossible", x) == labels).mean() >= 0.95


def test_the_decision_is_an_event(cluster, installed, deployed):
    ns = installed.apps
    for name, reason in (("quantized", "OptimizationNotMeasured"), ("impossible", "OptimizationRejected")):
        found = cluster.wait_for(f"the {reason} Event of {name}", lambda n=name, r=reason: [
            e for e in events(cluster, ns, n) if e["reason"] == r], timeout=60)
        assert deployed[name]["status"]["optimization"]["servedSha256"] in found[0]["message"]
