"""The I/O around ``rollout.plan``, for one reconcile of an InferenceDeployment.

Reads the live server Deployments (which side is which), the person's command
(``kubeinfer.io/rollout``) and, while a canary runs, an interval's verdict
(``canarywatch``); builds the Deployments the plan names, the stable side from
the spec it was made from; after the apply, takes away a promote or abort it
acted on and sends the plan's Events.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import Any

from kubeinfer_operator import canarywatch, conditions, kinds, naming, rollout
from kubeinfer_operator.builders.deployment import Placement, build_deployment, revision
from kubeinfer_operator.kube import Emit, Kube
from kubeinfer_operator.settings import Settings
from kubeinfer_operator.spec import InferenceSpec, SpecError, parse

log = logging.getLogger(__name__)


def plan(parent: Mapping[str, Any], spec: InferenceSpec, live: Mapping[tuple[str, str], Mapping[str, Any]],
         now: dt.datetime) -> rollout.Plan:
    meta = parent["metadata"]
    deployments = [obj for (kind, _), obj in live.items() if kind == kinds.DEPLOYMENT.kind]
    pods = [obj for (kind, _), obj in live.items() if kind == kinds.POD.kind]
    stable, canary_side = rollout.sides(deployments, spec.name)
    wanted = revision(spec)
    if stable is not None and not stable.source:
        # Made before rollouts: its spec is not known, so it cannot stay as it is beside a canary; updated in place.
        stable = dataclasses.replace(stable, revision=wanted)
    previous = (parent.get("status") or {}).get("rollout") or {}
    command = (meta.get("annotations") or {}).get(naming.ROLLOUT_ANNOTATION)
    judged = broken = None
    if stable is not None and previous.get("phase") in (rollout.PROGRESSING, rollout.PAUSED) \
            and previous.get("canaryRevision") == wanted and wanted != stable.revision:
        judged = canarywatch.judge_interval(meta["uid"], wanted, stable.revision, pods, spec.model.name,
                                            spec.rollout.analysis)
        canary_pods = [p for p in pods if naming.revision_of(p) == wanted]
        problem = conditions.pod_problem(spec, canary_pods)
        broken = f"{problem.reason}: {problem.message}" if problem is not None else None
    decided = rollout.plan(spec, wanted, stable, canary_side, previous, judged, command, now, broken)
    if not decided.analysing:
        canarywatch.forget(meta["uid"])
    return decided


def build(parent: Mapping[str, Any], spec: InferenceSpec, decided: rollout.Plan,
          live: Mapping[tuple[str, str], Mapping[str, Any]], settings: Settings,
          owner: dict[str, Any]) -> list[dict[str, Any]]:
    """The Deployments the plan names, the stable side first."""
    current = _source(parent.get("spec") or {})
    built = []
    for target in decided.targets:
        source, made_from = current, spec
        if not target.current_spec:
            source = _live_source(live, target.name) or current
            made_from = _spec_of(spec, source, settings)
        built.append(build_deployment(made_from, owner, Placement(target.name, target.track, target.replicas, source)))
    return built


def after_apply(kube: Kube, parent: Mapping[str, Any], decided: rollout.Plan, emit: Emit) -> None:
    for kind, reason, message in decided.events:
        emit(kind, reason, message)
    if decided.clear_command:
        meta = parent["metadata"]
        kube.merge_patch(kinds.INFERENCE_DEPLOYMENT.api_version, kinds.INFERENCE_DEPLOYMENT.kind, meta["namespace"],
                         meta["name"], {"metadata": {"annotations": {naming.ROLLOUT_ANNOTATION: None}}})


def _source(raw: Mapping[str, Any]) -> str:
    return json.dumps(raw, sort_keys=True, separators=(",", ":"))


def _live_source(live: Mapping[tuple[str, str], Mapping[str, Any]], name: str) -> str:
    deployment = live.get((kinds.DEPLOYMENT.kind, name)) or {}
    return str(((deployment.get("metadata") or {}).get("annotations") or {}).get(naming.SPEC_ANNOTATION, ""))


def _spec_of(spec: InferenceSpec, source: str, settings: Settings) -> InferenceSpec:
    """The spec a stable Deployment was made from; the current one if it no longer parses."""
    try:
        return parse(spec.name, spec.namespace, json.loads(source), settings)
    except (SpecError, ValueError) as exc:
        log.warning("The stable Deployment of %s/%s keeps a spec that no longer parses (%s): built from the "
                    "current spec", spec.namespace, spec.name, exc)
        return spec
