"""status.recommendation from spec.rightSizing and the measured usage, and the in-place resizes it asks for (pure).

``decide`` turns what was measured (``Measured``: the server containers'
usage samples, their OOM kills, what loading the model took, or why nothing
could be read) into the new ``status.recommendation``, the condition
``RecommendationProvided`` and, when the recommendation changed, an Event. The
current recommendation stays, to the byte, unless the new one differs by more
than the margin and the last change is ``recommender.MIN_CHANGE_INTERVAL_SECONDS``
old (``recommender.needs_change``), or it no longer fits the spec's clamps: a
settled InferenceDeployment's status does not change, and ``at`` moves only
with the figures.

``resizes`` (InPlace): the ready server pods whose server container's
requests differ from the recommendation by more than the margin, with the
resources to patch onto their ``resize`` subresource. Requests become the
recommendation; a limit keeps its ratio to its request, so the pod's QoS class,
which cannot change in place, stays what it is.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from kubeinfer_operator.drift import quantity
from kubeinfer_operator.recommender import Policy, Recommendation, Sample, needs_change, recommend

RECOMMENDED = "Recommended"
COLLECTING_USAGE = "CollectingUsage"
NO_USAGE_SOURCE = "NoUsageSource"
USAGE_UNAVAILABLE = "UsageUnavailable"
SERVER_CONTAINER = "server"
MIB = 2**20
RESIZE_CONDITIONS = ("PodResizePending", "PodResizeInProgress")  # the kubelet has not finished the last one


@dataclasses.dataclass(frozen=True)
class Measured:
    """What the usage source gave for one InferenceDeployment's server containers."""

    samples: tuple[Sample, ...] = ()
    ooms: tuple[Sample, ...] = ()  # one per OOM kill: when, and the memory it was killed at
    load_floor_memory: float = 0.0  # bytes: the most a server took while loading its model
    problem: tuple[str, str] | None = None  # (reason, message): nothing could be read


@dataclasses.dataclass(frozen=True)
class Decision:
    recommendation: dict[str, Any] | None  # status.recommendation (the current one when nothing changed)
    condition: tuple[str, str, str]  # (status, reason, message) of RecommendationProvided
    event: tuple[str, str] | None = None  # (reason, message): a new recommendation


@dataclasses.dataclass(frozen=True)
class Resize:
    pod: str
    uid: str
    resources: dict[str, dict[str, str]]  # the server container's new requests (and limits)
    before: str  # its requests until now, for the Event


def decide(policy: Policy, measured: Measured, current: Mapping[str, Any] | None, now: dt.datetime) -> Decision:
    """The new status.recommendation, its condition, and an Event when it changed."""
    current = dict(current) if current else None
    found = recommend(measured.samples, policy, measured.ooms, measured.load_floor_memory) \
        if measured.problem is None else None
    if found is None:
        return Decision(current, _without_new(policy, measured, current))
    if current is not None and not _replaced_by(current, found, policy, now):
        return Decision(current, ("True", RECOMMENDED, describe(current)))
    new = as_status(found, policy, now)
    was = f", was {_figures(current)}" if current else ""
    return Decision(new, ("True", RECOMMENDED, describe(new)),
                    (RECOMMENDED, f"Recommended {_figures(new)} for the server container{was}"))


