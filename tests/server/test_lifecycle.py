"""Load, overload and shutdown of a real server process.

Covers: while the models load (gRPC already up), ModelInfer and ModelMetadata
answer UNAVAILABLE ("loading models") and readiness is false, then the same
calls succeed once loaded; under load ``kubeinfer_queue_depth`` counts accepted requests; SIGTERM
turns readiness off, refuses new connections and answers every accepted
request (queued or running, gRPC and REST) before a clean exit; a full queue answers
RESOURCE_EXHAUSTED (not UNAVAILABLE) while the rest succeed; with a shutdown
delay, readiness turns off at SIGTERM but new calls are still answered until the
delay ends (so clients that have not yet seen the replica leave lose nothing); a request whose
deadline passes in the queue is dropped before compute (statistics count it
as failed, never as inferred), over gRPC and over REST (``timeout``: 504);
with a max connection age, a client that keeps calling sees no failures
across connection recycling.
"""

import json
import os
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from devkit.models import linear, slow
from devkit.ports import free_port
from devkit.waiting import wait_for
from support.serverproc import ServerProcess

WIDTH = 1024


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    return slow(tmp_path_factory.mktemp("slow") / "slow.onnx", width=WIDTH)


def _request(rows=1):
    tensor = tc.InferInput("x", [rows, WIDTH], "FP32")
    tensor.set_data_from_numpy(np.ones((rows, WIDTH), dtype=np.float32))
    return [tensor]


def _metric(server, name):
    text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=5).read().decode()
    match = re.search(rf'^{name}{{model="slow"}} ([0-9.e+]+)$', text, re.M)
    return float(match[1]) if match else None


def _answered(server) -> float:
    text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r'^kubeinfer_requests_total\{[^}]*model="slow"\} ([0-9.e+]+)$', text, re.M))


def _fire(client, count, rows=1, **kwargs):
    answers: queue.Queue = queue.Queue()
    for i in range(count):
        client.async_infer("slow", _request(rows), callback=lambda result, error: answers.put((result, error)),
                           request_id=str(i), **kwargs)
    return answers


def _rest_infer(server, rows: int = 1, timeout_us: int | None = None) -> tuple[int, dict]:
    """A REST inference on the slow model: (HTTP status, answer)."""
    body: dict = {"inputs": [{"name": "x", "shape": [rows, WIDTH], "datatype": "FP32",
                              "parameters": {"binary_data_size": rows * WIDTH * 4}}]}
    if timeout_us is not None:
        body["parameters"] = {"timeout": timeout_us}
    header = json.dumps(body).encode()
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/slow/infer", method="POST",
                                     data=header + np.ones((rows, WIDTH), np.float32).tobytes(),
                                     headers={"Inference-Header-Content-Length": str(len(header))})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_sigterm_drains_every_accepted_request(slow_model):
    server = ServerProcess(f"--model=slow={slow_model}", "--max-batch-size=4", "--grace-seconds=60",
                           "--intra-op-threads=1").start()
    try:
        client = tc.InferenceServerClient(server.url)
        answers = _fire(client, 32, rows=4)
        rest: queue.Queue = queue.Queue()  # REST calls in flight too, each on its own connection
        for _ in range(4):
            threading.Thread(target=lambda: rest.put(_rest_infer(server, rows=4)), daemon=True).start()
        # Accepted = in the server's queue (the depth metric) or already answered.
        wait_for(lambda: (_metric(server, "kubeinfer_queue_depth") or 0) + _answered(server) >= 36, 30,
                 "the queue depth metric to show the accepted requests", interval=0.02)
        assert _answered(server) < 32, "every request was answered before SIGTERM: nothing to drain"
        server.terminate()
        wait_for(lambda: _readyz(server) == 503, 10, "readiness to turn off on SIGTERM", interval=0.02)
        with pytest.raises(InferenceServerException):
            tc.InferenceServerClient(server.url).infer("slow", _request(), client_timeout=5)
        results = [answers.get(timeout=60) for _ in range(32)]
        assert [str(e) for _, e in results if e is not None] == []
        assert sorted(int(r.get_response().id) for r, _ in results) == list(range(32))
        assert [rest.get(timeout=60)[0] for _ in range(4)] == [200] * 4
        assert server.wait(60) == 0
        assert "Draining" in server.log() and "Stopped" in server.log()
    finally:
        server.stop()


def test_shutdown_delay_keeps_answering_new_calls_while_not_ready(slow_model):
    server = ServerProcess(f"--model=slow={slow_model}", "--shutdown-delay-seconds=3", "--grace-seconds=10",
                           "--intra-op-threads=1").start()
    try:
        client = tc.InferenceServerClient(server.url)
        server.terminate()
        wait_for(lambda: _readyz(server) == 503, 2, "readiness to turn off at once on SIGTERM", interval=0.02)
        assert not client.is_server_ready()
        assert client.infer("slow", _request()).as_numpy("y").shape == (1, WIDTH)  # a new call, still answered
        assert server.wait(30) == 0
        log = server.log()
        assert log.index("still answering new calls for 3s") < log.index("Draining")
    finally:
        server.stop()


