"""``kubeinfer-server batch``: score a dataset with a model, sharded and resumable.

``run`` takes ``BatchSettings`` and, top-down:

1. loads the model (fetched first when it is a URI) and lists the input's
   units of work (``dataset.list_units``); this shard takes every N-th;
2. checks, before any compute, that the columns feed the model
   (``dataset.Mapping``), that the id column exists, and that the output is
   empty or this same run's (``batchout.Output.prepare``);
3. skips the units whose part is committed (a resumed run), then streams the
   rest through three stages that overlap: a reader thread (read, decode,
   convert), ONNX Runtime on the calling thread (it releases the GIL), and a
   writer thread (encode, write, commit);
4. counts bad rows as they come and fails once more than
   ``max_failed_rows`` are bad, naming the first few;
5. records the shard's counts, and ``_SUCCESS`` once every shard is done.

Errors a user can fix are ``BatchUsageError`` (exit 2); anything that stops a
run otherwise is ``BatchFailed`` (exit 1). Progress goes to stderr: a bar on a
terminal, a JSON line every few seconds otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kubeinfer_server import dataset
from kubeinfer_server.batchout import Output, OutputConflict, OutputError, UnitCounts
from kubeinfer_server.dataset import DatasetError, MappingError, Unit
from kubeinfer_server.errors import ModelLoadError
from kubeinfer_server.model import Model, ModelOptions

AUTO_BATCH_SIZES = (64, 256, 1024)
DEFAULT_BATCH_SIZE = 256
PROBE_SECONDS = 0.2
PROGRESS_EVERY_S = 5.0
QUEUE_DEPTH = 4  # batches in flight between two stages
TERMINATION_LOG = "/dev/termination-log"
DATE_PLACEHOLDER = "{date}"
FIRST_BAD_ROWS_SHOWN = 3


class BatchUsageError(ValueError):
    """The arguments, the columns or the output do not fit: nothing was computed."""


class BatchFailed(Exception):
    """The run stopped: the input or output could not be read or written, or too many rows were bad."""


@dataclass(frozen=True)
class BatchSettings:
    model: str
    input: str
    output: str
    input_format: str | None = None
    output_format: str = "parquet"
    input_columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    id_column: str | None = None
    batch_size: int = 0  # 0: the size the model runs fastest at
    shard: int = 0
    shards: int = 1
    max_failed_rows: int = 0
    overwrite: bool = False
    providers: tuple[str, ...] = ("cpu",)
    intra_op_threads: int = 0
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.shard < self.shards:
            raise BatchUsageError(f"--shard {self.shard} is not in 0..{self.shards - 1} (--shards {self.shards})")
        if self.batch_size < 0 or self.max_failed_rows < 0:
            raise BatchUsageError("--batch-size and --max-failed-rows must be >= 0")

    def fingerprint(self, model_sha256: str) -> dict[str, Any]:
        """What the output is made from: the same for every shard and every resumed run."""
        return {"model_sha256": model_sha256, "input": self.input, "input_format": self.input_format,
                "output_format": self.output_format, "id_column": self.id_column,
                "input_columns": {k: list(v) for k, v in sorted(self.input_columns.items())},
                "shards": self.shards}


@dataclass
class Summary:
    rows: int = 0
    failed_rows: int = 0
    units: int = 0
    units_skipped: int = 0  # already committed by an earlier run
    seconds: float = 0.0  # the whole run
    scoring_seconds: float = 0.0  # reading, scoring and writing this run's units (no start, no model load)
    batch_size: int = 0
    model_sha256: str = ""
    shard: int = 0
    shards: int = 1
    arguments: dict = field(default_factory=dict)
    success_written: bool = False


def dated(uri: str, date: dt.date) -> str:
    """``uri`` with ``{date}`` as YYYY-MM-DD: a scheduled job's run names its input and output by its day."""
    return uri.replace(DATE_PLACEHOLDER, date.isoformat())


