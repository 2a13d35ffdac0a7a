"""Spec parsing: defaults, the typed values, and every cross-field rule as SpecError.

Covers: model name defaults to metadata.name; runtime image defaults from the
operator settings; schema defaults re-applied; pvc:// URIs; replicas vs
autoscaling; minReplicas <= maxReplicas; GPU product needs a count; TLS mode
rules (Mutual needs clients or an external CA; allowedClients needs Mutual;
Disabled has no clients); resources may not name GPUs; preferred batch sizes
bounded by maxBatchSize; unknown execution providers; bounds on integers; the
sample InferenceDeployments in examples/ parse.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubeinfer_operator.spec import SpecError, parse


def test_defaults_fill_a_minimal_spec(make_spec, settings):
    spec = make_spec()
    assert spec.model.name == "fraud"
    assert spec.runtime.image == settings.server_image
    assert spec.runtime.execution_providers == ("CPU",)
    assert spec.batching.max_batch_size == 32
    assert spec.batching.max_queue_delay_microseconds == 2000
    assert spec.resources == {"requests": {"cpu": "1", "memory": "1Gi"}}
    assert spec.gpu is None and spec.autoscaling is None and spec.replicas is None
    assert spec.tls.mode == "Server"
    assert spec.tls.certificate_duration_seconds == settings.certificate_duration_seconds
    assert spec.max_pods == 1


def test_explicit_values_are_kept(make_spec):
    spec = make_spec(
        model={"name": "fraud-v3", "uri": "https://models.example/fraud.onnx", "sha256": "a" * 64},
        runtime={"image": "reg/kubeinfer:1", "executionProviders": ["CUDA", "CPU"], "intraOpThreads": 4},
        gpu={"count": 2, "product": "NVIDIA-A10"},
        autoscaling={"minReplicas": 2, "maxReplicas": 5, "targetQueueDepth": 4},
        tls={"mode": "Mutual", "clients": [{"name": "checkout"}], "allowedClients": ["checkout"]},
    )
    assert spec.model.name == "fraud-v3" and spec.model.sha256 == "a" * 64
    assert spec.runtime.execution_providers == ("CUDA", "CPU")
    assert spec.gpu.count == 2 and spec.gpu.resource_name == "nvidia.com/gpu"
    assert spec.autoscaling.target_queue_depth == 4 and spec.max_pods == 5
    assert spec.tls.clients == ("checkout",) and spec.tls.mutual


def test_pvc_uri_names_claim_and_path(make_spec):
    spec = make_spec(model={"uri": "pvc://models-claim/fraud/3/model.onnx"})
    assert spec.model.pvc_claim == "models-claim"
    assert spec.model.pvc_path == "fraud/3/model.onnx"


def test_spec_is_frozen(make_spec):
    spec = make_spec()
    with pytest.raises(AttributeError):
        spec.replicas = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"replicas": 2, "autoscaling": {"maxReplicas": 3}}, "must not both be set"),
        ({"autoscaling": {"minReplicas": 4, "maxReplicas": 3}}, "minReplicas must be at most"),
        ({"gpu": {"product": "NVIDIA-A10"}}, "gpu.product needs gpu.count"),
        ({"tls": {"mode": "Mutual"}}, "Mutual needs at least one"),
        ({"tls": {"mode": "Server", "allowedClients": ["x"]}}, "allowedClients needs tls.mode Mutual"),
        ({"tls": {"mode": "Disabled", "clients": [{"name": "x"}]}}, "must be empty when tls.mode is Disabled"),
        ({"resources": {"limits": {"nvidia.com/gpu": "1"}}}, "must name only cpu, memory"),
        ({"batching": {"maxBatchSize": 8, "preferredBatchSizes": [4, 16]}}, "at most batching.maxBatchSize"),
        ({"runtime": {"executionProviders": ["ROCm"]}}, "executionProviders must be among"),
        ({"replicas": 5000}, "replicas must be an integer from 0 to 1000"),
        ({"model": {"uri": "pvc://claim-only"}}, "pvc://CLAIM/path"),
        ({"model": {"uri": "pvc://c/m.onnx", "sha256": "b" * 64}}, "sha256 must not be set"),
        ({"model": {"uri": "model.onnx"}}, "model.uri must be a URI"),
    ],
)
def test_invalid_specs_raise_what_must_hold(settings, fields, message):
    raw = {"model": {"uri": "s3://m/model.onnx"}, **fields}
    with pytest.raises(SpecError, match=message):
        parse("fraud", "ml", raw, settings)


def test_mutual_with_external_client_ca_needs_no_named_clients(make_spec):
    spec = make_spec(tls={"mode": "Mutual", "clientCASecretName": "corp-ca"})
    assert spec.tls.mutual and spec.tls.clients == ()


def test_examples_parse(settings):
    examples = sorted((Path(__file__).resolve().parents[2] / "examples").glob("inferencedeployment-*.yaml"))
    assert examples
    for path in examples:
        doc = yaml.safe_load(path.read_text())
        assert doc["kind"] == "InferenceDeployment"
        parse(doc["metadata"]["name"], doc["metadata"]["namespace"], doc["spec"], settings)
