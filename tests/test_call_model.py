"""call_model's wait for a replica to take a call: bounded while the deployment has stopped
answering (a lost node: a fast 503), not while it is busy answering (a queue: wait).

Stand-ins for a DeploymentHandle method and its DeploymentResponse, so the timings are exact
(tests/test_serving_http.py has the same case through real Serve)."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve_app.common.errors import ApiError
from serve_app.ingress import model_client
from serve_app.ingress.model_client import ASSIGN_TIMEOUT_S, call_model


class FakeResponse:
    """Taken by a replica after ``assign_after`` s (never: None), then answers ``answer``."""

    def __init__(self, assign_after: float | None, answer: str):
        self.answer, self.cancelled = answer, False
        self.taken_at = None if assign_after is None else time.monotonic() + assign_after

    async def _fetch_future_result_async(self) -> None:
        if self.taken_at is None:
            await asyncio.Event().wait()  # no replica ever takes it
        await asyncio.sleep(max(0.0, self.taken_at - time.monotonic()))

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self):
        yield from self._fetch_future_result_async().__await__()
        return self.answer


class FakeMethod:
    deployment_name = "FakeModel"

    def __init__(self, assign_after: float | None):
        self.assign_after = assign_after
        self.responses: list[FakeResponse] = []

    def remote(self, *args) -> FakeResponse:
        self.responses.append(FakeResponse(self.assign_after, f"answer to {args}"))
        return self.responses[-1]


@pytest.fixture(autouse=True)
def fresh_answers(monkeypatch):
    monkeypatch.setattr(model_client, "_last_answer", {}, raising=False)


async def timed(coro) -> tuple[object, float]:
    start = time.perf_counter()
    try:
        return await coro, time.perf_counter() - start
    except ApiError as e:
        return e, time.perf_counter() - start


def test_a_busy_deployment_that_is_answering_keeps_the_call_waiting():
    """Old code: 503 model_unavailable "no model replica is running" after 1 s, although the
    deployment had answered a moment before and took the call 1.8 s in. (The last other
    answer, at 1.5 s, keeps the answering window open past 1.8 s: no event loop lag closes it
    first.)"""

    async def scenario():
        await call_model(FakeMethod(assign_after=0.0), 1)  # the deployment answers
        busy = FakeMethod(assign_after=1.8)
        answers = []
        for after in (0.5, 1.0, 1.5):  # its other calls keep finishing while this one waits
            answers.append(asyncio.create_task(call_model(FakeMethod(assign_after=after), 2)))
        result = await timed(call_model(busy, 3))
        await asyncio.gather(*answers)
        return result

    answer, seconds = asyncio.run(scenario())
    assert answer == "answer to (3,)", answer
    assert 1.7 < seconds < 2.5


def test_a_deployment_that_never_answered_gets_a_fast_503():
    async def scenario():
        return await timed(call_model(FakeMethod(assign_after=None), 1))

    error, seconds = asyncio.run(scenario())
    assert isinstance(error, ApiError) and error.code == "model_unavailable", error
    assert error.retry_after and "answering" in error.detail
    assert ASSIGN_TIMEOUT_S <= seconds < ASSIGN_TIMEOUT_S + 0.5


def test_a_deployment_that_stopped_answering_gets_its_503_within_the_window():
    """A lost node: the last answer came just before; calls waiting then get their 503 once
    the answering window has passed, well inside a client's patience."""

    async def scenario():
        await call_model(FakeMethod(assign_after=0.0), 1)
        stuck = FakeMethod(assign_after=None)
        result = await timed(call_model(stuck, 2))
        return result, stuck.responses[0].cancelled

    (error, seconds), cancelled = asyncio.run(scenario())
    assert isinstance(error, ApiError) and error.code == "model_unavailable", error
    assert cancelled  # the call is withdrawn from Serve's queue, not left to run later
    assert seconds < model_client.ANSWERING_WINDOW_S + model_client.ASSIGN_RECHECK_S + 0.3


def test_waiting_while_answering_is_capped(monkeypatch):
    monkeypatch.setattr(model_client, "ASSIGN_LIMIT_S", 1.5)

    async def scenario():
        stuck = FakeMethod(assign_after=None)
        waiting = asyncio.create_task(timed(call_model(stuck, 1)))
        while not waiting.done():  # the deployment keeps answering other calls
            await call_model(FakeMethod(assign_after=0.0), 2)
            await asyncio.sleep(0.1)
        return await waiting

    error, seconds = asyncio.run(scenario())
    assert isinstance(error, ApiError) and error.code == "overloaded", error
    assert 1.5 <= seconds < 2.2
