"""Choosing the ensemble method by validation over the members' folds, and scoring that choice honestly.

The members' out-of-fold predictions carry the fold of each row (the members' shared ``splits.csv``).

* :func:`cross_validate` fits every candidate (:data:`~prefpred.ensemble.blend.DEFAULT_CANDIDATES`:
  probability- and logit-space blends and stacking, each raw, temperature- and bias-calibrated) on all folds but one and predicts the
  one left out: one out-of-fold prediction per candidate; the candidate with the lowest pooled log loss wins.
* :func:`nested_oof` scores the *procedure* (choose a candidate, then fit it) without peeking: for each outer
  fold it runs :func:`cross_validate` on the remaining folds only, fits the candidate that wins there on them and
  predicts the outer fold. Its log loss is the ensemble's honest number, comparable fold by fold with each
  member's own out-of-fold log loss.

Limits: with fewer than three folds there is no inner validation; :func:`nested_oof` then falls back to the
plain probability blend. Ties in log loss go to the simpler candidate (the order of the list).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from prefpred.ensemble.blend import DEFAULT_CANDIDATES, Candidate, CandidateSpec
from prefpred.metrics import log_loss

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CVResult:
    """Out-of-fold predictions and pooled log loss of each candidate; :attr:`best` is the winner's spec."""

    oof: dict[str, np.ndarray]
    log_loss: dict[str, float]
    specs: dict[str, CandidateSpec]

    @property
    def best(self) -> CandidateSpec:
        name = min(self.log_loss, key=lambda k: (self.log_loss[k], list(self.log_loss).index(k)))
        return self.specs[name]


def _take(X: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
    return None if X is None else X[idx]


def cross_validate(P: np.ndarray, y: np.ndarray, folds: np.ndarray, X: np.ndarray | None = None,
                   candidates: Sequence[CandidateSpec] = DEFAULT_CANDIDATES) -> CVResult:
    """Leave-one-fold-out predictions of every candidate over the rows' ``folds``."""
    n = y.shape[0]
    oof = {c.name: np.full((n, 3), np.nan) for c in candidates}
    for k in np.unique(folds):
        va, tr = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
        for spec in candidates:
            cand = Candidate.fit(spec, P[:, tr], y[tr], _take(X, tr))
            oof[spec.name][va] = cand.predict(P[:, va], _take(X, va))
    losses = {name: log_loss(y, pred) for name, pred in oof.items()}
    return CVResult(oof=oof, log_loss=losses, specs={c.name: c for c in candidates})


def nested_oof(P: np.ndarray, y: np.ndarray, folds: np.ndarray, X: np.ndarray | None = None,
               candidates: Sequence[CandidateSpec] = DEFAULT_CANDIDATES) -> tuple[np.ndarray, list[dict]]:
    """Out-of-fold predictions of "select by inner CV, then fit"; per outer fold, the candidate it chose."""
    n = y.shape[0]
    out = np.full((n, 3), np.nan)
    chosen: list[dict] = []
    fold_ids = np.unique(folds)
    for k in fold_ids:
        va, tr = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
        if len(fold_ids) >= 3:
            inner = cross_validate(P[:, tr], y[tr], folds[tr], _take(X, tr), candidates)
            spec = inner.best
        else:
            spec = CandidateSpec("blend-prob")
        cand = Candidate.fit(spec, P[:, tr], y[tr], _take(X, tr))
        out[va] = cand.predict(P[:, va], _take(X, va))
        chosen.append({"fold": int(k), "chosen": spec.name, "n": int(len(va)),
                       "log_loss": log_loss(y[va], out[va])})
        logger.info("outer fold %s: inner validation chose %s (log loss %.4f)", k, spec.name,
                    chosen[-1]["log_loss"])
    return out, chosen
