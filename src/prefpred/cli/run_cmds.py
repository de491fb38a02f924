"""prefpred CLI: ``run`` (train + evaluate into a run directory), ``split``, ``predict`` and ``evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from prefpred.cli.app import app
from prefpred.report.fmt import fmt

console = Console()



def _results_table(metrics: dict[str, Any]) -> Table:
    """Headline numbers; the OOF row shows the spread (std) across folds. Brier is in metrics.json."""
    table = Table(title=f"prefpred run {metrics.get('name', '')}")
    for col in ("predictions", "log loss", "accuracy", "ECE", "n"):
        table.add_column(col, justify="left" if col == "predictions" else "right", no_wrap=True)
    cv = metrics.get("cv") or {}
    summ = cv.get("summary") or {}

    def row(label: str, m: dict[str, Any] | None, style: str | None = None, spread: bool = False) -> None:
        if not m:
            return
        ll, acc = fmt(m.get("log_loss")), fmt(m.get("accuracy"), 3)
        if spread and summ.get("log_loss") and summ.get("accuracy"):
            ll += f" ± {summ['log_loss']['std']:.3f}"
            acc += f" ± {summ['accuracy']['std']:.2f}"
        table.add_row(label, ll, acc, fmt(m.get("ece"), 3), fmt(m.get("n")), style=style)

    prior = metrics.get("prior") or {}
    hold = metrics.get("holdout") or {}
    row("prior, OOF", prior.get("oof"), "dim")
    row(f"model, OOF ({cv.get('n_folds')} folds)", cv.get("oof"), spread=True)
    row("prior, holdout", prior.get("holdout"), "dim")
    row("model, holdout", hold.get("raw"), "bold")
    row("model, holdout (cal.)", hold.get("calibrated"), "bold")
    table.caption = "± = std across folds; OOF = out-of-fold"
    return table


RUN_OPTION_KEYS = {
    "data": "data.path", "out": "out_dir", "name": "name", "embeddings": "model.embeddings", "seed": "seed",
    "folds": "split.n_folds", "holdout": "split.holdout_fraction", "limit": "data.limit",
    "extra_data": "data.extra_path", "extra_weight": "data.extra_weight", "skip_invalid": "data.skip_invalid",
    "calibrate": "calibrate",
}
"""``prefpred run`` option -> the ``RunConfig`` key it sets (the defaults its help names are tested against it)."""


@app.command("run")
def run_cmd(
    data: str | None = typer.Option(None, "--data", help="Training data file or folder (default: config or hub)."),
    out: str | None = typer.Option(None, "--out", help="Folder of run directories (default: runs)."),
    name: str | None = typer.Option(None, "--name", help="Run name (default: run-<timestamp>)."),
    config: Path | None = typer.Option(None, "--config", help="YAML run config (see configs/default.yaml)."),
    embeddings: bool | None = typer.Option(None, "--embeddings/--no-embeddings",
                                           help="Add MiniLM sentence-embedding features to the CPU model."),
    seed: int | None = typer.Option(None, "--seed", help="One seed for splits, training and RNGs (default: 42)."),
    folds: int | None = typer.Option(None, "--folds", help="Cross-validation folds (default: 5)."),
    holdout: float | None = typer.Option(None, "--holdout", help="Holdout fraction, 0 for none (default: 0.2)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Use only the first N rows."),
    extra_data: str | None = typer.Option(None, "--extra-data",
                                          help="Extra pairs (e.g. teacher-labelled JSONL) added to training only."),
    extra_weight: float | None = typer.Option(None, "--extra-weight", help="Sample weight of the extra pairs (default: 1)."),
    skip_invalid: bool | None = typer.Option(None, "--skip-invalid/--no-skip-invalid",
                                             help="Drop invalid rows (reported) instead of failing."),
    calibrate: bool | None = typer.Option(None, "--calibrate/--no-calibrate",
                                          help="Calibrate on out-of-fold predictions (default: on)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run directory of the same name."),
) -> None:
    """Cross-validate the CPU model, score OOF and holdout, refit, and write a run directory."""
    options = dict(locals())  # the option values, before any other local exists
    from prefpred.config import load_config, option_overrides
    from prefpred.pipeline import RunConfig, run_job

    cfg = load_config(RunConfig, config, option_overrides(RUN_OPTION_KEYS, options, force))
    run_dir = run_job(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    console.print(_results_table(metrics))
    swap = metrics.get("swap_consistency") or {}
    if swap.get("consistency") is not None:
        console.print(f"swap consistency ({swap.get('on')}): {100 * swap['consistency']:.1f}%")
    console.print(f"run directory: [bold]{run_dir}[/bold] (report: {run_dir / 'report.md'}, "
                  f"{metrics.get('timing', {}).get('total_s', 0):.1f} s)")


@app.command("split")
def split_cmd(
    data: str = typer.Option(..., "--data", help="Data file or folder."),
    out: Path = typer.Option(..., "--out", help="Where to write the id -> fold CSV."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds."),
    holdout: float = typer.Option(0.2, "--holdout", help="Holdout fraction (fold -1), 0 for none."),
    seed: int = typer.Option(42, "--seed", help="Random seed."),
    group_by: str = typer.Option("prompt", "--group-by", help="prompt (no prompt in two folds) or none."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Drop invalid rows instead of failing."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Write a leak-free split table (id,fold,group; fold -1 is the holdout) grouped by prompt."""
    from prefpred.data import load_pairs
    from prefpred.splits import HOLDOUT_FOLD, SplitConfig, make_splits, save_splits

    if out.exists() and not force:
        raise FileExistsError(f"{out} exists (use --force to overwrite)")
    pairs = load_pairs(data, skip_invalid=skip_invalid, seed=seed)
    table = make_splits(pairs, SplitConfig(n_folds=folds, holdout_fraction=holdout, group_by=group_by), seed)
    save_splits(table, out)
    counts = table["fold"].value_counts().sort_index()
    parts = [f"{'holdout' if f == HOLDOUT_FOLD else f'fold {f}'}: {n}" for f, n in counts.items()]
    console.print(f"{len(table)} rows, {table['group'].nunique()} groups -> {out} ({', '.join(parts)})")


