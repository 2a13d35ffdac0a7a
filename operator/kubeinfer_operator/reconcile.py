"""One level-based reconcile of one InferenceDeployment.

Reads what the cluster holds, builds the whole desired set of children,
applies what differs (server-side apply), deletes children no longer wanted,
and writes the status when it changed. Idempotent: run twice, the second run
writes nothing. It knows nothing of kopf: events go out through ``emit`` and
failures come back as exceptions that say whether a retry can help.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from kubeinfer_operator import (
    builders,
    canaryrollout,
    conditions,
    drift,
    fetchprogress,
    kinds,
    naming,
    optimization_status,
    podmetrics,
    rightsizer,
    rightsizing,
)
from kubeinfer_operator.certificate_plan import TlsMaterial, plan_certificates
from kubeinfer_operator.conditions import Problem, StatusInputs
from kubeinfer_operator.kube import Emit, Kube
from kubeinfer_operator.settings import Settings
from kubeinfer_operator.spec import InferenceSpec, SpecError, parse

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (kind, name)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one reconcile tells its caller: when the server certificate expires (None without TLS), and
    when to look again although nothing changed (None: at the next event or resync)."""

    certificate_expiry: dt.datetime | None = None
    recheck_seconds: float | None = None


class InvalidSpec(Exception):
    """The spec cannot be served; retrying will not help until it changes."""


class MissingDependency(Exception):
    """Something the spec names is not there yet (a Secret); worth retrying."""