def run(settings: BatchSettings, progress: Progress | None = None) -> Summary:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kubeinfer-batch-") as scratch:
        path, sha = _model_file(settings, scratch)
        model = _load(path, settings)
        units = _units(settings)
        mine = [u for u in units if u.index % settings.shards == settings.shard]
        mapping, ids_schema = _mapping(model, units[0], settings)
        output = Output(settings.output, settings.output_format)
        fingerprint = settings.fingerprint(sha)
        try:
            output.prepare(fingerprint, mine, settings.overwrite)
        except OutputConflict as exc:
            raise BatchUsageError(str(exc)) from None
        except OutputError as exc:
            raise BatchFailed(str(exc)) from None
        batch_size = settings.batch_size or fastest_batch_size(model)
        summary = Summary(batch_size=batch_size, model_sha256=sha, shard=settings.shard, shards=settings.shards,
                          arguments=fingerprint, units=len(mine))
        todo = []
        for unit in mine:
            counts = output.done(unit)
            if counts is None:
                todo.append(unit)
            else:
                summary.rows, summary.failed_rows = summary.rows + counts.rows, summary.failed_rows + counts.failed
                summary.units_skipped += 1
        progress = progress or Progress.for_stream(sys.stderr)
        progress.start(total_rows=_known_rows(todo), already=summary.rows)
        _check_bad_rows(summary.failed_rows, settings.max_failed_rows, [])
        scoring = time.monotonic()
        Pipeline(model, mapping, ids_schema, output, settings, batch_size, summary, progress).run(todo)
        summary.scoring_seconds = round(time.monotonic() - scoring, 3)
        summary.seconds = round(time.monotonic() - started, 3)
        shard_summary = {k: v for k, v in asdict(summary).items() if k != "success_written"}
        try:
            summary.success_written = output.finish_shard(settings.shard, settings.shards, shard_summary)
        except OSError as exc:
            raise BatchFailed(f"cannot write the run's summary to {settings.output!r}: {exc}") from None
        progress.finish(summary)
        return summary


def _model_file(settings: BatchSettings, scratch: str) -> tuple[str, str]:
    """The model's local path and sha256 (fetched first when it is a URI; checked against --sha256)."""
    from kubeinfer_server.fetch import FetchError, fetch, file_sha256, is_remote

    if is_remote(settings.model):
        try:
            local = os.path.join(scratch, "model.onnx")
            return local, fetch(settings.model, local, settings.sha256)
        except FetchError as exc:
            raise BatchFailed(str(exc)) from None
    path = settings.model.removeprefix("file://")
    try:
        sha = file_sha256(path)
    except OSError as exc:
        raise BatchFailed(f"cannot read the model {path!r}: {exc}") from None
    if settings.sha256 and sha != settings.sha256.lower():
        raise BatchFailed(f"{path}: sha256 mismatch: expected {settings.sha256.lower()}, got {sha}")
    return path, sha


def _load(path: str, settings: BatchSettings) -> Model:
    try:
        return Model("batch", path, ModelOptions(settings.providers, settings.intra_op_threads, 1))
    except ModelLoadError as exc:
        raise BatchFailed(str(exc)) from None


def _units(settings: BatchSettings) -> list[Unit]:
    try:
        units = dataset.list_units(settings.input, settings.input_format)
    except DatasetError as exc:
        raise BatchUsageError(str(exc)) from None
    if not units:
        raise BatchUsageError(f"the input {settings.input!r} holds no rows")
    return units


def _mapping(model: Model, first: Unit, settings: BatchSettings):
    """The mapping of columns to inputs, and the schema of the rows' ids."""
    try:
        schema = dataset.read_schema(first)
        mapping = dataset.Mapping(model.inputs, schema, settings.input_columns)
    except (MappingError, DatasetError) as exc:
        raise BatchUsageError(str(exc)) from None
    if settings.id_column and settings.id_column not in schema.names:
        raise BatchUsageError(f"--id-column {settings.id_column!r} is not a column of the input "
                              f"(columns: {', '.join(schema.names)})")
    return mapping, dataset.ids_schema(schema, settings.id_column)


def _known_rows(units: list[Unit]) -> int | None:
    """Rows left to do, when every unit is a Parquet row group (the metadata knows); else None."""
    if any(u.format != "parquet" for u in units):
        return None
    import pyarrow.parquet as pq

    total, files = 0, {}
    for unit in units:
        if unit.path not in files:
            fs, path = dataset.open_fs(unit.path)
            with fs.open(path, "rb") as handle:
                files[unit.path] = pq.ParquetFile(handle).metadata
        total += files[unit.path].row_group(unit.row_group).num_rows
    return total


