"""Leaderboards from predicted preferences, and comparing two leaderboards.

:func:`predicted_battles` judges pairs with a trained run (any run :func:`prefpred.runs.load_predictor`
serves) and turns each pair into a battle with a soft outcome ``(p_a, p_b, p_tie)``: model A gets
``p_a + p_tie/2`` of a win. The pairs need model names (``model_a``/``model_b``), not labels; their text
also feeds style control.

:func:`compare_leaderboards` puts two leaderboards (``leaderboard.csv`` files or the run directories holding
them) side by side over their common models: Spearman and Kendall rank correlation of the ratings, and each
model's rating difference after both are re-centred on the common models (ratings are on an arbitrary offset).

Limits: a predicted leaderboard ranks models by what the preference model believes people prefer; it inherits
that model's biases (e.g. for length) and is only as good as its accuracy on those models' responses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prefpred.leaderboard.battles import Battles, battles_from_pairs
from prefpred.types import DataError, UserError

logger = logging.getLogger(__name__)

LEADERBOARD_FILE = "leaderboard.csv"


def predict_pairs(run_dir: str | Path, pairs: list) -> np.ndarray:
    """``n x 3`` probabilities (a, b, tie) of a trained run for ``pairs``."""
    from prefpred.runs import load_predictor

    return np.asarray(load_predictor(run_dir).predict_proba(pairs), dtype=np.float64)


def predicted_battles(run_dir: str | Path, data: str | Path, *, skip_invalid: bool = False) -> Battles:
    """Battles of the pairs in ``data`` with outcomes predicted by the run in ``run_dir``."""
    from prefpred.data import read_pairs

    res = read_pairs(data, skip_invalid=skip_invalid)
    pairs = res.pairs
    if all(p.model_a is None and p.model_b is None for p in pairs):
        raise DataError("no model_a/model_b columns: ranking models from predictions needs the names of both "
                        "models", path=str(data), column="model_a")
    logger.info("judging %d pairs with %s", len(pairs), run_dir)
    proba = predict_pairs(run_dir, pairs)
    if proba.shape != (len(pairs), 3) or not np.all(np.isfinite(proba)):
        raise UserError(f"{run_dir}: predictions are not an n x 3 array of probabilities")
    battles = battles_from_pairs(pairs, path=str(data), outcome=proba, skip_invalid=skip_invalid)
    for reason, n in res.drop_summary().items():
        battles.dropped[reason] = battles.dropped.get(reason, 0) + n
    from prefpred.runs import run_overlap

    battles.in_sample = run_overlap(run_dir, pairs)
    if battles.in_sample:
        logger.warning("%d of %d pairs are in %s's own data (trained or validated on): their predictions are "
                       "in-sample, so the leaderboard looks better than it would on new pairs", battles.in_sample,
                       len(pairs), run_dir)
    return battles


def read_leaderboard(path: str | Path) -> pd.DataFrame:
    """A ``leaderboard.csv`` (or the run directory holding one) with at least ``model`` and ``rating``."""
    path = Path(path)
    if path.is_dir():
        from prefpred.runs import RunError, read_run

        info = read_run(path)  # refuses incomplete or damaged runs in one line
        if info.kind != "leaderboard":
            raise RunError(f"{path}: a {info.kind!r} run, not a leaderboard run (pass a leaderboard.csv or a "
                           "leaderboard run directory)")
        path = path / LEADERBOARD_FILE
    if not path.is_file():
        raise DataError("no such leaderboard file (pass a leaderboard.csv or a leaderboard run directory)",
                        path=str(path))
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"not a readable CSV ({type(e).__name__})", path=str(path)) from None
    for col in ("model", "rating"):
        if col not in df.columns:
            raise DataError(f"missing column {col!r} (found: {', '.join(map(str, df.columns))})", path=str(path),
                            column=col)
    ratings = pd.to_numeric(df["rating"], errors="coerce")
    if ratings.isna().any():
        i = int(np.flatnonzero(ratings.isna().to_numpy())[0])
        raise DataError(f"rating is not a number: {df['rating'].iloc[i]!r}", path=str(path), row=i + 1,
                        column="rating")
    df["rating"] = ratings
    df["model"] = df["model"].astype(str)
    return df


def compare_leaderboards(ours: pd.DataFrame, theirs: pd.DataFrame) -> dict[str, Any]:
    """Rank correlation and per-model rating differences over the models both leaderboards rate."""
    from scipy.stats import kendalltau, spearmanr

    merged = ours[["model", "rating"]].merge(theirs[["model", "rating"]], on="model", suffixes=("", "_other"))
    only_ours = sorted(set(ours["model"]) - set(merged["model"]))
    only_theirs = sorted(set(theirs["model"]) - set(merged["model"]))
    out: dict[str, Any] = {"n_common": len(merged), "only_here": only_ours, "only_other": only_theirs,
                           "spearman": None, "kendall": None, "mean_abs_diff": None, "models": []}
    if len(merged) < 2:
        logger.warning("leaderboards share %d model(s): no rank correlation", len(merged))
        return out
    mine = merged["rating"] - merged["rating"].mean()
    other = merged["rating_other"] - merged["rating_other"].mean()
    out["spearman"] = float(spearmanr(mine, other).statistic)
    out["kendall"] = float(kendalltau(mine, other).statistic)
    diff = mine - other
    out["mean_abs_diff"] = float(np.abs(diff).mean())
    rank_mine = mine.rank(ascending=False, method="min").astype(int)
    rank_other = other.rank(ascending=False, method="min").astype(int)
    rows = pd.DataFrame({"model": merged["model"], "rating": mine, "rating_other": other, "diff": diff,
                         "rank": rank_mine, "rank_other": rank_other}).sort_values("rating", ascending=False)
    out["models"] = rows.to_dict(orient="records")
    return out
