"""Eager model -> frozen TorchScript bytes, verified by loading the written bytes back."""

from __future__ import annotations

import io
import warnings

import torch

# TorchScript is this project's artifact format (loadable without Python model code); torch
# marks the jit API deprecated in favour of torch.export, which serving does not use yet.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")


def export_frozen_torchscript(
    model: torch.nn.Module, example: torch.Tensor, atol: float = 1e-4
) -> bytes:
    """Trace and freeze ``model`` on ``example`` (N, 3, H, W) and return the serialized file.

    The bytes are loaded back and compared with the eager model, so what is returned is what
    serving will run. ``optimize_for_inference`` is deliberately not applied here: a file saved
    after it failed to load back; serving applies it after loading.
    """
    model = model.eval()
    with torch.inference_mode():
        expected = model(example)
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.freeze(traced)
    buffer = io.BytesIO()
    torch.jit.save(frozen, buffer)
    data = buffer.getvalue()

    reloaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    with torch.inference_mode():
        actual = reloaded(example)
    if actual.shape != expected.shape or not torch.allclose(actual, expected, atol=atol):
        diff = (actual - expected).abs().max().item() if actual.shape == expected.shape else None
        raise RuntimeError(
            f"TorchScript export differs from the eager model (shape {tuple(actual.shape)} vs "
            f"{tuple(expected.shape)}, max abs diff {diff}, atol {atol})"
        )
    return data
