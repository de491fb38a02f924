"""Uncertainty of model comparisons on one validation set: a bootstrap over prompt groups.

:func:`grouped_bootstrap` resamples whole prompt groups (pairs that share a prompt are correlated) and gives each
model's accuracy and log loss a standard error and 95% percentile interval, and each paired difference too.
Limits: percentile intervals (no bias correction); with one prompt group there is no interval (``None``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


def _row_scores(y: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row correctness and log loss (clipped and renormalised like :func:`prefpred.metrics.log_loss`)."""
    from prefpred.metrics import normalize_proba

    p = normalize_proba(proba)
    correct = (np.asarray(proba).argmax(axis=1) == y.argmax(axis=1)).astype(np.float64)
    return correct, -(y * np.log(p)).sum(axis=1)


def grouped_bootstrap(y: np.ndarray, probas: Mapping[str, np.ndarray], groups: Sequence[str], *,
                      comparisons: Sequence[tuple[str, str]] = (), n_boot: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """Confidence intervals of accuracy and log loss, resampling whole prompt groups with replacement.

    Returns ``{"models": {name: {accuracy_se, accuracy_ci95, log_loss_se, log_loss_ci95}}, "comparisons":
    [...]}``; each comparison ``(a, b)`` (both in ``probas``) holds ``accuracy_gain`` (accuracy of ``a`` minus
    ``b``) and ``log_loss_reduction`` (log loss of ``b`` minus ``a``; positive = ``a`` is better), each with
    its bootstrap standard error, 95% percentile interval and ``*_within_noise`` (the interval contains 0).
    Pairs that share a prompt are correlated, so resampling groups gives honest, wider intervals than
    resampling rows.
    """
    y = np.asarray(y, dtype=np.float64)
    codes, uniq = pd.factorize(pd.Series(list(groups), dtype=str))
    n_groups = len(uniq)
    sizes = np.bincount(codes, minlength=n_groups).astype(np.float64)
    rng = np.random.default_rng(seed)
    weights = None
    if n_boot > 0 and n_groups > 1:
        draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
        weights = np.zeros((n_boot, n_groups))
        np.add.at(weights, (np.repeat(np.arange(n_boot), n_groups), draws.ravel()), 1.0)
    denom = weights @ sizes if weights is not None else None

    sums: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    point: dict[str, tuple[float, float]] = {}
    for name, proba in probas.items():
        correct, ll = _row_scores(y, np.asarray(proba, dtype=np.float64))
        sums[name] = (np.bincount(codes, weights=correct, minlength=n_groups),
                      np.bincount(codes, weights=ll, minlength=n_groups))
        point[name] = (float(correct.mean()), float(ll.mean()))

    def boot(vec: np.ndarray) -> np.ndarray | None:
        return None if weights is None else (weights @ vec) / denom

    def interval(samples: np.ndarray | None) -> tuple[float | None, list[float] | None]:
        if samples is None:
            return None, None
        lo, hi = np.percentile(samples, [2.5, 97.5])
        return float(samples.std(ddof=1)), [float(lo), float(hi)]

    out: dict[str, Any] = {"n_boot": n_boot if weights is not None else 0, "n_groups": n_groups,
                           "n": int(len(y)), "models": {}, "comparisons": []}
    for name, (acc_s, ll_s) in sums.items():
        acc_se, acc_ci = interval(boot(acc_s))
        ll_se, ll_ci = interval(boot(ll_s))
        acc = point[name][0]
        out["models"][name] = {
            "accuracy_se": acc_se, "accuracy_ci95": acc_ci, "log_loss_se": ll_se, "log_loss_ci95": ll_ci,
            "accuracy_se_binomial": math.sqrt(acc * (1 - acc) / len(y)) if len(y) else None,
        }
    for a, b in comparisons:
        if a not in sums or b not in sums:
            continue
        gain_se, gain_ci = interval(boot(sums[a][0] - sums[b][0]))
        red_se, red_ci = interval(boot(sums[b][1] - sums[a][1]))
        out["comparisons"].append({
            "a": a, "b": b,
            "accuracy_gain": point[a][0] - point[b][0], "accuracy_gain_se": gain_se, "accuracy_gain_ci95": gain_ci,
            "accuracy_within_noise": None if gain_ci is None else bool(gain_ci[0] <= 0.0 <= gain_ci[1]),
            "log_loss_reduction": point[b][1] - point[a][1], "log_loss_reduction_se": red_se,
            "log_loss_reduction_ci95": red_ci,
            "log_loss_within_noise": None if red_ci is None else bool(red_ci[0] <= 0.0 <= red_ci[1]),
        })
    return out
