"""The decision ``kubeinfer-server tune`` takes, its report and the table it prints. Pure: points in, data out.

``choose`` reads the measured points only: of the sweep's points that met
the p99 bound without a failed request, the one with the highest throughput
per CPU (ties: the smaller pod, then the lower p99); when none met it, none
is chosen and the closest (lowest p99) is named. The best of many noisy
points is biased upwards, so tune measures its choice again (CONFIRM points):
a choice whose new figures miss the bound gives way to the next, and a kept
one carries the worse of its figures. ``pod_resources`` sizes a pod of a
configuration: its CPU count, and the peak RSS the server reached under load
plus ``memory_margin``. ``replicas_for`` is how many such pods a request rate
needs. The report's keys are a contract (ARCHITECTURE.md, the tune CLI):
``points`` and ``chosen``, each with at least ``intra_op_threads``,
``instances``, ``max_batch_size``, ``concurrency``, ``throughput``, ``p99_ms``,
``cpu`` and ``memory_bytes``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubeinfer_server.tune_plan import Config, Plan

MIB = 1024 * 1024


SWEEP, CONFIRM = "sweep", "confirm"


@dataclass(frozen=True, slots=True)
class Point:
    """One measurement: a configuration driven at one concurrency, in the sweep or measured again."""

    config: Config
    concurrency: int
    throughput: float  # inferences per second
    p50_ms: float
    p99_ms: float
    memory_bytes: int  # the server's peak RSS so far (/proc VmHWM: its start and its load up to now)
    requests: int
    errors: int = 0
    client: str = "builtin"
    client_cpus: str = ""  # the CPUs the load generator ran on
    phase: str = SWEEP  # CONFIRM: the sweep's choice measured again, on a fresh server

    @property
    def key(self) -> tuple[Config, int]:
        return self.config, self.concurrency

    @property
    def cpu(self) -> int:
        return self.config.cpus

    @property
    def throughput_per_cpu(self) -> float:
        return self.throughput / self.config.cpus

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.requests > 0 and self.throughput > 0

    def within(self, p99_ms: float) -> bool:
        return self.ok and self.p99_ms <= p99_ms


@dataclass(frozen=True, slots=True)
class Choice:
    chosen: Point | None  # with the worst of its sweep and confirmation figures
    closest: Point | None  # when nothing met the bound: the point with the lowest p99
    reason: str
    confirmed: bool = False  # measured again, and still under the bound


def choose(points: Sequence[Point], p99_ms: float) -> Choice:
    """The point with the highest throughput per CPU under ``p99_ms``, and why; see the module doc.

    A sweep point measured again (CONFIRM points of the same configuration and concurrency)
    counts only if every new figure is under the bound too, and then with its worst figures:
    ranked by those, it may fall behind a point not measured again (which tune then measures).
    """
    again: dict[tuple[Config, int], list[Point]] = {}
    for p in points:
        if p.phase == CONFIRM:
            again.setdefault(p.key, []).append(p)
    within = [p for p in points if p.phase == SWEEP and p.within(p99_ms)]
    failed = [p for p in within if not all(c.within(p99_ms) for c in again.get(p.key, []))]
    standing = sorted((_worst_of(p, again.get(p.key, [])) for p in within if p not in failed),
                      key=lambda p: (-p.throughput_per_cpu, p.cpu, p.p99_ms))
    if standing:
        best = standing[0]
        return Choice(best, None, _chosen_reason(best, standing, failed, p99_ms), bool(again.get(best.key)))
    measured = [p for p in points if p.ok]
    if not measured:
        return Choice(None, None, "no point was measured without failed requests")
    closest = min(measured, key=lambda p: (p.p99_ms, -p.throughput))
    return Choice(None, closest, f"no configuration met p99 <= {p99_ms:g} ms{_failed_again(failed)}; the closest "
                                 f"is {closest.config.label()} at concurrency {closest.concurrency} with p99 "
                                 f"{closest.p99_ms:.1f} ms")


def _worst_of(point: Point, again: Sequence[Point]) -> Point:
    """``point`` with the lowest throughput and the highest latencies and RSS of it and its re-measurements."""
    if not again:
        return point
    both = [point, *again]
    return dataclasses.replace(point, throughput=min(p.throughput for p in both), p50_ms=max(p.p50_ms for p in both),
                               p99_ms=max(p.p99_ms for p in both), memory_bytes=max(p.memory_bytes for p in both))


def _chosen_reason(best: Point, standing: Sequence[Point], failed: Sequence[Point], p99_ms: float) -> str:
    reason = (f"highest throughput per CPU with p99 <= {p99_ms:g} ms: {best.throughput_per_cpu:.0f} inf/s per CPU "
              f"({best.throughput:.0f} inf/s on {best.cpu} CPU(s), p99 {best.p99_ms:.1f} ms at concurrency "
              f"{best.concurrency}), of {len(standing)} point(s) under the bound{_failed_again(failed)}")
    runner_up = next((p for p in standing[1:] if p.config != best.config), None)
    if runner_up is not None:
        reason += (f"; next best {runner_up.config.label()} at {runner_up.throughput_per_cpu:.0f} inf/s per CPU "
                   f"({best.throughput_per_cpu / runner_up.throughput_per_cpu:.2f}x less)")
    return reason


def _failed_again(failed: Sequence[Point]) -> str:
    if not failed:
        return ""
    named = ", ".join(f"{p.config.label()} at concurrency {p.concurrency}" for p in failed)
    return f" ({len(failed)} point(s) missed the bound when measured again: {named})"


def peak_memory(points: Sequence[Point], config: Config) -> int:
    """The highest RSS ``config``'s server reached in any of its points."""
    return max((p.memory_bytes for p in points if p.config == config), default=0)


