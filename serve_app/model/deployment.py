"""The model deployment: loads a TorchScript artifact and micro-batches inference.

Autoscaled separately from the ingress; on a GPU when the replica has one. Calls arrive either
as decoded pixels with the ``PreprocessSpec`` they were prepared for (decode_on: ingress) or as
the uploaded files (decode_on: model); both merge into the same forward passes. Everything that
touches the device runs on the inference thread (serve_app/model/inference.py).
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from ray import serve

from model_store import ArtifactError
from serve_app.common.batching import BatchWhenFree
from serve_app.common.device import InferenceThread, choose_device, replica_cpu_share
from serve_app.common.metrics import ModelMetrics
from serve_app.common.pinning import RETRY_HINT, PinnedArtifact
from serve_app.common.protocol import (
    ExplainCall,
    Explanations,
    ImageRejected,
    ModelNotReady,
    Predictions,
    PreprocessSpec,
    ServiceTime,
    SpecMismatch,
)
from serve_app.config import ModelConfig
from serve_app.model.decode_batch import decode_batch
from serve_app.model.explain import (
    forward_normalised,
    keep_masks,
    normalise,
    occluded_probabilities,
    occlusion_maps,
)
from serve_app.model.inference import (
    ForwardStats,
    LoadedModel,
    Precision,
    forward_in_chunks,
    load_model,
    to_device,
    warm_up_model,
)
from serve_app.model.threads import AUTO_HEAVY_FORWARD_MS, choose_threads

logger = logging.getLogger("ray.serve")

# What /metadata shows of the artifact: what a client needs to read the answers and judge the
# model. Paths (training data, checkpoints, the store) stay in the store's metadata.json.
PUBLIC_FIELDS = (
    "name", "version", "labels", "input_size", "mean", "std", "interpolation", "threshold",
    "thresholds", "output_kind", "backbone", "created_at", "format_version", "metrics",
)  # fmt: skip
PUBLIC_TRAINING_FIELDS = (
    "epochs_trained", "max_epochs", "samples", "num_workers", "use_gpu", "pretrained",
    "precision", "batch_size_per_worker", "lr", "duration_s", "versions", "data_sha256",
)  # fmt: skip


WARM_UP_PASSES = 2  # passes of a batch size a replica runs before its times count (ServiceTime)


@dataclass(frozen=True)
class ModelCall:
    """One call from an ingress: decoded pixels (N, 3, H, W) uint8 prepared with ``spec``, or
    the uploaded files themselves."""

    pixels: np.ndarray | None = None
    spec: PreprocessSpec | None = None
    files: list[bytes] | None = None

    def __len__(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.files or ())


def public_metadata(model: LoadedModel) -> dict[str, Any]:
    meta = model.metadata.model_dump(mode="json")
    public = {k: meta.get(k) for k in PUBLIC_FIELDS}
    public["training"] = {
        k: meta["training"][k] for k in PUBLIC_TRAINING_FIELDS if k in meta["training"]
    }
    return public


def redact_store(text: str, model_uri: str) -> str:
    """An error about ``<store>/<name>/<version>`` with the store's location left out."""
    name_dir = posixpath.dirname(model_uri.rstrip("/"))
    store = posixpath.dirname(name_dir)
    return text.replace(store, "<store>") if store else text


