"""Style control: Bradley-Terry ratings fitted jointly with style differences, as Chatbot Arena does.

For each battle the design row is ``[e_A - e_B, s_1, ..., s_k]``: model indicator differences and one
normalised difference per style feature, ``s = (x_A - x_B) / (x_A + x_B)`` (0 when both are 0) divided by its
root mean square over the battles. Dividing by the RMS (not z-scoring) keeps ``s`` antisymmetric: swapping A and
B negates every feature, so ratings do not depend on which side a model was shown. The target is "A won"; a
battle enters twice, as a win of A weighted ``p_a + p_tie/2`` and a win of B weighted ``p_b + p_tie/2``.

The fit is scikit-learn's :class:`~sklearn.linear_model.LogisticRegression` (``fit_intercept=False``, L2 with
``C = 1e6``: effectively unregularised, but it keeps a rating finite when a model never lost): a joint
BT-with-covariates model is a logistic regression, and lbfgs solves it in well under a second for 50 models and
tens of thousands of battles. Model coefficients become Elo-scale ratings exactly as in
:mod:`prefpred.leaderboard.ratings`; a style coefficient is reported in log-odds and Elo points per RMS unit of
its feature (positive: that style wins votes). Bootstrap intervals resample battles and refit.

Limits: style features are counts from regular expressions (:func:`prefpred.leaderboard.battles.style_counts`);
a feature that never differs between the sides is left out; the style effect is assumed the same for every
model.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from prefpred.leaderboard.battles import Battles
from prefpred.leaderboard.ratings import ELO_BASE, ELO_SCALE, Fit, absent_in, bootstrap_counts, to_elo
from prefpred.types import UserError

logger = logging.getLogger(__name__)

C_REG = 1e6
"""Inverse L2 strength of the style fit (large: effectively unregularised)."""


def style_differences(battles: Battles) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Normalised style differences (``n x k``), the features kept and their RMS before scaling."""
    if not battles.has_style:
        raise UserError(f"{battles.source}: battles carry no text or style columns; style control needs them")
    xa, xb = battles.style_a, battles.style_b
    total = xa + xb
    diff = np.divide(xa - xb, total, out=np.zeros_like(total, dtype=np.float64), where=total > 0)
    rms = np.sqrt(np.mean(diff ** 2, axis=0))
    keep = rms > 1e-12
    dropped = [n for n, k in zip(battles.style_names, keep, strict=True) if not k]
    if dropped:
        logger.info("style features that never differ are left out: %s", ", ".join(dropped))
    if not keep.any():
        raise UserError(f"{battles.source}: no style feature ever differs between the two sides")
    return diff[:, keep] / rms[keep], [n for n, k in zip(battles.style_names, keep, strict=True) if k], rms[keep]


def _design(battles: Battles, style: np.ndarray) -> np.ndarray:
    n = len(battles)
    models = np.zeros((n, battles.n_models))
    rows = np.arange(n)
    models[rows, battles.a] += 1.0
    models[rows, battles.b] -= 1.0
    return np.hstack([models, style])


def _fit(design: np.ndarray, wins_a: np.ndarray, wins_b: np.ndarray, start: np.ndarray | None = None
         ) -> tuple[np.ndarray, bool]:
    """Coefficients of the weighted logistic regression, fitted on the battles and their mirror images.

    Each battle enters as "A won" (weight ``wins_a``) and "B won" (weight ``wins_b``), and each of those also
    mirrored (``-x``, the other label) at half weight: the objective is unchanged, both classes always exist,
    and the fit is exactly symmetric under swapping A and B. ``start``: coefficients to start from (a bootstrap
    refit starts at the full fit and converges in a fraction of the iterations). Returns the coefficients and
    whether lbfgs converged (it may not when a model never lost or never won: only the weak L2 term bounds it).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = np.vstack([design, -design, design, -design])
    y = np.concatenate([np.ones(len(design)), np.zeros(len(design)), np.zeros(len(design)), np.ones(len(design))])
    w = np.concatenate([wins_a, wins_a, wins_b, wins_b]) / 2
    use = w > 0
    model = LogisticRegression(fit_intercept=False, C=C_REG, max_iter=2000, tol=1e-8, warm_start=start is not None)
    if start is not None:
        model.coef_ = np.asarray(start, dtype=np.float64).reshape(1, -1).copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x[use], y[use], sample_weight=w[use])
    return model.coef_[0], not any(issubclass(c.category, ConvergenceWarning) for c in caught)


@dataclasses.dataclass
class StyleFit:
    """Style-controlled ratings plus the style coefficients (log-odds per RMS unit) and their intervals."""

    fit: Fit
    features: list[str]
    coef: np.ndarray
    coef_replicates: np.ndarray
    rms: np.ndarray

    def coefficients(self) -> list[dict[str, float | str]]:
        """One record per feature: coefficient (log-odds and Elo per RMS unit), interval, raw RMS."""
        tail = 100 * (1 - self.fit.confidence) / 2
        out = []
        for k, name in enumerate(self.features):
            reps = self.coef_replicates[:, k] if len(self.coef_replicates) else np.array([self.coef[k]])
            out.append({"feature": name, "coef": float(self.coef[k]),
                        "ci_low": float(np.percentile(reps, tail)), "ci_high": float(np.percentile(reps, 100 - tail)),
                        "elo_per_unit": float(self.coef[k] * ELO_SCALE / math.log(ELO_BASE)),
                        "rms_normalised_diff": float(self.rms[k])})
        return out


def fit_style(battles: Battles, *, rounds: int = 100, seed: int = 0, anchor: str | None = None,
              anchor_rating: float = 1000.0, confidence: float = 0.95) -> StyleFit:
    """Ratings controlled for style (see the module docstring), with ``rounds`` bootstrap replicates."""
    style, features, rms = style_differences(battles)
    design = _design(battles, style)
    wa, wb = battles.win_weights()
    m = battles.n_models
    anchor_i = None if anchor is None else battles.models.index(anchor)
    coef, converged = _fit(design, wa, wb)
    unconverged = 0 if converged else 1
    reps = np.empty((rounds, len(coef)))
    absent = np.zeros((rounds, m), dtype=bool)
    for r, counts in enumerate(bootstrap_counts(len(battles), rounds, seed)):
        reps[r], converged = _fit(design, wa * counts, wb * counts, start=coef)
        unconverged += not converged
        absent[r] = absent_in(battles, counts)
        if (r + 1) % 10 == 0:
            logger.info("style control bootstrap %d/%d", r + 1, rounds)

    def ratings(c: np.ndarray) -> np.ndarray:
        return to_elo(c[..., :m] - c[..., :m].mean(axis=-1, keepdims=True), anchor=anchor_i,
                      anchor_rating=anchor_rating)

    if unconverged:
        logger.warning("style control: %d of %d fits stopped at the iteration limit (a model that never lost or "
                       "never won has no finite maximum-likelihood rating; see the flagged models)", unconverged,
                       rounds + 1)
    rep_ratings = ratings(reps) if rounds else np.empty((0, m))
    rep_ratings[absent] = np.nan  # a model absent from a resample sits at the regulariser's 0: no estimate
    fit = Fit(battles.models, ratings(coef), rep_ratings, confidence)
    return StyleFit(fit, features, coef[m:], reps[:, m:], rms)
