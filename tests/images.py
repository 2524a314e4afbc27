"""Real image files for tests, made with Pillow."""

from __future__ import annotations

import io

from PIL import Image

RED, GREEN, BLUE, BLACK, WHITE = (
    (250, 10, 10),
    (10, 250, 10),
    (10, 10, 250),
    (0, 0, 0),
    (255, 255, 255),
)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def solid(color=RED, size=(178, 218), fmt="JPEG", mode="RGB") -> bytes:
    return encode(Image.new(mode, size, color), fmt)


def two_frame_gif(first=RED, second=BLUE) -> bytes:
    frames = [Image.new("RGB", (64, 64), c).convert("P") for c in (first, second)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def transparent_png() -> bytes:
    """Fully transparent pixels: served as white (all channels high), not black."""
    return encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG")


def top_red_displayed() -> Image.Image:
    """What a viewer should see: red top half, black bottom half."""
    img = Image.new("RGB", (80, 80), BLACK)
    img.paste(RED, (0, 0, 80, 40))
    return img


def exif_rotated_jpeg() -> bytes:
    """Pixels stored rotated, with EXIF orientation 6 (rotate 90 degrees clockwise to view):
    only a decoder that applies EXIF sees red on top."""
    stored = top_red_displayed().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
