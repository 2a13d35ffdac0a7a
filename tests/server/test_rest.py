"""OIP v2 over REST on a real ``kubeinfer-server serve`` process, called by tritonclient.http and curl.

Covers:
- health, server and model metadata, model configuration, statistics and the
  repository index, as tritonclient.http reads them;
- inference with binary tensors (tritonclient's default, both ways), JSON
  tensors, and a mix, for every OIP datatype, equal to the input (an identity
  model) or to in-process ONNX Runtime; a JSON body with nested data;
- the request id: the client's echoed, or one the server makes up;
- REST and gRPC share the batcher and the metrics: concurrent REST calls run
  in shared batches, and ``kubeinfer_requests_total`` counts them;
- bad requests get the HTTP status of their gRPC code and a JSON error that
  says what to fix: bad JSON, unknown model, wrong shape, binary sizes that
  do not add up, classification, an unknown route;
- the curl examples of the README and docs/serving.md work as written (port aside).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from devkit.models import ONNX_TYPES, identity_all_types, linear, make_mlp, slow
from devkit.waiting import wait_for
from kubeinfer_server import tensors
from support.docblocks import run_sh, sh_blocks
from support.serverproc import ServerProcess

REPO = Path(__file__).resolve().parents[2]
DOCS, README = REPO / "docs" / "serving.md", REPO / "README.md"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"linear": linear(root / "linear.onnx"), "types": identity_all_types(root / "types.onnx"),
            "slow": slow(root / "slow.onnx", width=256, layers=24), "fraud": str(make_mlp(root / "mlp.onnx"))}


@pytest.fixture(scope="module")
def server(models):
    args = [f"--model={name}={path}" for name, path in models.items()]
    with ServerProcess(*args, "--max-queue-delay-us=20000") as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server.http_url, concurrency=8)
    yield c
    c.close()


def post(server, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def infer_json(server, model: str, body: dict) -> tuple[int, dict]:
    return post(server, f"/v2/models/{model}/infer", json.dumps(body).encode())


def sample(datatype: str, rows: int = 3) -> np.ndarray:
    values = np.arange(rows * 2).reshape(rows, 2)
    if datatype == "BYTES":
        return np.array([[f"s{v}-é".encode() for v in row] for row in values], dtype=np.object_)
    if datatype == "BOOL":
        return values % 2 == 0
    return (values * 3 + 1).astype(tensors.BY_NAME[datatype].dtype)


def test_health_and_metadata_as_tritonclient_reads_them(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("linear") and not client.is_model_ready("absent")
    server = client.get_server_metadata()
    assert server["name"] == "kubeinfer" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("linear")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "relu"] and meta["versions"] == ["1"]
    assert client.get_model_metadata("linear", model_version="1")["name"] == "linear"
    config = client.get_model_config("linear")
    assert config["max_batch_size"] == 32 and config["input"][0]["dims"] == [4]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    index = client.get_model_repository_index()
    assert {m["name"] for m in index} == {"linear", "types", "slow", "fraud"}
    with pytest.raises(InferenceServerException, match="model 'absent' is not served here"):
        client.get_model_metadata("absent")
    with pytest.raises(InferenceServerException, match="no version '7'"):
        client.get_model_metadata("linear", model_version="7")


def test_binary_inference_equals_onnx_runtime(client, models):
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    result = client.infer("linear", [tensor], request_id="rest-binary-1")
    logits, relu = ort.InferenceSession(models["linear"]).run(None, {"x": x})
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    np.testing.assert_array_equal(result.as_numpy("relu"), relu)
    response = result.get_response()
    assert response["id"] == "rest-binary-1" and response["model_version"] == "1"
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])


def test_json_inference_and_a_chosen_output(client, models):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    result = client.infer("linear", [tensor], outputs=[httpclient.InferRequestedOutput("relu", binary_data=False)])
    (relu,) = [o for o in result.get_response()["outputs"]]
    assert relu["name"] == "relu" and "data" in relu and relu["shape"] == [2, 3]
    expected = ort.InferenceSession(models["linear"]).run(["relu"], {"x": x})[0]
    np.testing.assert_allclose(result.as_numpy("relu"), expected, rtol=1e-6)


@pytest.mark.parametrize("binary_in,binary_out", [(True, True), (False, False), (True, False), (False, True)])
def test_every_datatype_round_trips(client, binary_in, binary_out):
    inputs, outputs = [], []
    for datatype in ONNX_TYPES:
        array = sample(datatype)
        tensor = httpclient.InferInput(f"in_{datatype}", list(array.shape), datatype)
        # tritonclient sends FP16 only as binary (JSON has no half floats)
        tensor.set_data_from_numpy(array, binary_data=binary_in or datatype == "FP16")
        inputs.append(tensor)
        outputs.append(httpclient.InferRequestedOutput(f"out_{datatype}", binary_data=binary_out))
    result = client.infer("types", inputs, outputs=outputs)
    for datatype in ONNX_TYPES:
        got, want = result.as_numpy(f"out_{datatype}"), sample(datatype)
        if datatype == "BYTES":
            got = np.array([[v if isinstance(v, bytes) else v.encode() for v in row] for row in got], dtype=object)
        np.testing.assert_array_equal(got, want, err_msg=datatype)


def test_nested_json_data_and_a_made_up_id(server):
    status, answer = infer_json(server, "linear", {"inputs": [
        {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[1, 2, 3, 4], [5, 6, 7, 8]]}]})
    assert status == 200, answer
    assert re.fullmatch(r"[0-9a-f]{12}-\d+", answer["id"]), answer["id"]
    logits = next(o for o in answer["outputs"] if o["name"] == "logits")
    assert logits["shape"] == [2, 3] and len(logits["data"]) == 6


def test_rest_calls_share_batches_and_metrics(server, client):
    x = np.ones((1, 256), dtype=np.float32)

    def calls(_) -> list[tuple[int, ...]]:
        # a client per thread: tritonclient.http's gevent hub belongs to the thread that made it
        own = httpclient.InferenceServerClient(server.http_url)
        tensor = httpclient.InferInput("x", [1, 256], "FP32")
        tensor.set_data_from_numpy(x)
        try:
            return [own.infer("slow", [tensor]).as_numpy("y").shape for _ in range(4)]
        finally:
            own.close()

    before = client.get_inference_statistics("slow")["model_stats"][0]
    with ThreadPoolExecutor(8) as pool:
        assert [shape for shapes in pool.map(calls, range(8)) for shape in shapes] == [(1, 256)] * 32
    after = client.get_inference_statistics("slow")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 32
    assert after["execution_count"] - before["execution_count"] < 32, "concurrent REST calls ran one by one"

    def counted():
        text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10).read().decode()
        match = re.search(r'^kubeinfer_requests_total\{client="anonymous",code="OK",model="slow"\} (\S+)$', text,
                          re.M)
        return match is not None and float(match[1]) >= 32

    wait_for(counted, timeout=10, what="the REST calls in kubeinfer_requests_total")


def with_binary(header: bytes, blob: bytes) -> tuple[bytes, dict]:
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


BINARY_X = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}'


@pytest.mark.parametrize("body,headers,status,message", [
    (b"{not json", {}, 400, "not valid JSON"),
    (b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}', {}, 400,
     "has shape [1, 3]; the model expects [-1, 4]"),
    (b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]}', {}, 400,
     "3 values in contents, but shape [1, 4] needs 4"),
    (*with_binary(BINARY_X, b"\0" * 12), 400, "runs past the 12 bytes"),
    (*with_binary(BINARY_X, b"\0" * 20), 400, "4 bytes of binary data follow"),
    (b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],'
     b' "outputs": [{"name": "logits", "parameters": {"classification": 2}}]}', {}, 400,
     "classification is not supported"),
    (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, 400, "the body has 14 bytes"),
])
def test_bad_requests_say_what_to_fix(server, body, headers, status, message):
    got, answer = post(server, "/v2/models/linear/infer", body, headers)
    assert got == status and message in answer["error"], answer


def test_unknown_model_route_and_version(server):
    assert post(server, "/v2/models/absent/infer", b"{}")[0] == 404
    assert post(server, "/v2/models/linear/versions/7/infer", b"{}")[0] == 404
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://{server.http_url}/v2/nowhere", timeout=10)
    assert caught.value.code == 404


CURL_BLOCKS = [*sh_blocks(README, "### REST with curl"), *sh_blocks(DOCS, "## REST (port 8000)")]


@pytest.mark.parametrize("block", CURL_BLOCKS, ids=[f"block{i}" for i in range(len(CURL_BLOCKS))])
def test_the_curl_examples_in_the_docs_work(server, block, tmp_path):
    """Each block runs as written against the test's server (its port aside), curl failing on an HTTP error."""
    assert "curl" in block
    script = ("curl() { command curl --fail-with-body --silent --show-error \"$@\"; echo; }\n"
              + block.replace("localhost:8000", server.http_url))
    done = run_sh(script, tmp_path, timeout=60)
    assert done.returncode == 0, (block, done.stdout, done.stderr)
    assert "error" not in done.stdout, done.stdout