@serve.deployment(
    name="FaceAttributeModel",
    user_config=ModelConfig().model_dump(),
    health_check_period_s=5,
)
class FaceAttributeModel:
    def __init__(
        self,
        device: str = "auto",
        precision: Precision = "float32",
        torch_threads: int | Literal["auto"] | None = None,
        max_image_pixels: int = 40_000_000,
        deploy_id: str | None = None,
    ):
        """deploy_id: drawn by build_app at each build of the application; the replicas of one
        deploy share their pinned model version through it (serve_app/common/pin.py)."""
        self._device = choose_device(device)
        self._precision: Precision = precision
        self._max_image_pixels = max_image_pixels
        # "auto": chosen per loaded model (serve_app/model/threads.py); None: the replica's num_cpus.
        self._auto_threads = torch_threads == "auto" and self._device.type == "cpu"
        fixed = torch_threads if isinstance(torch_threads, int) else None
        self._threads = fixed or replica_cpu_share()
        self._inference = InferenceThread(self._device, self._threads)
        self._model: LoadedModel | None = None
        self._config: ModelConfig | None = None
        self._pinned: PinnedArtifact[LoadedModel] = PinnedArtifact(
            deploy_id,
            self._load,
            self._swap_in,
            self._refused,
            lambda flag: self._metrics.version_mismatch.set(int(flag)),
        )
        self._last_error: str | None = None
        self._metrics = ModelMetrics()
        defaults = ModelConfig()
        # Calls (each a batch the ingress gathered) merge into forward passes of up to
        # max_batch_size images.
        self._batcher: BatchWhenFree[ModelCall, Predictions] = BatchWhenFree(
            self._predict_calls,
            defaults.max_batch_size,
            defaults.batch_wait_timeout_s,
            size_of=len,
        )
        # Explanations queue apart from predictions, bounded (a full queue raises QueueFull: the
        # ingress answers 503), one explain batch at a time: they share the inference thread,
        # where a second batch would only interleave with the first and delay both.
        self._explainer: BatchWhenFree[ExplainCall, Explanations] = BatchWhenFree(
            self._explain_calls,
            defaults.explain_batch_images,
            0.0,
            max_queued=defaults.explain_max_queued_images,
            size_of=len,
        )
        self._explain_chunk = defaults.explain_chunk_size
        # {batch size: batches} since the last reconfigure, shown in /metadata (observability).
        self._batch_sizes: Counter[int] = Counter()
        # {batch size: passes} since the replica started: which passes are warm (ServiceTime).
        self._passes_of_size: Counter[int] = Counter()
        logger.info(
            "FaceAttributeModel on %s in %s with %d torch threads",
            self._device,
            precision,
            torch.get_num_threads(),
        )

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batch settings at once; load the pinned version of model_uri off the event loop
        and swap it in atomically (serve_app/common/pinning.py). A refused artifact keeps the
        current model serving (and is reported); only a replica with no model at all fails."""
        config = ModelConfig.model_validate(user_config)
        self._batcher.configure(config.max_batch_size, config.batch_wait_timeout_s)
        self._explainer.configure(config.explain_batch_images, 0.0)
        self._explainer.max_queued = config.explain_max_queued_images
        self._explain_chunk = config.explain_chunk_size
        key_changed = self._config is not None and (
            config.trusted_public_key != self._config.trusted_public_key
        )
        self._config = config
        self._batch_sizes.clear()
        await self._pinned.configure(config, force=key_changed)

    async def _load(self, version_uri: str) -> LoadedModel:
        loaded = await asyncio.to_thread(
            load_model,
            version_uri,
            self._device,
            self._precision,
            self._config.trusted_public_key if self._config else None,
            False,
        )
        # Warm up (and check the output shape) on the inference thread, so its own OpenMP
        # team is ready before traffic meets it.
        await self._inference.run(warm_up_model, loaded)
        if self._auto_threads:
            await self._choose_threads(loaded)
        return loaded

    def _refused(self, model_uri: str, error: ArtifactError) -> None:
        self._metrics.load_failures.inc()
        self._last_error = redact_store(f"{model_uri}: {error}. {RETRY_HINT}", model_uri)
        serving = self._model.version if self._model is not None else "nothing"
        logger.error(
            "Refused artifact %s; still serving %s. %s %s", model_uri, serving, error, RETRY_HINT
        )

    def _swap_in(self, loaded: LoadedModel) -> None:
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

    async def _choose_threads(self, model: LoadedModel) -> None:
        heavy = max(2, replica_cpu_share())
        self._threads, ms = await self._inference.run(choose_threads, model, heavy)
        logger.info(
            "torch_threads auto: %d (a batch-1 forward takes %.1f ms on one thread; %d from "
            "%.0f ms)",
            self._threads,
            ms,
            heavy,
            AUTO_HEAVY_FORWARD_MS,
        )

    def check_health(self) -> None:
        if self._model is None:
            raise ModelNotReady(f"no model loaded: {self._last_error}")

    def describe(self) -> dict[str, Any]:
        """Public metadata of the model this replica serves, plus its serving status."""
        model = self._model
        if model is None:
            raise ModelNotReady(f"no model loaded: {self._last_error}")
        meta = public_metadata(model)
        meta["serving"] = {
            "config_id": self._config.fingerprint() if self._config else None,
            "last_error": self._last_error,
            "device": str(self._device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "torch_threads": self._threads if self._device.type == "cpu" else None,
            "max_batch_size": self._batcher.max_batch_size,
            "batch_wait_timeout_s": self._batcher.batch_wait_timeout_s,
            "batch_sizes": dict(sorted(self._batch_sizes.items())),
            "replica_id": serve.get_replica_context().replica_id.unique_id,
            "pin": self._pinned.state(),
        }
        return meta

    def preprocess_spec(self) -> PreprocessSpec:
        if self._model is None:
            raise ModelNotReady(f"no model loaded: {self._last_error}")
        return self._model.spec

    async def predict(self, images: np.ndarray, spec: PreprocessSpec) -> Predictions:
        """images: uint8 (N, 3, H, W) prepared with ``spec``; they ride in the next free forward
        pass, together with whatever other calls are waiting."""
        return await self._batcher.submit(ModelCall(pixels=images, spec=spec))

    async def predict_files(self, files: list[bytes]) -> Predictions:
        """The uploaded image files themselves (decode_on: model): decoded here, in a batch."""
        return await self._batcher.submit(ModelCall(files=files))

    async def _predict_calls(self, calls: list[ModelCall]) -> list[Predictions]:
        model = self._model  # one version for the whole batch, even if a swap lands meanwhile
        if model is None:
            raise ModelNotReady(f"no model loaded: {self._last_error}")
        mismatch = SpecMismatch(model.spec)
        runnable = [c for c in calls if c.files is not None or _prepared_for(c, model.spec)]
        per_call, stats = await self._inference.run(
            infer_calls,
            model,
            runnable,
            self._batcher.max_batch_size,
            self._max_image_pixels,
        )
        services = []
        for size, seconds in zip(stats.chunk_sizes, stats.seconds):
            self._metrics.inference_seconds.observe(seconds)
            self._metrics.batch_size.observe(size)
            self._batch_sizes[size] += 1
            self._passes_of_size[size] += 1
            # TorchScript re-optimises for a batch size it has not run twice: those passes are
            # the replica warming up, not its speed (a rollout compares warm passes only).
            warm = self._passes_of_size[size] > WARM_UP_PASSES
            services.append(ServiceTime(size, seconds * 1000) if warm else None)
        answers = dict(zip(map(id, runnable), per_call))
        results = []
        for call in calls:
            if id(call) in answers:
                probs, rejected, pass_index = answers[id(call)]
                service = services[pass_index] if pass_index is not None else None
                results.append(
                    _predictions(model, probs, rejected=rejected or None, service=service)
                )
            else:
                results.append(_predictions(model, None, mismatch=mismatch))
        return results

    async def explain(self, images: np.ndarray, spec: PreprocessSpec, grid: int) -> Explanations:
        """images: uint8 (N, 3, H, W) prepared with ``spec`` -> probabilities and the occlusion
        maps of every label (serve_app/model/explain.py). Raises QueueFull when more than
        explain_max_queued_images images wait."""
        return await self._explainer.submit(ExplainCall(images, spec, grid))

    async def _explain_calls(self, calls: list[ExplainCall]) -> list[Explanations]:
        """The occluded copies of a batch run in chunks of explain_chunk_size, each its own job
        on the inference thread: prediction batches that arrive meanwhile run between chunks
        instead of behind the whole explanation."""
        model = self._model
        if model is None:
            raise ModelNotReady(f"no model loaded: {self._last_error}")
        answers: dict[int, Explanations] = {}
        runnable = [c for c in calls if _prepared_for(c, model.spec)]
        for grid in sorted({c.grid for c in runnable}):
            group = [c for c in runnable if c.grid == grid]
            pixels = np.concatenate([c.pixels for c in group])
            base, maps = await self._occlusion(model, pixels, grid)
            start = 0
            for call in group:
                rows = slice(start, start + len(call))
                answers[id(call)] = _explanations(model, grid, base[rows], maps[rows])
                start += len(call)
        mismatch = _explanations(model, 0, None, None, SpecMismatch(model.spec))
        return [answers.get(id(call), mismatch) for call in calls]

    async def _occlusion(
        self, model: LoadedModel, pixels: np.ndarray, grid: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, H, W) uint8 -> probabilities (N, L) and maps (N, L, grid, grid)."""
        run = self._inference.run
        x = await run(normalise, model, pixels)
        masks = await run(keep_masks, model.spec.input_size, grid, model.device)
        base = await run(forward_normalised, model, x)
        total, chunk = len(pixels) * len(masks), self._explain_chunk
        parts = [
            await run(occluded_probabilities, model, x, masks, s, min(total, s + chunk))
            for s in range(0, total, chunk)
        ]
        return base, occlusion_maps(base, np.concatenate(parts), grid)


