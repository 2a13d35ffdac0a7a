"""The transport-agnostic serving core.

``ServedModel`` validates a request against the model's signature, queues it
on the model's batcher and turns a batch into one ONNX Runtime run: one
concatenate per input, one run, outputs split back as views. A batch runs in
a thread of its instance (ONNX Runtime releases the GIL), or,
when the batcher finds the model idle and the run is predicted to take under a
millisecond, on the event loop itself, where a thread hop would cost more than
the run (see ``batcher``: the inline mode and how it notices load).
``Repository`` holds the served models and the server's readiness. The gRPC
servicer is a thin adapter over these."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kubeinfer_server import tensors
from kubeinfer_server.batcher import Batcher, BatchingConfig, Inline, Pending
from kubeinfer_server.errors import InvalidInput, ModelNotFound, NotReady
from kubeinfer_server.metrics import Metrics
from kubeinfer_server.model import Model, TensorSpec
from kubeinfer_server.stats import ModelStats

log = logging.getLogger(__name__)

MODEL_VERSION = "1"
INLINE_BELOW_S = 0.001  # batches predicted to run faster than this run on the event loop


@dataclass(slots=True)
class InputTensor:
    """One request input as it came off the wire: raw bytes or typed values."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | None = None
    values: Sequence | None = None


@dataclass(slots=True)
class InferRequest:
    model: str
    version: str
    inputs: list[InputTensor]
    outputs: tuple[str, ...] = ()  # empty: every output
    deadline: float | None = None  # time.monotonic() seconds


@dataclass(slots=True)
class InferResult:
    outputs: list[tuple[TensorSpec, np.ndarray]]
    batch_rows: int  # rows in the batch this request ran in


@dataclass(slots=True)
class _Payload:
    feeds: dict[str, np.ndarray]
    rows: int


