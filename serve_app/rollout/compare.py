"""How far a candidate's answer is from the stable's on the same image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_app.common.protocol import Prediction


@dataclass(frozen=True)
class Comparison:
    """``decisions`` label decisions compared (labels both versions have), ``agreed`` of them
    the same, and the sum over them of |p_candidate - p_stable|."""

    decisions: int
    agreed: int
    abs_dp_sum: float


def decisions(prediction: Prediction) -> np.ndarray:
    """(num_labels,) bool: each label as a default request would judge it (the version's own
    tuned thresholds, else its single threshold)."""
    cut = prediction.thresholds if prediction.thresholds is not None else prediction.threshold
    return prediction.probabilities >= cut


def compare(stable: Prediction, candidate: Prediction) -> Comparison:
    """Labels matched by name: a candidate may order them differently or add some."""
    if stable.labels == candidate.labels:
        s_index = c_index = slice(None)
    else:
        position = {label: i for i, label in enumerate(candidate.labels)}
        shared = [label for label in stable.labels if label in position]
        s_index = [stable.labels.index(label) for label in shared]
        c_index = [position[label] for label in shared]
    s_decisions, c_decisions = decisions(stable)[s_index], decisions(candidate)[c_index]
    dp = np.abs(
        candidate.probabilities[c_index].astype(np.float64)
        - stable.probabilities[s_index].astype(np.float64)
    )
    return Comparison(
        decisions=int(s_decisions.size),
        agreed=int(np.count_nonzero(s_decisions == c_decisions)),
        abs_dp_sum=float(dp.sum()),
    )
