"""``kubeinfer-server batch`` on real files with real models, as a user runs it.

Covers:
- Parquet (a list column, several row groups), JSONL and CSV (scalar columns
  stacked with ``--input-columns``) in, Parquet and JSONL out: every row's
  outputs equal in-process ONNX Runtime, matched by id, no row lost or doubled;
  without an id column, rows are named by source file and row number;
- bad rows (a null, a list of the wrong length, a value that does not fit an
  integer input) go to ``_errors/`` with their reason; more than
  ``--max-failed-rows`` fails the run (exit 1) naming the first ones;
- mistakes said before any compute (exit 2): a model input no column feeds,
  a column of the wrong type, an unknown id column, another run's output;
  an output that cannot be written (exit 1);
- resume: a run killed with SIGKILL mid-way, run again, leaves every row once;
  ``--overwrite`` starts over;
- sharding: three shards (``--shard``, and ``JOB_COMPLETION_INDEX``) together
  equal one run, and only the last one writes ``_SUCCESS``;
- memory stays flat: a dataset several times larger than the growth allowed;
- the termination message carries the shard's counts;
- ``{date}`` in ``--input`` and ``--output`` is ``--date`` (default: today, UTC).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper

from devkit.models import linear, slow
from kubeinfer_server.batchrun import Summary, write_termination_message
from support.serverproc import BIN, run_cli

ROWS = 1200


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return linear(tmp_path_factory.mktemp("models") / "linear.onnx")


def features(rows: int = ROWS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)


def parquet_input(path: Path, x: np.ndarray, row_group_size: int = 500) -> Path:
    table = pa.table({"txn": np.arange(len(x)) + 1000,
                      "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4)})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def expected(model: str, x: np.ndarray) -> dict[str, np.ndarray]:
    logits, relu = ort.InferenceSession(model).run(None, {"x": x})
    return {"logits": logits, "relu": relu}


def batch(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("batch", "--log-level", "warning", *args, timeout=timeout, env=env)


def read_parts(output: Path) -> pa.Table:
    parts = sorted(output.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pa.table({})


def read_jsonl_parts(output: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(output.glob("part-*.jsonl")) for line in p.read_text().splitlines()]


def assert_scores(table: pa.Table, ids: np.ndarray, want: dict[str, np.ndarray], id_column: str = "txn") -> None:
    got_ids = table.column(id_column).to_numpy()
    assert sorted(got_ids.tolist()) == sorted(ids.tolist()), "rows lost or written twice"
    order = np.argsort(got_ids)
    position = {v: i for i, v in enumerate(ids.tolist())}
    for name, values in want.items():
        got = np.stack(table.column(name).to_numpy(zero_copy_only=False))[order]
        np.testing.assert_array_equal(got, values[[position[i] for i in np.sort(got_ids)]], err_msg=name)


def test_parquet_in_parquet_out_equals_onnx_runtime(model, tmp_path):
    x = features()
    source = parquet_input(tmp_path / "in.parquet", x)
    done = batch("--model", model, "--input", str(source), "--output", str(tmp_path / "out"), "--id-column", "txn",
                 "--batch-size", "128")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-{i:06d}.parquet" for i in range(3)]  # row groups
    assert_scores(read_parts(out), np.arange(ROWS) + 1000, expected(model, x))
    success = json.loads((out / "_SUCCESS").read_text())
    assert (success["rows"], success["failed_rows"], success["shards"]) == (ROWS, 0, 1)
    assert json.loads(done.stderr.strip().splitlines()[-1])["event"] == "done"
    schema = pq.read_schema(out / "part-000000.parquet")
    assert schema.metadata[b"kubeinfer.shape.logits"] == b"[3]"


def test_jsonl_in_jsonl_out_without_an_id_column(model, tmp_path):
    x = features(30)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"x": row.tolist()}) + "\n" for row in x))
    done = batch("--model", model, "--input", str(source), "--output", str(tmp_path / "out"),
                 "--output-format", "jsonl")
    assert done.returncode == 0, done.stderr
    rows = read_jsonl_parts(tmp_path / "out")
    assert [r["_row"] for r in rows] == list(range(30)) and {r["_source"] for r in rows} == {str(source)}
    want = expected(model, x)
    np.testing.assert_allclose(np.array([r["logits"] for r in rows], np.float32), want["logits"], rtol=1e-6)


def test_csv_columns_stacked_into_one_input(model, tmp_path):
    x = features(200)
    table = pa.table({"id": [f"c{i}" for i in range(200)], **{f"f{j}": x[:, j].astype(np.float64) for j in range(4)}})
    folder = tmp_path / "csv"
    folder.mkdir()
    pacsv.write_csv(table.slice(0, 120), folder / "a.csv")
    pacsv.write_csv(table.slice(120), folder / "b.csv")
    done = batch("--model", model, "--input", str(folder), "--output", str(tmp_path / "out"),
                 "--input-columns", "x=f0,f1,f2,f3", "--id-column", "id")
    assert done.returncode == 0, done.stderr
    scored = read_parts(tmp_path / "out")
    assert scored.num_rows == 200
    by_id = dict(zip(scored.column("id").to_pylist(), scored.column("logits").to_pylist(), strict=True))
    want = expected(model, x)["logits"]  # float64 in the file, float32 for the model
    np.testing.assert_allclose(np.array([by_id[f"c{i}"] for i in range(200)], np.float32), want, rtol=1e-6)


def error_lines(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "_errors" / "part-000000.jsonl").read_text().splitlines()]


def int_model(path: Path) -> str:
    """n INT32 [-1, 2] -> doubled, as FP32: a model whose input does not take NaN or 2**40."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["n"], ["f"], to=TensorProto.FLOAT), helper.make_node("Add", ["f", "f"], ["y"])],
        "ints", [helper.make_tensor_value_info("n", TensorProto.INT32, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return str(path)


def test_bad_rows_go_to_errors_and_the_limit_fails_the_run(model, tmp_path):
    source = tmp_path / "in.jsonl"
    rows = [{"id": i, "x": [1.0, 2.0, 3.0, float(i)]} for i in range(20)]
    rows[3]["x"] = None
    rows[7]["x"] = [1.0, 2.0]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--model", model, "--input", str(source), "--output", str(tmp_path / "out"), "--id-column", "id"]
    refused = batch(*args)
    assert refused.returncode == 1
    assert "2 bad rows, more than --max-failed-rows 0" in refused.stderr
    assert "row id=3: column 'x' is null" in refused.stderr and "id=7: column 'x' holds 2 values" in refused.stderr
    assert not list((tmp_path / "out").glob("part-*")), "a failed unit must not be committed"
    done = batch(*args, "--max-failed-rows", "2")
    assert done.returncode == 0, done.stderr
    errors = error_lines(tmp_path / "out")
    assert [(e["id"], e["reason"]) for e in errors] == [
        (3, "column 'x' is null"), (7, "column 'x' holds 2 values, the model takes 4 a row")]
    assert sorted(read_parts(tmp_path / "out").column("id").to_pylist()) == [i for i in range(20) if i not in (3, 7)]
    assert json.loads((tmp_path / "out" / "_SUCCESS").read_text())["failed_rows"] == 2


def test_values_that_do_not_fit_an_integer_input_are_bad_rows(tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [0, 1, 2, 3], "a": [1.0, float("nan"), 2.5, 3.0], "b": [1, 2, 3, 2**40]}), source)
    done = batch("--model", int_model(tmp_path / "ints.onnx"), "--input", str(source), "--output",
                 str(tmp_path / "out"), "--input-columns", "n=a,b", "--id-column", "id", "--max-failed-rows", "5")
    assert done.returncode == 0, done.stderr
    errors = error_lines(tmp_path / "out")
    assert [e["id"] for e in errors] == [1, 2, 3]
    assert all("does not fit int32" in e["reason"] for e in errors), errors
    scored = read_parts(tmp_path / "out")
    assert scored.column("id").to_pylist() == [0] and scored.column("y").to_pylist() == [[2.0, 2.0]]


