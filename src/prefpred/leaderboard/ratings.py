"""Bradley-Terry ratings on the Elo scale with bootstrap intervals, online Elo and win rates.

The maximum-likelihood fit is evalica's (:func:`evalica.bradley_terry`, Rust core, Newman's 2023 iteration),
chosen over a hand-written solver because it is maintained, tested against reference data and converges in a
dozen iterations on 50 models; it is fed one weighted cell per ordered model pair (the win matrix), so a fit
costs the same for 1k or 1M battles. A tie counts half a win for each side; a soft outcome ``(p_a, p_b, p_tie)``
counts ``p_a + p_tie/2`` wins for A (predicted battles).

Every fit adds :data:`PRIOR_TIES` virtual tie(s) to each pair of models that met: it keeps a rating finite when
a model never lost (or never won) and moves ratings of real-size data by well under one Elo point.

Ratings are ``ELO_SCALE * log10(strength)`` shifted so that the mean is ``anchor_rating`` (default 1000) or a
chosen ``anchor`` model sits at ``anchor_rating``. Bootstrap intervals resample battles with replacement
(multinomial counts per battle, seeded), refit, and take percentiles; rank = 1 + the number of models whose
lower bound is above this model's upper bound (Chatbot Arena's rule). Each replicate is anchored like the point
estimate, so with an ``anchor`` model its interval is a point and every other interval carries its uncertainty.
A model with no battle in a resample (likely for a model with a handful of battles) has no estimate there, only
the fit's default, so that replicate is left out of its interval (:func:`absent_in`).

Limits: BT assumes one strength per model, independent of prompt and of the opponent; intervals are marginal
(per model), not simultaneous. Online Elo (:func:`online_elo`) depends on the battles' order and is shown only
for comparison; it uses each battle's most likely outcome.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import evalica
import numpy as np
import pandas as pd

from prefpred.leaderboard.battles import Battles
from prefpred.types import UserError

logger = logging.getLogger(__name__)

ELO_SCALE = 400.0
ELO_BASE = 10.0
PRIOR_TIES = 0.1
"""Virtual ties added to every pair of models that met (half a win each way), so every rating is finite."""
_TOLERANCE = 1e-9
_LIMIT = 10_000


def win_matrix(a: np.ndarray, b: np.ndarray, wins_a: np.ndarray, wins_b: np.ndarray, n: int,
               counts: np.ndarray | None = None) -> np.ndarray:
    """``W[i, j]`` = (weighted) wins of model ``i`` over model ``j``; ``counts`` multiplies each battle."""
    wa = wins_a if counts is None else wins_a * counts
    wb = wins_b if counts is None else wins_b * counts
    flat = np.bincount(a * n + b, weights=wa, minlength=n * n) + np.bincount(b * n + a, weights=wb, minlength=n * n)
    return flat.reshape(n, n)


def met_matrix(battles: Battles) -> np.ndarray:
    """Boolean ``n x n``: which pairs of models met at least once (symmetric)."""
    n = battles.n_models
    met = np.zeros((n, n), dtype=bool)
    met[battles.a, battles.b] = True
    return met | met.T


def bt_log_strengths(wins: np.ndarray, met: np.ndarray | None = None, prior_ties: float = PRIOR_TIES) -> np.ndarray:
    """Natural-log BT strengths (mean 0) from a win matrix, by :func:`evalica.bradley_terry`."""
    n = wins.shape[0]
    w = np.array(wins, dtype=np.float64)
    if met is not None and prior_ties > 0:
        w = w + met * (prior_ties / 2)
    rows, cols = np.nonzero(w)
    result = evalica.bradley_terry(rows.tolist(), cols.tolist(), [evalica.Winner.X] * len(rows),
                                   index=pd.RangeIndex(n), weights=w[rows, cols].tolist(), tolerance=_TOLERANCE,
                                   limit=_LIMIT)
    scores = result.scores.reindex(pd.RangeIndex(n)).to_numpy(dtype=np.float64)
    if not (np.all(np.isfinite(scores) & (scores > 0)) and _is_mle(w, scores)):
        raise UserError(f"the Bradley-Terry fit did not converge after {result.iterations} iterations "
                        "(a model that never won or never lost?)")
    log_s = np.log(scores)
    return log_s - log_s.mean()


def _is_mle(wins: np.ndarray, scores: np.ndarray, rtol: float = 1e-4) -> bool:
    """Whether each model's expected wins under ``scores`` match its observed wins (the MLE condition)."""
    games = wins + wins.T
    expected = (games * (scores[:, None] / (scores[:, None] + scores[None, :]))).sum(axis=1)
    observed = wins.sum(axis=1)
    return bool(np.all(np.abs(expected - observed) <= rtol * np.maximum(games.sum(axis=1), 1.0)))


