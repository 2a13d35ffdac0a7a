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

The batcher is event driven: it plans at the end of each loop turn in which
requests arrived (requests that arrive together leave together), when a batch
finishes and when a queue delay expires; there is no dispatch task.

A model cheap enough to run on the event loop (``Inline``) takes a shortcut
when nothing else is going on: a lone request runs at once, in its caller,
with no queue, future or thread hop, which is what gives the lowest latency at
concurrency 1. Under load that shortcut would starve batching (while the loop
runs the model it cannot take the requests that would join the batch), so the
batcher watches for load: every ``PROBE_EVERY``-th lone request goes through
the queue and runs off the loop, and if company arrives while it runs, the
model is "loaded": every request queues, and batches run off the loop and
grow while the loop takes new requests, until ``CALM_BATCHES`` batches in a
row ran alone and found nobody waiting when they finished.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
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


PROBE_EVERY = 8  # in the inline mode, every n-th lone request runs off the loop to look for load
CALM_BATCHES = 4  # the loaded mode ends after this many batches in a row ran alone with nobody waiting


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
    future: asyncio.Future | None  # None: run inline, answered by return


Execute = Callable[[Sequence[Any]], Awaitable[Sequence[Any]]]


@dataclass(frozen=True, slots=True)
class Inline:
    """How to run a batch on the event loop itself, when it is cheap enough to."""

    cheap: Callable[[int], bool]  # rows -> may a batch this size run on the loop
    run: Callable[[Sequence[Any]], Sequence[Any]]  # like execute, but synchronous


class Batcher:
    def __init__(
        self,
        config: BatchingConfig,
        execute: Execute,
        listener: Listener | None = None,
        clock: Callable[[], float] = time.monotonic,
        inline: Inline | None = None,
    ) -> None:
        self.config = config
        self._execute = execute
        self._listener = listener
        self._clock = clock
        self._inline = inline
        self._queue: collections.deque[Pending] = collections.deque()
        self._busy = 0
        self._running: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._pump_soon = False
        self._closed = False
        # Batches in a row that ran alone and found nobody waiting; below CALM_BATCHES the
        # model is loaded (requests met in the queue lately): every request queues.
        self._calm = CALM_BATCHES
        self._lone = 0  # lone requests seen in the inline mode (every PROBE_EVERY-th probes for load)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def executing(self) -> int:
        return self._busy

    @property
    def loaded(self) -> bool:
        return self._calm < CALM_BATCHES

    async def submit(self, payload: Any, rows: int, deadline: float | None = None) -> Any:
        """Queue one request and wait for its result; raises what its execution raised."""
        if self._closed:
            raise NotReady("the server is shutting down and takes no new requests")
        if self.config.max_batch_size and rows > self.config.max_batch_size:
            raise InvalidInput(
                f"request has {rows} rows, more than the model's max batch size {self.config.max_batch_size}"
            )
        now = self._clock()
        if (self._inline is not None and not self._busy and not self._queue and not self.loaded
                and self._inline.cheap(rows)):
            self._lone += 1
            if self._lone % PROBE_EVERY:
                return self._run_inline(Pending(payload, rows, now, deadline, None), now)
        if len(self._queue) >= self.config.max_queue_size:
            raise QueueFull(
                f"queue is full ({self.config.max_queue_size} requests waiting); retry later"
            )
        future = asyncio.get_running_loop().create_future()
        pending = Pending(payload, rows, now, deadline, future)
        self._queue.append(pending)
        if self._listener is not None:
            self._listener.enqueued(pending)
        if not self._pump_soon:
            self._pump_soon = True
            asyncio.get_running_loop().call_soon(self._deferred_pump)
        return await future

    def _deferred_pump(self) -> None:
        """After the requests that became ready in this loop turn have queued (call_soon)."""
        self._pump_soon = False
        self._pump()

    def _run_inline(self, pending: Pending, now: float) -> Any:
        if pending.deadline is not None and now >= pending.deadline:
            raise DeadlineExpired("the request's deadline passed before it reached the model")
        if self._listener is not None:
            self._listener.enqueued(pending)
            self._listener.dispatched((pending,), now)
        self._busy += 1
        try:
            (result,) = self._inline.run((pending.payload,))
        finally:
            self._busy -= 1
        if isinstance(result, BaseException):
            raise result
        return result

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

    def _start_batch(self, batch: list[Pending], now: float) -> None:
        if not batch:
            return
        if self._listener is not None:
            self._listener.dispatched(batch, now)
        self._busy += 1
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
            # Company arrived while this batch ran, or it carried company: stay loaded.
            # A batch of one with nobody waiting: the load is gone, back to the inline mode.
            self._calm = 0 if self._queue or len(batch) > 1 else self._calm + 1
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
        self._pump()
