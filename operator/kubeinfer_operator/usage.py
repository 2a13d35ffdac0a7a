"""The server containers' measured usage, read from Prometheus, as the recommender's samples.

The series are cAdvisor's, scraped from each node's kubelet (``/metrics/cadvisor``; the
kubelet's ``/metrics/resource``, which metrics-server reads, has them under the same
names): ``container_cpu_usage_seconds_total`` as a rate, and
``container_memory_working_set_bytes`` as its peak in each step, for
``container="server"`` of the InferenceDeployment's pods, named one by one (the pods the
reconcile lists; a pod that no longer exists no longer counts). They cover the last
``usage_history_seconds``, one point per ``usage_step_seconds`` on a grid fixed to the
step (coarser with many pods: at most ``MAX_POINTS`` a query and Prometheus's 11,000 a
series). OOM kills and what loading took come from the pods' own status
(``lastState.terminated.reason: OOMKilled``, ``startedAt``): no kube-state-metrics.

Both queries go to ``/api/v1/query_range`` (POST: the names can be many) with no proxy
and a short timeout, and at most once per InferenceDeployment every
``usage_query_seconds``: the reading, a failed one too, is kept here by the parent's
UID, so a reconcile waits on Prometheus at most once an interval. Everything but
``_post`` and the cache is pure.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from kubeinfer_operator.drift import quantity
from kubeinfer_operator.recommender import Sample
from kubeinfer_operator.rightsizing import (
    NO_USAGE_SOURCE,
    SERVER_CONTAINER,
    USAGE_UNAVAILABLE,
    Measured,
    epoch,
    server_container,
)
from kubeinfer_operator.settings import Settings

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 3.0
MAX_POINTS = 50_000  # per query: pods x steps
MAX_SERIES_POINTS = 11_000  # Prometheus refuses longer series
MIN_RATE_WINDOW_SECONDS = 60.0  # a rate needs several scrapes (cAdvisor's are often 15 to 30 s apart)
LOAD_WINDOW_SECONDS = 300.0  # a server's first minutes: fetching is done, the model loads and warms up
CACHE_SIZE = 1024
Series = dict[str, dict[float, float]]  # pod -> {time: value}
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


class UsageError(Exception):
    """Prometheus did not give the series: unreachable, an error answer, or not a matrix."""


@dataclasses.dataclass(frozen=True)
class Reading:
    memory: Series
    step: float
    samples: tuple[Sample, ...] = ()  # both series joined, once per reading
    error: str | None = None


_readings: dict[str, tuple[float, Reading]] = {}  # parent UID -> (monotonic time read, reading)


def measure(settings: Settings, parent_uid: str, namespace: str, pods: Sequence[Mapping[str, Any]],
            now: float) -> Measured:
    """The usage of these pods' server containers (a cached reading when the last is recent)."""
    if not settings.prometheus_url:
        return Measured(problem=(NO_USAGE_SOURCE, "The operator has no Prometheus to read usage from "
                                                  "(--prometheus-url, KUBEINFER_PROMETHEUS_URL)"))
    reading = _cached(settings, parent_uid, namespace, pods, now)
    if reading.error is not None:
        return Measured(problem=(USAGE_UNAVAILABLE, reading.error))
    return Measured(samples=reading.samples, ooms=oom_samples(pods),
                    load_floor_memory=load_floor(reading.memory, pods, reading.step))


def _cached(settings: Settings, parent_uid: str, namespace: str, pods: Sequence[Mapping[str, Any]],
            now: float) -> Reading:
    kept = _readings.get(parent_uid)
    if kept is not None and time.monotonic() - kept[0] < settings.usage_query_seconds:
        return kept[1]
    reading = read(settings, namespace, [p["metadata"]["name"] for p in pods], now)
    if reading.error is not None:
        log.warning("Could not read the usage of %s pods from Prometheus: %s", namespace, reading.error)
    if len(_readings) >= CACHE_SIZE:
        _readings.clear()
    _readings[parent_uid] = (time.monotonic(), reading)
    return reading


def read(settings: Settings, namespace: str, pod_names: Sequence[str], now: float) -> Reading:
    """Both series from Prometheus (empty without pods), or the error that kept them."""
    step = query_step(settings, len(pod_names))
    if not pod_names:
        return Reading({}, step)
    end = math.floor(now / step) * step
    window = {"start": str(end - settings.usage_history_seconds), "end": str(end), "step": str(step)}
    cpu_query, memory_query = queries(namespace, pod_names, step)
    url = settings.prometheus_url.rstrip("/") + "/api/v1/query_range"
    try:
        cpu = parse_matrix(_post(url, {"query": cpu_query, **window}))
        memory = parse_matrix(_post(url, {"query": memory_query, **window}))
    except UsageError as exc:
        return Reading({}, step, error=f"Prometheus at {settings.prometheus_url}: {exc}")
    return Reading(memory, step, samples(cpu, memory))