def fastest_batch_size(model: Model) -> int:
    """The batch size, of ``AUTO_BATCH_SIZES``, at which the model scores the most rows a second."""
    if any(s.datatype.name == "BYTES" for s in model.inputs):
        return DEFAULT_BATCH_SIZE  # no neutral text to probe with
    best, best_rate = AUTO_BATCH_SIZES[0], 0.0
    for size in AUTO_BATCH_SIZES:
        feeds = {s.name: np.zeros((size, *s.shape[1:]), dtype=s.datatype.dtype) for s in model.inputs}
        model.run(0, feeds)  # the first run of a shape allocates
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < PROBE_SECONDS:
            model.run(0, feeds)
            runs += 1
        rate = runs * size / (time.perf_counter() - start)
        if rate > best_rate * 1.05:  # a bigger batch must be clearly faster: it costs memory and latency
            best, best_rate = size, rate
    return best


def _check_bad_rows(failed: int, limit: int, first: list[str]) -> None:
    if failed > limit:
        shown = "; ".join(first[:FIRST_BAD_ROWS_SHOWN]) or "see _errors/ in the output"
        raise BatchFailed(f"{failed} bad rows, more than --max-failed-rows {limit}: {shown}")


# --- the three stages --------------------------------------------------------------

@dataclass(slots=True)
class _Item:
    """One batch, read and converted (then scored: ``outputs``)."""

    unit: Unit
    ids: Any  # pyarrow Table of the batch's rows' ids
    converted: dataset.Converted
    outputs: list[np.ndarray] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _UnitEnd:
    unit: Unit


_END = _UnitEnd(Unit(-1, "", ""))  # the reader's end

class Pipeline:
    def __init__(self, model: Model, mapping: dataset.Mapping, ids_schema, output: Output, settings: BatchSettings,
                 batch_size: int, summary: Summary, progress: Progress) -> None:
        self.model, self.mapping, self.ids_schema, self.output = model, mapping, ids_schema, output
        self.settings, self.batch_size, self.summary, self.progress = settings, batch_size, summary, progress
        self.first_bad: list[str] = []
        self._stop = threading.Event()
        self._failure: list[BaseException] = []

    def run(self, units: list[Unit]) -> None:
        decoded: queue.Queue = queue.Queue(QUEUE_DEPTH)
        scored: queue.Queue = queue.Queue(QUEUE_DEPTH)
        reader = threading.Thread(target=self._guard, args=(self._read, units, decoded), name="batch-reader")
        writer = threading.Thread(target=self._guard, args=(self._write, scored), name="batch-writer")
        reader.start()
        writer.start()
        try:
            self._guard(self._score, decoded, scored)
        finally:
            self._stop.set()
            reader.join()
            writer.join()
        if self._failure:
            failure = self._failure[0]
            if isinstance(failure, BatchFailed | BatchUsageError):
                raise failure
            if isinstance(failure, DatasetError | OSError):
                raise BatchFailed(str(failure)) from failure
            raise BatchFailed(f"{type(failure).__name__}: {failure}") from failure

    def _guard(self, stage: Callable, *args) -> None:
        try:
            stage(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to run(), which raises it
            if not self._failure:
                self._failure.append(exc)
            self._stop.set()

    def _put(self, target: queue.Queue, item: object) -> bool:
        while not self._stop.is_set():
            try:
                target.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, source: queue.Queue) -> object | None:
        while not self._stop.is_set() or not source.empty():
            try:
                return source.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _read(self, units: list[Unit], decoded: queue.Queue) -> None:
        for unit in units:
            start = 0
            for batch in dataset.read_batches(unit, self.batch_size):
                ids = dataset.row_ids(batch, unit, self.settings.id_column, start)
                start += batch.num_rows
                if not self._put(decoded, _Item(unit, ids, self.mapping.convert(batch))):
                    return
            if not self._put(decoded, _UnitEnd(unit)):
                return
        self._put(decoded, _END)

    def _score(self, decoded: queue.Queue, scored: queue.Queue) -> None:
        while (item := self._get(decoded)) is not None:
            if isinstance(item, _Item):
                self._count_bad(item)
                if item.converted.good.any():
                    item.outputs = self.model.run(0, item.converted.feeds)
            if not self._put(scored, item) or item is _END:
                return

    def _count_bad(self, item: _Item) -> None:
        reasons = item.converted.reasons
        if not reasons:
            return
        self.summary.failed_rows += len(reasons)
        if len(self.first_bad) < FIRST_BAD_ROWS_SHOWN:
            ids = item.ids.to_pylist()
            for row, reason in sorted(reasons.items())[:FIRST_BAD_ROWS_SHOWN]:
                self.first_bad.append(f"row {_describe(ids[row])}: {reason}")
        _check_bad_rows(self.summary.failed_rows, self.settings.max_failed_rows, self.first_bad)

    def _write(self, scored: queue.Queue) -> None:
        writers: dict[int, Any] = {}
        specs = self.model.outputs
        try:
            while (item := self._get(scored)) is not None:
                if item is _END:
                    return
                if isinstance(item, _UnitEnd):
                    unit = item.unit
                    writer = writers.pop(unit.index, None) or self.output.part_writer(unit, self.ids_schema, specs)
                    counts: UnitCounts = writer.commit()
                    self.summary.rows += counts.rows
                    self.progress.unit_done()
                    continue
                assert isinstance(item, _Item)
                writer = writers.get(item.unit.index)
                if writer is None:
                    writer = writers[item.unit.index] = self.output.part_writer(item.unit, self.ids_schema, specs)
                good = item.converted.good
                if item.converted.reasons:
                    writer.bad(item.ids, item.converted.reasons)
                writer.write(item.ids if good.all() else item.ids.filter(good), item.outputs)
                self.progress.rows(len(good))
        finally:
            for writer in writers.values():  # a run that stopped: no half part is committed
                writer.abort()


