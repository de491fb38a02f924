"""Benchmark of the leaderboard fits on the Arena 140k votes: speed, reproducibility, the top of the ranking.

Prints, on ``arena-140k-votes/votes.csv`` (self-battles dropped, ``both_bad`` as a tie):

* wall and CPU time of reading the votes, one Bradley-Terry fit, and fit + ``--rounds`` bootstrap rounds
  (target: under 30 s on 2 cores);
* whether two fits with the same seed give identical ratings and intervals (and another seed different ones);
* the top ``--top`` models with intervals and ranks, next to online Elo and win rate;
* how far the virtual-tie prior moves ratings (max |difference| to a fit without it, on models with >= 50
  battles), and the agreement (Spearman) of online Elo with BT;
* with ``--style-data`` (Arena rows with text, e.g. ``arena/train.csv``), the time of style control with
  bootstrap and its coefficients.

Usage::

    python bench/bench_leaderboard.py [--votes ../shared/data/arena-140k-votes/votes.csv] [--rounds 100]
        [--style-data ../shared/data/arena/train.csv] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from prefpred.leaderboard.battles import apply_min_battles, check_connected, read_battles
from prefpred.leaderboard.ratings import (
    bt_log_strengths,
    fit_bt,
    met_matrix,
    online_elo,
    to_elo,
    win_matrix,
    win_rates,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_VOTES = SHARED / "arena-140k-votes" / "votes.csv"


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--votes", type=Path, default=DEFAULT_VOTES)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--style-data", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.votes.is_file():
        print(f"votes file not found: {args.votes}", file=sys.stderr)
        return 2
    out: dict = {"votes": str(args.votes), "rounds": args.rounds}

    with Timer() as t_read:
        battles = read_battles(args.votes, skip_invalid=True)
        check_connected(battles)
    print(f"read {len(battles):,} battles, {battles.n_models} models (left out: {battles.dropped}) "
          f"in {t_read.wall:.2f} s wall / {t_read.cpu:.2f} s CPU")
    with Timer() as t_one:
        fit_bt(battles, rounds=0)
    with Timer() as t_boot:
        fit = fit_bt(battles, rounds=args.rounds, seed=args.seed)
    print(f"one BT fit: {t_one.wall:.3f} s wall / {t_one.cpu:.3f} s CPU; fit + {args.rounds} bootstrap rounds: "
          f"{t_boot.wall:.2f} s wall / {t_boot.cpu:.2f} s CPU (target < 30 s)")
    out["timing"] = {"read_wall_s": t_read.wall, "read_cpu_s": t_read.cpu, "fit_wall_s": t_one.wall,
                     "fit_cpu_s": t_one.cpu, "fit_bootstrap_wall_s": t_boot.wall, "fit_bootstrap_cpu_s": t_boot.cpu}

    again = fit_bt(battles, rounds=args.rounds, seed=args.seed)
    other = fit_bt(battles, rounds=args.rounds, seed=args.seed + 1)
    same = bool(np.array_equal(fit.rating, again.rating) and np.array_equal(fit.replicates, again.replicates))
    differs = not np.array_equal(fit.replicates, other.replicates)
    print(f"same seed -> identical ratings and intervals: {same}; another seed -> other intervals: {differs}")
    out["reproducible"], out["other_seed_differs"] = same, differs

    table = fit.table()
    rates = win_rates(battles)
    elo = online_elo(battles)
    table["win_rate"], table["battles"], table["online_elo"] = rates["win_rate"], rates["battles"], elo
    table = table.sort_values("rating", ascending=False).reset_index(drop=True)
    print(f"\ntop {args.top}:")
    print(f"{'rank':>4}  {'model':<42} {'rating':>7}  {'95% interval':>15}  {'battles':>7}  {'win rate':>8}  "
          f"{'online':>7}")
    for _, r in table.head(args.top).iterrows():
        print(f"{int(r['rank']):>4}  {r['model']:<42} {r['rating']:7.1f}  {r['ci_low']:7.1f}–{r['ci_high']:7.1f}"
              f"  {int(r['battles']):>7,}  {r['win_rate']:8.3f}  {r['online_elo']:7.1f}")
    out["top"] = table.head(args.top)[["model", "rating", "ci_low", "ci_high", "rank"]].to_dict(orient="records")

    wa, wb = battles.win_weights()
    wins = win_matrix(battles.a, battles.b, wa, wb, battles.n_models)
    with_prior = to_elo(bt_log_strengths(wins, met_matrix(battles)))
    without = to_elo(bt_log_strengths(wins, None, prior_ties=0.0))
    enough = battles.battle_counts() >= 50
    shift = float(np.abs((with_prior - without)[enough]).max())
    rho = float(spearmanr(fit.rating, elo).statistic)
    widths = table["ci_high"] - table["ci_low"]
    print(f"\nprior shift (models with >= 50 battles): max {shift:.3f} Elo; online Elo vs BT Spearman {rho:.3f}; "
          f"interval width median {widths.median():.1f}, max {widths.max():.1f}")
    out.update(prior_shift_max=shift, online_elo_spearman=rho, ci_width_median=float(widths.median()))

    if args.style_data:
        from prefpred.leaderboard.style import fit_style

        text_battles = apply_min_battles(read_battles(args.style_data, skip_invalid=True), 20, "drop")
        check_connected(text_battles)
        with Timer() as t_style:
            style = fit_style(text_battles, rounds=args.rounds, seed=args.seed)
        print(f"\nstyle control on {len(text_battles):,} text battles, {text_battles.n_models} models: "
              f"{t_style.wall:.2f} s wall / {t_style.cpu:.2f} s CPU with {args.rounds} rounds")
        for c in style.coefficients():
            print(f"  {c['feature']:<8} coef {c['coef']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] "
                  f"({c['elo_per_unit']:+.1f} Elo per RMS unit)")
        out["style"] = {"wall_s": t_style.wall, "cpu_s": t_style.cpu, "features": style.coefficients()}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
