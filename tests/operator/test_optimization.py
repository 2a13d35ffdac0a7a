"""spec.optimization, from the spec to the pods and back into the status (pure).

Covers: parsing (defaults, explicit values, every cross-field rule as SpecError, the same rules
as CEL in the CRD with status.optimization's fields; the docs' example is examples/'s and
parses); the Deployment's second init container, ``optimize``, after the fetch: in place on
the file the server loads, the server container's resources (GPU too), providers, threads and
batch size, the credentials and spec.env of the fetch, TMPDIR on the model volume,
--exit-zero-on-reject for ServeOriginal only, --accept-unvalidated without validation data,
the server container unchanged; the status from the optimize step's termination message (the
newest pod's): status.optimization and the Optimized condition (OptimizationAccepted /
OptimizationNotMeasured, ServingOriginal), Ready False with OptimizationRejected under onReject
Fail and OptimizationFailed for a failed run, LoadingModel while it runs, messages that are not
its own ignored; the Events when the decision first appears or the served file changes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
import yaml

from kubeinfer_operator import optimization_status
from kubeinfer_operator.builders.deployment import build_deployment
from kubeinfer_operator.conditions import Observed, StatusInputs, compute_status
from kubeinfer_operator.spec import SpecError

OWNER = {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceDeployment", "name": "fraud", "uid": "u",
         "controller": True, "blockOwnerDeletion": True}
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "kubeinfer.io_inferencedeployments.yaml"
DOC = REPO / "docs" / "optimization.md"
EXAMPLE = REPO / "examples" / "inferencedeployment-optimized.yaml"
ROWS = {"uri": "s3://data/valid.parquet"}
ORIGINAL, QUANTIZED = "a" * 64, "b" * 64


def _pod(spec):
    return build_deployment(spec, OWNER)["spec"]["template"]["spec"]


# --- spec ------------------------------------------------------------------------------------

def test_defaults(make_spec):
    optimization = make_spec(optimization={"method": "Dynamic"}).optimization
    assert (optimization.method, optimization.calibration, optimization.validation) == ("Dynamic", None, None)
    assert (optimization.max_degradation, optimization.min_speedup, optimization.on_reject) == \
        (0.01, 1.0, "ServeOriginal")
    assert not optimization.fail_on_reject
    assert make_spec().optimization is None


def test_explicit_values(make_spec):
    optimization = make_spec(optimization={
        "method": "Static", "calibration": {"uri": "s3://data/calib.parquet", "samples": 64},
        "validation": {"uri": "s3://data/valid.parquet", "labelColumn": "label", "metric": "Top1"},
        "maxDegradation": 0, "minSpeedup": 100, "onReject": "Fail"}).optimization
    assert (optimization.calibration.uri, optimization.calibration.samples) == ("s3://data/calib.parquet", 64)
    assert (optimization.validation.label_column, optimization.validation.metric) == ("label", "Top1")
    assert (optimization.max_degradation, optimization.min_speedup) == (0.0, 100.0) and optimization.fail_on_reject


@pytest.mark.parametrize("extra,message", [
    ({"optimization": {"method": "Fast"}}, "optimization.method must be one of Dynamic, Static"),
    ({"optimization": {}}, "optimization.method must be one of"),
    ({"optimization": {"method": "Static", "validation": ROWS}}, "Static needs optimization.calibration"),
    ({"optimization": {"method": "Prune"}}, "Prune needs optimization.validation"),
    ({"optimization": {"method": "Float16"}}, "Float16 needs a GPU provider"),
    ({"optimization": {"method": "Dynamic", "validation": {**ROWS, "metric": "Top1"}}}, "Top1 needs"),
    ({"optimization": {"method": "Dynamic", "validation": {**ROWS, "metric": "F1"}}},
     "optimization.validation.metric must be one of"),
    ({"optimization": {"method": "Dynamic", "validation": {"uri": "pvc://c/rows.parquet"}}},
     "optimization.validation.uri must be a URI"),
    ({"optimization": {"method": "Dynamic", "calibration": {}}}, "optimization.calibration.uri must be a URI"),
    ({"optimization": {"method": "Dynamic", "calibration": {**ROWS, "samples": 0}}}, "samples must be an integer"),
    ({"optimization": {"method": "Dynamic", "minSpeedup": -1}}, "optimization.minSpeedup must be a number"),
    ({"optimization": {"method": "Dynamic", "maxDegradation": True}}, "optimization.maxDegradation must be"),
    ({"optimization": {"method": "Dynamic", "onReject": "Retry"}}, "optimization.onReject must be one of"),
    ({"optimization": {"method": "Dynamic"}, "model": {"uri": "pvc://claim/model.onnx"}},
     "optimization needs a fetched model.uri"),
])
def test_rules_that_must_hold(make_spec, extra, message):
    with pytest.raises(SpecError, match=message):
        make_spec(**extra)


def test_the_docs_example_is_the_example_file_and_parses(make_spec):
    section = DOC.read_text().split("## In an InferenceDeployment: `spec.optimization`\n", 1)[1]
    documented = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", section, re.S)[0])
    assert documented == yaml.safe_load(EXAMPLE.read_text())
    optimization = make_spec(**documented["spec"]).optimization
    assert (optimization.method, optimization.validation.label_column, optimization.min_speedup) == \
        ("Dynamic", "label", 1.2)


def test_float16_with_a_gpu_provider(make_spec):
    spec = make_spec(runtime={"executionProviders": ["CUDA", "CPU"]}, gpu={"count": 1},
                     optimization={"method": "Float16"})
    assert spec.optimization.method == "Float16"


def test_the_crd_holds_the_same_rules_and_the_status_fields():
    version = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    schema = version["spec"]["properties"]["optimization"]
    assert set(schema["properties"]) == {"method", "calibration", "validation", "maxDegradation", "minSpeedup",
                                         "onReject"}
    assert schema["properties"]["method"]["enum"] == ["Dynamic", "Static", "Float16", "Prune", "Auto"]
    assert schema["properties"]["onReject"] == {**schema["properties"]["onReject"], "default": "ServeOriginal",
                                                "enum": ["ServeOriginal", "Fail"]}
    assert set(schema["properties"]["calibration"]["properties"]) == {"uri", "samples"}
    assert set(schema["properties"]["validation"]["properties"]) == {"uri", "labelColumn", "metric"}
    messages = " ".join(r["message"] for r in [*schema["x-kubernetes-validations"],
                                               *version["spec"]["x-kubernetes-validations"],
                                               *schema["properties"]["validation"]["x-kubernetes-validations"]])
    for words in ("Static needs", "Prune needs", "Float16 needs a GPU provider", "Top1 needs",
                  "must not be set with a pvc:// uri"):
        assert words in messages
    status = version["status"]["properties"]["optimization"]["properties"]
    assert set(status) == {"decision", "reason", "method", "baseline", "candidate", "servedSha256"}
    assert status["decision"]["enum"] == ["Accepted", "Rejected", "NotMeasured"]
    assert set(status["baseline"]["properties"]) == {"metric", "p50Ms", "throughput", "bytes"}
    assert set(status["candidate"]["properties"]) == {"method", "metric", "p50Ms", "throughput", "bytes"}


# --- the init step ---------------------------------------------------------------------------

def test_optimize_runs_after_the_fetch_in_place_on_the_servers_resources(make_spec):
    fields = {"model": {"uri": "s3://models/fraud.onnx", "credentials": {"secretRef": {"name": "keys"}}},
              "runtime": {"executionProviders": ["CUDA", "CPU"], "intraOpThreads": 2, "imagePullPolicy": "Never"},
              "gpu": {"count": 1}, "batching": {"maxBatchSize": 16},
              "resources": {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
              "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}]}
    pod = _pod(make_spec(**fields, optimization={"method": "Dynamic"}))
    fetch, optimize = pod["initContainers"]
    server = pod["containers"][0]
    assert (fetch["name"], optimize["name"]) == ("fetch", "optimize")
    assert optimize["image"] == server["image"] and optimize["imagePullPolicy"] == "Never"
    assert optimize["args"] == [
        "optimize", "/models/fraud/model.onnx", "/models/fraud/model.onnx", "--in-place", "--method", "dynamic",
        "--providers", "cuda,cpu", "--batch-size", "16", "--max-degradation", "0.01", "--min-speedup", "1.0",
        "--intra-op-threads", "2", "--accept-unvalidated", "--exit-zero-on-reject"]
    assert optimize["resources"] == server["resources"]
    assert optimize["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert optimize["envFrom"] == fetch["envFrom"] == [{"secretRef": {"name": "keys"}}]
    assert optimize["env"] == [{"name": "TMPDIR", "value": "/models/fraud"},
                               {"name": "HTTPS_PROXY", "value": "http://proxy:3128"}]
    assert {"name": "model", "mountPath": "/models/fraud"} in optimize["volumeMounts"]
    assert optimize["securityContext"] == server["securityContext"]
    assert optimize["terminationMessagePolicy"] == "FallbackToLogsOnError"
    plain = _pod(make_spec(**fields))
    assert _but_revision(plain["containers"]) == _but_revision(pod["containers"]), \
        "the server container is the same with or without (but for the revision it names)"
    assert [c["name"] for c in plain["initContainers"]] == ["fetch"]


def _but_revision(containers: list[dict]) -> list[dict]:
    return [{**c, "env": [e for e in c["env"] if e["name"] != "KUBEINFER_MODEL_VERSION"]} for c in containers]


def test_validation_calibration_and_fail(make_spec):
    spec = make_spec(batching={"maxBatchSize": 0}, optimization={
        "method": "Auto", "calibration": {"uri": "s3://data/calib.parquet"},
        "validation": {"uri": "s3://data/valid.parquet", "labelColumn": "label", "metric": "Top1"},
        "maxDegradation": 0.005, "minSpeedup": 1.2, "onReject": "Fail"})
    args = _pod(spec)["initContainers"][1]["args"]
    assert args[args.index("--batch-size") + 1] == "1"  # no batching: the speed served is batch 1's
    assert args[args.index("--method") + 1] == "auto"
    assert args[args.index("--calibration"):args.index("--calibration") + 4] == [
        "--calibration", "s3://data/calib.parquet", "--calibration-samples", "256"]
    assert args[args.index("--validation"):] == [
        "--validation", "s3://data/valid.parquet", "--label-column", "label", "--metric", "top1"]
    assert (args[args.index("--max-degradation") + 1], args[args.index("--min-speedup") + 1]) == ("0.005", "1.2")
    assert "--exit-zero-on-reject" not in args and "--accept-unvalidated" not in args
    assert "--intra-op-threads" not in args  # the server's own: its CPU limit


# --- status ----------------------------------------------------------------------------------

def _message(decision="accepted", method="dynamic", served=QUANTIZED, reason="top1 improved by 0.0005"):
    side = {"metric": 0.98, "p50Ms": 0.04, "throughput": 143002.0, "bytes": 1335863}
    return json.dumps({"decision": decision, "reason": reason, "method": method, "baseline": side,
                       "candidate": {"method": "dynamic", **side, "bytes": 340030}, "servedSha256": served})


def _optimized_pod(name="a", created="2026-03-01T11:00:00Z", exit_code=0, message=None, state="terminated",
                   server_ready=True):
    terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                  "message": _message() if message is None else message}
    step = {"name": "optimize", "state": {"terminated": terminated}}
    if state == "running":
        step = {"name": "optimize", "state": {"running": {}}}
    elif state == "backoff":
        step = {"name": "optimize", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": terminated}}
    statuses = [{"name": "fetch", "state": {"terminated": {"exitCode": 0}}}, step]
    server = {"name": "server", "ready": server_ready,
              "state": {"running": {}} if state == "terminated" else {"waiting": {"reason": "PodInitializing"}}}
    return {"metadata": {"name": name, "creationTimestamp": created},
            "status": {"initContainerStatuses": statuses, "containerStatuses": [server]}}


def _deployment(available):
    return {"metadata": {"generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": available,
                       "availableReplicas": available, "updatedReplicas": 1}}


def _status(spec, pods, available=1):
    return compute_status(StatusInputs("fraud", "ml", 2, spec, Observed(_deployment(available), pods)), {}, NOW)


def _conditions(status):
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_an_accepted_model_is_in_the_status_and_the_condition(make_spec):
    status = _status(make_spec(optimization={"method": "Dynamic"}), [_optimized_pod()])
    assert status["optimization"] == {
        "decision": "Accepted", "reason": "top1 improved by 0.0005", "method": "Dynamic",
        "baseline": {"metric": 0.98, "p50Ms": 0.04, "throughput": 143002.0, "bytes": 1335863},
        "candidate": {"method": "Dynamic", "metric": 0.98, "p50Ms": 0.04, "throughput": 143002.0, "bytes": 340030},
        "servedSha256": QUANTIZED}
    conditions = _conditions(status)
    assert conditions["Optimized"] == ("True", "OptimizationAccepted",
                                       f"Serving the Dynamic model (sha256 {QUANTIZED}): top1 improved by 0.0005")
    assert conditions["Ready"][:2] == ("True", "Available")


def test_not_measured_leaves_the_metric_out(make_spec):
    message = json.loads(_message("not_measured", reason="accuracy not measured"))
    message["baseline"]["metric"] = message["candidate"]["metric"] = None
    status = _status(make_spec(optimization={"method": "Dynamic"}), [_optimized_pod(message=json.dumps(message))])
    assert status["optimization"]["decision"] == "NotMeasured" and "metric" not in status["optimization"]["baseline"]
    assert _conditions(status)["Optimized"][:2] == ("True", "OptimizationNotMeasured")


def test_serve_original_says_why_and_stays_ready(make_spec):
    pod = _optimized_pod(message=_message("rejected", "none", ORIGINAL, "0.50x the original's throughput"))
    status = _status(make_spec(optimization={"method": "Dynamic"}), [pod])
    assert (status["optimization"]["decision"], status["optimization"]["method"]) == ("Rejected", "None")
    assert status["optimization"]["servedSha256"] == ORIGINAL
    conditions = _conditions(status)
    assert conditions["Optimized"] == ("False", "ServingOriginal", f"Serving the original model (sha256 {ORIGINAL}):"
                                       " the Dynamic candidate was rejected: 0.50x the original's throughput")
    assert conditions["Ready"][:2] == ("True", "Available") and conditions["Degraded"][0] == "False"


def test_fail_keeps_ready_false_with_the_reason(make_spec):
    pod = _optimized_pod(exit_code=3, state="backoff", server_ready=False,
                         message=_message("rejected", "none", ORIGINAL, "top1 degraded by 0.02"))
    status = _status(make_spec(optimization={"method": "Dynamic", "onReject": "Fail"}), [pod], available=0)
    conditions = _conditions(status)
    assert conditions["Ready"] == ("False", "OptimizationRejected", "The optimized model was rejected and "
                                   "optimization.onReject is Fail: top1 degraded by 0.02")
    assert conditions["Degraded"][:2] == ("True", "OptimizationRejected")
    assert conditions["Optimized"][:2] == ("False", "OptimizationRejected")
    assert status["optimization"]["decision"] == "Rejected"


def test_a_failed_run_is_optimization_failed(make_spec):
    error = json.dumps({"error": "usage: validation: no column feeds model input 'features'"})
    pod = _optimized_pod(exit_code=2, state="backoff", server_ready=False, message=error)
    status = _status(make_spec(optimization={"method": "Dynamic"}), [pod], available=0)
    conditions = _conditions(status)
    assert conditions["Ready"] == ("False", "OptimizationFailed", "The optimize step failed (exit code 2, Error): "
                                   "usage: validation: no column feeds model input 'features'")
    assert conditions["Optimized"][:2] == ("False", "OptimizationFailed") and "optimization" not in status
    log_tail = _optimized_pod(exit_code=1, state="backoff", server_ready=False, message="Traceback\nMemoryError\n")
    assert _conditions(_status(make_spec(optimization={"method": "Dynamic"}), [log_tail], 0))["Ready"][2] == \
        "The optimize step failed (exit code 1, Error): MemoryError"
    killed = _optimized_pod(exit_code=137, state="backoff", server_ready=False, message="")
    killed["status"]["initContainerStatuses"][1]["lastState"]["terminated"]["reason"] = "OOMKilled"
    assert _conditions(_status(make_spec(optimization={"method": "Dynamic"}), [killed], 0))["Ready"][2] == \
        "The optimize step failed (exit code 137, OOMKilled): no message"


def test_loading_while_it_runs_then_pending(make_spec):
    status = _status(make_spec(optimization={"method": "Static", "calibration": ROWS, "validation": ROWS}),
                     [_optimized_pod(state="running", server_ready=False)], available=0)
    conditions = _conditions(status)
    assert conditions["Ready"][:2] == ("False", "LoadingModel")
    assert conditions["Ready"][2].startswith("Optimizing the model (Static) and measuring it beside the original")
    assert conditions["Optimized"] == ("Unknown", "OptimizationPending",
                                       "No server pod has finished its optimize step yet")


def test_the_newest_pod_speaks_and_foreign_messages_are_ignored(make_spec):
    spec = make_spec(optimization={"method": "Dynamic"})
    old = _optimized_pod("old", "2026-03-01T10:00:00Z", message=_message(served="c" * 64))
    new = _optimized_pod("new", "2026-03-01T11:00:00Z")
    assert _status(spec, [old, new])["optimization"]["servedSha256"] == QUANTIZED
    gone = {**new, "metadata": {**new["metadata"], "deletionTimestamp": "2026-03-01T12:00:00Z"}}
    assert _status(spec, [old, gone])["optimization"]["servedSha256"] == "c" * 64
    for junk in ("not json", json.dumps({"decision": "maybe"}), json.dumps(["a"]),
                 json.dumps({"decision": "accepted"})):
        assert "optimization" not in _status(spec, [_optimized_pod(message=junk)])


def test_without_spec_optimization_nothing_is_said(make_spec):
    status = _status(make_spec(), [_optimized_pod()])
    assert "optimization" not in status and "Optimized" not in _conditions(status)


def test_events_when_the_decision_first_appears_or_the_served_file_changes(make_spec):
    spec = make_spec(optimization={"method": "Dynamic"})
    accepted = _status(spec, [_optimized_pod()])["optimization"]
    assert optimization_status.events(None, accepted) == [
        ("Normal", "OptimizationAccepted",
         f"Optimization Accepted, serving the Dynamic model (sha256 {QUANTIZED}): top1 improved by 0.0005")]
    assert optimization_status.events(accepted, accepted) == []
    assert optimization_status.events(accepted, None) == []
    rejected = _status(spec, [_optimized_pod(message=_message("rejected", "none", ORIGINAL, "too slow"))])
    (event,) = optimization_status.events(accepted, rejected["optimization"])
    assert event[:2] == ("Warning", "OptimizationRejected") and "serving the original model" in event[2]
