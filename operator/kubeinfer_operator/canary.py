"""A canary's arithmetic and its judge (pure): the replica split at a weight, one interval's
figures from two scrapes of the servers' own metrics, and the verdict.

- Traffic is split without a mesh, by replicas: at weight w the canary runs
  ``w%`` of the serving replicas (at least one while w > 0, and the stable side
  keeps at least one until promotion). With the HPA scaling the stable side, the
  canary is sized from the stable replicas so that it stays at its share.
- An interval's figures come from two scrapes of ``kubeinfer_requests_total``
  and ``kubeinfer_request_duration_seconds`` (summed over a side's pods):
  requests, the server's errors (codes that are the client's own do not count
  against a canary: a bad input, an unknown model, a refused identity, a
  deadline the client set, a cancel), and p99 from the histogram's bucket deltas,
  interpolated inside its bucket.
- The verdict: Inconclusive below ``minRequests``; Fail when the error rate
  passes ``maxErrorRate`` or the canary's p99 passes ``maxLatencyRatio`` times
  the stable's (same interval); else Pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

from kubeinfer_operator.defaults import DEFAULT_MAX_ERROR_RATE, DEFAULT_MAX_LATENCY_RATIO, INTEGER_FIELDS

REQUESTS = "kubeinfer_requests"
DURATION = "kubeinfer_request_duration_seconds"
# Answers that are the client's doing: they say nothing about the model being tried.
CLIENT_CODES = frozenset({"OK", "INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED",
                          "DEADLINE_EXCEEDED", "CANCELLED"})
PASS, FAIL, INCONCLUSIVE = "Pass", "Fail", "Inconclusive"


@dataclasses.dataclass(frozen=True)
class Analysis:
    """spec.rollout.analysis (its defaults: ``defaults``)."""

    interval_seconds: int = INTEGER_FIELDS["rollout.analysis.intervalSeconds"].default or 0
    min_requests: int = INTEGER_FIELDS["rollout.analysis.minRequests"].default or 0
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    max_latency_ratio: float = DEFAULT_MAX_LATENCY_RATIO
    failure_limit: int = INTEGER_FIELDS["rollout.analysis.failureLimit"].default or 0


@dataclasses.dataclass(frozen=True)
class Scrape:
    """One side's counters at one moment, summed over its pods: answers by code, latency buckets."""

    codes: Mapping[str, float]
    buckets: tuple[tuple[float, float], ...]  # (upper bound in seconds, cumulative count), +Inf last


@dataclasses.dataclass(frozen=True)
class Window:
    """One side's figures over one interval."""

    requests: int
    server_errors: int
    p99_ms: float | None  # None: no request in the interval

    @property
    def error_rate(self) -> float:
        return self.server_errors / self.requests if self.requests else 0.0


@dataclasses.dataclass(frozen=True)
class Verdict:
    outcome: str  # Pass, Fail, Inconclusive
    reason: str


def split(total: int, weight: int) -> tuple[int, int]:
    """(stable, canary) replicas for ``total`` serving replicas at ``weight`` percent."""
    if weight <= 0:
        return total, 0
    if weight >= 100:
        return 0, max(total, 1)
    canary = min(max(1, round(total * weight / 100)), max(total - 1, 1))
    return max(total - canary, 1), canary


def canary_beside(stable: int, weight: int) -> int:
    """Canary replicas beside ``stable`` ones (the HPA's count) so that the canary holds ``weight`` percent."""
    if weight <= 0:
        return 0
    if weight >= 100:
        return max(stable, 1)
    return max(1, round(stable * weight / (100 - weight)))


def parse_scrape(texts: Iterable[str], model: str) -> Scrape:
    """The sum over pods (one /metrics text each) of ``model``'s answers by code and latency buckets."""
    codes: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("model") != model:
                    continue
                if sample.name == REQUESTS + "_total":
                    code = sample.labels.get("code", "")
                    codes[code] = codes.get(code, 0.0) + sample.value
                elif sample.name == DURATION + "_bucket":
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Scrape(codes, tuple(sorted(buckets.items())))


def window(before: Scrape, after: Scrape) -> Window:
    """What happened between two scrapes of one side. A pod that restarted (counters reset) counts from 0."""
    delta = {code: max(after.codes.get(code, 0.0) - before.codes.get(code, 0.0), 0.0) for code in after.codes}
    requests = int(sum(delta.values()))
    errors = int(sum(v for code, v in delta.items() if code not in CLIENT_CODES))
    earlier = dict(before.buckets)
    counts = [(bound, max(count - earlier.get(bound, 0.0), 0.0)) for bound, count in after.buckets]
    return Window(requests, errors, _percentile_ms(counts, 0.99))


def _percentile_ms(cumulative: list[tuple[float, float]], share: float) -> float | None:
    """The ``share`` quantile (ms) of the interval's requests, interpolated linearly inside its bucket as
    Prometheus' ``histogram_quantile`` does (the bucket bounds are 2 to 2.5 times apart: their bounds alone
    could not tell a ratio of 1.5). Past the last finite bound: that bound, a floor."""
    if not cumulative or not cumulative[-1][1]:
        return None
    wanted = share * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in cumulative:
        if count >= wanted:
            if math.isinf(bound):
                return lower * 1000
            inside = count - below
            return (lower + (bound - lower) * ((wanted - below) / inside if inside else 1.0)) * 1000
        lower, below = bound, count
    return None


def judge(canary: Window, stable: Window, analysis: Analysis) -> Verdict:
    """The verdict on one interval."""
    if canary.requests < analysis.min_requests:
        return Verdict(INCONCLUSIVE, f"{canary.requests} requests on the canary, fewer than minRequests "
                                     f"{analysis.min_requests}")
    if canary.error_rate > analysis.max_error_rate:
        return Verdict(FAIL, f"error rate {canary.error_rate:.2%} ({canary.server_errors} of {canary.requests}) "
                             f"above maxErrorRate {analysis.max_error_rate:.2%}")
    if canary.p99_ms is not None and stable.p99_ms:
        ratio = canary.p99_ms / stable.p99_ms
        if ratio > analysis.max_latency_ratio:
            return Verdict(FAIL, f"p99 {canary.p99_ms:.1f} ms is {ratio:.2f}x the stable's {stable.p99_ms:.1f} ms, "
                                 f"above maxLatencyRatio {analysis.max_latency_ratio}")
    return Verdict(PASS, f"{canary.requests} requests, error rate {canary.error_rate:.2%}, p99 "
                         f"{_ms(canary.p99_ms)} against the stable's {_ms(stable.p99_ms)}")


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"
