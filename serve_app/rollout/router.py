"""Which version answers a request and which one gets a copy for comparison."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from serve_app.rollout.config import Role, RolloutConfig


@dataclass(frozen=True)
class Route:
    serve: Role
    copy_to: Role | None  # the other version, sent the same image to compare answers


STABLE_ONLY = Route("stable", None)


def draw(client_key: str | None, rng: random.Random) -> float:
    """A number in [0, 100): a hash of the client's key (sticky), else random. Not salted by
    step: a client on the candidate at 5% stays on it at 25% and 100%, never flipping back."""
    if client_key is None:
        return rng.random() * 100.0
    digest = hashlib.blake2b(client_key.encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64 * 100.0


def route(config: RolloutConfig, client_key: str | None, rng: random.Random) -> Route:
    if config.mode == "off" or config.percent <= 0:
        return STABLE_ONLY
    if draw(client_key, rng) >= config.percent:
        return STABLE_ONLY
    if config.mode == "shadow":
        return Route("stable", "candidate")
    compare = rng.random() * 100.0 < config.compare_percent
    return Route("candidate", "stable" if compare else None)
