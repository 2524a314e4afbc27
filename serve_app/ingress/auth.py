"""API keys and per-key quotas at the ingress: who may call, and how much.

Off unless ``args.api_keys_file`` names a key file (config.yaml: off, on loopback; the cluster
manifests: on, from a Kubernetes Secret). The file holds names and sha256 hashes, never keys::

    keys:
      - name: alice
        sha256: 9f86d08...            # python -m serve_app.keys add alice --file keys.yaml
        requests_per_second: 20       # optional quotas
        images_per_minute: 600

A request names its key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; the
ingress hashes it and looks the hash up (the lookup's timing depends on the hash, which tells an
attacker nothing about a valid key; the match is then confirmed with hmac.compare_digest). A
missing or unknown key is a 401 with ``WWW-Authenticate``; /healthz, /readyz, the page, /docs
and /openapi.json stay open (probes, and how to get a key in).

Rotation without a restart: the file is looked at (one stat) at most every RELOAD_S on the
request path; a changed file is read again (a Kubernetes Secret update swaps it; ``python -m
serve_app.keys`` rewrites it atomically). A file that turns unreadable or invalid keeps the last
good keys (and says so in the log); a file missing at start fails the deploy (fail closed).

Quotas: a token bucket per key and kind on each ingress replica (requests: ``rps`` tokens a
second, a second's worth of burst; images: ``images_per_minute`` a minute, a minute's worth of
burst). Across replicas: every PUSH_INTERVAL_S each replica sends what it admitted since its
last push to the RolloutMonitor (the app's shared counters) and gets the totals back, and takes
the other replicas' share out of its own buckets. So each replica admits against the key's
whole budget minus what the others had reported; what they admitted since is not yet known:
with N ingress replicas, over any window a key can be admitted at most (N - 1) x (one bucket's
burst + one push interval of its rate) beyond its quota (tests/test_auth.py measures it).
Exceeding a quota is a 429 ``rate_limited`` with Retry-After, never the 503 of overload.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serve_app.common.errors import ApiError

logger = logging.getLogger("ray.serve")

RELOAD_S = 2.0  # at most this long between a key file's change and every request seeing it
REALM = 'Bearer realm="face-attributes"'


class KeySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$", description="shown in metrics and logs")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the key, hex")
    requests_per_second: float | None = Field(default=None, gt=0)
    images_per_minute: int | None = Field(default=None, gt=0)


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeySpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> KeyFile:
        names = [k.name for k in self.keys]
        hashes = [k.sha256 for k in self.keys]
        if len(set(names)) != len(names) or len(set(hashes)) != len(hashes):
            raise ValueError("each key needs its own name and its own hash")
        return self


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_key_file(path: str) -> KeyFile:
    """Raises ValueError naming the file and what is wrong (never a key: there is none in it)."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
        return KeyFile.model_validate(raw)
    except (OSError, yaml.YAMLError, ValidationError) as e:
        raise ValueError(f"api_keys_file {path}: {e}") from e


def presented_key(headers) -> str | None:
    """The key a request names: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    value = headers.get("x-api-key")
    return value.strip() if value and value.strip() else None


class KeyRing:
    """The keys in force, read from ``path`` and read again when the file changes."""

    def __init__(self, path: str):
        self.path = path
        self._by_hash: dict[str, KeySpec] = {}
        self._stamp: tuple | None = None
        self._checked = -math.inf
        self._load(self._file_stamp())  # fail closed: a missing or bad file stops the deploy

    @property
    def specs(self) -> list[KeySpec]:
        return list(self._by_hash.values())

    def _file_stamp(self) -> tuple:
        st = os.stat(self.path)  # follows symlinks: a Secret's ..data swap changes the target
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self, stamp: tuple) -> None:
        keys = read_key_file(self.path)
        self._by_hash = {k.sha256: k for k in keys.keys}
        self._stamp = stamp
        logger.info("API keys loaded from %s: %d keys", self.path, len(self._by_hash))

    def refresh(self, now: float) -> None:
        """At most every RELOAD_S: read the file again if it changed."""
        if now - self._checked < RELOAD_S:
            return
        self._checked = now
        try:
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._load(stamp)
        except (OSError, ValueError) as e:
            logger.error("API key file not reloaded, the last keys stay in force: %s", e)

    def identify(self, headers, now: float) -> KeySpec:
        """The key's spec, or ApiError 401."""
        self.refresh(now)
        key = presented_key(headers)
        if key is None:
            raise unauthorized(
                "this service needs an API key: send `Authorization: Bearer <key>` or "
                "`X-API-Key: <key>`"
            )
        digest = hash_key(key)
        spec = self._by_hash.get(digest)
        if spec is None or not hmac.compare_digest(spec.sha256, digest):
            raise unauthorized("the API key is not valid (or was revoked)")
        return spec


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": REALM})