def pod_memory_bytes(peak_bytes: int, margin: float) -> int:
    """Peak RSS plus the margin, rounded up to a whole MiB."""
    return math.ceil(peak_bytes * (1 + margin) / MIB) * MIB


def pod_resources(config: Config, peak_bytes: int, margin: float) -> dict[str, Any]:
    """``spec.resources`` for a pod of ``config``: a CPU limit as high as the request, memory with the margin."""
    memory = f"{pod_memory_bytes(peak_bytes, margin) // MIB}Mi"
    cpu = str(config.cpus)
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}


def replicas_for(target_rps: float, throughput: float) -> int:
    """Pods of ``throughput`` inferences/s each that ``target_rps`` needs (at least one)."""
    return max(1, math.ceil(target_rps / throughput))


def point_dict(point: Point, p99_ms: float) -> dict[str, Any]:
    return {**dataclasses.asdict(point.config), "concurrency": point.concurrency,
            "throughput": round(point.throughput, 2), "throughput_per_cpu": round(point.throughput_per_cpu, 2),
            "p50_ms": round(point.p50_ms, 3), "p99_ms": round(point.p99_ms, 3), "cpu": point.cpu,
            "memory_bytes": point.memory_bytes, "requests": point.requests, "errors": point.errors,
            "within_bound": point.within(p99_ms), "client": point.client, "client_cpus": point.client_cpus,
            "phase": point.phase}


@dataclass(frozen=True, slots=True)
class Goals:
    p99_ms: float
    target_rps: float | None
    memory_margin: float


def report(points: Sequence[Point], plan: Plan, goals: Goals, skipped: Sequence[dict[str, Any]],
           notes: Sequence[str]) -> dict[str, Any]:
    """The whole report: every point, the choice and why, the pod, replicas, the default beside it."""
    choice = choose(points, goals.p99_ms)
    result: dict[str, Any] = {
        "p99_ms": goals.p99_ms, "points": [point_dict(p, goals.p99_ms) for p in points],
        "chosen": None, "closest": None, "reason": choice.reason, "resources": None,
        "memory_margin": goals.memory_margin, "target_rps": goals.target_rps, "replicas": None,
        "default": _default(points, plan, goals), "skipped": list(skipped), "notes": list(notes),
    }
    if choice.closest is not None:
        result["closest"] = point_dict(choice.closest, goals.p99_ms)
    chosen = choice.chosen
    if chosen is None:
        return result
    peak = peak_memory(points, chosen.config)
    result["chosen"] = point_dict(chosen, goals.p99_ms) | {"peak_memory_bytes": peak, "confirmed": choice.confirmed}
    result["resources"] = pod_resources(chosen.config, peak, goals.memory_margin)
    if goals.target_rps is not None:
        result["replicas"] = replicas_for(goals.target_rps, chosen.throughput)
    default = result["default"]
    if default is not None and default["best"] is not None:
        default["chosen_gain"] = round(chosen.throughput_per_cpu / default["best"]["throughput_per_cpu"], 3)
    return result


