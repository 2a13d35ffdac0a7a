"""What the optimize init step of the server pods decided, for an InferenceDeployment's status (pure).

Each server pod's ``optimize`` init container ends with a compact report as
its termination message (``kubeinfer-server optimize``: decision, reason,
both sides' figures, the served file's sha256 and method). ``reported``
turns the newest pod's into ``status.optimization``; ``condition`` says in
the ``Optimized`` condition what is served and why (the original, when the
candidate was rejected and ``onReject`` is ``ServeOriginal``); ``problem`` is
why a pod does not start (a rejection under ``onReject: Fail``, or a run
that failed); ``events`` are what to announce when the decision first
appears or changes. Every pod decides on its own node, so pods may differ;
the status shows the newest pod's, and ModelMetadata tells which file
answered a call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from kubeinfer_operator.builders.optimize import OPTIMIZE_CONTAINER
from kubeinfer_operator.spec import OPTIMIZATION_METHODS, InferenceSpec

CONDITION = "Optimized"
ACCEPTED, REJECTED, NOT_MEASURED = "Accepted", "Rejected", "NotMeasured"
DECISIONS = {"accepted": ACCEPTED, "rejected": REJECTED, "not_measured": NOT_MEASURED}  # the CLI's -> status
METHODS = {**{m.lower(): m for m in OPTIMIZATION_METHODS}, "none": "None"}  # the CLI's -> status
# Reasons (the Optimized condition's, and the Ready/Degraded ones of a pod that cannot start).
OPTIMIZATION_ACCEPTED = "OptimizationAccepted"
OPTIMIZATION_NOT_MEASURED = "OptimizationNotMeasured"
SERVING_ORIGINAL = "ServingOriginal"
OPTIMIZATION_REJECTED = "OptimizationRejected"
OPTIMIZATION_FAILED = "OptimizationFailed"
OPTIMIZATION_PENDING = "OptimizationPending"
REJECTED_EXIT_CODE = 3  # kubeinfer-server optimize: not kept


def _step(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
    return next((s for s in statuses if s.get("name") == OPTIMIZE_CONTAINER), None)


def _terminations(step: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The step's last run, then the one before (a restarted step runs again)."""
    return [t for t in ((step.get(state) or {}).get("terminated") for state in ("state", "lastState")) if t]


def _message(terminated: Mapping[str, Any]) -> dict[str, Any] | None:
    """The step's JSON termination message, or None (a log tail, nothing written)."""
    try:
        message = json.loads(terminated.get("message") or "")
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _newest_first(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    return sorted(live, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "", reverse=True)


def reported(pods: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """``status.optimization`` from the newest pod whose optimize step took a decision, or None."""
    for pod in _newest_first(pods):
        step = _step(pod)
        for terminated in _terminations(step) if step else ():
            message = _message(terminated)
            if message is not None and "decision" in message:
                return _status(message)
    return None


def _status(message: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        candidate = message["candidate"]
        return {
            "decision": DECISIONS[message["decision"]], "reason": str(message["reason"])[:2048],
            "method": METHODS[message["method"]],
            "baseline": _figures(message["baseline"]),
            "candidate": {"method": METHODS[candidate["method"]], **_figures(candidate)},
            "servedSha256": str(message["servedSha256"]),
        }
    except (KeyError, TypeError, ValueError):  # not what kubeinfer-server optimize writes: say nothing
        return None


def _figures(side: Mapping[str, Any]) -> dict[str, Any]:
    figures = {"p50Ms": float(side["p50Ms"]), "throughput": float(side["throughput"]), "bytes": int(side["bytes"])}
    return {"metric": float(side["metric"]), **figures} if side.get("metric") is not None else figures


def condition(spec: InferenceSpec, optimization: Mapping[str, Any] | None,
              failure: tuple[str, str] | None) -> tuple[str, str, str]:
    """The Optimized condition (status, reason, message): what the pods serve, and why."""
    if optimization is None:
        if failure is not None:
            return "False", failure[0], failure[1]
        return "Unknown", OPTIMIZATION_PENDING, "No server pod has finished its optimize step yet"
    method, reason, sha = optimization["method"], optimization["reason"], optimization["servedSha256"]
    if method != "None":
        why = OPTIMIZATION_ACCEPTED if optimization["decision"] == ACCEPTED else OPTIMIZATION_NOT_MEASURED
        return "True", why, f"Serving the {method} model (sha256 {sha}): {reason}"
    tried = optimization["candidate"]["method"]
    if spec.optimization is not None and spec.optimization.fail_on_reject:
        return "False", OPTIMIZATION_REJECTED, f"The {tried} candidate was rejected (onReject Fail): {reason}"
    return "False", SERVING_ORIGINAL, f"Serving the original model (sha256 {sha}): the {tried} candidate was " \
                                      f"rejected: {reason}"


def problem(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why this pod's optimize step keeps it from starting: (reason, message), or None."""
    step = _step(pod)
    for terminated in _terminations(step) if step else ():
        code = terminated.get("exitCode", 0)
        if code == 0:
            return None
        message = _message(terminated) or {}
        if code == REJECTED_EXIT_CODE and "decision" in message:
            return OPTIMIZATION_REJECTED, (f"The optimized model was rejected and optimization.onReject is Fail: "
                                           f"{message.get('reason')}")
        detail = message.get("error") or _last_line(terminated)
        why = terminated.get("reason") or "Error"  # OOMKilled says what the exit code does not
        return OPTIMIZATION_FAILED, f"The optimize step failed (exit code {code}, {why}): {detail}"
    return None


def _last_line(terminated: Mapping[str, Any]) -> str:
    """A message that is not the step's JSON (the kubelet's log tail): its last line."""
    lines = (terminated.get("message") or "").strip().splitlines()
    return lines[-1] if lines else "no message"


def problem_of(pods: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """The newest pod's ``problem``, among the pods that have one."""
    return next((found for pod in _newest_first(pods) if (found := problem(pod)) is not None), None)


def events(previous: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> list[tuple[str, str, str]]:
    """(type, reason, message) to announce: the decision, when it first appears or the served file changes."""
    if current is None:
        return []
    before = previous or {}
    if (before.get("decision"), before.get("servedSha256")) == (current["decision"], current["servedSha256"]):
        return []
    served = (f"serving the {current['method']} model" if current["method"] != "None"
              else "serving the original model")
    kind = "Warning" if current["decision"] == REJECTED else "Normal"
    return [(kind, f"Optimization{current['decision']}",
             f"Optimization {current['decision']}, {served} (sha256 {current['servedSha256']}): {current['reason']}")]
