"""Micro-batching that closes a batch when the model is free, not when the first request lands.

Ray's ``@serve.batch`` (2.60) closes a batch ``batch_wait_timeout_s`` after its first request
even while the previous batch is still running, and queues it behind that one. On CPU, where a
forward takes tens of ms, that measured mostly batches of one at saturation (resnet34, 32
clients: 141 of 158 batches held a single image, 12 req/s against a 22 img/s limit). Here
requests keep queueing while a forward runs and the next batch takes everything that waited, up
to ``max_batch_size``: batches grow with the load by themselves. ``batch_wait_timeout_s`` only
holds back a batch whose oldest request is younger than it (an idle model waiting for
companions); 0 runs at once, which is what a CPU model wants at low load.

Used twice: the ingress gathers decoded images into one model call per batch (up to
``max_concurrent_batches`` calls in flight), and the model gathers those calls into one forward
pass (``size_of`` counts the images in a call).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    size: int
    arrived: float = field(default_factory=time.monotonic)


class QueueFull(Exception):
    """More items are waiting than ``max_queued``: the caller should shed load (503)."""


class BatchWhenFree(Generic[T, R]):
    """``await submit(item)`` from many coroutines; ``run_batch(items)`` sees them in batches,
    at most ``max_concurrent_batches`` at a time, and returns one result per item, in order.

    ``size_of(item)`` is what counts against ``max_batch_size`` (default 1 per item); a single
    item larger than that still forms a batch of its own.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[list[R]]],
        max_batch_size: int,
        batch_wait_timeout_s: float,
        *,
        max_concurrent_batches: int = 1,
        max_queued: int | None = None,
        size_of: Callable[[T], int] | None = None,
    ):
        if max_concurrent_batches < 1:
            raise ValueError("max_concurrent_batches must be >= 1")
        self._run_batch = run_batch
        self._size_of = size_of or (lambda _: 1)
        self._queue: deque[_Pending[T, R]] = deque()
        self._queued_size = 0
        self._arrival = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._running: set[asyncio.Task] = set()
        self._worker: asyncio.Task | None = None
        self.max_queued = max_queued
        self.configure(max_batch_size, batch_wait_timeout_s)

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        """Takes effect from the next batch on."""
        if max_batch_size < 1 or batch_wait_timeout_s < 0:
            raise ValueError("max_batch_size must be >= 1 and batch_wait_timeout_s >= 0")
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s

    async def submit(self, item: T) -> R:
        size = self._size_of(item)
        if self.max_queued is not None and self._queued_size + size > self.max_queued:
            raise QueueFull(f"{self._queued_size} already waiting (max_queued={self.max_queued})")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, future, size))
        self._queued_size += size
        self._arrival.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return await future

    async def _work(self) -> None:
        while True:
            await self._until_batch_ready()
            await self._slots.acquire()  # items keep queueing while every slot is busy
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)  # a strong reference until it is done
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _until_batch_ready(self) -> None:
        """Until something is queued and either the batch is full or its oldest request has
        waited batch_wait_timeout_s."""
        while True:
            self._arrival.clear()
            if self._queue:
                full = self._queued_size >= self.max_batch_size
                waited = time.monotonic() - self._queue[0].arrived
                remaining = self.batch_wait_timeout_s - waited
                if full or remaining <= 0:
                    return
                timeout: float | None = remaining
            else:
                timeout = None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), timeout)

    def _take(self) -> list[_Pending[T, R]]:
        batch, size = [], 0
        while self._queue:
            if batch and size + self._queue[0].size > self.max_batch_size:
                break
            pending = self._queue.popleft()
            self._queued_size -= pending.size
            if not pending.future.done():  # the caller went away (cancelled): skip its work
                batch.append(pending)
                size += pending.size
        return batch

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        try:
            results = await self._run_batch([p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)}")
        except Exception as e:  # every caller in the batch gets the error; the worker goes on
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        for p, result in zip(batch, results):
            if not p.future.done():
                p.future.set_result(result)
