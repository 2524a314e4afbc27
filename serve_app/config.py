"""Typed configuration, validated when the application is built (``serve run`` / ``serve deploy``)
and when the model deployment is reconfigured. Errors say which key and how to fix it."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_MODEL_URI = "models/face-attributes/latest"
DEFAULT_DETECTOR_URI = "models/face-detector/latest"


def fingerprint(config: BaseModel) -> str:
    """A short id of a config, shown in /metadata (serving.args_id, serving.config_id): a tool
    that applied a config sees it took effect without the config's paths being published."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


class AppArgs(BaseModel):
    """``args:`` of the application in config.yaml (see ``serve_app.app:build_app``)."""

    model_config = ConfigDict(extra="forbid")

    max_body_mb: float = Field(default=10.0, gt=0, le=200, description="413 above this body size")
    max_image_pixels: int = Field(
        default=40_000_000, ge=64 * 64, description="width*height above which a decode is refused"
    )
    max_batch_images: int = Field(
        default=16, ge=1, le=256, description="images per /classify/batch"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="model device; auto picks CUDA when the replica has a GPU"
    )
    detector_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="the face detector's device; auto picks CUDA when its replica has a GPU",
    )
    precision: Literal["float32", "float16", "bfloat16"] = Field(
        default="float32",
        description="dtype of the model's weights and inputs; float16/bfloat16 also run on CPU "
        "(slowly), so the GPU path can be run end to end anywhere",
    )
    decode_on: Literal["ingress", "model"] = Field(
        default="ingress",
        description="ingress: PIL decodes and resizes there and pixels cross to the model; "
        "model: the ingress checks headers only and the model replica decodes the batch "
        "(JPEG with torchvision.io.decode_jpeg on the model's device, nvJPEG on CUDA)",
    )
    torch_threads: int | Literal["auto"] | None = Field(
        default=None,
        description="intra-op threads of a CPU model replica: a number; auto: 1 for a light "
        "model, 2 (or num_cpus if more) for one whose batch-1 forward takes 25 ms or more on "
        "one thread (serve_app/model/threads.py); default: the replica's num_cpus",
    )

    @field_validator("torch_threads")
    @classmethod
    def _threads_in_range(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("torch_threads must be between 1 and 256, or auto")
        return value

    model_calls_in_flight: int = Field(
        default=4,
        ge=1,
        le=256,
        description="calls the ingress keeps open to the model deployment; images decoded while "
        "all are busy leave together in the next call",
    )
    images_per_model_call: int = Field(default=32, ge=1, le=1024, description="images per call")
    max_waiting_images: int = Field(
        default=128, ge=1, description="images waiting for a model call above which: 503"
    )

    api_keys_file: str | None = Field(
        default=None,
        description="a YAML file of API key names and sha256 hashes (python -m serve_app.keys); "
        "set, every data route needs a key (401 without one) and keys' quotas apply (429); "
        "read again when it changes. Unset: no keys (config.yaml on loopback)",
    )

    # POST /faces (serve_app/ingress/faces.py, serve_app/detector/).
    max_faces: int = Field(
        default=10, ge=1, le=100, description="faces answered per photo (most confident first)"
    )
    faces_detect_side: int = Field(
        default=640,
        ge=128,
        le=4096,
        description="a photo whose longer side is over this is searched for faces on a copy "
        "downscaled to it (faces then need min_face_px x the scale to be found)",
    )

    # POST /explain (serve_app/model/explain.py): each explanation costs explain_grid**2 forwards.
    explain_max_in_flight: int = Field(
        default=4,
        ge=1,
        le=256,
        description="explanations this ingress replica runs at once; past it /explain answers "
        "503 at once (the model replica bounds its own queue too: explain_max_queued_images)",
    )
    explain_grid: int = Field(
        default=8, ge=2, le=16, description="default map size (grid x grid cells) of /explain"
    )
    explain_max_attributes: int = Field(
        default=3,
        ge=1,
        le=40,
        description="attributes /explain maps when none is asked for: the most probable at or "
        "above the threshold, at most this many",
    )

    @model_validator(mode="before")
    @classmethod
    def _fp16_means_float16(cls, data: Any) -> Any:
        """``fp16: true`` (configs written before ``precision``) -> ``precision: float16``."""
        if isinstance(data, dict) and "fp16" in data:
            data = dict(data)
            fp16 = data.pop("fp16")
            if fp16 and data.get("precision", "float16") != "float16":
                raise ValueError("fp16: true contradicts precision; keep only precision")
            if fp16:
                data["precision"] = "float16"
        return data

    def fingerprint(self) -> str:
        return fingerprint(self)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


class ArtifactConfig(BaseModel):
    """What every deployment that serves an artifact reads from its user_config: which one,
    and how its version is pinned (serve_app/common/pin.py)."""

    model_config = ConfigDict(extra="forbid")

    model_uri: str = Field(
        default=DEFAULT_MODEL_URI,
        min_length=1,
        description="<store>/<name>/latest or <store>/<name>/<version>; a path or fsspec/pyarrow URI",
    )
    reload: int = Field(
        default=0,
        ge=0,
        description="change it (e.g. +1) and serve deploy to make every replica look at "
        "model_uri again: a pointer (latest) is resolved anew and pinned, a refused artifact is "
        "retried (Serve ignores a deploy of an unchanged config)",
    )
    follow_latest: bool = Field(
        default=False,
        description="serve whatever the latest pointer names, with no rollout and no gate: "
        "replicas look every few seconds and switch together to a new version "
        "(serve_app/common/pin.py); off: the version resolved at deploy stays pinned",
    )
    trusted_public_key: str | None = Field(
        default=None,
        description="ed25519 public key (PEM file path or PEM text): only artifacts signed by "
        "its private key are served (python -m model_store.keys generate; train with "
        "--signing-key)",
    )

    def fingerprint(self) -> str:
        return fingerprint(self)


class ModelConfig(ArtifactConfig):
    """``user_config`` of the FaceAttributeModel deployment; can change at runtime."""

    max_batch_size: int = Field(default=16, ge=1, le=512)
    batch_wait_timeout_s: float = Field(default=0.005, ge=0.0, le=1.0)
    # Explanations have their own queue on the model replica so they never starve predictions.
    explain_batch_images: int = Field(
        default=4, ge=1, le=64, description="images explained together in one explain batch"
    )
    explain_max_queued_images: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="images waiting for an explanation on a replica past which: 503",
    )
    explain_chunk_size: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="occluded copies per forward pass; prediction batches run between chunks, "
        "so a /classify waits at most one chunk behind an explanation",
    )


class DetectorConfig(ArtifactConfig):
    """``user_config`` of the FaceDetector deployment; can change at runtime."""

    model_uri: str = Field(
        default=DEFAULT_DETECTOR_URI,
        min_length=1,
        description="<store>/face-detector/latest or a version (python -m train_job.face_detector)",
    )
    max_batch_size: int = Field(
        default=8, ge=1, le=256, description="images of one size detected in one cascade run"
    )
    batch_wait_timeout_s: float = Field(default=0.0, ge=0.0, le=1.0)
