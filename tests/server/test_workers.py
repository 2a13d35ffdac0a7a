"""``--workers N``: several server processes sharing one gRPC port and one HTTP port.

Covers: the parent announces readiness once every worker is ready; requests
over many connections all succeed, gRPC and REST; with ``--access-log-file``
each worker writes a file of its own; ``/metrics`` sums every worker
(``kubeinfer_requests_total`` equals the requests sent) and keeps the
queue-depth contract; SIGTERM drains every worker and the parent exits 0;
a fixed port is required; a worker that dies takes the pod down (non-zero exit)
rather than leaving it ready at half capacity.
"""

import concurrent.futures
import json
import os
import re
import signal
import urllib.request

import numpy as np
import tritonclient.grpc as tc

from devkit.models import linear
from devkit.ports import free_port as _free_port
from devkit.waiting import wait_for
from support.serverproc import ServerProcess, run_cli


def _call(url: str, i: int) -> np.ndarray:
    client = tc.InferenceServerClient(url)
    try:
        x = tc.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.full((1, 4), i, np.float32))
        return client.infer("linear", [x]).as_numpy("logits")
    finally:
        client.close()


def _rest_call(port: int, i: int) -> list[float]:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [i] * 4}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/linear/infer", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=20) as response:
        return next(o for o in json.loads(response.read())["outputs"] if o["name"] == "logits")["data"]


def _worker_pids(parent: int) -> list[int]:
    children = []
    for task in os.listdir(f"/proc/{parent}/task"):
        path = f"/proc/{parent}/task/{task}/children"
        if os.path.exists(path):
            children += [int(p) for p in open(path).read().split()]

    def cmdline(pid):
        return open(f"/proc/{pid}/cmdline", "rb").read()

    # multiprocessing also starts a resource tracker; the workers run spawn_main
    return [p for p in children if b"spawn_main" in cmdline(p) and b"resource_tracker" not in cmdline(p)]


def _answered(metrics_text: str) -> float:
    return sum(float(v) for v in re.findall(
        r'^kubeinfer_requests_total\{client="anonymous",code="OK",model="linear"\} ([0-9.e+]+)$', metrics_text, re.M))


def _metrics_once_answered(server: ServerProcess, count: int) -> str | None:
    """The parent's /metrics once it counts ``count`` answered requests, else None."""
    text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=5).read().decode()
    return text if _answered(text) == count else None


def test_workers_share_the_port_and_metrics_add_up(tmp_path):
    model = linear(tmp_path / "linear.onnx")
    port = _free_port()
    server = ServerProcess(f"--model=linear={model}", "--workers=2", "--grace-seconds=10",
                           "--access-log-file", str(tmp_path / "access.log"), grpc_port=port, http_port=_free_port())
    with server:
        assert "with 2 workers" in server.log()
        assert len(re.findall(r"Worker ready", server.log())) == 2
        # per-worker statistics are not the server's: the extension is not advertised
        assert "statistics" not in tc.InferenceServerClient(server.url).get_server_metadata().extensions
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: _call(server.url, i), range(64)))
            rest = list(pool.map(lambda i: _rest_call(server.http_port, i), range(16)))
        assert len(results) == 64 and all(r.shape == (1, 3) for r in results)
        assert len(rest) == 16 and all(len(r) == 3 for r in rest)
        # the workers publish snapshots every 0.1 s: the sum settles within a few of them
        text = wait_for(lambda: _metrics_once_answered(server, 80), timeout=5, what="the workers' counts to add up")
        assert _answered(text) == 80, text
        assert re.search(r'^kubeinfer_request_duration_seconds_count\{model="linear"\} 80\.0$', text, re.M), text
        assert re.search(r'^kubeinfer_queue_depth\{model="linear"\} 0\.0$', text, re.M), text
        assert urllib.request.urlopen(f"{server.metrics_url}/readyz", timeout=5).status == 200
        server.terminate()
        assert server.wait(30) == 0
    assert "Stopped" in server.log()
    files = sorted(p.name for p in tmp_path.glob("access*.log"))
    assert files == ["access.w0.log", "access.w1.log"], files
    # the 80 inference calls and the one ServerMetadata call
    assert sum(len(p.read_text().splitlines()) for p in tmp_path.glob("access*.log")) == 81


def test_workers_need_a_fixed_port(tmp_path):
    result = run_cli("serve", f"--model=linear={linear(tmp_path / 'l.onnx')}", "--grpc-port=0", "--workers=2")
    assert result.returncode == 2 and "--workers needs a fixed --grpc-port and --http-port" in result.stderr


def test_a_dead_worker_stops_the_pod(tmp_path):
    model = linear(tmp_path / "linear.onnx")
    server = ServerProcess(f"--model=linear={model}", "--workers=2", grpc_port=_free_port(), http_port=_free_port())
    with server:
        workers = _worker_pids(server.proc.pid)
        assert len(workers) >= 2, workers
        os.kill(workers[0], signal.SIGKILL)
        assert server.wait(30) == 1
    assert "exited with" in server.log()
