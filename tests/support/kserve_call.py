"""Calls a server with KServe's own clients, in a process of its own.

KServe's client registers its generated ``inference`` protos in protobuf's
default pool, as tritonclient does; the two cannot be imported into one
process, so the tests run this script. Usage: ``kserve_call.py URL MODEL
[grpc|rest|rest-json]`` with a JSON request on stdin
``{"inputs": {"x": [[...]]}, "datatype": "FP32"}``; prints ``{"ready": bool,
"model_ready": bool, "id": str, "outputs": {name: list}}``. ``grpc`` (the
default) uses ``InferenceGRPCClient`` on a gRPC address; ``rest`` uses
``InferenceRESTClient`` (protocol v2) on ``http://URL`` with binary tensors,
``rest-json`` with JSON tensors.
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def request_of(model: str, request: dict, binary: bool) -> InferRequest:
    inputs = []
    for name, values in request["inputs"].items():
        array = np.asarray(values, dtype=np.float32)
        tensor = InferInput(name, list(array.shape), request["datatype"])
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return InferRequest(model, inputs, request_id="kserve-1")


def answer(ready: bool, model_ready: bool, response) -> dict:
    return {"ready": ready, "model_ready": model_ready, "id": response.id,
            "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs}}


async def call_grpc(url: str, model: str, request: dict) -> dict:
    async with InferenceGRPCClient(url, timeout=30) as client:
        response = await client.infer(request_of(model, request, binary=True))
        return answer(await client.is_server_ready(), await client.is_model_ready(model), response)


async def call_rest(url: str, model: str, request: dict, binary: bool) -> dict:
    base = f"http://{url}"
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=30)) as client:
        response = await client.infer(base, request_of(model, request, binary), model_name=model)
        return answer(await client.is_server_ready(base), await client.is_model_ready(base, model), response)


async def main(url: str, model: str, mode: str, request: dict) -> dict:
    if mode == "grpc":
        return await call_grpc(url, model, request)
    return await call_rest(url, model, request, binary=mode == "rest")


if __name__ == "__main__":
    mode = sys.argv[3] if len(sys.argv) > 3 else "grpc"
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], mode, json.load(sys.stdin)))))
