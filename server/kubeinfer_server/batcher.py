"""A small asyncio dynamic batcher, knowing nothing of gRPC or ONNX Runtime.

Requests wait in one FIFO queue per model. ``plan`` (a pure function of the
queue, the busy instances and the time) decides when a batch leaves and how
many requests it takes; ``Batcher`` applies that decision and hands each batch
to an ``execute`` coroutine: batch in, one result (or exception) per request
out. The policy, with Triton's knob names:

* an idle model never waits for company: with no batch running, whatever is
  queued leaves at once (a lone request pays no queue delay);
* while other batches run, requests wait for company until the batch reaches
  ``max_batch_size`` rows or a preferred batch size, or the oldest request has
  waited ``max_queue_delay_us``;
* a full queue refuses new requests (``QueueFull``); a request whose deadline
  passed, or whose caller went away, is dropped before compute.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kubeinfer_server.errors import DeadlineExpired, InvalidInput, NotReady, QueueFull


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


class Listener(Protocol):
    """What the serving core hears from the batcher (metrics, statistics)."""

    def enqueued(self, pending: "Pending") -> None: ...

    def dispatched(self, batch: Sequence["Pending"], now: float) -> None: ...

    def dropped(self, pending: "Pending") -> None: ...


@dataclass(slots=True, eq=False)
class Pending:
    payload: Any
    rows: int
    enqueued_at: float
    deadline: float | None
    future: asyncio.Future


Execute = Callable[[Sequence[Any]], Awaitable[Sequence[Any]]]


class Batcher:
    def __init__(
        self,
        config: BatchingConfig,
        execute: Execute,
        listener: Listener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._execute = execute
        self._listener = listener
        self._clock = clock
        self._queue: collections.deque[Pending] = collections.deque()
        self._changed = asyncio.Event()
        self._busy = 0
        self._running: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._closed = False

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def executing(self) -> int:
        return self._busy

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._dispatch_loop(), name="batcher")

    async def submit(self, payload: Any, rows: int, deadline: float | None = None) -> Any:
        """Queue one request and wait for its result; raises what its execution raised."""
        if self._closed:
            raise NotReady("the server is shutting down and takes no new requests")
        if self.config.max_batch_size and rows > self.config.max_batch_size:
            raise InvalidInput(
                f"request has {rows} rows, more than the model's max batch size {self.config.max_batch_size}"
            )
        if len(self._queue) >= self.config.max_queue_size:
            raise QueueFull(
                f"queue is full ({self.config.max_queue_size} requests waiting); retry later"
            )
        future = asyncio.get_running_loop().create_future()
        pending = Pending(payload, rows, self._clock(), deadline, future)
        self._queue.append(pending)
        if self._listener is not None:
            self._listener.enqueued(pending)
        if self._busy == 0 and len(self._queue) == 1:
            await self._run_idle(pending)
        else:
            self._changed.set()
        return await future

    async def _run_idle(self, pending: Pending) -> None:
        """The idle fast path: no hop through the dispatch loop. The caller claims the
        model, lets the requests that arrived in the same loop turn queue up behind
        it, and takes them along. A batch of the caller's request alone runs in the
        caller's task; a batch that carries others runs in a task of its own, so that
        the caller going away (cancellation) cannot leave the others unanswered."""
        self._busy += 1
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            self._busy -= 1
            pending.future.cancel()  # dropped when popped
            self._changed.set()  # the dispatch loop serves whoever queued behind
            raise
        self._busy -= 1
        now = self._clock()
        head = itertools.islice(self._queue, self.config.max_batch_size + 1)
        batch = self._pop(plan([p.rows for p in head], 0.0, 0, self.config).take, now)
        if len(batch) > 1:
            self._start_batch(batch, now)
        elif batch:
            self._start_accounting(batch, now)
            await self._run_batch(batch)
        else:
            self._changed.set()

    async def close(self) -> None:
        """Refuse new requests, let queued and running ones finish, stop the loop."""
        self._closed = True
        self._changed.set()
        if self._task is not None:
            await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _dispatch_loop(self) -> None:
        while not (self._closed and not self._queue):
            now = self._clock()
            oldest = now - self._queue[0].enqueued_at if self._queue else 0.0
            # plan never looks past max_batch_size + 1 requests (each has at least one row)
            head = itertools.islice(self._queue, self.config.max_batch_size + 1)
            decision = plan([p.rows for p in head], oldest, self._busy, self.config)
            if decision.take:
                self._start_batch(self._pop(decision.take, now), now)
                continue
            if self._closed and self._busy < self.config.instances and self._queue:
                self._start_batch(self._pop(len(self._queue), now), now)
                continue
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), decision.wait_s)
            except TimeoutError:
                pass

    def _pop(self, count: int, now: float) -> list[Pending]:
        batch = []
        for _ in range(count):
            pending = self._queue.popleft()
            if pending.future.done():  # the caller went away
                self._drop(pending)
            elif pending.deadline is not None and now >= pending.deadline:
                pending.future.set_exception(
                    DeadlineExpired("the request's deadline passed while it waited in the queue")
                )
                self._drop(pending)
            else:
                batch.append(pending)
        return batch

    def _drop(self, pending: Pending) -> None:
        if self._listener is not None:
            self._listener.dropped(pending)

    def _start_accounting(self, batch: list[Pending], now: float) -> None:
        if self._listener is not None:
            self._listener.dispatched(batch, now)
        self._busy += 1

    def _start_batch(self, batch: list[Pending], now: float) -> None:
        if not batch:
            return
        self._start_accounting(batch, now)
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run_batch(self, batch: list[Pending]) -> None:
        try:
            results = await self._execute([p.payload for p in batch])
        except Exception as exc:  # a failed batch fails every request in it
            results = [exc] * len(batch)
        finally:
            self._busy -= 1
            self._changed.set()
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
