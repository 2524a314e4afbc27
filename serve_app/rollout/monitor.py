"""The app's shared counters: the rollout's settings and counts, and the API keys' quota usage,
where every ingress replica's add up.

A one-replica deployment with no CPU reservation. Its ``user_config`` holds the rollout settings
(``rollout:``, serve_app/rollout/config.py); every ``PUSH_INTERVAL_S`` each ingress replica
sends it the counts gathered since (a few hundred bytes) and gets the settings back, so a
``serve deploy`` of new settings reaches every ingress within about that interval.

Why not the Ingress's own ``user_config``: reconfiguring the Ingress takes its replica out of
HAProxy's server list for ~1.5 s (measured: 389-427 requests a second answered 503 by HAProxy
at each change under 4 clients; /tmp/probe503.py in the commit message), so every rollout step
would fail requests. Reconfiguring this deployment touches no request path. Cost: two small
handle calls a second per ingress replica.

Counts live in memory: if the replica restarts they start again from the next push (the rollout
command then sees a step with fewer requests and waits for more); ingress replicas keep the
last settings they read until it answers again.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from serve_app.rollout.config import MonitorConfig
from serve_app.rollout.stats import Key, Tally, VersionTally

PUSH_INTERVAL_S = 0.5


@serve.deployment(
    name="RolloutMonitor",
    num_replicas=1,
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0},
    user_config=MonitorConfig().model_dump(),
)
class RolloutMonitor:
    def __init__(self) -> None:
        self._tally = Tally()
        self._settings = MonitorConfig().rollout.model_dump()
        # API keys' admissions, summed over the ingress replicas (serve_app/ingress/auth.py):
        # {key name: [requests, images]} since this replica started.
        self._usage: dict[str, list[float]] = {}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """New rollout settings (validated: a bad value fails the deploy, naming the key)."""
        self._settings = MonitorConfig.model_validate(user_config or {}).rollout.model_dump()

    def add(
        self, entries: dict[Key, VersionTally], usage: dict[str, list[float]] | None = None
    ) -> tuple[dict[str, Any], dict[str, list[float]]]:
        """An ingress replica's counts and quota usage in; the rollout settings and the usage
        totals out."""
        self._tally.merge(entries)
        for name, (requests, images) in (usage or {}).items():
            total = self._usage.setdefault(name, [0.0, 0.0])
            total[0] += requests
            total[1] += images
        return self._settings, self._usage

    def snapshot(self) -> list[dict[str, Any]]:
        return self._tally.summaries()