def _describe(ids: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in ids.items())


# --- progress ----------------------------------------------------------------------

class Progress:
    """Rows done, rows/s and the time left: a bar on a terminal, JSON lines otherwise."""

    def __init__(self, stream, bar: bool) -> None:
        self.stream, self.bar = stream, bar
        self.total: int | None = None
        self.done = self.units = 0
        self._started = self._last = time.monotonic()
        self._every = 0.2 if bar else PROGRESS_EVERY_S
        self._lock = threading.Lock()

    @classmethod
    def for_stream(cls, stream) -> Progress:
        return cls(stream, bar=hasattr(stream, "isatty") and stream.isatty())

    def start(self, total_rows: int | None, already: int) -> None:
        self.total, self._already = total_rows, already
        self._started = self._last = time.monotonic()

    def rows(self, count: int) -> None:
        with self._lock:
            self.done += count
            now = time.monotonic()
            if now - self._last >= self._every:
                self._last = now
                self._show(now)

    def unit_done(self) -> None:
        with self._lock:
            self.units += 1

    def finish(self, summary: Summary) -> None:
        if self.bar:
            self.stream.write("\n")
        line = {"event": "done", "rows": summary.rows, "failed_rows": summary.failed_rows,
                "units": summary.units, "units_skipped": summary.units_skipped, "seconds": summary.seconds,
                "scoring_seconds": summary.scoring_seconds,
                "batch_size": summary.batch_size, "success": summary.success_written}
        self.stream.write(json.dumps(line) + "\n")
        self.stream.flush()

    def _show(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if self.total and rate else None
        if self.bar:
            share = self.done / self.total if self.total else 0.0
            filled = int(share * 30)
            eta = f" ETA {left:.0f}s" if left is not None else ""
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done} rows, {rate:.0f} rows/s{eta}  ")
        else:
            self.stream.write(json.dumps({"event": "progress", "rows": self.done, "rows_per_s": round(rate, 1),
                                          "total_rows": self.total, "units_done": self.units,
                                          "eta_s": round(left, 1) if left is not None else None}) + "\n")
        self.stream.flush()


def write_termination_message(summary: Summary | None, error: str | None, path: str = TERMINATION_LOG) -> None:
    """The shard's counts (or its error) where Kubernetes reads a container's last words."""
    if not os.path.exists(path):
        return
    if error or summary is None:
        message: dict = {"error": error or "stopped before any count"}
    else:
        message = {k: v for k, v in asdict(summary).items() if k != "arguments"}
    try:
        with open(path, "w") as handle:
            handle.write(json.dumps(message)[:4000])
    except OSError:
        pass

