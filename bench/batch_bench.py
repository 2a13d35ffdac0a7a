"""Batch scoring: ``kubeinfer-server batch`` against in-process ONNX Runtime and a pandas loop.

For each model (devkit.models: mlp and cnn by default) it writes a Parquet
dataset (one list column holding each row's tensor, row groups of
``--row-group`` rows), then, interleaved, ``--rounds`` times:

1. **in-process**: one ONNX Runtime session with the CLI's settings (intra-op
   threads = the machine's CPUs) calling ``run`` over the rows already in
   memory, ``--batch-size`` at a time: the compute limit;
2. **batch CLI**: ``kubeinfer-server batch --batch-size N``, Parquet in and out;
   its rate is rows over ``scoring_seconds`` (reading, converting, scoring and
   writing; the process's start and the model's load aside, as the target
   says);
3. **pandas loop**: what a data scientist writes: ``pd.read_parquet``, stack
   the column into an array, ``session.run`` per batch, the outputs into a
   column, ``to_parquet``; timed from the read to the written file.

It prints rows/s per side and the ratios (target: batch CLI >= 90% of
in-process). It always exits 0 unless it cannot run at all.

Usage: python bench/batch_bench.py [--models mlp,cnn] [--rounds 2] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

from devkit.models import make_all

ROWS = {"mlp": 60000, "cnn": 4000, "linear": 200000}
SERVER_BIN = Path(sys.executable).parent / "kubeinfer-server"


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def write_dataset(path: Path, sess: ort.InferenceSession, rows: int, row_group: int) -> np.ndarray:
    spec = sess.get_inputs()[0]
    width = int(np.prod(spec.shape[1:]))
    x = np.random.default_rng(0).standard_normal((rows, width)).astype(np.float32)
    table = pa.table({spec.name: pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), width)})
    pq.write_table(table, path, row_group_size=row_group)
    return x.reshape((rows, *spec.shape[1:]))


def in_process(sess: ort.InferenceSession, x: np.ndarray, batch: int) -> float:
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x[:batch]})
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        sess.run(None, {name: x[i:i + batch]})
    return len(x) / (time.perf_counter() - start)


def batch_cli(model: Path, data: Path, out: Path, batch: int) -> float:
    done = subprocess.run([str(SERVER_BIN), "batch", "--model", str(model), "--input", str(data), "--output",
                           str(out), "--batch-size", str(batch), "--overwrite", "--log-level", "warning"],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"kubeinfer-server batch failed:\n{done.stderr[-3000:]}")
    last = json.loads(done.stderr.strip().splitlines()[-1])
    return last["rows"] / last["scoring_seconds"]


def pandas_loop(sess: ort.InferenceSession, data: Path, out: Path, batch: int) -> float:
    import pandas as pd

    start = time.perf_counter()
    spec = sess.get_inputs()[0]
    frame = pd.read_parquet(data)
    x = np.stack(frame[spec.name].to_numpy()).astype(np.float32).reshape((len(frame), *spec.shape[1:]))
    outputs = [sess.run(None, {spec.name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    frame["output"] = list(np.concatenate(outputs).reshape(len(frame), -1))
    frame.drop(columns=[spec.name]).to_parquet(out)
    return len(frame) / (time.perf_counter() - start)


def measure(name: str, path: Path, workdir: Path, rounds: int, batch: int, row_group: int) -> str:
    sess = session(path)
    data = workdir / f"{name}.parquet"
    x = write_dataset(data, sess, ROWS[name], row_group)
    sides: dict[str, list[float]] = {"in-process": [], "batch CLI": [], "pandas loop": []}
    for round_index in range(rounds):
        sides["in-process"].append(in_process(sess, x, batch))
        sides["batch CLI"].append(batch_cli(path, data, workdir / f"{name}-out", batch))
        sides["pandas loop"].append(pandas_loop(sess, data, workdir / f"{name}-pandas.parquet", batch))
        print(f"  {name} round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.0f} rows/s" for k, v in sides.items()),
              flush=True)
    rate = {k: statistics.median(v) for k, v in sides.items()}
    cli_ratio = statistics.median(c / i for c, i in zip(sides["batch CLI"], sides["in-process"], strict=True))
    pandas_ratio = statistics.median(c / p for c, p in zip(sides["batch CLI"], sides["pandas loop"], strict=True))
    verdict = "PASS" if cli_ratio >= 0.9 else "FAIL"
    return (f"| {name} | {ROWS[name]} | {batch} | {rate['in-process']:.0f} | {rate['batch CLI']:.0f} | "
            f"{rate['pandas loop']:.0f} | {cli_ratio:.2f} ({verdict}) | {pandas_ratio:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--row-group", type=int, default=4096)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kubeinfer-batch-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = make_all(workdir / "models")
    rows = [measure(name, paths[name], workdir, args.rounds, args.batch_size, args.row_group)
            for name in args.models.split(",")]
    print("\n| model | rows | batch | in-process rows/s | batch CLI rows/s | pandas loop rows/s "
          "| CLI ÷ in-process (>= 0.90) | CLI ÷ pandas |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print(f"\nwork directory: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
