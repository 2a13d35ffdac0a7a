"""A canary rollout, one reconcile at a time (pure): from what is live and the last status.rollout,
which Deployments to build, with how many replicas, and the next status.rollout.

With ``spec.rollout.strategy: Canary`` a change to the pods (a new revision: the
hash of their template) keeps the stable Deployment, rebuilt from the spec it
was made from (``naming.SPEC_ANNOTATION``), and adds a canary Deployment
``NAME-REVISION`` beside it, behind the same Services. Each step holds the
canary at its weight (a share of the serving replicas, ``canary.split``) for at
least ``pauseSeconds`` and until one interval passed. After the last step the
canary is scaled to the whole count; once all of it is available it becomes the
stable side (relabelled, its pods untouched) and the old Deployment is pruned.
``failureLimit`` failed intervals, or ``abort``, roll it back: the canary is
pruned and the status says why; the spec stays as written, and the same
revision is not tried again until the spec changes. ``promote`` skips to the
scale-up; ``pause`` holds the step (analysis goes on), ``resume`` lets it go.
The stable side is found by its ``naming.TRACK_LABEL``; the rollout's progress
lives in status.rollout, so a restarted operator carries on from there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from kubeinfer_operator import canary, naming
from kubeinfer_operator.spec import InferenceSpec

STABLE_PHASE, PROGRESSING, PAUSED, PROMOTED, ROLLED_BACK = "Stable", "Progressing", "Paused", "Promoted", "RolledBack"
SUPERSEDED = "Superseded"
HISTORY = 5
SCALE_UP_RECHECK_SECONDS = 5.0

Event = tuple[str, str, str]  # (Normal|Warning, reason, message)


@dataclasses.dataclass(frozen=True)
class Side:
    """One live server Deployment of the InferenceDeployment."""

    name: str
    revision: str  # its pod template's
    source: str  # the spec it was built from, as JSON ("" when it predates rollouts)
    replicas: int  # spec.replicas as the API server holds it (the HPA's count, with autoscaling)
    available: int
    track: str = naming.STABLE


@dataclasses.dataclass(frozen=True)
class Judged:
    """One interval's verdict, with both sides' figures."""

    verdict: canary.Verdict
    on_canary: canary.Window
    on_stable: canary.Window


@dataclasses.dataclass(frozen=True)
class Target:
    """A Deployment to build: where (name, side, replicas) and whether from the spec as written now."""

    name: str
    track: str
    replicas: int | None  # None: not applied (the HPA owns the stable side's)
    current_spec: bool  # False: rebuilt from the stable side's own spec (Side.source)


@dataclasses.dataclass(frozen=True)
class Plan:
    targets: tuple[Target, ...]  # the stable side first
    status: dict[str, Any] | None  # status.rollout (None: strategy Replace)
    events: tuple[Event, ...] = ()
    clear_command: bool = False  # a promote or abort was acted on: take the annotation away
    recheck_seconds: float | None = None

    @property
    def analysing(self) -> bool:
        return self.status is not None and self.status.get("phase") in (PROGRESSING, PAUSED)


def sides(deployments: Sequence[Mapping[str, Any]], name: str) -> tuple[Side | None, Side | None]:
    """(stable, canary) among the live server Deployments, by their track label; ``NAME`` without one (made
    before rollouts) is the stable side."""
    stable = canary_side = None
    for deployment in deployments:
        side = _side(deployment)
        if side.track == naming.CANARY:
            canary_side = side
        elif side.track == naming.STABLE or (stable is None and side.name == naming.deployment_name(name)):
            stable = side
    return stable, canary_side


def _side(deployment: Mapping[str, Any]) -> Side:
    meta, spec = deployment["metadata"], deployment.get("spec") or {}
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    return Side(
        name=meta["name"], revision=labels.get(naming.REVISION_LABEL, ""),
        source=(meta.get("annotations") or {}).get(naming.SPEC_ANNOTATION, ""),
        replicas=int(spec.get("replicas", 1)),
        available=int((deployment.get("status") or {}).get("availableReplicas", 0) or 0),
        track=(meta.get("labels") or {}).get(naming.TRACK_LABEL, ""),
    )


def plan(spec: InferenceSpec, revision: str, stable: Side | None, canary_side: Side | None,
         previous: Mapping[str, Any] | None, judged: Judged | None, command: str | None, now: dt.datetime,
         broken: str | None = None) -> Plan:
    """This reconcile's Deployments and status.rollout (see the module's docstring). ``broken``: why the
    canary's pods cannot serve (a model that does not load, a crash loop): rolled back at once."""
    previous = dict(previous or {})
    if not spec.rollout.canary or stable is None:
        # A rolling update of the one Deployment (a canary of a Canary strategy given up is pruned).
        name = stable.name if stable is not None else naming.deployment_name(spec.name)
        status = _settled(spec, previous, revision, STABLE_PHASE) if spec.rollout.canary else None
        return Plan((_whole(spec, name, current=True),), status, clear_command=_one_shot(command))
    if revision == stable.revision:
        return _at_rest(spec, stable, previous, command)
    if previous.get("phase") == ROLLED_BACK and previous.get("canaryRevision") == revision:
        return Plan((_whole(spec, stable.name, current=False),), previous, clear_command=_one_shot(command))
    return _progress(spec, revision, stable, canary_side, previous, judged, command, now, broken)


