"""A seeded generator of malformed uploads: (category, request kwargs, decodable?)."""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterator

from PIL import Image

from tests import images

FORMATS = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
}


def _valid(rng: random.Random, fmt: str) -> bytes:
    size = (rng.randint(16, 300), rng.randint(16, 300))
    color = tuple(rng.randint(0, 255) for _ in range(3))
    img = Image.new("RGB", size, color)
    for _ in range(5):  # some structure so decoders have real work
        x, y = rng.randint(0, size[0] - 1), rng.randint(0, size[1] - 1)
        img.paste(
            tuple(rng.randint(0, 255) for _ in range(3)),
            (x, y, min(size[0], x + 9), min(size[1], y + 9)),
        )
    return images.encode(img, fmt)


def locally_decodable(data: bytes) -> bool:
    """An independent oracle: can plain Pillow fully decode it as one of the served formats?"""
    try:
        with Image.open(io.BytesIO(data), formats=list(FORMATS)) as img:
            if img.width * img.height > 4_000_000:
                return False
            img.load()
        return True
    except Exception:
        return False


def _png_header_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _gif_header_claiming(width: int, height: int) -> bytes:
    return (
        b"GIF89a"
        + struct.pack("<HH", width, height)
        + b"\x00\x00\x00"
        + b",\x00\x00\x00\x00"
        + struct.pack("<HH", width, height)
        + b"\x00\x02\x02D\x01\x00;"
    )


def raw(data: bytes, content_type: str | None) -> dict:
    return {"content": data, "headers": {"content-type": content_type} if content_type else {}}


def multipart(data: bytes, field: str = "image", content_type: str = "image/jpeg") -> dict:
    return {"files": {field: ("upload", data, content_type)}}


def generate(seed: int = 0, limit_bytes: int = 1024 * 1024) -> Iterator[tuple[str, dict, bool]]:
    rng = random.Random(seed)
    for _ in range(200):
        data = rng.randbytes(rng.randint(1, 50_000))
        yield "random_bytes", raw(data, rng.choice(list(FORMATS.values()))), False
    for _ in range(250):
        fmt = rng.choice(list(FORMATS))
        good = _valid(rng, fmt)
        cut = good[: rng.randint(1, len(good) - 1)]
        yield "truncated", multipart(cut, content_type=FORMATS[fmt]), locally_decodable(cut)
    for _ in range(250):
        fmt = rng.choice(list(FORMATS))
        data = bytearray(_valid(rng, fmt))
        for _ in range(rng.randint(1, 12)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        yield "corrupted", raw(bytes(data), FORMATS[fmt]), locally_decodable(bytes(data))
    for _ in range(25):
        yield "zero_bytes", raw(b"", "image/jpeg"), False
        yield "zero_bytes_multipart", multipart(b""), False
    for _ in range(100):
        body = images.solid()
        ctype = rng.choice(
            [
                "text/plain",
                "application/json",
                "application/octet-stream",
                None,
                "image",
                "multipart/form-data",
                "application/x-www-form-urlencoded",
            ]
        )
        yield "wrong_content_type", raw(body, ctype), False
    for _ in range(60):
        yield (
            "multipart_without_image",
            multipart(images.solid(), field=rng.choice(["file", "photo", "img", ""])),
            False,
        )
    for _ in range(40):
        garbage = b'--XYZ\r\nContent-Disposition: form-data; name="image"\r\n\r\n' + rng.randbytes(
            200
        )
        yield (
            "malformed_multipart",
            raw(garbage, "multipart/form-data; boundary=" + rng.choice(["XYZ", "other"])),
            False,
        )
    for _ in range(30):
        w, h = rng.randint(5_000, 60_000), rng.randint(5_000, 60_000)
        yield "huge_dimensions_png", raw(_png_header_claiming(w, h), "image/png"), False
        yield (
            "huge_dimensions_gif",
            multipart(_gif_header_claiming(w, h), content_type="image/gif"),
            False,
        )
    for _ in range(30):
        yield (
            "over_size_limit",
            raw(rng.randbytes(limit_bytes + rng.randint(1, 2 * limit_bytes)), "image/jpeg"),
            False,
        )


def slow_body(data: bytes, chunks: int, pause_s: float) -> Iterator[bytes]:
    import time

    step = max(1, len(data) // chunks)
    for i in range(0, len(data), step):
        time.sleep(pause_s)
        yield data[i : i + step]
