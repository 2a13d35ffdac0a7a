"""The OIP v2 protocol against a real ``kubeinfer-server`` process, called by tritonclient.

Covers: liveness/readiness, server and model metadata, ModelConfig (what
perf_analyzer reads), repository index; inference with raw and typed
contents, every datatype through an identity model, requested-output subsets,
request id echo, unknown request parameters ignored; predictions equal
in-process ONNX Runtime; a request with more rows than the max batch size runs
in pieces; raw and typed contents together are refused; concurrent requests batch together and never cross
outputs; true ModelStatistics counts; ModelStreamInfer (the requests of one
stream batch together and come back in order); bad input (wrong
dtype, wrong shape, missing/unknown input, byte length, unknown model or
version, unknown output, message over --max-message-bytes) gets the right code
and a readable message, and the server keeps serving; a non-batchable model;
gRPC health (overall and per model), HTTP /healthz and /readyz, reflection;
the metric names of the contract.
"""

import concurrent.futures
import queue
import re
import time
import urllib.request

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from devkit.models import ONNX_TYPES, fixed_shape, identity_all_types, linear, slow
from kubeinfer_server import tensors
from kubeinfer_server.fetch import file_sha256
from support.serverproc import ServerProcess


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"linear": linear(root / "linear.onnx"), "types": identity_all_types(root / "types.onnx"),
            "fixed": fixed_shape(root / "fixed.onnx"), "slow": slow(root / "slow.onnx", width=256, layers=48)}


@pytest.fixture(scope="module")
def server(models):
    args = [f"--model=linear={models['linear']}", f"--model=types={models['types']}",
            f"--model=fixed={models['fixed']}", "--max-queue-delay-us=20000", "--max-message-bytes=65536"]
    with ServerProcess(*args) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server):
    c = tc.InferenceServerClient(server.url)
    yield c
    c.close()


def _input(name, array, datatype):
    tensor = tc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _expect_error(code, match, fn, *args, **kwargs):
    with pytest.raises(InferenceServerException) as err:
        fn(*args, **kwargs)
    assert err.value.status() == f"StatusCode.{code}", err.value
    assert match in err.value.message(), err.value.message()


def test_startup_heap_is_frozen_once_models_are_loaded(server, client):
    assert client.is_server_ready()
    match = re.search(r"Froze (\d+) startup objects", server.log())
    assert match and int(match.group(1)) > 1000, server.log()[-2000:]


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("linear") and not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta.name == "kubeinfer" and "statistics" in meta.extensions and "model_configuration" in meta.extensions
    model = client.get_model_metadata("linear", as_json=True)
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [o["name"] for o in model["outputs"]] == ["logits", "relu"]
    index = client.get_model_repository_index(as_json=True)
    assert sorted(m["name"] for m in index["models"]) == ["fixed", "linear", "types"]


def test_model_config_is_what_perf_analyzer_reads(client):
    config = client.get_model_config("linear", as_json=True)["config"]
    assert config["max_batch_size"] == 32
    assert config["input"][0]["dims"] == ["4"] and config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "20000"
    assert config["parameters"]["execution_providers"]["string_value"] == "CPUExecutionProvider"
    fixed = client.get_model_config("fixed", as_json=True)["config"]
    assert fixed.get("max_batch_size", 0) == 0 and fixed["input"][0]["dims"] == ["2", "3"]


def test_predictions_equal_in_process_onnxruntime(client, models):
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    want = ort.InferenceSession(models["linear"]).run(None, {"x": x})
    result = client.infer("linear", [_input("x", x, "FP32")], request_id="req-42",
                          parameters={"some_unknown_knob": 7, "another": "x"})
    assert result.get_response().id == "req-42"
    np.testing.assert_array_equal(result.as_numpy("logits"), want[0])
    np.testing.assert_array_equal(result.as_numpy("relu"), want[1])