def _default(points: Sequence[Point], plan: Plan, goals: Goals) -> dict[str, Any] | None:
    """Serve's defaults as measured in this run: their best point under the bound (None: none met it)."""
    if plan.default is None:
        return None
    own = [p for p in points if p.config == plan.default]
    best = choose(own, goals.p99_ms).chosen
    return {**dataclasses.asdict(plan.default), "measured": bool(own),
            "best": point_dict(best, goals.p99_ms) if best else None}


def table(result: dict[str, Any]) -> str:
    """The report for a terminal: one row per point, then the choice, the pod and the replicas."""
    head = ("cpus", "threads", "inst", "maxbatch", "conc", "inf/s", "inf/s/cpu", "p50 ms", "p99 ms", "RSS MiB", "")
    rows = [head] + [_row(p, result) for p in result["points"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines + [""] + _summary(result)) + "\n"


def _row(point: dict[str, Any], result: dict[str, Any]) -> tuple[str, ...]:
    over = "" if point["within_bound"] else "over"
    if point["phase"] == CONFIRM:
        mark = ", ".join(filter(None, ("again", over)))
    else:
        mark = "chosen" if _same(point, result["chosen"]) else over
    if point["errors"]:
        mark = f"{point['errors']} failed"
    return (str(point["cpus"]), str(point["intra_op_threads"]), str(point["instances"]),
            str(point["max_batch_size"]), str(point["concurrency"]), f"{point['throughput']:.0f}",
            f"{point['throughput_per_cpu']:.0f}", f"{point['p50_ms']:.2f}", f"{point['p99_ms']:.2f}",
            f"{point['memory_bytes'] / MIB:.0f}", mark)


def _same(point: dict[str, Any], other: dict[str, Any] | None) -> bool:
    keys = ("cpus", "intra_op_threads", "instances", "max_batch_size", "concurrency")
    return other is not None and all(point[k] == other[k] for k in keys)


def _summary(result: dict[str, Any]) -> list[str]:
    lines = [("Chosen: " if result["chosen"] else "None chosen: ") + result["reason"]]
    if result["chosen"] and result["chosen"]["confirmed"]:
        lines.append("Measured again on a fresh server: still under the bound; the chosen figures are the worse "
                     "of the two")
    elif result["chosen"]:
        lines.append("Not measured again (--confirmations 0, or see the notes): a single point on a noisy machine")
    if result["resources"]:
        requests = result["resources"]["requests"]
        lines.append(f"Pod: cpu {requests['cpu']}, memory {requests['memory']} (peak RSS "
                     f"{result['chosen']['peak_memory_bytes'] / MIB:.0f} MiB + {result['memory_margin']:.0%})")
    if result["replicas"] is not None:
        lines.append(f"Replicas for {result['target_rps']:g} inf/s: {result['replicas']}")
    default = result["default"]
    if default and default["best"] and result["chosen"]:
        lines.append(f"Against serve's defaults ({default['cpus']} CPUs, {default['intra_op_threads']} threads, "
                     f"{default['instances']} instance, max batch {default['max_batch_size']}): "
                     f"{default['chosen_gain']:.2f}x their throughput per CPU")
    lines += [f"Note: {note}" for note in result["notes"]]
    if result["skipped"]:
        lines.append(f"Skipped {len(result['skipped'])} configuration(s) (the report says why)")
    return lines
