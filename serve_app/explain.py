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
chunks on its inference thread so that /classify batches interleave with it (face_attribute_model.py).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from serve_app.decode import decode_image, inspect_image
from serve_app.errors import ApiError
from serve_app.inference import LoadedModel, to_device
from serve_app.protocol import PreprocessSpec, SpecMismatch

METHOD = "occlusion"
MIN_GRID, MAX_GRID = 2, 16
PHOTO_SIDE = 384  # longest side of the photo under a PNG overlay
ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class ExplainCall:
    """One call from an ingress: (N, 3, H, W) uint8 pixels prepared with ``spec``."""

    pixels: np.ndarray
    spec: PreprocessSpec
    grid: int

    def __len__(self) -> int:
        return len(self.pixels)


@dataclass(frozen=True)
class Explanations:
    """What one explain call returns, all from one model version: probabilities (N, L) and the
    maps of every label (N, L, grid, grid), float32, or ``mismatch`` when the pixels were
    prepared for another spec."""

    name: str
    version: str
    labels: tuple[str, ...]
    threshold: float
    grid: int
    probabilities: np.ndarray | None
    maps: np.ndarray | None
    mismatch: SpecMismatch | None = None
    # Each label's tuned threshold (as Prediction.thresholds); None: ``threshold`` for all.
    thresholds: np.ndarray | None = None  # (L,) float32

    def label_thresholds(self) -> np.ndarray:
        """(L,) the threshold each label is judged by, as /classify judges it by default."""
        if self.thresholds is not None:
            return self.thresholds
        return np.full(len(self.labels), self.threshold, np.float32)


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


# ---- the ingress's side: the query, the choice of attributes, the answer ----------------------


@dataclass(frozen=True)
class ExplainQuery:
    """``?attribute=NAME`` (repeatable), ``format=json|png``, ``grid=N``, ``opacity=0..1``."""

    attributes: tuple[str, ...]
    format: str
    grid: int
    opacity: float

    @classmethod
    def parse(cls, params: Any, default_grid: int) -> ExplainQuery:
        """Starlette's QueryParams (getlist, get) -> a query, or ApiError 422 naming the bad
        parameter."""
        unknown = sorted(set(params.keys()) - {"attribute", "format", "grid", "opacity"})
        if unknown:
            raise _bad_query(
                f"unknown query parameter(s) {unknown}: use attribute, format, grid, opacity"
            )
        fmt = params.get("format", "json")
        if fmt not in ("json", "png"):
            raise _bad_query(f"format={fmt!r}: use json or png")
        grid = _number(params.get("grid", str(default_grid)), "grid", int, MIN_GRID, MAX_GRID)
        opacity = _number(params.get("opacity", "0.6"), "opacity", float, 0.0, 1.0)
        attributes = tuple(dict.fromkeys(a.strip() for a in params.getlist("attribute")))
        return cls(attributes, fmt, grid, opacity)


def _number(text: str, name: str, kind: type, low: float, high: float) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise _bad_query(f"{name}={text!r}: a {kind.__name__} from {low} to {high}")
    return value


def _bad_query(detail: str) -> ApiError:
    return ApiError(422, "invalid_query", detail)


def check_attributes(asked: Sequence[str], labels: Sequence[str]) -> None:
    """ApiError 422 listing the valid names when an asked attribute is not one of ``labels``."""
    unknown = [a for a in asked if a not in labels]
    if unknown:
        raise ApiError(
            422,
            "unknown_attribute",
            f"unknown attribute(s) {unknown}; valid names: {', '.join(labels)}",
        )


def choose_attributes(
    asked: Sequence[str],
    labels: Sequence[str],
    probabilities: np.ndarray,
    threshold: float | np.ndarray,
    most: int,
) -> list[int]:
    """Label indices to answer: the asked ones in order, or by default the most probable at or
    above their threshold (one for all, or (L,) each label's own), at most ``most`` of them (the
    single most probable when none is)."""
    if asked:
        check_attributes(asked, labels)
        return [list(labels).index(a) for a in asked]
    ranked = [int(i) for i in np.argsort(-probabilities, kind="stable")]
    cut = np.broadcast_to(np.asarray(threshold), probabilities.shape)
    above = [i for i in ranked if probabilities[i] >= cut[i]]
    return (above or ranked[:1])[:most]


