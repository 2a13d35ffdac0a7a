"""Running batches of requests on a model: no event loop, queue or transport needed.

``Executor.run`` takes the requests of one batch (``Feeds``), concatenates
each input once, runs the model once on one instance, and splits the outputs
back into one view per request. It runs in the calling thread: the batch
runner and the tests call it directly. ``InstanceThreads`` gives each model
instance a thread of its own, for the server: a batch is handed to a free
instance's thread (ONNX Runtime releases the GIL while it runs) and its
``Ran`` comes back through the event loop, one callback per batch.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kubeinfer_server.model import Model
from kubeinfer_server.validation import Feeds


@dataclass(slots=True)
class Ran:
    """One batch's run: each request's outputs (every output, in signature order)."""

    outputs: list[list[np.ndarray]]  # per request, views into the batch's outputs
    rows: int
    timings: tuple[float, float, float]  # seconds to concatenate, run, split
    compute_s: float  # their sum


class Executor:
    """One model's batches: one concatenate per input, one run, outputs split as views."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self._input_names = [spec.name for spec in model.inputs]

    @property
    def instances(self) -> int:
        return len(self.model.sessions)

    def run(self, batch: Sequence[Feeds], instance: int = 0) -> Ran:
        start = time.perf_counter()
        if len(batch) == 1:
            arrays = batch[0].arrays
        else:
            arrays = {name: np.concatenate([f.arrays[name] for f in batch]) for name in self._input_names}
        concatenated = time.perf_counter()
        outputs = self.model.run(instance, arrays)
        ran = time.perf_counter()
        rows = sum(f.rows for f in batch)
        split = [outputs] if len(batch) == 1 else _split(outputs, batch)
        done = time.perf_counter()
        return Ran(split, rows, (concatenated - start, ran - concatenated, done - ran), done - start)


def _split(outputs: list[np.ndarray], batch: Sequence[Feeds]) -> list[list[np.ndarray]]:
    split, offset = [], 0
    for feeds in batch:
        split.append([out[offset : offset + feeds.rows] for out in outputs])
        offset += feeds.rows
    return split


class InstanceThreads:
    """One thread per model instance, each running the batches put on its own queue and
    answering through the event loop: a lighter hand-off than ``run_in_executor`` (no
    concurrent future to wrap, no pool bookkeeping), paid once per batch."""

    def __init__(self, executor: Executor, name: str) -> None:
        self._executor = executor
        self._free = list(range(executor.instances))
        self._jobs: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in self._free]
        self._threads = [
            threading.Thread(target=self._serve, args=(i,), name=f"ort-{name}-{i}", daemon=True)
            for i in self._free
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, batch: Sequence[Feeds]) -> Ran:
        """Run ``batch`` on a free instance's thread (the batcher never starts more batches
        than there are instances)."""
        instance = self._free.pop()
        try:
            future = asyncio.get_running_loop().create_future()
            self._jobs[instance].put((future, batch))
            return await future
        finally:
            self._free.append(instance)

    @property
    def idle_instance(self) -> int:
        """An instance no thread is running a batch on, for a batch run on the loop."""
        return self._free[-1]

    def close(self) -> None:
        """Stop the threads once their queued work is done (the batcher has drained by now)."""
        for jobs in self._jobs:
            jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _serve(self, instance: int) -> None:
        jobs, run = self._jobs[instance], self._executor.run
        while (item := jobs.get()) is not None:
            future, batch = item
            try:
                outcome: tuple[Any, BaseException | None] = (run(batch, instance), None)
            except BaseException as exc:  # handed to the awaiting coroutine, not lost here
                outcome = (None, exc)
            try:
                future.get_loop().call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():  # cancelled while the batch ran
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)

