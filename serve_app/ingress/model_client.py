"""The ingress's side of the model deployment: images go out as one call per batch.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve_app.common.batching import BatchWhenFree, QueueFull
from serve_app.common.errors import model_unavailable, overloaded
from serve_app.common.protocol import ImageResult, ModelNotReady, PreprocessSpec

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


@dataclass(frozen=True)
class DecodedImage:
    """(3, H, W) uint8 pixels and the spec they were prepared with."""

    pixels: np.ndarray
    spec: PreprocessSpec


ModelInput = DecodedImage | bytes  # bytes: an uploaded file the model replica decodes


class ModelClient:
    def __init__(
        self,
        handle: DeploymentHandle,
        images_per_call: int,
        calls_in_flight: int,
        max_waiting_images: int,
    ):
        self._handle = handle
        self._batcher: BatchWhenFree[ModelInput, ImageResult] = BatchWhenFree(
            self._call,
            images_per_call,
            0.0,
            max_concurrent_batches=calls_in_flight,
            max_queued=max_waiting_images,
        )

    async def predict(self, image: ModelInput) -> ImageResult:
        """Decoded pixels or a file -> its result: a Prediction, SpecMismatch (the pixels were
        prepared for another model version) or ImageRejected (the model could not decode the
        file). Raises ApiError 503 when the model deployment is overloaded or unavailable."""
        try:
            return await self._batcher.submit(image)
        except QueueFull as e:
            raise overloaded(f"too many images waiting for the model ({e})") from e

    async def _call(self, images: list[ModelInput]) -> list[ImageResult]:
        """One model call per spec (two specs only meet during a model swap), files apart."""
        groups: dict[PreprocessSpec | None, list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            groups[image.spec if isinstance(image, DecodedImage) else None].append(i)
        results: list[ImageResult] = [None] * len(images)  # type: ignore[list-item]
        for spec, indices in groups.items():
            if spec is None:
                chunks = file_chunks([images[i] for i in indices])
                calls = [call_model(self._handle.predict_files, c) for c in chunks]
            else:
                batch = np.stack([images[i].pixels for i in indices])  # (n, 3, H, W) uint8
                chunks = transport_chunks(batch)
                calls = [call_model(self._handle.predict, c, spec) for c in chunks]
            answers = await asyncio.gather(*calls)
            rows = [(p, r) for p, chunk in zip(answers, chunks) for r in range(len(chunk))]
            for i, (predictions, row) in zip(indices, rows):
                results[i] = predictions.result(row)
        return results


def file_chunks(files: list[bytes], max_bytes: int = MAX_CALL_BYTES) -> list[list[bytes]]:
    """Consecutive runs of files of at most max_bytes together (at least one file each)."""
    chunks: list[list[bytes]] = [[]]
    size = 0
    for f in files:
        if chunks[-1] and size + len(f) > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(f)
        size += len(f)
    return chunks


# How long a model call may wait for a replica to take it. Serve's router holds a call without
# bound while the deployment has no running replica (a lost node's replacement: ~20 s on the
# local cluster, minutes where a GPU node must be launched): clients waited instead of getting a
# 503 (tests/cluster/test_cluster_operations.py). But a call also waits for assignment while
# every replica is busy (at max_ongoing_requests, or too loaded to answer the router's probes
# at once), and a flat 1 s bound answered that with 503s too: at 64 clients on 2 cores
# resnet34 got 312-381 x 503 "no model replica is running" per 10 s against 23-143 answers,
# and /faces got them from the face detector at 8 clients. So past ASSIGN_TIMEOUT_S a call
# keeps waiting while the deployment is answering (a call of this process to it finished
# within ANSWERING_WINDOW_S): Serve's own queue bound (max_queued_requests: BackPressureError,
# 503 overloaded) limits that wait, and ASSIGN_LIMIT_S caps it. A deployment that stopped
# answering (its node lost) still gets its 503 within about ANSWERING_WINDOW_S +
# ASSIGN_RECHECK_S (a 1.5 s window gave 1.76 s in the cluster scenario, against a 2 s bound).
# A busy replica answers far more often: resnet34's 16-image pass takes ~0.3 s here, the face
# detector's batch of 8 photos ~0.5 s.
ASSIGN_TIMEOUT_S = 1.0
ANSWERING_WINDOW_S = 1.25
ASSIGN_RECHECK_S = 0.1
ASSIGN_LIMIT_S = 30.0

# deployment name -> loop time of the last call to it that returned, in this process
_last_answer: dict[str, float] = {}


def _answering(name: str, now: float) -> bool:
    last = _last_answer.get(name)
    return last is not None and now - last <= ANSWERING_WINDOW_S


async def _until_assigned(response: Any, name: str, what: str) -> None:
    """The assignment step of ``await response`` (a DeploymentResponse), bounded as above."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    assigned = asyncio.ensure_future(response._fetch_future_result_async())
    timeout = ASSIGN_TIMEOUT_S
    while True:
        try:
            await asyncio.wait_for(asyncio.shield(assigned), timeout)
            return
        except asyncio.TimeoutError:
            now = loop.time()
            out_of_time = now - started >= ASSIGN_LIMIT_S
            if _answering(name, now) and not out_of_time:
                timeout = ASSIGN_RECHECK_S
                continue
            assigned.cancel()
            response.cancel()
            if out_of_time:
                raise overloaded(
                    f"no {what} replica took the call in {ASSIGN_LIMIT_S:g} s"
                ) from None
            raise model_unavailable(f"no {what} replica is answering; retry") from None


async def call_model(method, *args, what: str = "model") -> Any:
    """``await method.remote(*args)`` on a model deployment (``what``: its name in the API's
    messages), Ray's failures as the API's 503s."""
    name = getattr(method, "deployment_name", what)
    try:
        response = method.remote(*args)
        if hasattr(response, "_fetch_future_result_async"):  # a DeploymentResponse (Ray 2.60)
            await _until_assigned(response, name, what)
        answer = await response
        _last_answer[name] = asyncio.get_running_loop().time()
        return answer
    except BackPressureError as e:
        raise overloaded() from e
    except DeploymentUnavailableError as e:
        raise model_unavailable(f"the {what} deployment is unavailable: {e}") from e
    except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError) as e:
        # ActorUnavailableError: the gRPC transport's word for a replica that went away.
        raise model_unavailable(f"the {what} replica restarted; retry") from e
    except ModelNotReady as e:  # Ray re-raises the replica's exception as its own type
        raise model_unavailable(f"no {what} is loaded yet") from e


@dataclass
class ModelDeployment:
    """One model deployment (the stable or the candidate version) as an ingress replica sees it:
    its handle, its batching client, and the preprocessing spec of the version it serves as last
    seen (a SpecMismatch answer updates it)."""

    handle: DeploymentHandle
    client: ModelClient
    spec: PreprocessSpec | None = None
    spec_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