def _at_rest(spec: InferenceSpec, stable: Side, previous: dict[str, Any], command: str | None) -> Plan:
    """The spec's revision is the stable one: no canary (one under way was superseded by the spec)."""
    events: tuple[Event, ...] = ()
    if previous.get("phase") in (PROGRESSING, PAUSED):
        reason = "the spec went back to the stable revision"
        previous = {**previous, "history": _history(previous, previous.get("canaryRevision", ""), previous.get(
            "model", ""), SUPERSEDED, reason, previous.get("stepStartedAt", ""))}
        events = (("Normal", "RolloutSuperseded", f"Canary {previous.get('canaryRevision')} dropped: {reason}"),)
        phase = STABLE_PHASE
    else:
        # After a promotion the phase says so until the next rollout; after a rollback, a spec back at the
        # stable revision is nothing to be degraded about.
        phase = PROMOTED if previous.get("phase") == PROMOTED else STABLE_PHASE
    status = _settled(spec, previous, stable.revision, phase)
    return Plan((_whole(spec, stable.name, current=True),), status, events, clear_command=_one_shot(command))


def _settled(spec: InferenceSpec, previous: Mapping[str, Any], revision: str, phase: str) -> dict[str, Any]:
    keep = {k: previous[k] for k in ("canaryRevision", "lastAnalysis", "history", "message") if k in previous}
    if phase == STABLE_PHASE:
        keep.pop("message", None)
    return {"phase": phase, "stableRevision": revision, **keep}


def _whole(spec: InferenceSpec, name: str, current: bool) -> Target:
    replicas = spec.desired_replicas if spec.autoscaling is None else None
    return Target(name, naming.STABLE, replicas, current)


