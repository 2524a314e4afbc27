"""The ingress's side of ``POST /explain`` (docs/explain.md): the query, the choice of attributes,
the JSON answer and the PNG overlay. The maps are computed on the model replica
(serve_app/model/explain.py)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from serve_app.common.decode import decode_image, inspect_image
from serve_app.common.errors import ApiError
from serve_app.common.protocol import (
    EXPLAIN_METHOD,
    MAX_EXPLAIN_GRID,
    MIN_EXPLAIN_GRID,
    Explanations,
    PreprocessSpec,
)

PHOTO_SIDE = 384  # longest side of the photo under a PNG overlay
ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


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
        grid = _number(
            params.get("grid", str(default_grid)), "grid", int, MIN_EXPLAIN_GRID, MAX_EXPLAIN_GRID
        )
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
        "method": EXPLAIN_METHOD,
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
