"""``decode_on: model``: the model replica decodes a whole batch of uploaded files itself.

The ingress only checks the bytes (size, format, pixel count from the header:
``serve_app.decode.inspect_image``) and forwards them: a 10 KB JPEG crosses the hop instead of
the 150 KB of pixels it decodes to. Here JPEGs go through ``torchvision.io.decode_jpeg`` as one
list, on the model's device (nvJPEG, batched, on CUDA; libjpeg-turbo on CPU), are turned by their
EXIF orientation and resized on the device; other formats (PNG, WebP, BMP, GIF) and any JPEG that
torchvision refuses take the ingress's PIL path on the CPU, so they answer exactly as with
``decode_on: ingress``.

Tolerance against training's PIL pipeline: tests/test_preprocess_contract.py states it (the
resize is ``torchvision.transforms.v2.functional.resize`` with antialias, not PIL's filter).
"""

from __future__ import annotations

import warnings

import torch
import torchvision
from torchvision.io import ImageReadMode
from torchvision.transforms.v2 import functional as tvf

from serve_app.common.decode import decode_image, inspect_image
from serve_app.common.errors import ApiError
from serve_app.common.protocol import ImageRejected, PreprocessSpec

JPEG_MAGIC = b"\xff\xd8\xff"

# torchvision 0.29 marks its image decoders deprecated in favour of torchcodec, which has no
# batched nvJPEG decode of a list of files yet; this is the documented batched GPU decoder.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(3, H, W) -> the image as displayed, for an EXIF orientation 1..8 (as PIL's
    ImageOps.exif_transpose; decode_jpeg applies EXIF on CPU only, so it is done here for both)."""
    if orientation == 2:
        return image.flip(2)
    if orientation == 3:
        return image.flip(1, 2)
    if orientation == 4:
        return image.flip(1)
    if orientation == 5:
        return image.transpose(1, 2)
    if orientation == 6:
        return torch.rot90(image, -1, (1, 2))
    if orientation == 7:
        return image.transpose(1, 2).flip(1, 2)
    if orientation == 8:
        return torch.rot90(image, 1, (1, 2))
    return image


def resize_on_device(image: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """(3, h, w) uint8 -> (3, H, W) uint8 at the model's input size (aspect ratio ignored, as in
    training)."""
    if tuple(image.shape[1:]) == spec.input_size:
        return image
    mode = torchvision.transforms.InterpolationMode(spec.interpolation)
    return tvf.resize(image, list(spec.input_size), interpolation=mode, antialias=True)


def _decode_jpegs(files: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """Each JPEG -> (3, h, w) uint8 on ``device``; None where torchvision refused it."""
    tensors = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
    try:
        return list(torchvision.io.decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass  # one bad file fails the whole list: find it
    out: list[torch.Tensor | None] = []
    for t in tensors:
        try:
            out.append(torchvision.io.decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out.append(None)
    return out


def decode_batch(
    files: list[bytes], spec: PreprocessSpec, device: torch.device, max_pixels: int
) -> tuple[torch.Tensor | None, list[int], dict[int, ImageRejected]]:
    """Uploaded files -> ((n_ok, 3, H, W) uint8 on ``device``, indices of those images,
    {index: why refused} for the rest)."""
    decoded: dict[int, torch.Tensor] = {}
    rejected: dict[int, ImageRejected] = {}
    jpegs: list[tuple[int, int]] = []  # (index, EXIF orientation)
    for i, data in enumerate(files):
        try:
            info = inspect_image(data, max_pixels)
        except ApiError as e:
            rejected[i] = ImageRejected(e.code, e.detail)
            continue
        if info.format in ("JPEG", "MPO") and data.startswith(JPEG_MAGIC):
            jpegs.append((i, info.orientation))
    if jpegs:
        images = _decode_jpegs([files[i] for i, _ in jpegs], device)
        for (i, orientation), image in zip(jpegs, images):
            if image is not None:
                decoded[i] = resize_on_device(orient(image, orientation), spec)
    for i, data in enumerate(files):
        if i in decoded or i in rejected:
            continue
        try:  # not a JPEG, or one torchvision refused: the ingress's own PIL path
            pixels = torch.from_numpy(decode_image(data, spec, max_pixels).copy())
        except ApiError as e:
            rejected[i] = ImageRejected(e.code, e.detail)
            continue
        decoded[i] = pixels.to(device)
    order = sorted(decoded)
    batch = torch.stack([decoded[i] for i in order]) if order else None
    return batch, order, rejected