def _progress(spec: InferenceSpec, revision: str, stable: Side, canary_side: Side | None,
              previous: dict[str, Any], judged: Judged | None, command: str | None, now: dt.datetime,
              broken: str | None) -> Plan:
    steps, analysis = spec.rollout.steps, spec.rollout.analysis
    events: list[Event] = []
    state = previous
    if previous.get("canaryRevision") != revision or previous.get("phase") not in (PROGRESSING, PAUSED):
        state = {"history": previous.get("history", []), "canaryRevision": revision, "step": 1,
                 "stepStartedAt": _at(now), "failures": 0, "passes": 0, "model": spec.model.uri}
        state = {k: v for k, v in state.items() if k != "history" or v}
        events.append(("Normal", "RolloutStarted", f"Canary {revision} of {spec.model.uri} beside {stable.revision}: "
                                                   f"step 1/{len(steps)} at {steps[0].weight}%"))
    state = {**state, "stableRevision": stable.revision}
    if command == "abort":
        return _rolled_back(spec, stable, state, "aborted: kubeinfer.io/rollout=abort", now, events, clear=True)
    if broken is not None:
        return _rolled_back(spec, stable, state, f"its pods do not serve: {broken}", now, events)
    promoting = state["step"] > len(steps)
    if command == "promote" and not promoting:
        state = {**state, "step": len(steps) + 1, "stepStartedAt": _at(now), "promotedBy": "Command"}
        events.append(("Normal", "RolloutPromoting", f"Canary {revision}: promoted by kubeinfer.io/rollout=promote"))
        promoting = True
    paused = command == "pause"
    if judged is not None and not promoting:
        state = {**state, "lastAnalysis": _figures(judged, now)}
        if judged.verdict.outcome == canary.FAIL:
            state = {**state, "failures": state["failures"] + 1}
            events.append(("Warning", "AnalysisFailed", f"Canary {revision}: {judged.verdict.reason} "
                                                        f"({state['failures']}/{analysis.failure_limit})"))
            if state["failures"] >= analysis.failure_limit:
                return _rolled_back(spec, stable, state, judged.verdict.reason, now, events)
        elif judged.verdict.outcome == canary.PASS:
            state = {**state, "passes": state["passes"] + 1}
    if not promoting and not paused and _step_done(state, steps[state["step"] - 1].pause_seconds, now):
        state = {**state, "step": state["step"] + 1, "stepStartedAt": _at(now), "passes": 0}
        promoting = state["step"] > len(steps)
        what = "scaling up to be promoted" if promoting else \
            f"step {state['step']}/{len(steps)} at {steps[state['step'] - 1].weight}%"
        events.append(("Normal", "RolloutStep", f"Canary {revision}: {what}"))
    canary_name = canary_side.name if canary_side is not None and canary_side.revision == revision \
        else naming.canary_deployment_name(spec.name, revision)
    if promoting:
        return _scale_up(spec, revision, stable, canary_side, canary_name, state, now, events, command)
    weight = steps[state["step"] - 1].weight
    stable_replicas, canary_replicas = _split(spec, stable, weight)
    state = {**state, "phase": PAUSED if paused else PROGRESSING, "weight": weight,
             "stableReplicas": stable_replicas if stable_replicas is not None else stable.replicas,
             "canaryReplicas": canary_replicas,
             "message": _message(state, steps, paused, analysis.min_requests)}
    targets = (Target(stable.name, naming.STABLE, stable_replicas, False),
               Target(canary_name, naming.CANARY, canary_replicas, True))
    return Plan(targets, state, tuple(events), clear_command=command == "promote",
                recheck_seconds=_next_check(analysis.interval_seconds,
                                            steps[state["step"] - 1].pause_seconds - _elapsed(state, now)))


def _next_check(interval_seconds: int, pause_left: float) -> float:
    """Seconds to the next look: the pause's end, or the next interval's verdict once the pause is over
    (a canary without traffic waits at its step: once an interval, not once a second)."""
    if pause_left <= 0:
        return float(interval_seconds)
    return float(min(interval_seconds, max(1.0, pause_left)))


def _split(spec: InferenceSpec, stable: Side, weight: int) -> tuple[int | None, int]:
    """(stable replicas to apply, or None where the HPA owns them; canary replicas) at ``weight``."""
    if spec.autoscaling is not None:
        return None, canary.canary_beside(stable.replicas, weight)
    return canary.split(spec.desired_replicas, weight)