def _readyz(server):
    try:
        return urllib.request.urlopen(f"{server.metrics_url}/readyz", timeout=2).status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def _live(client) -> bool:
    try:
        return client.is_server_live()
    except InferenceServerException:
        return False


def test_calls_while_the_models_load_answer_unavailable(tmp_path):
    model_bytes = Path(linear(tmp_path / "linear.onnx")).read_bytes()
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)  # the server's load blocks reading it until the test writes the model
    port = free_port()
    server = ServerProcess(f"--model=m={fifo}", grpc_port=port)
    server.launch()
    writer = threading.Thread(target=fifo.write_bytes, args=(model_bytes,), daemon=True)
    try:
        client = tc.InferenceServerClient(f"127.0.0.1:{port}")
        wait_for(lambda: _live(client), 30, "gRPC to come up before the model loads", interval=0.05)
        x = tc.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        for call in (lambda: client.infer("m", [x]), lambda: client.get_model_metadata("m")):
            with pytest.raises(InferenceServerException) as err:
                call()
            assert err.value.status() == "StatusCode.UNAVAILABLE"
            assert "loading models" in err.value.message()
        assert not client.is_server_ready() and not client.is_model_ready("m")
        writer.start()
        wait_for(client.is_server_ready, 30, "the model to load")
        assert client.infer("m", [x]).as_numpy("logits").shape == (1, 3)
        assert client.get_model_metadata("m").name == "m"
    finally:
        if writer.ident is None:  # failed early: an empty model ends the blocked load, so the server exits
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        server.stop()
        writer.join(5)


def test_full_queue_answers_resource_exhausted(slow_model):
    with ServerProcess(f"--model=slow={slow_model}", "--max-batch-size=1", "--max-queue-size=2",
                       "--intra-op-threads=1") as server:
        client = tc.InferenceServerClient(server.url)
        answers = _fire(client, 16)
        results = [answers.get(timeout=60) for _ in range(16)]
        errors = [e for _, e in results if e is not None]
        assert errors and len(errors) < 16
        assert {e.status() for e in errors} == {"StatusCode.RESOURCE_EXHAUSTED"}
        assert "queue is full (2 requests waiting)" in errors[0].message()
        assert client.infer("slow", _request()).as_numpy("y").shape == (1, WIDTH)


def test_expired_deadline_is_dropped_before_compute(slow_model):
    with ServerProcess(f"--model=slow={slow_model}", "--max-batch-size=8", "--intra-op-threads=1") as server:
        client = tc.InferenceServerClient(server.url)
        # One request per batch: a long queue of real work. 32 batches of 8 rows through
        # this model take far longer than the 50 ms deadline, even on a machine a few times
        # faster than these (8 queued were not always enough).
        busy = _fire(client, 48, rows=8)
        wait_for(lambda: (_metric(server, "kubeinfer_queue_waiting") or 0) >= 32, 30,
                 "the busy requests to queue up", interval=0.02)
        with pytest.raises(InferenceServerException) as err:
            client.infer("slow", _request(), client_timeout=0.05)
        assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        status, answer = _rest_infer(server, timeout_us=50_000)  # REST: the timeout parameter, in microseconds
        assert status == 504 and "deadline" in answer["error"], answer
        assert all(e is None for _, e in (busy.get(timeout=120) for _ in range(48)))
        stats = client.get_inference_statistics("slow", as_json=True)["model_stats"][0]
        assert int(stats["inference_count"]) == 48 * 8, "the expired requests must not be computed"
        assert int(stats["inference_stats"]["fail"]["count"]) >= 2


def _my_sockets() -> set[str]:
    """The socket inodes this process holds open (``socket:[N]``)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own fd, among others)
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def _client_ports(server_port: int) -> set[int]:
    """Local ports of this process's established TCP connections to ``server_port`` (/proc/net/tcp)."""
    mine, ports = _my_sockets(), set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, remote, state, inode = (line.split()[i] for i in (1, 2, 3, 9))
                if state == "01" and int(remote.rsplit(":", 1)[1], 16) == server_port \
                        and f"socket:[{inode}]" in mine:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def test_connection_age_recycles_without_failures(tmp_path):
    """With a max connection age the server closes a long-lived client's connection (GOAWAY) and
    the client reconnects, on a new port, without a failed call; without it, one connection."""
    model = linear(tmp_path / "linear.onnx")
    seen = {}
    for age in ("0.5", "0"):
        with ServerProcess(f"--model=linear={model}", f"--max-connection-age-seconds={age}",
                           "--grace-seconds=5") as server:
            client = tc.InferenceServerClient(server.url)
            x = tc.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(np.ones((1, 4), np.float32))
            deadline, calls, ports = time.monotonic() + 2.5, 0, set()
            while time.monotonic() < deadline:
                client.infer("linear", [x])  # raises on any failed call
                ports |= _client_ports(server.grpc_port)
                calls += 1
                time.sleep(0.05)
            client.close()
        assert calls > 10
        seen[age] = ports
    assert len(seen["0.5"]) >= 3, f"connections seen with a 0.5 s age over 2.5 s: {sorted(seen['0.5'])}"
    assert len(seen["0"]) == 1, f"connections seen with no age: {sorted(seen['0'])}"
