"""BatchWhenFree: batches form when the model is free, grow with the load, never mix results."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.batching import BatchWhenFree


class SlowModel:
    """Doubles its inputs; each batch takes `seconds`; records the batches it saw."""

    def __init__(self, seconds: float = 0.05, fail_on: int | None = None):
        self.seconds, self.fail_on = seconds, fail_on
        self.batches: list[list[int]] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [2 * i for i in items]


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