def _without_new(policy: Policy, measured: Measured, current: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """The condition when nothing new can be recommended: why, and whether the current one stays."""
    reason, message = measured.problem or (
        COLLECTING_USAGE, f"Fewer than {policy.min_samples} usage samples of the server containers so far "
                          "(rightSizing.minSamples)")
    if current is None:
        return "False", reason, message
    return "True", reason, f"{message}; keeping the recommendation made at {current.get('at')}"


def _replaced_by(current: Mapping[str, Any], found: Recommendation, policy: Policy, now: dt.datetime) -> bool:
    """Whether ``found`` replaces the current recommendation: hysteresis, unless the clamps changed under it."""
    cpu, memory = _value(current.get("cpu")), _value(current.get("memory"))
    if cpu is None or memory is None or not _within(cpu, memory, current, policy):
        return True
    return needs_change(cpu, memory, found, policy.margin, epoch(current.get("at")), now.timestamp())


def _within(cpu: float, memory: float, current: Mapping[str, Any], policy: Policy) -> bool:
    over_memory = memory > policy.memory_max and "model load" not in (current.get("basis") or {}).get("clampedBy", [])
    return policy.cpu_min <= cpu <= policy.cpu_max and memory >= policy.memory_min and not over_memory


def as_status(found: Recommendation, policy: Policy, now: dt.datetime) -> dict[str, Any]:
    """status.recommendation as the API server gives it back: quantities as Kubernetes writes them, whole
    seconds, a list (not a tuple), and no empty clampedBy (so the next reconcile finds it unchanged)."""
    basis: dict[str, Any] = {
        "samples": found.samples,
        "windowSeconds": int(found.window_seconds),
        "cpuPercentile": cpu_quantity(found.cpu_percentile_value),
        "memoryPeak": memory_quantity(found.memory_peak),
        "margin": policy.margin,
    }
    if found.clamped_by:
        basis["clampedBy"] = list(found.clamped_by)
    return {"cpu": cpu_quantity(found.cpu), "memory": memory_quantity(found.memory),
            "intraOpThreads": found.intra_op_threads, "basis": basis, "at": now.strftime("%Y-%m-%dT%H:%M:%SZ")}


def describe(recommendation: Mapping[str, Any]) -> str:
    basis = recommendation.get("basis") or {}
    hours = (basis.get("windowSeconds") or 0) / 3600
    return (f"{_figures(recommendation)} ({recommendation.get('intraOpThreads')} intra-op threads) for the server "
            f"container, from {basis.get('samples')} usage samples over {hours:.1f} h")


def _figures(recommendation: Mapping[str, Any]) -> str:
    return f"cpu {recommendation.get('cpu')}, memory {recommendation.get('memory')}"


def cpu_quantity(cores: float) -> str:
    """Cores as a quantity, rounded up to whole millicores: "2", "1500m"."""
    millis = math.ceil(round(cores * 1000, 6))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def memory_quantity(size: float) -> str:
    """Bytes as a quantity, rounded up to whole MiB: "900Mi", "2Gi"."""
    mib = math.ceil(round(size / MIB, 6))
    return f"{mib // 1024}Gi" if mib and mib % 1024 == 0 else f"{mib}Mi"


def _value(text: Any) -> float | None:
    parsed = quantity(str(text)) if text is not None else None
    return float(parsed) if parsed is not None else None


def epoch(timestamp: Any) -> float | None:
    """Seconds since 1970 of a Kubernetes timestamp (2026-12-02T10:00:00Z), or None."""
    try:
        return dt.datetime.strptime(str(timestamp), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def resizes(recommendation: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], margin: float,
            resized_at: Mapping[str, float], now: float) -> list[Resize]:
    """The ready server pods to resize to ``recommendation`` (``resized_at``: pod UID -> its last resize)."""
    target = _as_recommendation(recommendation)
    if target is None:
        return []
    found = []
    for pod in pods:
        container = server_container(pod)
        if container is None or not _resizable(pod):
            continue
        resources = container.get("resources") or {}
        requests = resources.get("requests") or {}
        cpu, memory = _value(requests.get("cpu")), _value(requests.get("memory"))
        uid = pod["metadata"].get("uid", pod["metadata"]["name"])
        if cpu is None or memory is None or not needs_change(cpu, memory, target, margin, resized_at.get(uid), now):
            continue
        found.append(Resize(pod["metadata"]["name"], uid, resized(resources, recommendation),
                            f"cpu {requests.get('cpu')}, memory {requests.get('memory')}"))
    return found


def _as_recommendation(recommendation: Mapping[str, Any]) -> Recommendation | None:
    cpu, memory = _value(recommendation.get("cpu")), _value(recommendation.get("memory"))
    if cpu is None or memory is None:
        return None
    return Recommendation(cpu=cpu, memory=memory, intra_op_threads=int(recommendation.get("intraOpThreads") or 1),
                          samples=0, window_seconds=0, cpu_percentile_value=0, memory_peak=0, clamped_by=())


def resized(resources: Mapping[str, Any], recommendation: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The container's resources at the recommendation: requests as recommended, each limit at its old ratio."""
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    new = {"requests": {"cpu": str(recommendation["cpu"]), "memory": str(recommendation["memory"])}}
    scaled = {}
    for key, as_quantity in (("cpu", cpu_quantity), ("memory", memory_quantity)):
        limit, request = quantity(str(limits.get(key, ""))), quantity(str(requests.get(key, "")))
        if limit is not None and request:
            wanted = quantity(new["requests"][key]) or Decimal(0)
            scaled[key] = as_quantity(float(wanted * limit / request))
    if scaled:
        new["limits"] = scaled
    return new


def server_container(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    containers: list[Mapping[str, Any]] = (pod.get("spec") or {}).get("containers") or []
    return next((c for c in containers if c.get("name") == SERVER_CONTAINER), None)


def _resizable(pod: Mapping[str, Any]) -> bool:
    """Ready, not leaving, and no resize of it still under way."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = {c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
    return conditions.get("Ready") == "True" and not any(conditions.get(c) == "True" for c in RESIZE_CONDITIONS)