def to_elo(log_strengths: np.ndarray, *, anchor: int | None = None, anchor_rating: float = 1000.0) -> np.ndarray:
    """Elo-scale ratings (``400 * log10``) whose mean, or model ``anchor``, is at ``anchor_rating``.

    Works on one vector or on rows of a ``rounds x n`` matrix (each row anchored alone).
    """
    elo = np.asarray(log_strengths, dtype=np.float64) * (ELO_SCALE / math.log(ELO_BASE))
    ref = elo[..., anchor] if anchor is not None else elo.mean(axis=-1)
    return elo - np.expand_dims(ref, -1) + anchor_rating


def bootstrap_counts(n_battles: int, rounds: int, seed: int) -> np.ndarray:
    """``rounds x n_battles`` multinomial resampling counts (each row sums to ``n_battles``), seeded."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n_battles, n_battles), minlength=n_battles)
                     for _ in range(rounds)]) if rounds else np.zeros((0, n_battles), dtype=np.int64)


def absent_in(battles: Battles, counts: np.ndarray) -> np.ndarray:
    """Which models have no battle in a bootstrap resample (``counts`` per battle): their rating in that
    replicate is only the fit's default (the mean, or the regulariser's pull), not an estimate, so it is left out
    of their interval."""
    n = battles.n_models
    return (np.bincount(battles.a, weights=counts, minlength=n) + np.bincount(battles.b, weights=counts,
                                                                               minlength=n)) == 0


def rank_by_intervals(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """1 + the number of models whose lower bound is above this model's upper bound."""
    low, high = np.asarray(low), np.asarray(high)
    return 1 + (low[None, :] > high[:, None]).sum(axis=1)


@dataclasses.dataclass
class Fit:
    """Ratings of one method: point estimates, bootstrap replicates and the interval-based rank."""

    models: list[str]
    rating: np.ndarray
    replicates: np.ndarray
    """``rounds x n`` bootstrap ratings (empty with 0 rounds)."""
    confidence: float = 0.95

    @property
    def ci(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self.replicates) == 0:
            return self.rating.copy(), self.rating.copy()
        tail = 100 * (1 - self.confidence) / 2
        # NaN: the model had no battle in that resample (see absent_in), so that replicate says nothing of it
        return (np.nanpercentile(self.replicates, tail, axis=0),
                np.nanpercentile(self.replicates, 100 - tail, axis=0))

    @property
    def rank(self) -> np.ndarray:
        return rank_by_intervals(*self.ci)

    def table(self) -> pd.DataFrame:
        low, high = self.ci
        return pd.DataFrame({"model": self.models, "rating": self.rating, "ci_low": low, "ci_high": high,
                             "rank": self.rank})


def _anchor_index(battles: Battles, anchor: str | None) -> int | None:
    if anchor is None:
        return None
    if anchor not in battles.models:
        raise UserError(f"anchor model {anchor!r} has no battles (known: {', '.join(battles.models[:8])}"
                        f"{', ...' if battles.n_models > 8 else ''})")
    return battles.models.index(anchor)


