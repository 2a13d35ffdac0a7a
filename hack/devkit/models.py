"""The ONNX models of the examples, the benchmarks, the demos and the tests: made, never downloaded.

Built with ``onnx.helper`` from seeded weights (opset 17, IR 8), so every run writes the
same bytes. Two families:

Sample models (examples, benchmarks, demos, e2e tests); each maker returns the written ``Path``:

- ``make_mlp``: ``input`` [-1, 256] -> 3 x (Dense 1024 + ReLU) -> ``output`` [-1, 16]
- ``make_cnn``: ``input`` [-1, 3, 64, 64] -> 2 x (Conv 3x3 + ReLU + MaxPool 2x2)
  -> Flatten -> Dense -> ``output`` [-1, 10]
- ``make_linear``: the mlp's signature with its output layer only (Dense 256 -> 16);
  the benchmark uses it to measure the server's own cost per request
- ``make_all(outdir)`` writes ``mlp.onnx``, ``cnn.onnx`` and ``linear.onnx``;
  ``python -m devkit.models OUTDIR`` (or ``examples/make_models.py OUTDIR``) does the same.

Tiny test models (server tests); each maker returns the written path as ``str``:

- ``linear``: ``x`` [batch, 4] -> ``logits`` = x @ W and ``relu``, both [batch, 3];
  W = ``default_rng(0).standard_normal((4, 3))`` (tests recompute it)
- ``identity_all_types``: ``in_<TYPE>`` -> ``out_<TYPE>`` [batch, 2] for every OIP datatype
- ``fixed_shape``: ``x`` [2, 3] -> ``y`` = x + 1: a fixed first dimension, so not batchable
- ``slow``: ``x`` [batch, width] -> ``y`` through ``layers`` MatMul + Tanh: a few ms a row
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Opset 17 and IR 8 are well inside what onnxruntime >= 1.14 accepts.
OPSET = 17
IR_VERSION = 8
SEED = 20240601


def _initializer(rng: np.random.Generator, name: str, shape: tuple[int, ...], fan_in: int):
    """He-normal weights: activations keep a sane scale through the ReLUs."""
    values = rng.standard_normal(shape).astype(np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    return numpy_helper.from_array(values, name)


def _bias(rng: np.random.Generator, name: str, size: int):
    return numpy_helper.from_array((rng.standard_normal(size) * 0.01).astype(np.float32), name)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="kubeinfer-examples",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def _dense(rng, nodes, inits, x: str, name: str, fan_in: int, fan_out: int, relu: bool) -> str:
    """Appends Gemm(x, W^T) + b (and ReLU) and returns the output tensor name."""
    inits.append(_initializer(rng, f"{name}.weight", (fan_out, fan_in), fan_in))
    inits.append(_bias(rng, f"{name}.bias", fan_out))
    out = f"{name}.out"
    nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [out], name=name, transB=1))
    if not relu:
        return out
    nodes.append(helper.make_node("Relu", [out], [f"{name}.relu"], name=f"{name}.relu"))
    return f"{name}.relu"


def make_mlp(path: str | Path, in_features: int = 256, hidden: int = 1024, out_features: int = 16,
             layers: int = 3, name: str = "mlp") -> Path:
    """Writes the ``mlp`` model (``layers`` hidden layers) to ``path`` and returns it."""
    rng = np.random.default_rng(SEED)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x, width = "input", in_features
    for i in range(layers):
        x = _dense(rng, nodes, inits, x, f"fc{i}", width, hidden, relu=True)
        width = hidden
    last = _dense(rng, nodes, inits, x, "head", width, out_features, relu=False)
    nodes.append(helper.make_node("Identity", [last], ["output"], name="output"))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", out_features])],
        initializer=inits,
    )
    return _save(graph, path)


def make_linear(path: str | Path) -> Path:
    """The mlp's signature with its output layer only (Dense 256 -> 16): next to no compute,
    so a benchmark of it measures the server's own cost per request."""
    return make_mlp(path, layers=0, name="linear")


def _conv_block(rng, nodes, inits, x: str, name: str, c_in: int, c_out: int) -> str:
    """Appends Conv 3x3 (same padding) + ReLU + MaxPool 2x2 and returns the output name."""
    inits.append(_initializer(rng, f"{name}.weight", (c_out, c_in, 3, 3), c_in * 9))
    inits.append(_bias(rng, f"{name}.bias", c_out))
    nodes.append(helper.make_node(
        "Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}.conv"],
        name=f"{name}.conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
    ))
    nodes.append(helper.make_node("Relu", [f"{name}.conv"], [f"{name}.relu"], name=f"{name}.relu"))
    nodes.append(helper.make_node(
        "MaxPool", [f"{name}.relu"], [f"{name}.pool"], name=f"{name}.pool", kernel_shape=[2, 2], strides=[2, 2],
    ))
    return f"{name}.pool"


