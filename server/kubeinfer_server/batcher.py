"""A small asyncio dynamic batcher, knowing nothing of gRPC or ONNX Runtime.

Requests wait in one FIFO queue per model. ``plan`` (a pure function of the
queue, the busy instances and the time) decides when a batch leaves and how
many requests it takes; ``Batcher`` applies that decision and hands each batch
to its ``Runner``: batch in, one result (or exception) per request out. The
policy, with Triton's knob names:

* an idle model never waits for company: with no batch running, whatever is
  queued leaves at once (a lone request pays no queue delay);
* while other batches run, requests wait for company until the batch reaches
  ``max_batch_size`` rows or a preferred batch size, or the oldest request has
  waited ``max_queue_delay_us``;
* a full queue refuses new requests (``QueueFull``); a request whose deadline
  passed, or whose caller went away, is dropped before compute.

The batcher is event driven: it plans at the end of each loop turn in which
requests arrived (requests that arrive together leave together), when a batch
finishes and when a queue delay expires; there is no dispatch task.

A batch runs through one ``Runner``: ``run`` off the event loop, or
``run_here`` on it when the ``InlinePolicy`` (``inline``) lets a lone request
of a cheap model skip the queue.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kubeinfer_server.errors import DeadlineExpired, InvalidInput, NotReady, QueueFull
from kubeinfer_server.inline import InlinePolicy


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    max_batch_size: int = 32  # rows; 0 = no batching (one request per execution)
    max_queue_delay_us: int = 2000
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024  # requests
    instances: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 0 or self.max_queue_delay_us < 0:
            raise ValueError("max_batch_size and max_queue_delay_us must be >= 0")
        if self.max_queue_size < 1 or self.instances < 1:
            raise ValueError("max_queue_size and instances must be >= 1")
        if any(size < 1 or size > max(self.max_batch_size, 1) for size in self.preferred_batch_sizes):
            raise ValueError("preferred batch sizes must be between 1 and max_batch_size")


@dataclass(frozen=True, slots=True)
class Plan:
    take: int  # requests to dispatch now; 0 = wait
    wait_s: float | None = None  # when take == 0: how long until the delay expires


def plan(rows: Sequence[int], oldest_wait_s: float, busy: int, config: BatchingConfig) -> Plan:
    """Decide what leaves the queue now. ``rows``: rows of each queued request, oldest first."""
    if not rows or busy >= config.instances:
        return Plan(0)
    if config.max_batch_size == 0:
        return Plan(1)
    take, total, preferred_take = 0, 0, 0
    for count in rows:
        if take and total + count > config.max_batch_size:
            break
        take += 1
        total += count
        if total in config.preferred_batch_sizes:
            preferred_take = take
    full = total >= config.max_batch_size or take < len(rows)
    delay_s = config.max_queue_delay_us / 1e6
    if preferred_take and not full:
        return Plan(preferred_take)
    if full or busy == 0 or oldest_wait_s >= delay_s:
        return Plan(preferred_take or take)
    return Plan(0, wait_s=delay_s - oldest_wait_s)


class Runner(Protocol):
    """How the batcher runs a batch: payloads in, one result (or exception) per payload out."""

    async def run(self, payloads: Sequence[Any], waits_s: Sequence[float]) -> Sequence[Any]:
        """Off the event loop (the serving core: on an instance's thread); ``waits_s``: how
        long each request waited in the queue."""

    def run_here(self, payloads: Sequence[Any]) -> Sequence[Any]:
        """On the event loop, for a lone request the inline policy let through."""


@dataclass(slots=True, eq=False)
class Pending:
    payload: Any
    rows: int
    enqueued_at: float
    deadline: float | None
    future: asyncio.Future[Any]


class Batcher:
    def __init__(
        self,
        config: BatchingConfig,
        runner: Runner,
        clock: Callable[[], float] = time.monotonic,
        inline: InlinePolicy | None = None,
    ) -> None:
        self.config = config
        self._runner = runner
        self._clock = clock
        self._inline = inline
        self._queue: collections.deque[Pending] = collections.deque()
        self._busy = 0
        self._running: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._pump_soon = False
        self._closed = False

    @property
    def waiting(self) -> int:
        """Requests queued and not yet dispatched (``kubeinfer_queue_waiting``)."""
        return len(self._queue)

    @property
    def executing(self) -> int:
        return self._busy

    async def submit(self, payload: Any, rows: int, deadline: float | None = None) -> Any:
        """Queue one request and wait for its result; raises what its execution raised."""
        if self._closed:
            raise NotReady("the server is shutting down and takes no new requests")
        if self.config.max_batch_size and rows > self.config.max_batch_size:
            raise InvalidInput(
                f"request has {rows} rows, more than the model's max batch size {self.config.max_batch_size}"
            )
        if self._inline is not None and not self._busy and not self._queue and self._inline.runs_inline(rows):
            return self._run_here(payload, deadline)
        if len(self._queue) >= self.config.max_queue_size:
            raise QueueFull(
                f"queue is full ({self.config.max_queue_size} requests waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append(Pending(payload, rows, self._clock(), deadline, future))
        if not self._pump_soon:
            self._pump_soon = True
            loop.call_soon(self._deferred_pump)
        return await future

    def _deferred_pump(self) -> None:
        """After the requests that became ready in this loop turn have queued (call_soon)."""
        self._pump_soon = False
        self._pump()

    def _run_here(self, payload: Any, deadline: float | None) -> Any:
        if deadline is not None and self._clock() >= deadline:
            raise DeadlineExpired("the request's deadline passed before it reached the model")
        self._busy += 1
        try:
            (result,) = self._runner.run_here((payload,))
        finally:
            self._busy -= 1
        if isinstance(result, BaseException):
            raise result
        return result

    async def running_finished(self) -> None:
        """Wait until the batches running now have finished (not those that start later)."""
        if self._running:
            await asyncio.wait(set(self._running))

    async def close(self) -> None:
        """Refuse new requests, let queued and running ones finish."""
        self._closed = True
        self._pump()
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()

    def _pump(self) -> None:
        """Start every batch the policy lets leave now; arm the timer for the next one."""
        while self._queue:
            now = self._clock()
            # Closing: nobody else is coming, so nobody waits for company.
            oldest = math.inf if self._closed else now - self._queue[0].enqueued_at
            # plan never looks past max_batch_size + 1 requests (each has at least one row)
            head = itertools.islice(self._queue, self.config.max_batch_size + 1)
            decision = plan([p.rows for p in head], oldest, self._busy, self.config)
            if decision.take:
                self._start_batch(self._pop(decision.take, now), now)
                continue
            if decision.wait_s is not None and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(decision.wait_s, self._on_timer)
            return

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _pop(self, count: int, now: float) -> list[Pending]:
        """The next ``count`` requests, less those whose caller left or whose deadline passed."""
        batch = []
        for _ in range(count):
            pending = self._queue.popleft()
            if pending.future.done():  # the caller went away
                continue
            if pending.deadline is not None and now >= pending.deadline:
                pending.future.set_exception(
                    DeadlineExpired("the request's deadline passed while it waited in the queue")
                )
                continue
            batch.append(pending)
        return batch

    def _start_batch(self, batch: list[Pending], now: float) -> None:
        if not batch:
            return
        self._busy += 1
        task = asyncio.get_running_loop().create_task(self._run_batch(batch, [now - p.enqueued_at for p in batch]))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run_batch(self, batch: list[Pending], waits_s: list[float]) -> None:
        try:
            results = await self._runner.run([p.payload for p in batch], waits_s)
        except Exception as exc:  # a failed batch fails every request in it
            results = [exc] * len(batch)
        finally:
            self._busy -= 1
            if self._inline is not None:
                self._inline.batch_finished(len(batch), len(self._queue))
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
        self._pump()
