"""Benchmark artifacts: a torchvision backbone with random weights, exported exactly as
training exports (speed does not depend on the weights), and the same weights as an eager
module, for comparing the served artifact with plain PyTorch."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from model_store import ArtifactError, export_torchscript, load_artifact, save_artifact
from train_job.backbones import build_backbone
from train_job.celeba import ATTRIBUTES
from train_job.data import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATION

STORE = Path(__file__).resolve().parent / ".store"


def bench_artifact(backbone: str, image_size: int = 224) -> str:
    """Returns the model_uri of ``<store>/bench-<backbone>-<image_size>/latest``, exporting it
    when there is none, or when the cached one no longer loads (e.g. an older format_version
    left by an older checkout)."""
    name = f"bench-{backbone}-{image_size}"
    latest = STORE / name / "latest"
    if latest.exists():
        try:
            load_artifact(str(latest))
            return str(latest)
        except ArtifactError:
            pass  # stale cache: export a new version below
    torch.manual_seed(0)
    net = nn.Sequential(build_backbone(backbone, len(ATTRIBUTES)), nn.Sigmoid()).eval()
    data = export_torchscript(net, torch.randn(2, 3, image_size, image_size), atol=1e-3)
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


def eager_model(model_uri: str) -> nn.Module:
    """The artifact's weights in an eager ``nn.Sequential(backbone, Sigmoid)`` (how training
    and bench_artifact export), float32 on the CPU, eval mode. The traced file keeps the
    module tree, so its state_dict keys match; strict loading refuses any other architecture."""
    artifact = load_artifact(model_uri)
    meta = artifact.metadata
    if not meta.backbone:
        raise ArtifactError(f"{model_uri}: metadata names no backbone to rebuild eagerly")
    scripted = torch.jit.load(io.BytesIO(artifact.model_bytes), map_location="cpu")
    head = [nn.Sigmoid()] if meta.output_kind == "probabilities" else []
    net = nn.Sequential(build_backbone(meta.backbone, len(meta.labels)), *head)
    net.load_state_dict(scripted.state_dict(), strict=True)
    return net.eval()
