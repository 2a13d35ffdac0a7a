"""``inference.GRPCInferenceService`` over grpc.aio: a thin adapter.

Converts protobuf messages to the core's domain values and back and hands
each call to ``frontend.Frontend``; its code names map to gRPC status codes
by name (``STATUS_BY_CODE``). Metadata answers are ``metadata``'s dicts parsed
into messages. Outputs always travel in ``raw_output_contents`` (what
perf_analyzer and tritonclient expect).
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from google.protobuf import json_format

from kubeinfer_server import errors, metadata, protocol, tensors
from kubeinfer_server.accesslog import Call
from kubeinfer_server.core import InferRequest, ServedModel
from kubeinfer_server.frontend import Frontend
from kubeinfer_server.validation import InputTensor

log = logging.getLogger(__name__)

STATUS_BY_CODE = {code.name: code for code in grpc.StatusCode}
STREAM_WINDOW = 64  # requests of one ModelStreamInfer call in flight at once
TYPED_FIELDS = {t.name: t.contents_field for t in tensors.BY_NAME.values()}


def decode_request(msg) -> InferRequest:
    raw = msg.raw_input_contents
    tensors_in = msg.inputs
    if raw:
        if len(raw) != len(tensors_in):
            raise errors.InvalidInput(
                f"{len(raw)} raw_input_contents for {len(tensors_in)} inputs; send one per input, in order"
            )
        both = next((t.name for t in tensors_in if t.HasField("contents") and t.contents.ByteSize()), None)
        if both is not None:
            raise errors.InvalidInput(f"input '{both}' has typed contents and the request has raw_input_contents; "
                                      "the protocol allows one of the two: send all inputs one way")
        inputs = [InputTensor(t.name, t.datatype, tuple(t.shape), data, None)
                  for t, data in zip(tensors_in, raw, strict=True)]
    else:
        inputs = []
        for tensor in tensors_in:
            if tensor.datatype not in TYPED_FIELDS:
                raise errors.InvalidInput(f"input '{tensor.name}': unknown datatype '{tensor.datatype}'")
            field = TYPED_FIELDS[tensor.datatype]
            if field is None:
                raise errors.InvalidInput(f"input '{tensor.name}': {tensor.datatype} must be sent as "
                                          "raw_input_contents")
            inputs.append(InputTensor(tensor.name, tensor.datatype, tuple(tensor.shape), None,
                                      getattr(tensor.contents, field)))
    requested = msg.outputs
    for output in requested:
        if "classification" in output.parameters:
            raise errors.InvalidInput(f"output '{output.name}': classification is not supported; "
                                      "ask for the tensor and take its top classes")
    return InferRequest(msg.model_name, msg.model_version, inputs,
                        tuple(o.name for o in requested) if requested else ())


def encode_response(request_id: str, served: ServedModel, result) -> object:
    response = protocol.ModelInferResponse(model_name=served.name, model_version=served.version, id=request_id)
    outputs, contents = response.outputs, response.raw_output_contents
    for spec, array in result.outputs:
        outputs.add(name=spec.name, datatype=spec.datatype.name, shape=array.shape)
        contents.append(tensors.encode(array, spec.datatype))
    return response


class InferenceServicer:
    def __init__(self, frontend: Frontend, whole_server_statistics: bool = True) -> None:
        # A worker's ModelStatistics cover its own requests only: it does not advertise
        # the "statistics" extension, so perf_analyzer does not mistake them for the server's.
        self.extensions = tuple(e for e in metadata.EXTENSIONS if whole_server_statistics or e != "statistics")
        self.frontend = frontend
        self.repository = frontend.repository

    def _call(self, context, method: str, model: str = "", version: str = "", request_id: str = "") -> Call:
        return Call("grpc", method, context.peer(), self.frontend.identity.of_grpc(context),
                    request_id or self.frontend.request_ids.next(), model, version)

    # --- health (not logged: probes call it every few seconds) ----------------
    async def ServerLive(self, request, context):
        return protocol.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return protocol.ServerReadyResponse(ready=self.repository.reports_ready)

    async def ModelReady(self, request, context):
        try:
            self.repository.get(request.name, request.version)
        except (errors.ModelNotFound, errors.NotReady):
            return protocol.ModelReadyResponse(ready=False)
        return protocol.ModelReadyResponse(ready=self.repository.reports_ready)

    # --- metadata (logged, and refused to clients not on the allow-list) ----------
    async def ServerMetadata(self, request, context):
        return await self._describe(context, "ServerMetadata", protocol.ServerMetadataResponse,
                                    lambda call: metadata.server_metadata(self.extensions))

    async def ModelMetadata(self, request, context):
        def look(call: Call) -> dict:
            described = metadata.model_metadata(self.frontend.model(call))
            return {**described, "parameters": {k: {"string_param": v} for k, v in described["parameters"].items()}}

        return await self._describe(context, "ModelMetadata", protocol.ModelMetadataResponse, look,
                                    request.name, request.version)

    async def ModelConfig(self, request, context):
        return await self._describe(context, "ModelConfig", protocol.ModelConfigResponse,
                                    lambda call: {"config": metadata.model_config(self.frontend.model(call))},
                                    request.name, request.version)

    async def ModelStatistics(self, request, context):
        def look(call: Call) -> dict:
            models = [self.frontend.model(call)] if call.model else list(self.repository.models.values())
            return metadata.model_statistics(models)

        return await self._describe(context, "ModelStatistics", protocol.ModelStatisticsResponse, look,
                                    request.name, request.version)

    async def RepositoryIndex(self, request, context):
        return await self._describe(context, "RepositoryIndex", protocol.RepositoryIndexResponse,
                                    lambda call: {"models": metadata.repository_index(self.repository)})

    async def _describe(self, context, method: str, response_cls, look, model: str = "", version: str = ""):
        call = self._call(context, method, model, version)
        answer, code, message = self.frontend.describe(call, lambda: look(call))
        if answer is None:
            await context.abort(STATUS_BY_CODE[code], message)
        return json_format.ParseDict(answer, response_cls())

    # --- inference --------------------------------------------------------------
    async def ModelInfer(self, request, context):
        response, code, message, _ = await self._infer(request, context)
        if code is not grpc.StatusCode.OK:
            await context.abort(code, message)
        return response

    async def ModelStreamInfer(self, request_iterator, context):
        """The requests of one stream run concurrently, up to ``STREAM_WINDOW`` at a time, so
        that they batch together as requests from many clients do; the responses go back in
        the order of the requests."""
        window = asyncio.Semaphore(STREAM_WINDOW)
        in_flight: asyncio.Queue = asyncio.Queue()  # (request, task), then None when the stream ends
        reader = asyncio.ensure_future(self._read_stream(request_iterator, context, window, in_flight))
        try:
            while (item := await in_flight.get()) is not None:
                request, task = item
                response, code, message, request_id = await task
                window.release()
                if code is grpc.StatusCode.OK:
                    yield protocol.ModelStreamInferResponse(infer_response=response)
                else:
                    yield protocol.ModelStreamInferResponse(
                        error_message=message,
                        infer_response=protocol.ModelInferResponse(model_name=request.model_name, id=request_id),
                    )
            await reader  # a broken stream ends the call with the reader's error
        finally:  # the call ended or was cancelled: nothing is left running
            reader.cancel()
            while not in_flight.empty():
                item = in_flight.get_nowait()
                if item is not None:
                    item[1].cancel()

    async def _read_stream(self, request_iterator, context, window: asyncio.Semaphore, in_flight: asyncio.Queue):
        try:
            async for request in request_iterator:
                await window.acquire()
                task = asyncio.ensure_future(self._infer(request, context, "ModelStreamInfer"))
                in_flight.put_nowait((request, task))
        finally:
            in_flight.put_nowait(None)

    async def _infer(self, msg, context, method: str = "ModelInfer"):
        """(the response or None, the status code, the message, the request id)"""
        call = self._call(context, method, msg.model_name, msg.model_version, msg.id)
        response, code, message = await self.frontend.infer(
            call, lambda: decode_request(msg), lambda served, result: encode_response(call.id, served, result),
            context.time_remaining)
        return response, STATUS_BY_CODE[code], message, call.id


def method_handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """Method handlers for every RPC in the service descriptor that the servicer implements."""
    handlers = {}
    for method in protocol.SERVICE.methods:
        request_cls = protocol.message(method.input_type.name)
        response_cls = protocol.message(method.output_type.name)
        behaviour = getattr(servicer, method.name)
        if method.client_streaming:
            factory = grpc.stream_stream_rpc_method_handler
        else:
            factory = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = factory(
            behaviour, request_deserializer=request_cls.FromString, response_serializer=response_cls.SerializeToString
        )
    return handlers


def register(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Registers the service's methods with the server ahead of time, as generated stubs do:
    gRPC core then matches each call to its method without a generic-handler lookup."""
    handlers = method_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(protocol.SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(protocol.SERVICE_NAME, handlers)
