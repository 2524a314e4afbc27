"""Per-attribute explanation maps by occlusion sensitivity (``POST /explain``, docs/explain.md).

For an image and a ``grid`` of g x g cells, patch (i, j) is a square of 2 x 2 cells centred on
cell (i, j) (a quarter of each side for g = 8, clipped at the border) set to zero after
normalisation, i.e. to the training mean. The map of attribute a is

    map[a][i][j] = max(0, p_a(image) - p_a(image with patch (i, j) hidden))

row 0 at the top: how much the model's own probability falls when that part of the image is
hidden. One forward pass over the g*g occluded copies gives the maps of ALL labels at once, so
an explanation costs the same for 1 or 40 attributes.

Why occlusion (measured in docs/explain.md): it needs nothing but the forward pass, so it runs
on every served artifact as it is (frozen TorchScript, float16/bfloat16, CPU or CUDA, old
format versions) with no re-export, and it is faithful by construction: the map *is* the
served model's behaviour. Its cost is g*g forwards per image, which the model replica runs in
chunks on its inference thread so that /classify batches interleave with it
(serve_app/model/deployment.py). The ingress's side (query, answer, overlay): serve_app/ingress/explain.py.
"""

from __future__ import annotations

import numpy as np
import torch

from serve_app.model.inference import LoadedModel, to_device


def patch_bounds(size: int, grid: int) -> list[tuple[int, int]]:
    """[start, stop) pixel bounds along one side of the patch centred on each of ``grid`` cells:
    two cells long, clipped to the image."""
    cell = size / grid
    return [
        (max(0, round((i - 0.5) * cell)), min(size, round((i + 1.5) * cell))) for i in range(grid)
    ]


def keep_masks(input_size: tuple[int, int], grid: int, device: torch.device) -> torch.Tensor:
    """(grid*grid, 1, H, W) of 1 where a copy keeps the pixel and 0 under its patch, row-major
    over the patches (patch k = (k // grid, k % grid))."""
    h, w = input_size
    masks = torch.ones(grid * grid, 1, h, w)
    for i, (y0, y1) in enumerate(patch_bounds(h, grid)):
        for j, (x0, x1) in enumerate(patch_bounds(w, grid)):
            masks[i * grid + j, :, y0:y1, x0:x1] = 0
    return masks.to(device)


def normalise(model: LoadedModel, pixels: np.ndarray) -> torch.Tensor:
    """On the inference thread: (N, 3, H, W) uint8 on the host -> normalised model input on the
    device, as serve_app.inference.forward prepares it."""
    x = to_device(torch.from_numpy(np.ascontiguousarray(pixels)), model.device)
    x = x.to(model.dtype).contiguous(memory_format=torch.channels_last)
    return (x - model.mean) / model.std


def forward_normalised(model: LoadedModel, x: torch.Tensor) -> np.ndarray:
    """On the inference thread: normalised (N, 3, H, W) -> (N, L) float32 probabilities on the
    host (the same steps as serve_app.inference.forward after its normalisation)."""
    with torch.inference_mode():
        out = model.module(x).float()
    if model.metadata.output_kind == "logits":
        out = torch.sigmoid(out)
    return out.cpu().numpy()


def occluded_probabilities(
    model: LoadedModel, x: torch.Tensor, masks: torch.Tensor, start: int, stop: int
) -> np.ndarray:
    """On the inference thread: copies ``start:stop`` of the N*P occluded copies of ``x``
    (image n, patch k is copy n*P + k) -> their (stop - start, L) probabilities."""
    patches = len(masks)
    index = torch.arange(start, stop, device=x.device)
    batch = x[index // patches] * masks[index % patches].to(x.dtype)
    return forward_normalised(model, batch.contiguous(memory_format=torch.channels_last))


def occlusion_maps(base: np.ndarray, occluded: np.ndarray, grid: int) -> np.ndarray:
    """base (N, L) and occluded (N*grid*grid, L) probabilities -> maps (N, L, grid, grid)."""
    n, labels = base.shape
    drops = base[:, None, :] - occluded.reshape(n, grid * grid, labels)
    return np.maximum(drops, 0).transpose(0, 2, 1).reshape(n, labels, grid, grid)


def explain_on_thread(
    model: LoadedModel, pixels: np.ndarray, grid: int, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """All in one go on the calling thread (tests, bench): (N, 3, H, W) uint8 ->
    probabilities (N, L) and maps (N, L, grid, grid)."""
    x = normalise(model, pixels)
    masks = keep_masks(model.spec.input_size, grid, model.device)
    base = forward_normalised(model, x)
    total = len(x) * len(masks)
    parts = [
        occluded_probabilities(model, x, masks, s, min(total, s + chunk))
        for s in range(0, total, chunk)
    ]
    return base, occlusion_maps(base, np.concatenate(parts), grid)
