"""A dataset read for scoring: units of work, record batches, and columns mapped to model inputs.

``list_units`` finds the input's files (one file, or every file under a folder
or prefix, in name order) and cuts them into units of work: a Parquet row
group, or a whole JSONL or CSV file. ``read_batches`` streams one unit as
Arrow record batches of at most ``batch_size`` rows, so memory stays flat
however large the dataset. ``Mapping`` says where each model input comes
from (a column of the same name holding the row's tensor or one value, or
scalar columns stacked into a ``[-1, N]`` tensor), is checked against the
schema before any compute (``MappingError``), and turns a batch into the
model's feeds, converting values to the dtype each input declares; a row
with a null, a list of the wrong length, or a value that does not fit the
dtype is a bad row, with its reason.

Pure with respect to the model (it sees only ``TensorSpec``s); file access
goes through fsspec, so local paths, ``file://``, ``s3://`` and ``http(s)://``
(single files) read alike.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from collections.abc import Mapping as MappingType
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from kubeinfer_server.formats import INPUT_FORMATS
from kubeinfer_server.model import TensorSpec

_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
             ".csv": "csv"}
SOURCE_COLUMN, ROW_COLUMN = "_source", "_row"  # the id of a row when there is no --id-column
SOURCE_TYPE = pa.dictionary(pa.int32(), pa.string())  # one file name a batch, stored once
_JSON_CHUNK_BYTES = 1 << 20


class MappingError(ValueError):
    """The columns cannot feed the model: said before any compute, with what to fix."""


class DatasetError(Exception):
    """The input cannot be listed or read."""


@dataclass(frozen=True, slots=True)
class Unit:
    """One unit of work: a Parquet row group, or a whole JSONL/CSV file."""

    index: int  # position among all the input's units (stable for the same input)
    path: str
    format: str
    row_group: int | None = None
    first_row: int = 0  # of this unit within its file

    @property
    def name(self) -> str:
        return f"part-{self.index:06d}"


def open_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def format_of(path: str, given: str | None) -> str:
    if given:
        return given
    for suffix, name in _SUFFIXES.items():
        if path.lower().endswith(suffix):
            return name
    raise DatasetError(f"cannot tell the format of {path!r} from its name: give --input-format "
                       f"({', '.join(INPUT_FORMATS)})")


def list_files(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    try:
        if fs.isdir(path):
            files = sorted(p for p in fs.find(path) if not _hidden(p[len(path):]))
        elif fs.exists(path):
            files = [path]
        else:
            raise DatasetError(f"input {path!r} does not exist")
    except OSError as exc:
        raise DatasetError(f"cannot list the input {path!r}: {exc}") from None
    if not files:
        raise DatasetError(f"input folder {path!r} holds no files")
    return files


def _hidden(relative: str) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.strip("/").split("/"))


def list_units(uri: str, input_format: str | None) -> list[Unit]:
    fs, path = open_fs(uri)
    units: list[Unit] = []
    for file in list_files(fs, path):
        fmt = format_of(file, input_format)
        if fmt == "parquet":
            try:
                with fs.open(file, "rb") as handle:
                    meta = pq.ParquetFile(handle).metadata
            except (OSError, pa.ArrowException) as exc:
                raise DatasetError(f"{file}: not a readable Parquet file: {exc}") from None
            first = 0
            for group in range(meta.num_row_groups):
                units.append(Unit(len(units), _uri(fs, file), fmt, group, first))
                first += meta.row_group(group).num_rows
        else:
            units.append(Unit(len(units), _uri(fs, file), fmt))
    return units


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return fs.protocol in ("file", ("file", "local"))


def _uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if is_local(fs) else fs.unstrip_protocol(path)


def read_schema(unit: Unit) -> pa.Schema:
    """The schema of a unit's data (the first batch's, for JSONL and CSV)."""
    for batch in read_batches(unit, 64):
        return batch.schema
    raise DatasetError(f"{unit.path} holds no rows")


def read_batches(unit: Unit, batch_size: int) -> Iterator[pa.RecordBatch]:
    """The unit's rows as record batches of at most ``batch_size`` rows."""
    fs, path = open_fs(unit.path)
    try:
        if unit.format == "parquet" and is_local(fs):  # Arrow's own file, mapped: no copy, no GIL
            file = pq.ParquetFile(path, memory_map=True)
            yield from file.iter_batches(batch_size, row_groups=[unit.row_group], use_threads=False)
            return
        with fs.open(path, "rb") as handle:
            if unit.format == "parquet":
                yield from pq.ParquetFile(handle).iter_batches(batch_size, row_groups=[unit.row_group])
            elif unit.format == "csv":
                yield from _rebatch(pacsv.open_csv(handle), batch_size)
            else:
                yield from _rebatch(_json_batches(handle), batch_size)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{unit.path}: {exc}") from None


