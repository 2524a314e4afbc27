"""decode_on: model — the model replica's batched decode gives the pixels the ingress's PIL path
gives (within a stated tolerance), turns EXIF-rotated photos the same way, and refuses each bad
file alone with the same error code, while the good files of the batch go through."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from serve_app.common.decode import decode_image
from serve_app.common.errors import ApiError
from serve_app.common.protocol import PreprocessSpec
from serve_app.model.decode_batch import decode_batch
from tests import images
from train_job.synthetic import generate

CPU = torch.device("cpu")
MAX_PIXELS = 10**8


def spec(size=(64, 64), interpolation="bilinear") -> PreprocessSpec:
    return PreprocessSpec(size, interpolation, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def pil_path(files: list[bytes], s: PreprocessSpec) -> np.ndarray:
    return np.stack([decode_image(f, s, MAX_PIXELS) for f in files]).astype(np.int16)


def model_path(files: list[bytes], s: PreprocessSpec) -> np.ndarray:
    batch, order, rejected = decode_batch(files, s, CPU, MAX_PIXELS)
    assert rejected == {} and order == list(range(len(files)))
    return batch.numpy().astype(np.int16)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> list[bytes]:
    out = tmp_path_factory.mktemp("faces")
    generate(out, 24, seed=5)
    return [p.read_bytes() for p in sorted((out / "img_align_celeba").glob("*.jpg"))]


@pytest.mark.parametrize("size", [(64, 64), (224, 224), (218, 178)])
def test_training_size_jpegs_decode_within_one_level_of_the_pil_path(faces, size):
    diff = np.abs(model_path(faces, spec(size)) - pil_path(faces, spec(size)))
    # Measured: max 1, mean 0.001 at 64x64; identical at the photos' own size.
    assert diff.max() <= 1, diff.max()
    assert diff.mean() <= 0.01


def photo(width=1000, height=1200, seed=0, **save) -> bytes:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (60, 50, 3), dtype=np.uint8))
    big = small.resize((width, height), Image.Resampling.BICUBIC)
    return images.encode(big.filter(ImageFilter.GaussianBlur(3)), "JPEG", quality=90, **save)


def test_large_photos_decode_close_to_the_pil_path():
    # PIL decodes large JPEGs at a reduced DCT scale (draft); the model path decodes them whole
    # and resizes with antialias. Measured: max 2-3 levels, mean 0.3-0.4.
    files = [photo(seed=s) for s in range(3)]
    for size in ((64, 64), (224, 224)):
        diff = np.abs(model_path(files, spec(size)) - pil_path(files, spec(size)))
        assert diff.max() <= 6 and diff.mean() <= 1.0, (size, diff.max(), diff.mean())


def with_orientation(orientation: int) -> bytes:
    """An asymmetric photo stored with an EXIF orientation tag."""
    image = Image.new("RGB", (120, 80), images.BLUE)
    image.paste(images.RED, (0, 0, 40, 20))  # a red corner: every turn moves it elsewhere
    exif = Image.Exif()
    exif[0x0112] = orientation
    return images.encode(image, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pil_applies_it(orientation):
    files = [with_orientation(orientation)]
    s = spec((48, 40))
    diff = np.abs(model_path(files, s) - pil_path(files, s))
    assert diff.max() <= 2, f"orientation {orientation}: max diff {diff.max()}"


def test_other_formats_take_the_pil_path_unchanged():
    files = [
        images.solid(images.GREEN, fmt="PNG"),
        images.two_frame_gif(),
        images.transparent_png(),
        images.solid(images.RED, fmt="WEBP"),
        images.solid(images.BLUE, fmt="BMP"),
    ]
    assert np.array_equal(model_path(files, spec()), pil_path(files, spec()))


def pil_error(data: bytes, max_pixels: int = MAX_PIXELS) -> str:
    with pytest.raises(ApiError) as e:
        decode_image(data, spec(), max_pixels)
    return e.value.code


def test_each_bad_file_is_refused_alone_with_the_ingress_error_code(faces):
    good = faces[0]
    truncated = good[: len(good) // 2]
    corrupt = good[:200] + bytes(len(good) - 200)
    bad = [b"", b"not an image", truncated, corrupt, b"\xff\xd8\xff" + b"\x00" * 64]
    files = [good, *bad, faces[1]]
    batch, order, rejected = decode_batch(files, spec(), CPU, MAX_PIXELS)
    assert order[0] == 0 and order[-1] == len(files) - 1
    assert batch.shape[0] == len(order)
    for i, data in enumerate(bad, start=1):
        if i in order:  # a truncated JPEG that libjpeg pads, as PIL would not: then PIL agrees
            decode_image(data, spec(), MAX_PIXELS)
            continue
        assert rejected[i].code == pil_error(data), (i, rejected[i])
    assert rejected[1].code == "empty_image"
    assert rejected[2].code == "undecodable_image"


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    big = photo(2000, 2000)
    batch, order, rejected = decode_batch([big], spec(), CPU, max_pixels=1_000_000)
    assert batch is None and order == []
    assert rejected[0].code == "image_too_large" == pil_error(big, max_pixels=1_000_000)


def test_cmyk_and_grayscale_jpegs_come_out_as_pil_makes_them():
    files = []
    for mode, color in (("CMYK", (0, 255, 255, 0)), ("L", 90)):
        buf = io.BytesIO()
        Image.new(mode, (64, 64), color).save(buf, "JPEG")
        files.append(buf.getvalue())
    diff = np.abs(model_path(files, spec()) - pil_path(files, spec()))
    assert diff.max() <= 2


def test_a_jpeg_torchvision_refuses_is_decoded_by_pil(monkeypatch):
    import serve_app.model.decode_batch as model_decode

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported JPEG")

    monkeypatch.setattr(model_decode.torchvision.io, "decode_jpeg", refuse)
    files = [images.solid(images.RED)]
    assert np.array_equal(model_path(files, spec()), pil_path(files, spec()))
