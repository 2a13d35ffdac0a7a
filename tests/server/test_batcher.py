"""The dynamic batcher and its inline policy, without gRPC or ONNX Runtime.

Covers: the pure dispatch policy (an idle model dispatches at once, a busy one
waits for company until max batch size, a preferred size or the queue delay;
multi-row requests are never split; no batching when max_batch_size is 0);
the asyncio loop driven by a controllable clock (requests merge into one
execution and each gets exactly its own result; a full queue refuses with
QueueFull; a request whose deadline passed is dropped before compute; a
request too large for the batch is refused; a failed batch fails every
request in it, and one bad request fails alone; close drains the queue;
``running_finished`` waits for the batches running then, not for later ones);
cancelled callers; the inline policy for cheap models (a lone request runs in
its caller, every PROBE_EVERY-th one probes for load off the loop, company
found by a probe keeps the model loaded until CALM_BATCHES batches in a row
ran alone and found nobody waiting; a model whose measured cost per row is
too high never runs inline).
"""

import asyncio

import pytest

from kubeinfer_server.batcher import Batcher, BatchingConfig, Plan, plan
from kubeinfer_server.errors import DeadlineExpired, InvalidInput, NotReady, QueueFull
from kubeinfer_server.inline import CALM_BATCHES, INLINE_BELOW_S, PROBE_EVERY, InlinePolicy

CFG = BatchingConfig(max_batch_size=8, max_queue_delay_us=1000, preferred_batch_sizes=(), instances=2)


def test_idle_model_dispatches_a_lone_request_at_once():
    assert plan([1], oldest_wait_s=0.0, busy=0, config=CFG) == Plan(1)


def test_busy_model_waits_for_company_until_the_delay():
    decision = plan([1, 1], oldest_wait_s=0.0004, busy=1, config=CFG)
    assert decision.take == 0
    assert decision.wait_s == pytest.approx(0.0006)
    assert plan([1, 1], oldest_wait_s=0.001, busy=1, config=CFG) == Plan(2)


def test_full_batch_leaves_without_waiting():
    assert plan([3, 3, 2, 1], oldest_wait_s=0.0, busy=1, config=CFG) == Plan(3)


def test_multi_row_requests_are_never_split():
    # 5 + 4 > 8: the second request waits for the next batch.
    assert plan([5, 4], oldest_wait_s=0.0, busy=1, config=CFG) == Plan(1)


def test_preferred_batch_size_leaves_early():
    cfg = BatchingConfig(max_batch_size=8, max_queue_delay_us=1000, preferred_batch_sizes=(4,), instances=2)
    assert plan([2, 2], oldest_wait_s=0.0, busy=1, config=cfg) == Plan(2)
    assert plan([2, 1], oldest_wait_s=0.0, busy=1, config=cfg).take == 0


def test_largest_preferred_size_is_chosen_when_the_queue_is_full():
    cfg = BatchingConfig(max_batch_size=8, max_queue_delay_us=1000, preferred_batch_sizes=(2, 4), instances=1)
    assert plan([1, 1, 2, 3, 1], oldest_wait_s=0.0, busy=0, config=cfg) == Plan(3)


def test_every_instance_busy_means_no_dispatch():
    assert plan([8], oldest_wait_s=5.0, busy=2, config=CFG).take == 0


def test_no_batching_takes_one_request():
    cfg = BatchingConfig(max_batch_size=0, instances=1)
    assert plan([1, 1, 1], oldest_wait_s=0.0, busy=0, config=cfg) == Plan(1)


def test_config_rejects_a_preferred_size_above_max():
    with pytest.raises(ValueError, match="preferred batch sizes"):
        BatchingConfig(max_batch_size=4, preferred_batch_sizes=(8,))


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A batch runner: doubles each payload list off the loop (and triples it on the loop),
    remembers every batch, can be held."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.batches: list[list] = []  # run off the loop
        self.inline_batches: list[list] = []  # run on the loop
        self.waits: list[list[float]] = []  # queue waits the batcher reported with each batch
        self.fail_with = fail_with
        self.gate = asyncio.Event()
        self.gate.set()

    async def run(self, payloads, waits_s):
        self.batches.append(list(payloads))
        self.waits.append(list(waits_s))
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [ValueError(f"bad {p}") if p == "bad" else [x * 2 for x in p] for p in payloads]

    def run_here(self, payloads):
        self.inline_batches.append(list(payloads))
        return [ValueError(f"bad {p}") if p == "bad" else [x * 3 for x in p] for p in payloads]


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


