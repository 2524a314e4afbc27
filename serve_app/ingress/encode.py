"""Stage 3 of /classify: a Prediction -> the JSON answer (the seed service's, plus each label's
``threshold``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from serve_app.api.schema import DEFAULT_QUERY, ClassifyQuery
from serve_app.common.protocol import Prediction
from serve_app.ingress.explain import check_attributes


def judged_thresholds(prediction: Prediction, query: ClassifyQuery) -> list[float]:
    """(num_labels,) the threshold each label is judged by: the asked number, or the label's
    own tuned one when the artifact has them, else the model's single threshold."""
    if query.threshold != "tuned":
        return [float(query.threshold)] * len(prediction.labels)
    if prediction.thresholds is not None:
        return prediction.thresholds.tolist()
    return [prediction.threshold] * len(prediction.labels)


def rounded(values: np.ndarray | list[float]) -> list[float]:
    """(n,) -> (n,) Python floats ``round(v, 6)`` for each v, bit for bit.

    float32 (what the model sends) goes through numpy: v * 1e6 is exact in float64 for a float32
    v (24 + 14 bits), so rint (half-even, as round) then / 1e6 lands on the same double as
    round's correctly rounded decimal (checked on 10M float32 values in [0, 1], every exact tie
    included): 3.4 us for 40 values against 16 us for 40 round() calls, on every /classify."""
    if isinstance(values, np.ndarray) and values.dtype == np.float32:
        return np.round(values.astype(np.float64), 6).tolist()
    return [round(float(v), 6) for v in values]


def encode_prediction(
    prediction: Prediction, query: ClassifyQuery = DEFAULT_QUERY
) -> dict[str, Any]:
    """Stage 3: the response body, the seed service's plus each label's ``threshold``.

    ``query.names`` restricts labels and probabilities to those attributes (an unknown one is
    a 422); ``top_k`` answers the k most probable whatever their threshold. Each value is
    rounded once (bench/api_overhead.py: the typed path's encode costs no more than the
    hand-written one's, which rounded the labels' probabilities twice)."""
    labels = prediction.labels
    probs = prediction.probabilities.tolist()
    shown_probs = rounded(prediction.probabilities)
    if query.threshold == "tuned" and prediction.thresholds is not None:
        thresholds = prediction.thresholds.tolist()
        shown_thresholds = rounded(prediction.thresholds)
    else:
        thresholds = judged_thresholds(prediction, query)
        shown_thresholds = [round(thresholds[0], 6)] * len(thresholds) if thresholds else []
    names = query.names
    if names:
        check_attributes(names, labels)  # the version that answered may differ
        chosen = [labels.index(a) for a in names]
    else:
        chosen = range(len(probs))
    if query.top_k is not None:
        ranked = sorted(chosen, key=probs.__getitem__, reverse=True)[: query.top_k]
    else:  # filtering first keeps the same order (sorted is stable) and sorts fewer
        passed = [i for i in chosen if probs[i] >= thresholds[i]]
        ranked = sorted(passed, key=probs.__getitem__, reverse=True)
    return {
        "labels": [
            {
                "label_id": i,
                "label": labels[i],
                "probability": shown_probs[i],
                "threshold": shown_thresholds[i],
            }
            for i in ranked
        ],
        "probabilities": (
            {labels[i]: shown_probs[i] for i in chosen} if names else dict(zip(labels, shown_probs))
        ),
        "model": {"name": prediction.name, "version": prediction.version},
    }
