"""What travels between the Ingress and the model deployment, and nothing else.

Every model call carries the ``PreprocessSpec`` its pixels were prepared with, and the model
checks it against the artifact it serves *now*: a new version with another input size,
interpolation, mean or std can never be fed pixels prepared the old way. A mismatch comes back
as ``SpecMismatch`` holding the current spec, and the ingress re-decodes with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_store import CELEBA_TEMPLATE, ArtifactMetadata, FaceTemplate

# The metadata fields that decide how an image becomes model input. tests/test_protocol.py fails
# when ArtifactMetadata gains a field that is not classified here or in NOT_PREPROCESSING.
PREPROCESS_FIELDS = ("input_size", "interpolation", "mean", "std", "face_template")


@dataclass(frozen=True)
class PreprocessSpec:
    """How pixels are prepared for one model version: resize to ``input_size`` (height, width)
    with ``interpolation``, then ``(x / 255 - mean) / std`` per RGB channel on the model side.
    A face in a photo (``POST /faces``) is first mapped into ``face_template``, the aligned crop
    the model was trained on (CelebA's for an artifact that records none)."""

    input_size: tuple[int, int]
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    face_template: FaceTemplate = CELEBA_TEMPLATE

    @classmethod
    def of(cls, metadata: ArtifactMetadata) -> PreprocessSpec:
        return cls(
            input_size=tuple(metadata.input_size),
            interpolation=metadata.interpolation,
            mean=tuple(metadata.mean),
            std=tuple(metadata.std),
            face_template=metadata.template,
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
class ServiceTime:
    """What the model replica spent on the forward pass an image rode in: ``batch`` images in
    ``ms`` milliseconds (normalisation, forward and the copy back; on its inference thread, so
    queueing before it is not counted). A rollout compares versions on these at equal batch
    sizes (serve_app/rollout/policy.py), so a candidate's queue or cold start is not judged as
    its speed. None for a replica's first passes of a batch size (warm-up)."""

    batch: int
    ms: float


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
    service: ServiceTime | None = None


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
    service: ServiceTime | None = None  # the pass the call's first image rode in

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
            self.service,
        )


# POST /explain: occlusion maps on a grid of MIN_EXPLAIN_GRID..MAX_EXPLAIN_GRID cells a side.
EXPLAIN_METHOD = "occlusion"
MIN_EXPLAIN_GRID, MAX_EXPLAIN_GRID = 2, 16


@dataclass(frozen=True)
class ExplainCall:
    """One call from an ingress: (N, 3, H, W) uint8 pixels prepared with ``spec``."""

    pixels: np.ndarray
    spec: PreprocessSpec
    grid: int

    def __len__(self) -> int:
        return len(self.pixels)


@dataclass(frozen=True)
class Explanations:
    """What one explain call returns, all from one model version: probabilities (N, L) and the
    maps of every label (N, L, grid, grid), float32, or ``mismatch`` when the pixels were
    prepared for another spec."""

    name: str
    version: str
    labels: tuple[str, ...]
    threshold: float
    grid: int
    probabilities: np.ndarray | None
    maps: np.ndarray | None
    mismatch: SpecMismatch | None = None
    # Each label's tuned threshold (as Prediction.thresholds); None: ``threshold`` for all.
    thresholds: np.ndarray | None = None  # (L,) float32

    def label_thresholds(self) -> np.ndarray:
        """(L,) the threshold each label is judged by, as /classify judges it by default."""
        if self.thresholds is not None:
            return self.thresholds
        return np.full(len(self.labels), self.threshold, np.float32)


@dataclass(frozen=True)
class DetectedFace:
    """One face the detector found: ``box`` (x0, y0, x1, y1) and five ``landmarks`` (x, y),
    in the pixels of the image it was sent (model_store.LANDMARKS order), and its ``score``."""

    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]
    score: float


@dataclass(frozen=True)
class Detections:
    """What one detect call returns: the faces of the image, most confident first, and the
    detector version that found them."""

    name: str
    version: str
    faces: tuple[DetectedFace, ...]
