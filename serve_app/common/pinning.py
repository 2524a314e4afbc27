"""One replica's side of its deployment's pin (serve_app/common/pin.py says why pins exist):
load the pinned version on reconfigure, watch the pointer, switch with the others under
follow_latest, and say when this replica serves another version than the pin.

The model deployments (FaceAttributeModel, CandidateModel) and the FaceDetector use it alike:
each gives it how to load a version (``Loader``); it decides which version and when.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import posixpath
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from ray import serve

from model_store import ArtifactError, resolve_model_uri
from serve_app.common.pin import (
    FOLLOW_CHECK_S,
    FOLLOW_SWITCH_DELAY_S,
    MemoryKV,
    Pin,
    PinStore,
    RayKV,
    pointer_target,
)

logger = logging.getLogger("ray.serve")

LATEST_CHECK_S = 30.0  # how often a replica looks whether `latest` moved past its pin
# How a refused artifact is retried: Serve ignores a deploy of an unchanged config.
RETRY_HINT = (
    "Fix or replace the artifact, then change the deployment's user_config.reload (e.g. +1) "
    "and serve deploy (or kubectl apply): every replica looks at model_uri again"
)


class Versioned(Protocol):
    uri: str  # the version directory it was loaded from

    @property
    def version(self) -> str: ...


class PinConfig(Protocol):
    model_uri: str
    reload: int
    follow_latest: bool


L = TypeVar("L", bound=Versioned)


class PinnedArtifact(Generic[L]):
    """Which version a replica serves. ``load(version_uri)`` loads one (raising ArtifactError
    when it is refused), ``swap_in(loaded)`` makes it the one answering, ``refused(uri, error)``
    reports a refusal, ``mismatch(flag)`` publishes whether this replica disagrees with its pin.
    """

    def __init__(
        self,
        deploy_id: str | None,
        load: Callable[[str], Awaitable[L]],
        swap_in: Callable[[L], None],
        refused: Callable[[str, ArtifactError], None],
        mismatch: Callable[[bool], None],
    ):
        self._deploy_id = deploy_id
        self._load, self._swap_in, self._refused, self._mismatch = load, swap_in, refused, mismatch
        self.current: L | None = None  # the version answering now
        self.pin: Pin | None = None  # the version this deployment serves, as this replica knows
        self.config: PinConfig | None = None
        self.lock = asyncio.Lock()  # swaps, one at a time
        self._store: PinStore | None = None
        self._latest_uri: str | None = None  # what the store's pointer names, as last seen
        self._latest_checked = -math.inf
        self._watcher: asyncio.Task | None = None
        self._mismatch_logged = False

    def store(self) -> PinStore:
        """This deployment's pins, made on first use (the replica context names the app)."""
        if self._store is None:
            if self._deploy_id:
                context = serve.get_replica_context()
                names = (context.app_name, context.deployment)
                kv, deploy_id = RayKV(), self._deploy_id
            else:  # bound outside build_app (tests, bench): each replica resolves for itself
                names, kv, deploy_id = ("local", "local"), MemoryKV(), uuid.uuid4().hex
            self._store = PinStore(kv, *names, deploy_id)
        return self._store

    async def configure(self, config: PinConfig, force: bool = False) -> None:
        """Serve the pinned version of ``config.model_uri`` (resolved and pinned now if this is
        the deployment's first replica to see it). A refusal keeps the current version and is
        reported; with no version at all it raises, failing the replica's start."""
        self.config = config
        async with self.lock:
            await self._load_pinned(config, force)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _load_pinned(self, config: PinConfig, force: bool) -> None:
        pins = self.store()
        try:
            pin = await asyncio.to_thread(
                pins.pin, config.model_uri, config.reload, resolve_model_uri
            )
            active, _ = await asyncio.to_thread(pins.active, config.model_uri, config.reload)
            self.pin = active or pin
            if self.current is not None and self.pin.version_uri == self.current.uri and not force:
                return
            loaded = await self._load(self.pin.version_uri)
        except ArtifactError as e:
            self._refused(config.model_uri, e)
            if self.current is None:
                raise
            return
        self.current = loaded
        self._swap_in(loaded)

    # ---- watched: follow_latest, a newer version, a replica that disagrees ---------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_CHECK_S)
            try:
                await self.check()
            except Exception:  # the store or the GCS unreachable a moment: look again later
                logger.exception("checking the pinned version failed")

    async def check(self) -> None:
        config, pins = self.config, self.store()
        if config is None or self.pin is None:
            return
        now = time.monotonic()
        if config.follow_latest or now - self._latest_checked >= LATEST_CHECK_S:
            self._latest_checked = now
            self._latest_uri = await asyncio.to_thread(pointer_target, self.pin)
        active, upcoming = await asyncio.to_thread(pins.active, config.model_uri, config.reload)
        moved = active is not None and self._latest_uri not in (None, active.version_uri)
        if config.follow_latest and upcoming is None and moved:
            upcoming = await asyncio.to_thread(
                pins.advance, active, config.reload, self._latest_uri, FOLLOW_SWITCH_DELAY_S
            )
        if upcoming is not None and upcoming.switch_at is not None:
            await self._switch_at(upcoming, config)
        elif active is not None and active != self.pin:
            self.pin = active  # another generation became active while this replica slept
        self._flag_mismatch()

    async def _switch_at(self, upcoming: Pin, config: PinConfig) -> None:
        """follow_latest: load the next version beside the current one, then swap at the pin's
        switch_at, when every other replica swaps too."""
        if self.current is not None and self.current.uri == upcoming.version_uri:
            return
        try:
            loaded = await self._load(upcoming.version_uri)
        except ArtifactError as e:
            self._refused(upcoming.version_uri, e)
            return
        await asyncio.sleep(max(0.0, (upcoming.switch_at or 0.0) - time.time()))
        async with self.lock:
            if self.config is config:  # no deploy came meanwhile
                self.pin, self.current = upcoming, loaded
                self._swap_in(loaded)

    def _flag_mismatch(self) -> None:
        """A replica serving another version than its deployment's pin (its artifact refused
        on this replica only, say): a metric and a log line, not a failed health check (a
        restart would leave it with no version at all while the others serve)."""
        current, pin = self.current, self.pin
        mismatch = current is not None and pin is not None and current.uri != pin.version_uri
        self._mismatch(mismatch)
        if mismatch and not self._mismatch_logged:
            logger.warning(
                "this replica serves %s but its deployment is pinned to %s",
                current.version,
                pin.version,
            )
        self._mismatch_logged = mismatch

    def state(self) -> dict[str, Any] | None:
        """/metadata's ``pin``: the pinned version, since when, and whether ``latest`` moved
        past it (no paths: the store's location stays private)."""
        pin, config, current = self.pin, self.config, self.current
        if pin is None or config is None or current is None:
            return None
        latest = posixpath.basename(self._latest_uri.rstrip("/")) if self._latest_uri else None
        newer = latest is not None and latest != pin.version
        hint = None
        if newer and not config.follow_latest:
            hint = (
                f"a newer version {latest} exists: roll it out with "
                "`python -m serve_app.rollout --to latest`"
            )
        pinned_at = datetime.datetime.fromtimestamp(pin.pinned_at, datetime.timezone.utc)
        return {
            "version": pin.version,
            "pinned_at": pinned_at.isoformat(),
            "generation": pin.generation,
            "follow_latest": config.follow_latest,
            "reload": config.reload,
            "latest": latest,
            "newer_available": newer,
            "hint": hint,
            "serves_pinned": current.uri == pin.version_uri,
        }
