"""``kubeinfer-server optimize`` on real models and real files, as a user runs it.

Covers:
- dynamic and static quantization of a trained classifier (devkit.classifier, numpy-trained, top-1 0.98)
  pass a 1% top-1 budget and are faster: exit 0, MODEL_OUT written whole, its sha256 in the report, and
  the report's top-1 figures equal ONNX Runtime's own on the validation rows;
- a budget of 0 rejects (exit 3, MODEL_OUT not written, the reason names the budget);
- the cnn, whose dynamic quantization (ConvInteger) is slower on a CPU, is rejected for speed, its
  accuracy measured without labels (agreement and output error);
- float16 on CPU providers refuses (exit 2) and says why; with --allow-cpu-float16 it runs and keeps
  float32 inputs and outputs;
- prune reports its sparsity, its size and its compressed size, and the written weights hold the zeros;
- without validation data: decision not_measured, MODEL_OUT written only with --accept-unvalidated;
- auto tries the methods that fit the CPU and keeps the fastest that passed;
- bad input is a one-line error: corrupt validation data (Parquet, JSONL), a column that does not match,
  calibration rows of the wrong shape, a missing or out-of-range label, a model that does not load;
- the pure parts: the decision's gates, exact count-based degradation, magnitude pruning, cosine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, numpy_helper

from devkit.classifier import Classifier, make_classifier
from devkit.models import make_cnn
from kubeinfer_server.optimize_measure import Tally, cosine_rows, degradation
from kubeinfer_server.optimize_methods import magnitude_prune
from kubeinfer_server.optimize_report import Gates, decide
from support.serverproc import run_cli

MEASURE_SECONDS = "1.5"
CONTRACT_KEYS = {"decision", "reason", "baseline", "candidate", "speedup", "degradation", "sha256_in", "sha256_out"}
SIDE_KEYS = {"metric", "p50_ms", "throughput", "bytes"}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Classifier:
    return make_classifier(tmp_path_factory.mktemp("classifier"))


def optimize(*args: str, timeout: float = 120):
    return run_cli("optimize", "--log-level", "warning", "--measure-seconds", MEASURE_SECONDS, *args, timeout=timeout)


def labelled(classifier: Classifier, *args: str) -> list[str]:
    return [str(classifier.model), *args, "--validation", str(classifier.validation), "--label-column", "label"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def validation_rows(classifier: Classifier) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(classifier.validation)
    x = np.stack(table.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    return x, table.column("label").to_numpy()


def top1(model: Path, x: np.ndarray, labels: np.ndarray, batch: int = 32) -> float:
    """ONNX Runtime's top-1, ``batch`` rows a run as optimize scores (dynamic quantization's ranges are per run)."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {"features": x[i:i + batch]})[0] for i in range(0, len(x), batch)])
    return float((logits.argmax(axis=1) == labels).mean())


@pytest.mark.parametrize("method,ops", [("dynamic", {"DynamicQuantizeLinear"}), ("static", {"QuantizeLinear"})])
def test_quantization_passes_a_one_percent_budget_and_is_faster(classifier, tmp_path, method, ops):
    out, report_path = tmp_path / "out" / "model.onnx", tmp_path / "report.json"
    done = optimize(*labelled(classifier, str(out), "--method", method, "--calibration", str(classifier.calibration),
                              "--max-degradation", "0.01", "--report", str(report_path)))
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    assert CONTRACT_KEYS <= report.keys() and SIDE_KEYS <= report["baseline"].keys() <= report["candidate"].keys()
    assert (report["decision"], report["metric"], report["method"]) == ("accepted", "top1", method)
    assert report["degradation"] <= 0.01 and report["speedup"] >= 1.0, report["reason"]
    assert report["sha256_in"] == sha256(classifier.model) and report["sha256_out"] == sha256(out)
    assert report["candidate"]["bytes"] == out.stat().st_size < report["baseline"]["bytes"] / 3
    x, labels = validation_rows(classifier)
    assert report["baseline"]["metric"] == pytest.approx(top1(classifier.model, x, labels), abs=1e-12)
    assert report["candidate"]["metric"] == pytest.approx(top1(out, x, labels), abs=1e-12)
    assert abs(report["baseline"]["metric"] - classifier.accuracy) <= 0.001  # numpy's forward pass, for the record
    assert ops <= {node.op_type for node in onnx.load(out).graph.node}
    assert report["candidate"]["p99_ms"] >= report["candidate"]["p50_ms"] > 0
    assert not list(out.parent.glob(".*")), "no temporary file left beside MODEL_OUT"
    assert "accepted: top1" in done.stdout and f"wrote {out}" in done.stdout


