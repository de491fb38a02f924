"""Bradley-Terry scores of N candidates from pairwise preference probabilities (for ``POST /v1/rank``).

Every ordered pair (i as A, j as B) is judged; P(A) counts as a win of i, P(B) as a win of j and a tie as half
a win each, giving a soft win matrix ``W`` (``W[i, j]`` = expected wins of i over j). Bradley-Terry strengths
``p`` maximise the likelihood of ``W`` under P(i beats j) = p_i / (p_i + p_j); they are found with the classic
minorise-maximise iteration (Hunter 2004), with a small prior (``prior`` wins and losses against a virtual
candidate of strength 1) so that a candidate that wins or loses everything still gets a finite score. Scores
are ``log p``, centred to mean 0. N is small (at most a few dozen), so the O(N^2) iteration is instant.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def win_matrix(n: int, order: Sequence[tuple[int, int]], proba: np.ndarray) -> np.ndarray:
    """``n x n`` expected wins from ``proba`` (rows a, b, tie) of the ordered pairs ``order`` ((i, j): i is A)."""
    wins = np.zeros((n, n))
    for (i, j), (p_a, p_b, p_tie) in zip(order, np.asarray(proba, dtype=np.float64), strict=True):
        wins[i, j] += p_a + 0.5 * p_tie
        wins[j, i] += p_b + 0.5 * p_tie
    return wins


def bradley_terry(wins: np.ndarray, *, prior: float = 0.01, tol: float = 1e-10, max_iter: int = 10_000) -> np.ndarray:
    """Centred log-strengths from a win matrix (``wins[i, j]``: wins of i over j; the diagonal is ignored)."""
    wins = np.array(wins, dtype=np.float64)
    np.fill_diagonal(wins, 0.0)
    games = wins + wins.T
    won = wins.sum(axis=1) + prior
    p = np.ones(len(wins))
    for _ in range(max_iter):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1) + 2 * prior / (p + 1.0)
        new = won / denom
        new /= np.exp(np.log(new).mean())  # geometric mean 1: the scale is free
        if np.max(np.abs(np.log(new) - np.log(p))) < tol:
            p = new
            break
        p = new
    scores = np.log(p)
    return scores - scores.mean()


def ranks(scores: np.ndarray) -> np.ndarray:
    """1 for the highest score; equal scores keep their input order."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    out = np.empty(len(order), dtype=int)
    out[order] = np.arange(1, len(order) + 1)
    return out
