"""Status of an InferenceDeployment, computed from what the cluster reports (pure).

Conditions follow the Kubernetes API conventions: ``Ready`` (serving at the
desired capacity), ``Progressing`` (a rollout is under way) and ``Degraded``
(something needs a person), each with a CamelCase reason a person can act on;
with ``spec.optimization`` also ``Optimized`` and ``status.optimization``
(``optimization_status``: what the pods' optimize step decided); with
``spec.rightSizing`` also ``RecommendationProvided`` and ``status.recommendation``
(``rightsizing``: decided before, handed in).
``lastTransitionTime`` only moves when a condition's status changes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from kubeinfer_operator import naming, rollout
from kubeinfer_operator import optimization_status as optimization
from kubeinfer_operator.builders.optimize import OPTIMIZE_CONTAINER
from kubeinfer_operator.builders.podparts import FETCH_CONTAINER
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
INVALID_MODEL = "InvalidModel"
LOADING_MODEL = "LoadingModel"
PROVIDER_FALLBACK = "ProviderFallback"
CANARY_IN_PROGRESS = "CanaryInProgress"
RECOMMENDATION_PROVIDED = "RecommendationProvided"  # the condition of spec.rightSizing (``rightsizing``)
# How kubeinfer-server says that a model file does not load (docs/server-contract.md).
INVALID_MODEL_MARKER = "is not a loadable ONNX model"
SERVER_RESTARTED = "ServerRestarted"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
SCALED_TO_ZERO = "ScaledToZero"
AS_EXPECTED = "AsExpected"
IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")
# The runtime could not start the container at all (e.g. its command is not in the image).
START_FAILURE_REASONS = ("StartError", "RunContainerError", "CreateContainerError")


@dataclasses.dataclass(frozen=True)
class Observed:
    """The children the status is computed from, as the API server returned them."""

    deployment: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()
    providers: Mapping[str, str] = dataclasses.field(default_factory=dict)  # pod -> what its server runs on
    fetched: Mapping[str, str] = dataclasses.field(default_factory=dict)  # pod -> how far its fetch has come


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why the pods do not serve, or why nothing can be built: a CamelCase reason and a message for a person."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Condition:
    """One entry of ``status.conditions``, before its generation and transition time are stamped on."""

    type: str
    status: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class StatusInputs:
    """What the status of one InferenceDeployment is computed from, besides its previous status and the clock.

    ``blocked``: nothing can be built until a person acts (a bad spec, a missing
    Secret); it is required when ``spec`` is None (the spec did not parse).
    """

    name: str
    namespace: str
    generation: int
    spec: InferenceSpec | None
    observed: Observed = Observed()
    blocked: Problem | None = None
    certificate_not_after: dt.datetime | None = None
    rollout: Mapping[str, Any] | None = None  # status.rollout as planned (``rollout``)
    recommendation: Mapping[str, Any] | None = None  # status.recommendation as decided (``rightsizing``)
    recommendation_condition: tuple[str, str, str] | None = None  # RecommendationProvided: status, reason, message

    def __post_init__(self) -> None:
        if self.spec is None and self.blocked is None:
            raise ValueError("a status without a spec needs the problem that blocks it")


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
        for problem in (_fetch_problem(spec, pod), _optimize_problem(pod), _server_problem(spec, pod),
                        _scheduling_problem(spec, pod)):
            if problem is not None:
                found.setdefault(problem.reason, problem)
    for reason in (MODEL_FETCH_FAILED, optimization.OPTIMIZATION_REJECTED, optimization.OPTIMIZATION_FAILED,
                   INVALID_MODEL, IMAGE_PULL_FAILED, SERVER_CRASH_LOOP, SERVER_RESTARTED, WAITING_FOR_GPU,
                   UNSCHEDULABLE):
        if reason in found:
            return found[reason]
    return None


def _fetch_problem(spec: InferenceSpec, pod: Mapping[str, Any]) -> Problem | None:
    for status in _get(pod, "status", "initContainerStatuses", default=[]) or []:
        if status.get("name") != FETCH_CONTAINER:
            continue
        waiting = _get(status, "state", "waiting", "reason")
        if waiting in IMAGE_PULL_REASONS:
            return Problem(IMAGE_PULL_FAILED, f"Cannot pull image {status.get('image')}: {waiting}")
        cannot_start = _start_failure(status)
        if cannot_start:
            return cannot_start
        failed = _failed(status)
        if failed:
            return Problem(MODEL_FETCH_FAILED, f"Fetching model {spec.model.uri} failed: {failed}")
    return None


def _optimize_problem(pod: Mapping[str, Any]) -> Problem | None:
    found = optimization.problem(pod)
    return Problem(*found) if found else None


def _server_problem(spec: InferenceSpec, pod: Mapping[str, Any]) -> Problem | None:
    for status in _get(pod, "status", "containerStatuses", default=[]) or []:
        invalid = _invalid_model(spec, status)
        if invalid:
            return invalid
        waiting = _get(status, "state", "waiting", "reason")
        if waiting in IMAGE_PULL_REASONS:
            return Problem(IMAGE_PULL_FAILED, f"Cannot pull image {status.get('image')}: {waiting}")
        cannot_start = _start_failure(status)
        if cannot_start:
            return cannot_start
        if waiting == "CrashLoopBackOff":
            return Problem(SERVER_CRASH_LOOP, f"The server keeps exiting: {_failed(status) or waiting}")
        # Killed or exited once and restarted by the kubelet, not serving again yet.
        if not status.get("ready") and _get(status, "lastState", "terminated"):
            return Problem(SERVER_RESTARTED, f"The server restarted after it exited "
                                             f"({_exit(_get(status, 'lastState', 'terminated'))}); "
                                             f"{status.get('restartCount', 0)} restarts so far")
    return None


def _invalid_model(spec: InferenceSpec, status: Mapping[str, Any]) -> Problem | None:
    """The server exited because the model file does not load: said on its first exit, not after back-off."""
    for state in ("state", "lastState"):
        terminated = _get(status, state, "terminated") or {}
        lines = [line for line in (terminated.get("message") or "").splitlines() if INVALID_MODEL_MARKER in line]
        if lines:
            detail = lines[-1].split(INVALID_MODEL_MARKER, 1)[1].lstrip(": ").strip()
            return Problem(INVALID_MODEL, f"The model {spec.model.uri} is not a valid ONNX model: {detail}")
    return None


def loading(spec: InferenceSpec, pods: Sequence[Mapping[str, Any]],
            fetched: Mapping[str, str] | None = None) -> str | None:
    """What a pod that does not serve yet is busy with: fetching the model (how far, when ``fetched``
    says for that pod), or loading it; else None."""
    for pod in pods:
        if _get(pod, "metadata", "deletionTimestamp"):
            continue
        if fetch_running(pod):
            progress = (fetched or {}).get(pod["metadata"]["name"])
            return f"Fetching the model from {spec.model.uri}" + (f": {progress}" if progress else "")
        for status in _get(pod, "status", "initContainerStatuses", default=[]) or []:
            if status.get("name") == OPTIMIZE_CONTAINER and _running(status) and spec.optimization:
                return f"Optimizing the model ({spec.optimization.method}) and measuring it beside the original"
        for status in _get(pod, "status", "containerStatuses", default=[]) or []:
            if _running(status) and not status.get("ready"):
                return f"Loading and warming up the model {spec.model.name}"
    return None


def fetch_running(pod: Mapping[str, Any]) -> bool:
    """Whether ``pod`` (not being deleted) is in its model fetch step now."""
    return not _get(pod, "metadata", "deletionTimestamp") and any(
        status.get("name") == FETCH_CONTAINER and _running(status)
        for status in _get(pod, "status", "initContainerStatuses", default=[]) or [])


def _running(status: Mapping[str, Any]) -> bool:
    return "running" in (status.get("state") or {})  # the kubelet may report running: {} (no startedAt yet)


def _exit(terminated: Mapping[str, Any]) -> str:
    code = terminated.get("exitCode", 0)
    # 128 + n: killed by signal n (137: SIGKILL, e.g. the OOM killer or a kill -9).
    signal = f", signal {code - 128}" if code > 128 else ""
    return f"exit code {code}{signal}: {terminated.get('reason', 'Error')}"


def _start_failure(status: Mapping[str, Any]) -> Problem | None:
    """The container runtime could not start the container (a server image without the command)."""
    waiting = _get(status, "state", "waiting") or {}
    for state in (_get(status, "state", "terminated"), _get(status, "lastState", "terminated"), waiting):
        if state and state.get("reason") in START_FAILURE_REASONS:
            detail = (state.get("message") or state["reason"]).strip().splitlines()[-1]
            return Problem(SERVER_CRASH_LOOP, f"The {status.get('name')} container of image "
                                              f"{status.get('image')} cannot start: {detail}")
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


@dataclasses.dataclass(frozen=True)
class _Rollout:
    """The Deployment's progress towards ``desired`` replicas."""

    desired: int
    replicas: int
    ready: int
    available: int
    updated: int
    caught_up: bool
    exists: bool

    @classmethod
    def of(cls, spec: InferenceSpec, dep: Mapping[str, Any] | None) -> _Rollout:
        def count(key: str) -> int:
            return int(_get(dep, "status", key, default=0) or 0)

        return cls(
            desired=_desired_replicas(spec, dep),
            replicas=count("replicas"),
            ready=count("readyReplicas"),
            available=count("availableReplicas"),
            updated=count("updatedReplicas"),
            caught_up=dep is not None and _caught_up(dep),
            exists=dep is not None,
        )

    @property
    def complete(self) -> bool:
        return self.caught_up and self.updated >= self.desired and self.replicas <= self.desired \
            and self.available >= self.desired


