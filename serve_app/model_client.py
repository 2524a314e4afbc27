"""The ingress's side of the model deployment: decoded images go out as one call per batch.

Each handle call costs Ray several ms of CPU on both sides (measured ~4 ms in the model replica
and ~1.5 ms in the ingress on 2 cores), more than a mobilenet forward per image. So the ingress
keeps at most ``calls_in_flight`` calls open; while they run, newly decoded images gather and
leave together in the next call. At low load every image goes alone at once (no added wait);
under load calls grow by themselves. Ray failures become the API's 503s here.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict

import numpy as np
import ray
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve_app.batching import BatchWhenFree, QueueFull
from serve_app.errors import model_unavailable, overloaded
from serve_app.face_attribute_model import Prediction, Predictions

# Serve's gRPC transport between replicas (on with RAY_SERVE_THROUGHPUT_OPTIMIZED) refuses a
# message over RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH (4 MiB by default): 32 images at
# 224x224 are 4.8 MB. Calls are split to stay under it, with room for the pickle framing.
MAX_CALL_BYTES = int(
    0.9 * int(os.environ.get("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", 4 * 1024 * 1024))
)


def transport_chunks(batch: np.ndarray, max_bytes: int = MAX_CALL_BYTES) -> list[np.ndarray]:
    """(N, 3, H, W) -> consecutive slices of at most max_bytes each (at least one image)."""
    per_call = max(1, max_bytes // max(1, batch[0].nbytes))
    return [batch[i : i + per_call] for i in range(0, len(batch), per_call)]


class InputSizeChanged(Exception):
    """The model now serving expects another input size than the image was decoded to."""


class ModelClient:
    def __init__(
        self,
        handle: DeploymentHandle,
        images_per_call: int,
        calls_in_flight: int,
        max_waiting_images: int,
    ):
        self._handle = handle
        self._batcher: BatchWhenFree[np.ndarray, Prediction | InputSizeChanged] = BatchWhenFree(
            self._call,
            images_per_call,
            0.0,
            max_concurrent_batches=calls_in_flight,
            max_queued=max_waiting_images,
        )

    async def predict(self, image: np.ndarray) -> Prediction:
        """image: uint8 (3, H, W) -> its prediction. Raises ApiError 503 when the model
        deployment is overloaded or unavailable, InputSizeChanged when the spec is stale."""
        try:
            result = await self._batcher.submit(image)
        except QueueFull as e:
            raise overloaded(f"too many images waiting for the model ({e})") from e
        if isinstance(result, InputSizeChanged):
            raise result
        return result

    async def _call(self, images: list[np.ndarray]) -> list[Prediction | InputSizeChanged]:
        """One model call per input shape (two shapes only meet during a model swap)."""
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            by_shape[image.shape].append(i)
        results: list[Prediction | InputSizeChanged] = [None] * len(images)  # type: ignore[list-item]
        for indices in by_shape.values():
            batch = np.stack([images[i] for i in indices])  # (n, 3, H, W) uint8
            chunks = transport_chunks(batch)
            answers = await asyncio.gather(*(self._remote_predict(c) for c in chunks))
            rows = [(p, r) for p, chunk in zip(answers, chunks) for r in range(len(chunk))]
            for i, (predictions, row) in zip(indices, rows):
                results[i] = (
                    InputSizeChanged(predictions.error)
                    if predictions.error
                    else predictions.row(row)
                )
        return results

    async def _remote_predict(self, batch: np.ndarray) -> Predictions:
        try:
            return await self._handle.predict.remote(batch)
        except BackPressureError as e:
            raise overloaded() from e
        except DeploymentUnavailableError as e:
            raise model_unavailable(f"the model deployment is unavailable: {e}") from e
        except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError) as e:
            # ActorUnavailableError: the gRPC transport's word for a replica that went away.
            raise model_unavailable("the model replica restarted; retry") from e
        except ray.exceptions.RayTaskError as e:
            if "no model loaded" in str(e):
                raise model_unavailable("no model is loaded yet") from e
            raise