def query_step(settings: Settings, pods: int) -> float:
    """The step: the setting, coarser when that many pods over the history would be too many points."""
    history = settings.usage_history_seconds
    return float(math.ceil(max(settings.usage_step_seconds, history * max(pods, 1) / MAX_POINTS,
                               history / MAX_SERIES_POINTS)))


def queries(namespace: str, pod_names: Sequence[str], step: float) -> tuple[str, str]:
    """(CPU, memory) PromQL: cores per pod (a rate), and working-set bytes per pod (each step's peak).

    ``max by (pod)``, not a sum: the kubelet serves both series on /metrics/cadvisor and on
    /metrics/resource, and a Prometheus that scrapes both holds each twice (as the e2e stack's does).
    """
    names = "|".join(name.replace(".", "\\\\.") for name in sorted(pod_names))
    selector = f'namespace="{namespace}",container="{SERVER_CONTAINER}",pod=~"{names}"'
    rate_window = int(max(step, MIN_RATE_WINDOW_SECONDS))
    return (f"max by (pod) (rate(container_cpu_usage_seconds_total{{{selector}}}[{rate_window}s]))",
            f"max by (pod) (max_over_time(container_memory_working_set_bytes{{{selector}}}[{int(step)}s]))")


def _post(url: str, form: Mapping[str, str]) -> Any:
    """Prometheus's JSON answer to a form POST, also for its error statuses (their body says why)."""
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with _DIRECT.open(request, timeout=TIMEOUT_SECONDS) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read())
        except ValueError:
            raise UsageError(f"HTTP {exc.code} {exc.reason}") from exc
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


def parse_matrix(body: Any) -> Series:
    """pod -> {time: value} of a query_range answer aggregated ``by (pod)``; NaN and infinities dropped."""
    if not isinstance(body, Mapping) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, Mapping) else None
        raise UsageError(f"query failed: {error or 'not a Prometheus answer'}")
    data = body.get("data") or {}
    if data.get("resultType") != "matrix":
        raise UsageError(f"expected a matrix, got {data.get('resultType')}")
    series: Series = {}
    for result in data.get("result") or []:
        pod = (result.get("metric") or {}).get("pod")
        if not pod:
            continue
        points = series.setdefault(pod, {})
        for at, value in result.get("values") or []:
            number = float(value)
            if math.isfinite(number):
                points[float(at)] = number
    return series


def samples(cpu: Series, memory: Series) -> tuple[Sample, ...]:
    """One sample per pod and time, with what each series has then."""
    keys = sorted({(pod, at) for series in (cpu, memory) for pod, points in series.items() for at in points})
    return tuple(Sample(at, cpu.get(pod, {}).get(at), memory.get(pod, {}).get(at)) for pod, at in keys)


def oom_samples(pods: Sequence[Mapping[str, Any]]) -> tuple[Sample, ...]:
    """One sample per server container whose last run the OOM killer ended: when, and its memory limit then."""
    found = []
    for pod in pods:
        status = _server_status(pod)
        for state in ("state", "lastState"):
            ended = (status.get(state) or {}).get("terminated") or {}
            at, limit = epoch(ended.get("finishedAt")), _memory_limit(pod, status)
            if ended.get("reason") == "OOMKilled" and at is not None and limit:
                found.append(Sample(at, None, limit))
    return tuple(found)


def load_floor(memory: Series, pods: Sequence[Mapping[str, Any]], step: float) -> float:
    """The most memory a server container took in its first minutes (loading and warming the model),
    over the containers whose series reach back to their start; 0 when none does."""
    floor = 0.0
    for pod in pods:
        started = epoch(((_server_status(pod).get("state") or {}).get("running") or {}).get("startedAt"))
        points = memory.get(pod["metadata"]["name"]) or {}
        if started is None or not points or min(points) > started + 2 * step:
            continue
        early = [value for at, value in points.items() if started <= at <= started + LOAD_WINDOW_SECONDS + step]
        floor = max([floor, *early])
    return floor


def _server_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == SERVER_CONTAINER:
            return status
    return {}


def _memory_limit(pod: Mapping[str, Any], status: Mapping[str, Any]) -> float | None:
    """The memory the container may use: what the kubelet reports (after a resize), else its spec."""
    container = server_container(pod) or {}
    for section in ("limits", "requests"):
        for resources in (status.get("resources"), container.get("resources")):
            value = ((resources or {}).get(section) or {}).get("memory")
            parsed = quantity(str(value)) if value is not None else None
            if parsed:
                return float(parsed)
    return None
