"""Per request, during a rollout: which version answers, which gets a copy, and the tally.

Client-facing rules: a request the candidate fails (5xx, a lost replica, anything unexpected)
is answered by the stable version instead, so a bad candidate costs clients latency, never an
error; copies sent for comparison run after the answer, off the client's path, at most
``max_copies_in_flight`` per ingress replica (past it they are skipped and counted).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ray.serve.handle import DeploymentHandle

from serve_app.common.errors import ApiError
from serve_app.common.metrics import VersionMetrics
from serve_app.common.protocol import Prediction, ServiceTime
from serve_app.rollout.compare import Comparison, compare
from serve_app.rollout.config import Role, RolloutConfig
from serve_app.rollout.monitor import PUSH_INTERVAL_S
from serve_app.rollout.router import route
from serve_app.rollout.stats import Tally

logger = logging.getLogger("ray.serve")

PredictOn = Callable[[Role, bytes], Awaitable[Prediction]]


class SharedCounters(Protocol):
    """Counts an ingress replica shares with the others through the monitor's push."""

    def take_usage(self) -> dict[str, list[float]]: ...

    def give_back(self, usage: dict[str, list[float]]) -> None: ...

    def apply_totals(
        self, totals: dict[str, list[float]], sent: dict[str, list[float]]
    ) -> None: ...


MONITOR_TIMEOUT_S = 5.0


class RolloutTraffic:
    def __init__(
        self,
        predict_on: PredictOn,
        monitor: DeploymentHandle | None,
        metrics: VersionMetrics | None = None,
        shared: SharedCounters | None = None,
    ):
        """shared: other counters that travel with each push (the API keys' quotas)."""
        self._predict_on = predict_on
        self._monitor = monitor
        self._metrics = metrics
        self._shared = shared
        self.config = RolloutConfig()  # as last read from the monitor
        self._tally = Tally()
        self._versions: dict[str, str] = {}  # role -> version it last answered with
        self._copies_in_flight = 0
        self._tasks: set[asyncio.Task] = set()  # copies and the pusher: kept from the GC
        self._pusher: asyncio.Task | None = None
        self._rng = random.Random()

    @property
    def active(self) -> bool:
        return self.config.mode != "off"

    def start(self) -> None:
        """Begin reading the settings (and sending counts) every PUSH_INTERVAL_S; called on the
        first request, when the replica's event loop runs."""
        if self._monitor is not None and (self._pusher is None or self._pusher.done()):
            self._pusher = asyncio.get_running_loop().create_task(self._push_forever())
            self._keep(self._pusher)

    async def predict(self, image: bytes, client_key: str | None = None) -> Prediction:
        plan = route(self.config, client_key, self._rng)
        if plan.serve == "candidate":
            try:
                answer = await self._answer("candidate", image)
            except ApiError as e:
                if e.status < 500:
                    raise  # the image's fault: the stable would refuse it too
                return await self._answer("stable", image)
            except Exception:
                return await self._answer("stable", image)
        else:
            answer = await self._answer("stable", image)
        if plan.copy_to is not None:
            self._send_copy(plan.copy_to, image, answer, plan.serve)
        return answer

    async def _answer(self, role: Role, image: bytes) -> Prediction:
        start = time.perf_counter()
        try:
            answer = await self._predict_on(role, image)
        except ApiError as e:
            if e.status >= 500:
                self._record(role, None, time.perf_counter() - start)
            raise
        except Exception:
            self._record(role, None, time.perf_counter() - start)
            raise
        self._record(role, answer.version, time.perf_counter() - start, answer.service)
        return answer

    def _record(
        self, role: Role, version: str | None, seconds: float, service: ServiceTime | None = None
    ) -> None:
        """version None: the call failed (the role's last known version is charged)."""
        if version is not None:
            self._versions[role] = version
        charged = version or self._versions.get(role, "unknown")
        tally = self._tally.of(self.config.step, role, charged)
        tally.observe(seconds, error=version is None, service=service)
        if self._metrics is not None:
            self._metrics.observe(role, charged, seconds, error=version is None)

    def _send_copy(self, role: Role, image: bytes, answer: Prediction, answered_by: Role) -> None:
        if self._copies_in_flight >= self.config.max_copies_in_flight:
            candidate = answer.version if answered_by == "candidate" else None
            version = candidate or self._versions.get("candidate", "unknown")
            self._tally.of(self.config.step, "candidate", version).copies_skipped += 1
            return
        self._copies_in_flight += 1
        self._keep(asyncio.create_task(self._compare_copy(role, image, answer, answered_by)))

    async def _compare_copy(
        self, role: Role, image: bytes, answer: Prediction, answered_by: Role
    ) -> None:
        try:
            other = await self._answer(role, image)
        except Exception:
            return  # charged to that version by _answer
        finally:
            self._copies_in_flight -= 1
        stable, candidate = (answer, other) if answered_by == "stable" else (other, answer)
        self._record_comparison(candidate.version, compare(stable, candidate))

    def _record_comparison(self, candidate_version: str, comparison: Comparison) -> None:
        self._tally.of(self.config.step, "candidate", candidate_version).add(comparison)
        if self._metrics is not None:
            self._metrics.compared(candidate_version, comparison)

    # ---- counts to the monitor ---------------------------------------------------------------

    def _keep(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push_forever(self) -> None:
        while True:
            await asyncio.sleep(PUSH_INTERVAL_S)
            await self.push()

    async def push(self) -> None:
        """Send the counts gathered since the last push and take the current settings back.
        Refused counts are kept for the next push; after a timeout they are dropped (the
        monitor may have added them). Without an answer the last settings stay."""
        if self._monitor is None:
            return
        entries = self._tally.take()
        usage = self._shared.take_usage() if self._shared is not None else {}
        try:
            settings, totals = await asyncio.wait_for(
                self._monitor.add.remote(entries, usage), MONITOR_TIMEOUT_S
            )
        except asyncio.TimeoutError:
            logger.warning("rollout monitor did not answer in %.0f s", MONITOR_TIMEOUT_S)
            return
        except Exception as e:
            logger.warning("rollout monitor refused counts (kept for the next push): %s", e)
            self._tally.merge(entries)
            if self._shared is not None:
                self._shared.give_back(usage)
            return
        if self._shared is not None:
            self._shared.apply_totals(totals, usage)
        if settings != self.config.model_dump():
            self.config = RolloutConfig.model_validate(settings)

    async def snapshot(self) -> dict[str, Any]:
        """This replica's settings and the counts of every replica (those pushed so far)."""
        versions: list[dict[str, Any]] = []
        if self._monitor is not None:
            await self.push()
            versions = await asyncio.wait_for(self._monitor.snapshot.remote(), MONITOR_TIMEOUT_S)
        return {"config": self.config.model_dump(), "versions": versions}