def _explanations(
    model: LoadedModel,
    grid: int,
    probs: np.ndarray | None,
    maps: np.ndarray | None,
    mismatch: SpecMismatch | None = None,
) -> Explanations:
    meta = model.metadata
    tuned = np.asarray(meta.label_thresholds(), np.float32) if meta.thresholds else None
    return Explanations(
        meta.name,
        meta.version,
        tuple(meta.labels),
        meta.threshold,
        grid,
        probs,
        maps,
        mismatch,
        tuned,
    )


def _prepared_for(call: ModelCall | ExplainCall, spec: PreprocessSpec) -> bool:
    pixels = call.pixels
    return (
        call.spec == spec
        and pixels is not None
        and pixels.ndim == 4
        and pixels.shape[1:] == (3, *spec.input_size)
        and pixels.dtype == np.uint8
    )


def infer_calls(
    model: LoadedModel, calls: list[ModelCall], max_batch_size: int, max_pixels: int
) -> tuple[list[tuple[np.ndarray, dict[int, ImageRejected], int | None]], ForwardStats]:
    """On the inference thread: decode what came as files, copy what came as pixels to the
    device, run the forward passes and copy back. Returns per call ((n, num_labels) float32,
    {index: why refused}, the index in ``stats`` of the pass its first image rode in)."""
    parts: list[torch.Tensor] = []
    layout: list[tuple[int, list[int], dict[int, ImageRejected]]] = []  # (n, rows used, rejected)
    for call in calls:
        if call.files is not None:
            batch, ok, rejected = decode_batch(call.files, model.spec, model.device, max_pixels)
            if batch is not None:
                parts.append(batch)
            layout.append((len(call.files), ok, rejected))
        else:
            # np.ascontiguousarray: the call's array may be read-only (Ray's zero-copy buffers).
            pixels = torch.from_numpy(np.ascontiguousarray(call.pixels))
            parts.append(to_device(pixels, model.device))
            layout.append((len(call.pixels), list(range(len(call.pixels))), {}))
    labels = len(model.metadata.labels)
    if parts:
        probs, stats = forward_in_chunks(model, torch.cat(parts), max_batch_size)
    else:
        probs, stats = np.zeros((0, labels), np.float32), ForwardStats((), ())
    out, start = [], 0
    for n, ok, rejected in layout:
        rows = np.zeros((n, labels), np.float32)
        rows[ok] = probs[start : start + len(ok)]
        out.append((rows, rejected, start // max_batch_size if ok else None))
        start += len(ok)
    return out, stats


def _predictions(
    model: LoadedModel,
    probs: np.ndarray | None,
    mismatch: SpecMismatch | None = None,
    rejected: dict[int, ImageRejected] | None = None,
    service: ServiceTime | None = None,
) -> Predictions:
    meta = model.metadata
    return Predictions(
        meta.name,
        meta.version,
        tuple(meta.labels),
        meta.threshold,
        probs,
        mismatch,
        rejected,
        service=service,
        thresholds=model.thresholds,
    )