def make_cnn(path: str | Path, size: int = 64, classes: int = 10) -> Path:
    """Writes the ``cnn`` model to ``path`` and returns it."""
    rng = np.random.default_rng(SEED + 1)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = _conv_block(rng, nodes, inits, "input", "conv0", 3, 16)
    x = _conv_block(rng, nodes, inits, x, "conv1", 16, 32)
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flat", axis=1))
    flat = 32 * (size // 4) * (size // 4)
    last = _dense(rng, nodes, inits, "flat", "head", flat, classes, relu=False)
    nodes.append(helper.make_node("Identity", [last], ["output"], name="output"))
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    return _save(graph, path)


MODELS = {"mlp": make_mlp, "cnn": make_cnn, "linear": make_linear}


def make_all(outdir: str | Path) -> dict[str, Path]:
    """Writes every sample model into ``outdir``; returns name -> path."""
    outdir = Path(outdir)
    return {name: make(outdir / f"{name}.onnx") for name, make in MODELS.items()}


# OIP datatype -> ONNX element type, for the identity model.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def linear(path, features: int = 4, classes: int = 3, seed: int = 0) -> str:
    """x FP32 [batch, features] -> logits = x @ W, relu = max(logits, 0); both [batch, classes]."""
    weights = np.random.default_rng(seed).standard_normal((features, classes)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"]), helper.make_node("Relu", ["logits"], ["relu"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
         helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(weights, "W")],
    )
    return str(_save(graph, path))


def identity_all_types(path) -> str:
    """One input ``in_<TYPE>`` [batch, 2] and output ``out_<TYPE>`` per OIP datatype."""
    nodes, inputs, outputs = [], [], []
    for name, elem in ONNX_TYPES.items():
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{name}", elem, ["batch", 2]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, ["batch", 2]))
    return str(_save(helper.make_graph(nodes, "identity_all_types", inputs, outputs), path))


def fixed_shape(path) -> str:
    """x FP32 [2, 3] -> y = x + 1: a fixed first dimension, so not batchable."""
    one = numpy_helper.from_array(np.ones((2, 3), dtype=np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [one],
    )
    return str(_save(graph, path))


def slow(path, width: int = 1024, layers: int = 24, seed: int = 1) -> str:
    """x FP32 [batch, width] -> y [batch, width] through ``layers`` MatMul+Tanh: a few ms a row."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"W{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]))
        out = "y" if i == layers - 1 else f"t{i}"
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])], inits,
    )
    return str(_save(graph, path))


def _with_head(path: str | Path, name: str, rng: np.random.Generator, nodes: list, inits: list, x: str,
               in_features: int, out_features: int) -> Path:
    """``nodes`` (from ``input``, ending at ``x``) then the mlp's head: a model with the mlp's signature."""
    last = _dense(rng, nodes, inits, x, "head", in_features, out_features, relu=False)
    nodes.append(helper.make_node("Identity", [last], ["output"], name="output"))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", out_features])],
        initializer=inits,
    )
    return _save(graph, path)


def batch_trap(path: str | Path, in_features: int = 256, out_features: int = 16) -> Path:
    """The mlp's signature (``input`` [batch, 256] -> ``output`` [batch, 16]) through a Reshape to
    [1, -1] before its one Dense layer: one row works (so it loads and warms up), and ONNX Runtime
    fails at run time on any batch of more rows (a model that breaks for some inputs only: the canary
    tests' bad model)."""
    rng = np.random.default_rng(SEED)
    flat = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "flat")
    nodes = [helper.make_node("Reshape", ["input", "flat"], ["flattened"])]
    inits = [flat]
    return _with_head(path, "batch_trap", rng, nodes, inits, "flattened", in_features, out_features)


def slow_mlp(path: str | Path, iterations: int = 1000, in_features: int = 256, out_features: int = 16) -> Path:
    """The mlp's signature with ``iterations`` rounds of Tanh(x @ W) in an ONNX Loop before its head:
    as slow as a model many times the mlp's size (about 65k multiply-adds a row a round), in a small
    file (the canary tests' slow model)."""
    rng = np.random.default_rng(SEED)
    weight = (rng.standard_normal((in_features, in_features)) / np.sqrt(in_features)).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_in", "W"], ["mixed"]), helper.make_node("Tanh", ["mixed"], ["x_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "round",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["batch", in_features])],
    )
    inits = [numpy_helper.from_array(weight, "W"),
             numpy_helper.from_array(np.array(iterations, dtype=np.int64), "rounds"),
             numpy_helper.from_array(np.array(True), "keep_going")]
    nodes = [helper.make_node("Loop", ["rounds", "keep_going", "input"], ["looped"], body=body)]
    return _with_head(path, "slow_mlp", rng, nodes, inits, "looped", in_features, out_features)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="directory for mlp.onnx, cnn.onnx and linear.onnx")
    args = parser.parse_args(argv)
    for path in make_all(args.outdir).values():
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
