"""Where a batch run writes: one part per unit of work, committed whole, and the run's bookkeeping.

The output folder (local, or any fsspec store) holds:
- ``part-NNNNNN.parquet`` (or ``.jsonl``): the unit's rows, each with its id
  (the id column, or ``_source`` and ``_row``) and one column per model output
  holding the row's tensor (a value, or a fixed-size list, row-major; a
  Parquet column's shape is in the schema metadata ``kubeinfer.shape.NAME``);
  written to a temporary file and committed by a rename (local) or a single
  upload (object stores), so a part that exists is complete;
- ``_errors/part-NNNNNN.jsonl``: the unit's bad rows, id and reason, committed
  before its part;
- ``_kubeinfer_batch.json``: what the output was made from (model sha256,
  input, formats, columns): a run with other arguments is refused;
- ``_shards/I-of-N.json``: each shard's counts once it is done, and
  ``_SUCCESS``, written last, by the shard that finds every shard done.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from kubeinfer_server.dataset import Unit, is_local, open_fs
from kubeinfer_server.model import TensorSpec

MANIFEST = "_kubeinfer_batch.json"
SUCCESS = "_SUCCESS"
ERRORS_DIR = "_errors"
ROW_GROUP_ROWS = 65536  # rows of an output row group (at most: a part's last one holds the rest)
SHARDS_DIR = "_shards"


class OutputConflict(ValueError):
    """The output folder holds another run's results (or someone else's files)."""


class OutputError(Exception):
    """The output cannot be written."""


@dataclass(frozen=True, slots=True)
class UnitCounts:
    rows: int  # written to the part
    failed: int  # bad rows


class Output:
    def __init__(self, uri: str, fmt: str) -> None:
        self.fs, self.root = open_fs(uri)
        self.root = self.root.rstrip("/")
        self.format = fmt
        self.local = is_local(self.fs)

    # --- paths ---------------------------------------------------------------------
    def part(self, unit: Unit) -> str:
        return f"{self.root}/{unit.name}.{self.format}"

    def errors(self, unit: Unit) -> str:
        return f"{self.root}/{ERRORS_DIR}/{unit.name}.jsonl"

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    # --- the run's bookkeeping --------------------------------------------------------
    def prepare(self, fingerprint: dict[str, Any], mine: Sequence[Unit], overwrite: bool) -> None:
        """Check that the output is this run's (or empty), write the manifest; with ``overwrite``
        remove this shard's parts and errors first (never another shard's)."""
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            existing = self._read_json(MANIFEST)
            if existing is not None and existing != fingerprint and not overwrite:
                changed = sorted(k for k in fingerprint.keys() | existing.keys()
                                 if fingerprint.get(k) != existing.get(k))
                raise OutputConflict(f"the output {self.root!r} holds results of a run with other arguments "
                                     f"({', '.join(changed)} differ): give another --output, or --overwrite")
            if existing is None and self._has_data():
                raise OutputConflict(f"the output {self.root!r} is not empty and was not written by "
                                     "kubeinfer-server batch: give an empty or new folder")
            self._remove_stale_temporaries(mine)
            if overwrite:
                for unit in mine:
                    for path in (self.part(unit), self.errors(unit)):
                        if self.fs.exists(path):
                            self.fs.rm(path)
                if self.fs.exists(self._path(SUCCESS)):
                    self.fs.rm(self._path(SUCCESS))
            self._write_bytes(MANIFEST, json.dumps(fingerprint, indent=1, sort_keys=True).encode())
            self.fs.makedirs(self._path(ERRORS_DIR), exist_ok=True)
            self.fs.makedirs(self._path(SHARDS_DIR), exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot write the output {self.root!r}: {exc}") from None

    def _remove_stale_temporaries(self, mine: Sequence[Unit]) -> None:
        """A killed run's half-written parts (local outputs only: remote ones are written locally)."""
        if not self.local:
            return
        for unit in mine:
            for directory in (self.root, self._path(ERRORS_DIR)):
                for stale in self.fs.glob(f"{directory}/.tmp-{unit.name}.*"):
                    self.fs.rm(stale)

    def _has_data(self) -> bool:
        if not self.fs.exists(self.root):  # an object store's prefix exists once it holds an object
            return False
        return any(not os.path.basename(p).startswith(("_", ".")) for p in self.fs.ls(self.root, detail=False))

    def done(self, unit: Unit) -> UnitCounts | None:
        """The counts of a unit whose part is committed, or None."""
        part = self.part(unit)
        if not self.fs.exists(part):
            return None
        if self.format == "parquet":
            with self.fs.open(part, "rb") as handle:
                rows = pq.ParquetFile(handle).metadata.num_rows
        else:
            rows = _count_lines(self.fs, part)
        errors = self.errors(unit)
        failed = _count_lines(self.fs, errors) if self.fs.exists(errors) else 0
        return UnitCounts(rows, failed)

    def finish_shard(self, shard: int, shards: int, summary: dict[str, Any]) -> bool:
        """Record this shard's counts; write ``_SUCCESS`` when every shard is done. True if written."""
        self._write_bytes(f"{SHARDS_DIR}/{shard}-of-{shards}.json", json.dumps(summary, sort_keys=True).encode())
        read = [self._read_json(f"{SHARDS_DIR}/{i}-of-{shards}.json") for i in range(shards)]
        done = [d for d in read if d is not None]
        if len(done) < shards:
            return False
        total = {"rows": sum(d["rows"] for d in done), "failed_rows": sum(d["failed_rows"] for d in done),
                 "seconds": max(d["seconds"] for d in done), "shards": shards,
                 "model_sha256": summary["model_sha256"], "arguments": summary["arguments"]}
        self._write_bytes(SUCCESS, json.dumps(total, indent=1, sort_keys=True).encode())
        return True

    def _read_json(self, name: str) -> dict | None:
        path = self._path(name)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as handle:
            return json.loads(handle.read())

    def _write_bytes(self, name: str, data: bytes) -> None:
        local = self._temp(name)
        with open(local, "wb") as handle:
            handle.write(data)
        self.commit(local, self._path(name))

    # --- committing ---------------------------------------------------------------
    def _temp(self, name: str) -> str:
        """A temporary file: beside the target when local (so that the rename is atomic)."""
        directory = os.path.dirname(self._path(name)) if self.local else None
        handle, path = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(name)}-", dir=directory)
        os.close(handle)
        return path

    def commit(self, local: str, target: str) -> None:
        if self.local:
            os.replace(local, target)
            return
        try:
            self.fs.put_file(local, target)  # one PUT: the object appears whole or not at all
        finally:
            os.unlink(local)

    def part_writer(self, unit: Unit, ids_schema: pa.Schema, outputs: Sequence[TensorSpec]) -> PartWriter:
        return PartWriter(self, unit, ids_schema, outputs)


