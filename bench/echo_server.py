"""The RPC ceiling: an OIP v2 gRPC server that answers without running a model.

It serves the signature of one or more ONNX files (inputs and outputs read
from the graph) and answers ``ModelInfer`` / ``ModelStreamInfer`` with output
tensors of the right shape and size whose bytes are copied from the request
(padded with zeros when the input is smaller). Whatever throughput it reaches
on a machine is the most any Python ``grpc.aio`` OIP server can reach there,
so the benchmark divides the real server's numbers by it.

It implements exactly what perf_analyzer calls (ModelMetadata, ModelConfig,
ServerMetadata, ModelInfer, ModelStreamInfer; see
/work/shared/reference/servers.md section 1.8) plus ServerLive, ServerReady and
ModelReady. Messages come from tritonclient's generated modules, so it must
run in its own process (never import it next to the server's own protos).

``--workers N`` runs N processes on one port with SO_REUSEPORT, matching the
real server's ``--workers``; the kernel spreads TCP connections among them.
When every worker listens, the parent prints ``READY <port>`` on stdout.

It runs on the event loop the server would (``--event-loop``, as
kubeinfer-server's): uvloop makes both faster, so the two must match.

Usage: python bench/echo_server.py --model mlp=/tmp/models/mlp.onnx --port 18001 [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import signal
import sys
from dataclasses import dataclass

from devkit.ports import free_port
from kubeinfer_server import eventloop  # the server's loop choice; imports no protocol module

LOG = logging.getLogger("echo_server")

# ONNX TensorProto element type -> (OIP datatype, Triton config type, item size).
_ONNX_TYPES = {
    1: ("FP32", "TYPE_FP32", 4), 2: ("UINT8", "TYPE_UINT8", 1), 3: ("INT8", "TYPE_INT8", 1),
    4: ("UINT16", "TYPE_UINT16", 2), 5: ("INT16", "TYPE_INT16", 2), 6: ("INT32", "TYPE_INT32", 4),
    7: ("INT64", "TYPE_INT64", 8), 9: ("BOOL", "TYPE_BOOL", 1), 10: ("FP16", "TYPE_FP16", 2),
    11: ("FP64", "TYPE_FP64", 8), 12: ("UINT32", "TYPE_UINT32", 4), 13: ("UINT64", "TYPE_UINT64", 8),
}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    config_type: str
    itemsize: int
    dims: tuple[int, ...]  # without the batch dimension; -1 for a dynamic one


@dataclass(frozen=True)
class Signature:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


def read_signature(name: str, path: str) -> Signature:
    """Reads inputs and outputs of an ONNX graph; the first dimension is the batch."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}

    def tensor(value_info) -> Tensor:
        ttype = value_info.type.tensor_type
        datatype, config_type, itemsize = _ONNX_TYPES[ttype.elem_type]
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim)
        return Tensor(value_info.name, datatype, config_type, itemsize, dims[1:])

    inputs = tuple(tensor(v) for v in graph.input if v.name not in initializers)
    return Signature(name, inputs, tuple(tensor(v) for v in graph.output))


def _make_servicer(signatures: dict[str, Signature], max_batch_size: int):
    # Imported here so that the parent process never touches gRPC before forking.
    import grpc
    from tritonclient.grpc import model_config_pb2 as mc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    def metadata(sig: Signature) -> pb.ModelMetadataResponse:
        def meta(t: Tensor):
            return pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=[-1, *t.dims])
        return pb.ModelMetadataResponse(
            name=sig.name, versions=["1"], platform="onnxruntime_onnx",
            inputs=[meta(t) for t in sig.inputs], outputs=[meta(t) for t in sig.outputs],
        )

    def config(sig: Signature) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=mc.ModelConfig(
            name=sig.name, platform="onnxruntime_onnx", max_batch_size=max_batch_size,
            input=[mc.ModelInput(name=t.name, data_type=mc.DataType.Value(t.config_type), dims=t.dims)
                   for t in sig.inputs],
            output=[mc.ModelOutput(name=t.name, data_type=mc.DataType.Value(t.config_type), dims=t.dims)
                    for t in sig.outputs],
        ))

    metadatas = {name: metadata(sig) for name, sig in signatures.items()}
    configs = {name: config(sig) for name, sig in signatures.items()}

    def echo(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        sig = signatures[request.model_name]
        batch = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
        source = request.raw_input_contents[0] if request.raw_input_contents else b""
        response = pb.ModelInferResponse(model_name=sig.name, model_version="1", id=request.id)
        for out in sig.outputs:
            shape = [batch, *(max(d, 1) for d in out.dims)]
            size = out.itemsize
            for d in shape:
                size *= d
            raw = source[:size]
            if len(raw) < size:
                raw += bytes(size - len(raw))
            response.outputs.add(name=out.name, datatype=out.datatype, shape=shape)
            response.raw_output_contents.append(raw)
        return response

    class EchoServicer(pb_grpc.GRPCInferenceServiceServicer):
        async def ServerLive(self, request, context):
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request, context):
            return pb.ServerReadyResponse(ready=True)

        async def ModelReady(self, request, context):
            return pb.ModelReadyResponse(ready=request.name in signatures)

        async def ServerMetadata(self, request, context):
            return pb.ServerMetadataResponse(name="kubeinfer-echo", version="0", extensions=[])

        async def ModelMetadata(self, request, context):
            if request.name not in metadatas:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}")
            return metadatas[request.name]

        async def ModelConfig(self, request, context):
            if request.name not in configs:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}")
            return configs[request.name]

        async def ModelInfer(self, request, context):
            if request.model_name not in signatures:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name!r}")
            return echo(request)

        async def ModelStreamInfer(self, request_iterator, context):
            async for request in request_iterator:
                if request.model_name not in signatures:
                    yield pb.ModelStreamInferResponse(error_message=f"unknown model {request.model_name!r}")
                else:
                    yield pb.ModelStreamInferResponse(infer_response=echo(request))

    return grpc, pb_grpc, EchoServicer()


async def _serve(signatures, host: str, port: int, max_batch_size: int, reuse_port: bool, ready) -> None:
    grpc, pb_grpc, servicer = _make_servicer(signatures, max_batch_size)
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", 256 << 20),
        ("grpc.max_send_message_length", 256 << 20),
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    ready(bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def _worker(signatures, host, port, max_batch_size, reuse_port, queue, event_loop) -> None:
    eventloop.runner(event_loop)[1](_serve(signatures, host, port, max_batch_size, reuse_port, queue.put))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OIP v2 echo server: the RPC ceiling for benchmarks.")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                        help="model name and ONNX file whose signature is served (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="gRPC port (0: pick a free one)")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--event-loop", default="auto", choices=eventloop.CHOICES,
                        help="as kubeinfer-server's --event-loop: compare the two on the same loop")
    parser.add_argument("--max-batch-size", type=int, default=32,
                        help="max_batch_size advertised in ModelConfig (perf_analyzer checks -b against it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    signatures = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        signatures[name] = read_signature(name, path)
    port = args.port or free_port(args.host)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(signatures, args.host, port, args.max_batch_size, args.workers > 1, queue,
                          args.event_loop),
                    daemon=True)
        for _ in range(args.workers)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        if queue.get(timeout=60) != port:
            LOG.error("A worker could not bind %s:%d", args.host, port)
            return 1
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    LOG.info("Started %d echo worker(s) on %s:%d for %s", args.workers, args.host, port, ", ".join(signatures))

    def forward(signum, _frame):
        for worker in workers:
            if worker.is_alive():
                worker.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
