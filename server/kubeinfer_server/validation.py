"""A request checked against a model's signature (pure: no I/O, no queue, no model run).

``Signature.decode`` turns a request's inputs, as they came off the wire,
into the arrays the model takes (``Feeds``), or raises ``InvalidInput`` with a
message that says what the model expects. ``Signature.select`` turns the
requested output names into output positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kubeinfer_server import tensors
from kubeinfer_server.errors import InvalidInput
from kubeinfer_server.model import TensorSpec


@dataclass(slots=True)
class InputTensor:
    """One request input as it came off the wire: raw bytes or typed values."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | memoryview | None = None
    values: Sequence[Any] | None = None


@dataclass(slots=True)
class Feeds:
    """One request's input arrays, by input name, and its rows (its share of a batch)."""

    arrays: dict[str, np.ndarray]
    rows: int


class Signature:
    """A model's inputs and outputs, and whether requests stack along a batch dimension."""

    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], batched: bool) -> None:
        self.inputs = {spec.name: spec for spec in inputs}
        self.batched = batched
        self._output_index = {spec.name: i for i, spec in enumerate(outputs)}
        self._every_output = list(range(len(outputs)))
        # (index, size) of each fixed dimension of each input, checked per request
        self._fixed_dims = {spec.name: tuple((i, d) for i, d in enumerate(spec.shape) if d != -1)
                            for spec in inputs}

    def decode(self, inputs: Sequence[InputTensor]) -> Feeds:
        arrays: dict[str, np.ndarray] = {}
        for tensor in inputs:
            spec = self.inputs.get(tensor.name)
            if spec is None:
                raise InvalidInput(f"unknown input '{tensor.name}'; the model expects {self.describe()}")
            if tensor.name in arrays:
                raise InvalidInput(f"input '{tensor.name}' is given twice")
            arrays[tensor.name] = self._decode_one(spec, tensor)
        if len(arrays) != len(self.inputs):  # unknown and repeated names were refused above
            missing = next(name for name in self.inputs if name not in arrays)
            raise InvalidInput(f"missing input '{missing}'; the model expects {self.describe()}")
        return Feeds(arrays, self._rows(arrays))

    def select(self, names: Sequence[str]) -> list[int]:
        """Positions of the requested outputs; no names: every output."""
        if not names:
            return self._every_output
        index = self._output_index
        unknown = [n for n in names if n not in index]
        if unknown:
            raise InvalidInput(f"unknown output '{unknown[0]}'; the model's outputs are {', '.join(index)}")
        return [index[n] for n in names]

    def describe(self) -> str:
        return ", ".join(f"{s.name} ({s.datatype.name} {list(s.shape)})" for s in self.inputs.values())

    def _rows(self, arrays: dict[str, np.ndarray]) -> int:
        if not self.batched:
            return 1
        if len(arrays) == 1:
            return int(next(iter(arrays.values())).shape[0])
        rows = {array.shape[0] for array in arrays.values()}
        if len(rows) != 1:
            raise InvalidInput(f"inputs disagree on the batch dimension: {sorted(rows)}")
        return int(rows.pop())

    def _decode_one(self, spec: TensorSpec, tensor: InputTensor) -> np.ndarray:
        if tensor.datatype != spec.datatype.name:
            raise InvalidInput(
                f"input '{tensor.name}' is {tensor.datatype} but the model expects {spec.datatype.name}"
            )
        shape = tensor.shape
        if len(shape) != len(spec.shape) or (shape and min(shape) < 0) or any(
            shape[i] != want for i, want in self._fixed_dims[spec.name]
        ):
            raise InvalidInput(
                f"input '{tensor.name}' has shape {list(shape)}; the model expects {list(spec.shape)} "
                "(-1: any size)"
            )
        if tensor.raw is not None:
            return tensors.decode_raw(tensor.name, spec.datatype, shape, tensor.raw)
        return tensors.decode_typed(tensor.name, spec.datatype, shape, tensor.values or ())
