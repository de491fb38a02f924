"""``report.md`` of a leaderboard run: the ranking, style control side by side, the comparison, the plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from prefpred.report import _num, _table, plots_section

CAPTIONS = {"ratings.png": "Ratings with bootstrap intervals",
            "win_matrix.png": "Predicted probability that the row model beats the column model"}


def _r(v: float) -> str:
    return f"{v:.1f}"


def _ranking(table: pd.DataFrame) -> list[str]:
    rows = [[str(int(r["rank"])), f"`{r['model']}`", _r(r["rating"]), f"{_r(r['ci_low'])} – {_r(r['ci_high'])}",
             f"{int(r['battles']):,}", f"{r['win_rate']:.3f}", _r(r["online_elo"]), r["flag"] or ""]
            for _, r in table.iterrows()]
    return [_table(["rank", "model", "rating", "interval", "battles", "win rate", "online Elo", "flag"], rows), ""]


def _style(metrics: Mapping[str, Any], table: pd.DataFrame) -> list[str]:
    lines = ["## Style control", "",
             "Ratings fitted jointly with normalised style differences (A minus B over A plus B, divided by its "
             "RMS). A positive coefficient means voters favour that style regardless of the model.", ""]
    feats = metrics["style"]["features"]
    lines += [_table(["feature", "coef (log-odds per RMS unit)", "interval", "Elo per unit"],
                     [[f["feature"], f"{f['coef']:+.3f}", f"{f['ci_low']:+.3f} – {f['ci_high']:+.3f}",
                       f"{f['elo_per_unit']:+.1f}"] for f in feats]), ""]
    t = table.sort_values("style_rating", ascending=False)
    rows = [[f"`{r['model']}`", str(int(r["rank"])), _r(r["rating"]), str(int(r["style_rank"])),
             _r(r["style_rating"]), f"{_r(r['style_ci_low'])} – {_r(r['style_ci_high'])}",
             f"{int(r['rank_change']):+d}"] for _, r in t.iterrows()]
    lines += ["Both leaderboards (rank change > 0: the model moves up once style is controlled):", "",
              _table(["model", "rank", "rating", "style rank", "style rating", "style interval", "rank change"],
                     rows), ""]
    return lines


def _compare(comp: Mapping[str, Any]) -> list[str]:
    lines = ["## Comparison", "", f"With `{comp['with']}`: {comp['n_common']} common model(s); Spearman "
             f"{_num(comp['spearman'], 3)}, Kendall {_num(comp['kendall'], 3)}, mean |rating difference| "
             f"{_num(comp['mean_abs_diff'], 1)} (both re-centred on the common models).", ""]
    if comp["models"]:
        lines += [_table(["model", "rating", "other rating", "difference", "rank", "other rank"],
                         [[f"`{m['model']}`", _r(m["rating"]), _r(m["rating_other"]), f"{m['diff']:+.1f}",
                           str(m["rank"]), str(m["rank_other"])] for m in comp["models"]]), ""]
    for key, label in (("only_here", "only here"), ("only_other", "only in the other")):
        if comp[key]:
            lines += [f"Models {label}: {', '.join(f'`{m}`' for m in comp[key])}", ""]
    return lines


def render_leaderboard_report(metrics: Mapping[str, Any], table: pd.DataFrame, plots: Sequence[str] = ()) -> str:
    """Markdown of a leaderboard run from its metrics and its table (``leaderboard.csv`` content)."""
    m = metrics
    what = "human votes" if m["mode"] == "human" else f"predicted by run `{m['run']}`"
    anchor = "mean" if m["anchor"] == "mean" else f"`{m['anchor']}`"
    lines = [f"# prefpred leaderboard `{m['name']}`", "",
             f"Created {m['created']} · {m['n_battles']:,} battles between {m['n_models']} models from "
             f"`{m['source']}` ({what}) · seed {m['seed']} · total time {_num(m['timing'].get('total_s'), 1)} s", "",
             f"Bradley-Terry ratings on the Elo scale (400 points = 10:1 odds), {anchor} at "
             f"{m['anchor_rating']:g}; ties count half a win each, `both_bad` votes: {m['both_bad']}. "
             f"Intervals: {int(round(100 * m['confidence']))}% bootstrap percentiles over {m['rounds']} rounds of "
             "resampled battles. Rank = 1 + the number of models whose lower bound is above this model's upper "
             "bound, so models whose intervals overlap share ranks. Online Elo (order-dependent) and raw win "
             "rates are shown for comparison only.", ""]
    if m["dropped"]:
        lines += ["Rows left out: " + ", ".join(f"{r} {n:,}" for r, n in m["dropped"].items()), ""]
    if m.get("in_sample_pairs"):
        lines += [f"**In-sample:** {m['in_sample_pairs']:,} of the judged pairs are in the run's own data (trained or "
                  "validated on): judge held-out pairs for an honest comparison with human votes.", ""]
    if m["flags"]:
        lines += [f"Flagged: {len(m['flags'])} model(s) (see the flag column): too few battles for a reliable rating or interval.", ""]
    lines += ["## Ranking", "", *_ranking(table)]
    fit = m.get("pairwise_fit") or {}
    if fit:
        lines += [f"How well one strength per model explains the {fit['pairs']:,} pairs of models that met "
                  f"(`pairwise.csv`): battle-weighted mean |observed − predicted win rate| "
                  f"{fit['weighted_mean_abs_gap']:.3f}; largest gap over pairs with ≥ 100 battles "
                  f"{fit['max_abs_gap_100_battles']:.3f}.", ""]
    if m.get("style"):
        lines += _style(m, table)
    if m.get("compare"):
        lines += _compare(m["compare"])
    lines += plots_section(plots, CAPTIONS)
    lines += ["## Limits", "",
              "- Bradley-Terry assumes one strength per model, the same on every prompt and against every opponent.",
              "- Intervals are per model, not simultaneous; rare models (flagged) have wide, unstable intervals.",
              "- A predicted leaderboard inherits the preference model's biases (e.g. for longer answers).", ""]
    return "\n".join(lines)
