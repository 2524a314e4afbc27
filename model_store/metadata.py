"""metadata.json: everything serving needs to reproduce training's preprocessing, and what a
person needs to judge the model."""

from __future__ import annotations

import datetime as _dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FORMAT = "face-attributes/torchscript"
DETECTOR_FORMAT = "face-detector/torchscript"
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# 2: model.pt is traced but not frozen (weights are parameters, so serving can cast them to
# float16/bfloat16 and then freeze), and ``digest`` covers model.pt and all of metadata.json.
# 1: model.pt was frozen and only model.pt was checksummed. Loaders refuse any other version.
FORMAT_VERSION = 2
SHA256_HEX = r"^[0-9a-f]{64}$"


class ArtifactSignature(BaseModel):
    """An ed25519 signature over the artifact's ``digest`` (see model_store.signing)."""

    model_config = ConfigDict(frozen=True)

    algorithm: Literal["ed25519"] = "ed25519"
    # sha256 of the signer's raw 32-byte public key: names the key in error messages.
    public_key_sha256: str = Field(pattern=SHA256_HEX)
    value: str = Field(min_length=1)  # base64 of the 64-byte signature


class FaceTemplate(BaseModel):
    """The crop the training images had: a ``size`` (height, width) frame with the five
    LANDMARKS at ``landmarks`` ((x, y) pixels in that frame). Serving maps each detected face
    into it with a similarity transform before the usual resize (serve_app/ingress/faces.py)."""

    model_config = ConfigDict(frozen=True)

    size: tuple[int, int]
    landmarks: tuple[
        tuple[float, float],
        tuple[float, float],
        tuple[float, float],
        tuple[float, float],
        tuple[float, float],
    ]
    source: str = Field(description="where the positions come from")


# CelebA's aligned crops (178x218, img_align_celeba): where its alignment put the five landmarks,
# to a few pixels (each image's own positions, list_landmarks_align_celeba, vary around these;
# training on the release records their exact mean instead: train_job/data.py). Artifacts that
# record no template of their own (trained before it was recorded) are served with this one.
CELEBA_TEMPLATE = FaceTemplate(
    size=(218, 178),
    landmarks=((69.0, 111.0), (108.0, 111.0), (88.0, 135.0), (72.0, 152.0), (106.0, 152.0)),
    source="celeba-aligned-mean",
)


class ArtifactMetadata(BaseModel):
    # Unknown keys are kept (newer writers may add some); required keys are enforced.
    model_config = ConfigDict(extra="allow", frozen=True)

    format: Literal["face-attributes/torchscript"] = FORMAT
    format_version: int = FORMAT_VERSION
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    labels: list[str] = Field(min_length=1)
    # (height, width) the model expects; serving resizes every image to exactly this.
    input_size: tuple[int, int]
    # Per-channel RGB statistics applied after scaling uint8 pixels to [0, 1].
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    # Each label's own decision threshold, tuned on the validation split at export
    # (train_job/thresholds.py); None (artifacts before it): ``threshold`` for every label.
    # Keyed by label, every label present; covered by the digest like every other field.
    thresholds: dict[str, float] | None = None
    # What the TorchScript module returns for a (N, 3, H, W) float batch: (N, len(labels)).
    output_kind: Literal["probabilities", "logits"]
    sha256: str = Field(pattern=SHA256_HEX)  # of model.pt's bytes
    # sha256 over model.pt's sha256 and the canonical JSON of every other field (see
    # model_store.integrity). None only while save_artifact is building the metadata;
    # load_artifact refuses an artifact without one.
    digest: str | None = Field(default=None, pattern=SHA256_HEX)
    signature: ArtifactSignature | None = None  # optional; not part of the digest
    backbone: str | None = None
    created_at: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    # The aligned crop the training images had; None (artifacts before it): CELEBA_TEMPLATE.
    face_template: FaceTemplate | None = None

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be unique")
        return labels

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, size: tuple[int, int]) -> tuple[int, int]:
        if min(size) < 8 or max(size) > 4096:
            raise ValueError(f"input_size {size} must be (height, width) between 8 and 4096")
        return size

    @model_validator(mode="after")
    def _std_positive(self) -> ArtifactMetadata:
        if min(self.std) <= 0:
            raise ValueError(f"std {self.std} must be > 0 in every channel")
        return self

    @model_validator(mode="after")
    def _thresholds_match_labels(self) -> ArtifactMetadata:
        if self.thresholds is None:
            return self
        if set(self.thresholds) != set(self.labels):
            missing = sorted(set(self.labels) - set(self.thresholds))
            unknown = sorted(set(self.thresholds) - set(self.labels))
            raise ValueError(
                f"thresholds must have one entry per label: missing {missing}, unknown {unknown}"
            )
        outside = {k: v for k, v in self.thresholds.items() if not 0.0 < v < 1.0}
        if outside:
            raise ValueError(f"thresholds must lie in (0, 1): {outside}")
        return self

    def label_thresholds(self) -> list[float]:
        """Each label's threshold in ``labels`` order: its tuned one, else ``threshold``."""
        tuned = self.thresholds or {}
        return [tuned.get(label, self.threshold) for label in self.labels]

    @property
    def template(self) -> FaceTemplate:
        """The recorded face template, or CelebA's for an artifact that has none."""
        return self.face_template or CELEBA_TEMPLATE

    @property
    def height(self) -> int:
        return self.input_size[0]

    @property
    def width(self) -> int:
        return self.input_size[1]


class DetectorMetadata(BaseModel):
    """metadata.json of a face detector artifact (``<store>/face-detector/<version>``): a
    scripted module with the cascade's networks as submodules (``pnet``, ``rnet``, ``onet``),
    stored, digested and signed like a classifier (model_store.store)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format: Literal["face-detector/torchscript"] = DETECTOR_FORMAT
    format_version: int = FORMAT_VERSION
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    method: Literal["mtcnn"] = "mtcnn"
    # Score each stage of the cascade must reach (proposal, refinement, output).
    stage_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    scale_factor: float = Field(default=0.709, gt=0.3, lt=0.95)  # image pyramid step
    landmarks: tuple[str, ...] = LANDMARKS
    sha256: str = Field(pattern=SHA256_HEX)
    digest: str | None = Field(default=None, pattern=SHA256_HEX)
    signature: ArtifactSignature | None = None
    created_at: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())
    source: str = Field(default="", description="where the weights come from, and their licence")
    metrics: dict[str, Any] = Field(default_factory=dict)
