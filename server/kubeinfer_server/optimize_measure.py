"""What ``kubeinfer-server optimize`` measures: the data it reads, the accuracy it scores, the speed it times.

- ``read_rows`` reads calibration or validation rows through ``dataset`` (the
  formats and the column mapping of ``kubeinfer-server batch``), whole, into
  memory, checking everything before any compute: a file that does not read,
  a column that does not feed the model, a bad row (a null, a list of the
  wrong length), a label that is not a class index: ``DataError``, which says
  which data and what to fix.
- ``Tally`` compares one model's first output with the original's, row by
  row: top-1 agreement, top-1 accuracy against labels, absolute and squared
  error, cosine similarity. ``metric_value`` and ``degradation`` turn two
  tallies into the figures the decision takes (degradation is absolute, in the
  metric's units, positive when the candidate is worse), from counts where the
  metric is a share, so 99 of 100 is exactly 0.01.
- ``measure_speed`` times every model on the same feeds, interleaved (each
  round runs each model once, in a rotating order, so a noisy neighbour costs
  them alike): latency at batch 1 (p50, p99) and throughput at the batch size
  (rows over the median batch time).

No decisions here, and nothing of the command line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa

from kubeinfer_server import dataset
from kubeinfer_server.model import TensorSpec

Feeds = dict[str, np.ndarray]
WARM_UP_RUNS = 3
MIN_ROUNDS = 10


class DataError(ValueError):
    """Calibration or validation data that cannot be used as given; the message says what to fix."""


class Runs(Protocol):
    def run(self, instance: int, feeds: Feeds) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Rows:
    """Rows read into memory: the model's feeds in batches, and each batch's labels when asked for."""

    batches: list[Feeds]
    labels: list[np.ndarray] | None
    count: int


def read_rows(what: str, uri: str, input_format: str | None, specs: Sequence[TensorSpec],
              columns: Mapping[str, tuple[str, ...]], label_column: str | None, batch_rows: int,
              limit: int | None = None) -> Rows:
    """Up to ``limit`` rows of ``uri`` (all when None) as feeds for ``specs``; ``what`` names the data in errors."""
    try:
        units = dataset.list_units(uri, input_format)
        schema = dataset.read_schema(units[0]) if units else None
        if schema is None:
            raise DataError(f"{what} {uri!r} holds no rows")
        mapping = dataset.Mapping(specs, schema, columns)
        if label_column:
            _check_label_type(schema, label_column)
        return _read(units, mapping, label_column, batch_rows, limit)
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from None
    except (dataset.DatasetError, dataset.MappingError, pa.ArrowException) as exc:
        raise DataError(f"{what}: {exc}") from None


def _read(units: Sequence[dataset.Unit], mapping: dataset.Mapping, label_column: str | None, batch_rows: int,
          limit: int | None) -> Rows:
    batches: list[Feeds] = []
    labels: list[np.ndarray] = []
    count = 0
    needed = [*mapping.columns, *([label_column] if label_column else [])]
    for unit in units:
        start = unit.first_row
        for batch in dataset.read_batches(unit, batch_rows):
            if limit is not None and count + batch.num_rows > limit:
                batch = batch.slice(0, limit - count)
            missing = [c for c in needed if c not in batch.schema.names]
            if missing:
                raise DataError(f"{unit.path} has no column {missing[0]!r} (columns: {', '.join(batch.schema.names)})")
            converted = mapping.convert(batch)
            if converted.reasons:
                row, reason = min(converted.reasons.items())
                raise DataError(f"{len(converted.reasons)} bad row(s) in {unit.path}, the first is row "
                                f"{start + row}: {reason}")
            batches.append(converted.feeds)
            if label_column:
                labels.append(_labels(batch.column(label_column), label_column, unit.path, start))
            count += batch.num_rows
            start += batch.num_rows
            if limit is not None and count >= limit:
                return Rows(batches, labels if label_column else None, count)
    if not count:
        raise DataError("no rows")
    return Rows(batches, labels if label_column else None, count)


def _check_label_type(schema: pa.Schema, name: str) -> None:
    if name not in schema.names:
        raise DataError(f"--label-column {name!r} is not a column (columns: {', '.join(schema.names)})")
    kind = schema.field(name).type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise DataError(f"--label-column {name!r} holds {kind}: it must hold class indices (integers from 0)")


def _labels(column: pa.Array, name: str, path: str, start: int) -> np.ndarray:
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path} row {start + row}: label column {name!r} is null")
    values = column.to_numpy(zero_copy_only=False)
    whole = np.isfinite(values) & (values == np.floor(values)) & (values >= 0)
    if not whole.all():
        row = int(np.flatnonzero(~whole)[0])
        raise DataError(f"{path} row {start + row}: label {values[row]!r} in {name!r} is not a class index "
                        "(an integer from 0)")
    return values.astype(np.int64)


def check_labels(rows: Rows, classes: int) -> None:
    """Every label names one of the first output's ``classes`` values."""
    highest = max((int(labels.max()) for labels in rows.labels or [] if len(labels)), default=-1)
    if highest >= classes:
        raise DataError(f"validation: a label is {highest}, but the model's first output has {classes} values a "
                        f"row (classes 0..{classes - 1})")


def take(rows: Rows, count: int) -> Feeds:
    """The first ``count`` rows as one batch of feeds (cycled when there are fewer)."""
    first, held = [], 0
    for batch in rows.batches:
        if held >= count:
            break
        first.append(batch)
        held += len(next(iter(batch.values())))
    joined = {name: np.concatenate([b[name] for b in first]) for name in first[0]}
    return {name: np.take(values, np.arange(count) % len(values), axis=0) for name, values in joined.items()}


