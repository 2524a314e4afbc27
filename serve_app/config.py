"""Typed configuration, validated when the application is built (``serve run`` / ``serve deploy``)
and when the model deployment is reconfigured. Errors say which key and how to fix it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MODEL_URI = "models/face-attributes/latest"


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
    fp16: bool = Field(default=False, description="half precision inference (CUDA only)")
    torch_threads: int | None = Field(
        default=None, ge=1, le=256, description="intra-op threads; default: the replica's num_cpus"
    )

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

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


class ModelConfig(BaseModel):
    """``user_config`` of the FaceAttributeModel deployment; can change at runtime."""

    model_config = ConfigDict(extra="forbid")

    model_uri: str = Field(
        default=DEFAULT_MODEL_URI,
        min_length=1,
        description="<store>/<name>/latest or <store>/<name>/<version>; a path or fsspec/pyarrow URI",
    )
    max_batch_size: int = Field(default=16, ge=1, le=512)
    batch_wait_timeout_s: float = Field(default=0.005, ge=0.0, le=1.0)
