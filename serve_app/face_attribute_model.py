"""The model deployment: loads a TorchScript artifact and micro-batches inference.

Autoscaled separately from the ingress; on a GPU when the replica has one.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray import serve

from model_store import ArtifactError, ArtifactMetadata, load_artifact, resolve_model_uri
from serve_app.batching import BatchWhenFree
from serve_app.config import ModelConfig
from serve_app.metrics import ModelMetrics

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class LoadedModel:
    """One immutable model version; swapped as a whole so a batch never mixes versions."""

    uri: str
    metadata: ArtifactMetadata
    module: torch.jit.ScriptModule
    mean: torch.Tensor  # (1, 3, 1, 1) on the device, scaled for uint8 input
    std: torch.Tensor  # (1, 3, 1, 1)
    dtype: torch.dtype

    @property
    def version(self) -> str:
        return self.metadata.version


@dataclass(frozen=True)
class Prediction:
    """One image's result at the ingress; carries its own labels and threshold so a response is
    always formatted with the version that produced it."""

    name: str
    version: str
    labels: tuple[str, ...]
    threshold: float
    probabilities: np.ndarray  # (num_labels,) float32


@dataclass(frozen=True)
class Predictions:
    """What one model call returns: a row per image sent, all from one model version."""

    name: str
    version: str
    labels: tuple[str, ...]
    threshold: float
    probabilities: np.ndarray | None  # (N, num_labels) float32; None with an error
    error: str | None = None  # "input_size_mismatch" when the caller's input spec is stale

    def row(self, i: int) -> Prediction:
        return Prediction(
            self.name, self.version, self.labels, self.threshold, self.probabilities[i]
        )


def choose_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but no GPU is visible; set ray_actor_options.num_gpus")
        return torch.device("cuda")
    return torch.device("cpu")


def replica_cpu_share() -> int:
    """Ray sets OMP_NUM_THREADS=1 for actors; use the CPUs this replica was given instead."""
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:
        cpus = 1.0
    return max(1, int(cpus))


def load_model(
    model_uri: str, device: torch.device, fp16: bool, warm_up: bool = True
) -> LoadedModel:
    """warm_up=False leaves the warm-up (and its output-shape check) to the caller, to run on
    the thread that will serve the model."""
    artifact = load_artifact(model_uri)
    meta = artifact.metadata
    try:
        module = torch.jit.load(io.BytesIO(artifact.model_bytes), map_location=device)
    except Exception as e:  # a truncated or foreign file that passed the checksum
        raise ArtifactError(
            f"model.pt in {artifact.uri!r} is not a loadable TorchScript file: {e}"
        ) from e
    module.eval()
    dtype = torch.float16 if (fp16 and device.type == "cuda") else torch.float32
    if dtype == torch.float16:
        module = module.half()
    if device.type == "cpu":
        try:
            # Applied after loading: a file saved after this pass failed to load back.
            module = torch.jit.optimize_for_inference(module)
        except Exception as e:
            logger.warning("optimize_for_inference skipped: %s", e)
    # Normalisation folded to one multiply-add on uint8 input: (x/255 - mean)/std.
    mean = torch.tensor(meta.mean, device=device, dtype=dtype).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(meta.std, device=device, dtype=dtype).view(1, 3, 1, 1) * 255.0
    loaded = LoadedModel(artifact.uri, meta, module, mean, std, dtype)
    if warm_up:
        _warm_up(loaded, device)
    return loaded


def _warm_up(model: LoadedModel, device: torch.device) -> None:
    """TorchScript's profiling executor optimises on the first calls: do them before traffic,
    and check the output shape matches the labels."""
    h, w = model.metadata.input_size
    for batch in (1, 2, 2):
        out = _forward(model, torch.zeros(batch, 3, h, w, dtype=torch.uint8, device=device))
    if out.shape != (2, len(model.metadata.labels)):
        raise ArtifactError(
            f"model returns shape {tuple(out.shape)} for a batch of 2; metadata lists "
            f"{len(model.metadata.labels)} labels"
        )


def _forward(model: LoadedModel, batch_uint8: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, num_labels) float32 probabilities."""
    x = batch_uint8.to(model.dtype).contiguous(memory_format=torch.channels_last)
    x = (x - model.mean) / model.std
    with torch.inference_mode():
        out = model.module(x).float()
    if model.metadata.output_kind == "logits":
        out = torch.sigmoid(out)
    return out