class PartWriter:
    """One unit's part, written batch by batch to a temporary file, then committed."""

    def __init__(self, output: Output, unit: Unit, ids_schema: pa.Schema, outputs: Sequence[TensorSpec]) -> None:
        self.output, self.unit, self.specs, self.ids_schema = output, unit, outputs, ids_schema
        self.rows = 0
        self._errors: list[bytes] = []
        self._path = output._temp(f"{unit.name}.{output.format}")
        self._parquet: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []  # batches not yet written: a row group holds several
        self._pending_rows = 0
        self._lines = open(self._path, "wb") if output.format == "jsonl" else None  # noqa: SIM115
        if output.format == "parquet":
            fields = list(ids_schema) + [pa.field(s.name, _arrow_type(s)) for s in outputs]
            metadata = {f"kubeinfer.shape.{s.name}": json.dumps(list(s.shape[1:])) for s in outputs}
            self._parquet = pq.ParquetWriter(self._path, pa.schema(fields, metadata=metadata))

    def write(self, ids: pa.Table, arrays: Sequence[np.ndarray]) -> None:
        if ids.num_rows == 0:
            return
        if ids.schema != self.ids_schema:  # JSON and CSV types are inferred batch by batch
            ids = ids.cast(self.ids_schema)
        self.rows += ids.num_rows
        if self._parquet is not None:
            columns = [*ids.columns, *(_arrow_column(s, a) for s, a in zip(self.specs, arrays, strict=True))]
            self._pending.append(pa.table(columns, schema=self._parquet.schema))
            self._pending_rows += ids.num_rows
            if self._pending_rows >= ROW_GROUP_ROWS:
                self._flush()
            return
        assert self._lines is not None
        id_rows = ids.to_pylist()
        lines = []
        for i, id_row in enumerate(id_rows):
            record = {**id_row, **{s.name: a[i] for s, a in zip(self.specs, arrays, strict=True)}}
            lines.append(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE))
        self._lines.write(b"".join(lines))

    def bad(self, ids: pa.Table, reasons: dict[int, str]) -> None:
        id_rows = ids.to_pylist()
        for row, reason in sorted(reasons.items()):
            self._errors.append(orjson.dumps({**id_rows[row], "reason": reason}, option=orjson.OPT_APPEND_NEWLINE))

    def _flush(self) -> None:
        """Write the pending batches as one row group (one per batch would bloat the file)."""
        if self._pending and self._parquet is not None:
            self._parquet.write_table(pa.concat_tables(self._pending))
        self._pending, self._pending_rows = [], 0

    def commit(self) -> UnitCounts:
        self._flush()
        self._close()
        if self._errors:
            errors = self.output._temp(f"{ERRORS_DIR}/{self.unit.name}.jsonl")
            with open(errors, "wb") as handle:
                handle.write(b"".join(self._errors))
            self.output.commit(errors, self.output.errors(self.unit))
        self.output.commit(self._path, self.output.part(self.unit))
        return UnitCounts(self.rows, len(self._errors))

    def abort(self) -> None:
        self._close()
        if os.path.exists(self._path):
            os.unlink(self._path)

    def _close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._lines is not None:
            self._lines.close()
            self._lines = None


def _arrow_type(spec: TensorSpec) -> pa.DataType:
    value = pa.string() if spec.datatype.name == "BYTES" else pa.from_numpy_dtype(spec.datatype.dtype)
    width = int(np.prod(spec.shape[1:])) if len(spec.shape) > 1 else 0
    if width <= 0 and len(spec.shape) > 1:
        return pa.list_(value)
    return pa.list_(value, width) if len(spec.shape) > 1 else value


def _arrow_column(spec: TensorSpec, array: np.ndarray) -> pa.Array:
    rows = array.shape[0]
    if spec.datatype.name == "BYTES":
        array = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1)], dtype=object)
        flat = pa.array(array, pa.string())
    else:
        flat = pa.array(np.ascontiguousarray(array).reshape(-1))
    if len(spec.shape) <= 1:
        return flat
    kind = _arrow_type(spec)
    if pa.types.is_fixed_size_list(kind):
        return pa.FixedSizeListArray.from_arrays(flat, kind.list_size)
    width = flat.length() // rows if rows else 0  # a dynamic output dimension: one list a row
    offsets = pa.array(np.arange(0, rows * width + 1, max(width, 1))[: rows + 1], pa.int32())
    return pa.ListArray.from_arrays(offsets, flat)


def _count_lines(fs, path: str) -> int:
    with fs.open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
