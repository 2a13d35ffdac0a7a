"""KServe's ``InferenceGRPCClient`` (pip ``kserve``) works unchanged against the server:
readiness, model readiness and inference whose outputs equal in-process ONNX
Runtime. The client runs in its own process (see support/kserve_call.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from devkit.models import linear
from support.serverproc import ServerProcess

SCRIPT = Path(__file__).parents[1] / "support" / "kserve_call.py"


def test_kserve_client_infers(tmp_path):
    model = linear(tmp_path / "linear.onnx")
    x = np.random.default_rng(7).standard_normal((3, 4)).astype(np.float32)
    with ServerProcess(f"--model=fraud={model}") as server:
        done = subprocess.run([sys.executable, str(SCRIPT), server.url, "fraud"], capture_output=True, text=True,
                              input=json.dumps({"inputs": {"x": x.tolist()}, "datatype": "FP32"}), timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["ready"] and answer["model_ready"] and answer["id"] == "kserve-1"
    logits, relu = ort.InferenceSession(model).run(None, {"x": x})
    np.testing.assert_allclose(np.asarray(answer["outputs"]["logits"], np.float32), logits, rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(answer["outputs"]["relu"], np.float32), relu, rtol=0, atol=0)
