"""The model replica's compute: load an artifact for a device and dtype, and run every step that
touches the device on one inference thread.

Host->device copy, decode on the device, forward and device->host copy all run on that thread,
never on the replica's event loop: on CUDA the copy back waits for the forward pass, and a loop
that waits cannot accept or merge the next calls (tests/test_inference.py checks which thread
each step runs on).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import torch

from model_store import ArtifactError, ArtifactMetadata, load_artifact, load_torchscript
from serve_app.common.protocol import PreprocessSpec

logger = logging.getLogger("ray.serve")

Precision = Literal["float32", "float16", "bfloat16"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
T = TypeVar("T")


@dataclass(frozen=True)
class LoadedModel:
    """One immutable model version; swapped as a whole so a batch never mixes versions."""

    uri: str
    metadata: ArtifactMetadata
    spec: PreprocessSpec
    module: torch.jit.ScriptModule  # frozen, weights in ``dtype`` on ``device``
    mean: torch.Tensor  # (1, 3, 1, 1) on the device, scaled for uint8 input
    std: torch.Tensor  # (1, 3, 1, 1)
    device: torch.device
    dtype: torch.dtype
    # (num_labels,) float32: each label's tuned threshold in ``labels`` order; None when the
    # artifact has none (``metadata.threshold`` for every label).
    thresholds: np.ndarray | None = None

    @property
    def version(self) -> str:
        return self.metadata.version


def load_model(
    model_uri: str,
    device: torch.device,
    precision: Precision = "float32",
    trusted_public_key: str | None = None,
    warm_up: bool = True,
) -> LoadedModel:
    """Verify and load an artifact for ``device`` in ``precision``. warm_up=False leaves the
    warm-up (and its output-shape check) to the caller, to run on the thread that will serve."""
    artifact = load_artifact(model_uri, trusted_public_key=trusted_public_key)
    meta = artifact.metadata
    dtype = DTYPES[precision]
    module = load_torchscript(artifact, device, dtype)
    # Normalisation folded to one multiply-add on uint8 input: (x/255 - mean)/std.
    mean = torch.tensor(meta.mean, device=device, dtype=dtype).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(meta.std, device=device, dtype=dtype).view(1, 3, 1, 1) * 255.0
    thresholds = None
    if meta.thresholds is not None:
        thresholds = np.asarray(meta.label_thresholds(), dtype=np.float32)
        thresholds.flags.writeable = False  # shared by every Predictions of this version
    loaded = LoadedModel(
        artifact.uri, meta, PreprocessSpec.of(meta), module, mean, std, device, dtype, thresholds
    )
    if warm_up:
        warm_up_model(loaded)
    return loaded


def warm_up_model(model: LoadedModel) -> None:
    """TorchScript's profiling executor optimises on the first calls: do them before traffic,
    and check the output shape matches the labels."""
    h, w = model.spec.input_size
    for batch in (1, 2, 2):
        out = forward(model, torch.zeros(batch, 3, h, w, dtype=torch.uint8, device=model.device))
    if out.shape != (2, len(model.metadata.labels)):
        raise ArtifactError(
            f"model returns shape {tuple(out.shape)} for a batch of 2; metadata lists "
            f"{len(model.metadata.labels)} labels"
        )
    if not torch.isfinite(out).all():
        raise ArtifactError(
            f"model returns non-finite values in {str(model.dtype).removeprefix('torch.')}; "
            "serve it in float32"
        )


def forward(model: LoadedModel, batch_uint8: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 on the model's device -> (N, num_labels) float32 probabilities, on
    the device."""
    x = batch_uint8.to(model.dtype).contiguous(memory_format=torch.channels_last)
    x = (x - model.mean) / model.std
    with torch.inference_mode():
        out = model.module(x).float()
    if model.metadata.output_kind == "logits":
        out = torch.sigmoid(out)
    return out


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host uint8 batch -> the device. On CUDA through pinned memory, so the copy is a DMA that
    does not hold the thread while earlier work is queued."""
    if device.type != "cuda" or images.device.type == "cuda":
        return images
    return images.pin_memory().to(device, non_blocking=True)


@dataclass(frozen=True)
class ForwardStats:
    chunk_sizes: tuple[int, ...]
    seconds: tuple[float, ...]  # per chunk, host->device copy and device->host copy included


def forward_in_chunks(
    model: LoadedModel, images: torch.Tensor, max_batch_size: int
) -> tuple[np.ndarray, ForwardStats]:
    """(N, 3, H, W) uint8, on the host or the device -> (N, num_labels) float32 on the host.
    Runs on the inference thread: every wait on the device happens here."""
    outputs, sizes, seconds = [], [], []
    for chunk in images.split(max_batch_size):
        start = time.perf_counter()
        out = forward(model, to_device(chunk, model.device))
        outputs.append(out.cpu().numpy())  # waits for the forward on CUDA: on this thread
        sizes.append(len(chunk))
        seconds.append(time.perf_counter() - start)
    probs = np.concatenate(outputs) if outputs else np.zeros((0, len(model.metadata.labels)))
    return probs, ForwardStats(tuple(sizes), tuple(seconds))
