"""The one resize both sides share, so a served image is bit-identical to what evaluation saw.

Training's eval transform is torchvision's ``v2.Resize(input_size, interpolation)`` on a PIL
image, which calls exactly ``PIL.Image.resize`` with the same filter; serving calls this.
"""

from __future__ import annotations

from PIL import Image

PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def resize_for_model(
    image: Image.Image, input_size: tuple[int, int], interpolation: str
) -> Image.Image:
    """Resize an RGB image to the model's (height, width), ignoring aspect ratio as training did."""
    height, width = input_size
    if image.size == (width, height):
        return image
    return image.resize((width, height), PIL_FILTERS[interpolation])
