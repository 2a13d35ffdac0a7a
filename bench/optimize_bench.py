"""Optimization: speedup and accuracy delta per method, as ``kubeinfer-server optimize`` measures them.

For each model (devkit.models' ``mlp`` and ``cnn`` by default; ``classifier``,
devkit.classifier's trained MLP, on request) it writes validation and
calibration rows as Parquet and runs ``kubeinfer-server optimize`` once per
method: ``dynamic``, ``static`` (QDQ, min/max calibration), ``float16``
(``--allow-cpu-float16``: on a CPU it shows what the refusal protects from)
and ``prune`` (``--prune-sparsity``), gates open (``--max-degradation 1e9
--min-speedup 0``) so each is measured, not judged. The command times the
original and the candidate interleaved in the same process, so the ratios
are the figures to read:

- speedup: candidate over original throughput at ``--batch-size`` (rows/s);
  latency speedup: original over candidate p50 at batch 1;
- the bench models' weights are random, so their accuracy is the agreement of
  the candidate's top-1 with the original's on standard-normal inputs (and
  the output's mean absolute error); the classifier has labels: top-1;
- delta: the candidate's metric minus the original's (negative is worse);
- size: candidate bytes over original bytes (prune: compressed with zlib).

It prints a Markdown table and always exits 0 unless it cannot run at all.

Usage: python bench/optimize_bench.py [--models mlp,cnn,classifier] [--batch-size 32] [--measure-seconds 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from devkit.classifier import make_classifier
from devkit.models import make_all

SERVER_BIN = Path(sys.executable).parent / "kubeinfer-server"
METHODS = {"dynamic": [], "static": ["--calibration-method", "minmax"], "float16": ["--allow-cpu-float16"],
           "prune": ["--prune-sparsity", "0.5"]}
ROWS = {"mlp": (2000, 128), "cnn": (256, 64)}  # validation, calibration rows
INPUTS = {"mlp": ("input", 256), "cnn": ("input", 3 * 64 * 64)}


def write_rows(path: Path, name: str, width: int, rows: int, seed: int) -> Path:
    x = np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32)
    pq.write_table(pa.table({name: pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), width)}), path)
    return path


def datasets(workdir: Path, models: list[str]) -> dict[str, dict]:
    """Per model: its file, validation and calibration rows, and the extra flags (labels)."""
    made: dict[str, dict] = {}
    samples = make_all(workdir / "models")
    for name in models:
        if name == "classifier":
            trained = make_classifier(workdir / "classifier")
            made[name] = {"model": trained.model, "validation": trained.validation,
                          "calibration": trained.calibration, "flags": ["--label-column", "label"]}
            continue
        column, width = INPUTS[name]
        valid, calib = ROWS[name]
        made[name] = {"model": samples[name], "flags": [],
                      "validation": write_rows(workdir / f"{name}-valid.parquet", column, width, valid, 0),
                      "calibration": write_rows(workdir / f"{name}-calib.parquet", column, width, calib, 1)}
    return made


def optimize(data: dict, method: str, out: Path, batch: int, seconds: float) -> dict:
    report = out.with_suffix(".json")
    done = subprocess.run(
        [str(SERVER_BIN), "optimize", str(data["model"]), str(out), "--method", method, *METHODS[method],
         "--validation", str(data["validation"]), "--calibration", str(data["calibration"]), *data["flags"],
         "--max-degradation", "1e9", "--min-speedup", "0", "--batch-size", str(batch),
         "--measure-seconds", str(seconds), "--report", str(report), "--log-level", "warning"],
        capture_output=True, text=True, timeout=1800)
    if done.returncode not in (0, 3):
        raise RuntimeError(f"kubeinfer-server optimize {method} failed:\n{done.stderr[-3000:]}")
    return json.loads(report.read_text())


def row(model: str, method: str, report: dict) -> str:
    base, cand = report["baseline"], report["candidate"]
    delta = cand["metric"] - base["metric"]
    size = (cand["compressed_bytes"] / base["compressed_bytes"] if "compressed_bytes" in cand
            else cand["bytes"] / base["bytes"])
    error = cand["accuracy"]["mean_abs_error"]
    return (f"| {model} | {method} | {cand['speedup']:.2f} | {cand['latency_speedup']:.2f} | {report['metric']} | "
            f"{base['metric']:.4f} | {cand['metric']:.4f} | {delta:+.4f} | {error:.3g} | {size:.2f} | "
            f"{cand['make_seconds']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--measure-seconds", type=float, default=4.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kubeinfer-optimize-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = datasets(workdir, args.models.split(","))
    rows = []
    for model, files in data.items():
        for method in args.methods.split(","):
            report = optimize(files, method, workdir / f"{model}-{method}.onnx", args.batch_size,
                              args.measure_seconds)
            rows.append(row(model, method, report))
            print(f"  {rows[-1]}", flush=True)
    print(f"\n| model | method | speedup (batch {args.batch_size}) | latency speedup (batch 1) | metric | original "
          "| candidate | delta | mean abs error | size | make s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print(f"\n{time.monotonic() - started:.0f} s; work directory: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
