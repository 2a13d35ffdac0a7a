"""``tune``'s built-in load generator: closed-loop OIP v2 ModelInfer calls over gRPC, in a process of its own.

``python -m kubeinfer_server.tune_load TARGET MODEL --concurrency N --seconds S``
reads the model's inputs with ModelMetadata, builds one single-row request
(random values; -1 dimensions as 1) and serializes it once, then keeps N calls
in flight on one channel: each caller sends the next request as soon as its
answer comes (closed loop). After ``--warmup`` seconds it counts, for
``--seconds``, the calls that end inside the window, and prints one JSON line:
``requests``, ``errors``, ``first_error``, ``window_s``, ``throughput``
(inferences/s), ``p50_ms``, ``p99_ms``. Answers are not decoded: the client's
own cost per call stays small, so the server is what is measured. It runs in a
process of its own so tune can pin it to the CPUs the server does not have.
It speaks gRPC as any client does: none of the server's internals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import struct
import sys
import time
from typing import Any

import grpc
import numpy as np

from kubeinfer_server import protocol
from kubeinfer_server.tensors import BY_NAME

SERVICE = "/inference.GRPCInferenceService/"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CALL_TIMEOUT_S = 30.0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return 0.0
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def request_bytes(metadata: Any, model: str) -> bytes:
    """One serialized single-row ModelInferRequest for the inputs ``metadata`` lists."""
    request = protocol.message("ModelInferRequest")(model_name=model)
    rng = np.random.default_rng(0)
    for tensor in metadata.inputs:
        shape = [1 if d < 0 else d for d in tensor.shape]
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        request.raw_input_contents.append(_values(tensor.datatype, shape, rng))
    return request.SerializeToString()


def _values(datatype: str, shape: list[int], rng: np.random.Generator) -> bytes:
    count = math.prod(shape)
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", 1) + b"a" for _ in range(count))
    dtype = BY_NAME[datatype].dtype
    if dtype.kind == "f":
        return rng.random(count).astype(dtype).tobytes()
    return rng.integers(0, 2, count).astype(dtype).tobytes()


class Tally:
    """Latencies of the calls that ended inside the window, and the failures."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = ""

    def add(self, sent: float, done: float, error: str = "") -> None:
        if not self.start <= done <= self.end:
            return
        if error:
            self.errors += 1
            self.first_error = self.first_error or error
        else:
            self.latencies.append((done - sent) * 1000)

    def result(self) -> dict[str, Any]:
        window = self.end - self.start
        latencies = sorted(self.latencies)
        return {"requests": len(latencies), "errors": self.errors, "first_error": self.first_error,
                "window_s": round(window, 3), "throughput": len(latencies) / window,
                "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}


async def drive(target: str, model: str, concurrency: int, seconds: float, warmup: float) -> dict[str, Any]:
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        metadata_call = channel.unary_unary(
            SERVICE + "ModelMetadata", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=protocol.message("ModelMetadataResponse").FromString)
        metadata = await metadata_call(protocol.message("ModelMetadataRequest")(name=model), timeout=CALL_TIMEOUT_S)
        payload = request_bytes(metadata, model)
        infer = channel.unary_unary(SERVICE + "ModelInfer")  # bytes in, bytes out: nothing decoded
        await infer(payload, timeout=CALL_TIMEOUT_S)
        begin = time.perf_counter() + warmup
        tally = Tally(begin, begin + seconds)
        await asyncio.gather(*(_caller(infer, payload, tally) for _ in range(concurrency)))
    return tally.result()


async def _caller(infer, payload: bytes, tally: Tally) -> None:
    while (sent := time.perf_counter()) < tally.end:
        try:
            await infer(payload, timeout=CALL_TIMEOUT_S)
            tally.add(sent, time.perf_counter())
        except grpc.aio.AioRpcError as exc:
            tally.add(sent, time.perf_counter(), f"{exc.code().name}: {exc.details()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubeinfer_server.tune_load", description=__doc__)
    parser.add_argument("target", help="HOST:PORT of the server's gRPC port")
    parser.add_argument("model")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True, help="the measured window")
    parser.add_argument("--warmup", type=float, default=0.5, help="load before the window, not counted")
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(drive(args.target, args.model, args.concurrency, args.seconds, args.warmup))
    except grpc.aio.AioRpcError as exc:
        sys.stderr.write(f"{exc.code().name}: {exc.details()}\n")
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
