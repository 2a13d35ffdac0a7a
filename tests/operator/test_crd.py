"""The CRD: names, subresources, printer columns, and a schema that documents, bounds and checks.

Covers: group/version/kind/plural/short name as the API contract fixes them
(README, "InferenceDeployment: every field"); status and scale subresources; printer columns; every spec field has a
description; every number has bounds, every string a maxLength/enum/pattern
bound, every list a maxItems, every map a maxProperties; the contract's field
names exist; defaults; the CEL rules with their messages; every default the
schema declares is one spec.parse applies too.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from support.crdschema import undocumented_and_unbounded, walk

CRD = Path(__file__).resolve().parents[2] / "crds" / "kubeinfer.io_inferencedeployments.yaml"


def _crd():
    return yaml.safe_load(CRD.read_text())


def _version():
    return _crd()["spec"]["versions"][0]


def _spec_schema():
    return _version()["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_names_and_scope():
    crd = _crd()
    assert crd["metadata"]["name"] == "inferencedeployments.kubeinfer.io"
    assert crd["spec"]["group"] == "kubeinfer.io" and crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "InferenceDeployment", "inferencedeployments", ["infd"])
    assert _version()["name"] == "v1alpha1" and _version()["served"] and _version()["storage"]


def test_subresources_and_columns():
    version = _version()
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector"}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Model"] == ".status.model"
    assert columns["Replicas"] == ".status.readiness"
    assert columns["Autoscaling"] == ".status.autoscaling"
    assert columns["Endpoint"] == ".status.endpoint"
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_every_spec_field_is_documented_and_bounded():
    assert undocumented_and_unbounded(_spec_schema()) == ([], [])


def test_contract_field_names_exist():
    props = _spec_schema()["properties"]
    assert set(props) >= {"model", "runtime", "batching", "resources", "gpu", "nodeSelector", "tolerations",
                          "affinity", "replicas", "autoscaling", "tls"}
    assert set(props["model"]["properties"]) == {"name", "uri", "sha256", "credentials"}
    assert set(props["runtime"]["properties"]) >= {"image", "executionProviders", "intraOpThreads", "instances"}
    assert set(props["batching"]["properties"]) == {"maxBatchSize", "maxQueueDelayMicroseconds",
                                                    "preferredBatchSizes", "maxQueueSize"}
    assert set(props["gpu"]["properties"]) == {"count", "resourceName", "product"}
    assert set(props["autoscaling"]["properties"]) == {
        "minReplicas", "maxReplicas", "targetQueueDepth", "scaleUpStabilizationSeconds",
        "scaleDownStabilizationSeconds", "engine"}
    assert set(props["tls"]["properties"]) >= {"mode", "clients", "allowedClients", "certificateDurationSeconds"}
    status = _version()["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert set(status) >= {"observedGeneration", "replicas", "readyReplicas", "endpoint",
                           "certificateNotAfter", "conditions"}


def test_defaults():
    props = _spec_schema()["properties"]
    scaling = props["autoscaling"]["properties"]
    assert scaling["scaleUpStabilizationSeconds"]["default"] == 0
    assert scaling["scaleDownStabilizationSeconds"]["default"] == 300
    assert scaling["targetQueueDepth"]["default"] == 8
    assert props["gpu"]["properties"]["resourceName"]["default"] == "nvidia.com/gpu"
    assert props["tls"]["properties"]["mode"]["default"] == "Server"
    assert props["batching"]["properties"]["maxBatchSize"]["default"] == 32


def _rules():
    found = {}
    for path, schema in walk(_spec_schema()):
        for rule in schema.get("x-kubernetes-validations") or []:
            found[rule["rule"]] = (path, rule["message"])
    return found


def test_cel_rules_say_what_must_hold():
    messages = [message for _, message in _rules().values()]
    assert all(" must " in m or " needs " in m for m in messages)
    rules = _rules()
    assert rules["!(has(self.replicas) && has(self.autoscaling))"][0] == "spec"
    assert rules["self.minReplicas <= self.maxReplicas"][0] == "spec.autoscaling"
    assert rules["!has(self.product) || has(self.count)"][0] == "spec.gpu"
    assert any(path == "spec.tls" and "Mutual" in rule for rule, (path, _) in rules.items())


def test_schema_defaults_match_the_parser(make_spec):
    spec = make_spec()
    props = _spec_schema()["properties"]
    assert spec.runtime.instances == props["runtime"]["properties"]["instances"]["default"]
    assert spec.runtime.drain_grace_seconds == props["runtime"]["properties"]["drainGraceSeconds"]["default"]
    assert spec.batching.max_queue_delay_microseconds == \
        props["batching"]["properties"]["maxQueueDelayMicroseconds"]["default"]
    assert spec.batching.max_queue_size == props["batching"]["properties"]["maxQueueSize"]["default"]
    assert dict(spec.resources) == props["resources"]["default"]
    assert spec.tls.mode == props["tls"]["properties"]["mode"]["default"]
