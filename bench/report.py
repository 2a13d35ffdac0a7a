"""Tables and target checks for server_bench.py: pure functions of measured results.

Reference points for one case (concurrency c, b rows per request):
- echo: the same case against the echo server (RPC ceiling, no compute);
- in-process: ONNX Runtime run sequentially on batches of the size the server
  could at best form: b when b > 1, else min(c, max batch size), rounded down
  to 1, 8, 32 or 64; timed right before and right after the case and
  averaged, so that load from elsewhere on the machine weighs on it as on the
  two servers.
Throughput ratios are server / reference (1.0 = as fast as the reference);
latency ratios are server / reference (1.0 = no added latency).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from harness import Load, Outcome, Stat

MEASURED_BATCHES = (1, 8, 32, 64)
BEGIN, END = "<!-- server_bench:begin -->", "<!-- server_bench:end -->"


@dataclass(frozen=True)
class Case:
    label: str
    load: Load


C1, C64, C64_STREAM, C2_B32 = "c1 b1", "c64 b1", "c64 b1 stream", "c2 b32"
CASES = (
    Case(C1, Load(1, 1)),
    Case("c8 b1", Load(8, 1)),
    Case(C64, Load(64, 1)),
    Case(C64_STREAM, Load(64, 1, streaming=True)),
    Case("c1 b32", Load(1, 32)),
    Case(C2_B32, Load(2, 32)),
)


@dataclass
class ModelResult:
    model: str
    in_process: dict[int, Stat] = field(default_factory=dict)
    runs: dict[tuple[str, str], Outcome] = field(default_factory=dict)  # (case label, "server"|"echo")
    reference: dict[str, Stat] = field(default_factory=dict)  # case label -> in-process, timed beside it
    mean_batch: dict[str, float] = field(default_factory=dict)  # case label -> server's executed batch size
    notes: list[str] = field(default_factory=list)

    def stat(self, label: str, target: str) -> Stat | None:
        outcome = self.runs.get((label, target))
        return outcome.stat if outcome else None


def reference_batch(load: Load, max_batch_size: int) -> int:
    rows = load.batch if load.batch > 1 else min(load.concurrency, max(max_batch_size, 1))
    return max(b for b in MEASURED_BATCHES if b <= rows)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(num: float | None, den: float | None) -> str:
    return "-" if num is None or not den else f"{num / den:.2f}"


def _table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:  # first column left-aligned, numbers right-aligned
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def render_model(result: ModelResult, cases: tuple[Case, ...], max_batch_size: int, markdown: bool) -> str:
    title = f"### {result.model}" if markdown else f"== {result.model} =="
    inproc = "; ".join(f"b{b}: {s.throughput:.0f} rows/s, p50 {s.p50_ms:.2f} ms, p99 {s.p99_ms:.2f} ms"
                       for b, s in sorted(result.in_process.items()))
    absolute, ratios = [], []
    for case in cases:
        srv, echo = result.stat(case.label, "server"), result.stat(case.label, "echo")
        ref_b = reference_batch(case.load, max_batch_size)
        ref = result.reference.get(case.label) or result.in_process.get(ref_b)
        absolute.append([
            case.label,
            _num(srv and srv.throughput, ".0f"), _num(srv and srv.p50_ms, ".2f"), _num(srv and srv.p99_ms, ".2f"),
            _num(result.mean_batch.get(case.label), ".1f"),
            _num(echo and echo.throughput, ".0f"), _num(echo and echo.p50_ms, ".2f"), _num(echo and echo.p99_ms, ".2f"),
            f"b{ref_b}",
            _num(ref and ref.throughput, ".0f"), _num(ref and ref.p50_ms, ".2f"), _num(ref and ref.p99_ms, ".2f"),
        ])
        ratios.append([
            case.label,
            _ratio(srv and srv.throughput, ref and ref.throughput),
            _ratio(srv and srv.throughput, echo and echo.throughput),
            _ratio(srv and srv.p50_ms, ref and ref.p50_ms), _ratio(srv and srv.p50_ms, echo and echo.p50_ms),
            _ratio(srv and srv.p99_ms, ref and ref.p99_ms), _ratio(srv and srv.p99_ms, echo and echo.p99_ms),
        ])
    parts = [
        title,
        *([""] if markdown else []),
        f"in-process ONNX Runtime: {inproc}",
        "",
        _table(["case", "server inf/s", "p50 ms", "p99 ms", "batch", "echo inf/s", "p50 ms", "p99 ms",
                "in-proc", "inf/s", "p50 ms", "p99 ms"], absolute, markdown),
        "",
        "ratios (server / reference):",
        "",
        _table(["case", "inf/s ÷in-proc", "÷echo", "p50 ÷in-proc", "÷echo", "p99 ÷in-proc", "÷echo"],
               ratios, markdown),
        *([""] if markdown else []),
    ]
    side = [(case.label, result.runs.get((case.label, "server"))) for case in cases]
    side = [(label, o.server_side) for label, o in side if o and o.server_side]
    if side:
        parts += [
            *([] if markdown else [""]),
            "server-side averages from the server's ModelStatistics (ms):",
            "",
            _table(["case", "request", "overhead", "queue", "compute"],
                   [[label, f"{s.request_ms:.2f}", f"{s.overhead_ms:.2f}", f"{s.queue_ms:.2f}", f"{s.compute_ms:.2f}"]
                    for label, s in side], markdown),
            *([""] if markdown else []),
        ]
    return "\n".join(parts)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def check_targets(result: ModelResult) -> list[tuple[str, str, str]]:
    """(verdict, target, detail) per target of the issue; verdict PASS, FAIL, INFO or N/A."""
    checks = []
    name = f"{C64} throughput >= 80% of echo"
    srv, echo = result.stat(C64, "server"), result.stat(C64, "echo")
    checks.append((_verdict(srv.throughput >= 0.8 * echo.throughput), name,
                   f"{srv.throughput:.0f} vs echo {echo.throughput:.0f} inf/s ({srv.throughput / echo.throughput:.0%})")
                  if srv and echo else ("N/A", name, "a run failed"))

    name = f"{C1} p50 <= echo p50 + in-process p50 + 0.1 ms"
    srv, echo, ref = result.stat(C1, "server"), result.stat(C1, "echo"), result.reference.get(C1)
    bound = echo and ref and echo.p50_ms + ref.p50_ms + 0.1
    checks.append((_verdict(srv.p50_ms <= bound), name,
                   f"{srv.p50_ms:.3f} ms vs {echo.p50_ms:.3f} + {ref.p50_ms:.3f} + 0.1 = {bound:.3f} ms")
                  if srv and bound else ("N/A", name, "a run failed"))

    # Two clients keep the server busy: one request's transfer overlaps the other's compute.
    name = f"{C2_B32} throughput >= 75% of in-process batch-32 throughput"
    srv, ref = result.stat(C2_B32, "server"), result.reference.get(C2_B32)
    checks.append((_verdict(srv.throughput >= 0.75 * ref.throughput), name,
                   f"{srv.throughput:.0f} vs {ref.throughput:.0f} rows/s ({srv.throughput / ref.throughput:.0%})")
                  if srv and ref else ("N/A", name, "a run failed"))

    name = "ModelStreamInfer at c64 beside unary"
    unary, stream, echo = result.stat(C64, "server"), result.stat(C64_STREAM, "server"), result.stat(C64_STREAM, "echo")
    checks.append(("INFO", name, f"stream {stream.throughput:.0f} vs unary {unary.throughput:.0f} inf/s "
                   f"({stream.throughput / unary.throughput:.2f}x); echo stream "
                   f"{_num(echo and echo.throughput, '.0f')} inf/s")
                  if unary and stream else ("N/A", name, "a run failed"))
    return checks


REFERENCE_MODELS = {"linear"}  # measured for comparison: the targets are for mlp and cnn


def render_targets(result: ModelResult, markdown: bool = False) -> str:
    bullet = "- " if markdown else "  "
    lines = ["Targets:", ""] if markdown else ["targets:"]
    reference = result.model in REFERENCE_MODELS
    for verdict, name, detail in check_targets(result):
        if reference and verdict in ("PASS", "FAIL"):
            verdict, detail = "INFO", f"{detail} (a reference model: no target)"
        lines.append(f"{bullet}[{verdict}] {result.model}: {name}: {detail}")
    errors = [(label, target, o.error) for (label, target), o in result.runs.items() if o.error]
    for label, target, error in errors:
        lines.append(f"{bullet}ERROR {result.model} {label} -> {target}:")
        lines.append("```" if markdown else "")
        lines.extend(("    " if not markdown else "") + line for line in error.splitlines())
        lines.append("```" if markdown else "")
    for note in result.notes:
        lines.append(f"{bullet}NOTE {result.model}: {note}")
    return "\n".join(lines)


def write_markdown(path: Path, header: str, sections: list[str]) -> None:
    """Writes the run as one section of path, replacing the previous run's section."""
    body = "\n\n".join([BEGIN, f"## Last run\n\n{header}", *sections, END])
    text = path.read_text() if path.exists() else "# kubeinfer server benchmark results\n\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _m: body, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text.rstrip("\n") + "\n")
