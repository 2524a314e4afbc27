"""``POST /faces``'s image work at the ingress: the photo, the detector's downscaled copy, and each
detected face aligned to the crop the model was trained on.

The attribute model learned CelebA's aligned crops: a 178x218 frame with the eyes, nose and mouth
corners at fixed places (the artifact's ``face_template``). A face found in a photo is mapped
into that frame by the similarity transform (rotation, uniform scale, translation) that best
fits its five detected landmarks to the template's, least squares (Umeyama, 1991), then resized
with the artifact's own interpolation, exactly as training resized its crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from model_store import LANDMARKS, FaceTemplate, resize_for_model
from serve_app.common.decode import open_photo
from serve_app.common.protocol import DetectedFace, PreprocessSpec

# MTCNN's proposal network looks at 12x12 windows: smaller faces cannot be found at any scale.
MIN_DETECTABLE_PX = 12


@dataclass(frozen=True)
class Photo:
    """The uploaded photo, decoded and oriented (EXIF applied), and the copy the detector sees.

    ``image`` may be smaller than the file (a JPEG decodes at 1/2..1/8 scale when that still
    leaves twice the detector's side): ``to_file`` maps its pixels back to the file's."""

    image: Image.Image
    copy: np.ndarray  # (h, w, 3) uint8, longer side at most the detector's side
    copy_scale: float  # copy pixels per image pixel (<= 1)
    to_file: float  # file pixels per image pixel (>= 1)
    width: int  # the oriented file's size
    height: int


def decode_photo(data: bytes, max_pixels: int, detect_side: int) -> Photo:
    """Image bytes -> Photo, or ApiError 400 as /classify refuses (empty, not an image, too
    many pixels, truncated)."""
    image, (width, height), scale_back = open_photo(data, max_pixels, 2 * detect_side)
    copy_scale = min(1.0, detect_side / max(image.size))
    copy = image
    if copy_scale < 1.0:
        size = (max(1, round(image.width * copy_scale)), max(1, round(image.height * copy_scale)))
        copy = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return Photo(image, np.asarray(copy, dtype=np.uint8), copy_scale, scale_back, width, height)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The (2, 3) matrix M of the similarity transform that maps points ``src`` (n, 2) closest
    to ``dst`` (n, 2) in least squares: dst ~ M @ [x, y, 1]. No reflection (Umeyama, 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    a, b = src - src_mean, dst - dst_mean
    covariance = b.T @ a / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    variance = (a**2).sum() / len(src)
    scale = (singular * sign).sum() / variance if variance > 0 else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align(image: Image.Image, landmarks: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One face of ``image`` ((5, 2) landmarks in its pixels) -> (3, H, W) uint8 at the model's
    input size, framed as the artifact's training crops were."""
    template: FaceTemplate = spec.face_template
    height, width = template.size
    forward = np.vstack([similarity_transform(landmarks, template.landmarks), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)[:2]  # PIL asks, for each crop pixel, where to sample
    crop = image.transform(
        (width, height),
        Image.Transform.AFFINE,
        tuple(inverse.ravel()),
        resample=Image.Resampling.BILINEAR,
    )
    crop = resize_for_model(crop, spec.input_size, spec.interpolation)
    return np.asarray(crop, dtype=np.uint8).transpose(2, 0, 1)


def align_all(
    image: Image.Image, faces: list[DetectedFace], spec: PreprocessSpec
) -> list[np.ndarray]:
    return [align(image, np.asarray(face.landmarks), spec) for face in faces]


def in_image_pixels(face: DetectedFace, copy_scale: float) -> DetectedFace:
    """A face the detector found in the copy -> the same face in the decoded image's pixels."""
    k = 1.0 / copy_scale
    return DetectedFace(
        box=tuple(v * k for v in face.box),
        landmarks=tuple((x * k, y * k) for x, y in face.landmarks),
        score=face.score,
    )


def face_side(face: DetectedFace) -> float:
    x0, y0, x1, y1 = face.box
    return min(x1 - x0, y1 - y0)


def describe_face(face: DetectedFace, to_file: float, width: int, height: int) -> dict:
    """The box (clipped to the photo), landmarks and score of one face, in the file's pixels
    (as oriented by its EXIF), rounded to a tenth of a pixel."""

    def px(v: float, limit: int) -> float:
        return round(min(max(v * to_file, 0.0), float(limit)), 1)

    x0, y0, x1, y1 = face.box
    return {
        "box": [px(x0, width), px(y0, height), px(x1, width), px(y1, height)],
        "landmarks": {
            name: [round(x * to_file, 1), round(y * to_file, 1)]
            for name, (x, y) in zip(LANDMARKS, face.landmarks)
        },
        "score": round(face.score, 6),
    }


def smallest_findable(min_face_px: int, copy_scale: float, to_file: float) -> int:
    """In the file's pixels: the smallest face the detector can find on this copy."""
    return math.ceil(max(min_face_px, MIN_DETECTABLE_PX / copy_scale * to_file))
