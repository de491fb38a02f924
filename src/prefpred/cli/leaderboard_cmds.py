"""prefpred CLI: ``prefpred leaderboard``: Bradley-Terry ratings with intervals from human or predicted battles."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from prefpred.cli.app import app

console = Console()
TOP_SHOWN = 15


@app.command("leaderboard")
def leaderboard_cmd(
    battles: str | None = typer.Option(None, "--battles", help="Human battles: a votes table (id, model_a, "
                                       "model_b, winner) or labelled pairs with model names (e.g. Kaggle "
                                       "train.csv)."),
    run: Path | None = typer.Option(None, "--run", help="Trained run that judges --data (predicted battles)."),
    data: str | None = typer.Option(None, "--data", help="Pairs with model_a/model_b for --run to judge."),
    out: str | None = typer.Option(None, "--out", help="Folder of run directories (default: runs)."),
    name: str | None = typer.Option(None, "--name", help="Run name (default: leaderboard-<timestamp>)."),
    config: Path | None = typer.Option(None, "--config", help="YAML leaderboard config."),
    rounds: int | None = typer.Option(None, "--rounds", help="Bootstrap rounds (default: 100; 0: none)."),
    seed: int | None = typer.Option(None, "--seed", help="Bootstrap seed (default: 42)."),
    both_bad: str | None = typer.Option(None, "--both-bad", help="both_bad votes: tie (default) or drop."),
    min_battles: int | None = typer.Option(None, "--min-battles", help="Flag models with fewer battles "
                                           "(default: 50)."),
    rare: str | None = typer.Option(None, "--rare", help="Models under --min-battles: keep (flagged, default), "
                                    "drop or error."),
    anchor: str | None = typer.Option(None, "--anchor", help="Model pinned at --anchor-rating (default: the "
                                      "mean is)."),
    anchor_rating: float | None = typer.Option(None, "--anchor-rating", help="Rating of the anchor or of the "
                                               "mean (default: 1000)."),
    style: str | None = typer.Option(None, "--style", help="Style control: auto (when battles carry text or "
                                     "style columns), on or off."),
    compare: str | None = typer.Option(None, "--compare", help="Another leaderboard.csv (or its run directory) "
                                       "to compare with."),
    skip_invalid: bool | None = typer.Option(None, "--skip-invalid/--no-skip-invalid",
                                             help="Drop invalid rows (counted) instead of failing."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run directory of the same name."),
) -> None:
    """Rank models from battles: Bradley-Terry ratings, bootstrap intervals, style control, comparisons."""
    from prefpred.config import load_config
    from prefpred.leaderboard.job import LeaderboardConfig, leaderboard_job

    overrides = {"battles": battles, "run": None if run is None else str(run), "data.path": data,
                 "out_dir": out, "name": name, "rounds": rounds, "seed": seed, "both_bad": both_bad,
                 "min_battles": min_battles, "rare": rare, "anchor": anchor, "anchor_rating": anchor_rating,
                 "style": style, "compare": compare, "data.skip_invalid": skip_invalid,
                 "overwrite": True if force else None}
    cfg = load_config(LeaderboardConfig, config, overrides)
    run_dir = leaderboard_job(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    console.print(_top_table(run_dir, metrics))
    comp = metrics.get("compare")
    if comp and comp.get("spearman") is not None:
        console.print(f"vs {comp['with']}: {comp['n_common']} common models, Spearman {comp['spearman']:.3f}, "
                      f"Kendall {comp['kendall']:.3f}, mean |diff| {comp['mean_abs_diff']:.1f}")
    console.print(f"run directory: [bold]{run_dir}[/bold] (report: {run_dir / 'report.md'}, "
                  f"{metrics['timing']['total_s']:.1f} s)")


def _top_table(run_dir: Path, metrics: dict) -> Table:
    import pandas as pd

    table = pd.read_csv(run_dir / "leaderboard.csv", keep_default_na=False)
    out = Table(title=f"leaderboard {metrics['name']}: {metrics['n_battles']:,} battles, "
                      f"{metrics['n_models']} models", show_edge=False)
    style = "style_rank" in table.columns
    header = ("rank", "model", "rating", "95% interval", "battles", "win rate", *(("style",) if style else ()))
    rows = [(str(r["rank"]), str(r["model"]), f"{r['rating']:.1f}", f"{r['ci_low']:.1f} – {r['ci_high']:.1f}",
             f"{int(r['battles']):,}", f"{r['win_rate']:.3f}", *((str(r["style_rank"]),) if style else ()))
            for _, r in table.head(TOP_SHOWN).iterrows()]
    from prefpred.report.fmt import cut_middle, flexible_width

    widths = [max([len(col), *(len(row[i]) for row in rows)]) for i, col in enumerate(header)]
    m = header.index("model")  # the one column that gives way on a narrow terminal, cut in the middle so that
    room = max(8, flexible_width(widths, m, console.width, edges=False))  # names stay apart
    for i, col in enumerate(header):
        if i == m:
            out.add_column(col, justify="left", no_wrap=True, min_width=min(widths[m], room))
        else:  # numbers are never cut: their column is as wide as its widest cell
            out.add_column(col, justify="right", no_wrap=True, min_width=widths[i])
    for row in rows:
        out.add_row(*[cut_middle(c, room) if i == m else c for i, c in enumerate(row)])
    notes = [f"top {TOP_SHOWN} of {len(table)}; all in leaderboard.csv"] if len(table) > TOP_SHOWN else []
    if style:
        notes.append("style: rank under style control")
    out.caption = "; ".join(notes) or None
    return out
