"""Execution providers: what the session really got is what the server reports.

Covers: asking for TensorRT and CUDA where they cannot run (an onnxruntime
build without them, or no GPU) falls back to the CPU provider, says so in the
log, and reports the provider it got in ModelMetadata and ModelConfig
parameters and in ``kubeinfer_model_info``; inference then works. With a GPU
and onnxruntime-gpu, the CUDA provider is the one in use (skipped, saying so,
where there is no GPU).
"""

import os
import re
import urllib.request

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc

from devkit.models import linear
from kubeinfer_server import protocol
from support.serverproc import ServerProcess

HAS_GPU = "CUDAExecutionProvider" in ort.get_available_providers() and os.path.exists("/dev/nvidia0")


def _metadata_providers(server: ServerProcess) -> str:
    """ModelMetadata's ``parameters`` are a kubeinfer addition to the proto (tritonclient's copy
    drops them), so they are read with the server's own message classes."""
    with grpc.insecure_channel(server.url) as channel:
        call = channel.unary_unary(
            f"/{protocol.SERVICE_NAME}/ModelMetadata",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=protocol.message("ModelMetadataResponse").FromString,
        )
        response = call(protocol.message("ModelMetadataRequest")(name="m"), timeout=10)
    return response.parameters["execution_providers"].string_param


def _reported(server: ServerProcess, client: tc.InferenceServerClient) -> tuple[str, str, str]:
    meta = _metadata_providers(server)
    config = client.get_model_config("m", as_json=True)["config"]["parameters"]["execution_providers"]
    text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=5).read().decode()
    info = re.search(r'^kubeinfer_model_info\{[^}]*providers="([^"]+)"[^}]*\} 1\.0$', text, re.M)
    assert info, text
    return meta, config["string_value"], info[1]


def _infer(client: tc.InferenceServerClient) -> np.ndarray:
    x = tc.InferInput("x", [2, 4], "FP32")
    x.set_data_from_numpy(np.ones((2, 4), np.float32))
    return client.infer("m", [x]).as_numpy("logits")


@pytest.mark.skipif(HAS_GPU, reason="a GPU is here: the fallback to CPU is not what happens")
def test_gpu_providers_fall_back_to_cpu_and_say_so(tmp_path):
    model = linear(tmp_path / "m.onnx")
    with ServerProcess(f"--model=m={model}", "--providers=tensorrt,cuda,cpu") as server, \
            tc.InferenceServerClient(server.url) as client:
        assert _reported(server, client) == ("CPUExecutionProvider",) * 3
        assert _infer(client).shape == (2, 3)
        assert "asked for TensorrtExecutionProvider but runs on CPUExecutionProvider: falling back" in server.log()


@pytest.mark.skipif(not HAS_GPU, reason="no GPU here (needs onnxruntime-gpu and an NVIDIA device): "
                                        "run on a GPU machine to check the CUDA provider")
def test_cuda_provider_is_used_when_a_gpu_is_there(tmp_path):
    model = linear(tmp_path / "m.onnx")
    with ServerProcess(f"--model=m={model}", "--providers=cuda,cpu") as server, \
            tc.InferenceServerClient(server.url) as client:
        meta, config, info = _reported(server, client)
        assert meta.split(",")[0] == config.split(",")[0] == info.split(",")[0] == "CUDAExecutionProvider"
        assert _infer(client).shape == (2, 3)
        assert "falling back" not in server.log()
