"""The ingress <-> model contract: every preprocessing field of the artifact travels with each
call, and failures are typed, not recognised by their text."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from model_store import ArtifactMetadata, FaceTemplate
from serve_app.common.errors import ApiError
from serve_app.common.protocol import PREPROCESS_FIELDS, ModelNotReady, PreprocessSpec
from serve_app.ingress.model_client import DecodedImage, ModelClient

# Metadata fields that do not change how an image becomes model input.
NOT_PREPROCESSING = {
    "format", "format_version", "name", "version", "labels", "threshold", "output_kind",
    "sha256", "digest", "signature", "backbone", "created_at", "metrics", "training",
    "thresholds",  # per-label decision thresholds: change decisions, not pixels
}  # fmt: skip


def test_every_metadata_field_is_classified():
    """A field added to the artifact must be declared preprocessing (then it travels with every
    call and a change is caught) or not; an unclassified one fails here."""
    fields = set(ArtifactMetadata.model_fields)
    unclassified = fields - set(PREPROCESS_FIELDS) - NOT_PREPROCESSING
    assert unclassified == set(), f"classify these in serve_app/common/protocol.py: {unclassified}"
    assert set(PREPROCESS_FIELDS) <= fields


def test_spec_differs_when_any_preprocessing_field_differs():
    base = PreprocessSpec((64, 64), "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    changes = {
        "input_size": (64, 48),
        "interpolation": "nearest",
        "mean": (0.4, 0.5, 0.5),
        "std": (0.25, 0.25, 0.3),
        "face_template": FaceTemplate(
            size=(218, 178),
            landmarks=((70, 110), (108, 110), (88, 135), (72, 152), (106, 152)),
            source="another crop",
        ),
    }
    assert set(changes) == set(PREPROCESS_FIELDS)
    for field, value in changes.items():
        assert PreprocessSpec(**{**base.__dict__, field: value}) != base, field


class _Method:
    def __init__(self, error: BaseException):
        self._error = error

    def remote(self, *args):
        async def fail():
            raise self._error

        return fail()


class _Handle:
    def __init__(self, error: BaseException):
        self.predict = self.predict_files = _Method(error)


def test_no_model_loaded_is_a_typed_503_whatever_its_message(ray_cluster):
    """The old client matched the text "no model loaded" inside a RayTaskError; a typed
    ModelNotReady from the replica (as Ray re-raises it) with any message is a 503 now."""
    import ray

    @ray.remote
    def replica_without_model():
        raise ModelNotReady("still loading version 7")

    with pytest.raises(ray.exceptions.RayTaskError) as raised:
        ray.get(replica_without_model.remote())
    assert isinstance(raised.value, ModelNotReady)  # Ray keeps the replica's exception type

    client = ModelClient(_Handle(raised.value), 4, 1, 16)
    spec = PreprocessSpec((8, 8), "bilinear", (0.5,) * 3, (0.25,) * 3)
    image = DecodedImage(np.zeros((3, 8, 8), np.uint8), spec)
    with pytest.raises(ApiError) as answered:
        asyncio.run(client.predict(image))
    assert answered.value.status == 503
    assert answered.value.code == "model_unavailable"
    assert answered.value.retry_after is not None
