"""An InferenceBatchJob's status from its Job and the Job's pods, as the API server returns them (pure).

Covers: no Job yet is Pending; pods running is Running; the Job's Complete
condition is Succeeded with the rows summed from the succeeded pods'
termination messages (one per index, a retried index counted once); a failed
Job names the first shard that failed for good, in the batch CLI's own words
(or the fetch step's); a shard that failed and then succeeded on retry is not
the reason; failedIndexes ranges count; WaitingForGPU from an unschedulable pod;
a spec that does not parse is Failed with InvalidSpec; conditions keep their
transition time while unchanged.
"""

from __future__ import annotations

import datetime as dt
import json

from kubeinfer_operator import batchstatus
from kubeinfer_operator.batchstatus import BatchObserved, compute_status

NOW = dt.datetime(2026, 12, 2, 3, 0, tzinfo=dt.UTC)


def job(conditions=(), **status) -> dict:
    return {"metadata": {"name": "scores"},
            "status": {**status, "conditions": [{"type": t, "status": "True", "reason": r, "message": m}
                                                for t, r, m in conditions]}}


def pod(index: int, phase: str, exit_code: int | None = None, message: str = "", fetch_failed: str = "") -> dict:
    status: dict = {"phase": phase}
    if exit_code is not None:
        status["containerStatuses"] = [{"name": "batch", "state": {"terminated": {
            "exitCode": exit_code, "message": message, "reason": "Completed" if exit_code == 0 else "Error"}}}]
    if fetch_failed:
        status["initContainerStatuses"] = [{"name": "fetch", "state": {"terminated": {
            "exitCode": 1, "message": fetch_failed}}}]
    return {"metadata": {"name": f"scores-{index}-x", "annotations": {batchstatus.INDEX_ANNOTATION: str(index)}},
            "status": status}


def counts(rows: int, failed: int = 0) -> str:
    return json.dumps({"rows": rows, "failed_rows": failed, "shard": 0, "shards": 3})


def conditions(status: dict) -> dict:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_pending_then_running(make_batch_spec):
    spec = make_batch_spec(parallelism=3)
    none = compute_status(spec, BatchObserved(), 1, {}, NOW)
    assert none["phase"] == "Pending" and none["shards"] == {"total": 3, "succeeded": 0, "failed": 0, "active": 0}
    waiting = compute_status(spec, BatchObserved(child=job(), run=job(active=3), pods=[pod(0, "Pending")]), 1, {}, NOW)
    assert waiting["phase"] == "Pending" and waiting["job"] == "scores"
    running = compute_status(spec, BatchObserved(child=job(), run=job(active=3, startTime="2026-12-02T02:00:00Z"),
                                                 pods=[pod(0, "Running"), pod(1, "Pending")]), 1, {}, NOW)
    assert running["phase"] == "Running" and running["startTime"] == "2026-12-02T02:00:00Z"
    assert running["progress"] == "0/3 shards"
    assert conditions(running)["Complete"][0] == "False" and conditions(running)["Failed"][0] == "False"


def test_succeeded_sums_each_index_once(make_batch_spec):
    spec = make_batch_spec(parallelism=3)
    run = job([("Complete", "CompletionsReached", "")], succeeded=3, completionTime="2026-12-02T02:10:00Z")
    pods = [pod(0, "Succeeded", 0, counts(400, 1)), pod(1, "Failed", 1, json.dumps({"error": "S3 timeout"})),
            pod(1, "Succeeded", 0, counts(400)), pod(2, "Succeeded", 0, counts(400, 2))]
    status = compute_status(spec, BatchObserved(child=run, run=run, pods=pods), 1, {}, NOW)
    assert status["phase"] == "Succeeded" and status["rows"] == {"done": 1200, "failed": 3}
    assert status["progress"] == "3/3 shards" and status["completionTime"] == "2026-12-02T02:10:00Z"
    assert conditions(status)["Complete"] == ("True", "Succeeded", "Every shard scored its rows")
    assert conditions(status)["Failed"][0] == "False"  # index 1 failed once, then succeeded


def test_failed_names_the_shard_that_failed_for_good(make_batch_spec):
    spec = make_batch_spec(parallelism=3)
    run = job([("Failed", "FailedIndexes", "Job has failed indexes")], succeeded=1, failed=2, failedIndexes="1-2")
    error = "7 bad rows, more than --max-failed-rows 0; the first: txn 12: null in x"
    pods = [pod(0, "Succeeded", 0, counts(400)), pod(2, "Failed", 1, json.dumps({"error": error})),
            pod(1, "Failed", 0, fetch_failed="fetch s3://models/m.onnx: NoSuchKey")]
    status = compute_status(spec, BatchObserved(child=run, run=run, pods=pods), 1, {}, NOW)
    assert status["phase"] == "Failed" and status["shards"]["failed"] == 2
    assert conditions(status)["Failed"] == (
        "True", "ShardFailed", "Shard 1 failed: fetching the model failed: fetch s3://models/m.onnx: NoSuchKey")
    only_bad_rows = compute_status(spec, BatchObserved(child=run, run=run, pods=pods[:2]), 1, {}, NOW)
    assert conditions(only_bad_rows)["Failed"][2] == f"Shard 2 failed: exit code 1: {error}"
    crashed = [pod(0, "Failed", 137, "Killed\n")]
    status = compute_status(spec, BatchObserved(child=run, run=run, pods=crashed), 1, {}, NOW)
    assert conditions(status)["Failed"][2] == "Shard 0 failed: exit code 137: Killed"
    no_pods = compute_status(spec, BatchObserved(child=run, run=run), 1, {}, NOW)
    assert conditions(no_pods)["Failed"] == ("True", "FailedIndexes", "Job has failed indexes")


def test_failed_indexes_ranges_count():
    assert [batchstatus._count_indexes(r) for r in ("", "3", "1,3-5", "0-9,12")] == [0, 1, 4, 11]


def test_waiting_for_gpu(make_batch_spec):
    spec = make_batch_spec(gpu={"count": 1})
    unschedulable = pod(0, "Pending")
    unschedulable["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                              "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]
    status = compute_status(spec, BatchObserved(child=job(), run=job(active=1), pods=[unschedulable]), 1, {}, NOW)
    assert conditions(status)["WaitingForGPU"][:2] == ("True", "WaitingForGPU")
    assert "Insufficient nvidia.com/gpu" in conditions(status)["WaitingForGPU"][2]
    assert "WaitingForGPU" not in conditions(compute_status(make_batch_spec(), BatchObserved(), 1, {}, NOW))


def test_invalid_spec_and_transition_times(make_batch_spec):
    blocked = compute_status(None, BatchObserved(), 2, {}, NOW, blocked=batchstatus.invalid("input.uri must name"))
    assert blocked["phase"] == "Failed"
    assert conditions(blocked)["Failed"] == ("True", "InvalidSpec", "input.uri must name")
    spec = make_batch_spec()
    first = compute_status(spec, BatchObserved(), 1, {}, NOW)
    later = compute_status(spec, BatchObserved(), 1, first, NOW + dt.timedelta(minutes=5))
    assert later == first