class InstanceThreads:
    """One thread per model instance, each running the batches put on its own queue and
    answering through the event loop: a lighter hand-off than ``run_in_executor`` (no
    concurrent future to wrap, no pool bookkeeping), paid once per batch."""

    def __init__(self, count: int, run: Callable[[int, Any], Any], name: str) -> None:
        self._run = run
        self._jobs = [queue.SimpleQueue() for _ in range(count)]
        self._threads = [
            threading.Thread(target=self._serve, args=(i,), name=f"ort-{name}-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, instance: int, job: Any) -> asyncio.Future:
        """Run ``run(instance, job)`` on that instance's thread; the future resolves on the loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs[instance].put((loop, future, job))
        return future

    def close(self) -> None:
        """Stop the threads once their queued work is done (the batcher has drained by now)."""
        for jobs in self._jobs:
            jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _serve(self, instance: int) -> None:
        jobs = self._jobs[instance]
        while (item := jobs.get()) is not None:
            loop, future, job = item
            try:
                outcome = (self._run(instance, job), None)
            except BaseException as exc:  # handed to the awaiting coroutine, not lost here
                outcome = (None, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():  # cancelled while the batch ran
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class ServedModel:
    def __init__(self, model: Model, batching: BatchingConfig, metrics: Metrics) -> None:
        self.model = model
        self.name = model.name
        if not model.batchable and batching.max_batch_size:
            log.info("Model %s has a fixed first dimension: batching is off for it", model.name)
            batching = BatchingConfig(0, batching.max_queue_delay_us, (), batching.max_queue_size,
                                      batching.instances)
        self.batching = batching
        self.stats = ModelStats()
        self._free_instances = list(range(batching.instances))
        self._threads = InstanceThreads(batching.instances, self._run_batch, model.name)
        self._inputs = {spec.name: spec for spec in model.inputs}
        # (index, size) of each fixed dimension of each input, checked per request
        self._fixed_dims = {spec.name: tuple((i, d) for i, d in enumerate(spec.shape) if d != -1)
                            for spec in model.inputs}
        self._all_outputs = list(range(len(model.outputs)))
        self.batcher = Batcher(batching, self._execute, listener=self, inline=Inline(self._cheap, self._execute_inline))
        self._row_cost_s = INLINE_BELOW_S  # EWMA of compute seconds per row; starts pessimistic
        # live metric values (plain numbers; read when /metrics is scraped)
        self.metrics = metrics.model(model.name, ",".join(model.providers), batching.instances)

    @property
    def max_batch_size(self) -> int:
        return self.batching.max_batch_size

    async def close(self) -> None:
        await self.batcher.close()
        self._threads.close()

    async def infer(self, request: InferRequest) -> InferResult:
        feeds, rows = self._decode(request.inputs)
        selected = self._select_outputs(request.outputs) if request.outputs else self._all_outputs
        live = self.metrics
        live.in_flight += 1
        try:
            outputs, batch_rows = await self.batcher.submit(_Payload(feeds, rows), rows, request.deadline)
        finally:
            live.in_flight -= 1
        specs = self.model.outputs
        return InferResult([(specs[i], outputs[i]) for i in selected], batch_rows)

    def _decode(self, inputs: list[InputTensor]) -> tuple[dict[str, np.ndarray], int]:
        feeds: dict[str, np.ndarray] = {}
        for tensor in inputs:
            spec = self._inputs.get(tensor.name)
            if spec is None:
                raise InvalidInput(f"unknown input '{tensor.name}'; the model expects {self._signature()}")
            if tensor.name in feeds:
                raise InvalidInput(f"input '{tensor.name}' is given twice")
            feeds[tensor.name] = self._decode_one(spec, tensor)
        if len(feeds) != len(self._inputs):  # unknown and repeated names were refused above
            missing = next(name for name in self._inputs if name not in feeds)
            raise InvalidInput(f"missing input '{missing}'; the model expects {self._signature()}")
        if self.batching.max_batch_size == 0:
            return feeds, 1
        if len(feeds) == 1:
            return feeds, next(iter(feeds.values())).shape[0]
        rows = {array.shape[0] for array in feeds.values()}
        if len(rows) != 1:
            raise InvalidInput(f"inputs disagree on the batch dimension: {sorted(rows)}")
        return feeds, rows.pop()

    def _decode_one(self, spec: TensorSpec, tensor: InputTensor) -> np.ndarray:
        if tensor.datatype != spec.datatype.name:
            raise InvalidInput(
                f"input '{tensor.name}' is {tensor.datatype} but the model expects {spec.datatype.name}"
            )
        shape = tensor.shape
        if len(shape) != len(spec.shape) or (shape and min(shape) < 0) or any(
            shape[i] != want for i, want in self._fixed_dims[spec.name]
        ):
            raise InvalidInput(
                f"input '{tensor.name}' has shape {list(shape)}; the model expects {list(spec.shape)} "
                "(-1: any size)"
            )
        if tensor.raw is not None:
            return tensors.decode_raw(tensor.name, spec.datatype, shape, tensor.raw)
        return tensors.decode_typed(tensor.name, spec.datatype, shape, tensor.values or ())

    def _select_outputs(self, names: tuple[str, ...]) -> list[int]:
        if not names:
            return list(range(len(self.model.outputs)))
        index = self.model.output_index
        unknown = [n for n in names if n not in index]
        if unknown:
            known = ", ".join(index)
            raise InvalidInput(f"unknown output '{unknown[0]}'; the model's outputs are {known}")
        return [index[n] for n in names]

    def _signature(self) -> str:
        return ", ".join(f"{s.name} ({s.datatype.name} {list(s.shape)})" for s in self.model.inputs)

    async def _execute(self, payloads: Sequence[_Payload]) -> list:
        """A batch off the event loop, on its instance's thread (ONNX Runtime releases the GIL)."""
        instance = self._free_instances.pop()
        try:
            results, rows, timings = await self._threads.submit(instance, payloads)
        finally:
            self._free_instances.append(instance)
        self._record(rows, len(payloads), timings)
        return results

    def _execute_inline(self, payloads: Sequence[_Payload]) -> list:
        """A batch on the event loop: the batcher calls this only when the model is idle."""
        results, rows, timings = self._run_batch(self._free_instances[-1], payloads)
        self._record(rows, len(payloads), timings)
        return results

    def _record(self, rows: int, requests: int, timings: tuple[float, float, float]) -> None:
        seconds = sum(timings)
        self._row_cost_s += 0.2 * (seconds / rows - self._row_cost_s)
        self.stats.record_batch(rows, requests, timings)
        self.metrics.compute_seconds.observe(seconds)
        self.metrics.batch_rows.observe(rows)

    def _cheap(self, rows: int) -> bool:
        """Run on the event loop when cheap: a thread hop (and the GIL hand-offs it brings)
        costs more than a sub-millisecond run. Only one instance can run inline."""
        return self.batching.instances == 1 and self._row_cost_s * rows < INLINE_BELOW_S

    def _run_batch(self, instance: int, payloads: Sequence[_Payload]):
        """Concatenate once, run once, split into views (in a worker thread or inline)."""
        start = time.perf_counter()
        if len(payloads) == 1:
            feeds = payloads[0].feeds
        else:
            feeds = {name: np.concatenate([p.feeds[name] for p in payloads]) for name in self._inputs}
        concatenated = time.perf_counter()
        outputs = self.model.run(instance, feeds)
        ran = time.perf_counter()
        rows = sum(p.rows for p in payloads)
        if len(payloads) == 1:
            results = [(outputs, rows)]
        else:
            results, offset = [], 0
            for p in payloads:
                results.append(([out[offset : offset + p.rows] for out in outputs], rows))
                offset += p.rows
        done = time.perf_counter()
        return results, rows, (concatenated - start, ran - concatenated, done - ran)

    # Listener: called by the batcher on the event loop.
    def enqueued(self, pending: Pending) -> None:
        self.metrics.waiting += 1

    def dispatched(self, batch: Sequence[Pending], now: float) -> None:
        live = self.metrics
        live.waiting -= len(batch)
        queue_stats, observe = self.stats.queue, live.queue_seconds.observe
        for pending in batch:
            waited = now - pending.enqueued_at
            queue_stats.add(waited)
            observe(waited)

    def dropped(self, pending: Pending) -> None:
        """The servicer accounts the request's failure where it ends; here it only stops waiting."""
        self.metrics.waiting -= 1


class Repository:
    """The served models, by name, and whether the server takes work."""

    def __init__(self, models: list[ServedModel]) -> None:
        self.models = {m.name: m for m in models}
        self.ready = False  # loaded and warmed up: takes inference calls
        self.draining = False  # shutting down: still answers, but reports not ready

    @property
    def reports_ready(self) -> bool:
        return self.ready and not self.draining

    def get(self, name: str, version: str = "") -> ServedModel:
        served = self.models.get(name)
        if served is None:
            names = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"model '{name}' is not served here; served models: {names}")
        if version not in ("", MODEL_VERSION):
            raise ModelNotFound(
                f"model '{name}' has no version '{version}'; the served version is {MODEL_VERSION}"
            )
        return served

    async def infer(self, request: InferRequest) -> InferResult:
        if not self.ready:
            raise NotReady("the server is not ready (starting up or draining)")
        return await self.get(request.model, request.version).infer(request)

    async def close(self) -> None:
        self.ready = False
        await asyncio.gather(*(m.close() for m in self.models.values()))
