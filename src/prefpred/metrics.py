"""Metrics over ``n x 3`` probability arrays (order ``a, b, tie``): log loss as Kaggle scores it, accuracy,
Brier score, calibration error, confusion matrix, per-segment tables, swap consistency and fold summaries.

Every function takes the labels ``y`` in any of three forms and normalises them with :func:`label_targets`:

* integer class indices (0 = a, 1 = b, 2 = tie),
* label names (``"a"``, ``"b"``, ``"tie"``; ``"model_a"``/``"winner_model_a"`` style names are accepted too),
* an ``n x 3`` soft-label matrix (rows summing to 1, e.g. :func:`prefpred.types.label_matrix`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from prefpred.types import LABEL_INDEX, LABELS, Pair, hard_labels, label_matrix, swap_proba

EPS = 1e-15
"""Clipping used by Kaggle's (and older scikit-learn's) multi-class log loss."""

_NAME_ALIASES = {
    "a": 0, "model_a": 0, "winner_model_a": 0, "response_a": 0,
    "b": 1, "model_b": 1, "winner_model_b": 1, "response_b": 1,
    "tie": 2, "winner_tie": 2, "draw": 2,
}


def label_targets(y: Any, n: int | None = None) -> np.ndarray:
    """Turn labels (indices, names or an ``n x 3`` soft matrix) into an ``n x 3`` float target matrix."""
    if isinstance(y, np.ndarray) and y.ndim == 2:
        arr = y.astype(np.float64)
    else:
        items = list(y)
        if items and isinstance(items[0], (list, tuple, np.ndarray)):
            arr = np.asarray(items, dtype=np.float64)
        elif items and isinstance(items[0], str):
            idx = []
            for i, name in enumerate(items):
                key = name.strip().lower()
                if key not in _NAME_ALIASES:
                    raise ValueError(f"label {i}: unknown label name {name!r} (expected one of {list(LABELS)})")
                idx.append(_NAME_ALIASES[key])
            arr = np.eye(3)[np.asarray(idx, dtype=int)] if idx else np.zeros((0, 3))
        else:
            idx_arr = np.asarray(items)
            if idx_arr.size and not np.all(np.isin(idx_arr, [0, 1, 2])):
                raise ValueError("integer labels must be class indices 0 (a), 1 (b) or 2 (tie)")
            arr = np.eye(3)[idx_arr.astype(int)] if idx_arr.size else np.zeros((0, 3))
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"labels must be n class indices, n names or an n x 3 matrix, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{arr.shape[0]} labels for {n} predictions")
    return arr


def _check_proba(proba: Any) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"probabilities must be an n x 3 array (a, b, tie), got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities contain NaN or infinite values")
    return p


def normalize_proba(proba: Any, eps: float = EPS) -> np.ndarray:
    """Kaggle's scoring rule: divide each row by its sum, clip to ``[eps, 1 - eps]``, and renormalise (as
    scikit-learn does) so rows sum to 1. Rows that sum to zero or less become uniform."""
    p = np.clip(_check_proba(proba), 0.0, None)
    sums = p.sum(axis=1, keepdims=True)
    p = np.divide(p, sums, out=np.full_like(p, 1 / 3), where=sums > 0)
    p = np.clip(p, eps, 1 - eps)
    return p / p.sum(axis=1, keepdims=True)


def _weights(sample_weight: Any, n: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n)
    w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"{w.shape[0]} sample weights for {n} rows")
    return w


def log_loss(y: Any, proba: Any, sample_weight: Any = None, eps: float = EPS) -> float:
    """Multi-class log loss (natural log), clipped and renormalised like Kaggle and scikit-learn.

    With soft labels this is the cross-entropy ``-mean(sum_k y_k log p_k)``.
    """
    p = normalize_proba(proba, eps)
    t = label_targets(y, len(p))
    if len(p) == 0:
        return float("nan")
    w = _weights(sample_weight, len(p))
    per_row = -(t * np.log(p)).sum(axis=1)
    return float(np.average(per_row, weights=w))


def accuracy(y: Any, proba: Any) -> float:
    """Fraction of rows whose most probable class is the (most probable) true class."""
    p = _check_proba(proba)
    t = label_targets(y, len(p))
    if len(p) == 0:
        return float("nan")
    return float(np.mean(p.argmax(axis=1) == t.argmax(axis=1)))


def brier_score(y: Any, proba: Any) -> float:
    """Multi-class Brier score: mean over rows of ``sum_k (p_k - y_k)^2`` (0 is perfect, 2 is worst)."""
    p = _check_proba(proba)
    t = label_targets(y, len(p))
    if len(p) == 0:
        return float("nan")
    return float(np.mean(((p - t) ** 2).sum(axis=1)))


def reliability_bins(y: Any, proba: Any, n_bins: int = 10) -> pd.DataFrame:
    """Top-label reliability table: per equal-width confidence bin, count, mean confidence and accuracy."""
    p = _check_proba(proba)
    t = label_targets(y, len(p))
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t.argmax(axis=1)).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes to the first bin
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        m = idx == b
        rows.append({
            "bin": b, "lower": edges[b], "upper": edges[b + 1], "count": int(m.sum()),
            "confidence": float(conf[m].mean()) if m.any() else float("nan"),
            "accuracy": float(correct[m].mean()) if m.any() else float("nan"),
        })
    return pd.DataFrame(rows)


def expected_calibration_error(y: Any, proba: Any, n_bins: int = 10) -> float:
    """Top-label ECE: ``sum_b (n_b / n) |accuracy_b - confidence_b|`` over equal-width confidence bins."""
    table = reliability_bins(y, proba, n_bins)
    n = table["count"].sum()
    if n == 0:
        return float("nan")
    used = table[table["count"] > 0]
    return float((used["count"] / n * (used["accuracy"] - used["confidence"]).abs()).sum())


def confusion_matrix(y: Any, proba: Any) -> np.ndarray:
    """3 x 3 counts: rows are true classes, columns predicted classes, both in the order a, b, tie."""
    p = _check_proba(proba)
    t = label_targets(y, len(p))
    cm = np.zeros((3, 3), dtype=int)
    np.add.at(cm, (t.argmax(axis=1), p.argmax(axis=1)), 1)
    return cm


def compute_metrics(y: Any, proba: Any, n_bins: int = 10) -> dict[str, float]:
    """Headline metrics: ``n``, ``log_loss``, ``accuracy``, ``brier``, ``ece`` and the mean predicted
    probability of each class (``mean_p_a``, ``mean_p_b``, ``mean_p_tie``)."""
    p = _check_proba(proba)
    t = label_targets(y, len(p))
    out: dict[str, float] = {
        "n": int(len(p)),
        "log_loss": log_loss(t, p),
        "accuracy": accuracy(t, p),
        "brier": brier_score(t, p),
        "ece": expected_calibration_error(t, p, n_bins) if len(p) else float("nan"),
    }
    for k, name in enumerate(LABELS):
        out[f"mean_p_{name}"] = float(p[:, k].mean()) if len(p) else float("nan")
    return out


LENGTH_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("<1k chars", 0, 1000),
    ("1k-3k chars", 1000, 3000),
    ("3k-6k chars", 3000, 6000),
    (">=6k chars", 6000, math.inf),
)
"""Buckets of the combined length of both responses (characters, all turns)."""


def length_bucket(pair: Pair) -> str:
    total = len(pair.text_a()) + len(pair.text_b())
    for name, lo, hi in LENGTH_BUCKETS:
        if lo <= total < hi:
            return name
    return LENGTH_BUCKETS[-1][0]


def segment_metrics(pairs: Sequence[Pair], proba: Any) -> pd.DataFrame:
    """Metrics per segment: all rows, single vs multi-turn, response-length bucket, tie vs not tie.

    Columns: ``segment``, ``value``, ``n``, ``share``, ``log_loss``, ``accuracy``, ``brier``. Empty segments are
    left out.
    """
    p = _check_proba(proba)
    if len(pairs) != len(p):
        raise ValueError(f"{len(pairs)} pairs for {len(p)} predictions")
    t = label_matrix(pairs)
    n = len(pairs)
    groups: list[tuple[str, str, np.ndarray]] = [("all", "all", np.ones(n, dtype=bool))]
    turns = np.array([len(pr.turns) for pr in pairs])
    groups += [("turns", "single", turns <= 1), ("turns", "multi", turns > 1)]
    buckets = np.array([length_bucket(pr) for pr in pairs])
    groups += [("length", name, buckets == name) for name, _, _ in LENGTH_BUCKETS]
    is_tie = hard_labels(pairs) == LABEL_INDEX["tie"] if n else np.zeros(0, dtype=bool)
    groups += [("label", "tie", is_tie), ("label", "not tie", ~is_tie)]
    rows = []
    for segment, value, mask in groups:
        m = int(mask.sum())
        if m == 0:
            continue
        rows.append({
            "segment": segment, "value": value, "n": m, "share": m / n,
            "log_loss": log_loss(t[mask], p[mask]), "accuracy": accuracy(t[mask], p[mask]),
            "brier": brier_score(t[mask], p[mask]),
        })
    return pd.DataFrame(rows, columns=["segment", "value", "n", "share", "log_loss", "accuracy", "brier"])


def swap_consistency(proba: Any, proba_swapped: Any) -> dict[str, float]:
    """How a model's predictions change when responses A and B are exchanged.

    ``proba_swapped`` are the model's predictions on the swapped pairs (``Pair.swapped()``), in the swapped
    pairs' own column order. A consistent model predicts the mirrored label (A wins <-> B wins, tie stays tie).

    Returns ``consistency`` (fraction of pairs whose predicted label mirrors), ``flip_rate`` (``1 -
    consistency``: the predicted outcome changes with the order), ``position_flip_rate`` (fraction of pairs
    where the model picks the same *position* both times, i.e. A and then A again: the worst kind of flip)
    and ``mean_abs_diff`` (mean absolute difference between the probabilities and the mirrored swapped
    probabilities, averaged over the 3 classes).
    """
    p = _check_proba(proba)
    q = _check_proba(proba_swapped)
    if p.shape != q.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {q.shape}")
    if len(p) == 0:
        return {"n": 0, "consistency": float("nan"), "flip_rate": float("nan"),
                "position_flip_rate": float("nan"), "mean_abs_diff": float("nan")}
    mirrored = swap_proba(q)
    pred, pred_m = p.argmax(axis=1), mirrored.argmax(axis=1)
    consistent = pred == pred_m
    same_position = ((pred == 0) & (q.argmax(axis=1) == 0)) | ((pred == 1) & (q.argmax(axis=1) == 1))
    return {
        "n": int(len(p)),
        "consistency": float(consistent.mean()),
        "flip_rate": float(1.0 - consistent.mean()),
        "position_flip_rate": float(same_position.mean()),
        "mean_abs_diff": float(np.abs(p - mirrored).mean()),
    }


def fold_summary(per_fold: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (sample std, ``ddof=1``; 0 for one fold) of each numeric metric.

    Keys present in every fold and holding numbers are summarised (``fold`` itself is skipped), e.g.
    ``{"log_loss": {"mean": 1.02, "std": 0.01, "min": ..., "max": ...}, ...}``.
    """
    if not per_fold:
        return {}
    keys = [k for k in per_fold[0] if k != "fold"]
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        vals = [f.get(key) for f in per_fold]
        if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                   for v in vals):
            continue
        arr = np.asarray(vals, dtype=np.float64)
        out[key] = {
            "mean": float(arr.mean()),
            "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "min": float(arr.min()),
            "max": float(arr.max()),
        }
    return out


def prior_proba(y: Any, n: int) -> np.ndarray:
    """The class-prior baseline: every row predicts the label frequencies of ``y`` (e.g. the training rows)."""
    t = label_targets(y)
    prior = t.mean(axis=0) if len(t) else np.full(3, 1 / 3)
    return np.tile(prior, (n, 1))
