"""The OIP v2 REST inference body, JSON and Triton's binary tensor extension (pure: no I/O).

A request body is a JSON header, optionally followed by binary tensor data:
``Inference-Header-Content-Length`` says how many bytes the JSON takes, and
each input with ``parameters.binary_data_size`` takes that many bytes of what
follows, in the order of the inputs. Other inputs carry ``data``, the
tensor's elements in row-major order (flat or nested lists; BYTES elements
as text).

An answer's outputs are JSON ``data`` unless the client asks for binary: per
output (``outputs[].parameters.binary_data``) or for all of them
(``parameters.binary_data_output``, which tritonclient sends when it names no
outputs). Binary outputs follow the JSON in the order of the outputs, each
with its ``binary_data_size``, and the answer's own
``Inference-Header-Content-Length`` says where the JSON ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from kubeinfer_server import tensors
from kubeinfer_server.core import InferRequest, InferResult
from kubeinfer_server.errors import InvalidInput
from kubeinfer_server.validation import InputTensor

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
_UNSUPPORTED_INPUT_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(slots=True)
class RestInfer:
    """A parsed infer body: the JSON header and the binary data after it."""

    header: dict[str, Any]
    binary: memoryview
    binary_outputs: dict[str, bool] = field(default_factory=dict)  # by requested output name
    every_output_binary: bool = False  # the default for outputs not named in binary_outputs

    @property
    def id(self) -> str:
        value = self.header.get("id", "")
        return value if isinstance(value, str) else str(value)

    @property
    def parameters(self) -> Mapping[str, Any]:
        parameters = self.header.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput("'parameters' must be a JSON object")
        return parameters

    def timeout_s(self) -> float | None:
        """The request's ``timeout`` parameter (microseconds, as tritonclient sends it), in seconds."""
        timeout = self.parameters.get("timeout")
        if timeout is None:
            return None
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
            raise InvalidInput("parameter 'timeout' takes a non-negative number of microseconds")
        return timeout / 1e6


def parse_body(body: bytes, header_length: str | None) -> RestInfer:
    """Split a request body into its JSON header and binary data; ``InvalidInput`` says what is wrong."""
    view = memoryview(body)
    if header_length is None:
        json_bytes, binary = view, view[len(view):]
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} must be a whole number, got {header_length!r}") from None
        if not 0 < length <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
        json_bytes, binary = view[:length], view[length:]
    try:
        header = orjson.loads(json_bytes)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidInput("the request must be a JSON object with 'inputs'")
    return RestInfer(header, binary)


def decode_request(parsed: RestInfer, model: str, version: str) -> InferRequest:
    """The ``InferRequest`` in a parsed body; records which outputs the client wants in binary."""
    inputs_json = parsed.header.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise InvalidInput("the request needs 'inputs', a list of tensors")
    offset, inputs = 0, []
    for item in inputs_json:
        tensor, offset = _input(item, parsed.binary, offset)
        inputs.append(tensor)
    if offset != len(parsed.binary):
        raise InvalidInput(f"{len(parsed.binary) - offset} bytes of binary data follow the inputs' "
                           "binary_data_size; send exactly what they announce")
    parsed.every_output_binary = parsed.parameters.get("binary_data_output") is True
    requested = parsed.header.get("outputs") or []
    if not isinstance(requested, list):
        raise InvalidInput("'outputs' must be a list of requested outputs")
    for item in requested:
        name, binary = _output(item, parsed.every_output_binary)
        parsed.binary_outputs[name] = binary
    return InferRequest(model, version, inputs, tuple(parsed.binary_outputs))


def encode_response(parsed: RestInfer, request_id: str, model: str, version: str,
                    result: InferResult) -> tuple[bytes, int | None]:
    """(the answer's body, the length of its JSON when binary outputs follow it, else None)"""
    outputs, blobs = [], []
    for spec, array in result.outputs:
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype.name, "shape": list(array.shape)}
        if parsed.binary_outputs.get(spec.name, parsed.every_output_binary):
            blob = tensors.encode(array, spec.datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(array)
        outputs.append(entry)
    header = orjson.dumps({"model_name": model, "model_version": version, "id": request_id, "outputs": outputs},
                          option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _input(item: Any, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    if not isinstance(item, dict):
        raise InvalidInput("each input must be a JSON object with 'name', 'shape', 'datatype' and 'data'")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str):
        raise InvalidInput("an input has no 'name'")
    if datatype not in tensors.BY_NAME:
        raise InvalidInput(f"input '{name}': unknown datatype {datatype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of whole numbers")
    parameters = item.get("parameters") or {}
    if any(key in parameters for key in _UNSUPPORTED_INPUT_PARAMETERS):
        raise InvalidInput(f"input '{name}': shared memory is not supported; send the data in the body")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in item:
            raise InvalidInput(f"input '{name}' has both 'data' and binary_data_size; send one of the two")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise InvalidInput(f"input '{name}': binary_data_size {size!r} runs past the {len(binary)} bytes "
                               "of binary data")
        return InputTensor(name, datatype, tuple(shape), binary[offset:offset + size], None), offset + size
    data = item.get("data")
    if data is None:
        raise InvalidInput(f"input '{name}' has neither 'data' nor binary_data_size")
    return InputTensor(name, datatype, tuple(shape), None, _flat(name, data)), offset


def _flat(name: str, data: Any) -> list:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    flat: list = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _output(item: Any, every_binary: bool) -> tuple[str, bool]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidInput("each requested output must be a JSON object with a 'name'")
    name, parameters = item["name"], item.get("parameters") or {}
    if "classification" in parameters:
        raise InvalidInput(f"output '{name}': classification is not supported; ask for the tensor "
                           "and take its top classes")
    if any(key in parameters for key in _UNSUPPORTED_INPUT_PARAMETERS):
        raise InvalidInput(f"output '{name}': shared memory is not supported")
    return name, parameters.get("binary_data", every_binary) is True


def _json_data(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [item.decode(errors="replace") if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]
    return np.ascontiguousarray(array).reshape(-1)
