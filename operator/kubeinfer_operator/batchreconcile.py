"""One level-based reconcile of one InferenceBatchJob.

Reads its Job (or CronJob), the latest run and that run's pods; applies the
desired Job or CronJob when it differs; writes the status when it changed,
with an Event when the phase moves. Deleting the InferenceBatchJob deletes its
Job or CronJob (owner reference), and with them their runs and pods.

A Job's pod template is immutable: the CRD refuses spec edits other than
``schedule`` and ``suspend``, so only a new operator version could want another
template, and then the running Job keeps the one it was made with.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from kubeinfer_operator import batchspec, batchstatus, drift, kinds, naming
from kubeinfer_operator.batchstatus import BatchObserved
from kubeinfer_operator.builders.batchjob import build_batch_child
from kubeinfer_operator.conditions import Problem
from kubeinfer_operator.kube import ApiError, Kube
from kubeinfer_operator.reconcile import Emit, InvalidSpec, Key, Outcome, apply_all, controlled_children, prune
from kubeinfer_operator.settings import Settings
from kubeinfer_operator.spec import SpecError

log = logging.getLogger(__name__)

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
UNPROCESSABLE = 422


def reconcile_batch(kube: Kube, parent: Mapping[str, Any], settings: Settings, now: dt.datetime,
                    emit: Emit) -> Outcome:
    meta = parent["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    live = controlled_children(kube, kinds.BATCH_CHILDREN, namespace, naming.batch_selector_string(name), meta["uid"])
    try:
        spec = batchspec.parse(name, namespace, parent.get("spec") or {}, settings)
    except SpecError as exc:
        _write_status(kube, parent, None, _observe(kube, namespace, name, live), now, emit,
                      blocked=batchstatus.invalid(str(exc)))
        raise InvalidSpec(str(exc)) from exc
    desired = [drift.stamp(build_batch_child(spec, naming.owner_reference(parent, naming.BATCH_KIND)))]
    try:
        apply_all(kube, desired, live, emit)
    except ApiError as exc:
        if exc.status != UNPROCESSABLE:
            raise
        if not live:  # nothing was made: the spec is what the API server refused
            message = f"The API server refused the {desired[0]['kind']}: {exc}"
            _write_status(kube, parent, spec, BatchObserved(), now, emit, blocked=batchstatus.invalid(message))
            raise InvalidSpec(message) from exc
        log.warning("Kept the %s of %s/%s as it was made (a Job's pod template is immutable): %s",
                    desired[0]["kind"], namespace, name, exc)
    prune(kube, desired, live, emit)
    _write_status(kube, parent, spec, _observe(kube, namespace, name, live), now, emit)
    return Outcome()


def _observe(kube: Kube, namespace: str, name: str, live: Mapping[Key, dict[str, Any]]) -> BatchObserved:
    child = next(iter(live.values()), None)
    if child is None:
        return BatchObserved()
    run: Mapping[str, Any] | None = child
    if child["kind"] == kinds.CRON_JOB.kind:
        run = _latest_run(kube, namespace, name, child)
    if run is None:
        return BatchObserved(child=child)
    pods = kube.list(kinds.POD.api_version, kinds.POD.kind, namespace,
                     f"{JOB_NAME_LABEL}={run['metadata']['name']}")
    return BatchObserved(child=child, run=run, pods=pods)


def _latest_run(kube: Kube, namespace: str, name: str, cron_job: Mapping[str, Any]) -> dict[str, Any] | None:
    """The newest Job the CronJob made (they carry its jobTemplate's labels: the InferenceBatchJob's)."""
    runs = controlled_children(kube, (kinds.JOB,), namespace, naming.batch_selector_string(name),
                               cron_job["metadata"]["uid"]).values()
    return max(runs, key=lambda j: j["metadata"]["creationTimestamp"], default=None)


def _write_status(kube: Kube, parent: Mapping[str, Any], spec: batchspec.BatchSpec | None,
                  observed: BatchObserved, now: dt.datetime, emit: Emit, blocked: Problem | None = None) -> None:
    previous = parent.get("status") or {}
    generation = parent["metadata"].get("generation", 1)
    status = batchstatus.compute_status(spec, observed, generation, previous, now, blocked)
    if status != previous:
        kube.apply_status(parent, status)
        _announce(previous, status, emit)


def _announce(previous: Mapping[str, Any], status: Mapping[str, Any], emit: Emit) -> None:
    """An Event when the phase moves (or a new run starts): Started, Succeeded, or Failed with the reason."""
    phase, job = status["phase"], status.get("job")
    if (previous.get("phase"), previous.get("job")) == (phase, job):
        return
    rows = status["rows"]
    if phase == batchstatus.RUNNING:
        emit("Normal", "Started", f"Job {job} started {status['shards']['total']} shards")
    elif phase == batchstatus.SUCCEEDED:
        emit("Normal", "Succeeded", f"Job {job} scored {rows['done']} rows ({rows['failed']} bad) "
                                    f"in {status['shards']['total']} shards")
    elif phase == batchstatus.FAILED:
        failed = next(c for c in status["conditions"] if c["type"] == batchstatus.FAILED_CONDITION)
        emit("Warning", failed["reason"], failed["message"])