def test_requested_output_subset_is_honoured(client):
    x = np.ones((1, 4), dtype=np.float32)
    result = client.infer("linear", [_input("x", x, "FP32")], outputs=[tc.InferRequestedOutput("relu")])
    assert [o.name for o in result.get_response().outputs] == ["relu"]
    assert result.as_numpy("logits") is None


def test_typed_contents_are_accepted(client, models):
    request = service_pb2.ModelInferRequest(model_name="linear")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend([float(v) for v in range(8)])
    response = client._client_stub.ModelInfer(request)
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, 3)
    want = ort.InferenceSession(models["linear"]).run(None, {"x": np.arange(8, dtype=np.float32).reshape(2, 4)})
    np.testing.assert_array_equal(got, want[0])


@pytest.mark.parametrize("datatype", list(ONNX_TYPES))
def test_every_datatype_round_trips(client, datatype):
    if datatype == "BYTES":
        array = np.array([[b"a", b"bc"], [b"", "\u00e9".encode()]], dtype=np.object_)
    else:
        values = np.arange(4) % 2 if datatype == "BOOL" else np.arange(4) + 1
        array = values.astype(tensors.BY_NAME[datatype].dtype).reshape(2, 2)
    result = client.infer("types", [_input(f"in_{t}", array if t == datatype else _filler(t), t) for t in ONNX_TYPES],
                          outputs=[tc.InferRequestedOutput(f"out_{datatype}")])
    out = result.as_numpy(f"out_{datatype}")
    assert out.dtype == array.dtype and out.shape == array.shape
    assert out.tolist() == array.tolist()


def _filler(datatype):
    if datatype == "BYTES":
        return np.array([[b"x", b"y"], [b"z", b"w"]], dtype=np.object_)
    return np.zeros((2, 2), dtype=tensors.BY_NAME[datatype].dtype)


def test_concurrent_requests_batch_without_crossing_outputs(models):
    # A model that takes a millisecond or more a row: while one batch runs, the other
    # callers' requests queue up behind it and leave together. (With a sub-millisecond
    # model, whether requests meet in the queue depends on how the machine schedules
    # the client threads, so the assertion on shared executions would rest on luck.)
    session = ort.InferenceSession(models["slow"])
    xs = [np.full((1 + i % 3, 256), i / 48, dtype=np.float32) for i in range(48)]
    with ServerProcess(f"--model=slow={models['slow']}", "--max-queue-delay-us=20000") as server:

        def call(x):
            c = tc.InferenceServerClient(server.url)
            try:
                return c.infer("slow", [_input("x", x, "FP32")]).as_numpy("y")
            finally:
                c.close()

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(call, xs))
        stats = tc.InferenceServerClient(server.url).get_inference_statistics("slow", as_json=True)
    for x, got in zip(xs, results, strict=True):
        # A batched run may take another GEMM kernel than a lone one: equal to rounding, and
        # far from any other request's answer (their inputs differ by 1/48 per element).
        np.testing.assert_allclose(got, session.run(["y"], {"x": x})[0], rtol=1e-4, atol=1e-5)
    after = stats["model_stats"][0]
    assert int(after["inference_count"]) == sum(x.shape[0] for x in xs)
    assert int(after["execution_count"]) < len(xs), "concurrent requests should share executions"
    assert int(after["inference_stats"]["success"]["count"]) == len(xs)


def test_stream_infer_answers_each_request(client, models):
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(5):
            x = np.full((1, 4), i, dtype=np.float32)
            client.async_stream_infer("linear", [_input("x", x, "FP32")], request_id=str(i))
        client.async_stream_infer("nope", [_input("x", np.ones((1, 4), np.float32), "FP32")], request_id="bad")
        answers = [results.get(timeout=10) for _ in range(6)]
    finally:
        client.stop_stream()
    ok = {r.get_response().id: r.as_numpy("logits") for r, e in answers if e is None}
    errors = [e for r, e in answers if e is not None]
    assert sorted(ok) == ["0", "1", "2", "3", "4"]
    session = ort.InferenceSession(models["linear"])
    np.testing.assert_array_equal(ok["3"], session.run(["logits"], {"x": np.full((1, 4), 3, np.float32)})[0])
    assert len(errors) == 1 and "model 'nope' is not served here" in str(errors[0])


