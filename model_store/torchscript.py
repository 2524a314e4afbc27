"""Eager model -> traced TorchScript bytes (format 2), and artifact -> module ready to serve.

Why the file is not frozen (format 1 was): freezing turns the weights into graph constants,
which ``module.half()`` / ``.to(torch.bfloat16)`` do not touch, so a frozen file cast to fp16
fails on its first call ("mat1 and mat2 must have the same dtype, but got Half and Float").
The file keeps the weights as parameters; load_torchscript casts them, then freezes.
"""

from __future__ import annotations

import io
import logging
import warnings

import torch

from model_store.store import ArtifactError, LoadedArtifact

logger = logging.getLogger(__name__)

# TorchScript is this project's artifact format (loadable without Python model code); torch
# marks the jit API deprecated in favour of torch.export, which serving does not use yet.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, atol: float = 1e-4) -> bytes:
    """Trace ``model`` in eval mode on ``example`` (N, 3, H, W) and return the serialized file:
    a traced, NOT frozen module whose weights are float32 parameters.

    The bytes are loaded back, frozen as serving freezes them, and compared with the eager
    model, so what is returned is what serving will run. ``optimize_for_inference`` is not
    applied here: a file saved after it failed to load back; serving applies it after loading.
    """
    model = model.eval()  # BatchNorm must use its running statistics, Dropout must be off
    with torch.inference_mode():
        expected = model(example)
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    data = buffer.getvalue()

    reloaded = torch.jit.freeze(torch.jit.load(io.BytesIO(data), map_location="cpu").eval())
    with torch.inference_mode():
        actual = reloaded(example)
    if actual.shape != expected.shape or not torch.allclose(actual, expected, atol=atol):
        diff = (actual - expected).abs().max().item() if actual.shape == expected.shape else None
        raise RuntimeError(
            f"TorchScript export differs from the eager model (shape {tuple(actual.shape)} vs "
            f"{tuple(expected.shape)}, max abs diff {diff}, atol {atol})"
        )
    return data


# The old name, for callers not yet renamed (bench/artifacts.py). It now writes format 2.
export_frozen_torchscript = export_torchscript


def load_torchscript(
    artifact: LoadedArtifact, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.jit.ScriptModule:
    """The artifact's module in eval mode, weights cast to ``dtype`` on ``device``, frozen
    (weights folded into the graph) and, on CPU, passed through ``optimize_for_inference``.

    The caller feeds it (N, 3, H, W) batches of ``dtype`` on ``device``. Measured on this
    project's CPU (torch 2.14, AVX-512 FP16/BF16): ``optimize_for_inference`` succeeds for
    float32 (convolutions become MKLDNN ops) and for float16/bfloat16, where it only folds
    (no MKLDNN conversion: 0 mkldnn ops in the graph); float16 and bfloat16 convolutions run
    on this CPU either way. Should it raise on some other build, the frozen module is kept.
    """
    try:
        module = torch.jit.load(io.BytesIO(artifact.model_bytes), map_location=device)
    except Exception as e:  # a foreign or damaged file that still matched its sha256
        raise ArtifactError(
            f"model.pt in {artifact.uri!r} is not a loadable TorchScript file: {e}"
        ) from e
    module = module.eval().to(device=device, dtype=dtype)
    frozen = torch.jit.freeze(module)
    if device.type != "cpu":
        return frozen
    try:
        return torch.jit.optimize_for_inference(frozen)
    except Exception as e:  # an optimisation, never a reason to refuse a model
        logger.warning("optimize_for_inference skipped for %s (%s): %s", artifact.uri, dtype, e)
        return frozen
