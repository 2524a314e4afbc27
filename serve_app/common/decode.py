"""Stage 1 of the pipeline (decode -> predict -> encode): untrusted bytes -> uint8 CHW array.

Every failure is an ApiError (a 4xx), never a crash: nothing here may take a replica down.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from model_store.preprocess import resize_for_model
from serve_app.common.errors import ApiError
from serve_app.common.protocol import PreprocessSpec

# Only these parsers are ever run on user bytes (fewer decoders, less attack surface).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")  # JPEG also opens MPO (phone photos)
SUPPORTED_TEXT = "JPEG, PNG, WebP, BMP or GIF"


EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says, read without decoding its pixels."""

    format: str
    width: int
    height: int
    orientation: int  # EXIF orientation 1..8 (1: as stored)


def inspect_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Check untrusted bytes from their header alone (decode_on: model): empty, not one of the
    allowed formats, or more pixels than ``max_pixels`` -> ApiError 400. A file whose header is
    fine but whose data is corrupt is refused later, where it is decoded."""
    with _refusing_bad_images():
        image = _open_checked(data, max_pixels)
        try:
            orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
        except Exception:
            orientation = 1  # a broken EXIF block does not stop the decode (PIL ignores it too)
        return ImageInfo(image.format, image.width, image.height, orientation)


def decode_image(data: bytes, spec: PreprocessSpec, max_pixels: int) -> np.ndarray:
    """Image file bytes -> (3, H, W) uint8 array at the model's input size."""
    with _refusing_bad_images():
        image = _open_and_load(data, spec, max_pixels)
    return _to_chw(image)


def open_photo(
    data: bytes, max_pixels: int, min_side: int
) -> tuple[Image.Image, tuple[int, int], float]:
    """Image bytes -> (the photo, RGB and oriented by its EXIF; the oriented file's (width,
    height); file pixels per photo pixel). A JPEG decodes at 1/2..1/8 scale (libjpeg's fast
    path) when its longer side stays at least ``min_side``. ApiError 400 as decode_image."""
    with _refusing_bad_images():
        image = _open_checked(data, max_pixels)
        stored = image.size
        if image.format in ("JPEG", "MPO"):
            image.draft("RGB", (min_side, min_side))
        image.load()
        scale = stored[0] / image.size[0]
        try:
            rotated = int(image.getexif().get(EXIF_ORIENTATION, 1)) in (5, 6, 7, 8)
        except Exception:
            rotated = False  # exif_transpose ignores a broken EXIF block too
        image = _to_rgb(ImageOps.exif_transpose(image))
    return image, (stored[::-1] if rotated else stored), scale


@contextlib.contextmanager
def _refusing_bad_images() -> Iterator[None]:
    """Every way Pillow fails on bad bytes -> ApiError 400."""
    with warnings.catch_warnings():
        # Pillow's decompression-bomb guard warns before it errors; treat both as refusals.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except ApiError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ApiError(400, "image_too_large", f"refused as a decompression bomb: {e}") from e
        except UnidentifiedImageError as e:
            raise ApiError(
                400, "undecodable_image", f"not a decodable {SUPPORTED_TEXT} image"
            ) from e
        except Exception as e:
            # Truncated or corrupted files surface as OSError, SyntaxError, ValueError,
            # EOFError, IndexError... inside Pillow's decoders: all are the client's bad bytes.
            raise ApiError(400, "undecodable_image", f"the image could not be decoded: {e}") from e


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ApiError(400, "empty_image", "the image is empty (0 bytes)")
    image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(
            400,
            "image_too_large",
            f"{width}x{height} is more than the {max_pixels} pixels this service decodes",
        )
    return image


def _open_and_load(data: bytes, spec: PreprocessSpec, max_pixels: int) -> Image.Image:
    image = _open_checked(data, max_pixels)
    if image.format in ("JPEG", "MPO"):
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the photo is at least 4x the model
        # input: a 12 MP photo then decodes several times faster. Asking for twice the input
        # side keeps images near training size (CelebA's 178x218) decoding exactly as in
        # training. Square request because EXIF rotation may still swap the axes.
        side = 2 * max(spec.input_size)
        image.draft("RGB", (side, side))
    image.load()  # the full decode happens here; truncated data raises OSError
    image = ImageOps.exif_transpose(image)  # phones store rotation in EXIF
    image = _to_rgb(image)
    return resize_for_model(image, spec.input_size, spec.interpolation)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as a browser shows them, not black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_chw(image: Image.Image) -> np.ndarray:
    # (H, W, 3) -> a (3, H, W) view; np.stack copies it into the model call's batch.
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
