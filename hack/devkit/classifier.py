"""A trained classifier and its data, for the optimization tests and benchmark: top-1 accuracy means something.

``make_classifier(outdir)`` draws a synthetic dataset (``CLASSES`` Gaussian
clusters in ``FEATURES`` dimensions, close enough that a few percent of the
points sit on the wrong side of a boundary), trains an MLP on it with numpy
(``FEATURES`` -> ``HIDDEN`` -> ``HIDDEN`` -> ``CLASSES``, ReLU, softmax
cross-entropy, Adam; a few seconds on two cores) and writes, seeded (the same
data every run; the same weights up to the BLAS's rounding):

- ``classifier.onnx``: ``features`` FP32 [-1, FEATURES] -> ``logits`` FP32 [-1, CLASSES] (Gemm + ReLU layers);
- ``train.parquet``, ``validation.parquet``: a ``features`` column (fixed-size lists of float32, the
  model input's name, so ``kubeinfer-server batch`` and ``optimize`` map it without ``--input-columns``)
  and a ``label`` column (int64 class index);
- ``calibration.parquet``: ``features`` only, drawn like the rest.

The hidden layers are wide enough that int8 quantization is measurably
faster on a CPU, and the model's validation accuracy (0.98) leaves room
to see a quantized model lose some.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
from onnx import TensorProto, helper, numpy_helper

FEATURES, HIDDEN, CLASSES = 128, 512, 10
ROWS = {"train": 6000, "validation": 2000, "calibration": 256}
SEED = 20240614
OPSET, IR_VERSION = 17, 8
SPREAD = 2.7  # noise around each cluster centre (its norm); centres are drawn N(0, 1/FEATURES) a dimension
EPOCHS, BATCH, LEARNING_RATE = 6, 128, 2e-3


@dataclass(frozen=True)
class Classifier:
    model: Path
    train: Path
    validation: Path
    calibration: Path
    accuracy: float  # the trained model's top-1 on the validation rows (numpy's forward pass)


def draw(rng: np.random.Generator, centres: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` points: a class drawn uniformly, then its centre plus Gaussian noise."""
    labels = rng.integers(0, len(centres), rows)
    noise = rng.standard_normal((rows, centres.shape[1])) * SPREAD / np.sqrt(centres.shape[1])
    return (centres[labels] + noise).astype(np.float32), labels.astype(np.int64)


def _init(rng: np.random.Generator) -> list[np.ndarray]:
    sizes = [FEATURES, HIDDEN, HIDDEN, CLASSES]
    params = []
    for fan_in, fan_out in zip(sizes, sizes[1:], strict=False):
        params += [rng.standard_normal((fan_in, fan_out)).astype(np.float32) * np.float32(np.sqrt(2 / fan_in)),
                   np.zeros(fan_out, np.float32)]
    return params


def forward(params: list[np.ndarray], x: np.ndarray) -> list[np.ndarray]:
    """Every layer's activation, the input first and the logits last."""
    acts = [x]
    for i in range(0, len(params), 2):
        z = acts[-1] @ params[i] + params[i + 1]
        acts.append(np.maximum(z, 0) if i + 2 < len(params) else z)
    return acts


def _gradients(params: list[np.ndarray], x: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    acts = forward(params, x)
    logits = acts[-1] - acts[-1].max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    probs[np.arange(len(labels)), labels] -= 1
    delta = probs / len(labels)
    grads: list[np.ndarray] = [np.empty(0)] * len(params)
    for layer in reversed(range(len(params) // 2)):
        grads[2 * layer], grads[2 * layer + 1] = acts[layer].T @ delta, delta.sum(axis=0)
        if layer:
            delta = (delta @ params[2 * layer].T) * (acts[layer] > 0)
    return grads


def train(rng: np.random.Generator, x: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """Adam on softmax cross-entropy, ``EPOCHS`` passes in shuffled minibatches."""
    params = _init(rng)
    first = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    step = 0
    for _ in range(EPOCHS):
        order = rng.permutation(len(x))
        for start in range(0, len(x), BATCH):
            rows = order[start:start + BATCH]
            step += 1
            for p, m, v, g in zip(params, first, second, _gradients(params, x[rows], labels[rows]), strict=True):
                m *= 0.9
                m += 0.1 * g
                v *= 0.999
                v += 0.001 * g * g
                p -= LEARNING_RATE * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    return params


def to_onnx(params: list[np.ndarray], path: Path) -> Path:
    nodes, inits, x = [], [], "features"
    for layer in range(len(params) // 2):
        weight, bias = f"fc{layer}.weight", f"fc{layer}.bias"
        inits += [numpy_helper.from_array(np.ascontiguousarray(params[2 * layer].T), weight),
                  numpy_helper.from_array(params[2 * layer + 1], bias)]
        last = layer == len(params) // 2 - 1
        out = "logits" if last else f"fc{layer}.out"
        nodes.append(helper.make_node("Gemm", [x, weight, bias], [out], name=f"fc{layer}", transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"fc{layer}.relu"], name=f"fc{layer}.relu"))
            x = f"fc{layer}.relu"
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kubeinfer-dev")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def write_rows(path: Path, x: np.ndarray, labels: np.ndarray | None) -> Path:
    columns = {"features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])}
    if labels is not None:
        columns["label"] = pa.array(labels)
    pq.write_table(pa.table(columns), path)
    return path


def make_classifier(outdir: str | Path) -> Classifier:
    """Draws the data, trains the model, writes the four files into ``outdir``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    centres = rng.standard_normal((CLASSES, FEATURES)) / np.sqrt(FEATURES)
    data = {name: draw(rng, centres, rows) for name, rows in ROWS.items()}
    params = train(rng, *data["train"])
    x, labels = data["validation"]
    accuracy = float((forward(params, x)[-1].argmax(axis=1) == labels).mean())
    return Classifier(
        model=to_onnx(params, outdir / "classifier.onnx"),
        train=write_rows(outdir / "train.parquet", *data["train"]),
        validation=write_rows(outdir / "validation.parquet", x, labels),
        calibration=write_rows(outdir / "calibration.parquet", data["calibration"][0], None),
        accuracy=accuracy,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="folder for classifier.onnx and the Parquet files")
    made = make_classifier(parser.parse_args(argv).outdir)
    sys.stdout.write(f"{made.model} (validation top-1 {made.accuracy:.4f})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
