"""The job's Ray Data stages. Each imports the serving code it runs; nothing here re-implements
decoding, preprocessing, the forward pass, detection or alignment.

- ``decode_batch`` (tasks): path -> bytes (batch_job.inputs.Reader) -> serve_app.common.decode.
  decode_image with the artifact's PreprocessSpec: the (3, H, W) uint8 pixels /classify feeds
  the model, or the error /classify would answer.
- ``FaceFinder`` (actor pool, ``--faces``): serve_app.ingress.faces.decode_photo ->
  serve_app.detector.cascade.detect -> faces.align_all: one row per face, as /faces does.
- ``Predictor`` (actor pool, GPUs when asked): serve_app.model.inference.load_model +
  forward_in_chunks, the model replica's own code; labels judged as /classify judges them.

Between stages a batch is a dict of numpy arrays (Ray Data's tensor columns carry the pixels);
``error`` is "" for a good row there, and becomes a null in the Parquet.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from batch_job.inputs import Reader, read_error
from batch_job.schema import output_schema, prob_column
from model_store import ArtifactError
from serve_app.common.decode import decode_image
from serve_app.common.device import choose_device, replica_cpu_share
from serve_app.common.errors import ApiError
from serve_app.common.protocol import PreprocessSpec

Batch = dict[str, np.ndarray]
_reader: Reader | None = None


def _read(path: str) -> bytes:
    global _reader
    if _reader is None:  # one per worker process: it caches a filesystem per bucket
        _reader = Reader()
    return _reader.read(path)


def _strings(values: list[str]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def decode_batch(batch: Batch, spec: PreprocessSpec, max_pixels: int) -> Batch:
    """{input_index (N,), path (N,)} -> the same plus pixels (N, 3, H, W) uint8 at the model's
    input size (zeros where the image failed), error and error_detail ("" where it did not)."""
    paths = batch["path"]
    h, w = spec.input_size
    pixels = np.zeros((len(paths), 3, h, w), dtype=np.uint8)  # (N, 3, H, W)
    errors, details = [""] * len(paths), [""] * len(paths)
    for i, path in enumerate(paths):
        try:
            data = _read(str(path))
        except Exception as e:  # a missing or unreadable file is that row's error
            errors[i], details[i] = read_error(e)
            continue
        try:
            pixels[i] = decode_image(data, spec, max_pixels)  # (3, H, W)
        except ApiError as e:  # empty, not an image, truncated, too many pixels
            errors[i], details[i] = e.code, e.detail
    return {
        "input_index": batch["input_index"],
        "path": paths,
        "error": _strings(errors),
        "error_detail": _strings(details),
        "pixels": pixels,
    }


class FaceFinder:
    """Photos -> one row per face (the most confident first, at most ``max_faces``), the face
    aligned to the model's training crop as POST /faces aligns it; an image with no face, or
    one that failed, keeps a single row (face -1) so that no input disappears."""

    def __init__(
        self,
        detector_uri: str,
        spec: PreprocessSpec,
        device: str,
        max_pixels: int,
        detect_side: int,
        min_face_px: int,
        max_faces: int,
    ):
        from serve_app.detector.cascade import load_detector

        torch.set_num_threads(replica_cpu_share())
        self.detector = load_detector(detector_uri, choose_device(device))
        self.spec = spec
        self.max_pixels, self.detect_side = max_pixels, detect_side
        self.min_face_px, self.max_faces = min_face_px, max_faces

    def __call__(self, batch: Batch) -> Batch:
        rows: list[dict[str, Any]] = []
        for index, path in zip(batch["input_index"], batch["path"]):
            rows.extend(self._faces(int(index), str(path)))
        h, w = self.spec.input_size
        n = len(rows)
        out: Batch = {
            "input_index": np.array([r["input_index"] for r in rows], dtype=np.int64),
            "path": _strings([r["path"] for r in rows]),
            "error": _strings([r.get("error", "") for r in rows]),
            "error_detail": _strings([r.get("error_detail", "") for r in rows]),
            "face": np.array([r.get("face", -1) for r in rows], dtype=np.int32),
            "faces_in_image": np.array([r.get("faces_in_image", -1) for r in rows], np.int32),
            "face_box": np.full((n, 4), np.nan),  # (M, 4) x0, y0, x1, y1
            "face_landmarks": np.full((n, 5, 2), np.nan),  # (M, 5, 2) (x, y) per landmark
            "face_score": np.full(n, np.nan),
            "detector_version": _strings([self.detector.version] * n),
            "pixels": np.zeros((n, 3, h, w), dtype=np.uint8),  # (M, 3, H, W)
        }
        for i, r in enumerate(rows):
            if "crop" in r:
                out["face_box"][i] = r["box"]
                out["face_landmarks"][i] = r["landmarks"]
                out["face_score"][i] = r["score"]
                out["pixels"][i] = r["crop"]
        return out

    def _faces(self, index: int, path: str) -> list[dict[str, Any]]:
        from model_store import LANDMARKS
        from serve_app.detector.cascade import detect
        from serve_app.ingress.faces import (
            MIN_DETECTABLE_PX,
            align_all,
            decode_photo,
            describe_face,
            face_side,
            in_image_pixels,
            smallest_findable,
        )

        row: dict[str, Any] = {"input_index": index, "path": path}
        try:
            data = _read(path)
        except Exception as e:
            row["error"], row["error_detail"] = read_error(e)
            return [row]
        try:
            photo = decode_photo(data, self.max_pixels, self.detect_side)
        except ApiError as e:
            row["error"], row["error_detail"] = e.code, e.detail
            return [row]
        # The smallest face asked for, in the file's and in the detector copy's pixels (as
        # the ingress's /faces computes them).
        findable = smallest_findable(self.min_face_px, photo.copy_scale, photo.to_file)
        min_px_in_copy = max(
            MIN_DETECTABLE_PX, math.floor(findable / photo.to_file * photo.copy_scale)
        )
        try:
            (found,) = detect(self.detector, photo.copy[None], min_px_in_copy)  # (1, h, w, 3)
        except Exception as e:  # one photo the cascade fails on must not stop the job
            row["error"], row["error_detail"] = "detection_failed", f"{type(e).__name__}: {e}"
            return [row]
        faces = [in_image_pixels(f, photo.copy_scale) for f in found]
        faces = [f for f in faces if face_side(f) * photo.to_file >= findable]
        shown = faces[: self.max_faces]
        crops = align_all(photo.image, shown, self.spec)  # each (3, H, W) uint8
        if not shown:
            return [{**row, "faces_in_image": 0}]
        out = []
        for k, (face, crop) in enumerate(zip(shown, crops)):
            described = describe_face(face, photo.to_file, photo.width, photo.height)
            out.append(
                {
                    **row,
                    "face": k,
                    "faces_in_image": len(faces),
                    "box": described["box"],
                    "landmarks": [described["landmarks"][name] for name in LANDMARKS],
                    "score": described["score"],
                    "crop": crop,
                }
            )
        return out


class Predictor:
    """The artifact on this actor's device: pixels -> probabilities, labels and the model's
    name and version, as a pyarrow Table in the output schema (pixels dropped)."""

    def __init__(
        self,
        model_uri: str,
        spec: PreprocessSpec,
        device: str,
        precision: str,
        max_batch_size: int | None,
        faces: bool,
    ):
        from serve_app.config import ModelConfig
        from serve_app.model.inference import load_model

        torch.set_num_threads(replica_cpu_share())  # Ray starts actors with 1 OpenMP thread
        self.model = load_model(model_uri, choose_device(device), precision)
        meta = self.model.metadata
        if self.model.uri != model_uri or PreprocessSpec.of(meta) != spec:
            # The driver resolved the version once; every actor must run exactly that one.
            raise ArtifactError(f"{model_uri} changed under the job (now {self.model.uri})")
        # Images per forward pass. On CPU serving's own default (16): per image, resnet34 and
        # mobilenet_v3_small forward 1.4-2.3x slower at batch 64 than at 8-16 on this 2-core
        # box (the model-only rows of bench/results/batch.md); a GPU wants the whole batch.
        if max_batch_size is None:
            max_batch_size = (
                ModelConfig.model_fields["max_batch_size"].default
                if self.model.device.type == "cpu"
                else 1 << 30
            )
        self.max_batch_size = max_batch_size
        self.faces = faces
        self.labels = list(meta.labels)
        # Judged as /classify judges (serve_app/ingress/encode.py): the float32 tuned
        # thresholds, or the single float threshold, compared with float32 probabilities.
        self.thresholds = (
            self.model.thresholds
            if self.model.thresholds is not None
            else np.full(len(self.labels), meta.threshold, dtype=np.float64)
        )
        self.schema = output_schema(self.labels, faces)

    def __call__(self, batch: Batch) -> pa.Table:
        from serve_app.model.inference import forward_in_chunks

        ok = batch["error"] == ""  # (N,) bool: read and decoded
        if self.faces:
            ok &= batch["face"] >= 0  # a row standing for an image without a face: no prediction
        n, num_labels = len(ok), len(self.labels)
        probs = np.zeros((n, num_labels), dtype=np.float32)  # (N, L)
        if ok.any():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))  # (k, 3, H, W)
            probs[ok], _ = forward_in_chunks(self.model, pixels, self.max_batch_size)
        labels: list[list[str] | None] = [None] * n
        for i in np.flatnonzero(ok):
            passed = np.flatnonzero(probs[i] >= self.thresholds)
            ranked = passed[np.argsort(-probs[i][passed], kind="stable")]  # most probable first
            labels[i] = [self.labels[j] for j in ranked]
        errors = batch["error"]
        no_error = errors == ""  # (N,) bool: the error columns are null there
        columns: dict[str, pa.Array] = {
            "input_index": pa.array(batch["input_index"], pa.int64()),
            "path": pa.array(batch["path"].tolist(), pa.string()),
            "error": pa.array(errors.tolist(), pa.string(), mask=no_error),
            "error_detail": pa.array(batch["error_detail"].tolist(), pa.string(), mask=no_error),
        }
        if self.faces:
            columns.update(self._face_columns(batch))
        for j, label in enumerate(self.labels):
            columns[prob_column(label)] = pa.array(probs[:, j], pa.float32(), mask=~ok)
        meta = self.model.metadata
        columns["labels"] = pa.array(labels, pa.list_(pa.string()))
        columns["model_name"] = pa.array([meta.name] * n, pa.string())
        columns["model_version"] = pa.array([meta.version] * n, pa.string())
        return pa.Table.from_pydict(columns, schema=self.schema)

    def _face_columns(self, batch: Batch) -> dict[str, pa.Array]:
        has_face = batch["face"] >= 0  # (N,) bool
        known = batch["faces_in_image"] >= 0
        boxes = [b.tolist() if f else None for b, f in zip(batch["face_box"], has_face)]
        marks = [m.tolist() if f else None for m, f in zip(batch["face_landmarks"], has_face)]
        return {
            "face": pa.array(batch["face"], pa.int32(), mask=~has_face),
            "faces_in_image": pa.array(batch["faces_in_image"], pa.int32(), mask=~known),
            "face_box": pa.array(boxes, self.schema.field("face_box").type),
            "face_landmarks": pa.array(marks, self.schema.field("face_landmarks").type),
            "face_score": pa.array(batch["face_score"], pa.float64(), mask=~has_face),
            "detector_version": pa.array(batch["detector_version"].tolist(), pa.string()),
        }