async def held(config: BatchingConfig, clock: Clock | None = None):
    """A batcher whose runner holds its batches, with request [0] running: (batcher, runner, that request)."""
    execute = Recorder()
    batcher = Batcher(config, execute, clock=clock or Clock())
    execute.gate.clear()
    running = asyncio.ensure_future(batcher.submit([0], rows=1))
    await _settle()
    return batcher, execute, running


async def queued(batcher: Batcher, *payloads):
    """Submit each payload as a one-row request and let them reach the queue; their futures."""
    futures = [asyncio.ensure_future(batcher.submit(p, 1)) for p in payloads]
    await _settle()
    return futures


def test_requests_of_one_loop_turn_leave_together_from_an_idle_model():
    async def scenario():
        execute = Recorder()
        batcher = Batcher(BatchingConfig(max_batch_size=8, max_queue_delay_us=10**9, instances=1), execute,
                          clock=Clock())
        # three callers in the same turn: the idle model takes them as one batch, not the first alone
        results = await asyncio.gather(*(batcher.submit([i], rows=1) for i in (1, 2, 3)))
        await batcher.close()
        return execute.batches, results

    batches, results = run(scenario())
    assert batches == [[[1], [2], [3]]]
    assert results == [[2], [4], [6]]


def test_requests_arriving_while_busy_merge_and_split_exactly():
    async def scenario():
        execute = Recorder()
        batcher = Batcher(BatchingConfig(max_batch_size=8, max_queue_delay_us=10**9, instances=1), execute,
                          clock=Clock())
        execute.gate.clear()
        first = asyncio.ensure_future(batcher.submit([1], rows=1))
        await _settle()  # the idle model takes the first request alone, and is now busy
        rest = [asyncio.ensure_future(batcher.submit([i, i], rows=2)) for i in range(2, 6)]
        await _settle()
        assert batcher.waiting == 4 and batcher.executing == 1
        execute.gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return execute.batches, results

    batches, results = run(scenario())
    assert batches == [[[1]], [[2, 2], [3, 3], [4, 4], [5, 5]]]
    assert results == [[2], [4, 4], [6, 6], [8, 8], [10, 10]]


def test_queue_delay_expiry_dispatches_a_partial_batch():
    async def scenario():
        clock, execute = Clock(), Recorder()
        cfg = BatchingConfig(max_batch_size=8, max_queue_delay_us=500, instances=2)
        batcher = Batcher(cfg, execute, clock=clock)
        execute.gate.clear()
        busy = asyncio.ensure_future(batcher.submit([0], rows=1))
        await _settle()
        waiting = asyncio.ensure_future(batcher.submit([1], rows=1))
        await _settle()
        assert len(execute.batches) == 1  # a second instance is free, but the request waits for company
        clock.now += 0.0005
        await asyncio.sleep(0.002)  # the batcher's timer (real time) fires and sees the delay passed
        await _settle()
        assert len(execute.batches) == 2
        assert execute.waits == [[0.0], [pytest.approx(0.0005)]]  # by the batcher's clock
        execute.gate.set()
        await asyncio.gather(busy, waiting)
        await batcher.close()

    run(scenario())


def test_full_queue_refuses_with_queue_full():
    async def scenario():
        batcher, execute, running = await held(BatchingConfig(max_batch_size=1, max_queue_size=2, instances=1))
        queued = [asyncio.ensure_future(batcher.submit([i], rows=1)) for i in (1, 2)]
        await _settle()
        with pytest.raises(QueueFull, match="queue is full"):
            await batcher.submit([3], rows=1)
        execute.gate.set()
        await asyncio.gather(running, *queued)
        await batcher.close()

    run(scenario())


def test_expired_deadline_is_dropped_before_compute():
    async def scenario():
        clock = Clock()
        batcher, execute, running = await held(BatchingConfig(max_batch_size=4, instances=1), clock)
        late = asyncio.ensure_future(batcher.submit([1], rows=1, deadline=clock.now + 0.01))
        on_time = asyncio.ensure_future(batcher.submit([2], rows=1, deadline=clock.now + 60))
        await _settle()
        clock.now += 1.0
        execute.gate.set()
        with pytest.raises(DeadlineExpired):
            await late
        assert await on_time == [4]
        await running
        await batcher.close()
        return execute.batches

    batches = run(scenario())
    assert [1] not in [p for batch in batches for p in batch]


def test_request_larger_than_max_batch_is_refused():
    async def scenario():
        batcher = Batcher(BatchingConfig(max_batch_size=4), Recorder(), clock=Clock())
        with pytest.raises(InvalidInput, match="more than the model's max batch size 4"):
            await batcher.submit([1] * 5, rows=5)
        await batcher.close()

    run(scenario())


