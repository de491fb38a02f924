"""``prefpred ensemble RUN_DIR... --out DIR``: blend finished runs into an ensemble run directory."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from prefpred.cli.app import app
from prefpred.report import fmt

console = Console()


@app.command("ensemble")
def ensemble_cmd(
    runs: list[Path] = typer.Argument(..., help="Member run directories (same data, seed and split config)."),
    out: str = typer.Option("runs", "--out", help="Folder of run directories."),
    name: str | None = typer.Option(None, "--name", help="Run name (default: ensemble-<timestamp>)."),
    data: str | None = typer.Option(None, "--data",
                                    help="Pairs of the members' rows, for the stacker's pair features "
                                         "(default: the first member's data file)."),
    pair_features: bool = typer.Option(True, "--pair-features/--no-pair-features",
                                       help="Let the stacker see cheap pair features (length ratio, turns)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run directory of the same name."),
) -> None:
    """Blend runs: simplex weights (probability or logit space) or stacking, chosen by nested validation over the
    members' folds, calibrated when that validates better. Writes a run that `predict`, `evaluate` and `serve` take."""
    from prefpred.ensemble import EnsembleConfig, build_ensemble

    cfg = EnsembleConfig(members=[str(r) for r in runs], name=name, out_dir=out, data=data,
                         pair_features=pair_features, overwrite=force)
    run_dir = build_ensemble(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    table = Table(title=f"prefpred ensemble {metrics['name']} ({metrics['method']})")
    for col in ("run", "weight", "OOF log loss", "holdout log loss"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for member, r in metrics["members"].items():
        table.add_row(member, fmt(metrics["member_weights"].get(member), 3), fmt(r["oof"]["log_loss"]),
                      fmt((r.get("holdout") or {}).get("log_loss")))
    hold = metrics.get("holdout") or {}
    table.add_row("ensemble (nested OOF)", "", fmt(metrics["cv"]["oof"]["log_loss"]),
                  fmt((hold.get("calibrated") or hold.get("raw") or {}).get("log_loss")), style="bold")
    console.print(table)
    if metrics.get("fallback"):
        fb = metrics["fallback"]
        console.print(f"[yellow]blending did not pay: scored by nested validation it reached {fmt(fb['nested_log_loss'])}"
                      f", worse than {fb['best_member']} alone ({fmt(fb['best_member_log_loss'])}); the run is that "
                      f"member's uncalibrated predictions (the candidate chosen on all rows was {fb['instead_of']})"
                      "[/yellow]")
    else:
        worse = [str(f["fold"]) for f in metrics["cv"]["per_fold"] if not f["not_worse"]]
        console.print(f"ensemble not worse than its best member in {len(metrics['cv']['per_fold']) - len(worse)} of "
                      f"{len(metrics['cv']['per_fold'])} folds"
                      + (f" (worse in fold {', '.join(worse)})" if worse else ""))
    console.print(f"run directory: [bold]{run_dir}[/bold] (report: {run_dir / 'report.md'})")