def rate_limited(name: str, what: str, wait_s: float) -> ApiError:
    retry = max(1, math.ceil(wait_s))
    return ApiError(
        429,
        "rate_limited",
        f"key {name!r} is over its quota of {what}; retry after {retry} s",
        retry_after=retry,
    )


@dataclass
class Bucket:
    """``capacity`` tokens, refilled at ``rate`` a second; may go below zero when the other
    replicas' admissions are taken out."""

    capacity: float
    rate: float
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, n: float, now: float) -> float:
        """Take n tokens and return 0, or return the seconds until n are there (taking none)."""
        self.refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


@dataclass
class Quotas:
    """This replica's buckets, and what it admitted since its last push (per key name:
    [requests, images])."""

    buckets: dict[tuple[str, str], Bucket] = field(default_factory=dict)
    admitted: Counter = field(default_factory=Counter)  # (name, kind) -> since the last push
    totals: dict[str, list[float]] = field(default_factory=dict)  # as the monitor last said
    synced: bool = False  # a first answer only sets where the totals stand

    def _bucket(self, name: str, kind: str, per_second: float, burst: float, now: float):
        bucket = self.buckets.get((name, kind))
        if bucket is None or (bucket.rate, bucket.capacity) != (per_second, burst):
            bucket = Bucket(burst, per_second, burst, now)  # new key, or its quota changed
            self.buckets[(name, kind)] = bucket
        return bucket

    def admit_request(self, spec: KeySpec, now: float) -> None:
        if spec.requests_per_second is None:
            return
        rps = spec.requests_per_second
        wait = self._bucket(spec.name, "requests", rps, max(1.0, rps), now).take(1, now)
        if wait:
            raise rate_limited(spec.name, f"{rps:g} requests a second", wait)
        self.admitted[(spec.name, "requests")] += 1

    def admit_images(self, spec: KeySpec, count: int, now: float) -> None:
        if spec.images_per_minute is None:
            return
        per_minute = spec.images_per_minute
        bucket = self._bucket(spec.name, "images", per_minute / 60, float(per_minute), now)
        wait = bucket.take(count, now)
        if wait:
            raise rate_limited(spec.name, f"{per_minute} images a minute", wait)
        self.admitted[(spec.name, "images")] += count

    def take_usage(self) -> dict[str, list[float]]:
        """What this replica admitted since the last push, {name: [requests, images]}."""
        usage: dict[str, list[float]] = {}
        for (name, kind), n in self.admitted.items():
            usage.setdefault(name, [0.0, 0.0])[0 if kind == "requests" else 1] += n
        self.admitted.clear()
        return usage

    def give_back(self, usage: dict[str, list[float]]) -> None:
        """A push the monitor refused: its usage goes with the next one."""
        for name, (requests, images) in usage.items():
            self.admitted[(name, "requests")] += requests
            self.admitted[(name, "images")] += images

    def apply_totals(self, totals: dict[str, list[float]], sent: dict[str, list[float]]) -> None:
        """The monitor's totals after this replica's push: what grew beyond this replica's own
        push was admitted by the others; it leaves this replica's buckets."""
        for name, (requests, images) in totals.items() if self.synced else ():
            before = self.totals.get(name, [0.0, 0.0])
            mine = sent.get(name, [0.0, 0.0])
            others = (requests - before[0] - mine[0], images - before[1] - mine[1])
            for kind, n in zip(("requests", "images"), others):
                bucket = self.buckets.get((name, kind))
                if bucket is not None and n > 0:
                    bucket.tokens -= n
        self.totals = {name: list(values) for name, values in totals.items()}
        self.synced = True


def now() -> float:
    return time.monotonic()
