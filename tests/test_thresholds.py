"""Per-attribute thresholds tuned on validation (train_job/thresholds.py), on hand-made scores
whose best threshold is known. Pure numpy: milliseconds."""

from __future__ import annotations

import numpy as np
import pytest

from train_job.thresholds import (
    MIN_THRESHOLD,
    auroc,
    best_f1_threshold,
    chance_bound,
    compare_on_split,
    decision_metrics,
    tune_thresholds,
)


def f1_at(scores: np.ndarray, targets: np.ndarray, threshold: float) -> float:
    return float(
        decision_metrics(scores[:, None], targets[:, None], np.array([threshold]))["f1"][0]
    )


def test_separable_scores_cut_between_the_classes():
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
    targets = np.array([1, 1, 0, 0, 0])
    assert best_f1_threshold(scores, targets) == pytest.approx(0.55)  # midpoint of 0.8 and 0.3


def test_rare_attribute_gets_a_threshold_below_one_half():
    """The case tuning exists for: positives scored low (a rare attribute); 0.5 calls none."""
    scores = np.array([0.35, 0.3, 0.28, 0.1, 0.05, 0.02])
    targets = np.array([1, 1, 0, 0, 0, 0])
    threshold = best_f1_threshold(scores, targets)
    assert threshold == pytest.approx(0.29)
    assert f1_at(scores, targets, threshold) == 1.0
    assert f1_at(scores, targets, 0.5) == 0.0


def test_known_best_cut_with_overlap_is_the_exact_maximum():
    """Scores sorted: + + - + - - . F1 at k=1,2,3,4,5,6: 2/4, 4/5, 4/6, 6/7, 6/8, 6/9: k=4."""
    scores = np.array([0.95, 0.9, 0.7, 0.6, 0.4, 0.2])
    targets = np.array([1, 1, 0, 1, 0, 0])
    threshold = best_f1_threshold(scores, targets)
    assert threshold == pytest.approx(0.5)  # between 0.6 (4th) and 0.4 (5th)
    assert f1_at(scores, targets, threshold) == pytest.approx(6 / 7)
    grid = np.linspace(0.01, 0.99, 99)
    assert max(f1_at(scores, targets, t) for t in grid) <= f1_at(scores, targets, threshold)


def test_tied_scores_are_never_split():
    """Three images share 0.6 (one positive): a cut can only fall above or below all three."""
    scores = np.array([0.9, 0.6, 0.6, 0.6, 0.1])
    targets = np.array([1, 1, 0, 0, 0])
    threshold = best_f1_threshold(scores, targets)
    assert threshold == pytest.approx(0.75)  # k=1: F1 2/3; k=4: F1 4/6; ties keep the higher
    assert not np.isclose(scores, threshold).any()


def test_all_positive_calls_everything_and_stays_inside_0_1():
    scores = np.array([0.0, 0.0, 0.0])
    targets = np.array([1, 1, 1])
    assert best_f1_threshold(scores, targets) == MIN_THRESHOLD


def separable(n: int, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """n scores, the first half positives in [high, 0.9], the rest negatives in [0.05, low]."""
    half = n // 2
    scores = np.concatenate([np.linspace(0.9, high, half), np.linspace(low, 0.05, n - half)])
    return scores, np.arange(n) < half


def test_auroc_counts_ties_half():
    scores = np.array([0.95, 0.9, 0.7, 0.6, 0.4, 0.2])
    targets = np.array([1, 1, 0, 1, 0, 0])
    assert auroc(scores, targets) == pytest.approx(8 / 9)
    assert auroc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert auroc(scores, np.ones(6)) is None


def test_attributes_validation_cannot_tell_apart_keep_the_single_threshold():
    """No positive; no negative; scores independent of the labels (max F1 would call nearly all
    positive: the synthetic data's unrendered attributes); only "Signal" is tuned."""
    rng = np.random.default_rng(0)
    n = 300
    signal, truth = separable(n, low=0.3, high=0.4)
    noise_truth = rng.random(n) < 0.2
    scores = np.stack([rng.random(n), rng.random(n), rng.random(n), signal], axis=1)
    targets = np.stack([np.zeros(n), np.ones(n), noise_truth, truth], axis=1).astype(np.uint8)
    labels = ["NoPositive", "NoNegative", "Noise", "Signal"]
    assert best_f1_threshold(scores[:, 0], targets[:, 0]) is None
    assert best_f1_threshold(scores[:, 2], targets[:, 2]) < 0.3  # what the fallback prevents
    assert auroc(scores[:, 2], targets[:, 2]) < chance_bound(int(noise_truth.sum()), n)
    tuned = tune_thresholds(scores, targets, labels, single=0.42)
    assert tuned == {
        "NoPositive": 0.42,
        "NoNegative": 0.42,
        "Noise": 0.42,
        "Signal": pytest.approx(0.35),
    }
    assert list(tuned) == labels


def test_compare_on_split_reports_tuned_against_single():
    """Label A's positives score 0.3-0.4 (0.5 misses them), label B is tuned to a cut that
    calls what 0.5 calls; macro F1 over labels with a positive, accuracy over all."""
    n = 40
    a, truth = separable(n, low=0.25, high=0.3)
    a = a * 0.45  # positives 0.135-0.405: all below 0.5
    b, _ = separable(n, low=0.4, high=0.6)
    never = np.linspace(0.1, 0.7, n)
    labels = ["A", "B", "Never"]
    scores = np.stack([a, b, never], axis=1)
    targets = np.stack([truth, truth, np.zeros(n, bool)], axis=1).astype(np.uint8)
    tuned = tune_thresholds(scores, targets, labels, single=0.5)
    assert tuned["A"] < 0.5 and tuned["Never"] == 0.5
    out = compare_on_split(scores, targets, labels, tuned, 0.5, "test")
    assert out["test_f1_per_label"]["A"] == {"tuned": 1.0, "single": 0.0}
    assert out["test_f1_per_label"]["B"] == {"tuned": 1.0, "single": 1.0}
    assert out["test_f1_tuned"] == 1.0 and out["test_f1_single"] == 0.5  # "Never" left out
    assert out["test_accuracy_per_label"]["A"] == {"tuned": 1.0, "single": 0.5}
    never_called = float(np.mean(never < 0.5))  # calls above 0.5 are all false
    assert out["test_accuracy_per_label"]["Never"]["single"] == pytest.approx(never_called)
    assert out["test_accuracy_tuned"] == pytest.approx((1 + 1 + never_called) / 3, abs=1e-5)
    assert out["test_accuracy_single"] == pytest.approx((0.5 + 1 + never_called) / 3, abs=1e-5)
