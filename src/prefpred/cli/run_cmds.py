"""prefpred CLI: ``run`` (train + evaluate into a run directory), ``split``, ``predict`` and ``evaluate``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from prefpred.cli.app import app
from prefpred.report.fmt import fmt

console = Console()
EVAL_PLOTS = ("reliability.png", "confusion.png", "errors_by_segment.png")
SUITE_PLOT = "suite.png"



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
    overrides: list[str] = typer.Option([], "--set", help="Any config key: --set model.num_leaves=16 "
                                        "(repeatable)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run directory of the same name."),
) -> None:
    """Cross-validate the CPU model, score OOF and holdout, refit, and write a run directory.

    Defaults shown are prefpred's own; a --config file's values replace them, and options and --set replace both.
    """
    options = dict(locals())  # the option values, before any other local exists
    from prefpred.config import load_config, option_overrides, parse_set
    from prefpred.pipeline import RunConfig, run_job

    values = {**option_overrides(RUN_OPTION_KEYS, options, force), **parse_set(overrides)}
    cfg = load_config(RunConfig, config, values)
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
    from prefpred.utils import check_output

    check_output(out, force=force, inputs=[data])  # never the data file itself, even with --force
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
    from prefpred.utils import check_output

    check_output(out, force=force, inputs=[data])  # never the data file itself, even with --force
    predictor = load_predictor(run, calibrated=not raw)  # refuses incomplete or damaged runs in one line
    pairs = load_pairs(data, skip_invalid=skip_invalid)
    proba = predictor.predict_proba(pairs)
    write_submission([p.id for p in pairs], proba, out, force=force)
    console.print(f"{len(pairs)} predictions -> {out}")


@app.command("evaluate")
def evaluate_cmd(
    pred: Path | None = typer.Option(None, "--pred", help="Predictions: Kaggle submission or a run's oof/holdout CSV."),
    data: str | None = typer.Option(None, "--data", help="Labelled pairs (default for a run's own prediction file: "
                                                         "the run's data file)."),
    run: Path | None = typer.Option(None, "--run", help="Run directory: predict --data (or the --suite sets) with it."),
    suite: list[str] | None = typer.Option(None, "--suite", help="With --run: 'default' (every labelled set under "
                                           "../shared/data), a suite YAML file or a data file; repeatable."),
    out: Path | None = typer.Option(None, "--out", help="Write the metrics as JSON here."),
    plots: Path | None = typer.Option(None, "--plots", help="Folder for the plots (reliability, confusion, "
                                                            "errors_by_segment; suite.png with --suite)."),
    raw: bool = typer.Option(False, "--raw", help="With --run: skip the run's calibration."),
    swap: bool = typer.Option(True, "--swap/--no-swap", help="With --run: also score the A/B-swapped pairs "
                                                             "(swap consistency; twice the work)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file or plots."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Drop invalid rows instead of failing."),
) -> None:
    """Score predictions against labelled pairs: log loss, accuracy, Brier, ECE and a per-segment table (turns,
    length, length difference, tie, prompt category, script, models), plus the most confident errors.

    --pred FILE [--data D] scores the pairs the file covers (and says how many of the data's pairs that is);
    --run DIR --data D predicts them first; --run DIR --suite default scores the run on its own holdout and on
    every out-of-domain set, one row each (n, non-tie accuracy with a 95% CI, log loss where ties exist, swap
    consistency).
    """
    from prefpred.types import UserError

    if out is not None:
        from prefpred.utils import check_output

        check_output(out, force=force, inputs=[pred, data])
    if plots is not None and not force:  # checked before any work (--plots may name a run directory)
        for name in (SUITE_PLOT,) if suite else EVAL_PLOTS:
            if (plots / name).exists():
                raise FileExistsError(f"{plots / name} exists (use --force to overwrite)")
    if suite:
        if run is None or pred is not None or data is not None:
            raise UserError("--suite needs --run (and no --pred or --data)")
        result = _evaluate_suite(run, suite, raw=raw, swap=swap, plots=plots)
    else:
        result = _evaluate_one(pred, data, run, raw=raw, swap=swap, plots=plots, skip_invalid=skip_invalid)
    if out is not None:
        from prefpred.utils import atomic_write_text, json_safe

        atomic_write_text(out, json.dumps(json_safe(result), indent=2) + "\n", force=force)
        console.print(f"metrics -> {out}")


def _evaluate_one(pred: Path | None, data: str | None, run: Path | None, *, raw: bool, swap: bool,
                  plots: Path | None, skip_invalid: bool) -> dict[str, Any]:
    from prefpred.data import load_pairs
    from prefpred.evaluation import match_arrays, match_predictions, run_data_path, score
    from prefpred.types import UserError

    if pred is None and run is None:
        raise UserError("give --pred FILE (with --data, unless it is a run's own prediction file) or --run DIR")
    if pred is not None and run is not None:
        raise UserError("give either --pred or --run, not both")
    if run is not None and data is None:
        raise UserError("--run needs --data (pairs to predict and score) or --suite")
    data = data or run_data_path(pred)
    if data is None:
        raise UserError("--data is needed (the prediction file is not inside a run directory that names its data)")
    pairs = load_pairs(data, skip_invalid=skip_invalid, require_text=run is not None)  # --pred: ids and labels
    swapped = None
    if pred is not None:
        m = match_predictions(pred, pairs)
        title = str(pred)
    else:
        from prefpred.runs import load_predictor

        predictor = load_predictor(run, calibrated=not raw)
        labelled = [p for p in pairs if p.label is not None]
        proba = predictor.predict_proba(labelled)
        m = match_arrays([p.id for p in labelled], proba, pairs, where=str(data))
        if swap:
            swapped = predictor.predict_proba([p.swapped() for p in m.pairs])
        title = f"{run} on {data}"
    metrics = score(m.pairs, m.proba, swapped=swapped, coverage=m.coverage, on=title)
    if run is not None:
        _flag_in_sample(metrics, run, m.pairs)
    console.print(escape(title), style="bold", soft_wrap=True)  # a path on one line, not wrapped over a narrow table
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("n", "log_loss", "accuracy", "brier", "ece"):
        table.add_row(key, fmt(metrics.get(key)))
    if metrics.get("swap_consistency"):
        table.add_row("swap consistency", fmt(metrics["swap_consistency"]["consistency"]))
    console.print(table)
    console.print(m.coverage.describe())
    console.print(_segments_table(metrics["segments"]))
    if metrics.get("confident_errors"):
        console.print(_errors_table(metrics["confident_errors"][:5]))
    if plots is not None:
        from prefpred.plots import plot_confusion, plot_reliability, plot_segment_log_loss

        plots.mkdir(parents=True, exist_ok=True)
        reliability, confusion, segments = (plots / name for name in EVAL_PLOTS)
        plot_reliability(m.y, {Path(title).stem if pred is not None else "predictions": m.proba}, reliability)
        plot_confusion(m.y, m.proba, confusion)
        plot_segment_log_loss(metrics["segments"], segments)
        console.print(f"plots -> {plots}")
    return metrics


def _flag_in_sample(metrics: dict[str, Any], run: Path, pairs: Sequence[Any]) -> None:
    """Count (in ``metrics``) and say in one line how many scored pairs the run itself trained or validated on."""
    from prefpred.runs import run_overlap

    n = run_overlap(run, pairs)
    metrics["in_sample_pairs"] = n
    if n:
        console.print(f"[yellow]{n:,} of the {len(pairs):,} scored pairs are in {run}'s own data (trained or "
                      "validated on): these numbers are optimistic; its holdout.csv is the honest score[/yellow]",
                      soft_wrap=True)


def _segments_table(segments: list[dict[str, Any]]) -> Table:
    table = Table(title="per segment")
    for col in ("segment", "value", "n", "log loss", "accuracy"):
        table.add_column(col, justify="left" if col in ("segment", "value") else "right")
    for s in segments:
        table.add_row(str(s["segment"]), str(s["value"]), fmt(s["n"]), fmt(s["log_loss"]), fmt(s["accuracy"], 3))
    from prefpred.analysis import MIN_SEGMENT

    table.caption = f"segments under {MIN_SEGMENT} pairs are left out, so a segment's rows may not add up to n"
    return table


def _errors_table(errors: list[dict[str, Any]]) -> Table:
    """The most confidently wrong pairs (the whole list is in --out and in run reports)."""
    from prefpred.report.fmt import flexible_width

    rows = [(escape(str(e["id"])), escape(str(e["prompt"])), f"{e['predicted']} {e['p_predicted']:.2f}",
             f"{e['true']} {e['p_true']:.2f}", f"{e['len_a']:,}", f"{e['len_b']:,}") for e in errors]
    cols = ("id", "prompt", "predicted", "true", "len A", "len B")
    whole = [max(len(col), *(len(r[i]) for r in rows)) for i, col in enumerate(cols)]
    room = flexible_width(whole, 1, console.width)  # only the prompt is cut to fit
    table = Table(title="most confidently wrong")
    for i, col in enumerate(cols):
        width = max(8, min(44, room)) if col == "prompt" else whole[i]
        table.add_column(col, justify="right" if col.startswith("len") else "left", no_wrap=True,
                         overflow="ellipsis", min_width=width, max_width=width)
    for r in rows:
        table.add_row(*r)
    return table


def _evaluate_suite(run: Path, specs: list[str], *, raw: bool, swap: bool, plots: Path | None) -> dict[str, Any]:
    from prefpred.runs import load_predictor
    from prefpred.suite import resolve_suites, run_holdout, run_suite

    predictor = load_predictor(run, calibrated=not raw)
    entries = resolve_suites(specs)
    holdout = run_holdout(run)
    from prefpred.runs import count_in, training_keys

    trained = training_keys(run)  # read once, counted per set
    rows, notes = run_suite(predictor, entries, first=holdout, swap=swap,
                            in_sample=lambda pairs: count_in(trained, pairs))
    own = [f"{r['dataset']} {r['in_sample']:,} of {r['n']:,}" for r in rows if r.get("in_sample")]
    if own:
        notes.insert(0, "[yellow]in the run's own training data (optimistic rows): " + ", ".join(own) + "[/yellow]")
    if holdout is None:
        notes.insert(0, "run-holdout: skipped (the run has no holdout rows, or its data file is gone)")
    table = Table(title=f"{run}: agreement with human labels")
    for col in ("dataset", "n", "non-tie acc. [95% CI]", "log loss", "swap cons."):
        table.add_column(col, justify="left" if col == "dataset" else "right", no_wrap=True)
    for r in rows:
        ci = f"{fmt(r['nontie_accuracy'], 3)} [{fmt(r['ci_low'], 3)}, {fmt(r['ci_high'], 3)}]"
        table.add_row(r["dataset"], fmt(r["n"]), ci, fmt(r["log_loss"]), fmt(r["swap_consistency"], 3))
    console.print(table)
    for note in notes:
        console.print(f"[dim]{note}[/dim]")
    if plots is not None and rows:
        from prefpred.plots import plot_suite

        plots.mkdir(parents=True, exist_ok=True)
        plot_suite(rows, plots / SUITE_PLOT, title=f"{run.name}: agreement with human labels")
        console.print(f"plot -> {plots / SUITE_PLOT}")
    return {"run": str(run), "suite": rows, "notes": notes}
