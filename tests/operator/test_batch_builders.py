"""The InferenceBatchJob spec and the Job or CronJob built from it (pure).

Covers: the spec's defaults (one shard, batch size 0 = the fastest, no bad row
allowed, two retries per shard, Parquet out) and its refusals (a pvc:// model,
{date} without a schedule, an unknown format, an empty column list); the Job:
Indexed with one completion per shard, a usage error (exit 2) failing the whole
Job, retries per index, the same fetch init step as the servers, the batch
container's arguments (every CLI flag the spec sets, no shard index: the Job gives
it), the data store's credentials on the batch container only, GPU limit and
toleration, the platform fields; a schedule gives a CronJob that forbids overlapping
runs and carries the same Job.
"""

from __future__ import annotations

import re

import pytest

from kubeinfer_operator import naming
from kubeinfer_operator.builders.batchjob import build_batch_child
from kubeinfer_operator.builders.podparts import fetch_container
from kubeinfer_operator.spec import SpecError

OWNER = {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceBatchJob", "name": "scores", "uid": "u-1",
         "controller": True, "blockOwnerDeletion": True}


def _pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def test_defaults(make_batch_spec):
    spec = make_batch_spec()
    assert (spec.parallelism, spec.batch_size, spec.max_failed_rows, spec.backoff_limit_per_index) == (1, 0, 0, 2)
    assert spec.output.format == "Parquet" and spec.input.format is None and spec.schedule is None
    assert not spec.suspend and spec.runtime.execution_providers == ("CPU",)


@pytest.mark.parametrize("change, message", [
    ({"model": {"uri": "pvc://models/m.onnx"}}, "pvc:// is for InferenceDeployments"),
    ({"output": {"uri": "s3://out/{date}/"}}, "{date} only with a schedule"),
    ({"input": {"uri": "s3://in/", "format": "Avro"}}, "input.format must be one of Parquet, JSONL, CSV"),
    ({"input": {"uri": "s3://in/", "columns": {"x": []}}}, "input.columns.x must be a non-empty list"),
    ({"parallelism": 0}, "parallelism must be an integer from 1 to 1000"),
    ({"env": [{"name": "KUBEINFER_X", "value": "1"}]}, "names starting with KUBEINFER_"),
])
def test_refusals(make_batch_spec, change, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        make_batch_spec(**change)


def test_an_indexed_job_with_one_completion_per_shard(make_batch_spec):
    spec = make_batch_spec(parallelism=3, backoffLimitPerIndex=1, maxFailedRows=5, batchSize=256,
                           input={"uri": "s3://data/in/", "format": "CSV", "columns": {"x": ["a", "b"]},
                                  "idColumn": "txn"},
                           output={"uri": "s3://data/out/", "format": "JSONL"},
                           runtime={"intraOpThreads": 2})
    job = build_batch_child(spec, OWNER)
    assert (job["kind"], job["metadata"]["name"]) == ("Job", "scores")
    assert job["metadata"]["labels"] == naming.batch_labels("scores") and job["metadata"]["ownerReferences"] == [OWNER]
    body = job["spec"]
    assert (body["completionMode"], body["completions"], body["parallelism"], body["backoffLimitPerIndex"]) == \
        ("Indexed", 3, 3, 1)
    assert "backoffLimit" not in body and body["suspend"] is False
    fail_job = body["podFailurePolicy"]["rules"][0]
    assert fail_job["action"] == "FailJob" and fail_job["onExitCodes"]["values"] == [2]
    pod = _pod(job)
    assert pod["restartPolicy"] == "Never"
    assert pod["initContainers"] == [fetch_container(spec.model, spec.runtime, spec.pod, "/models/scores/model.onnx")]
    (batch,) = pod["containers"]
    assert batch["command"] == ["kubeinfer-server"]
    assert batch["args"] == [
        "batch", "--model", "/models/scores/model.onnx", "--input", "s3://data/in/", "--output", "s3://data/out/",
        "--output-format", "jsonl", "--shards", "3", "--batch-size", "256", "--max-failed-rows", "5",
        "--providers", "cpu", "--input-format", "csv", "--input-columns", "x=a,b", "--id-column", "txn",
        "--intra-op-threads", "2"]
    assert "--shard" not in batch["args"]  # each pod's index comes from JOB_COMPLETION_INDEX
    assert batch["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert batch["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in batch["volumeMounts"]} == {"/models/scores", "/tmp"}
    assert job["spec"]["template"]["metadata"]["labels"] == naming.batch_labels("scores")


def test_credentials_gpu_and_platform_fields(make_batch_spec):
    spec = make_batch_spec(model={"uri": "s3://models/m.onnx", "credentials": {"secretRef": {"name": "model-keys"}}},
                           credentials={"secretRef": {"name": "data-keys"}},
                           gpu={"count": 1, "product": "NVIDIA-H100"}, serviceAccountName="scorer",
                           imagePullSecrets=[{"name": "regcred"}], runtime={"executionProviders": ["CUDA", "CPU"]})
    pod = _pod(build_batch_child(spec, OWNER))
    assert pod["initContainers"][0]["envFrom"] == [{"secretRef": {"name": "model-keys"}}]
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "data-keys"}}]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["serviceAccountName"] == "scorer" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert "--providers" in (args := pod["containers"][0]["args"]) and args[args.index("--providers") + 1] == "cuda,cpu"


def test_a_schedule_makes_a_cron_job_of_the_same_job(make_batch_spec):
    once = build_batch_child(make_batch_spec(parallelism=2), OWNER)
    spec = make_batch_spec(parallelism=2, schedule="0 2 * * *", output={"uri": "s3://data/scores/{date}/"})
    cron = build_batch_child(spec, OWNER)
    assert (cron["kind"], cron["metadata"]["name"]) == ("CronJob", "scores")
    body = cron["spec"]
    assert (body["schedule"], body["concurrencyPolicy"], body["suspend"]) == ("0 2 * * *", "Forbid", False)
    assert body["jobTemplate"]["metadata"]["labels"] == naming.batch_labels("scores")
    job = body["jobTemplate"]["spec"]
    assert "suspend" not in job  # the CronJob's own suspend pauses the schedule
    assert job["completions"] == once["spec"]["completions"] == 2
    assert "s3://data/scores/{date}/" in job["template"]["spec"]["containers"][0]["args"]  # the CLI fills it in


def _empty_maps(obj, path=""):
    if isinstance(obj, dict):
        found = [path] if not obj and path else []
        return found + [p for k, v in obj.items() for p in _empty_maps(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _empty_maps(v, f"{path}[{i}]")]
    return []


def test_no_empty_map_that_the_api_server_would_drop(make_batch_spec):
    # An empty map is dropped on admission; applied again and again, it would never match (a write loop).
    # ``emptyDir: {}`` is a volume source, which the API server keeps.
    for spec in (make_batch_spec(), make_batch_spec(schedule="@daily")):
        dropped = [p for p in _empty_maps(build_batch_child(spec, OWNER)) if not p.endswith(".emptyDir")]
        assert dropped == []
