"""``kubeinfer-server optimize``: make a cheaper model, measure it beside the original, keep it only if it earns it.

``run`` takes ``OptimizeSettings`` and, top-down:

1. loads the original (MODEL_IN) on the providers and threads given, and
   reads the validation and calibration rows (``optimize_measure.read_rows``),
   so that every mistake in the data is said before any compute;
2. makes one candidate per method (``auto``: every method that fits the
   providers, ``optimize_methods.methods_for``) in a scratch folder;
3. scores each candidate's outputs against the original's on the validation
   rows, ``--batch-size`` rows a run (dynamic quantization's activation
   ranges are per run, so its outputs depend on the batch: it is scored at
   the size it is timed at), and times them all, interleaved, on the same
   providers and threads;
4. decides (``optimize_report.decide``: degradation within the budget,
   speedup at least the minimum) and, when the chosen candidate is kept,
   writes it to MODEL_OUT, whole (a rename), with its record beside it
   (``provenance.write_record``: the method and both sha256, what the server
   reports of the file it serves), and nothing otherwise;
5. returns the report (the JSON written to ``--report`` and, as a table, to
   stdout; a compact copy, ``optimize_report.termination_message``, goes
   where Kubernetes reads a container's last words).

``--in-place`` lets MODEL_OUT be MODEL_IN: the init step of a pod replaces
the fetched file only when the candidate is kept, and leaves it as fetched
otherwise.

Exit codes (the CLI's): 0 kept, 3 not kept (``Report.written`` false), 1
``OptimizeFailed`` (a model that does not load, a converter that fails, a file
that cannot be written), 2 ``OptimizeUsageError`` (arguments or data that do
not fit; nothing was computed).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubeinfer_server import optimize_measure as measure
from kubeinfer_server import optimize_methods as methods
from kubeinfer_server import optimize_report as report
from kubeinfer_server import provenance
from kubeinfer_server.batchrun import TERMINATION_LOG
from kubeinfer_server.cpulimit import cgroup_cpu_limit
from kubeinfer_server.errors import ModelLoadError
from kubeinfer_server.fetch import file_sha256
from kubeinfer_server.model import Model, ModelOptions

log = logging.getLogger(__name__)

UNVALIDATED_METHODS = ("dynamic", "float16")  # the ones the issue lets run without validation data
PRUNE_NOTE = ("prune: ONNX Runtime runs a pruned model as a dense one (a zero costs what any weight costs), so on "
              "a CPU it is no faster and its file no smaller; the zeros pay off compressed (compressed_bytes) or "
              "on sparse kernels")


class OptimizeUsageError(ValueError):
    """The arguments or the data do not fit: nothing was computed (exit 2)."""


class OptimizeFailed(Exception):
    """The run stopped: a model did not load, a converter failed, a file could not be written (exit 1)."""


@dataclass(frozen=True)
class OptimizeSettings:
    model_in: str
    model_out: str
    method: str
    calibration: str | None = None
    validation: str | None = None
    input_format: str | None = None
    input_columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    label_column: str | None = None
    metric: str | None = None  # None: top1 with a label column, else agreement (mse for one-value outputs)
    max_degradation: float = 0.01
    min_speedup: float = 1.0
    prune_sparsity: float = 0.5
    batch_size: int = 32
    calibration_method: str = "minmax"
    calibration_samples: int = 256
    providers: tuple[str, ...] = ("cpu",)
    intra_op_threads: int = 0
    measure_seconds: float = 4.0
    report: str | None = None
    accept_unvalidated: bool = False
    allow_cpu_float16: bool = False
    in_place: bool = False  # MODEL_OUT may be MODEL_IN: replaced only when the candidate is kept

    def __post_init__(self) -> None:
        for problem in _problems(self):
            raise OptimizeUsageError(problem)

    def options(self) -> dict[str, Any]:
        values = asdict(self)
        values["input_columns"] = {k: list(v) for k, v in sorted(self.input_columns.items())}
        values["providers"] = list(self.providers)
        return values


def _problems(s: OptimizeSettings) -> list[str]:
    """What is wrong with the settings, first things first (before any file is opened)."""
    checks = [
        (s.method not in methods.METHOD_CHOICES, f"--method takes {', '.join(methods.METHOD_CHOICES)}"),
        (not s.in_place and _same_file(s.model_in, s.model_out),
         "MODEL_OUT is MODEL_IN: write the optimized model to another file, or give --in-place"),
        (s.metric is not None and s.metric not in report.METRICS, f"--metric takes {', '.join(report.METRICS)}"),
        (s.calibration_method not in methods.CALIBRATION_METHODS,
         f"--calibration-method takes {', '.join(methods.CALIBRATION_METHODS)}"),
        (not 0 < s.prune_sparsity < 1, f"--prune-sparsity must be between 0 and 1, got {s.prune_sparsity:g}"),
        (s.batch_size < 1 or s.calibration_samples < 1, "--batch-size and --calibration-samples must be at least 1"),
        (s.intra_op_threads < 0, "--intra-op-threads must be >= 0 (0: the CPU limit)"),
        (not (0 <= s.max_degradation < math.inf and 0 <= s.min_speedup < math.inf),
         "--max-degradation and --min-speedup must be finite numbers >= 0"),
        (not 0 < s.measure_seconds < math.inf, "--measure-seconds must be more than 0"),
        (s.metric == "top1" and not s.label_column, "--metric top1 needs --label-column (the true class of each row)"),
        (bool(s.label_column) and not s.validation, "--label-column names a column of --validation: give --validation"),
        (s.method == "static" and not s.calibration,
         "--method static needs --calibration rows (its activation ranges come from them)"),
        (s.method in ("static", "prune") and not s.validation,
         f"--method {s.method} needs --validation rows: only {' and '.join(UNVALIDATED_METHODS)} run unvalidated "
         "(with --accept-unvalidated)"),
    ]
    return [message for failed, message in checks if failed]


def _same_file(a: str, b: str) -> bool:
    return os.path.abspath(a.removeprefix("file://")) == os.path.abspath(b.removeprefix("file://"))


@dataclass
class _Made:
    """One model measured: the original or a candidate, its file, its session and what its converter said."""

    method: str  # "original" for MODEL_IN
    path: str
    model: Model
    sha256: str
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # making it


def run(settings: OptimizeSettings) -> dict[str, Any]:
    """Makes, measures and decides; returns the report (``written`` says whether MODEL_OUT was written)."""
    model_in = settings.model_in.removeprefix("file://")
    _check_writable(settings.model_out, "MODEL_OUT")
    if settings.report:
        _check_writable(settings.report, "--report")
    sha_in = _sha256(model_in, "MODEL_IN")
    original = _Made("original", model_in, _load("original", model_in, settings), sha_in)
    metric = _metric(settings, original.model)
    validation, calibration = _data(settings, original.model)
    chosen = _methods(settings, original.model.providers, calibration is not None, validation is not None)
    with tempfile.TemporaryDirectory(prefix="kubeinfer-optimize-") as scratch:
        made = [_make(method, model_in, scratch, settings, original.model.providers, calibration) for method in chosen]
        result = _measure(settings, metric, original, made, validation, calibration)
        if result["written"]:
            _publish(next(c.path for c in made if c.method == result["method"]), settings.model_out)
            _record(settings.model_out, result["method"], result["sha256_out"], sha_in)
    log.info("Optimize %s: %s, %s", settings.model_in, result["decision"], result["reason"])
    return {**result, "sha256_in": sha_in, "model_in": settings.model_in, "model_out": settings.model_out,
            "providers": list(original.model.providers),
            "intra_op_threads": settings.intra_op_threads or cgroup_cpu_limit(), "options": settings.options()}


def _check_writable(path: str, what: str) -> None:
    """Said before any compute: a file can be made in ``path``'s folder (a probe, not permission bits)."""
    target = Path(path.removeprefix("file://"))
    if target.is_dir():
        raise OptimizeUsageError(f"{what} {path!r} is a folder: give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise OptimizeFailed(f"cannot write {what} {path!r}: {exc.strerror or exc}") from None


def _sha256(path: str, what: str) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise OptimizeFailed(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None


def _load(name: str, path: str, settings: OptimizeSettings) -> Model:
    try:
        return Model(name, path, ModelOptions(settings.providers, settings.intra_op_threads, 1))
    except ModelLoadError as exc:
        what = "MODEL_IN" if name == "original" else f"the {name} candidate"
        raise OptimizeFailed(f"{what}: {exc}") from None


def _metric(settings: OptimizeSettings, baseline: Model) -> str:
    """The metric in effect, checked against the model's first output."""
    output = baseline.outputs[0]
    width = measure.output_width(output)
    metric = settings.metric or ("top1" if settings.label_column else "agreement" if width != 1 else "mse")
    if metric in ("top1", "agreement") and width == 1:
        raise OptimizeUsageError(f"--metric {metric} compares top-1 classes, but the model's first output "
                                 f"{output.name!r} holds one value a row: use --metric mse or cosine")
    if output.datatype.name == "BYTES":
        raise OptimizeUsageError(f"the model's first output {output.name!r} is text: there is nothing to compare")
    return metric


def _data(settings: OptimizeSettings, baseline: Model) -> tuple[measure.Rows | None, measure.Rows | None]:
    """The validation rows (labelled when asked) and the calibration rows, read and checked."""
    validation = calibration = None
    try:
        if settings.validation:
            validation = measure.read_rows("validation", settings.validation, settings.input_format,
                                           baseline.inputs, settings.input_columns, settings.label_column,
                                           settings.batch_size)
            width = measure.output_width(baseline.outputs[0])
            if validation.labels is not None and width is not None:
                measure.check_labels(validation, width)
        if settings.calibration and settings.method not in ("static", "auto"):
            log.warning("Ignored --calibration: only static quantization (and auto) calibrates")
        elif settings.calibration:
            calibration = measure.read_rows("calibration", settings.calibration, settings.input_format,
                                            baseline.inputs, settings.input_columns, None, settings.batch_size,
                                            settings.calibration_samples)
    except measure.DataError as exc:
        raise OptimizeUsageError(str(exc)) from None
    return validation, calibration


def _methods(settings: OptimizeSettings, providers: tuple[str, ...], calibrated: bool, validated: bool) -> list[str]:
    if settings.method != "auto":
        refusal = methods.float16_refusal(providers)
        if settings.method == "float16" and refusal and not settings.allow_cpu_float16:
            raise OptimizeUsageError(refusal)
        return [settings.method]
    found = methods.methods_for(providers, calibrated, validated, settings.allow_cpu_float16)
    if not found:
        raise OptimizeUsageError(f"--method auto found no method for {', '.join(providers)} with the data given")
    return found


def _make(method: str, source: str, scratch: str, settings: OptimizeSettings, providers: tuple[str, ...],
          calibration: measure.Rows | None) -> _Made:
    """Writes ``method``'s candidate into ``scratch`` and loads it as the original is loaded."""
    dest = os.path.join(scratch, f"{method}.onnx")
    started = time.monotonic()
    try:
        details = methods.make(method, source, dest, providers=providers,
                               calibration=calibration.batches if calibration else (),
                               calibration_method=settings.calibration_method, sparsity=settings.prune_sparsity)
    except methods.MethodFailed as exc:
        raise OptimizeFailed(str(exc)) from None
    seconds = time.monotonic() - started
    log.info("Made the %s candidate of %s in %.1f s", method, source, seconds)
    return _Made(method, dest, _load(method, dest, settings), _sha256(dest, "the candidate"), details, seconds)


def _measure(settings: OptimizeSettings, metric: str, original: _Made, made: list[_Made],
             validation: measure.Rows | None, calibration: measure.Rows | None) -> dict[str, Any]:
    """Accuracy (when there are validation rows) and speed of every candidate, the decision, the report's body."""
    tallies = measure.compare(validation, original.model, [c.model for c in made]) if validation else None
    rows = validation or calibration
    try:
        one, batch = ((measure.take(rows, 1), measure.take(rows, settings.batch_size)) if rows else
                      (measure.synthetic_feeds(original.model.inputs, 1),
                       measure.synthetic_feeds(original.model.inputs, settings.batch_size)))
    except measure.DataError as exc:
        raise OptimizeUsageError(str(exc)) from None
    speeds = measure.measure_speed([original.model, *(c.model for c in made)], one, batch, settings.measure_seconds)
    labelled = validation is not None and validation.labels is not None
    prune = any(c.method == "prune" for c in made)
    baseline = _figures(original, speeds[0], tallies[0] if tallies else None, metric, labelled, prune)
    gates = report.Gates(settings.max_degradation, settings.min_speedup, settings.accept_unvalidated,
                         settings.batch_size, metric)
    candidates = []
    for i, candidate in enumerate(made):
        figures = _figures(candidate, speeds[i + 1], tallies[1][i] if tallies else None, metric, labelled, prune)
        candidates.append(_judge(figures, baseline, tallies[0] if tallies else None,
                                 tallies[1][i] if tallies else None, gates))
    chosen, kept = report.choose(candidates)
    body = {
        "decision": chosen["decision"], "reason": report.overall_reason(chosen, candidates, kept),
        "method": chosen["method"], "metric": metric, "baseline": baseline,
        "candidate": {k: v for k, v in chosen.items() if k != "keep"},
        "speedup": chosen["speedup"], "degradation": chosen["degradation"],
        "sha256_out": chosen["sha256"] if kept else None, "written": kept,
        "validation_rows": validation.count if validation else None,
        "candidates": [{k: v for k, v in c.items() if k != "keep"} for c in candidates],
    }
    if prune:
        body["note"] = PRUNE_NOTE
    return body


def _figures(made: _Made, speed: measure.Speed, tally: measure.Tally | None, metric: str, labelled: bool,
             compressed: bool) -> dict[str, Any]:
    """One model's side of the report: metric, speed, size, sha256, and the accuracy figures behind the metric."""
    figures = report.side(measure.metric_value(metric, tally) if tally else None, speed.p50_ms, speed.p99_ms,
                          speed.throughput, os.path.getsize(made.path), made.sha256)
    figures["accuracy"] = tally.summary(labelled) if tally else None
    if compressed:
        figures["compressed_bytes"] = _compressed_size(made.path)
    if made.method != "original":
        figures = {"method": made.method, **figures, "details": made.details, "make_seconds": round(made.seconds, 3)}
    return figures


def _judge(figures: dict[str, Any], baseline: dict[str, Any], base: measure.Tally | None,
           tally: measure.Tally | None, gates: report.Gates) -> dict[str, Any]:
    """A candidate's figures with its speedup, degradation and decision."""
    degradation = measure.degradation(gates.metric, base, tally) if base and tally else None
    speedup = figures["throughput"] / baseline["throughput"]
    decision = report.decide(degradation, speedup, gates)
    return {**figures, "speedup": round(speedup, 4),
            "latency_speedup": round(baseline["p50_ms"] / figures["p50_ms"], 4),
            "degradation": None if degradation is None else round(degradation, 9),
            "decision": decision.decision, "reason": decision.reason, "keep": decision.keep}


def _compressed_size(path: str) -> int:
    """The file's size through zlib (level 6): what the zeros of a pruned model save on the wire or on a device."""
    import zlib

    compressor, size = zlib.compressobj(6), 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            size += len(compressor.compress(chunk))
    return size + len(compressor.flush())


def _record(model_out: str, method: str, sha256: str, source_sha256: str) -> None:
    try:
        provenance.write_record(model_out.removeprefix("file://"), method, sha256, source_sha256)
    except OSError as exc:
        raise OptimizeFailed(f"cannot write the record beside MODEL_OUT {model_out!r}: {exc}") from None


def write_termination_message(message: Mapping[str, Any], path: str = TERMINATION_LOG) -> None:
    """``message`` (``optimize_report.termination_message``, or an error) where Kubernetes reads a
    container's last words, when that file exists (in a pod)."""
    if not os.path.exists(path):
        return
    try:
        with open(path, "w") as handle:
            handle.write(json.dumps(message))
    except OSError as exc:
        log.warning("Could not write the termination message %s: %s", path, exc)


def _publish(source: str, dest: str) -> None:
    """Copies the kept candidate to MODEL_OUT whole: a temporary file beside it, then a rename."""
    target = Path(dest.removeprefix("file://"))
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise OptimizeFailed(f"cannot write MODEL_OUT {dest!r}: {exc}") from None
    log.info("Wrote the optimized model %s", dest)
