from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss

from prefpred.metrics import (
    accuracy,
    brier_score,
    compute_metrics,
    confusion_matrix,
    expected_calibration_error,
    fold_summary,
    label_targets,
    log_loss,
    prior_proba,
    segment_metrics,
    swap_consistency,
)
from prefpred.testing import planted_pairs
from prefpred.types import label_matrix, swap_proba


def _random_proba(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([1.0, 1.0, 1.0], size=n)
    return p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_loss_matches_sklearn_on_hard_labels(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=200)
    p = _random_proba(200, seed)
    expected = sk_log_loss(y, p, labels=[0, 1, 2])
    assert log_loss(y, p) == pytest.approx(expected, rel=1e-12)
    names = np.array(["a", "b", "tie"])[y]
    assert log_loss(list(names), p) == pytest.approx(expected, rel=1e-12)
    assert log_loss(np.eye(3)[y], p) == pytest.approx(expected, rel=1e-12)


def test_log_loss_clips_and_renormalises_like_kaggle():
    # a confident wrong answer is clipped at 1e-15 instead of being infinite
    p = np.array([[1.0, 0.0, 0.0]])
    assert log_loss([1], p) == pytest.approx(-math.log(1e-15 / (1 + 2e-15)), rel=1e-6)
    # rows that don't sum to 1 are renormalised
    unnorm = np.array([[2.0, 1.0, 1.0]])
    assert log_loss([0], unnorm) == pytest.approx(-math.log(0.5))


def test_log_loss_soft_labels_is_cross_entropy():
    y = np.array([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]])
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    expected = -np.mean([0.7 * math.log(0.6) + 0.2 * math.log(0.3) + 0.1 * math.log(0.1),
                         0.5 * math.log(0.3) + 0.5 * math.log(0.5)])
    assert log_loss(y, p) == pytest.approx(expected)


def test_label_targets_rejects_bad_labels():
    with pytest.raises(ValueError, match="unknown label"):
        label_targets(["a", "c"])
    with pytest.raises(ValueError, match="class indices"):
        label_targets([0, 5])
    with pytest.raises(ValueError, match="2 labels for 3"):
        log_loss([0, 1], _random_proba(3, 0))
    assert label_targets(["winner_model_b", "TIE"]).argmax(axis=1).tolist() == [1, 2]


def test_accuracy_brier_confusion_by_hand():
    y = [0, 1, 2, 2]
    p = np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])
    assert accuracy(y, p) == pytest.approx(0.5)
    # row-wise squared errors: 0.25+0.09+0.04, 0.36+0.49+0.01, 0.01+0.01+0.04, 0.04+0.25+0.49
    assert brier_score(y, p) == pytest.approx((0.38 + 0.86 + 0.06 + 0.78) / 4)
    cm = confusion_matrix(y, p)
    assert cm.tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]
    assert cm.sum() == 4


def test_ece_by_hand():
    # two bins used: conf 0.9 (2 rows, 1 correct) and conf 0.6 (2 rows, both correct)
    p = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.6, 0.3, 0.1], [0.2, 0.6, 0.2]])
    y = [0, 0, 0, 1]
    ece = expected_calibration_error(y, p, n_bins=10)
    assert ece == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))
    # perfectly calibrated in one bin
    p2 = np.tile([0.5, 0.25, 0.25], (4, 1))
    assert expected_calibration_error([0, 0, 1, 2], p2) == pytest.approx(0.0)


def test_compute_metrics_keys_and_prior_baseline():
    pairs = planted_pairs(90, seed=3)
    y = label_matrix(pairs)
    prior = prior_proba(y, len(pairs))
    m = compute_metrics(y, prior)
    assert set(m) >= {"n", "log_loss", "accuracy", "brier", "ece", "mean_p_a", "mean_p_b", "mean_p_tie"}
    assert m["n"] == 90
    # the prior's log loss is the entropy of the label mix, at most ln 3
    freqs = y.mean(axis=0)
    assert m["log_loss"] == pytest.approx(-(freqs * np.log(freqs)).sum())
    assert m["log_loss"] <= math.log(3) + 1e-12


def test_segment_metrics_segments_partition_rows():
    pairs = planted_pairs(120, seed=5, multi_turn_rate=0.3)
    p = _random_proba(len(pairs), 5)
    df = segment_metrics(pairs, p)
    assert list(df.columns) == ["segment", "value", "n", "share", "log_loss", "accuracy", "brier"]
    for seg in ("turns", "length", "label"):
        assert df[df.segment == seg]["n"].sum() == len(pairs)
    multi = [i for i, pr in enumerate(pairs) if len(pr.turns) > 1]
    row = df[(df.segment == "turns") & (df.value == "multi")].iloc[0]
    assert row["n"] == len(multi)
    assert row["log_loss"] == pytest.approx(log_loss(label_matrix([pairs[i] for i in multi]), p[multi]))
    with pytest.raises(ValueError):
        segment_metrics(pairs[:3], p)


def test_swap_consistency():
    p = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]])
    # a perfectly symmetric model predicts the mirror image on swapped pairs
    assert swap_consistency(p, swap_proba(p))["consistency"] == 1.0
    # row 3 flips: the model says "A" again after the swap (position bias)
    q = swap_proba(p).copy()
    q[3] = [0.6, 0.3, 0.1]
    out = swap_consistency(p, q)
    assert out["consistency"] == pytest.approx(0.75)
    assert out["flip_rate"] == pytest.approx(0.25)
    assert out["position_flip_rate"] == pytest.approx(0.25)
    assert out["mean_abs_diff"] > 0


def test_fold_summary():
    per_fold = [{"fold": 0, "log_loss": 1.0, "accuracy": 0.5, "best_iteration": None},
                {"fold": 1, "log_loss": 1.2, "accuracy": 0.4, "best_iteration": None},
                {"fold": 2, "log_loss": 1.1, "accuracy": 0.6, "best_iteration": None}]
    s = fold_summary(per_fold)
    assert set(s) == {"log_loss", "accuracy"}
    assert s["log_loss"]["mean"] == pytest.approx(1.1)
    assert s["log_loss"]["std"] == pytest.approx(np.std([1.0, 1.2, 1.1], ddof=1))
    assert s["accuracy"]["min"] == 0.4 and s["accuracy"]["max"] == 0.6
    assert fold_summary([{"log_loss": 1.0}])["log_loss"]["std"] == 0.0
    assert fold_summary([]) == {}