@pytest.mark.parametrize("args,message", [
    ([], "no column feeds model input 'x'"),
    (["--input-columns", "x=a,b,c,d"], "column 'a' (for model input 'x') is not in the input"),
    (["--input-columns", "x=name,name,name,name"], "column 'name' is string, not numbers"),
    (["--input-columns", "y=a"], "--input-columns names 'y', which is not a model input"),
    (["--input-columns", "x=v,v,v,v", "--id-column", "nope"], "--id-column 'nope' is not a column"),
    (["--input-columns", "x"], "--input-columns takes TENSOR=COL[,COL...]"),
    (["--input-columns", "x=v,v,v,v", "--shard", "3", "--shards", "2"], "--shard 3 is not in 0..1"),
])
def test_mistakes_are_said_before_any_compute(model, tmp_path, args, message):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"v": [1.0, 2.0], "name": ["a", "b"]}), source)
    done = batch("--model", model, "--input", str(source), "--output", str(tmp_path / "out"), *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr.strip().splitlines()[-1], done.stderr
    assert not list(tmp_path.glob("out/part-*"))


def test_another_runs_output_and_an_unwritable_output(model, tmp_path):
    source = parquet_input(tmp_path / "in.parquet", features(10))
    out = tmp_path / "out"
    assert batch("--model", model, "--input", str(source), "--output", str(out)).returncode == 0
    other = batch("--model", model, "--input", str(source), "--output", str(out), "--id-column", "txn")
    assert other.returncode == 2 and "holds results of a run with other arguments (id_column differ)" in other.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = batch("--model", model, "--input", str(source), "--output", str(foreign))
    assert refused.returncode == 2 and "is not empty and was not written by kubeinfer-server batch" in refused.stderr
    blocked = tmp_path / "file"
    blocked.write_text("a file, not a folder")
    failed = batch("--model", model, "--input", str(source), "--output", str(blocked / "out"))
    assert failed.returncode == 1 and "cannot write the output" in failed.stderr


def test_a_killed_run_resumes_with_every_row_once(tmp_path):
    heavy = slow(tmp_path / "slow.onnx", width=256, layers=24)
    x = np.random.default_rng(3).standard_normal((4000, 256)).astype(np.float32)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": np.arange(4000), "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)),
                                                                                             256)}),
                   source, row_group_size=250)
    out = tmp_path / "out"
    args = [str(BIN), "batch", "--model", heavy, "--input", str(source), "--output", str(out), "--id-column", "id",
            "--batch-size", "50", "--log-level", "warning"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob("part-*.parquet"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    committed = len(list(out.glob("part-*.parquet")))
    assert 3 <= committed < 16, f"{committed} parts before the kill: the test needs a run killed mid-way"
    assert not (out / "_SUCCESS").exists()
    done = batch("--model", heavy, "--input", str(source), "--output", str(out), "--id-column", "id",
                 "--batch-size", "50", timeout=300)
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stderr.strip().splitlines()[-1])
    assert last["units_skipped"] == committed and last["rows"] == 4000
    ids = read_parts(out).column("id").to_numpy()
    assert len(ids) == 4000 and len(set(ids.tolist())) == 4000
    assert not list(out.glob(".tmp-*")), "a temporary part was left behind"
    again = batch("--model", heavy, "--input", str(source), "--output", str(out), "--id-column", "id",
                  "--batch-size", "50", "--overwrite", timeout=300)
    assert again.returncode == 0 and json.loads(again.stderr.strip().splitlines()[-1])["units_skipped"] == 0


def test_three_shards_equal_one_run(model, tmp_path):
    x = features(3000)
    source = parquet_input(tmp_path / "in.parquet", x, row_group_size=250)  # 12 units
    whole = tmp_path / "whole"
    assert batch("--model", model, "--input", str(source), "--output", str(whole), "--id-column", "txn").returncode == 0
    sharded = tmp_path / "sharded"
    common = ["--model", model, "--input", str(source), "--output", str(sharded), "--id-column", "txn",
              "--shards", "3"]
    for shard in (0, 1):
        assert batch(*common, "--shard", str(shard)).returncode == 0
        assert not (sharded / "_SUCCESS").exists(), "_SUCCESS before every shard is done"
    last = batch(*common, env={"JOB_COMPLETION_INDEX": "2"})  # as an Indexed Job's pod
    assert last.returncode == 0, last.stderr
    assert sorted(p.name for p in sharded.glob("part-*")) == sorted(p.name for p in whole.glob("part-*"))
    assert json.loads((sharded / "_SUCCESS").read_text())["rows"] == 3000
    a, b = read_parts(whole).sort_by("txn"), read_parts(sharded).sort_by("txn")
    assert a.equals(b)


def peak_rss_mb(args: list[str]) -> tuple[int, float]:
    """Run ``kubeinfer-server batch ARGS``; its exit code and peak resident memory (VmHWM), in MiB."""
    proc = subprocess.Popen([str(BIN), "batch", "--log-level", "warning", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    peak = 0.0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            break
        time.sleep(0.02)
    proc.communicate(timeout=300)
    return proc.returncode, peak


def test_memory_stays_flat_on_a_large_dataset(tmp_path):
    wide = linear(tmp_path / "wide.onnx", features=1024, classes=4)
    rows_per_group = 8000  # 32 MiB a row group
    big, small = tmp_path / "big.parquet", tmp_path / "small.parquet"
    with pq.ParquetWriter(big, pa.schema([("x", pa.list_(pa.float32(), 1024))]), compression="none") as writer:
        for group in range(20):  # 640 MiB in all
            x = np.random.default_rng(group).standard_normal((rows_per_group, 1024)).astype(np.float32)
            writer.write_table(pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 1024)}))
    pq.write_table(pq.read_table(big).slice(0, 100), small)
    size_mb = big.stat().st_size / 2**20
    code, baseline = peak_rss_mb(["--model", wide, "--input", str(small), "--output", str(tmp_path / "o1")])
    assert code == 0
    code, peak = peak_rss_mb(["--model", wide, "--input", str(big), "--output", str(tmp_path / "o2"),
                              "--batch-size", "1024"])
    assert code == 0
    growth = peak - baseline
    assert growth * 3 < size_mb, f"peak {peak:.0f} MiB against {baseline:.0f} MiB on {size_mb:.0f} MiB of data"
    assert pq.read_metadata(tmp_path / "o2" / "part-000019.parquet").num_rows == rows_per_group