def test_failed_batch_fails_every_request_and_bad_request_fails_alone():
    async def failing():
        batcher = Batcher(BatchingConfig(max_batch_size=4, instances=1), Recorder(RuntimeError("boom")),
                          clock=Clock())
        results = await asyncio.gather(batcher.submit([1], 1), batcher.submit([2], 1), return_exceptions=True)
        await batcher.close()
        return results

    async def one_bad():
        execute = Recorder()
        batcher = Batcher(BatchingConfig(max_batch_size=4, instances=1), execute, clock=Clock())
        execute.gate.clear()
        first = asyncio.ensure_future(batcher.submit([1], 1))
        await _settle()
        bad = asyncio.ensure_future(batcher.submit("bad", 1))
        good = asyncio.ensure_future(batcher.submit([3], 1))
        await _settle()
        execute.gate.set()
        results = await asyncio.gather(first, bad, good, return_exceptions=True)
        await batcher.close()
        return results, execute.batches

    assert all(isinstance(r, RuntimeError) for r in run(failing()))
    results, batches = run(one_bad())
    assert results[0] == [2] and isinstance(results[1], ValueError) and results[2] == [6]
    assert batches[1] == ["bad", [3]]  # the bad request shared its batch and failed alone


def test_close_answers_queued_requests_then_refuses_new_ones():
    async def scenario():
        execute = Recorder()
        batcher = Batcher(BatchingConfig(max_batch_size=2, instances=1), execute, clock=Clock())
        execute.gate.clear()
        pending = [asyncio.ensure_future(batcher.submit([i], 1)) for i in range(5)]
        await _settle()
        closing = asyncio.ensure_future(batcher.close())
        await _settle()
        with pytest.raises(NotReady):
            await batcher.submit([9], 1)
        execute.gate.set()
        await closing
        return await asyncio.gather(*pending)

    assert run(scenario()) == [[0], [2], [4], [6], [8]]


def test_running_finished_waits_for_the_batches_running_now_only():
    async def scenario():
        batcher, execute, running = await held(BatchingConfig(max_batch_size=4, instances=1))
        finished = asyncio.ensure_future(batcher.running_finished())
        later = await queued(batcher, [1])  # waits for the instance
        assert not finished.done()
        execute.gate.set()
        execute.gate.clear()  # request [0]'s batch goes on; the next one is held
        await _settle()
        assert finished.done() and batcher.executing == 1 and not later[0].done()
        execute.gate.set()
        await batcher.close()
        return await running, await later[0]

    assert run(scenario()) == ([0], [2])


def test_a_cancelled_running_caller_leaves_the_batcher_working():
    async def scenario():
        execute = Recorder()
        batcher = Batcher(BatchingConfig(max_batch_size=4, instances=1), execute, clock=Clock())
        execute.gate.clear()
        first = asyncio.ensure_future(batcher.submit([1], 1))
        await _settle()  # first's batch is running
        first.cancel()
        await _settle()
        execute.gate.set()
        await _settle()
        assert await batcher.submit([2], 1) == [4]  # the model is not stuck "busy"
        await batcher.close()
        return first.cancelled()

    assert run(scenario())


def test_others_in_a_batch_are_answered_when_one_caller_is_cancelled():
    async def scenario():
        batcher, execute, running = await held(BatchingConfig(max_batch_size=4, instances=1))
        leaver, other = await queued(batcher, [1], [2])
        execute.gate.set()  # the first batch ends; the next takes both queued requests
        await running
        await _settle()
        assert execute.batches[1] == [[1], [2]]
        leaver.cancel()
        result = await other
        await batcher.close()
        return result

    assert run(scenario()) == [4]


def test_a_request_whose_caller_left_the_queue_is_dropped_before_compute():
    async def scenario():
        batcher, execute, running = await held(BatchingConfig(max_batch_size=4, instances=1))
        leaver, other = await queued(batcher, [1], [2])
        leaver.cancel()
        await _settle()
        execute.gate.set()
        result = await other
        await running
        await batcher.close()
        return result, execute.batches

    result, batches = run(scenario())
    assert result == [4] and [1] not in [p for b in batches for p in b]


def cheap() -> InlinePolicy:
    """The inline policy of a model measured to run far below the inline threshold."""
    return InlinePolicy(row_cost_s=0.0)


def test_the_policy_learns_the_cost_per_row_from_measured_batches():
    policy = InlinePolicy()
    assert not policy.runs_inline(1)  # pessimistic until a batch was measured
    for _ in range(20):
        policy.observe_cost(rows=10, seconds=10 * INLINE_BELOW_S / 100)
    assert policy.runs_inline(1) and not policy.runs_inline(200)


