"""The InferenceBatchJob CRD: names, columns, a bounded schema shared with the InferenceDeployment, CEL.

Covers: group/kind/plural/short name ``ibj`` and the printer columns (model,
phase, progress, age); the chart ships the same file; every spec field is
documented and bounded; the fields both kinds have (model, resources, GPU,
scheduling and pod settings) have the InferenceDeployment's schema, descriptions
aside; the schema's defaults are the parser's (``defaults.BATCH_DEFAULTS``); the
example in examples/ parses;
on a real API server (cluster): a valid object is admitted with its defaults,
and the CEL rules refuse an edit of anything but ``schedule`` and ``suspend``,
adding a schedule, ``{date}`` without a schedule and a pvc:// model, each with
its message; the example is admitted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubeinfer_operator import batchspec
from kubeinfer_operator.defaults import BATCH_DEFAULTS
from support.crdschema import undocumented_and_unbounded

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "kubeinfer.io_inferencebatchjobs.yaml"
SERVING_CRD = REPO / "crds" / "kubeinfer.io_inferencedeployments.yaml"
EXAMPLE = REPO / "examples" / "inferencebatchjob-nightly.yaml"
SHARED = ("resources", "gpu", "nodeSelector", "tolerations", "affinity", "imagePullSecrets", "serviceAccountName",
          "env", "podLabels", "podAnnotations", "priorityClassName", "runtimeClassName", "topologySpreadConstraints")


def _version(path: Path = CRD) -> dict:
    return yaml.safe_load(path.read_text())["spec"]["versions"][0]


def _spec(path: Path = CRD) -> dict:
    return _version(path)["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _without_descriptions(schema):
    if isinstance(schema, dict):
        return {k: _without_descriptions(v) for k, v in schema.items() if k != "description"}
    if isinstance(schema, list):
        return [_without_descriptions(v) for v in schema]
    return schema


def test_names_columns_and_the_charts_copy():
    crd = yaml.safe_load(CRD.read_text())
    names = crd["spec"]["names"]
    assert (crd["spec"]["group"], names["kind"], names["plural"], names["shortNames"]) == (
        "kubeinfer.io", "InferenceBatchJob", "inferencebatchjobs", ["ibj"])
    columns = {c["name"]: c["jsonPath"] for c in _version()["additionalPrinterColumns"]}
    assert columns == {"Model": ".status.model", "Phase": ".status.phase", "Progress": ".status.progress",
                       "Rows": ".status.rows.done", "Age": ".metadata.creationTimestamp"}
    assert _version()["subresources"] == {"status": {}}
    assert (REPO / "charts" / "kubeinfer" / "crds" / CRD.name).read_text() == CRD.read_text()


def test_every_spec_field_is_documented_and_bounded():
    assert undocumented_and_unbounded(_spec()) == ([], [])


def test_shared_fields_have_the_inference_deployments_schema():
    ours, serving = _spec()["properties"], _spec(SERVING_CRD)["properties"]
    for field in SHARED:
        assert _without_descriptions(ours[field]) == _without_descriptions(serving[field]), field
    model = {k: v for k, v in ours["model"].items() if k != "x-kubernetes-validations"}
    serving_model = {k: v for k, v in serving["model"].items() if k != "x-kubernetes-validations"}
    assert _without_descriptions(model) == _without_descriptions(serving_model)
    for field, schema in ours["runtime"]["properties"].items():
        assert _without_descriptions(schema) == _without_descriptions(serving["runtime"]["properties"][field]), field


def test_schema_defaults_are_the_parsers():
    props = _spec()["properties"]

    def default(path: str):
        schema = props
        *parents, leaf = path.split(".")
        for parent in parents:
            schema = schema[parent]["properties"]
        return schema[leaf]["default"]

    assert {path: default(path) for path in BATCH_DEFAULTS} == {
        path: list(v) if isinstance(v, tuple) else v for path, v in BATCH_DEFAULTS.items()}


def test_the_example_parses(settings):
    doc = yaml.safe_load(EXAMPLE.read_text())
    spec = batchspec.parse(doc["metadata"]["name"], doc["metadata"]["namespace"], doc["spec"], settings)
    assert spec.schedule == "0 2 * * *" and spec.parallelism == 4 and spec.input.columns["input"][0] == "amount"


# ---- On a real API server ----


def _refused(k, obj: dict) -> str:
    done = k.apply(obj, check=False)
    assert done.returncode != 0, f"admitted: {json.dumps(obj)}"
    return done.stderr


@pytest.mark.cluster
def test_the_api_server_admits_defaults_and_refuses_edits(k, crd, make_ibj):
    k.apply(make_ibj("nightly", schedule="0 2 * * *", output={"uri": "s3://data/scores/{date}/"}))
    stored = k.get("ibj", "nightly")["spec"]
    assert (stored["parallelism"], stored["batchSize"], stored["maxFailedRows"], stored["backoffLimitPerIndex"],
            stored["output"]["format"], stored["suspend"]) == (1, 0, 0, 2, "Parquet", False)
    k.apply(make_ibj("nightly", schedule="30 3 * * *", suspend=True, output={"uri": "s3://data/scores/{date}/"}))
    assert k.get("ibj", "nightly")["spec"]["schedule"] == "30 3 * * *"
    edit = _refused(k, make_ibj("nightly", schedule="30 3 * * *", parallelism=4,
                                output={"uri": "s3://data/scores/{date}/"}))
    assert "only spec.schedule and spec.suspend may change" in edit
    k.apply(make_ibj("once"))
    assert "spec.schedule may change but not be added or removed" in _refused(k, make_ibj("once", schedule="@daily"))
    assert "{date} only with a schedule" in _refused(k, make_ibj("dated", output={"uri": "s3://out/{date}/"}))
    assert "pvc:// is for InferenceDeployments" in _refused(k, make_ibj("pvc", model={"uri": "pvc://claim/m.onnx"}))
    assert "spec.schedule" in _refused(k, make_ibj("bad-cron", schedule="every night"))
    example = yaml.safe_load(EXAMPLE.read_text())
    example["metadata"]["namespace"] = k.namespace
    k.apply(example)
    assert k.get("ibj", "fraud-nightly")["spec"]["output"]["uri"] == "s3://data/scores/{date}/"