@app.command("predict")
def predict_cmd(
    run: Path = typer.Option(..., "--run", help="Run directory written by `prefpred run`."),
    data: str = typer.Option(..., "--data", help="Pairs to score (e.g. Kaggle test.csv; labels not needed)."),
    out: Path = typer.Option(..., "--out", help="Submission CSV to write."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
    raw: bool = typer.Option(False, "--raw", help="Skip the run's calibration."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Drop invalid rows instead of failing."),
) -> None:
    """Write a Kaggle submission (id,winner_model_a,winner_model_b,winner_tie) from a run's model."""
    from prefpred.data import load_pairs
    from prefpred.runs import load_predictor
    from prefpred.submission import write_submission

    if out.exists() and not force:
        raise FileExistsError(f"{out} exists (use --force to overwrite)")
    predictor = load_predictor(run, calibrated=not raw)  # refuses incomplete or damaged runs in one line
    pairs = load_pairs(data, skip_invalid=skip_invalid)
    proba = predictor.predict_proba(pairs)
    write_submission([p.id for p in pairs], proba, out, force=force)
    console.print(f"{len(pairs)} predictions -> {out}")


@app.command("evaluate")
def evaluate_cmd(
    pred: Path = typer.Option(..., "--pred", help="Predictions: Kaggle submission or oof/holdout CSV."),
    data: str = typer.Option(..., "--data", help="Labelled pairs the predictions are for."),
    out: Path | None = typer.Option(None, "--out", help="Write the metrics as JSON here."),
    plots: Path | None = typer.Option(None, "--plots", help="Folder for reliability.png and confusion.png."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Drop invalid rows instead of failing."),
) -> None:
    """Score a prediction file against labelled data (log loss, accuracy, Brier, ECE, segments)."""
    from prefpred.data import load_pairs
    from prefpred.pipeline import align_predictions, evaluate_predictions
    from prefpred.utils import atomic_write_text

    if out is not None and out.exists() and not force:
        raise FileExistsError(f"{out} exists (use --force to overwrite)")
    pairs = load_pairs(data, skip_invalid=skip_invalid)
    metrics = evaluate_predictions(pred, pairs)
    table = Table(title=f"{pred}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("n", "log_loss", "accuracy", "brier", "ece"):
        table.add_row(key, fmt(metrics.get(key)))
    console.print(table)
    if out is not None:
        atomic_write_text(out, json.dumps(metrics, indent=2) + "\n", force=force)
        console.print(f"metrics -> {out}")
    if plots is not None:
        from prefpred.plots import plot_confusion, plot_reliability

        y, proba = align_predictions(pred, pairs)
        plots.mkdir(parents=True, exist_ok=True)
        plot_reliability(y, {pred.stem: proba}, plots / "reliability.png")
        plot_confusion(y, proba, plots / "confusion.png")
        console.print(f"plots -> {plots}")
