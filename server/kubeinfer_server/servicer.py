"""``inference.GRPCInferenceService`` over grpc.aio: a thin adapter.

Converts protobuf messages to the core's domain values and back; domain
errors map to status codes in ``STATUS_BY_ERROR``. Anything else becomes
INTERNAL with a generic message and a logged traceback. Outputs always travel
in ``raw_output_contents`` (what perf_analyzer and tritonclient expect).
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from kubeinfer_server import __version__, errors, protocol, tensors
from kubeinfer_server.accounting import Accounting
from kubeinfer_server.core import MODEL_VERSION, InferRequest, Repository, ServedModel
from kubeinfer_server.validation import InputTensor

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.ServingError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.NotReady: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}

EXTENSIONS = ["model_configuration", "binary_tensor_data", "parameters", "statistics", "schedule_policy"]
STREAM_WINDOW = 64  # requests of one ModelStreamInfer call in flight at once
TYPED_FIELDS = {t.name: t.contents_field for t in tensors.BY_NAME.values()}
CODE_NAMES = {code: code.name for code in grpc.StatusCode}  # an enum's .name is a property call


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls, code in STATUS_BY_ERROR.items():
        if isinstance(exc, cls):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error; the server log has the details"


class Identity:
    """Who is calling: the verified client certificate CN, and whether it may."""

    def __init__(self, allowed: frozenset[str], verifies_clients: bool = True) -> None:
        self.allowed = allowed
        self.verifies_clients = verifies_clients  # False: no client certificates, everyone is anonymous

    def name(self, context) -> str:
        if not self.verifies_clients:
            return "anonymous"
        names = context.auth_context().get("x509_common_name")
        return names[0].decode() if names else "anonymous"

    def check(self, client: str) -> None:
        if self.allowed and client not in self.allowed:
            raise errors.PermissionDenied(
                f"client '{client}' is not allowed to call this server (allowed: {', '.join(sorted(self.allowed))})"
            )


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
            field = TYPED_FIELDS.get(tensor.datatype)
            if field is None:
                raise errors.InvalidInput(f"input '{tensor.name}': unknown datatype '{tensor.datatype}'")
            inputs.append(InputTensor(tensor.name, tensor.datatype, tuple(tensor.shape), None,
                                      getattr(tensor.contents, field)))
    requested = msg.outputs
    return InferRequest(msg.model_name, msg.model_version, inputs,
                        tuple(o.name for o in requested) if requested else ())


def encode_response(msg, served: ServedModel, result) -> object:
    response = protocol.ModelInferResponse(model_name=served.name, model_version=MODEL_VERSION, id=msg.id)
    outputs, contents = response.outputs, response.raw_output_contents
    for spec, array in result.outputs:
        outputs.add(name=spec.name, datatype=spec.datatype.name, shape=array.shape)
        contents.append(tensors.encode(array, spec.datatype))
    return response


class InferenceServicer:
    def __init__(self, repository: Repository, accounting: Accounting, identity: Identity,
                 whole_server_statistics: bool = True) -> None:
        # A worker's ModelStatistics cover its own requests only: it does not advertise
        # the "statistics" extension, so perf_analyzer does not mistake them for the server's.
        self.extensions = [e for e in EXTENSIONS if whole_server_statistics or e != "statistics"]
        self.repository = repository
        self.accounting = accounting
        self.identity = identity

    # --- health and metadata -------------------------------------------------
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

    async def ServerMetadata(self, request, context):
        return protocol.ServerMetadataResponse(name="kubeinfer", version=__version__, extensions=self.extensions)

    async def ModelMetadata(self, request, context):
        served = await self._model(request, context)
        model = served.model
        response = protocol.ModelMetadataResponse(name=served.name, versions=[MODEL_VERSION],
                                                  platform="onnxruntime_onnx")
        for specs, target in ((model.inputs, response.inputs), (model.outputs, response.outputs)):
            for spec in specs:
                target.add(name=spec.name, datatype=spec.datatype.name, shape=spec.shape)
        response.parameters["execution_providers"].string_param = ",".join(model.providers)
        return response

    async def ModelConfig(self, request, context):
        served = await self._model(request, context)
        model, batched = served.model, served.max_batch_size > 0
        config = protocol.ModelConfig(name=served.name, platform="onnxruntime_onnx", backend="onnxruntime",
                                      max_batch_size=served.max_batch_size)
        for specs, target in ((model.inputs, config.input), (model.outputs, config.output)):
            for spec in specs:
                target.add(name=spec.name, data_type=_config_type(spec), dims=spec.shape[1:] if batched else spec.shape)
        on_cpu = model.providers[0] == "CPUExecutionProvider"
        config.instance_group.add(name=served.name, count=served.batching.instances,
                                  kind=protocol.INSTANCE_KIND_CPU if on_cpu else protocol.INSTANCE_KIND_GPU)
        if batched:
            config.dynamic_batching.preferred_batch_size.extend(served.batching.preferred_batch_sizes)
            config.dynamic_batching.max_queue_delay_microseconds = served.batching.max_queue_delay_us
        config.parameters["execution_providers"].string_value = ",".join(model.providers)
        return protocol.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request, context):
        if request.name:
            models = [await self._model(request, context)]
        else:
            models = list(self.repository.models.values())
        response = protocol.ModelStatisticsResponse()
        for served in models:
            _fill_statistics(response.model_stats.add(), served)
        return response

    async def RepositoryIndex(self, request, context):
        response = protocol.RepositoryIndexResponse()
        state = "READY" if self.repository.reports_ready else "UNAVAILABLE"
        for name in sorted(self.repository.models):
            response.models.add(name=name, version=MODEL_VERSION, state=state)
        return response

    # --- inference --------------------------------------------------------------
    async def ModelInfer(self, request, context):
        response, code, message = await self._infer(request, context)
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
                response, code, message = await task
                window.release()
                if code is grpc.StatusCode.OK:
                    yield protocol.ModelStreamInferResponse(infer_response=response)
                else:
                    yield protocol.ModelStreamInferResponse(
                        error_message=message,
                        infer_response=protocol.ModelInferResponse(model_name=request.model_name, id=request.id),
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
                in_flight.put_nowait((request, asyncio.ensure_future(self._infer(request, context))))
        finally:
            in_flight.put_nowait(None)

    async def _infer(self, msg, context):
        start = time.monotonic()
        client, batch_rows, response = "anonymous", 0, None
        try:
            client = self.identity.name(context)
            self.identity.check(client)
            request = decode_request(msg)
            remaining = context.time_remaining()
            request.deadline = start + remaining if remaining is not None else None
            served = self.repository.get(request.model, request.version)
            result = await served.infer(request)
            batch_rows = result.batch_rows
            response = encode_response(msg, served, result)
            code, message = grpc.StatusCode.OK, ""
        except asyncio.CancelledError:  # the client went away or its deadline passed
            expired = context.time_remaining() is not None and context.time_remaining() <= 0
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            self.accounting.finished(msg.model_name, client, CODE_NAMES[code], time.monotonic() - start, batch_rows)
            raise
        except Exception as exc:
            code, message = status_of(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("Failed request %r for model %r", msg.id, msg.model_name)
        self.accounting.finished(msg.model_name, client, CODE_NAMES[code], time.monotonic() - start, batch_rows)
        return response, code, message

    async def _model(self, request, context) -> ServedModel:
        try:
            self.identity.check(self.identity.name(context))
            return self.repository.get(request.name, request.version)
        except errors.ServingError as exc:
            code, message = status_of(exc)
            await context.abort(code, message)
            raise  # abort raised already; for the type checker


def _config_type(spec) -> int:
    name = "STRING" if spec.datatype.name == "BYTES" else spec.datatype.name
    return protocol.enum_number("DataType", f"TYPE_{name}")


def _fill_statistics(out, served: ServedModel) -> None:
    stats = served.account.stats
    out.name, out.version = served.name, MODEL_VERSION
    out.last_inference = stats.last_inference_ms
    out.inference_count = stats.inference_count
    out.execution_count = stats.execution_count
    for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        duration = getattr(stats, field)
        target = getattr(out.inference_stats, field)
        target.count, target.ns = duration.count, duration.ns
    for size in sorted(stats.batches):
        batch = stats.batches[size]
        entry = out.batch_stats.add(batch_size=size)
        for field in ("compute_input", "compute_infer", "compute_output"):
            duration = getattr(batch, field)
            getattr(entry, field).count, getattr(entry, field).ns = duration.count, duration.ns


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