def fit_bt(battles: Battles, *, rounds: int = 100, seed: int = 0, anchor: str | None = None,
           anchor_rating: float = 1000.0, confidence: float = 0.95) -> Fit:
    """Bradley-Terry ratings with ``rounds`` bootstrap replicates (resampling battles)."""
    n = battles.n_models
    anchor_i = _anchor_index(battles, anchor)
    wa, wb = battles.win_weights()
    met = met_matrix(battles)
    point = bt_log_strengths(win_matrix(battles.a, battles.b, wa, wb, n), met)
    reps = np.empty((rounds, n))
    absent = np.zeros((rounds, n), dtype=bool)
    for r, counts in enumerate(bootstrap_counts(len(battles), rounds, seed)):
        reps[r] = bt_log_strengths(win_matrix(battles.a, battles.b, wa, wb, n, counts), met)
        absent[r] = absent_in(battles, counts)
        if (r + 1) % 25 == 0:
            logger.debug("bootstrap %d/%d", r + 1, rounds)
    elo = to_elo(reps, anchor=anchor_i, anchor_rating=anchor_rating) if rounds else reps
    elo[absent] = np.nan
    return Fit(battles.models, to_elo(point, anchor=anchor_i, anchor_rating=anchor_rating), elo, confidence)


def online_elo(battles: Battles, *, k: float = 4.0, initial: float = 1000.0) -> np.ndarray:
    """Sequential Elo in the battles' order (:func:`evalica.elo`), on each battle's most likely outcome."""
    wa, wb = battles.win_weights()
    winners = np.where(np.isclose(wa, wb), evalica.Winner.Draw, np.where(wa > wb, evalica.Winner.X,
                                                                          evalica.Winner.Y))
    result = evalica.elo(battles.a.tolist(), battles.b.tolist(), [evalica.Winner(int(w)) for w in winners],
                         index=pd.RangeIndex(battles.n_models), initial=initial, base=ELO_BASE, scale=ELO_SCALE,
                         k=k)
    return result.scores.reindex(pd.RangeIndex(battles.n_models)).to_numpy(dtype=np.float64)


def win_rates(battles: Battles) -> pd.DataFrame:
    """Per model: battles, wins, losses, ties (soft for predicted outcomes) and win rate (ties half)."""
    n = battles.n_models
    p = battles.outcome

    def per_model(col_a: np.ndarray, col_b: np.ndarray) -> np.ndarray:
        return np.bincount(battles.a, weights=col_a, minlength=n) + np.bincount(battles.b, weights=col_b,
                                                                                minlength=n)

    wins, losses, ties = per_model(p[:, 0], p[:, 1]), per_model(p[:, 1], p[:, 0]), per_model(p[:, 2], p[:, 2])
    count = battles.battle_counts()
    return pd.DataFrame({"model": battles.models, "battles": count, "wins": wins, "losses": losses,
                         "ties": ties, "win_rate": (wins + ties / 2) / np.maximum(count, 1)})


def pairwise_win_prob(ratings: np.ndarray) -> np.ndarray:
    """``P[i, j]`` = BT probability that model ``i`` beats model ``j`` (ties as half) given Elo ratings."""
    strengths = np.power(ELO_BASE, (np.asarray(ratings) - np.max(ratings)) / ELO_SCALE)
    return evalica.pairwise_scores(strengths)


def pairwise_table(battles: Battles, ratings: np.ndarray) -> pd.DataFrame:
    """Per ordered pair of models that met: battles, observed win rate (ties half) and the BT prediction."""
    n = battles.n_models
    wa, wb = battles.win_weights()
    wins = win_matrix(battles.a, battles.b, wa, wb, n)
    games = wins + wins.T
    prob = pairwise_win_prob(ratings)
    rows, cols = np.nonzero(games > 0)
    keep = rows != cols
    rows, cols = rows[keep], cols[keep]
    count = np.zeros((n, n))
    np.add.at(count, (battles.a, battles.b), 1)
    count = count + count.T
    return pd.DataFrame({"model": [battles.models[i] for i in rows], "opponent": [battles.models[j] for j in cols],
                         "battles": count[rows, cols].astype(int), "win_rate": wins[rows, cols] / games[rows, cols],
                         "predicted": prob[rows, cols]})
