"""Triton's ``perf_analyzer`` (the real C++ client, from the tritonclient 2.51
wheel) runs unchanged against the server: unary, ``--streaming`` and batch-8
requests over gRPC, and over REST (``-i http``) with binary and JSON tensors,
with server-side statistics, and reports throughput. Short windows:
this checks the protocol perf_analyzer relies on (ModelMetadata, ModelConfig,
ServerMetadata extensions, ModelStatistics, ModelInfer, ModelStreamInfer), not
speed (bench/ measures speed). Without perf_analyzer installed
(bench/install_perf_analyzer.sh, run by ``make test``) the test skips, and
fails under CI."""

import csv
import os
import subprocess
from pathlib import Path

import pytest

from devkit.models import linear
from support.serverproc import ServerProcess

WRAPPER = Path(__file__).parents[2] / "bench" / "perf_analyzer"
HOME = Path(os.environ.get("PERF_ANALYZER_HOME", Path.home() / ".cache/kubeinfer/perf_analyzer"))


@pytest.fixture(scope="module")
def perf_analyzer():
    if not (HOME / "bin" / "perf_analyzer").exists():
        message = "perf_analyzer is not installed: run bench/install_perf_analyzer.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return str(WRAPPER)


HTTP = ["-i", "http"]
CASES = {
    "unary": ["-i", "grpc"], "streaming": ["-i", "grpc", "--streaming"], "batch8": ["-i", "grpc", "-b", "8"],
    "rest-binary": HTTP, "rest-json": [*HTTP, "--input-tensor-format", "json", "--output-tensor-format", "json"],
    "rest-batch8": [*HTTP, "-b", "8"],
}


@pytest.mark.parametrize("case", CASES)
def test_perf_analyzer_runs_against_the_server(perf_analyzer, tmp_path, case):
    model = linear(tmp_path / "linear.onnx")
    report = tmp_path / "report.csv"
    extra = CASES[case]
    with ServerProcess(f"--model=linear={model}", "--access-log-sample-rate=0") as server:
        url = server.http_url if "http" in extra else server.url
        done = subprocess.run(
            [perf_analyzer, "-m", "linear", "-u", url, "--concurrency-range", "4",
             "--measurement-mode", "time_windows", "-p", "500", "-s", "10000", "-r", "3", "-f", str(report),
             *extra],
            capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Server:" in done.stdout, "perf_analyzer did not read the server-side statistics"
    row = next(csv.DictReader(report.open()))
    assert float(row["Inferences/Second"]) > 0
