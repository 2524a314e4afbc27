"""One place where every ingress replica's rollout counts add up (``/rollout``, ``/metadata``).

A one-replica deployment with no CPU reservation: ingress replicas send it their counts every
``PUSH_INTERVAL_S`` (a few hundred bytes), so each answer covers all replicas. Its counts live
in memory: if its replica restarts they start again from the next push (the rollout command then
sees a step with fewer requests and waits for more).
"""

from __future__ import annotations

from typing import Any

from ray import serve

from serve_app.rollout.stats import Key, Tally, VersionTally

PUSH_INTERVAL_S = 0.5


@serve.deployment(
    name="RolloutMonitor",
    num_replicas=1,
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0},
)
class RolloutMonitor:
    def __init__(self) -> None:
        self._tally = Tally()

    def add(self, entries: dict[Key, VersionTally]) -> None:
        self._tally.merge(entries)

    def snapshot(self) -> list[dict[str, Any]]:
        return self._tally.summaries()
