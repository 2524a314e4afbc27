"""The FaceDetector deployment: finds the faces in a photo for ``POST /faces``.

Scaled on its own (its autoscaling_config in config.yaml), on a GPU when its replica has one,
like the model deployment. Calls carry one image each (the ingress's downscaled copy, at most
``faces_detect_side`` on its longer side); calls that wait together run as one cascade over the
images of equal size (MTCNN batches equal-sized images only). The detector artifact is pinned
and loaded like the model's (serve_app/common/pinning.py), its digest and signature checked.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from ray import serve

from model_store import ArtifactError
from serve_app.common.batching import BatchWhenFree
from serve_app.common.device import InferenceThread, choose_device, replica_cpu_share
from serve_app.common.metrics import DetectorMetrics
from serve_app.common.pinning import RETRY_HINT, PinnedArtifact
from serve_app.common.protocol import Detections, ModelNotReady
from serve_app.config import DetectorConfig
from serve_app.detector.cascade import LoadedDetector, detect, load_detector

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class DetectCall:
    """(H, W, 3) uint8 RGB pixels; faces smaller than ``min_face_px`` (in these pixels) are
    not looked for."""

    pixels: np.ndarray
    min_face_px: int


@serve.deployment(
    name="FaceDetector",
    user_config=DetectorConfig().model_dump(),
    health_check_period_s=5,
)
class FaceDetector:
    def __init__(
        self,
        device: str = "auto",
        torch_threads: int | Literal["auto"] | None = None,
        deploy_id: str | None = None,
    ):
        """deploy_id: as FaceAttributeModel's (build_app draws it; the pin is shared)."""
        self._device = choose_device(device)
        threads = torch_threads if isinstance(torch_threads, int) else replica_cpu_share()
        self._inference = InferenceThread(self._device, threads)
        self._detector: LoadedDetector | None = None
        self._config: DetectorConfig | None = None
        self._last_error: str | None = None
        self._metrics = DetectorMetrics()
        self._pinned: PinnedArtifact[LoadedDetector] = PinnedArtifact(
            deploy_id,
            self._load,
            self._swap_in,
            self._refused,
            lambda flag: self._metrics.version_mismatch.set(int(flag)),
        )
        defaults = DetectorConfig()
        self._batcher: BatchWhenFree[DetectCall, Detections] = BatchWhenFree(
            self._detect_calls, defaults.max_batch_size, defaults.batch_wait_timeout_s
        )
        logger.info("FaceDetector on %s with %d torch threads", self._device, threads)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = DetectorConfig.model_validate(user_config)
        self._batcher.configure(config.max_batch_size, config.batch_wait_timeout_s)
        key_changed = self._config is not None and (
            config.trusted_public_key != self._config.trusted_public_key
        )
        self._config = config
        try:
            await self._pinned.configure(config, force=key_changed)
        except ArtifactError:
            # No detector at all: the replica stays up (the rest of the service has nothing to
            # do with faces) and POST /faces answers 503 with last_error, until a deploy with
            # another reload finds one (python -m train_job.face_detector makes it).
            logger.error("No face detector loaded: %s", self._last_error)

    async def _load(self, version_uri: str) -> LoadedDetector:
        key = self._config.trusted_public_key if self._config else None
        loaded = await asyncio.to_thread(load_detector, version_uri, self._device, key)
        # The first cascade run is slow (TorchScript optimises): run it before traffic does.
        blank = np.zeros((1, 96, 96, 3), np.uint8)
        await self._inference.run(detect, loaded, blank, 20)
        return loaded

    def _swap_in(self, loaded: LoadedDetector) -> None:
        self._detector, self._last_error = loaded, None
        logger.info("Detecting faces with %s version %s", loaded.metadata.name, loaded.version)

    def _refused(self, model_uri: str, error: ArtifactError) -> None:
        self._metrics.load_failures.inc()
        store = posixpath.dirname(posixpath.dirname(model_uri.rstrip("/")))
        self._last_error = f"{model_uri}: {error}. {RETRY_HINT}".replace(store, "<store>")
        logger.error("Refused detector artifact %s. %s %s", model_uri, error, RETRY_HINT)

    def describe(self) -> dict[str, Any]:
        """/metadata's ``detector``: which detector answers (nulls when none is loaded), why not
        (``last_error``), and how it is pinned."""
        detector = self._detector
        meta = detector.metadata if detector is not None else None
        return {
            "name": meta.name if meta else None,
            "version": meta.version if meta else None,
            "method": meta.method if meta else None,
            "landmarks": list(meta.landmarks) if meta else [],
            "source": meta.source if meta else None,
            "device": str(self._device),
            "last_error": self._last_error,
            "pin": self._pinned.state(),
        }

    async def detect(self, pixels: np.ndarray, min_face_px: int) -> Detections:
        """(H, W, 3) uint8 RGB -> its faces, most confident first (boxes and landmarks in its
        pixels). Waits for the next free cascade run, beside other calls of its size."""
        if self._detector is None:  # before queueing: a refusal is immediate
            raise ModelNotReady(f"no face detector is loaded: {self._last_error}")
        return await self._batcher.submit(DetectCall(pixels, min_face_px))

    async def _detect_calls(self, calls: list[DetectCall]) -> list[Detections]:
        detector = self._detector  # one version for the whole batch
        if detector is None:
            raise ModelNotReady(f"no face detector is loaded: {self._last_error}")
        groups: dict[tuple[tuple[int, ...], int], list[int]] = defaultdict(list)
        for i, call in enumerate(calls):
            groups[(call.pixels.shape, call.min_face_px)].append(i)
        found: list[Detections | None] = [None] * len(calls)
        for (_, min_face_px), indices in groups.items():
            images = np.stack([calls[i].pixels for i in indices])
            start = asyncio.get_running_loop().time()
            faces = await self._inference.run(detect, detector, images, min_face_px)
            self._metrics.detect_seconds.observe(asyncio.get_running_loop().time() - start)
            self._metrics.batch_size.observe(len(indices))
            for i, image_faces in zip(indices, faces):
                found[i] = Detections(detector.metadata.name, detector.version, tuple(image_faces))
        return found  # type: ignore[return-value]