def test_a_budget_of_zero_rejects(classifier, tmp_path):
    out, report_path = tmp_path / "model.onnx", tmp_path / "report.json"
    done = optimize(str(classifier.model), str(out), "--method", "dynamic", "--validation", str(classifier.validation),
                    "--metric", "mse", "--max-degradation", "0", "--report", str(report_path))
    assert done.returncode == 3, done.stderr
    report = json.loads(report_path.read_text())
    assert report["decision"] == "rejected" and report["degradation"] > 0
    assert "more than --max-degradation 0" in report["reason"]
    assert report["sha256_out"] is None and not out.exists()
    assert f"{out} not written" in done.stdout


def test_a_quantized_model_that_is_slower_is_rejected_for_speed(tmp_path):
    model = make_cnn(tmp_path / "cnn.onnx")
    x = np.random.default_rng(0).standard_normal((48, 3 * 64 * 64)).astype(np.float32)
    pq.write_table(pa.table({"input": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 3 * 64 * 64)}),
                   tmp_path / "valid.parquet")
    out, report_path = tmp_path / "model.onnx", tmp_path / "report.json"
    done = optimize(str(model), str(out), "--method", "dynamic", "--validation", str(tmp_path / "valid.parquet"),
                    "--max-degradation", "1", "--batch-size", "8", "--report", str(report_path))
    assert done.returncode == 3, done.stderr
    report = json.loads(report_path.read_text())
    assert report["decision"] == "rejected" and report["speedup"] < 1.0
    assert "under --min-speedup 1" in report["reason"] and "degradation" not in report["reason"]
    assert report["metric"] == "agreement" and report["validation_rows"] == 48
    assert {"agreement", "max_abs_error", "mean_abs_error", "cosine"} <= report["candidate"]["accuracy"].keys()
    assert not out.exists()


def test_float16_on_cpu_refuses_and_says_why(classifier, tmp_path):
    out = tmp_path / "model.onnx"
    refused = optimize(*labelled(classifier, str(out), "--method", "float16"))
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert "float16 is for GPU execution providers: the model runs on CPUExecutionProvider" in last
    assert "--allow-cpu-float16" in last and not out.exists()
    done = optimize(*labelled(classifier, str(out), "--method", "float16", "--allow-cpu-float16",
                              "--min-speedup", "0"))
    assert done.returncode == 0, done.stderr
    graph = onnx.load(out).graph
    assert [v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]] == [TensorProto.FLOAT] * 2
    assert {init.data_type for init in graph.initializer} == {TensorProto.FLOAT16}


