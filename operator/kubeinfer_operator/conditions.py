"""Status of an InferenceDeployment, computed from what the cluster reports (pure).

Conditions follow the Kubernetes API conventions: ``Ready`` (serving at the
desired capacity), ``Progressing`` (a rollout is under way) and ``Degraded``
(something needs a person), each with a CamelCase reason a person can act on.
``lastTransitionTime`` only moves when a condition's status changes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from kubeinfer_operator import naming
from kubeinfer_operator.spec import InferenceSpec

AVAILABLE = "Available"
ROLLOUT_IN_PROGRESS = "RolloutInProgress"
INVALID_SPEC = "InvalidSpec"
CLIENT_CA_NOT_FOUND = "ClientCANotFound"
WAITING_FOR_GPU = "WaitingForGPU"
UNSCHEDULABLE = "Unschedulable"
MODEL_FETCH_FAILED = "ModelFetchFailed"
IMAGE_PULL_FAILED = "ImagePullFailed"
SERVER_CRASH_LOOP = "ServerCrashLoop"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
SCALED_TO_ZERO = "ScaledToZero"
AS_EXPECTED = "AsExpected"
IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")


@dataclasses.dataclass(frozen=True)
class Observed:
    """The children the status is computed from, as the API server returned them."""

    deployment: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()


@dataclasses.dataclass(frozen=True)
class Problem:
    reason: str
    message: str


def _get(obj: Mapping[str, Any] | None, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            return default
        obj = obj[key]
    return obj


def pod_problem(spec: InferenceSpec, pods: Sequence[Mapping[str, Any]]) -> Problem | None:
    """The most telling reason, found in the pods, why they do not serve."""
    found: dict[str, Problem] = {}
    for pod in pods:
        if _get(pod, "metadata", "deletionTimestamp"):
            continue
        for problem in (_fetch_problem(spec, pod), _server_problem(pod), _scheduling_problem(spec, pod)):
            if problem is not None:
                found.setdefault(problem.reason, problem)
    for reason in (MODEL_FETCH_FAILED, IMAGE_PULL_FAILED, SERVER_CRASH_LOOP, WAITING_FOR_GPU, UNSCHEDULABLE):
        if reason in found:
            return found[reason]
    return None


def _fetch_problem(spec: InferenceSpec, pod: Mapping[str, Any]) -> Problem | None:
    for status in _get(pod, "status", "initContainerStatuses", default=[]) or []:
        if status.get("name") != "fetch":
            continue
        waiting = _get(status, "state", "waiting", "reason")
        if waiting in IMAGE_PULL_REASONS:
            return Problem(IMAGE_PULL_FAILED, f"Cannot pull image {status.get('image')}: {waiting}")
        failed = _failed(status)
        if failed:
            return Problem(MODEL_FETCH_FAILED, f"Fetching model {spec.model.uri} failed: {failed}")
    return None


def _server_problem(pod: Mapping[str, Any]) -> Problem | None:
    for status in _get(pod, "status", "containerStatuses", default=[]) or []:
        waiting = _get(status, "state", "waiting", "reason")
        if waiting in IMAGE_PULL_REASONS:
            return Problem(IMAGE_PULL_FAILED, f"Cannot pull image {status.get('image')}: {waiting}")
        if waiting == "CrashLoopBackOff":
            return Problem(SERVER_CRASH_LOOP, f"The server keeps exiting: {_failed(status) or waiting}")
    return None


def _failed(status: Mapping[str, Any]) -> str | None:
    """How a container last failed, from its termination message, or None."""
    for state in ("state", "lastState"):
        terminated = _get(status, state, "terminated")
        if terminated and terminated.get("exitCode", 0) != 0:
            message = (terminated.get("message") or "").strip().splitlines()
            detail = message[-1] if message else terminated.get("reason", "Error")
            return f"exit code {terminated.get('exitCode')}: {detail}"
    return None


def _scheduling_problem(spec: InferenceSpec, pod: Mapping[str, Any]) -> Problem | None:
    for condition in _get(pod, "status", "conditions", default=[]) or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                and condition.get("reason") == "Unschedulable":
            scheduler = condition.get("message", "")
            if spec.gpu is None:
                return Problem(UNSCHEDULABLE, f"No node can run the pods: {scheduler}")
            return Problem(WAITING_FOR_GPU, _gpu_message(spec, scheduler))
    return None


def _gpu_message(spec: InferenceSpec, scheduler: str) -> str:
    assert spec.gpu is not None
    missing = []
    if f"Insufficient {spec.gpu.resource_name}" in scheduler:
        missing.append(f"not enough free {spec.gpu.resource_name} ({spec.gpu.count} per pod)")
    if spec.gpu.product and "affinity/selector" in scheduler:
        missing.append(f"no node matching {naming.GPU_PRODUCT_LABEL}={spec.gpu.product}")
    what = "; ".join(missing) or f"no node offers {spec.gpu.count} {spec.gpu.resource_name}"
    return f"Waiting for GPU: {what}. Scheduler: {scheduler}"


def _deployment_problem(deployment: Mapping[str, Any] | None) -> Problem | None:
    for condition in _get(deployment, "status", "conditions", default=[]) or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == PROGRESS_DEADLINE_EXCEEDED:
            return Problem(PROGRESS_DEADLINE_EXCEEDED, condition.get("message", ""))
    return None


def desired_conditions(spec: InferenceSpec, observed: Observed) -> list[tuple[str, str, str, str]]:
    """(type, status, reason, message) for Ready, Progressing, Degraded."""
    dep = observed.deployment
    desired = _get(dep, "spec", "replicas", default=spec.replicas if spec.replicas is not None else 1)
    counts = {k: _get(dep, "status", k, default=0) or 0
              for k in ("replicas", "readyReplicas", "availableReplicas", "updatedReplicas")}
    caught_up = dep is not None and _get(dep, "status", "observedGeneration", default=0) >= _get(
        dep, "metadata", "generation", default=1)
    rolled_out = caught_up and counts["updatedReplicas"] >= desired and counts["replicas"] <= desired \
        and counts["availableReplicas"] >= desired
    problem = pod_problem(spec, observed.pods) or _deployment_problem(dep)
    serving = f"{counts['availableReplicas']}/{desired} replicas serving {spec.model.name}"
    if desired == 0:
        ready = ("False", SCALED_TO_ZERO, "0 replicas requested")
    elif counts["availableReplicas"] >= desired and dep is not None:
        ready = ("True", AVAILABLE, serving)
    elif problem is not None:
        ready = ("False", problem.reason, problem.message)
    else:
        ready = ("False", ROLLOUT_IN_PROGRESS, f"{counts['readyReplicas']}/{desired} replicas ready")
    if rolled_out:
        progressing = ("False", AVAILABLE, f"Rollout complete: {serving}")
    else:
        progressing = ("True", ROLLOUT_IN_PROGRESS,
                       f"{counts['updatedReplicas']}/{desired} replicas updated, {counts['availableReplicas']} available")
    degraded = ("True", problem.reason, problem.message) if problem else ("False", AS_EXPECTED, "No problem observed")
    return [("Ready", *ready), ("Progressing", *progressing), ("Degraded", *degraded)]


def blocked_conditions(reason: str, message: str) -> list[tuple[str, str, str, str]]:
    """Nothing can be built until a person acts (a bad spec, a missing Secret)."""
    return [
        ("Ready", "False", reason, message),
        ("Progressing", "False", reason, message),
        ("Degraded", "True", reason, message),
    ]


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], wanted: Sequence[tuple[str, str, str, str]], generation: int, now: dt.datetime
) -> list[dict[str, Any]]:
    """Conditions as API objects, keeping lastTransitionTime where the status did not change."""
    before = {c.get("type"): c for c in previous or []}
    merged = []
    for kind, status, reason, message in wanted:
        old = before.get(kind)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        merged.append({
            "type": kind, "status": status, "reason": reason, "message": message[:32768],
            "observedGeneration": generation,
            "lastTransitionTime": since or now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        })
    return merged


def compute_status(
    name: str,
    namespace: str,
    generation: int,
    spec: InferenceSpec | None,
    error: str | None,
    observed: Observed,
    previous: Mapping[str, Any],
    now: dt.datetime,
    certificate_not_after: dt.datetime | None = None,
    error_reason: str = INVALID_SPEC,
) -> dict[str, Any]:
    """The whole ``status`` of an InferenceDeployment."""
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "selector": naming.selector_string(name),
        "endpoint": naming.endpoint(name, namespace),
        "headlessEndpoint": naming.headless_endpoint(name, namespace),
    }
    dep = observed.deployment
    status["replicas"] = _get(dep, "status", "replicas", default=0) or 0
    status["readyReplicas"] = _get(dep, "status", "readyReplicas", default=0) or 0
    if spec is None or error is not None:
        wanted = blocked_conditions(error_reason, error or "invalid spec")
    else:
        wanted = desired_conditions(spec, observed)
    if spec is not None:
        desired = _get(dep, "spec", "replicas", default=spec.replicas if spec.replicas is not None else 1)
        status["model"] = spec.model.name
        status["readiness"] = f"{status['readyReplicas']}/{desired}"
        status["autoscaling"] = _autoscaling_text(spec)
    if certificate_not_after is not None:
        status["certificateNotAfter"] = certificate_not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    status["conditions"] = merge_conditions(previous.get("conditions") or [], wanted, generation, now)
    return status


def _autoscaling_text(spec: InferenceSpec) -> str:
    scaling = spec.autoscaling
    if scaling is None:
        return "Off"
    return f"{scaling.min_replicas}-{scaling.max_replicas} @ queue {scaling.target_queue_depth}"
