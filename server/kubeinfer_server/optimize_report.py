"""The decision ``kubeinfer-server optimize`` takes, its report and the table it prints. Pure: figures in, data out.

``decide`` gates one candidate: kept only if its degradation is within the
budget and its speedup at least the minimum; a candidate whose accuracy was
not measured (no validation data) is ``not_measured`` and kept only when the
user said ``--accept-unvalidated``. ``choose`` keeps the fastest candidate
that passed (``auto`` makes several). ``table`` renders a report for a
terminal. The report's keys are a contract (ARCHITECTURE.md, the optimize
CLI): ``decision``, ``reason``, ``baseline`` and ``candidate`` (each with
``metric``, ``p50_ms``, ``throughput``, ``bytes``), ``speedup``,
``degradation``, ``sha256_in``, ``sha256_out``.

``termination_message`` is the report cut to what the operator puts in an
InferenceDeployment's ``status.optimization`` (its field names): a
container's termination message is capped at 4096 bytes, and the whole
report is larger.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubeinfer_server.provenance import NOT_OPTIMIZED

ACCEPTED, REJECTED, NOT_MEASURED = "accepted", "rejected", "not_measured"
TERMINATION_MESSAGE_BYTES = 4096  # what the kubelet keeps of a termination message
MESSAGE_TEXT_CHARS = 1500  # of a reason or an error: the rest of the message is bounded figures
METRICS = ("top1", "agreement", "mse", "cosine")  # what the degradation is measured in (optimize_measure)


@dataclass(frozen=True)
class Gates:
    max_degradation: float
    min_speedup: float
    accept_unvalidated: bool
    batch_size: int
    metric: str


@dataclass(frozen=True)
class Decision:
    decision: str
    reason: str
    keep: bool


def decide(degradation: float | None, speedup: float, gates: Gates) -> Decision:
    """The decision for one candidate, and why, in words a person acts on."""
    speed = (f"{speedup:.2f}x the original's throughput at batch {gates.batch_size}")
    failures = []
    if degradation is not None and math.isnan(degradation):
        failures.append(f"{gates.metric} is not a number: the candidate's outputs hold NaN or infinity")
    elif degradation is not None and degradation > gates.max_degradation:
        failures.append(f"{_change(gates.metric, degradation)}, more than --max-degradation {gates.max_degradation:g}")
    if speedup < gates.min_speedup:
        failures.append(f"{speed}, under --min-speedup {gates.min_speedup:g}")
    if failures:
        return Decision(REJECTED, "; ".join(failures), False)
    speed_ok = f"{speed} (--min-speedup {gates.min_speedup:g})"
    if degradation is None:
        if gates.accept_unvalidated:
            return Decision(NOT_MEASURED, f"accuracy not measured (no --validation), kept on --accept-unvalidated; "
                                          f"{speed_ok}", True)
        return Decision(NOT_MEASURED, "accuracy not measured (no --validation): give --validation rows, or "
                                      f"--accept-unvalidated to keep it unmeasured; {speed_ok}", False)
    return Decision(ACCEPTED, f"{_change(gates.metric, degradation)} (--max-degradation {gates.max_degradation:g}) and "
                              f"{speed_ok}", True)


def _change(metric: str, degradation: float) -> str:
    if degradation < 0:
        return f"{metric} improved by {-degradation:.4g}"
    return f"{metric} degraded by {degradation:.4g}"


def choose(candidates: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The candidate to report, and whether it is kept: the fastest that passed; when none did, the fastest."""
    kept = [c for c in candidates if c["keep"]]
    pool = kept or list(candidates)
    return max(pool, key=lambda c: c["speedup"]), bool(kept)


def overall_reason(chosen: dict[str, Any], candidates: Sequence[dict[str, Any]], kept: bool) -> str:
    """The reason for the whole run: the chosen candidate's, and what became of the others."""
    if len(candidates) == 1:
        return chosen["reason"]
    if kept:
        others = ", ".join(f"{c['method']} ({c['decision']}, {c['speedup']:.2f}x)" for c in candidates
                           if c is not chosen)
        return f"{chosen['method']}, the fastest that passed: {chosen['reason']}; also tried: {others}"
    return "no method passed: " + "; ".join(f"{c['method']}: {c['reason']}" for c in candidates)