def _caught_up(dep: Mapping[str, Any]) -> bool:
    """Whether the Deployment controller has acted on the Deployment's latest spec."""
    return bool(_get(dep, "status", "observedGeneration", default=0) >= _get(dep, "metadata", "generation", default=1))


def _desired_replicas(spec: InferenceSpec, dep: Mapping[str, Any] | None) -> int:
    """The Deployment's replicas as it holds them (an HPA may have set them), else the spec's."""
    return int(_get(dep, "spec", "replicas", default=spec.desired_replicas))


def desired_conditions(spec: InferenceSpec, observed: Observed,
                       canary: Mapping[str, Any] | None = None) -> list[Condition]:
    """Ready, Progressing and Degraded, from the (stable) Deployment and its pods; ``canary``: status.rollout."""
    progress = _Rollout.of(spec, observed.deployment)
    pods = stable_pods(observed.pods, canary)
    problem = pod_problem(spec, pods) or _deployment_problem(observed.deployment)
    busy = loading(spec, pods, observed.fetched)
    degraded = problem or provider_fallback(spec, observed.providers) or _rolled_back(canary)
    progressing = _canary_progressing(canary) or _progressing(spec, progress)
    wanted = [_ready(spec, progress, problem, busy), progressing, _degraded(degraded)]
    if spec.optimization is not None:
        wanted.append(_optimized(spec, observed.pods))
    return wanted


