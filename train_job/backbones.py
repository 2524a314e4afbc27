"""name -> factory registry of backbones with a ``num_labels``-way multi-label head.

Every factory returns an nn.Module mapping (N, 3, H, W) normalised images to (N, num_labels)
logits. ``pretrained=True`` loads torchvision's ImageNet weights (downloaded on first use).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision import models

BackboneFactory = Callable[[int, bool], nn.Module]
BACKBONES: dict[str, BackboneFactory] = {}


class PretrainedWeightsUnavailable(RuntimeError):
    pass


def register(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    def add(factory: BackboneFactory) -> BackboneFactory:
        BACKBONES[name] = factory
        return factory

    return add


def build_backbone(name: str, num_labels: int, pretrained: bool = False) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](num_labels, pretrained)


def _torchvision(name: str, pretrained: bool) -> nn.Module:
    if not pretrained:
        return models.get_model(name, weights=None)
    try:
        return models.get_model(name, weights="DEFAULT")
    except Exception as e:  # no network, proxy, hub outage...
        raise PretrainedWeightsUnavailable(
            f"could not load torchvision's pretrained weights for {name}: {e}. Put the weight "
            "file in $TORCH_HOME/hub/checkpoints/ (see torchvision docs) or drop --pretrained."
        ) from e


def _replace_last_linear(seq: nn.Sequential, num_labels: int) -> None:
    last = seq[-1]
    seq[-1] = nn.Linear(last.in_features, num_labels)


def _resnet(name: str) -> BackboneFactory:
    def factory(num_labels: int, pretrained: bool) -> nn.Module:
        net = _torchvision(name, pretrained)
        net.fc = nn.Linear(net.fc.in_features, num_labels)
        return net

    return factory


def _classifier_head(name: str) -> BackboneFactory:
    def factory(num_labels: int, pretrained: bool) -> nn.Module:
        net = _torchvision(name, pretrained)
        _replace_last_linear(net.classifier, num_labels)
        return net

    return factory


for _name in ("resnet18", "resnet34", "resnet50"):
    register(_name)(_resnet(_name))
for _name in ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"):
    register(_name)(_classifier_head(_name))


@register("small_cnn")
def small_cnn(num_labels: int, pretrained: bool) -> nn.Module:
    """A 4-block CNN (~0.4M parameters) for CPU demos and tests; no pretrained weights."""
    if pretrained:
        raise PretrainedWeightsUnavailable("small_cnn has no pretrained weights; drop --pretrained")

    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )

    return nn.Sequential(
        block(3, 32), block(32, 64), block(64, 96), block(96, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, num_labels),
    )  # fmt: skip
