"""Serving reproduces training's evaluation preprocessing exactly, from the artifact metadata."""

from __future__ import annotations

import torch
from PIL import Image

from serve_app.common.decode import decode_image
from serve_app.common.protocol import PreprocessSpec
from serve_app.model.inference import LoadedModel, forward
from train_job.data import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATION, eval_transform
from train_job.synthetic import generate


def test_served_pixels_equal_training_eval_pixels(tmp_path):
    generate(tmp_path, 12, seed=3)
    size = (72, 56)
    spec = PreprocessSpec(size, INTERPOLATION, IMAGENET_MEAN, IMAGENET_STD)
    for path in sorted((tmp_path / "img_align_celeba").glob("*.jpg"))[:4]:
        served = torch.from_numpy(decode_image(path.read_bytes(), spec, max_pixels=10**7).copy())
        with Image.open(path) as img:
            trained = eval_transform(size, IMAGENET_MEAN, IMAGENET_STD)(img.convert("RGB"))
        # Undo only the normalisation of the training transform: the pixels must be identical.
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        pixels = ((trained * std + mean) * 255).round().to(torch.uint8)
        assert served.shape == (3, *size)
        assert torch.equal(served, pixels)


def test_model_side_normalisation_equals_training(tmp_path):
    from tests.artifacts import write_tiny_artifact

    art = write_tiny_artifact(str(tmp_path), input_size=(32, 32))
    from serve_app.model.inference import load_model

    loaded: LoadedModel = load_model(art.uri, torch.device("cpu"))
    batch = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean = torch.tensor(art.metadata.mean).view(1, 3, 1, 1)
    std = torch.tensor(art.metadata.std).view(1, 3, 1, 1)
    expected = torch.sigmoid(loaded.module((batch.float() / 255 - mean) / std))
    torch.testing.assert_close(forward(loaded, batch), expected, atol=1e-5, rtol=1e-4)


def test_model_side_decode_is_within_one_level_of_training_eval_pixels(tmp_path):
    """decode_on: model (torchvision decode + antialiased tensor resize on the model's device)
    against training's eval transform (PIL): the tolerance this path is held to is 1 grey level
    per pixel on CelebA-sized JPEGs (measured: max 1, mean 0.001)."""
    from serve_app.model.decode_batch import decode_batch

    generate(tmp_path, 12, seed=4)
    size = (72, 56)
    spec = PreprocessSpec(size, INTERPOLATION, IMAGENET_MEAN, IMAGENET_STD)
    paths = sorted((tmp_path / "img_align_celeba").glob("*.jpg"))[:8]
    batch, order, rejected = decode_batch(
        [p.read_bytes() for p in paths], spec, torch.device("cpu"), max_pixels=10**7
    )
    assert rejected == {} and order == list(range(len(paths)))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for served, path in zip(batch, paths):
        with Image.open(path) as img:
            trained = eval_transform(size, IMAGENET_MEAN, IMAGENET_STD)(img.convert("RGB"))
        pixels = ((trained * std + mean) * 255).round().to(torch.int16)
        assert (served.to(torch.int16) - pixels).abs().max() <= 1
