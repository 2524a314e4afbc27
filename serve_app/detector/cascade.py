"""A face detector artifact (model_store DetectorMetadata: MTCNN's networks as one TorchScript
module) loaded for a device, and the cascade run over a batch of same-sized images.

The cascade around the networks (image pyramid, box regression, non-maximum suppression) is
facenet-pytorch's ``detect_face``, the code its weights were trained and converted for; this
module only feeds it the artifact's networks and turns its arrays into DetectedFace values.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import torch

from model_store import ArtifactError, DetectorMetadata, load_artifact
from serve_app.common.protocol import DetectedFace

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class LoadedDetector:
    uri: str
    metadata: DetectorMetadata
    cascade: torch.jit.ScriptModule  # submodules pnet, rnet, onet
    device: torch.device

    @property
    def version(self) -> str:
        return self.metadata.version


def load_detector(
    model_uri: str, device: torch.device, trusted_public_key: str | None = None
) -> LoadedDetector:
    """Verify (digest, signature) and load a detector artifact; a classifier is refused."""
    artifact = load_artifact(model_uri, trusted_public_key, schema=DetectorMetadata)
    try:
        cascade = torch.jit.load(io.BytesIO(artifact.model_bytes), map_location=device).eval()
        stages = (cascade.pnet, cascade.rnet, cascade.onet)
    except Exception as e:  # not loadable, or not the three stages the metadata promises
        raise ArtifactError(f"model.pt in {artifact.uri!r} is not an MTCNN cascade: {e}") from e
    if any(next(s.parameters(), None) is None for s in stages):
        raise ArtifactError(f"model.pt in {artifact.uri!r} has a stage without weights")
    return LoadedDetector(artifact.uri, artifact.metadata, cascade, device)


def detect(
    detector: LoadedDetector, images: np.ndarray, min_face_px: int
) -> list[list[DetectedFace]]:
    """(N, H, W, 3) uint8 RGB, one size -> per image its faces, most confident first, boxes
    (x0, y0, x1, y1) and landmarks (x, y) in the image's pixels. Runs on the inference thread."""
    from facenet_pytorch.models.utils.detect_face import detect_face

    meta, net = detector.metadata, detector.cascade
    with torch.inference_mode():
        try:
            boxes, points = detect_face(
                images, min_face_px, net.pnet, net.rnet, net.onet,
                list(meta.stage_thresholds), meta.scale_factor, detector.device,
            )  # fmt: skip
        except RuntimeError as e:  # every candidate box degenerate (torch.cat of nothing)
            if "non-empty" not in str(e):
                raise
            logger.warning("face detection found only degenerate boxes: %s", e)
            return [[] for _ in images]
    return [_faces(b, p) for b, p in zip(boxes, points)]


def _faces(boxes: np.ndarray, points: np.ndarray) -> list[DetectedFace]:
    """(k, 5) [x0, y0, x1, y1, score] and (k, 5, 2) -> DetectedFace, by score, highest first."""
    faces = [
        DetectedFace(
            box=tuple(float(v) for v in box[:4]),
            landmarks=tuple((float(x), float(y)) for x, y in landmarks),
            score=float(box[4]),
        )
        for box, landmarks in zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 5), points)
    ]
    return sorted(faces, key=lambda f: -f.score)
