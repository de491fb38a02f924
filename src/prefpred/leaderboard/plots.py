"""Leaderboard PNGs: ratings with their intervals, and the pairwise predicted-win-rate heatmap.

Both write one PNG atomically (through :func:`prefpred.plots._save`'s Agg backend) and return its path. Model
names are drawn as tick labels; past ~60 models the labels get small but the plots stay readable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prefpred.plots import _save, plt


def _xerr(t: pd.DataFrame) -> list[np.ndarray]:
    """Error-bar lengths; clipped at 0 (a percentile interval need not contain the point, e.g. an anchor)."""
    return [np.clip(t["rating"] - t["ci_low"], 0, None).to_numpy(), np.clip(t["ci_high"] - t["rating"], 0,
                                                                            None).to_numpy()]


def plot_ratings(table: pd.DataFrame, path: str | Path, *, title: str, other: pd.DataFrame | None = None,
                 other_label: str = "style-controlled", label: str = "Bradley-Terry") -> Path:
    """Horizontal bars of each model's rating and interval, best at the top; ``other`` overlays a second fit."""
    t = table.sort_values("rating", ascending=True).reset_index(drop=True)
    n = len(t)
    fig, ax = plt.subplots(figsize=(8.5, max(3.0, 0.24 * n + 1.2)))
    y = np.arange(n)
    shift = 0.18 if other is not None else 0.0
    ax.errorbar(t["rating"], y + shift, xerr=_xerr(t), fmt="o",
                color="#4c72b0", ecolor="#4c72b0", capsize=2, markersize=4, linewidth=1, label=label)
    if other is not None:
        o = other.set_index("model").reindex(t["model"])
        ax.errorbar(o["rating"], y - shift, xerr=_xerr(o),
                    fmt="s", color="#dd8452", ecolor="#dd8452", capsize=2, markersize=4, linewidth=1,
                    label=other_label)
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(t["model"], fontsize=7 if n > 30 else 9)
    ax.set_xlabel("rating (Elo scale) with 95% bootstrap interval")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_ylim(-0.7, n - 0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_win_matrix(models: list[str], prob: np.ndarray, path: str | Path, *, title: str) -> Path:
    """Heatmap of ``prob[i, j]`` = predicted probability that row model ``i`` beats column model ``j``."""
    n = len(models)
    size = min(22.0, max(5.0, 0.3 * n + 2.5))
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    shown = np.array(prob, dtype=np.float64)
    np.fill_diagonal(shown, np.nan)
    im = ax.imshow(shown, cmap="RdBu_r", vmin=0.0, vmax=1.0)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if i != j:
                    ax.text(j, i, f"{shown[i, j]:.2f}", ha="center", va="center", fontsize=7)
    font = 9 if n <= 20 else (7 if n <= 40 else 5)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(models, rotation=90, fontsize=font)
    ax.set_yticklabels(models, fontsize=font)
    ax.set_xlabel("opponent")
    ax.set_ylabel("model")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="P(row beats column)")
    fig.tight_layout()
    return _save(fig, path)