def test_a_lone_request_to_a_cheap_model_runs_inline_but_probes_for_load():
    async def scenario():
        execute, policy = Recorder(), cheap()
        batcher = Batcher(BatchingConfig(max_batch_size=4, instances=1), execute, clock=Clock(), inline=policy)
        results = [await batcher.submit([i], 1) for i in range(2 * PROBE_EVERY)]
        with pytest.raises(ValueError, match="bad"):
            await batcher.submit("bad", 1)  # a failed inline run fails its caller alone
        await batcher.close()
        return results, execute.batches, execute.inline_batches, policy.loaded

    results, off_loop, on_loop, loaded = run(scenario())
    probes = [i for i in range(2 * PROBE_EVERY) if (i + 1) % PROBE_EVERY == 0]
    assert off_loop == [[[i]] for i in probes]  # every PROBE_EVERY-th lone request ran off the loop
    assert len(on_loop) == 2 * PROBE_EVERY - len(probes) + 1
    assert results == [[i * 2] if i in probes else [i * 3] for i in range(2 * PROBE_EVERY)]
    assert not loaded  # each probe ran alone and nobody waited: no load seen


def test_a_probe_that_finds_company_keeps_the_model_loaded_until_the_load_is_gone():
    async def scenario():
        execute, policy = Recorder(), cheap()
        batcher = Batcher(BatchingConfig(max_batch_size=8, instances=1), execute, clock=Clock(), inline=policy)
        for i in range(PROBE_EVERY - 1):
            await batcher.submit([i], 1)  # inline
        execute.gate.clear()
        probe = asyncio.ensure_future(batcher.submit([100], 1))  # the probe runs off the loop...
        await _settle()
        company = [asyncio.ensure_future(batcher.submit([200 + i], 1)) for i in range(3)]  # ...and they queue
        await _settle()
        execute.gate.set()
        await asyncio.gather(probe, *company)
        loaded_after_company = policy.loaded
        inline_runs = len(execute.inline_batches)
        alone, still_loaded = [], []
        for i in range(CALM_BATCHES):  # loaded: through the queue, off the loop, each a batch of one
            alone.append(await batcher.submit([300 + i], 1))
            still_loaded.append(policy.loaded)
        again_inline = await batcher.submit([400], 1)
        await batcher.close()
        return (execute.batches, loaded_after_company, inline_runs, len(execute.inline_batches), alone,
                still_loaded, again_inline)

    batches, loaded, inline_before, inline_after, alone, still_loaded, again_inline = run(scenario())
    assert batches[:2] == [[[100]], [[200], [201], [202]]]
    assert loaded and inline_before == PROBE_EVERY - 1
    assert alone == [[(300 + i) * 2] for i in range(CALM_BATCHES)]
    assert batches[2:] == [[[300 + i]] for i in range(CALM_BATCHES)]
    assert still_loaded == [True] * (CALM_BATCHES - 1) + [False]  # calm long enough: back to inline
    assert again_inline == [1200] and inline_after == inline_before + 1


def test_a_model_too_costly_for_the_loop_never_runs_inline():
    async def scenario():
        execute = Recorder()
        costly = InlinePolicy(row_cost_s=INLINE_BELOW_S)
        batcher = Batcher(BatchingConfig(max_batch_size=4, instances=1), execute, clock=Clock(), inline=costly)
        results = [await batcher.submit([i], 1) for i in range(3)]
        await batcher.close()
        return results, execute.inline_batches

    assert run(scenario()) == ([[0], [2], [4]], [])


def test_an_inline_request_past_its_deadline_is_refused_before_compute():
    async def scenario():
        clock, execute = Clock(), Recorder()
        batcher = Batcher(BatchingConfig(max_batch_size=4, instances=1), execute, clock=clock, inline=cheap())
        with pytest.raises(DeadlineExpired):
            await batcher.submit([1], 1, deadline=clock.now - 0.001)
        await batcher.close()
        return execute.inline_batches

    assert run(scenario()) == []


def test_close_does_not_keep_queued_requests_waiting_for_company():
    async def scenario():
        batcher, execute, running = await held(BatchingConfig(max_batch_size=8, max_queue_delay_us=10**9, instances=2))
        waiting = asyncio.ensure_future(batcher.submit([1], 1))  # a free instance, but waits for company
        await _settle()
        assert len(execute.batches) == 1
        closing = asyncio.ensure_future(batcher.close())
        await _settle()
        dispatched = len(execute.batches)  # nobody else is coming: it leaves now
        execute.gate.set()
        await closing
        return dispatched, await running, await waiting

    assert run(scenario()) == (2, [0], [2])
