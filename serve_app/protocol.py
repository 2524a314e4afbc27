"""What travels between the Ingress and the model deployment, and nothing else.

Every model call carries the ``PreprocessSpec`` its pixels were prepared with, and the model
checks it against the artifact it serves *now*: a new version with another input size,
interpolation, mean or std can never be fed pixels prepared the old way. A mismatch comes back
as ``SpecMismatch`` holding the current spec, and the ingress re-decodes with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model_store import ArtifactMetadata

# The metadata fields that decide how an image becomes model input. tests/test_protocol.py fails
# when ArtifactMetadata gains a field that is not classified here or in NOT_PREPROCESSING.
PREPROCESS_FIELDS = ("input_size", "interpolation", "mean", "std")


@dataclass(frozen=True)
class PreprocessSpec:
    """How pixels are prepared for one model version: resize to ``input_size`` (height, width)
    with ``interpolation``, then ``(x / 255 - mean) / std`` per RGB channel on the model side."""

    input_size: tuple[int, int]
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, metadata: ArtifactMetadata) -> PreprocessSpec:
        values: dict[str, Any] = {f: getattr(metadata, f) for f in PREPROCESS_FIELDS}
        return cls(
            input_size=tuple(values["input_size"]),
            interpolation=values["interpolation"],
            mean=tuple(values["mean"]),
            std=tuple(values["std"]),
        )


class ModelNotReady(RuntimeError):
    """The replica has no model loaded (its first artifact was refused or is still loading)."""


@dataclass(frozen=True)
class SpecMismatch:
    """The caller's pixels were prepared for another model version; ``current`` is the spec of
    the model serving now."""

    current: PreprocessSpec


@dataclass(frozen=True)
class ImageRejected:
    """An image the model replica could not decode (decode_on: model): a 400 for that image."""

    code: str
    detail: str


@dataclass(frozen=True)
class Prediction:
    """One image's result at the ingress; carries its own labels and threshold so a response is
    always formatted with the version that produced it."""

    name: str
    version: str
    labels: tuple[str, ...]
    threshold: float
    probabilities: np.ndarray  # (num_labels,) float32
    # Each label's own decision threshold (tuned on validation at export); None: ``threshold``
    # for every label (an artifact without tuned thresholds).
    thresholds: np.ndarray | None = None  # (num_labels,) float32


ImageResult = Prediction | SpecMismatch | ImageRejected


@dataclass(frozen=True)
class Predictions:
    """What one model call returns: a result per image sent, all from one model version.

    ``probabilities`` holds a row per image, in order; rows of images listed in ``rejected``
    (index -> reason) are undefined. ``mismatch`` is set instead when the whole call was
    prepared for another spec."""

    name: str
    version: str
    labels: tuple[str, ...]
    threshold: float
    probabilities: np.ndarray | None  # (N, num_labels) float32
    mismatch: SpecMismatch | None = None
    rejected: dict[int, ImageRejected] | None = None
    thresholds: np.ndarray | None = None  # (num_labels,) float32, see Prediction.thresholds

    def result(self, i: int) -> ImageResult:
        if self.mismatch is not None:
            return self.mismatch
        if self.rejected and i in self.rejected:
            return self.rejected[i]
        return Prediction(
            self.name,
            self.version,
            self.labels,
            self.threshold,
            self.probabilities[i],
            self.thresholds,
        )
