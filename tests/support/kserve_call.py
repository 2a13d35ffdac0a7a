"""Calls a server with KServe's own gRPC client, in a process of its own.

KServe's client registers its generated ``inference`` protos in protobuf's
default pool, as tritonclient does; the two cannot be imported into one
process, so the tests run this script. Usage: ``kserve_call.py URL MODEL``
with a JSON request on stdin ``{"inputs": {"x": [[...]]}, "datatype": "FP32"}``;
prints ``{"ready": bool, "model_ready": bool, "id": str, "outputs": {name: list}}``.
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


async def main(url: str, model: str, request: dict) -> dict:
    async with InferenceGRPCClient(url, timeout=30) as client:
        inputs = []
        for name, values in request["inputs"].items():
            array = np.asarray(values, dtype=np.float32)
            tensor = InferInput(name, list(array.shape), request["datatype"])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        response = await client.infer(InferRequest(model, inputs, request_id="kserve-1"))
        return {
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready(model),
            "id": response.id,
            "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs},
        }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], json.load(sys.stdin)))))
