"""The rollout's settings: the ``user_config`` of the RolloutMonitor deployment in config.yaml,
changed by ``python -m serve_app.rollout`` through ``serve deploy``; ingress replicas read them
from the monitor every PUSH_INTERVAL_S (serve_app/rollout/monitor.py says why not their own
user_config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["stable", "candidate"]
CANDIDATE_DEPLOYMENT = "CandidateModel"
STABLE_DEPLOYMENT = "FaceAttributeModel"


class RolloutConfig(BaseModel):
    """Where the candidate's traffic comes from. ``off``: the candidate gets nothing (and has no
    replica). ``shadow``: ``percent`` of requests are also sent to the candidate; its answers
    are compared with the stable's and never returned. ``canary``: the candidate answers
    ``percent`` of requests (the stable answers if it fails), each also sent to the stable for
    comparison (``compare_percent`` of them)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "shadow", "canary"] = "off"
    percent: float = Field(default=0.0, ge=0.0, le=100.0, description="share of requests, %")
    step: str = Field(
        default="", max_length=64, description="label of the rollout step the counters go under"
    )
    sticky_header: str | None = Field(
        default="X-Client-Id",
        description="a request with this header is routed by a hash of its value: one client "
        "sees one version for the whole step (None: every request draws anew)",
    )
    compare_percent: float = Field(
        default=100.0,
        ge=0.0,
        le=100.0,
        description="canary: share of the candidate's requests also sent to the stable, %",
    )
    max_copies_in_flight: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="comparison copies an ingress replica keeps open; past it copies are "
        "skipped (counted), never queued behind client requests",
    )

    @model_validator(mode="after")
    def _off_means_nothing(self) -> RolloutConfig:
        if self.mode == "off" and self.percent:
            raise ValueError("mode off sends the candidate nothing: percent must be 0")
        return self


class MonitorConfig(BaseModel):
    """``user_config`` of the RolloutMonitor deployment."""

    model_config = ConfigDict(extra="forbid")

    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
