"""The transport-agnostic serving core: one ModelInfer, top-down.

``ServedModel.infer`` takes a request as the transport decoded it and:

1. checks it against the model's signature and decodes its tensors
   (``validation.Signature``: pure, raises ``InvalidInput``);
2. queues it on the model's batcher (``batcher.Batcher``), which decides when
   a batch leaves and hands it back to ``ServedModel`` as its ``Runner``;
3. runs the batch: on a free instance's thread (``execution.InstanceThreads``),
   or on the event loop when the inline policy (``inline.InlinePolicy``) finds
   the model idle and cheap; either way ``execution.Executor`` concatenates
   once, runs once and splits the outputs back as views;
4. counts the batch (``accounting.ModelAccount``) and returns the request's
   selected outputs.

A request with more rows than the max batch size is queued as max-batch-size
pieces whose outputs are joined back in order.

``Repository`` holds the served models and whether the server takes work. The
gRPC servicer is a thin adapter over these.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kubeinfer_server.accounting import ModelAccount
from kubeinfer_server.batcher import Batcher, BatchingConfig
from kubeinfer_server.errors import ModelNotFound, NotReady
from kubeinfer_server.execution import Executor, InstanceThreads, Ran
from kubeinfer_server.inline import InlinePolicy
from kubeinfer_server.model import Model, TensorSpec
from kubeinfer_server.provenance import Provenance
from kubeinfer_server.validation import Feeds, InputTensor, Signature

log = logging.getLogger(__name__)

MODEL_VERSION = "1"


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


class ServedModel:
    """One model as the server serves it: signature, batcher, instance threads, accounting, and
    which file it is (``provenance``: its sha256 and optimization method)."""

    def __init__(self, model: Model, batching: BatchingConfig, account: ModelAccount,
                 provenance: Provenance, version: str = MODEL_VERSION) -> None:
        self.model = model
        self.name = model.name
        self.provenance = provenance
        self.version = version  # what every answer names as model_version
        if not model.batchable and batching.max_batch_size:
            log.info("Model %s has a fixed first dimension: batching is off for it", model.name)
            batching = BatchingConfig(0, batching.max_queue_delay_us, (), batching.max_queue_size,
                                      batching.instances)
        self.batching = batching
        self.account = account
        self.signature = Signature(model.inputs, model.outputs, batched=batching.max_batch_size > 0)
        self._executor = Executor(model)
        self._threads = InstanceThreads(self._executor, model.name)
        # Only a model with one instance runs inline: with more, batches keep them all busy.
        self._inline = InlinePolicy() if batching.instances == 1 else None
        self.batcher = Batcher(batching, self, inline=self._inline)
        account.live.queue = self.batcher
        account.live.intra_op_threads = model.threads

    @property
    def max_batch_size(self) -> int:
        return self.batching.max_batch_size

    async def infer(self, request: InferRequest) -> InferResult:
        feeds = self.signature.decode(request.inputs)
        selected = self.signature.select(request.outputs)
        live = self.account.live
        live.in_flight += 1
        try:
            if self.max_batch_size and feeds.rows > self.max_batch_size:
                outputs, batch_rows = await self._infer_in_pieces(feeds, request.deadline)
            else:
                outputs, batch_rows = await self.batcher.submit(feeds, feeds.rows, request.deadline)
        finally:
            live.in_flight -= 1
        specs = self.model.outputs
        return InferResult([(specs[i], outputs[i]) for i in selected], batch_rows)

    async def _infer_in_pieces(self, feeds: Feeds, deadline: float | None) -> tuple[list[np.ndarray], int]:
        """More rows than a batch holds: queued as max-batch-size pieces, the outputs joined in order.

        A client need not know the server's batch size (MLServer and KServe accept such
        requests too); every full piece runs as a batch of its own.
        """
        size = self.max_batch_size
        pieces = [Feeds({name: array[start:start + size] for name, array in feeds.arrays.items()},
                        min(size, feeds.rows - start)) for start in range(0, feeds.rows, size)]
        answers = await asyncio.gather(*(self.batcher.submit(piece, piece.rows, deadline) for piece in pieces))
        joined = [np.concatenate([outputs[i] for outputs, _ in answers]) for i in range(len(answers[0][0]))]
        return joined, feeds.rows

    async def swap_sessions(self, sessions: list) -> int:
        """Serve from ``sessions`` (new sessions of the same model, ``resize``) from the next batch on;
        returns the threads served with before. Batches running meanwhile finish on the old sessions,
        which are released, on a thread, once those batches are done."""
        before = self.model.threads
        replaced = self.model.swap_sessions(sessions)
        self.account.live.intra_op_threads = self.model.threads
        await self.batcher.running_finished()
        await asyncio.to_thread(replaced.clear)  # the last references: their threads end there
        return before

    async def close(self) -> None:
        await self.batcher.close()
        self._threads.close()

    # --- batcher.Runner: called by the batcher on the event loop -------------------
    async def run(self, batch: Sequence[Feeds], waits_s: Sequence[float]) -> list[tuple[list[np.ndarray], int]]:
        """A batch off the event loop, on a free instance's thread."""
        self.account.dispatched(waits_s)
        return self._answers(await self._threads.run(batch), len(batch))

    def run_here(self, batch: Sequence[Feeds]) -> list[tuple[list[np.ndarray], int]]:
        """A batch on the event loop: the batcher calls this only when the model is idle (no wait)."""
        self.account.dispatched([0.0] * len(batch))
        return self._answers(self._executor.run(batch, self._threads.idle_instance), len(batch))

    def _answers(self, ran: Ran, requests: int) -> list[tuple[list[np.ndarray], int]]:
        self.account.batch_ran(ran, requests)
        if self._inline is not None:
            self._inline.observe_cost(ran.rows, ran.compute_s)
        return [(outputs, ran.rows) for outputs in ran.outputs]


class Repository:
    """The served models, by name, and whether the server takes work."""

    def __init__(self) -> None:
        self.models: dict[str, ServedModel] = {}
        self.ready = False  # loaded and warmed up: takes inference calls
        self.draining = False  # shutting down: reports not ready (answers new calls while not refusing)
        self.refusing = False  # shutting down past the delay: new calls answer UNAVAILABLE

    @property
    def reports_ready(self) -> bool:
        return self.ready and not self.draining

    def get(self, name: str, version: str = "") -> ServedModel:
        """The model to call, or ``NotReady`` while loading or shutting down, or ``ModelNotFound``."""
        if not self.ready:
            raise NotReady("the server is loading models; retry once it reports ready")
        if self.refusing:
            raise NotReady("the server is shutting down and takes no new calls; retry on another replica")
        served = self.models.get(name)
        if served is None:
            names = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"model '{name}' is not served here; served models: {names}")
        if version not in ("", served.version):
            raise ModelNotFound(
                f"model '{name}' has no version '{version}'; the served version is {served.version}"
            )
        return served

    async def close(self) -> None:
        await asyncio.gather(*(m.close() for m in self.models.values()))