def test_one_stream_runs_its_requests_together_and_answers_in_order(models):
    # Sent back to back on one stream, the requests must not wait for each other one by one:
    # they share executions (as requests from separate clients do) and come back in order.
    session = ort.InferenceSession(models["slow"])
    xs = [np.full((1, 256), i / 24, dtype=np.float32) for i in range(24)]
    results: queue.Queue = queue.Queue()
    with ServerProcess(f"--model=slow={models['slow']}", "--max-queue-delay-us=20000") as server:
        client = tc.InferenceServerClient(server.url)
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        try:
            for i, x in enumerate(xs):
                client.async_stream_infer("slow", [_input("x", x, "FP32")], request_id=str(i))
            answers = [results.get(timeout=30) for _ in xs]
        finally:
            client.stop_stream()
        stats = client.get_inference_statistics("slow", as_json=True)["model_stats"][0]
        client.close()
    assert [e for _, e in answers if e is not None] == []
    assert [r.get_response().id for r, _ in answers] == [str(i) for i in range(len(xs))]
    for x, (result, _) in zip(xs, answers, strict=True):
        np.testing.assert_allclose(result.as_numpy("y"), session.run(["y"], {"x": x})[0], rtol=1e-4, atol=1e-5)
    assert int(stats["inference_stats"]["success"]["count"]) == len(xs)
    assert int(stats["execution_count"]) < len(xs), "requests of one stream should share executions"


def test_a_stream_cancelled_with_requests_in_flight_leaves_the_server_serving(models):
    with ServerProcess(f"--model=slow={models['slow']}") as server:
        client = tc.InferenceServerClient(server.url)
        client.start_stream(callback=lambda result, error: None)
        for i in range(16):
            client.async_stream_infer("slow", [_input("x", np.ones((3, 256), np.float32), "FP32")], request_id=str(i))
        client.stop_stream(cancel_requests=True)
        x = np.ones((1, 256), np.float32)
        got = client.infer("slow", [_input("x", x, "FP32")]).as_numpy("y")
        client.close()
        assert got.shape == (1, 256)

        def depth():
            text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10).read().decode()
            return [line for line in text.splitlines() if line.startswith('kubeinfer_queue_depth{model="slow"}')]

        # Nothing of the cancelled stream stays accepted and unanswered (the cancel travels
        # asynchronously, so give it a moment).
        deadline = time.monotonic() + 10
        while depth() != ['kubeinfer_queue_depth{model="slow"} 0.0'] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert depth() == ['kubeinfer_queue_depth{model="slow"} 0.0']


def test_bad_input_gets_clear_errors_and_server_keeps_serving(client):
    x = np.ones((1, 4), dtype=np.float32)
    _expect_error("INVALID_ARGUMENT", "input 'x' is FP64 but the model expects FP32",
                  client.infer, "linear", [_input("x", x.astype(np.float64), "FP64")])
    _expect_error("INVALID_ARGUMENT", "input 'x' has shape [1, 5]; the model expects [-1, 4]",
                  client.infer, "linear", [_input("x", np.ones((1, 5), np.float32), "FP32")])
    _expect_error("INVALID_ARGUMENT", "unknown input 'y'",
                  client.infer, "linear", [_input("y", x, "FP32")])
    _expect_error("INVALID_ARGUMENT", "unknown output 'nope'",
                  client.infer, "linear", [_input("x", x, "FP32")], outputs=[tc.InferRequestedOutput("nope")])
    _expect_error("NOT_FOUND", "model 'nope' is not served here; served models: fixed, linear, types",
                  client.infer, "nope", [_input("x", x, "FP32")])
    _expect_error("NOT_FOUND", "model 'linear' has no version '7'",
                  client.infer, "linear", [_input("x", x, "FP32")], model_version="7")
    assert client.infer("linear", [_input("x", x, "FP32")]).as_numpy("logits").shape == (1, 3)