@serve.deployment(
    name="FaceAttributeModel",
    user_config=ModelConfig().model_dump(),
    health_check_period_s=5,
)
class FaceAttributeModel:
    def __init__(self, device: str = "auto", fp16: bool = False, torch_threads: int | None = None):
        self._device = choose_device(device)
        self._fp16 = fp16
        # Every forward runs on this one thread: OpenMP keeps a thread team per calling thread,
        # and forwards hopping between asyncio.to_thread's pool threads measured 75 ms instead
        # of 51 ms (resnet34, batch 1, 2 threads) in a Ray actor.
        self._inference_thread = ThreadPoolExecutor(1, thread_name_prefix="inference")
        if self._device.type == "cpu":
            # Thread count moved CPU throughput several-fold on small boxes.
            threads = torch_threads or replica_cpu_share()
            self._inference_thread.submit(torch.set_num_threads, threads).result()
            torch.set_num_threads(threads)
        self._model: LoadedModel | None = None
        self._config: ModelConfig | None = None
        self._last_error: str | None = None
        self._metrics = ModelMetrics()
        self._swap_lock = asyncio.Lock()
        defaults = ModelConfig()
        # Calls (each a batch the ingress gathered) merge into forward passes of up to
        # max_batch_size images.
        self._batcher: BatchWhenFree[np.ndarray, Predictions] = BatchWhenFree(
            self._predict_calls,
            defaults.max_batch_size,
            defaults.batch_wait_timeout_s,
            size_of=len,
        )
        # {batch size: batches} since the last reconfigure, shown in /metadata (observability).
        self._batch_sizes: Counter[int] = Counter()
        logger.info(
            "FaceAttributeModel on %s with %d torch threads", self._device, torch.get_num_threads()
        )

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batch settings at once; load a new model_uri off the event loop and swap it in
        atomically. A refused artifact keeps the current model serving (and is reported);
        only a replica with no model at all fails."""
        config = ModelConfig.model_validate(user_config)
        self._batcher.configure(config.max_batch_size, config.batch_wait_timeout_s)
        self._config = config
        self._batch_sizes.clear()
        async with self._swap_lock:
            await self._load_if_changed(config.model_uri)

    async def _load_if_changed(self, model_uri: str) -> None:
        try:
            version_uri = await asyncio.to_thread(resolve_model_uri, model_uri)
            if self._model is not None and version_uri == self._model.uri:
                return
            loaded = await asyncio.to_thread(
                load_model, version_uri, self._device, self._fp16, warm_up=False
            )
            # Warm up (and check the output shape) on the inference thread, so its own OpenMP
            # team is ready before traffic meets it.
            await asyncio.get_running_loop().run_in_executor(
                self._inference_thread, _warm_up, loaded, self._device
            )
        except ArtifactError as e:
            self._metrics.load_failures.inc()
            self._last_error = f"{model_uri}: {e}"
            if self._model is None:
                raise
            logger.error(
                "Refused artifact %s; still serving %s. %s", model_uri, self._model.version, e
            )
            return
        previous, self._model, self._last_error = self._model, loaded, None
        if previous is not None:
            self._metrics.model_info.set(
                0, tags={"model": previous.metadata.name, "version": previous.version}
            )
        self._metrics.model_info.set(
            1, tags={"model": loaded.metadata.name, "version": loaded.version}
        )
        logger.info(
            "Serving %s version %s from %s", loaded.metadata.name, loaded.version, loaded.uri
        )

    def check_health(self) -> None:
        if self._model is None:
            raise RuntimeError(f"no model loaded: {self._last_error}")

    def describe(self) -> dict[str, Any]:
        """Metadata of the model this replica serves, plus its load status."""
        if self._model is None:
            raise RuntimeError(f"no model loaded: {self._last_error}")
        meta = self._model.metadata.model_dump(mode="json", exclude={"training"})
        meta["training"] = self._model.metadata.training
        meta["serving"] = {
            "uri": self._model.uri,
            "requested_uri": self._config.model_uri if self._config else None,
            "last_error": self._last_error,
            "device": str(self._device),
            "dtype": str(self._model.dtype).removeprefix("torch."),
            "max_batch_size": self._batcher.max_batch_size,
            "batch_wait_timeout_s": self._batcher.batch_wait_timeout_s,
            "batch_sizes": dict(sorted(self._batch_sizes.items())),
            "replica_id": serve.get_replica_context().replica_id.unique_id,
        }
        return meta

    async def predict(self, images: np.ndarray) -> Predictions:
        """images: uint8 (N, 3, H, W) at the model's input size; they ride in the next free
        forward pass, together with whatever other calls are waiting."""
        return await self._batcher.submit(images)

    async def _predict_calls(self, calls: list[np.ndarray]) -> list[Predictions]:
        model = self._model  # one version for the whole batch, even if a swap lands meanwhile
        if model is None:
            raise RuntimeError("no model loaded")
        expected = (3, *model.metadata.input_size)
        good = [i for i, c in enumerate(calls) if c.ndim == 4 and c.shape[1:] == expected]
        results = [self._result(model, None, "input_size_mismatch")] * len(calls)
        if good:
            # (N, 3, H, W) uint8; concatenate copies, so the tensor owns writable memory.
            images = torch.from_numpy(np.concatenate([calls[i] for i in good]))
            probs = await self._forward_in_chunks(model, images)  # (N, num_labels)
            start = 0
            for i in good:
                n = len(calls[i])
                results[i] = self._result(model, probs[start : start + n])
                start += n
        return results

    async def _forward_in_chunks(self, model: LoadedModel, images: torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) uint8 -> (N, num_labels) float32, max_batch_size images per forward."""
        outputs = []
        for chunk in images.split(self._batcher.max_batch_size):
            start = time.perf_counter()
            out = await asyncio.get_running_loop().run_in_executor(
                self._inference_thread, _forward, model, chunk.to(self._device)
            )
            outputs.append(out.cpu().numpy())
            self._metrics.inference_seconds.observe(time.perf_counter() - start)
            self._metrics.batch_size.observe(len(chunk))
            self._batch_sizes[len(chunk)] += 1
        return np.concatenate(outputs)

    @staticmethod
    def _result(
        model: LoadedModel, probs: np.ndarray | None, error: str | None = None
    ) -> Predictions:
        meta = model.metadata
        return Predictions(
            meta.name, meta.version, tuple(meta.labels), meta.threshold, probs, error
        )
