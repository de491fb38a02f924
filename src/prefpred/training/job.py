"""``prefpred train``: fine-tune an LLM preference model into a run directory.

:func:`train_job` does, with one seed for everything:

1. load and validate the pairs, and the optional extra (e.g. teacher-labelled) training-only pairs;
2. split them grouped by prompt (:mod:`prefpred.splits`): the holdout (fold -1) is never trained or early-stopped
   on; fold ``validation_fold`` is the validation set (evaluation every ``eval_steps``, early stopping, best
   checkpoint); the other folds are the training set. Extra pairs whose prompt is a validation or holdout
   prompt are left out, so teacher-labelled copies of evaluation prompts cannot leak;
3. fine-tune (:class:`prefpred.models.llm.LLMPreferenceModel`): checkpoints in ``checkpoints/``,
   ``metrics.jsonl`` written as it goes; an interrupted run started again with the same config resumes from
   its last checkpoint;
4. save the best model to ``model/``, score validation and holdout through ``score_pairs``, write
   ``validation.csv``/``holdout.csv``, ``metrics.json`` (metrics, class-prior baseline, training analysis),
   ``training_curves.png``, ``reliability.png``, ``confusion.png`` and ``report.md``.

The run directory is written in place (so an interrupted run can resume); under ``accelerate launch`` every
process trains and scores, and only the main process writes. A run that failed before its first checkpoint
leaves only files this job writes; the same command starts over in that folder (logged) instead of refusing.
The steps are the shared ones of :mod:`prefpred.jobs`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.config import RunBase, config_dataclass
from prefpred.inference import InferenceConfig
from prefpred.jobs import (
    JobData,
    barrier,
    check_classes,
    finish_run,
    is_main,
    join_processes,
    leak_free_extra,
    leave_processes,
    load_job_data,
    prepare_in_place,
    write_run_files,
)
from prefpred.report.llm import render_train_report  # noqa: F401 - re-exported (the renderer moved there)
from prefpred.splits import HOLDOUT_FOLD, SplitConfig
from prefpred.training.config import LLMModelConfig, TrainingConfig
from prefpred.types import ConfigError, Pair

logger = logging.getLogger(__name__)

@config_dataclass
class TrainConfig(RunBase):
    """Everything ``prefpred train`` needs; saved, resolved, as ``config.yaml`` in the run directory."""

    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    """Holdout and folds (grouped by prompt); one fold is the validation set."""
    validation_fold: int = 0
    """Which cross-validation fold is the validation set (early stopping, best checkpoint)."""
    model: LLMModelConfig = dataclasses.field(default_factory=LLMModelConfig)
    """The model to fine-tune."""
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    """The optimizer loop."""
    inference: InferenceConfig = dataclasses.field(default_factory=InferenceConfig)
    """Batching of validation/holdout scoring (``max_length`` follows ``model.max_length`` when left at the
    default)."""
    keep_checkpoints: bool = False
    """Keep ``checkpoints/`` (optimizer state, to continue later) after a successful run; the best weights are
    in ``model/`` either way."""
    overwrite: bool = False
    """Replace an existing finished run directory of the same name."""

    def __post_init__(self) -> None:
        if not 0 <= self.validation_fold < self.split.n_folds:
            raise ConfigError(f"validation_fold must be in [0, {self.split.n_folds}), got {self.validation_fold}")


def aligned_inference(model: LLMModelConfig, inference: InferenceConfig) -> InferenceConfig:
    """The inference config with its default ``max_length`` replaced by the model's (scored as trained)."""
    if inference.max_length == InferenceConfig().max_length and model.max_length != inference.max_length:
        return dataclasses.replace(inference, max_length=model.max_length)
    return inference


@dataclasses.dataclass
class _Split:
    table: Any
    train: list[Pair]
    val: list[Pair]
    hold: list[Pair]
    extra_used: list[Pair]


def _split(cfg: TrainConfig, data: JobData) -> _Split:
    """Holdout + folds grouped by prompt; fold ``validation_fold`` validates; leak-free extra pairs train."""
    from prefpred.splits import make_splits

    table = make_splits(data.pairs, cfg.split, cfg.seed)
    folds = table["fold"].to_numpy(dtype=int)
    hold, val = folds == HOLDOUT_FOLD, folds == cfg.validation_fold
    train = [data.pairs[i] for i in np.flatnonzero(~hold & ~val)]
    check_classes(train, data.where, part="the training folds")
    val_pairs = [data.pairs[i] for i in np.flatnonzero(val)]
    hold_pairs = [data.pairs[i] for i in np.flatnonzero(hold)]
    return _Split(table=table, train=train, val=val_pairs, hold=hold_pairs,
                  extra_used=leak_free_extra(data.extra, val_pairs + hold_pairs))


def train_job(cfg: TrainConfig) -> Path:
    """Fine-tune, evaluate and write the run directory (see the module docstring); returns its path.

    Under a multi-process launcher the processes join first and leave the process group when the job ends,
    whether it succeeded or not.
    """
    from prefpred.utils import set_seed

    t_start = time.perf_counter()
    set_seed(cfg.seed)
    cfg = dataclasses.replace(cfg, name=cfg.run_name("llm"), inference=aligned_inference(cfg.model, cfg.inference))
    join_processes(cfg.model.device)
    try:
        return _train_and_write(cfg, t_start)
    finally:
        leave_processes()