def test_termination_message_carries_the_counts(tmp_path):
    path = tmp_path / "termination-log"
    path.write_text("")
    write_termination_message(Summary(rows=10, failed_rows=1, shard=2, shards=3), None, str(path))
    message = json.loads(path.read_text())
    assert (message["rows"], message["failed_rows"], message["shard"]) == (10, 1, 2) and "arguments" not in message
    write_termination_message(None, "2 bad rows, more than --max-failed-rows 0", str(path))
    assert json.loads(path.read_text()) == {"error": "2 bad rows, more than --max-failed-rows 0"}
    write_termination_message(None, "no file, no message", str(tmp_path / "absent"))
    assert not (tmp_path / "absent").exists()


def test_date_in_the_input_and_output_uris(model, tmp_path):
    x = features(40)
    day = tmp_path / "in" / "2026-12-01"
    day.mkdir(parents=True)
    parquet_input(day / "a.parquet", x)
    done = batch("--model", model, "--input", str(tmp_path / "in" / "{date}"), "--output",
                 str(tmp_path / "out" / "{date}"), "--id-column", "txn", "--date", "2026-12-01")
    assert done.returncode == 0, done.stderr
    assert_scores(read_parts(tmp_path / "out" / "2026-12-01"), np.arange(40) + 1000, expected(model, x))
    bad = batch("--model", model, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                "--date", "yesterday")
    assert bad.returncode == 2 and "--date takes YYYY-MM-DD, got 'yesterday'" in bad.stderr, bad.stderr


def test_cli_help_lists_batch():
    done = subprocess.run([sys.executable, "-m", "kubeinfer_server.cli", "batch", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "--input-columns" in done.stdout