def _json_batches(handle) -> Iterator[pa.RecordBatch]:
    """JSON lines in chunks of whole lines (pyarrow's JSON reader reads a whole buffer)."""
    rest = b""
    while True:
        chunk = handle.read(_JSON_CHUNK_BYTES)
        data = rest + chunk
        if not chunk:
            if data.strip():
                yield from pajson.read_json(io.BytesIO(data)).to_batches()
            return
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            yield from pajson.read_json(io.BytesIO(data[:cut])).to_batches()


def _rebatch(batches, batch_size: int) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        for start in range(0, batch.num_rows, batch_size):
            yield batch.slice(start, batch_size)


# --- columns -> model inputs ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Source:
    """Where one model input comes from: stacked scalar columns, or one column."""

    spec: TensorSpec
    columns: tuple[str, ...]
    stacked: bool
    row_shape: tuple[int, ...]  # one row's tensor, without the batch dimension


@dataclass(slots=True)
class Converted:
    feeds: dict[str, np.ndarray]  # good rows only
    good: np.ndarray  # bool per row of the batch
    reasons: dict[int, str]  # row in the batch -> why it is bad


class Mapping:
    def __init__(self, specs: Sequence[TensorSpec], schema: pa.Schema,
                 explicit: MappingType[str, tuple[str, ...]]) -> None:
        unknown = [name for name in explicit if name not in {s.name for s in specs}]
        if unknown:
            raise MappingError(f"--input-columns names {unknown[0]!r}, which is not a model input "
                               f"(inputs: {', '.join(s.name for s in specs)})")
        self.sources = [self._source(spec, schema, explicit.get(spec.name)) for spec in specs]

    @property
    def columns(self) -> list[str]:
        return [c for source in self.sources for c in source.columns]

    def _source(self, spec: TensorSpec, schema: pa.Schema, stacked: tuple[str, ...] | None) -> Source:
        if spec.shape[:1] != (-1,):
            raise MappingError(f"model input {spec.name!r} has shape {list(spec.shape)}: batch scoring needs "
                               "a first dimension of any size (-1)")
        row_shape = spec.shape[1:]
        if any(d < 0 for d in row_shape):
            raise MappingError(f"model input {spec.name!r} has shape {list(spec.shape)}: only the first "
                               "dimension may vary for batch scoring")
        if stacked:
            if row_shape not in ((len(stacked),),):
                raise MappingError(f"--input-columns {spec.name}= stacks {len(stacked)} columns, but the model "
                                   f"takes {list(spec.shape)}")
            for column in stacked:
                self._check_scalar(spec, schema, column)
            return Source(spec, stacked, True, row_shape)
        if spec.name not in schema.names:
            raise MappingError(f"no column feeds model input {spec.name!r}: name a column {spec.name!r}, or give "
                               f"--input-columns {spec.name}=COL,COL,... (columns: {', '.join(schema.names)})")
        kind = schema.field(spec.name).type
        if _is_list(kind):
            if not _numeric(kind.value_type) and not (spec.datatype.name == "BYTES" and _text(kind.value_type)):
                raise MappingError(f"column {spec.name!r} holds lists of {kind.value_type}, not numbers")
            return Source(spec, (spec.name,), False, row_shape)
        if math.prod(row_shape) != 1:
            raise MappingError(f"column {spec.name!r} holds one value a row, but model input {spec.name!r} takes "
                               f"{list(spec.shape)}: give a list column, or --input-columns {spec.name}=COL,...")
        self._check_scalar(spec, schema, spec.name)
        return Source(spec, (spec.name,), False, row_shape)

    @staticmethod
    def _check_scalar(spec: TensorSpec, schema: pa.Schema, column: str) -> None:
        if column not in schema.names:
            raise MappingError(f"column {column!r} (for model input {spec.name!r}) is not in the input "
                               f"(columns: {', '.join(schema.names)})")
        kind = schema.field(column).type
        if spec.datatype.name == "BYTES":
            if not _text(kind):
                raise MappingError(f"column {column!r} is {kind}, but model input {spec.name!r} takes text")
        elif not _numeric(kind):
            raise MappingError(f"column {column!r} is {kind}, not numbers (model input {spec.name!r} "
                               f"takes {spec.datatype.name})")

    def convert(self, batch: pa.RecordBatch) -> Converted:
        rows = batch.num_rows
        good = np.ones(rows, dtype=bool)
        reasons: dict[int, str] = {}
        arrays = {}
        for source in self.sources:
            array, bad = _convert(source, batch)
            arrays[source.spec.name] = array
            for row, reason in bad.items():
                if good[row]:
                    good[row] = False
                    reasons[row] = reason
        feeds = {name: array if good.all() else array[good] for name, array in arrays.items()}
        return Converted(feeds, good, reasons)


def _numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) \
        or pa.types.is_null(kind)


