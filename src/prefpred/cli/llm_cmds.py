"""prefpred CLI: LLM commands: ``prefpred train`` (fine-tuning into a run directory) and ``prefpred experiment``."""

from __future__ import annotations

import typer

from prefpred.cli.app import app

# ---------------------------------------------------------------------------------------------- train
TRAIN_OPTION_KEYS = {
    "model": "model.name_or_path", "data": "data.path", "out": "out_dir", "name": "name",
    "max_steps": "training.max_steps", "method": "model.method", "head": "model.head", "seed": "seed",
    "limit": "data.limit", "device": "model.device", "extra_data": "data.extra_path",
    "extra_weight": "data.extra_weight",
}
"""``prefpred train`` option -> the ``TrainConfig`` key it sets (its help's choices and defaults are tested)."""


@app.command("train")
def train_cmd(
    config: str = typer.Option(..., "--config", help="LLM YAML config (configs/qwen2.5-0.5b-label-token-qlora.yaml, "
                               "configs/tiny-cpu.yaml, ...)."),
    model: str | None = typer.Option(None, "--model", help="Base model: hub id, local folder, minilm, tiny:qwen2."),
    data: str | None = typer.Option(None, "--data", help="Labelled pairs (file or folder; default: config or hub)."),
    out: str | None = typer.Option(None, "--out", help="Folder of run directories (default: runs)."),
    name: str | None = typer.Option(None, "--name", help="Run name (default: llm-<timestamp>)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimizer steps (-1 = use epochs)."),
    method: str | None = typer.Option(None, "--method", help="lora, qlora or full."),
    head: str | None = typer.Option(None, "--head", help="label-token or classifier."),
    seed: int | None = typer.Option(None, "--seed", help="One seed for splits, training and RNGs."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Use only the first N rows."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, mps..."),
    extra_data: str | None = typer.Option(None, "--extra-data",
                                          help="Extra pairs (e.g. teacher-labelled JSONL) mixed into training only."),
    extra_weight: float | None = typer.Option(None, "--extra-weight", help="Sample weight of the extra pairs."),
    overrides: list[str] = typer.Option([], "--set", help="Any config key: --set training.learning_rate=1e-4 "
                                        "(repeatable)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing finished run directory."),
) -> None:
    """Fine-tune an LLM (LoRA / QLoRA / full; label-token or classifier head) into a run directory.

    An interrupted run started again with the same --name resumes from its last checkpoint. Several GPUs:
    accelerate launch --config_file configs/accelerate/ddp.yaml -m prefpred train --config ...
    Defaults shown are prefpred's own; a --config file's values replace them, and options and --set replace both.
    """
    options = dict(locals())  # the option values, before any other local exists
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from prefpred.config import load_config, option_overrides, parse_set
    from prefpred.training.job import TrainConfig, train_job
    from prefpred.training_analysis import describe

    values = {**option_overrides(TRAIN_OPTION_KEYS, options, force), **parse_set(overrides)}
    cfg = load_config(TrainConfig, config, values)
    run_dir = train_job(cfg)
    metrics_path = Path(run_dir) / "metrics.json"
    if not metrics_path.is_file():  # not the main process under accelerate launch
        return
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    console = Console()
    table = Table(title=f"prefpred train {metrics.get('name', '')}")
    for col in ("predictions", "log loss", "accuracy", "n"):
        table.add_column(col, justify="left" if col == "predictions" else "right")
    for part in ("validation", "holdout"):
        for who in ("prior", "model"):
            m = (metrics.get(part) or {}).get(who)
            if m:
                table.add_row(f"{'class prior' if who == 'prior' else 'model'}, {part}", f"{m['log_loss']:.4f}",
                              f"{m['accuracy']:.3f}", str(m["n"]))
    console.print(table)
    for line in describe((metrics.get("training") or {}).get("analysis") or {}):
        console.print(line, highlight=False)
    console.print(f"run directory: [bold]{run_dir}[/bold] (report: {Path(run_dir) / 'report.md'})")



# ---------------------------------------------------------------------------------------------- experiment
EXPERIMENT_OPTION_KEYS = {
    "model": "model.name_or_path", "data": "data.path", "out": "out_dir", "max_steps": "training.max_steps",
    "name": "name", "seed": "seed", "limit": "data.limit", "method": "model.method", "device": "model.device",
    "cpu_baseline": "run_cpu_baseline",
}
"""``prefpred experiment`` option -> the ``ExperimentConfig`` key it sets (tested like ``train``'s)."""


@app.command("experiment")
def experiment_cmd(
    config: str | None = typer.Option(None, "--config", help="YAML experiment config (configs/experiment-*.yaml)."),
    model: str | None = typer.Option(None, "--model", help="Model to judge and fine-tune: hub id or local folder."),
    data: str | None = typer.Option(None, "--data", help="Labelled pairs (file or folder; default: config or hub)."),
    out: str | None = typer.Option(None, "--out", help="Folder of run directories (default: runs)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Fine-tuning optimizer steps (-1 = epochs)."),
    name: str | None = typer.Option(None, "--name", help="Run name (default: experiment-<timestamp>)."),
    seed: int | None = typer.Option(None, "--seed", help="One seed for split, training and bootstrap (default: 42)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Use only the first N rows."),
    method: str | None = typer.Option(None, "--method", help="lora, qlora or full."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1, mps..."),
    cpu_baseline: bool | None = typer.Option(None, "--cpu-baseline/--no-cpu-baseline",
                                             help="Also train the CPU model as a baseline (default: on)."),
    overrides: list[str] = typer.Option([], "--set", help="Any config key: --set training.learning_rate=1e-4 "
                                        "(repeatable)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run directory of the same name."),
) -> None:
    """The study end to end: split, base model zero-shot, LoRA/QLoRA fine-tune, fine-tuned model, CPU model,
    side by side with confidence intervals (report.md, model_comparison.png).

    Defaults shown are prefpred's own; a --config file's values replace them, and options and --set replace both.
    """
    options = dict(locals())  # the option values, before any other local exists
    import json
    from pathlib import Path

    from rich.console import Console

    from prefpred.config import load_config, option_overrides, parse_set
    from prefpred.experiment import ExperimentConfig, run_experiment
    from prefpred.report.experiment import results_table

    values = {**option_overrides(EXPERIMENT_OPTION_KEYS, options, force), **parse_set(overrides)}
    cfg = load_config(ExperimentConfig, config, values)
    run_dir = run_experiment(cfg)
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    console = Console()
    for renderable in results_table(metrics):
        console.print(renderable)
    console.print(f"run directory: [bold]{run_dir}[/bold] (report: {Path(run_dir) / 'report.md'})")