def encode_explanations(
    explanations: Explanations, row: int, chosen: Sequence[int]
) -> dict[str, Any]:
    """The JSON answer for image ``row``: maps row-major, row 0 at the top of the image."""
    probs, maps = explanations.probabilities[row], explanations.maps[row]
    return {
        "explanations": [
            {
                "attribute": explanations.labels[i],
                "probability": round(float(probs[i]), 6),
                "map": np.round(maps[i], 6).tolist(),
            }
            for i in chosen
        ],
        "model": {"name": explanations.name, "version": explanations.version},
        "method": METHOD,
        "grid": [explanations.grid, explanations.grid],
    }


def photo_for_overlay(data: bytes, spec: PreprocessSpec, max_pixels: int) -> Image.Image:
    """The uploaded photo as the page shows it (EXIF rotation applied, aspect kept), its longest
    side PHOTO_SIDE at most; decoded the way /classify decodes (ApiError 400 on bad bytes)."""
    info = inspect_image(data, max_pixels)
    width, height = (
        (info.height, info.width) if info.orientation in ROTATED else (info.width, info.height)
    )
    scale = min(1.0, PHOTO_SIDE / max(width, height))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    pixels = decode_image(
        data, replace(spec, input_size=size, interpolation="bilinear"), max_pixels
    )
    return Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), "RGB")


def png_panels(
    explanations: Explanations, row: int, chosen: Sequence[int]
) -> list[tuple[str, float, np.ndarray]]:
    probs, maps = explanations.probabilities[row], explanations.maps[row]
    return [(explanations.labels[i], float(probs[i]), maps[i]) for i in chosen]


# ---- the PNG overlay --------------------------------------------------------------------------

# A "hot" colour ramp: black-red -> red -> yellow -> white, as (value, R, G, B) stops.
_STOPS = np.array([[0.0, 80, 0, 0], [0.4, 230, 30, 0], [0.75, 255, 210, 0], [1.0, 255, 255, 230]])


def heat_colours(values: np.ndarray) -> np.ndarray:
    """values in [0, 1] (any shape) -> uint8 RGB (shape + (3,))."""
    channels = [np.interp(values, _STOPS[:, 0], _STOPS[:, c]) for c in (1, 2, 3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def overlay(photo: Image.Image, heat: np.ndarray, opacity: float) -> Image.Image:
    """The photo with ``heat`` ((g, g), non-negative) scaled to its size over it: colour and
    opacity grow with the value (scaled to the map's maximum), so cold cells stay clear."""
    peak = float(heat.max())
    scaled = heat / peak if peak > 0 else heat
    small = Image.fromarray((scaled * 255).round().astype(np.uint8), "L")
    smooth = np.asarray(small.resize(photo.size, Image.Resampling.BILINEAR)) / 255.0
    colours = Image.fromarray(heat_colours(smooth), "RGB")
    alpha = Image.fromarray((smooth * opacity * 255).round().astype(np.uint8), "L")
    return Image.composite(colours, photo.convert("RGB"), alpha)


def overlay_png(
    photo: Image.Image, panels: list[tuple[str, float, np.ndarray]], opacity: float
) -> bytes:
    """One overlaid copy of the photo per (attribute, probability, map), side by side, each
    captioned; a PNG file's bytes."""
    width, height = photo.size
    caption = 18
    sheet = Image.new("RGB", (width * len(panels), height + caption), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (attribute, probability, heat) in enumerate(panels):
        sheet.paste(overlay(photo, heat, opacity), (k * width, caption))
        draw.text((k * width + 4, 3), f"{attribute} {probability:.2f}", fill=(20, 20, 20))
    out = io.BytesIO()
    sheet.save(out, "PNG")
    return out.getvalue()
