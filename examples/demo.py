"""The kubeinfer demo: serve a sample model and call it as an application would.

Makes the sample MLP (devkit.models), starts ``kubeinfer-server serve``
on loopback, calls it with tritonclient (single requests, then a burst of
concurrent ones so the dynamic batcher has work), prints the predictions next
to in-process ONNX Runtime and the server's queue and latency metrics, and
stops the server with SIGTERM (a graceful drain).
"""

from __future__ import annotations

import concurrent.futures
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as tc

from devkit.models import make_mlp

SERVER = Path(sys.executable).parent / "kubeinfer-server"
READY = re.compile(r"on gRPC port (\d+), HTTP port \d+, metrics port (\d+)")


def start_server(model: Path, log_path: Path) -> tuple[subprocess.Popen, int, int]:
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(SERVER), "serve", "--model", f"mlp={model}", "--host", "127.0.0.1", "--grpc-port", "0",
         "--http-port", "0", "--metrics-port", "0", "--access-log-sample-rate", "0.01"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = READY.search(log_path.read_text())
        if match:
            return proc, int(match[1]), int(match[2])
        if proc.poll() is not None:
            sys.exit(f"kubeinfer-server exited:\n{log_path.read_text()}")
        time.sleep(0.1)
    proc.kill()
    sys.exit("kubeinfer-server did not become ready within 60s")


def infer(url: str, x: np.ndarray) -> np.ndarray:
    client = tc.InferenceServerClient(url)
    tensor = tc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("mlp", [tensor]).as_numpy("output")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="kubeinfer-demo-"))
    model = make_mlp(workdir / "mlp.onnx")
    print(f"==> Made the sample model {model} (MLP FP32 [-1,256] -> [-1,16])")
    proc, grpc_port, metrics_port = start_server(model, workdir / "server.log")
    url = f"127.0.0.1:{grpc_port}"
    print(f"==> kubeinfer-server is serving on {url} (metrics on :{metrics_port})")
    try:
        client = tc.InferenceServerClient(url)
        meta = client.get_model_metadata("mlp", as_json=True)
        print(f"    model metadata: inputs {meta['inputs']}, outputs {meta['outputs']}")
        x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
        served = infer(url, x)
        local = ort.InferenceSession(str(model)).run(None, {"input": x})[0]
        print("==> Predictions for 4 rows (argmax per row): served", served.argmax(1).tolist(),
              "| in-process", local.argmax(1).tolist(), "| max abs diff", float(np.abs(served - local).max()))
        rows = [np.random.default_rng(i).standard_normal((1, 256)).astype(np.float32) for i in range(256)]
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda r: infer(url, r), rows))
        print(f"==> Sent 256 single-row requests from 32 threads in {time.monotonic() - started:.2f}s")
        stats = client.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
        print(f"    inferences {stats['inference_count']}, executions {stats['execution_count']} "
              "(fewer executions than inferences: the dynamic batcher merged requests)")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        print("==> Server metrics (queue depth is the autoscaling signal):")
        for line in metrics.splitlines():
            if line.startswith(("kubeinfer_queue_depth", "kubeinfer_requests_total", "kubeinfer_model_info",
                                "kubeinfer_request_duration_seconds_sum", "kubeinfer_request_duration_seconds_count",
                                "kubeinfer_batch_size_sum", "kubeinfer_batch_size_count")):
                print("   ", line)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        print(f"==> Stopped the server with SIGTERM (graceful drain, exit code {code})")
    print("Next: `make test` runs the whole suite; see README.md to serve your own model.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