def _text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _convert(source: Source, batch: pa.RecordBatch) -> tuple[np.ndarray, dict[int, str]]:
    """The input's array for every row of the batch (bad rows hold zeros), and the bad rows."""
    rows, dtype = batch.num_rows, source.spec.datatype.dtype
    if source.spec.datatype.name == "BYTES":
        return _convert_text(source, batch)
    if source.stacked or len(source.row_shape) == 0 or not _is_list(batch.column(source.columns[0]).type):
        columns = [batch.column(c) for c in source.columns]
        values = np.zeros((rows, len(columns)), dtype=dtype)
        bad: dict[int, str] = {}
        for j, column in enumerate(columns):
            converted, problems = _to_dtype(column, dtype, source.columns[j])
            values[:, j] = converted
            _merge(bad, problems)
        return values.reshape((rows, *source.row_shape)), bad
    return _convert_lists(source, batch.column(source.columns[0]), rows, dtype)


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _convert_lists(source: Source, column: pa.Array, rows: int, dtype: np.dtype) -> tuple[np.ndarray, dict]:
    width = math.prod(source.row_shape)
    lengths = pc.fill_null(pc.list_value_length(column), -1).to_numpy(zero_copy_only=False)
    bad: dict[int, str] = {}
    for row in np.flatnonzero(lengths != width):
        length = lengths[row]
        bad[int(row)] = (f"column {source.columns[0]!r} is null" if length < 0 else
                         f"column {source.columns[0]!r} holds {length} values, the model takes {width} a row")
    fits = lengths == width
    if fits.all():  # the common case: a view of the column's values when no conversion is needed
        converted, problems = _to_dtype(pc.list_flatten(column), dtype, source.columns[0])
        for element, reason in problems.items():
            bad.setdefault(element // width, reason)
        return converted.reshape((rows, *source.row_shape)), bad
    values = np.zeros((rows, width), dtype=dtype)
    if fits.any():
        kept = column.filter(pa.array(fits)) if not fits.all() else column
        flat = pc.list_flatten(kept)
        converted, problems = _to_dtype(flat, dtype, source.columns[0])
        values[fits] = converted.reshape(-1, width)
        kept_rows = np.flatnonzero(fits)
        for element, reason in problems.items():
            bad.setdefault(int(kept_rows[element // width]), reason)
    return values.reshape((rows, *source.row_shape)), bad


def _to_dtype(column: pa.Array, dtype: np.dtype, name: str) -> tuple[np.ndarray, dict[int, str]]:
    """``column`` as ``dtype``: the values, and the positions whose value is null or does not fit."""
    bad: dict[int, str] = {}
    if column.null_count:
        for row in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)):
            bad[int(row)] = f"column {name!r} is null"
        column = pc.fill_null(column, 0)
    values = column.to_numpy(zero_copy_only=False)
    if values.dtype == dtype:
        return values, bad
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        info = np.iinfo(dtype) if dtype != np.bool_ else None
        as_float = values.astype(np.float64)
        fits = np.isfinite(as_float) & (as_float == np.floor(as_float))
        if info is not None:
            fits &= (as_float >= info.min) & (as_float <= info.max)
        for row in np.flatnonzero(~fits):
            bad.setdefault(int(row), f"column {name!r}: {values[row]!r} does not fit {dtype.name}")
        return np.where(fits, values, 0).astype(dtype), bad
    with np.errstate(over="ignore", invalid="ignore"):
        converted = values.astype(dtype)
    overflow = np.isinf(converted) & np.isfinite(values.astype(np.float64))
    for row in np.flatnonzero(overflow):
        bad.setdefault(int(row), f"column {name!r}: {values[row]!r} does not fit {dtype.name}")
    return converted, bad


def _convert_text(source: Source, batch: pa.RecordBatch) -> tuple[np.ndarray, dict[int, str]]:
    column = batch.column(source.columns[0])
    bad: dict[int, str] = {}
    if _is_list(column.type):
        raise MappingError(f"column {source.columns[0]!r}: lists of text are not supported; one text a row")
    values = column.to_pylist()
    for row, value in enumerate(values):
        if value is None:
            bad[row] = f"column {source.columns[0]!r} is null"
    array = np.array(["" if v is None else v for v in values], dtype=object)
    return array.reshape((batch.num_rows, *source.row_shape)), bad


def _merge(bad: dict[int, str], more: dict[int, str]) -> None:
    for row, reason in more.items():
        bad.setdefault(row, reason)


def ids_schema(schema: pa.Schema, id_column: str | None) -> pa.Schema:
    if id_column:
        return pa.schema([schema.field(id_column)])
    return pa.schema([(SOURCE_COLUMN, SOURCE_TYPE), (ROW_COLUMN, pa.int64())])


def row_ids(batch: pa.RecordBatch, unit: Unit, id_column: str | None, start: int) -> pa.Table:
    """The id of each row: the id column, else the source file and the row's number in it."""
    if id_column:
        return pa.table({id_column: batch.column(id_column)})
    first, rows = unit.first_row + start, batch.num_rows
    source = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)), pa.array([unit.path]))
    return pa.table({SOURCE_COLUMN: source, ROW_COLUMN: pa.array(np.arange(first, first + rows, dtype=np.int64))})