def test_prune_reports_its_sparsity_and_size(classifier, tmp_path):
    out, report_path = tmp_path / "model.onnx", tmp_path / "report.json"
    done = optimize(*labelled(classifier, str(out), "--method", "prune", "--prune-sparsity", "0.5",
                              "--max-degradation", "1", "--min-speedup", "0", "--report", str(report_path)))
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    details = report["candidate"]["details"]
    assert details["sparsity"] == pytest.approx(0.5, abs=1e-4) and details["tensors"] == 3
    assert report["candidate"]["bytes"] == out.stat().st_size
    assert report["candidate"]["compressed_bytes"] < 0.7 * report["baseline"]["compressed_bytes"]
    assert "no faster" in report["note"] and "sparsity" in done.stdout
    weights = [numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer if i.name.endswith(".weight")]
    assert all(np.count_nonzero(w == 0) == w.size // 2 for w in weights)


def test_without_validation_the_decision_needs_accept_unvalidated(classifier, tmp_path):
    out, report_path = tmp_path / "model.onnx", tmp_path / "report.json"
    args = [str(classifier.model), str(out), "--method", "dynamic", "--report", str(report_path)]
    held = optimize(*args)
    assert held.returncode == 3, held.stderr
    report = json.loads(report_path.read_text())
    assert (report["decision"], report["degradation"], report["baseline"]["metric"]) == ("not_measured", None, None)
    assert "--accept-unvalidated" in report["reason"] and not out.exists()
    kept = optimize(*args, "--accept-unvalidated")
    assert kept.returncode == 0, kept.stderr
    report = json.loads(report_path.read_text())
    assert report["decision"] == "not_measured" and report["sha256_out"] == sha256(out)
    assert "accuracy not measured" in kept.stdout


def test_auto_keeps_the_fastest_method_that_passes(classifier, tmp_path):
    out, report_path = tmp_path / "model.onnx", tmp_path / "report.json"
    done = optimize(*labelled(classifier, str(out), "--method", "auto", "--calibration", str(classifier.calibration),
                              "--report", str(report_path)))
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    candidates = {c["method"]: c for c in report["candidates"]}
    assert set(candidates) == {"dynamic", "static"}  # float16 does not fit a CPU; prune is never automatic
    passed = [c for c in candidates.values() if c["decision"] == "accepted"]
    assert report["method"] == max(passed, key=lambda c: c["speedup"])["method"]
    assert report["sha256_out"] == sha256(out) == candidates[report["method"]]["sha256"]


def write_rows(path: Path, width: int, rows: int = 8, **extra) -> Path:
    values = np.zeros((rows, width), np.float32)
    pq.write_table(pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width),
                             **extra}), path)
    return path


@pytest.mark.parametrize("case,message", [
    ("corrupt-parquet", "validation: {dir}/valid.parquet: not a readable Parquet file"),
    ("corrupt-jsonl", "validation: {dir}/valid.jsonl: JSON parse error"),
    ("no-column", "validation: no column feeds model input 'features'"),
    ("stacked-columns", "--input-columns features= stacks 2 columns, but the model takes [-1, 128]"),
    ("calibration-shape", "calibration: 8 bad row(s) in {dir}/calib.parquet, the first is row 0: column 'features' "
                          "holds 64 values, the model takes 128 a row"),
    ("no-label", "validation: --label-column 'label' is not a column"),
    ("label-range", "validation: a label is 12, but the model's first output has 10 values a row"),
    ("static-alone", "--method static needs --calibration rows"),
    ("same-file", "MODEL_OUT is MODEL_IN"),
])
def test_bad_input_is_a_clear_one_line_error(classifier, tmp_path, case, message):
    valid, calib = str(classifier.validation), str(classifier.calibration)
    args = {"corrupt-parquet": ["--validation", str(tmp_path / "valid.parquet")],
            "corrupt-jsonl": ["--validation", str(tmp_path / "valid.jsonl")],
            "no-column": ["--validation", str(tmp_path / "other.parquet")],
            "stacked-columns": ["--validation", str(tmp_path / "other.parquet"), "--input-columns", "features=a,b"],
            "calibration-shape": ["--method", "static", "--validation", valid,
                                  "--calibration", str(write_rows(tmp_path / "calib.parquet", 64))],
            "no-label": ["--validation", str(write_rows(tmp_path / "unlabelled.parquet", 128)),
                         "--label-column", "label"],
            "label-range": ["--validation", str(write_rows(tmp_path / "labels.parquet", 128, label=[1] * 7 + [12])),
                            "--label-column", "label"],
            "static-alone": ["--method", "static", "--validation", valid],
            "same-file": ["--validation", valid, "--calibration", calib]}[case]
    (tmp_path / "valid.parquet").write_bytes(b"PAR1 this is not Parquet")
    (tmp_path / "valid.jsonl").write_text('{"features": [1, 2]}\n{"features": [1, 2\n')
    pq.write_table(pa.table({"a": [1.0], "b": [2.0]}), tmp_path / "other.parquet")
    out = classifier.model if case == "same-file" else tmp_path / "model.onnx"
    method = [] if "--method" in args else ["--method", "dynamic"]
    done = optimize(str(classifier.model), str(out), *method, *args)
    assert done.returncode == 2, done.stderr
    assert message.format(dir=tmp_path) in done.stderr.strip().splitlines()[-1], done.stderr
    assert not (tmp_path / "model.onnx").exists()