def test_more_rows_than_the_max_batch_size_run_in_pieces(client, models):
    # 32 rows a batch (the default): 75 rows are three pieces, 32 + 32 + 11, joined in order.
    x = np.random.default_rng(5).standard_normal((75, 4)).astype(np.float32)
    before = client.get_inference_statistics("linear", as_json=True)["model_stats"][0]
    result = client.infer("linear", [_input("x", x, "FP32")])
    want = ort.InferenceSession(models["linear"]).run(None, {"x": x})
    np.testing.assert_array_equal(result.as_numpy("logits"), want[0])
    np.testing.assert_array_equal(result.as_numpy("relu"), want[1])
    after = client.get_inference_statistics("linear", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 75
    assert int(after["execution_count"]) - int(before.get("execution_count", 0)) >= 3  # no batch over 32 rows


def test_raw_and_typed_contents_together_are_invalid(client):
    request = service_pb2.ModelInferRequest(model_name="linear")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as err:
        client._client_stub.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x' has typed contents and the request has raw_input_contents" in err.value.details()


def test_missing_input_and_byte_length_mismatch(client):
    request = service_pb2.ModelInferRequest(model_name="linear")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(b"\0" * 12)
    with pytest.raises(grpc.RpcError) as err:
        client._client_stub.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "12 bytes of raw content, but shape [1, 4] of FP32 needs 16" in err.value.details()
    empty = service_pb2.ModelInferRequest(model_name="linear")
    with pytest.raises(grpc.RpcError) as err:
        client._client_stub.ModelInfer(empty)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing input 'x'; the model expects x (FP32 [-1, 4])" in err.value.details()


def test_message_over_the_limit_is_refused(client):
    big = np.ones((16, 4096), dtype=np.float32)  # 256 KiB > --max-message-bytes=65536
    request = service_pb2.ModelInferRequest(model_name="linear")
    request.inputs.add(name="x", datatype="FP32", shape=list(big.shape))
    request.raw_input_contents.append(big.tobytes())
    with pytest.raises(grpc.RpcError) as err:
        client._client_stub.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in err.value.details()
    assert client.is_server_ready()


def test_non_batchable_model_runs_requests_alone(client):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(client.infer("fixed", [_input("x", x, "FP32")]).as_numpy("y"), x + 1)


def test_grpc_health_http_probes_and_reflection(server):
    with grpc.insecure_channel(server.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "linear", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in answer.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService")
        answer = next(stub.ServerReflectionInfo(iter([request])))
        assert answer.file_descriptor_response.file_descriptor_proto
    assert urllib.request.urlopen(f"{server.metrics_url}/healthz", timeout=5).status == 200
    assert urllib.request.urlopen(f"{server.metrics_url}/readyz", timeout=5).status == 200


def test_metric_names_are_the_autoscaling_contract(client, server, models):
    client.infer("linear", [_input("x", np.ones((1, 4), np.float32), "FP32")])
    text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=5).read().decode()
    for line in ('kubeinfer_queue_depth{model="linear"}', 'kubeinfer_queue_waiting{model="linear"}',
                 'kubeinfer_requests_total{client="anonymous",code="OK",model="linear"}',
                 'kubeinfer_request_duration_seconds_count{model="linear"}',
                 'kubeinfer_queue_duration_seconds_count{model="linear"}',
                 'kubeinfer_compute_duration_seconds_count{model="linear"}',
                 'kubeinfer_batch_size_count{model="linear"}',
                 'kubeinfer_model_info{instances="1",model="linear",optimization_method="none",'
                 f'providers="CPUExecutionProvider",revision="1",sha256="{file_sha256(models["linear"])}"}} 1.0'):
        assert line in text, line
    assert 'code="INVALID_ARGUMENT"' in text
