"""What the server pods report about themselves on their metrics port: the execution providers
their sessions got (``kubeinfer_model_info{providers}``).

Read only when the spec asks for a GPU provider first (the only case where a
server may run on something else than asked), only from ready pods with an
address, with a short timeout, and once per pod: a pod's sessions keep their
providers for its life, so the answer is cached by pod UID (a pod that did not
answer is asked again after ``RETRY_SECONDS``, not on every reconcile).
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kubeinfer_operator import naming

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 1.0
MODEL_INFO = "kubeinfer_model_info"
RETRY_SECONDS = 30.0
CACHE_SIZE = 4096
_providers_by_pod: dict[str, str] = {}
_retry_at: dict[str, float] = {}  # pods that did not answer: when to ask again
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # pod IPs: never through a proxy


def served_providers(pods: Sequence[Mapping[str, Any]], model: str) -> dict[str, str]:
    """Pod name -> the providers its server runs ``model`` on (comma-separated, first is used), for ready pods."""
    found = {}
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        if not ready(pod):
            continue
        uid = meta.get("uid", meta["name"])
        if uid not in _providers_by_pod and time.monotonic() >= _retry_at.get(uid, 0.0):
            _remember(uid, _scrape(status["podIP"], model))
        if uid in _providers_by_pod:
            found[meta["name"]] = _providers_by_pod[uid]
    return found


def _remember(uid: str, providers: str | None) -> None:
    if len(_providers_by_pod) + len(_retry_at) >= CACHE_SIZE:
        _providers_by_pod.clear()
        _retry_at.clear()
    if providers is None:  # not reachable (yet): ask again later, not on every reconcile
        _retry_at[uid] = time.monotonic() + RETRY_SECONDS
    else:
        _providers_by_pod[uid] = providers


def _ready(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def metrics_text(address: str) -> str | None:
    """The /metrics text of the server at pod IP ``address``, or None when it does not answer in time."""
    url = f"http://{address}:{naming.METRICS_PORT}/metrics"
    try:
        with _DIRECT.open(url, timeout=TIMEOUT_SECONDS) as response:
            return str(response.read().decode())
    except (OSError, urllib.error.URLError) as exc:
        log.debug("Could not read %s: %s", url, exc)
        return None


def ready(pod: Mapping[str, Any]) -> bool:
    """A pod that reports Ready and has an address to scrape."""
    status = pod.get("status") or {}
    return _ready(status) and bool(status.get("podIP"))


def _scrape(address: str, model: str) -> str | None:
    text = metrics_text(address)
    if text is None:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == MODEL_INFO and sample.labels.get("model") == model:
                return sample.labels.get("providers", "")
    return None
