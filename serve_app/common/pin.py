"""Which artifact version a model deployment serves: decided once per deploy, never per replica.

``model_uri: <store>/<name>/latest`` names a pointer that training moves. If each replica resolved
it when it started, a restart, a scale-up or a replacement on another node after a training run
would serve a version nobody deployed, skipping the rollout's gate, and two replicas could answer
from two versions at once. So the resolution is made once and kept where every replica reads it:

- **The deploy**: ``build_app`` draws a ``deploy_id`` each time Serve builds the application (a new
  application, ``serve run``, a change of its ``args``: these restart every replica anyway) and
  binds it into the model deployments' init args. Serve keeps init args in its controller's
  checkpoint, so every replica started later (autoscaling, a restart, a replacement node) gets
  the same id, and a restarted controller recovers it without rebuilding.
- **The pin**: the first replica of (application, deployment, deploy_id, model_uri, reload)
  resolves the pointer and records the version in Ray's GCS key-value store (the store Serve's
  controller checkpoints to; namespace ``face_attributes``) with put-if-absent; every replica,
  then and later, loads the version recorded there. The GCS outlives replicas and the controller
  (and, with GCS fault tolerance on KubeRay, the head node).
- **Changing it** takes an operator's action: a deploy whose ``model_uri`` or ``reload`` differs
  is a new key, resolved anew (``reload`` is also how a refused artifact is retried after it was
  fixed: Serve ignores a deploy of an unchanged config); the rollout command names an explicit
  version (``--to latest`` resolves the pointer once, then walks the gated rollout).
- **Following ``latest`` on purpose** (``follow_latest: true``, off by default): replicas look
  at the pointer every FOLLOW_CHECK_S; the first to see it move writes the next generation of the
  pin with a ``switch_at`` time FOLLOW_SWITCH_DELAY_S ahead; every replica loads that version
  beside the one it serves and swaps at ``switch_at`` (wall clock), so they switch together.

Records are small JSON values (~300 B) and stay in the GCS after their deploy is replaced.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

NAMESPACE = "face_attributes"
FOLLOW_CHECK_S = 5.0  # follow_latest: how often a replica looks at the pointer
FOLLOW_SWITCH_DELAY_S = 20.0  # follow_latest: time every replica gets to load the new version


@dataclass(frozen=True)
class Pin:
    """One resolution of a deployment's model_uri, shared by all its replicas."""

    model_uri: str  # as configured: may name a pointer (``latest``)
    version_uri: str  # the version directory it resolved to
    pinned_at: float  # unix time the first replica resolved it
    generation: int = 0  # > 0: follow_latest moved it
    switch_at: float | None = None  # follow_latest: when every replica swaps to it

    @property
    def version(self) -> str:
        return posixpath.basename(self.version_uri.rstrip("/"))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Pin:
        return cls(**json.loads(raw))


def pointer_target(pin: Pin) -> str | None:
    """The version the store's ``latest`` pointer names now: the configured model_uri's own
    pointer, or the ``latest`` beside a pinned explicit version (None if there is none)."""
    from model_store import ArtifactError, resolve_model_uri

    configured = pin.model_uri.rstrip("/")
    pointer = (
        configured
        if configured != pin.version_uri.rstrip("/")
        else posixpath.join(posixpath.dirname(pin.version_uri.rstrip("/")), "latest")
    )
    try:
        return resolve_model_uri(pointer)
    except (ArtifactError, OSError):
        return None


class KeyValue(Protocol):
    """put-if-absent and prefix reads: Ray's internal_kv, or MemoryKV in tests."""

    def put_if_absent(self, key: str, value: str) -> bool: ...  # True: written

    def get(self, key: str) -> str | None: ...

    def keys(self, prefix: str) -> list[str]: ...


class RayKV:
    """Ray's GCS key-value store (blocking calls: run them off the event loop)."""

    def __init__(self, namespace: str = NAMESPACE):
        self._namespace = namespace

    def put_if_absent(self, key: str, value: str) -> bool:
        from ray.experimental.internal_kv import _internal_kv_put

        existed = _internal_kv_put(key, value, overwrite=False, namespace=self._namespace)
        return not existed

    def get(self, key: str) -> str | None:
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(key, namespace=self._namespace)
        return None if raw is None else raw.decode()

    def keys(self, prefix: str) -> list[str]:
        from ray.experimental.internal_kv import _internal_kv_list

        return [k.decode() for k in _internal_kv_list(prefix, namespace=self._namespace)]


class MemoryKV:
    """The same contract in one process (unit tests; a model deployment bound without
    build_app's deploy_id pins per replica, as before pins existed)."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        self._lock = threading.Lock()

    def put_if_absent(self, key: str, value: str) -> bool:
        with self._lock:
            if key in self._data:
                return False
            self._data[key] = value
            return True

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def keys(self, prefix: str) -> list[str]:
        return [k for k in list(self._data) if k.startswith(prefix)]


class PinStore:
    """The pins of one deployment of one deploy (``deploy_id``)."""

    def __init__(self, kv: KeyValue, app: str, deployment: str, deploy_id: str):
        self._kv = kv
        self._prefix = f"pin/{app}/{deployment}/{deploy_id}/"

    def _base(self, model_uri: str, reload: int) -> str:
        digest = hashlib.sha256(f"{model_uri}\0{reload}".encode()).hexdigest()[:20]
        return f"{self._prefix}{digest}/"

    def current(self, model_uri: str, reload: int) -> Pin | None:
        """The newest generation pinned for this model_uri and reload, if any."""
        base = self._base(model_uri, reload)
        keys = sorted(self._kv.keys(base))
        if not keys:
            return None
        raw = self._kv.get(keys[-1])
        return Pin.from_json(raw) if raw is not None else None

    def active(self, model_uri: str, reload: int) -> tuple[Pin | None, Pin | None]:
        """(the generation to serve now, the next one if its switch_at is still ahead)."""
        base = self._base(model_uri, reload)
        pins = [Pin.from_json(raw) for k in sorted(self._kv.keys(base)) if (raw := self._kv.get(k))]
        if not pins:
            return None, None
        now = time.time()
        if pins[-1].switch_at is not None and pins[-1].switch_at > now:
            return (pins[-2] if len(pins) > 1 else None), pins[-1]
        return pins[-1], None

    def pin(self, model_uri: str, reload: int, resolve: Callable[[str], str]) -> Pin:
        """The pin of (model_uri, reload): the one recorded, else ``resolve(model_uri)`` recorded
        now. Two replicas racing both resolve; the first record wins and both return it."""
        found = self.current(model_uri, reload)
        if found is not None:
            return found
        mine = Pin(model_uri, resolve(model_uri), time.time())
        self._kv.put_if_absent(self._key(model_uri, reload, 0), mine.to_json())
        return self.current(model_uri, reload) or mine

    def advance(self, current: Pin, reload: int, version_uri: str, switch_delay_s: float) -> Pin:
        """follow_latest: the next generation (``version_uri`` from switch_at on), or whatever
        another replica recorded first."""
        nxt = Pin(
            current.model_uri,
            version_uri,
            time.time(),
            current.generation + 1,
            time.time() + switch_delay_s,
        )
        self._kv.put_if_absent(self._key(current.model_uri, reload, nxt.generation), nxt.to_json())
        return self.current(current.model_uri, reload) or nxt

    def _key(self, model_uri: str, reload: int, generation: int) -> str:
        return f"{self._base(model_uri, reload)}{generation:08d}"
