"""Small real artifacts for tests, written through the same model_store code training uses."""

from __future__ import annotations

import torch
from torch import nn

from model_store import LoadedArtifact, export_torchscript, save_artifact

CELEBA_LABELS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()


class TinyNet(nn.Module):
    """(N, 3, H, W) normalised float -> (N, 40) logits. Outputs 0-2 follow the mean red, green
    and blue of the image, output 3 the red of its top half, so tests steer predictions with
    coloured images (and can see whether EXIF rotation was applied)."""

    def __init__(self, num_labels: int = 40, opposite: bool = False, slow: int = 0):
        """opposite: every logit negated (p -> 1 - p): a model that learned the opposite of
        each attribute, as one trained on scrambled labels can; every decision flips.
        slow: that many 3x3 convolutions of 64 channels run on the input and added back times
        zero: the same answers, a slower forward (tests of the rollout's latency rule)."""
        super().__init__()
        self.burden = (
            nn.Sequential(
                nn.Conv2d(3, 64, 3, padding=1),
                *[nn.Conv2d(64, 64, 3, padding=1) for _ in range(slow)],
            )
            if slow
            else None
        )
        self.pool = nn.AdaptiveAvgPool2d((2, 1))  # (N, 3, 2, 1): top and bottom halves
        self.head = nn.Linear(6, num_labels)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.fill_(-3.0)
            for c in range(3):  # whole image = mean of both halves
                self.head.weight[c, 2 * c] = 2.0
                self.head.weight[c, 2 * c + 1] = 2.0
            self.head.weight[3, 0] = 3.0  # red, top half (below label 0 for all-red images)
            if opposite:
                self.head.weight.neg_()
                self.head.bias.neg_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.pool(x).flatten(1))
        if self.burden is not None:
            out = out + 0.0 * self.burden(x).mean()
        return out


def write_tiny_artifact(
    store: str,
    name: str = "face-attributes",
    input_size: tuple[int, int] = (64, 64),
    version: str | None = None,
    output_kind: str = "logits",
    signing_key: str | None = None,
    interpolation: str = "bilinear",
    thresholds: dict[str, float] | None = None,
    metrics: dict | None = None,
    opposite: bool = False,
    slow: int = 0,
) -> LoadedArtifact:
    """``thresholds``: per-label tuned thresholds to store (e.g. tuned_thresholds()); None
    writes an artifact with the single ``threshold`` only, as before tuning existed."""
    model = TinyNet(len(CELEBA_LABELS), opposite=opposite, slow=slow)
    if output_kind == "probabilities":
        model = nn.Sequential(model, nn.Sigmoid())
    example = torch.randn(2, 3, *input_size)
    data = export_torchscript(model, example)
    return save_artifact(
        store,
        name,
        data,
        {
            "labels": list(CELEBA_LABELS),
            "input_size": list(input_size),
            "interpolation": interpolation,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "threshold": 0.5,
            "output_kind": output_kind,
            "backbone": "tiny-test-net",
            "metrics": {"val_auroc": 0.5} if metrics is None else metrics,
            **({"thresholds": thresholds} if thresholds is not None else {}),
        },
        version=version,
        signing_key=signing_key,
    )


def tuned_thresholds(labels: tuple[str, ...] = CELEBA_LABELS) -> dict[str, float]:
    """Distinct per-label thresholds, none equal to the single 0.5: label i gets
    0.1 + 0.02 * i (0.10 .. 0.88 for 40 labels), so a test can tell which one judged a label."""
    return {label: round(0.1 + 0.02 * i, 2) for i, label in enumerate(labels)}
