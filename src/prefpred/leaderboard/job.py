"""``prefpred leaderboard``: battles in, a leaderboard run directory out.

:func:`leaderboard_job` does, with one seed:

1. read the battles: human votes (``battles``) or pairs judged by a trained run (``run`` + ``data.path``);
2. check them (:mod:`prefpred.leaderboard.battles`): flag, drop or refuse models with few battles, refuse models
   that never meet the rest;
3. fit Bradley-Terry ratings with bootstrap intervals, online Elo and win rates (:mod:`.ratings`) and, when the
   battles carry text or style columns, style-controlled ratings (:mod:`.style`);
4. optionally compare with another leaderboard (:mod:`.predicted`);
5. write the run directory: ``leaderboard.csv``, ``pairwise.csv`` (observed vs predicted win rate of every
   pair of models that met), ``ratings.png``, ``win_matrix.png``, ``config.yaml``,
   ``metrics.json`` (``kind: leaderboard``) and ``report.md``, atomically (a failure leaves nothing behind).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prefpred.config import RunBase, save_config
from prefpred.leaderboard import battles as battles_mod
from prefpred.leaderboard.battles import Battles, apply_min_battles, check_connected, read_battles
from prefpred.leaderboard.plots import plot_ratings, plot_win_matrix
from prefpred.leaderboard.predicted import compare_leaderboards, predicted_battles, read_leaderboard
from prefpred.leaderboard.ratings import fit_bt, online_elo, pairwise_table, pairwise_win_prob, win_rates
from prefpred.leaderboard.report import render_leaderboard_report
from prefpred.leaderboard.style import StyleFit, fit_style
from prefpred.runs import check_run_target, new_run_dir, write_metrics
from prefpred.types import ConfigError, UserError
from prefpred.utils import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

KIND = "leaderboard"
STYLE_MODES = ("auto", "on", "off")
CSV_COLUMNS = ("model", "rating", "ci_low", "ci_high", "rank", "battles", "win_rate")
ROUNDING = {"rating": 2, "ci_low": 2, "ci_high": 2, "win_rate": 4, "online_elo": 2, "style_rating": 2,
            "style_ci_low": 2, "style_ci_high": 2}


@dataclasses.dataclass
class LeaderboardConfig(RunBase):
    """What ``prefpred leaderboard`` needs; saved, resolved, as ``config.yaml`` in the run directory."""

    battles: str | None = None
    """Votes table or labelled pairs file (human battles). Exclusive with :attr:`run`."""
    run: str | None = None
    """A trained run that judges the pairs of ``data.path`` (predicted battles)."""
    both_bad: str = "tie"
    """``both_bad`` votes: ``tie`` (half a win each) or ``drop``."""
    min_battles: int = 50
    """Models with fewer battles are flagged, and handled by :attr:`rare`."""
    rare: str = "keep"
    """Models under :attr:`min_battles`: ``keep`` (flagged), ``drop`` (with their battles) or ``error``."""
    rounds: int = 100
    """Bootstrap rounds (0: no intervals)."""
    confidence: float = 0.95
    """Two-sided level of the bootstrap intervals."""
    anchor: str | None = None
    """Model pinned at :attr:`anchor_rating`; default: the mean rating is :attr:`anchor_rating`."""
    anchor_rating: float = 1000.0
    style: str = "auto"
    """Style control: ``auto`` (when the battles carry text or style columns), ``on`` or ``off``."""
    elo_k: float = 4.0
    """K-factor of the online Elo shown for comparison."""
    compare: str | None = None
    """Another leaderboard (``leaderboard.csv`` or its run directory) to compare with."""
    overwrite: bool = False

    def __post_init__(self) -> None:
        if (self.battles is None) == (self.run is None):
            raise ConfigError("pass exactly one of --battles (human votes) or --run with --data (predicted)")
        if self.run is not None and not self.data.path:
            raise ConfigError("--run needs --data: the pairs (with model_a/model_b) the run should judge")
        for name, value, allowed in (("both_bad", self.both_bad, battles_mod.BOTH_BAD),
                                     ("rare", self.rare, battles_mod.RARE), ("style", self.style, STYLE_MODES)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.rounds < 0 or self.min_battles < 0:
            raise ConfigError("rounds and min_battles must be >= 0")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"confidence must be between 0 and 1, got {self.confidence}")


def load_battles(cfg: LeaderboardConfig) -> Battles:
    """The checked battles a config names (human votes or predicted)."""
    if cfg.battles is not None:
        battles = read_battles(cfg.battles, both_bad=cfg.both_bad, skip_invalid=cfg.data.skip_invalid)
    else:
        battles = predicted_battles(cfg.run, cfg.data.path, skip_invalid=cfg.data.skip_invalid)
    battles = apply_min_battles(battles, cfg.min_battles, cfg.rare)
    check_connected(battles)
    _use_style(cfg, battles)  # --style on without text or style columns fails here, before any fit
    return battles


def build_table(battles: Battles, bt: pd.DataFrame, style: StyleFit | None, elo: np.ndarray) -> pd.DataFrame:
    """One row per model, best first: the CSV columns, then flag, online Elo and the style-controlled columns."""
    rates = win_rates(battles)
    table = bt.merge(rates[["model", "battles", "win_rate"]], on="model")
    table["online_elo"] = elo
    table["flag"] = [battles.flags.get(m, "") for m in table["model"]]
    if style is not None:
        st = style.fit.table().rename(columns={"rating": "style_rating", "ci_low": "style_ci_low",
                                               "ci_high": "style_ci_high", "rank": "style_rank"})
        table = table.merge(st, on="model")
        table["rank_change"] = table["rank"] - table["style_rank"]
    table = table[[*CSV_COLUMNS, *(c for c in table.columns if c not in CSV_COLUMNS)]]
    return table.sort_values(["rating", "model"], ascending=[False, True], kind="stable").reset_index(drop=True)


def _style_view(table: pd.DataFrame) -> pd.DataFrame:
    """The style-controlled columns of a leaderboard table under the plain column names."""
    return table[["model", "style_rating", "style_ci_low", "style_ci_high"]].set_axis(
        ["model", "rating", "ci_low", "ci_high"], axis=1)


def _use_style(cfg: LeaderboardConfig, battles: Battles) -> bool:
    if cfg.style == "on" and not battles.has_style:
        raise UserError(f"{battles.source}: --style on needs battles with text or style columns "
                        f"({', '.join(f'{f}_a/{f}_b' for f in battles_mod.STYLE_FEATURES)})")
    return cfg.style == "on" or (cfg.style == "auto" and battles.has_style)


@dataclasses.dataclass
class Leaderboard:
    """Everything a leaderboard run reports: the table (best first), the fits and the optional comparison."""

    battles: Battles
    table: pd.DataFrame
    ratings: np.ndarray
    """Bradley-Terry ratings in the order of ``battles.models``."""
    style: StyleFit | None
    pairwise: pd.DataFrame
    comparison: dict[str, Any] | None
    timing: dict[str, float]


def compute_leaderboard(cfg: LeaderboardConfig, battles: Battles, other: pd.DataFrame | None = None) -> Leaderboard:
    """Fit the ratings (BT, style control when wanted, online Elo) and compare with ``other`` when given."""
    use_style = _use_style(cfg, battles)
    timing: dict[str, float] = {}
    fit_args = dict(rounds=cfg.rounds, seed=cfg.seed, anchor=cfg.anchor, anchor_rating=cfg.anchor_rating,
                    confidence=cfg.confidence)
    t = time.perf_counter()
    bt = fit_bt(battles, **fit_args)
    timing["bt_s"] = time.perf_counter() - t
    style = None
    if use_style:
        t = time.perf_counter()
        style = fit_style(battles, **fit_args)
        timing["style_s"] = time.perf_counter() - t
    t = time.perf_counter()
    elo = online_elo(battles, k=cfg.elo_k, initial=cfg.anchor_rating)
    timing["online_elo_s"] = time.perf_counter() - t
    table = build_table(battles, bt.table(), style, elo)
    comparison = None if other is None else {"with": cfg.compare, **compare_leaderboards(table, other)}
    return Leaderboard(battles, table, bt.rating, style, pairwise_table(battles, bt.rating), comparison, timing)


def _metrics(cfg: LeaderboardConfig, name: str, lb: Leaderboard) -> dict[str, Any]:
    battles, table, pairwise = lb.battles, lb.table, lb.pairwise
    gap = np.abs(pairwise["win_rate"] - pairwise["predicted"]).to_numpy()
    many = pairwise["battles"].to_numpy() >= 100
    return {
        "name": name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seed": cfg.seed,
        "mode": "human" if cfg.battles else "predicted", "source": battles.source, "run": cfg.run,
        "n_battles": len(battles), "n_models": battles.n_models, "dropped": battles.dropped,
        "flags": battles.flags, "both_bad": cfg.both_bad, "rounds": cfg.rounds, "confidence": cfg.confidence,
        "anchor": cfg.anchor or "mean", "anchor_rating": cfg.anchor_rating,
        "outcomes": {k: float(v) for k, v in zip(("a", "b", "tie"), battles.outcome.sum(axis=0), strict=True)},
        "top": table.head(10)[["model", "rating", "ci_low", "ci_high", "rank"]].to_dict(orient="records"),
        "ratings": dict(zip(table["model"], table["rating"], strict=True)),
        "style": None if lb.style is None else {
            "features": lb.style.coefficients(),
            "ratings": dict(zip(table["model"], table["style_rating"], strict=True))},
        "compare": lb.comparison,
        "in_sample_pairs": battles.in_sample,
        "pairwise_fit": {"pairs": len(pairwise) // 2,
                         "weighted_mean_abs_gap": float(np.average(gap, weights=pairwise["battles"])),
                         "max_abs_gap_100_battles": float(np.max(gap[many], initial=0.0))},
    }


def _write_artifacts(work: Path, lb: Leaderboard) -> list[str]:
    """``leaderboard.csv``, ``pairwise.csv`` and the two PNGs; returns the PNG names."""
    table = lb.table
    with atomic_path(work / "leaderboard.csv") as tmp:
        table.round(ROUNDING).to_csv(tmp, index=False)
    with atomic_path(work / "pairwise.csv") as tmp:
        lb.pairwise.round(4).to_csv(tmp, index=False)
    order = [lb.battles.models.index(m) for m in table["model"]]
    return [plot_ratings(table, work / "ratings.png", title=f"Leaderboard ({len(lb.battles):,} battles)",
                         other=_style_view(table) if lb.style is not None else None).name,
            plot_win_matrix(list(table["model"]), pairwise_win_prob(lb.ratings[order]), work / "win_matrix.png",
                            title="Predicted win rate (Bradley-Terry)").name]


def leaderboard_job(cfg: LeaderboardConfig) -> Path:
    """Fit the leaderboard of ``cfg`` and write its run directory; returns its path."""
    t0 = time.perf_counter()
    name = cfg.run_name("leaderboard")
    final = check_run_target(Path(cfg.out_dir) / name, force=cfg.overwrite)  # refuse before the work
    other = read_leaderboard(cfg.compare) if cfg.compare else None  # a bad --compare fails before the work too
    battles = load_battles(cfg)
    read_s = time.perf_counter() - t0
    logger.info("%d battles between %d models", len(battles), battles.n_models)
    lb = compute_leaderboard(cfg, battles, other)
    metrics = _metrics(cfg, name, lb)
    t = time.perf_counter()
    with new_run_dir(cfg.out_dir, name, force=cfg.overwrite) as work:
        plots = _write_artifacts(work, lb)
        save_config(cfg, work / "config.yaml")
        metrics["timing"] = {"read_s": read_s, **lb.timing, "write_s": time.perf_counter() - t,
                             "total_s": time.perf_counter() - t0}
        write_metrics(work, metrics, kind=KIND)
        atomic_write_text(work / "report.md", render_leaderboard_report(metrics, lb.table, plots))
    logger.info("leaderboard written to %s (%.1f s)", final, metrics["timing"]["total_s"])
    return final