def reconcile(kube: Kube, parent: Mapping[str, Any], settings: Settings, now: dt.datetime,
              emit: Emit) -> Outcome:
    """Reconcile ``parent``; says when its server certificate expires and when to look again."""
    meta = parent["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    live = _observe(kube, namespace, name, meta["uid"])
    try:
        spec = parse(name, namespace, parent.get("spec") or {}, settings)
    except SpecError as exc:
        blocked = Problem(conditions.INVALID_SPEC, str(exc))
        _write_status(kube, parent, _status_inputs(kube, parent, live, None, blocked=blocked), now, emit)
        raise InvalidSpec(str(exc)) from exc
    external_ca = _external_ca(kube, spec)
    if external_ca is None:
        message = (f"Secret {namespace}/{spec.tls.client_ca_secret_name} with a ca.crt key "
                   "(tls.clientCASecretName) was not found")
        blocked = Problem(conditions.CLIENT_CA_NOT_FOUND, message)
        _write_status(kube, parent, _status_inputs(kube, parent, live, spec, blocked=blocked), now, emit)
        raise MissingDependency(message)
    material = plan_certificates(spec, _secret_data(live), now, settings, external_client_ca=external_ca)
    for what in material.issued if material else ():
        emit("Normal", "CertificateIssued", f"Issued {what} for {namespace}/{name}")
    owner = naming.owner_reference(parent)
    decided = canaryrollout.plan(parent, spec, live, now)
    deployments = canaryrollout.build(parent, spec, decided, live, settings, owner)
    desired = [drift.stamp(o) for o in builders.desired_children(spec, material, owner, deployments)]
    apply_all(kube, desired, live, emit)
    prune(kube, desired, live, emit)
    canaryrollout.after_apply(kube, parent, decided, emit)
    pods = _pods(live)
    # spec.rightSizing: the recommendation for the status (None when Off); InPlace resizes pods, not while judging.
    sized = rightsizer.run(kube, parent, spec, pods, settings, now, emit, may_resize=not decided.analysing)
    inputs = _status_inputs(kube, parent, live, spec, material=material, stable=deployments[0]["metadata"]["name"],
                            rollout=decided.status, sized=sized)
    _write_status(kube, parent, inputs, now, emit)
    # A fetch changes no object while it runs: look again to show how far it has come.
    rechecks = [s for s in (decided.recheck_seconds,
                            fetchprogress.RECHECK_SECONDS if fetchprogress.fetching(pods) else None) if s]
    return Outcome(material.server.cert.not_valid_after_utc if material else None, min(rechecks, default=None))


def _observe(kube: Kube, namespace: str, name: str, uid: str) -> dict[Key, dict[str, Any]]:
    """Our children (controller reference to this parent) and the server pods, by (kind, name)."""
    found = controlled_children(kube, kinds.CHILDREN, namespace, naming.children_selector(name), uid)
    for pod in kube.list(kinds.POD.api_version, kinds.POD.kind, namespace, naming.selector_string(name)):
        found[(kinds.POD.kind, pod["metadata"]["name"])] = pod
    return found


def controlled_children(kube: Kube, of_kinds: Sequence[kinds.Kind], namespace: str, selector: str,
                        uid: str) -> dict[Key, dict[str, Any]]:
    """The objects of these kinds that ``selector`` finds and the object ``uid`` controls, by (kind, name)."""
    found: dict[Key, dict[str, Any]] = {}
    for kind in of_kinds:
        for obj in kube.list(kind.api_version, kind.kind, namespace, selector):
            if controlled_by(obj, uid):
                found[(kind.kind, obj["metadata"]["name"])] = obj
    return found


def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def _secret_data(live: Mapping[Key, Mapping[str, Any]]) -> dict[str, dict[str, bytes]]:
    return {
        name: {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        for (kind, name), obj in live.items() if kind == kinds.SECRET.kind
    }


def _external_ca(kube: Kube, spec: InferenceSpec) -> bytes | None:
    """The external client CA bundle (empty when none is named), or None if its Secret is missing."""
    if not spec.tls.mutual or not spec.tls.client_ca_secret_name:
        return b""
    secret = kube.get(kinds.SECRET.api_version, kinds.SECRET.kind, spec.namespace, spec.tls.client_ca_secret_name)
    if secret is None or "ca.crt" not in (secret.get("data") or {}):
        return None
    return base64.b64decode(secret["data"]["ca.crt"])


def apply_all(kube: Kube, desired: list[dict[str, Any]], live: dict[Key, dict[str, Any]], emit: Emit) -> None:
    for obj in desired:
        key = (obj["kind"], obj["metadata"]["name"])
        current = live.get(key)
        if not drift.needs_apply(obj, current):
            continue
        if current is None and _taken(kube, obj, emit):
            continue
        _hand_over_replicas(kube, obj, current)
        live[key] = kube.apply(obj)
        verb = "Created" if current is None else "Updated"
        what = f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"
        log.info("%s %s", verb, what)
        emit("Normal", verb, f"{verb} {what}")


def _hand_over_replicas(kube: Kube, desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> None:
    """Before we stop applying a Deployment's replicas (autoscaling on), let a second manager hold them.

    A field that its only manager stops applying is removed, and the Deployment
    would fall back to 1 replica until the HPA acts. With a co-owner the value
    stays where it is and the HPA takes it from there (the documented SSA handover).
    """
    if desired["kind"] != kinds.DEPLOYMENT.kind or live is None or "replicas" in desired["spec"]:
        return
    ours = [m for m in live["metadata"].get("managedFields") or []
            if m.get("manager") == naming.FIELD_MANAGER and m.get("operation") == "Apply"]
    if not any("f:replicas" in (m.get("fieldsV1") or {}).get("f:spec", {}) for m in ours):
        return
    meta = desired["metadata"]
    kube.apply({"apiVersion": kinds.DEPLOYMENT.api_version, "kind": kinds.DEPLOYMENT.kind,
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "spec": {"replicas": live["spec"].get("replicas", 1)}}, manager=naming.HANDOVER_MANAGER)


def _taken(kube: Kube, obj: Mapping[str, Any], emit: Emit) -> bool:
    """True if an object of that name exists that another controller owns: never take it over."""
    meta = obj["metadata"]
    existing = kube.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
    if existing is None:
        return False
    owner = meta["ownerReferences"][0]["uid"]
    refs = existing["metadata"].get("ownerReferences") or []
    others = [r for r in refs if r.get("controller") and r.get("uid") != owner]
    if others:
        emit("Warning", "NameConflict", f"{obj['kind']} {meta['namespace']}/{meta['name']} belongs to "
             f"{others[0].get('kind')} {others[0].get('name')}; not taking it over")
    return bool(others)


def prune(kube: Kube, desired: list[dict[str, Any]], live: dict[Key, dict[str, Any]], emit: Emit) -> None:
    wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
    for key, obj in list(live.items()):
        if key[0] == kinds.POD.kind or key in wanted:
            continue
        kube.delete(obj)
        del live[key]
        what = f"{key[0]} {obj['metadata']['namespace']}/{key[1]}"
        log.info("Deleted %s", what)
        emit("Normal", "Deleted", f"Deleted {what}: no longer needed")


def _status_inputs(
    kube: Kube, parent: Mapping[str, Any], live: Mapping[Key, dict[str, Any]], spec: InferenceSpec | None, *,
    blocked: Problem | None = None, material: TlsMaterial | None = None, stable: str | None = None,
    rollout: Mapping[str, Any] | None = None, sized: rightsizing.Decision | None = None,
) -> StatusInputs:
    meta = parent["metadata"]
    if rollout is None and blocked is not None:  # nothing was planned: keep what the last reconcile said
        rollout = (parent.get("status") or {}).get("rollout")
    recommendation = sized.recommendation if sized else None
    if blocked is not None:  # nothing was measured: keep the last recommendation
        recommendation = (parent.get("status") or {}).get("recommendation")
    deployment = live.get((kinds.DEPLOYMENT.kind, stable or naming.deployment_name(meta["name"])))
    pods = _pods(live)
    # Only a GPU provider asked first can fall back: then ask the ready servers what they got.
    asks_gpu = spec is not None and spec.runtime.execution_providers[0] != "CPU"
    providers = podmetrics.served_providers(pods, spec.model.name) if spec is not None and asks_gpu else {}
    return StatusInputs(
        name=meta["name"], namespace=meta["namespace"], generation=meta.get("generation", 1), spec=spec,
        observed=conditions.Observed(deployment, pods, providers, fetchprogress.of_pods(kube, pods)), blocked=blocked,
        certificate_not_after=material.server.cert.not_valid_after_utc if material else None, rollout=rollout,
        recommendation=recommendation, recommendation_condition=sized.condition if sized else None,
    )


def _pods(live: Mapping[Key, dict[str, Any]]) -> list[dict[str, Any]]:
    return [obj for (kind, _), obj in live.items() if kind == kinds.POD.kind]


def _write_status(kube: Kube, parent: Mapping[str, Any], inputs: StatusInputs, now: dt.datetime, emit: Emit) -> None:
    meta = parent["metadata"]
    previous = parent.get("status") or {}
    status = conditions.compute_status(inputs, previous, now)
    if status != previous:
        kube.apply_status(parent, status)
        log.info("Updated status of %s %s/%s", naming.KIND, meta["namespace"], meta["name"])
        _announce(previous, status, emit)


def _announce(previous: Mapping[str, Any], status: Mapping[str, Any], emit: Emit) -> None:
    """An Event when Degraded starts or changes reason, when Ready turns True, and when an optimization decides."""
    before = {c["type"]: c for c in previous.get("conditions") or []}
    for condition in status["conditions"]:
        old = before.get(condition["type"], {})
        if (old.get("status"), old.get("reason")) == (condition["status"], condition["reason"]):
            continue
        if condition["type"] == "Degraded" and condition["status"] == "True":
            emit("Warning", condition["reason"], condition["message"])
        elif condition["type"] == "Ready" and condition["status"] == "True":
            emit("Normal", condition["reason"], condition["message"])
    for kind, reason, message in optimization_status.events(previous.get("optimization"), status.get("optimization")):
        emit(kind, reason, message)
