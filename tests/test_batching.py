"""BatchWhenFree: batches form when the model is free, grow with the load, never mix results."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.common.batching import BatchWhenFree, QueueFull


class SlowModel:
    """Doubles its inputs; each batch takes `seconds`; records the batches it saw."""

    def __init__(self, seconds: float = 0.05, fail_on: int | None = None, result=lambda i: 2 * i):
        self.seconds, self.fail_on, self.result = seconds, fail_on, result
        self.batches: list[list] = []

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [self.result(i) for i in items]


def test_requests_arriving_during_a_forward_ride_together_in_the_next_batch():
    async def scenario():
        model = SlowModel(seconds=0.1)
        batcher = BatchWhenFree(model, max_batch_size=16, batch_wait_timeout_s=0.0)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.02)  # the first batch (one item) is running now
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 11)]
        results = await asyncio.gather(first, *rest)
        return model.batches, results

    batches, results = asyncio.run(scenario())
    assert batches == [[0], list(range(1, 11))]
    assert results == [2 * i for i in range(11)]


def test_max_batch_size_caps_a_batch_and_the_rest_waits_for_the_next():
    async def scenario():
        model = SlowModel(seconds=0.01)
        batcher = BatchWhenFree(model, max_batch_size=4, batch_wait_timeout_s=0.0)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        return model.batches, results

    batches, results = asyncio.run(scenario())
    assert [len(b) for b in batches] == [4, 4, 2]
    assert results == [2 * i for i in range(10)]


def test_an_idle_model_waits_up_to_the_timeout_for_companions():
    async def scenario(timeout: float):
        model = SlowModel(seconds=0.0)
        batcher = BatchWhenFree(model, max_batch_size=8, batch_wait_timeout_s=timeout)
        tasks = []
        for i in range(3):
            tasks.append(asyncio.create_task(batcher.submit(i)))
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        return model.batches

    assert asyncio.run(scenario(0.2)) == [[0, 1, 2]]
    assert asyncio.run(scenario(0.0)) == [[0], [1], [2]]


def test_a_failing_batch_fails_its_callers_only_and_the_worker_goes_on():
    async def scenario():
        model = SlowModel(seconds=0.05, fail_on=3)
        batcher = BatchWhenFree(model, max_batch_size=2, batch_wait_timeout_s=0.0)
        outcomes = await asyncio.gather(
            *(batcher.submit(i) for i in range(6)), return_exceptions=True
        )
        after = await batcher.submit(7)
        return outcomes, after

    outcomes, after = asyncio.run(scenario())
    assert outcomes[:2] == [0, 2] and outcomes[4:] == [8, 10]
    assert all(isinstance(o, ValueError) for o in outcomes[2:4])
    assert after == 14


def test_cancelled_callers_are_dropped_before_their_batch_runs():
    async def scenario():
        model = SlowModel(seconds=0.05)
        batcher = BatchWhenFree(model, max_batch_size=8, batch_wait_timeout_s=0.0)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(batcher.submit(1))
        kept = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        return await first, await kept, model.batches

    assert asyncio.run(scenario()) == (0, 4, [[0], [2]])


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchWhenFree(SlowModel(), max_batch_size=0, batch_wait_timeout_s=0.0)


def test_size_of_counts_images_per_call_and_an_oversized_call_runs_alone():
    async def scenario():
        model = SlowModel(seconds=0.05, result=len)
        batcher = BatchWhenFree(model, max_batch_size=4, batch_wait_timeout_s=0.0, size_of=len)
        first = asyncio.create_task(batcher.submit([0]))
        await asyncio.sleep(0.01)
        calls = [[1, 2], [3], [4, 5], [6, 7, 8, 9, 10]]
        results = await asyncio.gather(first, *(batcher.submit(c) for c in calls))
        return [[len(call) for call in batch] for batch in model.batches], results

    batches, results = asyncio.run(scenario())
    # [1, 2] + [3] fill 3 of 4; [4, 5] would make 5: next batch; the 5-image call runs alone.
    assert batches == [[1], [2, 1], [2], [5]]
    assert results == [1, 2, 1, 2, 5]


def test_concurrent_batches_overlap_up_to_the_limit():
    async def scenario(slots: int):
        model = SlowModel(seconds=0.1)
        batcher = BatchWhenFree(
            model, max_batch_size=1, batch_wait_timeout_s=0.0, max_concurrent_batches=slots
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*(batcher.submit(i) for i in range(4)))
        return loop.time() - start

    assert asyncio.run(scenario(1)) >= 0.4
    assert asyncio.run(scenario(4)) < 0.3


def test_a_full_queue_refuses_at_once():
    async def scenario():
        model = SlowModel(seconds=0.1)
        batcher = BatchWhenFree(model, max_batch_size=1, batch_wait_timeout_s=0.0, max_queued=2)
        running = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)  # 0 is running; the queue holds 1 and 2
        queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit(3)
        return await asyncio.gather(running, *queued)

    assert asyncio.run(scenario()) == [0, 2, 4]


def test_model_calls_stay_under_the_grpc_message_limit():
    import numpy as np

    from serve_app.ingress.model_client import MAX_CALL_BYTES, transport_chunks

    batch = np.zeros((32, 3, 224, 224), dtype=np.uint8)  # 4.8 MB: over gRPC's 4 MiB default
    chunks = transport_chunks(batch)
    assert all(c.nbytes <= MAX_CALL_BYTES < 4 * 1024 * 1024 for c in chunks)
    assert sum(len(c) for c in chunks) == 32 and len(chunks) == 2
    huge = np.zeros((2, 3, 2000, 2000), dtype=np.uint8)  # one image alone over the limit
    assert [len(c) for c in transport_chunks(huge)] == [1, 1]
