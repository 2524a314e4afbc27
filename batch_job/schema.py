"""The Parquet the job writes: one row per input image (per detected face with ``--faces``).

Every row carries ``input_index`` (the image's place in the input listing) and ``path``; a row
whose image could not be read or decoded has ``error`` set (serving's codes: ``empty_image``,
``undecodable_image``, ``image_too_large``; the job's: ``not_found``, ``unreadable``,
``detection_failed``) and nulls where a prediction would be. Probabilities are one float32
column per label, ``prob_<label>`` (the artifact's label order), so a reader loads only the
attributes it filters on.
"""

from __future__ import annotations

import pyarrow as pa

PROB_PREFIX = "prob_"
STRING = pa.string()


def prob_column(label: str) -> str:
    return PROB_PREFIX + label


def output_schema(labels: list[str], faces: bool) -> pa.Schema:
    fields = [
        pa.field("input_index", pa.int64(), nullable=False),
        pa.field("path", STRING, nullable=False),
        pa.field("error", STRING),  # null: the image was read, decoded and predicted
        pa.field("error_detail", STRING),
    ]
    if faces:
        fields += [
            # null on a row that stands for an image with no face found (or an error)
            pa.field("face", pa.int32()),  # 0 = the most confident face of the image
            pa.field("faces_in_image", pa.int32()),  # faces found, before --max-faces
            pa.field("face_box", pa.list_(pa.float64(), 4)),  # x0, y0, x1, y1, file pixels
            # model_store.LANDMARKS order: eyes (left, right), nose, mouth corners; (x, y) each
            pa.field("face_landmarks", pa.list_(pa.list_(pa.float64(), 2), 5)),
            pa.field("face_score", pa.float64()),
            pa.field("detector_version", STRING),
        ]
    fields += [pa.field(prob_column(label), pa.float32()) for label in labels]
    fields += [
        # at or above each label's threshold (tuned when the artifact has them), most probable
        # first: what /classify's "labels" lists
        pa.field("labels", pa.list_(STRING)),
        pa.field("model_name", STRING, nullable=False),
        pa.field("model_version", STRING, nullable=False),
    ]
    return pa.schema(fields)
