"""Benchmark artifacts: a torchvision backbone with random weights, exported exactly as
training exports (speed does not depend on the weights)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from model_store import export_frozen_torchscript, save_artifact
from train_job.backbones import build_backbone
from train_job.celeba import ATTRIBUTES
from train_job.data import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATION

STORE = Path(__file__).resolve().parent / ".store"


def bench_artifact(backbone: str, image_size: int = 224) -> str:
    """Returns the model_uri of `<store>/bench-<backbone>/latest`, exporting it once."""
    name = f"bench-{backbone}-{image_size}"
    latest = STORE / name / "latest"
    if latest.exists():
        return str(latest)
    torch.manual_seed(0)
    net = nn.Sequential(build_backbone(backbone, len(ATTRIBUTES)), nn.Sigmoid()).eval()
    data = export_frozen_torchscript(net, torch.randn(2, 3, image_size, image_size), atol=1e-3)
    save_artifact(
        str(STORE),
        name,
        data,
        {
            "labels": list(ATTRIBUTES),
            "input_size": [image_size, image_size],
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "interpolation": INTERPOLATION,
            "output_kind": "probabilities",
            "backbone": backbone,
        },
    )
    return str(latest)