def stable_pods(pods: Sequence[Mapping[str, Any]], canary: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The pods that are not a running canary's: what Ready and the pods' problems speak of."""
    if not canary or canary.get("phase") not in (rollout.PROGRESSING, rollout.PAUSED):
        return list(pods)
    return [p for p in pods if naming.revision_of(p) != canary.get("canaryRevision")]


def _canary_progressing(canary: Mapping[str, Any] | None) -> Condition | None:
    if not canary or canary.get("phase") not in (rollout.PROGRESSING, rollout.PAUSED):
        return None
    return Condition("Progressing", "True", CANARY_IN_PROGRESS,
                     f"Canary {canary.get('canaryRevision')}: {canary.get('message', '')}")


def _rolled_back(canary: Mapping[str, Any] | None) -> Problem | None:
    if not canary or canary.get("phase") != rollout.ROLLED_BACK:
        return None
    return Problem(rollout.ROLLED_BACK, f"{canary.get('message', '')}; revision {canary.get('stableRevision')} serves "
                                       "(change the spec to try again)")


def provider_fallback(spec: InferenceSpec, providers: Mapping[str, str]) -> Problem | None:
    """A server that asked for a GPU provider first and runs on another (the CPU fallback)."""
    asked = spec.runtime.execution_providers[0]
    wanted = naming.ORT_PROVIDERS[asked]
    for pod, served in sorted(providers.items()):
        got = served.split(",")[0]
        if got != wanted:
            return Problem(PROVIDER_FALLBACK, f"Asked for {asked} first, but pod {pod} runs the model on {got} "
                                              f"(providers: {served}): no {asked} in the server's onnxruntime "
                                              "build or on its node; it serves, more slowly than asked")
    return None


def _optimized(spec: InferenceSpec, pods: Sequence[Mapping[str, Any]]) -> Condition:
    """With spec.optimization: what the pods serve, and why (``optimization_status``)."""
    reported, failed = optimization.reported(pods), optimization.problem_of(pods)
    return Condition(optimization.CONDITION, *optimization.condition(spec, reported, failed))


def _serving(spec: InferenceSpec, rollout: _Rollout) -> str:
    return f"{rollout.available}/{rollout.desired} replicas serving {spec.model.name}"


def _ready(spec: InferenceSpec, rollout: _Rollout, problem: Problem | None, busy: str | None = None) -> Condition:
    if rollout.desired == 0:
        return Condition("Ready", "False", SCALED_TO_ZERO, "0 replicas requested")
    if rollout.available >= rollout.desired and rollout.exists:
        return Condition("Ready", "True", AVAILABLE, _serving(spec, rollout))
    if problem is not None:
        return Condition("Ready", "False", problem.reason, problem.message)
    if busy is not None:
        return Condition("Ready", "False", LOADING_MODEL, f"{busy}; {rollout.ready}/{rollout.desired} replicas ready")
    return Condition("Ready", "False", ROLLOUT_IN_PROGRESS, f"{rollout.ready}/{rollout.desired} replicas ready")


def _progressing(spec: InferenceSpec, rollout: _Rollout) -> Condition:
    if rollout.complete:
        return Condition("Progressing", "False", AVAILABLE, f"Rollout complete: {_serving(spec, rollout)}")
    message = f"{rollout.updated}/{rollout.desired} replicas updated, {rollout.available} available"
    return Condition("Progressing", "True", ROLLOUT_IN_PROGRESS, message)


def _degraded(problem: Problem | None) -> Condition:
    if problem is None:
        return Condition("Degraded", "False", AS_EXPECTED, "No problem observed")
    return Condition("Degraded", "True", problem.reason, problem.message)


def blocked_conditions(blocked: Problem) -> list[Condition]:
    """Nothing can be built until a person acts (a bad spec, a missing Secret)."""
    return [
        Condition("Ready", "False", blocked.reason, blocked.message),
        Condition("Progressing", "False", blocked.reason, blocked.message),
        Condition("Degraded", "True", blocked.reason, blocked.message),
    ]


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], wanted: Sequence[Condition], generation: int, now: dt.datetime
) -> list[dict[str, Any]]:
    """Conditions as API objects, keeping lastTransitionTime where the status did not change."""
    before = {c.get("type"): c for c in previous or []}
    merged = []
    for condition in wanted:
        old = before.get(condition.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == condition.status else None
        merged.append({
            "type": condition.type, "status": condition.status, "reason": condition.reason,
            "message": condition.message[:32768],
            "observedGeneration": generation,
            "lastTransitionTime": since or _timestamp(now),
        })
    return merged


def compute_status(inputs: StatusInputs, previous: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The whole ``status`` of an InferenceDeployment."""
    name, namespace, spec, dep = inputs.name, inputs.namespace, inputs.spec, inputs.observed.deployment
    status: dict[str, Any] = {
        "observedGeneration": inputs.generation,
        "selector": naming.selector_string(name),
        "endpoint": naming.endpoint(name, namespace),
        "headlessEndpoint": naming.headless_endpoint(name, namespace),
        "replicas": _get(dep, "status", "replicas", default=0) or 0,
        "readyReplicas": _get(dep, "status", "readyReplicas", default=0) or 0,
    }
    if spec is not None:
        status["model"] = spec.model.name
        status["readiness"] = f"{status['readyReplicas']}/{_desired_replicas(spec, dep)}"
        status["autoscaling"] = _autoscaling_text(spec)
    if inputs.certificate_not_after is not None:
        status["certificateNotAfter"] = _timestamp(inputs.certificate_not_after)
    optimized = optimization.reported(inputs.observed.pods) if spec is not None and spec.optimization else None
    if optimized is not None:
        status["optimization"] = optimized
    if inputs.rollout is not None:
        status["rollout"] = dict(inputs.rollout)
    if inputs.recommendation is not None:
        status["recommendation"] = dict(inputs.recommendation)
    status["conditions"] = merge_conditions(
        previous.get("conditions") or [], _wanted_conditions(inputs), inputs.generation, now)
    return status


def _wanted_conditions(inputs: StatusInputs) -> list[Condition]:
    if inputs.blocked is not None:
        return blocked_conditions(inputs.blocked)
    assert inputs.spec is not None  # StatusInputs holds a spec or what blocks it
    wanted = desired_conditions(inputs.spec, inputs.observed, inputs.rollout)
    if inputs.recommendation_condition is not None:
        wanted.append(Condition(RECOMMENDATION_PROVIDED, *inputs.recommendation_condition))
    return wanted


def _timestamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _autoscaling_text(spec: InferenceSpec) -> str:
    scaling = spec.autoscaling
    if scaling is None:
        return "Off"
    return f"{scaling.min_replicas}-{scaling.max_replicas} @ queue {scaling.target_queue_depth}"
