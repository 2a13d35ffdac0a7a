"""The ways ``kubeinfer-server optimize`` makes a candidate model: one ONNX file in, one out.

- ``dynamic``: ONNX Runtime's ``quantize_dynamic``: int8 weights, activations
  quantized on the fly (MatMul and Gemm, which it rewrites as MatMul, and Conv).
- ``static``: ONNX Runtime's ``quantize_static`` in the QDQ format, its
  activation ranges calibrated on rows of data (min/max, entropy or
  percentile); unsigned activations and signed weights on a CPU (what ONNX
  Runtime advises for x86), signed both for GPU providers.
- ``float16``: ONNX Runtime's float16 converter, keeping the model's inputs
  and outputs float32, so clients send what they sent before.
- ``prune``: the smallest-magnitude values of each Gemm, MatMul and Conv weight
  set to zero, to a target sparsity. The file keeps its dense layout, so it is
  no smaller and, on ONNX Runtime's CPU kernels, no faster; the zeros are what
  compression (and sparse kernels elsewhere) gain from.

Which methods fit which execution providers is here too (``methods_for``,
``float16_refusal``). The quantizers need the ``onnx`` package, imported only
when a method runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

METHODS = ("dynamic", "static", "float16", "prune")
METHOD_CHOICES = (*METHODS, "auto")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
PRUNED_OPS = {"Gemm": (1,), "MatMul": (0, 1), "Conv": (1,)}  # op -> the inputs that may be a weight

Feeds = dict[str, np.ndarray]


class MethodFailed(Exception):
    """The converter could not make the candidate (the message is its first line)."""


@dataclass(frozen=True)
class PruneStats:
    tensors: int  # weight initializers pruned
    weights: int  # values in them
    zeros: int  # of those, zero after pruning

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0


def float16_refusal(providers: Sequence[str]) -> str | None:
    """Why float16 is refused on these (effective) providers, or None when a GPU provider runs the model."""
    if any(p in GPU_PROVIDERS for p in providers):
        return None
    return ("float16 is for GPU execution providers: the model runs on " + ", ".join(providers) + ", whose "
            "kernels are mostly float32, so ONNX Runtime casts around the float16 parts and the model is no "
            "faster (often slower); run with --providers cuda (or tensorrt) on a GPU, or pass --allow-cpu-float16 "
            "to measure it anyway")


def methods_for(providers: Sequence[str], calibrated: bool, validated: bool, allow_cpu_float16: bool) -> list[str]:
    """The methods ``auto`` tries on these (effective) providers with the data given. Dynamic quantization's
    kernels are CPU kernels; static QDQ runs on a CPU or TensorRT; prune is never automatic: it buys size,
    not speed, and needs a sparsity chosen for the model."""
    on_gpu = float16_refusal(providers) is None
    methods = ["float16"] if on_gpu or allow_cpu_float16 else []
    if not on_gpu:
        methods.append("dynamic")
    if calibrated and validated and (not on_gpu or "TensorrtExecutionProvider" in providers):
        methods.append("static")
    return methods


def make(method: str, source: str, dest: str, *, providers: Sequence[str], calibration: Sequence[Feeds] = (),
         calibration_method: str = "minmax", sparsity: float = 0.5) -> dict[str, Any]:
    """Writes ``method``'s candidate of ``source`` to ``dest``; returns what the report says about it."""
    with _quiet():
        try:
            if method == "dynamic":
                return quantize_dynamic(source, dest)
            if method == "static":
                return quantize_static(source, dest, calibration, calibration_method, providers)
            if method == "float16":
                return to_float16(source, dest)
            if method == "prune":
                return prune(source, dest, sparsity)
        except MethodFailed:
            raise
        except ImportError as exc:
            raise MethodFailed(f"{method} needs the {exc.name or 'onnx'} package, which is not installed") from exc
        except Exception as exc:  # the converters raise anything from onnx, protobuf or numpy
            text = str(exc).strip().splitlines()
            raise MethodFailed(f"{method}: {text[0] if text else type(exc).__name__}") from exc
    raise ValueError(f"unknown method {method!r}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizers log advice to the root logger and print calibration progress: keep both out of the
    command's output (its stdout is the report's table)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_dynamic(source: str, dest: str) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as quantize

    quantize(source, dest, weight_type=QuantType.QInt8)
    return {"weight_type": "int8"}


def _reader(batches: Sequence[Feeds]):
    """ONNX Runtime's calibration reader over feeds already read."""
    from onnxruntime.quantization import CalibrationDataReader

    class Rows(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> Feeds | None:
            return next(self._batches, None)

    return Rows()


def quantize_static(source: str, dest: str, calibration: Sequence[Feeds], calibration_method: str,
                    providers: Sequence[str]) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as quantize

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    on_gpu = float16_refusal(providers) is None
    activations = QuantType.QInt8 if on_gpu else QuantType.QUInt8
    quantize(source, dest, _reader(calibration), quant_format=QuantFormat.QDQ, activation_type=activations,
             weight_type=QuantType.QInt8, calibrate_method=methods[calibration_method])
    return {"format": "QDQ", "activation_type": "int8" if on_gpu else "uint8", "weight_type": "int8",
            "calibration_method": calibration_method, "calibration_rows": sum(_rows(b) for b in calibration)}


def _rows(feeds: Feeds) -> int:
    return len(next(iter(feeds.values()))) if feeds else 0


def to_float16(source: str, dest: str) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(source), keep_io_types=True)
    onnx.save(model, dest)
    return {"keep_io_types": True}


def prune(source: str, dest: str, sparsity: float) -> dict[str, Any]:
    import onnx

    model = onnx.load(source)
    stats = prune_weights(model.graph, sparsity)
    if not stats.tensors:
        raise MethodFailed("prune: the model has no Gemm, MatMul or Conv weight initializer to prune")
    onnx.save(model, dest)
    return {"target_sparsity": sparsity, "sparsity": round(stats.sparsity, 6), "tensors": stats.tensors,
            "weights": stats.weights, "zeros": stats.zeros}


def prune_weights(graph, sparsity: float) -> PruneStats:
    """Zeroes, in place, the ``sparsity`` share of smallest-magnitude values of each weight in ``graph``."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    names = weight_names(graph.node, initializers)
    weights = zeros = 0
    for name in names:
        values = numpy_helper.to_array(initializers[name])
        pruned = magnitude_prune(values, sparsity)
        initializers[name].CopyFrom(numpy_helper.from_array(pruned, name))
        weights += pruned.size
        zeros += int(np.count_nonzero(pruned == 0))
    return PruneStats(len(names), weights, zeros)


def weight_names(nodes, initializers: dict[str, Any]) -> list[str]:
    """The float initializers that are a Gemm, MatMul or Conv weight (not biases), each once, in graph order."""
    from onnx import TensorProto

    names: list[str] = []
    for node in nodes:
        for position in PRUNED_OPS.get(node.op_type, ()):
            name = node.input[position] if position < len(node.input) else ""
            init = initializers.get(name)
            if init is not None and init.data_type == TensorProto.FLOAT and len(init.dims) >= 2 \
                    and name not in names:
                names.append(name)
    return names


def magnitude_prune(values: np.ndarray, sparsity: float) -> np.ndarray:
    """A copy of ``values`` with its ``floor(sparsity * size)`` smallest magnitudes set to zero."""
    count = math.floor(sparsity * values.size)
    flat = values.reshape(-1).copy()
    if count:
        smallest = np.argpartition(np.abs(flat), count - 1)[:count]
        flat[smallest] = 0
    return flat.reshape(values.shape)