def _scale_up(spec: InferenceSpec, revision: str, stable: Side, canary_side: Side | None, canary_name: str,
              state: dict[str, Any], now: dt.datetime, events: list[Event], command: str | None) -> Plan:
    """After the last step: the canary at the whole count; once it is all available, it is the stable side."""
    whole = spec.desired_replicas if spec.autoscaling is None else max(stable.replicas, 1)
    ready = canary_side is not None and canary_side.revision == revision and canary_side.available >= whole
    if ready:
        reason = "kubeinfer.io/rollout=promote" if state.get("promotedBy") == "Command" else \
            f"all {len(spec.rollout.steps)} steps passed"
        status = {"phase": PROMOTED, "stableRevision": revision, "canaryRevision": revision,
                  "history": _history(state, revision, spec.model.uri, PROMOTED, reason, _at(now)),
                  **({"lastAnalysis": state["lastAnalysis"]} if "lastAnalysis" in state else {})}
        events.append(("Normal", "Promoted", f"Canary {revision} of {spec.model.uri} promoted ({reason}); "
                                             f"{stable.revision} scaled away"))
        return Plan((_whole(spec, canary_name, current=True),), status, tuple(events),
                    clear_command=_one_shot(command))
    stable_replicas = stable.replicas if spec.autoscaling is None else None
    state = {**state, "phase": PROGRESSING, "weight": 100, "stableReplicas": stable.replicas, "canaryReplicas": whole,
             "message": f"Scaling the canary up to {whole} replicas before it takes over"}
    targets = (Target(stable.name, naming.STABLE, stable_replicas, False),
               Target(canary_name, naming.CANARY, whole, True))
    return Plan(targets, state, tuple(events), clear_command=_one_shot(command),
                recheck_seconds=SCALE_UP_RECHECK_SECONDS)


def _rolled_back(spec: InferenceSpec, stable: Side, state: Mapping[str, Any], reason: str, now: dt.datetime,
                 events: list[Event], clear: bool = False) -> Plan:
    revision = state["canaryRevision"]
    status = {"phase": ROLLED_BACK, "stableRevision": stable.revision, "canaryRevision": revision,
              "message": f"Canary {revision} rolled back: {reason}",
              "history": _history(state, revision, spec.model.uri, ROLLED_BACK, reason, _at(now)),
              **({"lastAnalysis": state["lastAnalysis"]} if "lastAnalysis" in state else {})}
    events.append(("Warning", "RolledBack", f"Canary {revision} of {spec.model.uri} rolled back: {reason}; "
                                            f"{stable.revision} serves everything"))
    return Plan((_whole(spec, stable.name, current=False),), status, tuple(events), clear_command=clear)


def _one_shot(command: str | None) -> bool:
    """A promote or abort, acted on (or with nothing to act on): the annotation is taken away."""
    return command in ("promote", "abort")


def _step_done(state: Mapping[str, Any], pause_seconds: int, now: dt.datetime) -> bool:
    return state["passes"] >= 1 and _elapsed(state, now) >= pause_seconds


def _elapsed(state: Mapping[str, Any], now: dt.datetime) -> float:
    started = dt.datetime.strptime(state["stepStartedAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return (now - started).total_seconds()


def _message(state: Mapping[str, Any], steps: Sequence[Any], paused: bool, min_requests: int) -> str:
    step = state["step"]
    where = f"Step {step}/{len(steps)} at {steps[step - 1].weight}%"
    if paused:
        return f"{where}: paused (kubeinfer.io/rollout=pause)"
    if not state["passes"]:
        return f"{where}: waiting for an interval with at least {min_requests} requests on the canary that passes"
    return f"{where}: {state['passes']} interval(s) passed"


def _figures(judged: Judged, now: dt.datetime) -> dict[str, Any]:
    figures: dict[str, Any] = {"requests": judged.on_canary.requests,
                               "errorRate": round(judged.on_canary.error_rate, 6),
                               "stableRequests": judged.on_stable.requests, "verdict": judged.verdict.outcome,
                               "reason": judged.verdict.reason, "at": _at(now)}
    if judged.on_canary.p99_ms is not None:
        figures["p99Ms"] = judged.on_canary.p99_ms
    if judged.on_stable.p99_ms is not None:
        figures["stableP99Ms"] = judged.on_stable.p99_ms
    return figures


def _history(state: Mapping[str, Any], revision: str, model: str, outcome: str, reason: str,
             at: str) -> list[dict[str, Any]]:
    entry = {"revision": revision, "model": model, "outcome": outcome, "reason": reason, "at": at}
    return [*state.get("history", []), entry][-HISTORY:]


def _at(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
