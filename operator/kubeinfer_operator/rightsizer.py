"""The I/O around ``rightsizing`` for one reconcile of an InferenceDeployment with spec.rightSizing.

Reads the server containers' usage (``usage``: Prometheus, at most once an
interval), decides the recommendation (``rightsizing.decide``), sends its Event
and, in mode InPlace, resizes the running server pods to it (``resize_pods``).

InPlace changes the pods, not the Deployment: its template keeps
spec.resources, so applying it never undoes a resize and never restarts a pod
for one. A new pod starts at spec.resources and is resized once it is ready
(not while it loads its model). No pod is resized while a canary is judged
(the two sides must differ only in their revision), nor twice within
``recommender.MIN_CHANGE_INTERVAL_SECONDS``: when each pod was last resized is
kept here, in memory (an operator that restarts may resize a pod once more).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubeinfer_operator import rightsizing, usage
from kubeinfer_operator.kube import ApiError, Kube
from kubeinfer_operator.settings import Settings
from kubeinfer_operator.spec import InferenceSpec

log = logging.getLogger(__name__)

Emit = Callable[[str, str, str], None]
CACHE_SIZE = 4096
_resized_at: dict[str, float] = {}  # pod UID -> time.time() of its last resize asked for


def run(kube: Kube, parent: Mapping[str, Any], spec: InferenceSpec, pods: Sequence[Mapping[str, Any]],
        settings: Settings, now: dt.datetime, emit: Emit, may_resize: bool = True) -> rightsizing.Decision | None:
    """The recommendation for the status (None: right-sizing is Off), after the Event and any resizes."""
    sizing = spec.right_sizing
    if not sizing.enabled:
        return None
    current = (parent.get("status") or {}).get("recommendation")
    measured = usage.measure(settings, parent["metadata"]["uid"], spec.namespace, pods, now.timestamp())
    decided = rightsizing.decide(sizing.policy, measured, current, now)
    if decided.event is not None:
        log.info("%s for %s/%s", decided.event[1], spec.namespace, spec.name)
        emit("Normal", *decided.event)
    if sizing.in_place and may_resize and decided.recommendation is not None:
        resize_pods(kube, spec, pods, decided.recommendation, emit)
    return decided


def resize_pods(kube: Kube, spec: InferenceSpec, pods: Sequence[Mapping[str, Any]],
                recommendation: Mapping[str, Any], emit: Emit) -> None:
    """Resize, in place, each ready server pod whose size is off the recommendation by more than the margin."""
    now = time.time()
    for resize in rightsizing.resizes(recommendation, pods, spec.right_sizing.margin, _resized_at, now):
        if len(_resized_at) >= CACHE_SIZE:
            _resized_at.clear()
        _resized_at[resize.uid] = now  # a refused resize is not asked again at once either
        what = f"pod {spec.namespace}/{resize.pod}"
        try:
            kube.resize_pod(spec.namespace, resize.pod, rightsizing.SERVER_CONTAINER, resize.resources)
        except ApiError as exc:
            log.warning("Could not resize %s in place: %s", what, exc)
            emit("Warning", "ResizeFailed", f"Could not resize {what} in place: {exc.message or exc.reason}")
            continue
        requests = resize.resources["requests"]
        message = (f"Resized {what} in place: cpu {requests['cpu']}, memory {requests['memory']} "
                   f"(was {resize.before})")
        log.info("%s", message)
        emit("Normal", "Resized", message)