def synthetic_feeds(specs: Sequence[TensorSpec], count: int, seed: int = 0) -> Feeds:
    """``count`` rows of standard-normal floats (zeros for integer inputs), for timing without data."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        if any(d < 0 for d in spec.shape[1:]) or spec.datatype.name == "BYTES":
            raise DataError(f"model input {spec.name!r} ({spec.datatype.name} {list(spec.shape)}) cannot be made "
                            "up: give --validation (or --calibration) rows to time the models on")
        shape = (count, *spec.shape[1:])
        dtype = spec.datatype.dtype
        values = rng.standard_normal(shape) if np.issubdtype(dtype, np.floating) else np.zeros(shape)
        feeds[spec.name] = values.astype(dtype)
    return feeds


# --- accuracy ----------------------------------------------------------------------------

@dataclass
class Tally:
    """One model's first output against the original's (and the labels), summed over the rows seen."""

    rows: int = 0
    values: int = 0
    agree: int = 0  # top-1 equal to the original's
    correct: int = 0  # top-1 equal to the label
    abs_sum: float = 0.0
    abs_max: float = 0.0
    sq_sum: float = 0.0
    cosine_sum: float = 0.0

    def add(self, reference: np.ndarray, output: np.ndarray, labels: np.ndarray | None) -> None:
        ref = reference.reshape(len(reference), -1).astype(np.float64)
        out = output.reshape(len(output), -1).astype(np.float64)
        top1 = out.argmax(axis=1)
        error = np.abs(out - ref)
        self.rows += len(out)
        self.values += out.size
        self.agree += int(np.count_nonzero(top1 == ref.argmax(axis=1)))
        self.correct += int(np.count_nonzero(top1 == labels)) if labels is not None else 0
        self.abs_sum += float(error.sum())
        self.abs_max = max(self.abs_max, float(error.max(initial=0.0)))
        self.sq_sum += float((error * error).sum())
        self.cosine_sum += float(cosine_rows(ref, out).sum())

    def summary(self, labelled: bool) -> dict[str, float | int]:
        figures: dict[str, float | int] = {
            "rows": self.rows, "agreement": self.agree / self.rows, "max_abs_error": self.abs_max,
            "mean_abs_error": self.abs_sum / self.values, "mse": self.sq_sum / self.values,
            "cosine": self.cosine_sum / self.rows}
        if labelled:
            figures["top1"] = self.correct / self.rows
        return figures


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each row's cosine similarity (1 where both rows are zero, 0 where only one is)."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    return np.where(both_zero, 1.0, np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0))


def compare(rows: Rows, baseline: Runs, candidates: Sequence[Runs]) -> tuple[Tally, list[Tally]]:
    """The baseline's tally (against itself: its top-1 accuracy) and each candidate's, over every row."""
    base, tallies = Tally(), [Tally() for _ in candidates]
    for i, feeds in enumerate(rows.batches):
        labels = rows.labels[i] if rows.labels is not None else None
        reference = baseline.run(0, feeds)[0]
        base.add(reference, reference, labels)
        for model, tally in zip(candidates, tallies, strict=True):
            tally.add(reference, model.run(0, feeds)[0], labels)
    return base, tallies


def metric_value(metric: str, tally: Tally) -> float:
    if metric == "top1":
        return tally.correct / tally.rows
    if metric == "agreement":
        return tally.agree / tally.rows
    if metric == "mse":
        return tally.sq_sum / tally.values
    return tally.cosine_sum / tally.rows


def degradation(metric: str, base: Tally, candidate: Tally) -> float:
    """How much worse the candidate is, in the metric's units (negative: better)."""
    if metric == "top1":
        return (base.correct - candidate.correct) / candidate.rows
    if metric == "agreement":
        return (candidate.rows - candidate.agree) / candidate.rows
    if metric == "mse":
        return metric_value("mse", candidate)
    return 1.0 - metric_value("cosine", candidate)


def output_width(spec: TensorSpec) -> int | None:
    """Values a row of this output holds, when the shape says."""
    return math.prod(spec.shape[1:]) if all(d >= 0 for d in spec.shape[1:]) else None


# --- speed -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Speed:
    p50_ms: float
    p99_ms: float
    throughput: float  # rows a second at the batch size
    latency_runs: int
    batch_runs: int


def measure_speed(models: Sequence[Runs], one_row: Feeds, batch: Feeds, seconds: float) -> list[Speed]:
    """Each model's latency at batch 1 and throughput on ``batch``, interleaved, in about ``seconds``."""
    latency = _interleaved(models, one_row, seconds / 2)
    per_batch = _interleaved(models, batch, seconds / 2)
    rows = len(next(iter(batch.values())))
    speeds = []
    for single, batched in zip(latency, per_batch, strict=True):
        p50, p99 = np.percentile(single, [50, 99]) * 1000
        speeds.append(Speed(float(p50), float(p99), rows / float(np.median(batched)), len(single), len(batched)))
    return speeds


def _interleaved(models: Sequence[Runs], feeds: Feeds, seconds: float) -> list[np.ndarray]:
    """Run seconds of each model on ``feeds``: rounds of one run each, the order rotating every round."""
    for model in models:
        for _ in range(WARM_UP_RUNS):  # the first runs of a shape allocate
            model.run(0, feeds)
    times: list[list[float]] = [[] for _ in models]
    deadline = time.perf_counter() + seconds
    rounds = 0
    while rounds < MIN_ROUNDS or time.perf_counter() < deadline:
        for k in range(len(models)):
            i = (k + rounds) % len(models)
            start = time.perf_counter()
            models[i].run(0, feeds)
            times[i].append(time.perf_counter() - start)
        rounds += 1
    return [np.array(t) for t in times]