def _train_and_write(cfg: TrainConfig, t_start: float) -> Path:
    """The steps of :func:`train_job` once the processes (if several) have joined."""
    from prefpred.models.llm import LLMPreferenceModel

    timing: dict[str, float] = {}
    run_dir = Path(cfg.out_dir) / cfg.name
    resuming = prepare_in_place(run_dir, overwrite=cfg.overwrite, resume=cfg.training.resume)
    barrier()  # every process has checked the folder before the main one writes into it

    t0 = time.perf_counter()
    data = load_job_data(cfg.data, seed=cfg.seed)
    timing["load_s"] = time.perf_counter() - t0
    split = _split(cfg, data)
    logger.info("%d training pairs (+%d extra), %d validation, %d holdout%s", len(split.train),
                len(split.extra_used), len(split.val), len(split.hold), " (resuming)" if resuming else "")
    if is_main():
        write_run_files(run_dir, cfg, split.table)
    barrier()

    t0 = time.perf_counter()
    model = LLMPreferenceModel(cfg.model, cfg.training, seed=cfg.seed, inference=cfg.inference)
    model.fit(split.train + split.extra_used, eval_pairs=split.val or None, output_dir=run_dir)
    timing["train_s"] = time.perf_counter() - t0
    model.save(run_dir / "model")
    t0 = time.perf_counter()
    results, probas = _score(model, split)
    timing["score_s"] = time.perf_counter() - t0
    if not is_main():
        return run_dir

    _write_predictions_and_plots(run_dir, cfg.name, model.history_, probas)
    timing["total_s"] = time.perf_counter() - t_start
    metrics = _metrics(cfg, data, split, model, results, timing)
    finish_run(run_dir, metrics, kind="llm", in_place=True, drop_checkpoints=not cfg.keep_checkpoints)
    logger.info("run written to %s (%.1f s)", run_dir, timing["total_s"])
    return run_dir


def _score(model: Any, split: _Split) -> tuple[dict[str, Any], dict[str, tuple[list[Pair], np.ndarray]]]:
    """Metrics of the model and of the training class prior on the validation and holdout pairs."""
    from prefpred.metrics import compute_metrics, prior_proba
    from prefpred.types import label_matrix

    y_train = label_matrix(split.train)
    results: dict[str, Any] = {}
    probas: dict[str, tuple[list[Pair], np.ndarray]] = {}
    for part, part_pairs in (("validation", split.val), ("holdout", split.hold)):
        if not part_pairs:
            results[part] = None
            continue
        proba = model.predict_proba(part_pairs)
        y = label_matrix(part_pairs)
        probas[part] = (part_pairs, proba)
        results[part] = {"model": compute_metrics(y, proba),
                         "prior": compute_metrics(y, prior_proba(y_train, len(part_pairs)))}
    return results, probas


def _write_predictions_and_plots(run_dir: Path, name: str, history: Any,
                                 probas: dict[str, tuple[list[Pair], np.ndarray]]) -> None:
    """``validation.csv``/``holdout.csv``, the training curves, and reliability/confusion of the honest part."""
    from prefpred.plots import plot_confusion, plot_reliability
    from prefpred.submission import write_predictions
    from prefpred.training_analysis import plot_training_curves
    from prefpred.types import label_matrix

    for part, (part_pairs, proba) in probas.items():
        write_predictions([p.id for p in part_pairs], proba, run_dir / f"{part}.csv",
                          labels=label_matrix(part_pairs))
    plot_training_curves(history, run_dir / "training_curves.png", title=f"Run {name}")
    shown = "holdout" if "holdout" in probas else "validation" if "validation" in probas else None
    if shown:
        part_pairs, proba = probas[shown]
        y = label_matrix(part_pairs)
        plot_reliability(y, {shown: proba}, run_dir / "reliability.png")
        plot_confusion(y, proba, run_dir / "confusion.png", title=f"{shown.capitalize()} confusion (n={len(y)})")


def _metrics(cfg: TrainConfig, data: JobData, split: _Split, model: Any, results: dict[str, Any],
             timing: dict[str, float]) -> dict[str, Any]:
    """The run's ``metrics.json`` content."""
    from prefpred.training_analysis import analyze

    res = model.training_result_
    return {
        "name": cfg.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": cfg.seed,
        "model_kind": model.kind,
        "base_model": cfg.model.name_or_path,
        "head": cfg.model.head,
        "method": cfg.model.method,
        "style": cfg.model.style_name,
        "data_path": data.data_path,
        "extra_path": cfg.data.extra_path,
        "extra_weight": cfg.data.extra_weight,
        "counts": {"pairs": len(data.pairs), "train": len(split.train), "validation": len(split.val),
                   "holdout": len(split.hold), "extra": len(data.extra), "extra_used": len(split.extra_used)},
        "headline": {
            "holdout_log_loss": (results["holdout"] or {}).get("model", {}).get("log_loss"),
            "holdout_accuracy": (results["holdout"] or {}).get("model", {}).get("accuracy"),
            "validation_log_loss": (results["validation"] or {}).get("model", {}).get("log_loss"),
            "validation_accuracy": (results["validation"] or {}).get("model", {}).get("accuracy"),
        },
        "validation": results["validation"],
        "holdout": results["holdout"],
        "training": {
            "global_step": res.global_step, "best_step": res.best_step, "best_eval_loss": res.best_eval_loss,
            "resumed_from_step": res.resumed_from_step, "stopped_early": res.stopped_early,
            "train_runtime_s": res.train_runtime_s, "world_size": res.world_size,
            "analysis": analyze(model.history_),
        },
        "timing": timing,
    }
