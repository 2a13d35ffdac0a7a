"""KServe's clients (pip ``kserve``) work unchanged against the server:
``InferenceGRPCClient`` over gRPC, ``InferenceRESTClient`` (protocol v2) over
REST with binary and with JSON tensors: readiness, model readiness, the
request id, and outputs equal to in-process ONNX Runtime. The client runs in
its own process (see support/kserve_call.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from devkit.models import linear
from support.serverproc import ServerProcess

SCRIPT = Path(__file__).parents[1] / "support" / "kserve_call.py"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return linear(tmp_path_factory.mktemp("models") / "linear.onnx")


@pytest.fixture(scope="module")
def server(model):
    with ServerProcess(f"--model=fraud={model}") as proc:
        yield proc


@pytest.mark.parametrize("mode", ["grpc", "rest", "rest-json"])
def test_kserve_client_infers(server, model, mode):
    x = np.random.default_rng(7).standard_normal((3, 4)).astype(np.float32)
    url = server.url if mode == "grpc" else server.http_url
    done = subprocess.run([sys.executable, str(SCRIPT), url, "fraud", mode], capture_output=True, text=True,
                          input=json.dumps({"inputs": {"x": x.tolist()}, "datatype": "FP32"}), timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["ready"] and answer["model_ready"] and answer["id"] == "kserve-1"
    logits, relu = ort.InferenceSession(model).run(None, {"x": x})
    np.testing.assert_allclose(np.asarray(answer["outputs"]["logits"], np.float32), logits, rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(answer["outputs"]["relu"], np.float32), relu, rtol=0, atol=0)
