"""Tensor datatypes and wire encoding of the Open Inference Protocol.

Maps OIP datatype names to numpy dtypes and ONNX Runtime type strings, decodes
request tensors (raw bytes or typed contents) into numpy arrays and encodes
outputs into raw bytes. BYTES elements travel as a 4-byte little-endian length
followed by the bytes; ONNX string tensors are UTF-8 text, so BYTES inputs
decode to ``str``. No gRPC or protobuf import: callers hand in plain values.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kubeinfer_server.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Datatype:
    name: str  # OIP name, e.g. "FP32"
    dtype: np.dtype  # numpy dtype; object for BYTES
    onnx: str  # ONNX Runtime's type string, e.g. "tensor(float)"
    contents_field: str | None  # InferTensorContents field for typed input


_TYPES = [
    Datatype("BOOL", np.dtype(np.bool_), "tensor(bool)", "bool_contents"),
    Datatype("UINT8", np.dtype("<u1"), "tensor(uint8)", "uint_contents"),
    Datatype("UINT16", np.dtype("<u2"), "tensor(uint16)", "uint_contents"),
    Datatype("UINT32", np.dtype("<u4"), "tensor(uint32)", "uint_contents"),
    Datatype("UINT64", np.dtype("<u8"), "tensor(uint64)", "uint64_contents"),
    Datatype("INT8", np.dtype("<i1"), "tensor(int8)", "int_contents"),
    Datatype("INT16", np.dtype("<i2"), "tensor(int16)", "int_contents"),
    Datatype("INT32", np.dtype("<i4"), "tensor(int32)", "int_contents"),
    Datatype("INT64", np.dtype("<i8"), "tensor(int64)", "int64_contents"),
    Datatype("FP16", np.dtype("<f2"), "tensor(float16)", None),
    Datatype("FP32", np.dtype("<f4"), "tensor(float)", "fp32_contents"),
    Datatype("FP64", np.dtype("<f8"), "tensor(double)", "fp64_contents"),
    Datatype("BYTES", np.dtype(object), "tensor(string)", "bytes_contents"),
]
BY_NAME = {t.name: t for t in _TYPES}
BY_ONNX = {t.onnx: t for t in _TYPES}


def datatype_for_onnx(onnx_type: str) -> Datatype:
    try:
        return BY_ONNX[onnx_type]
    except KeyError:
        raise ValueError(f"ONNX type {onnx_type} has no Open Inference Protocol datatype") from None


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def decode_raw(name: str, datatype: Datatype, shape: tuple[int, ...], raw: bytes | memoryview) -> np.ndarray:
    """Decode raw_input_contents; fixed-size types are zero-copy views of ``raw``."""
    count = element_count(shape)
    if datatype.name == "BYTES":
        return _decode_bytes(name, shape, count, raw)
    expected = count * datatype.dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': {len(raw)} bytes of raw content, but shape {list(shape)} of "
            f"{datatype.name} needs {expected}"
        )
    return np.frombuffer(raw, dtype=datatype.dtype).reshape(shape)


def _decode_bytes(name: str, shape: tuple[int, ...], count: int, raw: bytes | memoryview) -> np.ndarray:
    items = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input '{name}': BYTES content ends inside an element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input '{name}': BYTES element of {length} bytes runs past the content")
        items.append(_text(name, bytes(raw[offset : offset + length])))
        offset += length
    if offset != len(raw):
        raise InvalidInput(
            f"input '{name}': {len(raw) - offset} bytes left over after {count} BYTES elements "
            f"of shape {list(shape)}"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def decode_typed(name: str, datatype: Datatype, shape: tuple[int, ...], values: Sequence[Any]) -> np.ndarray:
    """Decode typed values: gRPC's InferTensorContents field for ``datatype``, or REST's JSON data
    (flattened; BYTES elements as text)."""
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': {len(values)} values in contents, but shape {list(shape)} needs {count}"
        )
    if datatype.name == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = [_text(name, v) for v in values]
        return array.reshape(shape)
    try:
        return np.asarray(values, dtype=datatype.dtype).reshape(shape)
    except OverflowError:
        raise InvalidInput(f"input '{name}': a value is out of range for {datatype.name}") from None
    except (TypeError, ValueError):
        raise InvalidInput(f"input '{name}': the values are not all {datatype.name} numbers") from None


def _text(name: str, data: bytes | str) -> str:
    # ONNX string tensors hold UTF-8 text; ONNX Runtime takes them as str.
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{name}': BYTES elements must be UTF-8 text for ONNX string tensors") from None


def encode(array: np.ndarray, datatype: Datatype) -> bytes:
    """Encode an output array as raw bytes in the wire layout."""
    if datatype.name == "BYTES":
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    if array.dtype != datatype.dtype:
        array = array.astype(datatype.dtype)
    return array.tobytes()  # C order, whatever the array's strides