def test_a_model_that_does_not_load_fails(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    done = optimize(str(tmp_path / "broken.onnx"), str(tmp_path / "model.onnx"), "--method", "dynamic")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert "Optimize failed: MODEL_IN: " in line and "is not a loadable ONNX model" in line


def test_cli_help_lists_optimize():
    done = run_cli("--help")
    assert done.returncode == 0 and "optimize" in done.stdout


# --- the pure parts ----------------------------------------------------------------------

GATES = Gates(max_degradation=0.01, min_speedup=1.0, accept_unvalidated=False, batch_size=32, metric="top1")


@pytest.mark.parametrize("degradation,speedup,gates,decision,keep,words", [
    (0.01, 1.0, GATES, "accepted", True, "top1 degraded by 0.01 (--max-degradation 0.01)"),
    (-0.002, 1.5, GATES, "accepted", True, "top1 improved by 0.002"),
    (0.011, 2.0, GATES, "rejected", False, "more than --max-degradation 0.01"),
    (0.0, 0.99, GATES, "rejected", False, "0.99x the original's throughput at batch 32, under --min-speedup 1"),
    (None, 2.0, GATES, "not_measured", False, "give --validation rows, or --accept-unvalidated"),
    (None, 2.0, Gates(0.01, 1.0, True, 32, "top1"), "not_measured", True, "kept on --accept-unvalidated"),
    (None, 0.5, Gates(0.01, 1.0, True, 32, "top1"), "rejected", False, "under --min-speedup"),
    (float("nan"), 2.0, GATES, "rejected", False, "top1 is not a number: the candidate's outputs hold NaN"),
])
def test_the_decision_gates(degradation, speedup, gates, decision, keep, words):
    made = decide(degradation, speedup, gates)
    assert (made.decision, made.keep) == (decision, keep) and words in made.reason, made.reason


def test_degradation_is_exact_for_shares():
    """99 of 100 rows agreeing is a degradation of exactly 0.01: within a budget of 0.01."""
    reference = np.eye(4, dtype=np.float32)[np.arange(100) % 4]
    output = reference.copy()
    output[0] = np.roll(output[0], 1)
    base, tally = Tally(), Tally()
    base.add(reference, reference, np.arange(100) % 4)
    tally.add(reference, output, np.arange(100) % 4)
    assert degradation("agreement", base, tally) == 0.01 and degradation("top1", base, tally) == 0.01
    assert decide(degradation("agreement", base, tally), 1.0, GATES).keep


def test_magnitude_pruning_zeroes_the_smallest():
    values = np.array([[0.5, -0.1, 0.3], [-0.7, 0.05, 0.2]], np.float32)
    np.testing.assert_array_equal(magnitude_prune(values, 0.5), np.array([[0.5, 0, 0.3], [-0.7, 0, 0]], np.float32))
    np.testing.assert_array_equal(magnitude_prune(values, 0.1), values)  # floor(0.6) = 0 values


def test_cosine_of_zero_rows():
    a = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    b = np.array([[0.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    np.testing.assert_array_equal(cosine_rows(a, b), [1.0, 0.0, 0.0])
