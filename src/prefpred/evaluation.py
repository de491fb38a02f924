"""Scoring predictions against labelled pairs: the engine of ``prefpred evaluate``.

Prediction files are Kaggle submissions (``id,winner_model_a,winner_model_b,winner_tie``) or prefpred's own
``oof.csv`` / ``holdout.csv`` / ``validation.csv`` (``id,p_a,p_b,p_tie[,label]``), read by
:func:`prefpred.submission.read_predictions`.

A prediction file rarely covers every pair of the data it came from (a run's ``holdout.csv`` holds a fifth of
its data file): :func:`match_predictions` scores the labelled pairs the file covers and reports the coverage
(:class:`Coverage`: data pairs, predictions, scored pairs, predictions for ids not in the data, covered pairs
without a label). It refuses, in one line, only when nothing can be scored.

:func:`score` gives the numbers ``evaluate`` prints: headline metrics, confusion matrix, the error analysis of
:mod:`prefpred.analysis` (segments, most confident errors) and, when predictions of the A/B-swapped pairs are
given, swap consistency.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.metrics import compute_metrics, confusion_matrix, swap_consistency
from prefpred.submission import read_predictions
from prefpred.types import DataError, Pair, label_matrix
from prefpred.utils import json_safe

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Coverage:
    """How a prediction file and a data set overlap."""

    n_data: int
    """Pairs in the data."""
    n_predictions: int
    """Rows in the prediction file."""
    n_scored: int
    """Labelled data pairs that have a prediction: the rows the metrics are computed on."""
    n_unlabelled: int
    """Data pairs with a prediction but without a label (not scored)."""
    n_unused: int
    """Predictions for ids that are not in the data (ignored)."""

    def describe(self) -> str:
        text = f"{self.n_scored:,} of {self.n_data:,} data pairs scored ({self.n_predictions:,} predictions"
        if self.n_unused:
            text += f", {self.n_unused:,} for ids not in the data"
        if self.n_unlabelled:
            text += f", {self.n_unlabelled:,} for unlabelled pairs"
        return text + ")"


@dataclasses.dataclass
class Matched:
    """The scored pairs (data order), their labels and predictions, and the coverage."""

    pairs: list[Pair]
    y: np.ndarray
    proba: np.ndarray
    coverage: Coverage


def match_arrays(ids: Sequence[str], proba: np.ndarray, pairs: Sequence[Pair], *, where: str = "predictions"
                 ) -> Matched:
    """Pair up predictions (``ids``, ``n x 3``) with the labelled ``pairs`` they cover."""
    index = {str(i): k for k, i in enumerate(ids)}
    data_ids = {p.id for p in pairs}
    covered = [p for p in pairs if p.id in index]
    scored = [p for p in covered if p.label is not None]
    cov = Coverage(n_data=len(pairs), n_predictions=len(index), n_scored=len(scored),
                   n_unlabelled=len(covered) - len(scored), n_unused=sum(1 for i in index if i not in data_ids))
    if not covered:
        example = next(iter(index), None)
        raise DataError(f"none of the {len(index):,} prediction id(s) is in the data ({len(pairs):,} pairs; e.g. id "
                        f"{example!r}): were they made for other data?", path=where)
    if not scored:
        raise DataError(f"the {len(covered):,} covered pair(s) have no labels: nothing to score", path=where)
    if cov.n_scored < cov.n_data or cov.n_unused:
        logger.debug("%s: %s", where, cov.describe())  # callers show it (evaluate prints it once)
    order = np.asarray([index[p.id] for p in scored], dtype=int)
    return Matched(scored, label_matrix(scored), np.asarray(proba, dtype=np.float64)[order], cov)


def match_predictions(pred_path: str | Path, pairs: Sequence[Pair]) -> Matched:
    """Read a prediction file and pair it up with the labelled ``pairs`` it covers (see :func:`match_arrays`)."""
    ids, proba = read_predictions(pred_path)
    return match_arrays(ids, proba, pairs, where=str(pred_path))


def align_predictions(pred_path: str | Path, pairs: Sequence[Pair]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions of the labelled ``pairs`` a prediction file covers, in data order."""
    m = match_predictions(pred_path, pairs)
    return m.y, m.proba


def score(pairs: Sequence[Pair], proba: np.ndarray, *, swapped: np.ndarray | None = None,
          coverage: Coverage | None = None, on: str = "evaluated") -> dict[str, Any]:
    """Headline metrics, confusion matrix, error analysis (and swap consistency) of labelled pairs."""
    from prefpred.analysis import confident_errors, segment_table

    y = label_matrix(pairs)
    out: dict[str, Any] = compute_metrics(y, proba)
    out["confusion"] = confusion_matrix(y, proba).tolist()
    if coverage is not None:
        out["coverage"] = dataclasses.asdict(coverage)
    if swapped is not None:
        out["swap_consistency"] = swap_consistency(proba, swapped)
    out["segments"] = segment_table(list(pairs), proba).to_dict(orient="records")
    out["confident_errors"] = confident_errors(list(pairs), proba)
    out["on"] = on
    return json_safe(out)


def evaluate_predictions(pred_path: str | Path, pairs: Sequence[Pair]) -> dict[str, Any]:
    """Metrics of a prediction file against the labelled pairs it covers (see :func:`score`)."""
    m = match_predictions(pred_path, pairs)
    return score(m.pairs, m.proba, coverage=m.coverage, on=str(pred_path))


def run_data_path(pred_path: str | Path) -> str | None:
    """The data file of the run a prediction file sits in (``oof.csv``/``holdout.csv`` of a run), if any."""
    import json

    metrics = Path(pred_path).resolve().parent / "metrics.json"
    if not metrics.is_file():
        return None
    try:
        path = json.loads(metrics.read_text(encoding="utf-8")).get("data_path")
    except (OSError, ValueError):
        return None
    return str(path) if path else None