def side(metric: float | None, p50_ms: float, p99_ms: float, throughput: float, size: int,
         sha256: str) -> dict[str, Any]:
    """One model's figures as the report holds them (``baseline`` and each candidate start from this)."""
    return {"metric": metric, "p50_ms": round(p50_ms, 4), "p99_ms": round(p99_ms, 4),
            "throughput": round(throughput, 1), "bytes": size, "sha256": sha256}


def termination_message(report: dict[str, Any]) -> dict[str, Any]:
    """The decision, its reason, both sides' figures and what is served (the file's sha256, the method,
    ``none`` for the original), in status.optimization's names; a few hundred bytes and the reason."""
    written = report["written"]
    candidate = report["candidate"]
    return {
        "decision": report["decision"], "reason": _clip(report["reason"]),
        "method": report["method"] if written else NOT_OPTIMIZED,
        "baseline": _compact(report["baseline"]),
        "candidate": {"method": candidate["method"], **_compact(candidate)},
        "servedSha256": report["sha256_out"] if written else report["sha256_in"],
    }


def error_message(error: str) -> dict[str, Any]:
    """A run that took no decision (exit 1 or 2): what went wrong, for the termination message."""
    return {"error": _clip(error)}


def _compact(figures: dict[str, Any]) -> dict[str, Any]:
    """One side's figures; a metric that is not a number (NaN outputs) as null, which JSON can carry."""
    metric = figures["metric"]
    return {"metric": metric if metric is None or math.isfinite(metric) else None, "p50Ms": figures["p50_ms"],
            "throughput": figures["throughput"], "bytes": figures["bytes"]}


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE_TEXT_CHARS else text[:MESSAGE_TEXT_CHARS - 3] + "..."


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"


def heading(report: dict[str, Any]) -> str:
    measured = (f"{report['metric']} on {report['validation_rows']:,} validation rows" if report["validation_rows"]
                else "accuracy not measured")
    return (f"{report['model_in']}: {'auto: ' if report['options']['method'] == 'auto' else ''}"
            f"{', '.join(c['method'] for c in report['candidates'])} on {', '.join(report['providers'])}, "
            f"{report['intra_op_threads']} intra-op threads; {measured}")


def table(report: dict[str, Any]) -> str:
    """The report for a terminal: the baseline beside each candidate, then the decision."""
    base, candidates = report["baseline"], report["candidates"]
    columns: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = [
        ("original", base, None), *((c["method"], c, c) for c in candidates)]

    def row(label: str, cell) -> tuple[str, list[str]]:
        return label, [cell(figures, candidate) for _, figures, candidate in columns]

    def of_candidate(cell):
        return lambda figures, candidate: "-" if candidate is None else cell(candidate)

    rows = [
        row(report["metric"] if base["metric"] is not None else f"{report['metric']} (not measured)",
            lambda f, c: _number(f["metric"])),
        row("degradation", of_candidate(lambda c: _number(c["degradation"]))),
        row("p50 ms, batch 1", lambda f, c: _number(f["p50_ms"], 3)),
        row("p99 ms, batch 1", lambda f, c: _number(f["p99_ms"], 3)),
        row(f"rows/s, batch {report['options']['batch_size']}", lambda f, c: _number(f["throughput"], 1)),
        row("speedup", of_candidate(lambda c: f"{c['speedup']:.2f}x")),
        row("bytes", lambda f, c: _number(f["bytes"])),
    ]
    if "compressed_bytes" in base:
        rows.append(row("bytes, compressed", lambda f, c: _number(f.get("compressed_bytes"))))
        rows.append(row("sparsity", of_candidate(lambda c: _number(c["details"].get("sparsity")))))
    rows.append(row("decision", of_candidate(lambda c: c["decision"])))
    width = max(len(label) for label, _ in rows) + 2
    cells = [max(12, len(name) + 2, *(len(values[i]) + 2 for _, values in rows)) for i, (name, _, _) in
             enumerate(columns)]
    lines = [heading(report), " " * width + "".join(name.rjust(cells[i]) for i, (name, _, _) in enumerate(columns))]
    lines += [label.ljust(width) + "".join(v.rjust(cells[i]) for i, v in enumerate(values)) for label, values in rows]
    lines.append(f"{report['decision']}: {report['reason']}")
    if report.get("note"):
        lines.append(report["note"])
    lines.append(f"wrote {report['model_out']} (sha256 {report['sha256_out']})" if report["written"]
                 else f"{report['model_out']} not written")
    return "\n".join(lines) + "\n"
