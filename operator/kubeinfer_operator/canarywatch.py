"""One interval's verdict on a canary, from both sides' server pods' own metrics.

Each side's ready pods are scraped (``podmetrics.metrics_text``) and summed
(``canary.parse_scrape``) at most once an ``intervalSeconds``; the first scrape
of a rollout is only its baseline. The previous scrape is kept here, in memory,
by InferenceDeployment and canary revision: an operator that restarts loses one
interval, not the rollout (its progress is in status.rollout).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from kubeinfer_operator import canary, naming, podmetrics
from kubeinfer_operator.rollout import Judged

Baseline = tuple[float, canary.Scrape, canary.Scrape]  # (monotonic time, canary side, stable side)
_baselines: dict[tuple[str, str], Baseline] = {}
CACHE_SIZE = 1024


def judge_interval(parent_uid: str, canary_revision: str, stable_revision: str, pods: Sequence[Mapping[str, Any]],
                   model: str, analysis: canary.Analysis) -> Judged | None:
    """The verdict on the interval since the last scrape, when one is due and there was one; else None."""
    key = (parent_uid, canary_revision)
    now = time.monotonic()
    before = _baselines.get(key)
    if before is not None and now - before[0] < analysis.interval_seconds:
        return None
    after = (now, _scrape(pods, canary_revision, model), _scrape(pods, stable_revision, model))
    if len(_baselines) >= CACHE_SIZE:
        _baselines.clear()
    _baselines[key] = after
    if before is None:
        return None
    canary_window, stable_window = canary.window(before[1], after[1]), canary.window(before[2], after[2])
    return Judged(canary.judge(canary_window, stable_window, analysis), canary_window, stable_window)


def forget(parent_uid: str) -> None:
    """Drop the baselines of a rollout that ended."""
    for key in [k for k in _baselines if k[0] == parent_uid]:
        del _baselines[key]


def _scrape(pods: Sequence[Mapping[str, Any]], revision: str, model: str) -> canary.Scrape:
    texts = []
    for pod in pods:
        if naming.revision_of(pod) != revision or not podmetrics.ready(pod):
            continue
        text = podmetrics.metrics_text(pod["status"]["podIP"])
        if text is not None:
            texts.append(text)
    return canary.parse_scrape(texts, model)
