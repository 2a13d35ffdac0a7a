"""The status of an InferenceBatchJob, from its Job (the latest run) and that run's pods (pure).

- ``phase``: Pending (no pod has started), Running, Succeeded or Failed, from
  the Job's own Complete and Failed conditions;
- ``shards``: the Job's counts (total, succeeded, failed indexes, active);
- ``rows``: the sums of the succeeded shards' counts, which each pod's batch
  container leaves in its termination message;
- conditions ``Complete`` and ``Failed`` (with the first failed shard's own
  error), and ``WaitingForGPU`` when the spec asks for a GPU.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from kubeinfer_operator.batchspec import BatchSpec
from kubeinfer_operator.builders.batchjob import CONTAINER
from kubeinfer_operator.builders.podparts import FETCH_CONTAINER
from kubeinfer_operator.conditions import Condition, Problem, merge_conditions

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
COMPLETE, FAILED_CONDITION, WAITING_FOR_GPU = "Complete", "Failed", "WaitingForGPU"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
SHARD_FAILED = "ShardFailed"
INVALID_SPEC = "InvalidSpec"


@dataclasses.dataclass(frozen=True)
class BatchObserved:
    """What the status is computed from: the Job or CronJob, the latest run (a Job) and its pods."""

    child: Mapping[str, Any] | None = None
    run: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()


@dataclasses.dataclass(frozen=True)
class Shard:
    """One finished pod's last words: its counts, or its error."""

    index: int
    succeeded: bool
    rows: int = 0
    failed_rows: int = 0
    error: str = ""


def compute_status(spec: BatchSpec | None, observed: BatchObserved, generation: int,
                   previous: Mapping[str, Any], now: dt.datetime, blocked: Problem | None = None) -> dict[str, Any]:
    """The whole ``status`` of an InferenceBatchJob."""
    run = observed.run or {}
    job_status = run.get("status") or {}
    shards = [s for s in (_shard(p) for p in observed.pods) if s is not None]
    done = {s.index: s for s in shards if s.succeeded}
    failure = blocked or _failure(run, [s for s in shards if not s.succeeded and s.index not in done])
    phase = FAILED if blocked else _phase(run, observed.pods)
    total = spec.parallelism if spec else 0
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "shards": {"total": total, "succeeded": job_status.get("succeeded", 0) or 0,
                   "failed": _count_indexes(job_status.get("failedIndexes") or ""),
                   "active": job_status.get("active", 0) or 0},
        "rows": {"done": sum(s.rows for s in done.values()), "failed": sum(s.failed_rows for s in done.values())},
        "progress": f"{len(done)}/{total} shards",
    }
    if spec is not None:
        status["model"] = spec.model.name
    if run:
        status["job"] = run["metadata"]["name"]
    for key in ("startTime", "completionTime"):
        if job_status.get(key):
            status[key] = job_status[key]
    last_schedule = ((observed.child or {}).get("status") or {}).get("lastScheduleTime")
    if last_schedule:
        status["lastScheduleTime"] = last_schedule
    wanted = _conditions(spec, phase, failure, observed.pods)
    status["conditions"] = merge_conditions(previous.get("conditions") or [], wanted, generation, now)
    return status


def _phase(run: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> str:
    if not run:
        return PENDING
    finished = {c.get("type") for c in (run.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in finished:
        return SUCCEEDED
    if "Failed" in finished:
        return FAILED
    started = any((p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed") for p in pods)
    return RUNNING if started else PENDING


def _conditions(spec: BatchSpec | None, phase: str, failure: Problem | None,
                pods: Sequence[Mapping[str, Any]]) -> list[Condition]:
    wanted = [Condition(COMPLETE, "True", "Succeeded", "Every shard scored its rows")
              if phase == SUCCEEDED else Condition(COMPLETE, "False", phase, f"The job is {phase.lower()}")]
    if phase == FAILED:
        failure = failure or Problem("JobFailed", "The Job failed")
        wanted.append(Condition(FAILED_CONDITION, "True", failure.reason, failure.message))
    else:
        wanted.append(Condition(FAILED_CONDITION, "False", "NoFailure", "No shard has failed for good"))
    if spec is not None and spec.gpu is not None:
        waiting = _unschedulable(pods)
        wanted.append(Condition(WAITING_FOR_GPU, "True", WAITING_FOR_GPU, f"Waiting for GPU: {waiting}")
                      if waiting else Condition(WAITING_FOR_GPU, "False", "Scheduled", "No pod waits for a GPU"))
    return wanted


def _failure(run: Mapping[str, Any], failed_shards: Sequence[Shard]) -> Problem | None:
    """Why the run failed: the first shard that failed for good, in its own words, else the Job's condition."""
    failed = sorted(failed_shards, key=lambda s: s.index)
    if failed:
        return Problem(SHARD_FAILED, f"Shard {failed[0].index} failed: {failed[0].error}")
    for condition in (run.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return Problem(str(condition.get("reason") or "JobFailed"), str(condition.get("message") or ""))
    return None


def _shard(pod: Mapping[str, Any]) -> Shard | None:
    """A finished pod's counts or error; None while it runs."""
    index = int(((pod.get("metadata") or {}).get("annotations") or {}).get(INDEX_ANNOTATION, "0"))
    status = pod.get("status") or {}
    fetch = _terminated(status.get("initContainerStatuses"), FETCH_CONTAINER)
    if fetch is not None and fetch.get("exitCode", 0) != 0:
        return Shard(index, False, error=f"fetching the model failed: {_last_line(fetch)}")
    terminated = _terminated(status.get("containerStatuses"), CONTAINER)
    if terminated is None:
        return None
    message = _json(terminated.get("message") or "")
    if terminated.get("exitCode", 0) == 0:
        return Shard(index, True, int(message.get("rows", 0)), int(message.get("failed_rows", 0)))
    error = message.get("error") or _last_line(terminated)
    return Shard(index, False, error=f"exit code {terminated.get('exitCode')}: {error}")


def _terminated(statuses: Sequence[Mapping[str, Any]] | None, name: str) -> Mapping[str, Any] | None:
    for status in statuses or []:
        if status.get("name") == name:
            return (status.get("state") or {}).get("terminated")
    return None


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _last_line(terminated: Mapping[str, Any]) -> str:
    lines = (terminated.get("message") or "").strip().splitlines()
    return lines[-1] if lines else str(terminated.get("reason") or "Error")


def _unschedulable(pods: Sequence[Mapping[str, Any]]) -> str | None:
    for pod in pods:
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if (condition.get("type"), condition.get("status"), condition.get("reason")) == \
                    ("PodScheduled", "False", "Unschedulable"):
                return str(condition.get("message") or "no node fits")
    return None


def _count_indexes(ranges: str) -> int:
    """How many indexes ``"1,3-5"`` (a Job's failedIndexes) names."""
    count = 0
    for part in filter(None, ranges.split(",")):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def invalid(message: str) -> Problem:
    return Problem(INVALID_SPEC, message)
