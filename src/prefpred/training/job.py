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
process trains and scores, and only the main process writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.config import RunBase, save_config
from prefpred.inference import InferenceConfig
from prefpred.report import fmt, plots_section
from prefpred.splits import HOLDOUT_FOLD, SplitConfig
from prefpred.training.config import LLMModelConfig, TrainingConfig
from prefpred.types import ConfigError, DataError, Pair
from prefpred.utils import atomic_write_text, json_safe

logger = logging.getLogger(__name__)

RUN_FILES = ("config.yaml", "splits.csv", "metrics.jsonl", "metrics.json", "validation.csv", "holdout.csv",
             "training_curves.png", "reliability.png", "confusion.png", "report.md", "model/")


@dataclasses.dataclass
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
        if self.name is not None and (not self.name.strip() or "/" in self.name or self.name in {".", ".."}):
            raise ConfigError(f"name must be a plain folder name, got {self.name!r}")
        if not 0 <= self.validation_fold < self.split.n_folds:
            raise ConfigError(f"validation_fold must be in [0, {self.split.n_folds}), got {self.validation_fold}")


def _is_main() -> bool:
    """Rank 0 or a lone process (from the launcher's environment: right before the process group exists)."""
    from prefpred.training.trainer import process_rank

    return process_rank() == 0


def _join_processes(device: str | None = None) -> None:
    """Set up the process group of a multi-process run as the Trainer will: gloo for ``device`` cpu (default: when
    there is no CUDA), NCCL on GPUs. No-op in a single process or once set up."""
    from prefpred.training.trainer import world_size

    if world_size() > 1:
        import torch
        from accelerate import PartialState

        from prefpred.hf import resolve_device

        cpu = resolve_device(device) == "cpu" if device else not torch.cuda.is_available()
        PartialState(cpu=cpu)


def _barrier() -> None:
    """Wait for every training process (no-op in a single process)."""
    from prefpred.training.trainer import world_size

    if world_size() > 1:
        from accelerate import PartialState

        _join_processes()
        PartialState().wait_for_everyone()


def _validate(pairs: list[Pair], where: str) -> None:
    if not pairs:
        raise DataError("no pairs to train on", path=where)
    missing = [p for p in pairs if p.label is None]
    if missing:
        raise DataError(f"{len(missing)} row(s) have no label (first: id {missing[0].id!r}); training needs "
                        "labelled data", path=where)


def aligned_inference(model: LLMModelConfig, inference: InferenceConfig) -> InferenceConfig:
    """The inference config with its default ``max_length`` replaced by the model's (scored as trained)."""
    if inference.max_length == InferenceConfig().max_length and model.max_length != inference.max_length:
        return dataclasses.replace(inference, max_length=model.max_length)
    return inference


def prepare_run_dir(run_dir: Path, *, overwrite: bool, resume: bool) -> bool:
    """Check/clear ``run_dir`` of a fine-tuning run; returns whether an unfinished run will be resumed.

    Empty or missing: start fresh. ``overwrite``: remove it (main process only). Unfinished with a checkpoint
    and ``resume``: resume. Anything else is an error naming the way out.
    """
    from prefpred.training.trainer import CHECKPOINT_DIR, last_checkpoint

    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return False
    if not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} exists and is not a directory")
    finished = (run_dir / "metrics.json").is_file()
    resumable = last_checkpoint(run_dir / CHECKPOINT_DIR) is not None
    if overwrite:
        _barrier()
        if _is_main():
            shutil.rmtree(run_dir)
        _barrier()
        return False
    if resumable and not finished and resume:
        return True
    raise FileExistsError(f"{run_dir} exists (use --force or another --name"
                          + (")" if finished or not resumable else "; set training.resume to continue it)"))


def train_job(cfg: TrainConfig) -> Path:
    """Fine-tune, evaluate and write the run directory (see the module docstring); returns its path."""
    from prefpred.data import load_data, load_extra
    from prefpred.metrics import compute_metrics, prior_proba
    from prefpred.models.llm import LLMPreferenceModel
    from prefpred.splits import make_splits, normalize_prompt, save_splits
    from prefpred.types import label_matrix
    from prefpred.utils import set_seed

    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    set_seed(cfg.seed)
    name = cfg.run_name("llm")
    cfg = dataclasses.replace(cfg, name=name, inference=aligned_inference(cfg.model, cfg.inference))
    run_dir = Path(cfg.out_dir) / name
    _join_processes(cfg.model.device)
    resuming = prepare_run_dir(run_dir, overwrite=cfg.overwrite, resume=cfg.training.resume)
    _barrier()  # every process has checked the folder before the main one writes into it
    main = _is_main()

    # 1. data ------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    loaded = load_data(cfg.data, seed=cfg.seed)
    pairs = list(loaded.pairs)
    where = str(loaded.path or cfg.data.path or cfg.data.hub_dataset)
    _validate(pairs, where)
    extra = load_extra(cfg.data, seed=cfg.seed)
    timing["load_s"] = time.perf_counter() - t0

    # 2. splits ----------------------------------------------------------------------------------------
    splits = make_splits(pairs, cfg.split, cfg.seed)
    folds = splits["fold"].to_numpy(dtype=int)
    hold = folds == HOLDOUT_FOLD
    val = folds == cfg.validation_fold
    train_idx = np.flatnonzero(~hold & ~val)
    train_pairs = [pairs[i] for i in train_idx]
    val_pairs = [pairs[i] for i in np.flatnonzero(val)]
    hold_pairs = [pairs[i] for i in np.flatnonzero(hold)]
    excluded = {normalize_prompt(p.prompt) for p in val_pairs + hold_pairs}
    extra_used = [e for e in extra if normalize_prompt(e.prompt) not in excluded]
    if len(extra_used) < len(extra):
        logger.info("left out %d extra pair(s) whose prompt is a validation/holdout prompt",
                    len(extra) - len(extra_used))
    logger.info("%d training pairs (+%d extra), %d validation, %d holdout%s", len(train_pairs), len(extra_used),
                len(val_pairs), len(hold_pairs), " (resuming)" if resuming else "")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        save_splits(splits, run_dir / "splits.csv")
    _barrier()

    # 3. fine-tune -------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    model = LLMPreferenceModel(cfg.model, cfg.training, seed=cfg.seed, inference=cfg.inference)
    model.fit(train_pairs + extra_used, eval_pairs=val_pairs or None, output_dir=run_dir)
    timing["train_s"] = time.perf_counter() - t0
    model.save(run_dir / "model")

    # 4. score -----------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    y_train = label_matrix(train_pairs)
    results: dict[str, Any] = {}
    probas: dict[str, tuple[list[Pair], np.ndarray]] = {}
    for part, part_pairs in (("validation", val_pairs), ("holdout", hold_pairs)):
        if not part_pairs:
            results[part] = None
            continue
        proba = model.predict_proba(part_pairs)
        y = label_matrix(part_pairs)
        probas[part] = (part_pairs, proba)
        results[part] = {"model": compute_metrics(y, proba),
                         "prior": compute_metrics(y, prior_proba(y_train, len(part_pairs)))}
    timing["score_s"] = time.perf_counter() - t0
    if not main:
        return run_dir

    # 5. write -----------------------------------------------------------------------------------------
    from prefpred.plots import plot_confusion, plot_reliability
    from prefpred.submission import write_predictions
    from prefpred.training_analysis import analyze, plot_training_curves

    for part, (part_pairs, proba) in probas.items():
        write_predictions([p.id for p in part_pairs], proba, run_dir / f"{part}.csv",
                          labels=label_matrix(part_pairs))
    history = model.history_
    plot_training_curves(history, run_dir / "training_curves.png", title=f"Run {name}")
    shown = "holdout" if "holdout" in probas else "validation" if "validation" in probas else None
    if shown:
        part_pairs, proba = probas[shown]
        y = label_matrix(part_pairs)
        plot_reliability(y, {shown: proba}, run_dir / "reliability.png")
        plot_confusion(y, proba, run_dir / "confusion.png", title=f"{shown.capitalize()} confusion (n={len(y)})")
    res = model.training_result_
    timing["total_s"] = time.perf_counter() - t_start
    metrics: dict[str, Any] = {
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": cfg.seed,
        "model_kind": model.kind,
        "base_model": cfg.model.name_or_path,
        "head": cfg.model.head,
        "method": cfg.model.method,
        "style": cfg.model.style_name,
        "data_path": loaded.path or cfg.data.path,
        "extra_path": cfg.data.extra_path,
        "extra_weight": cfg.data.extra_weight,
        "counts": {"pairs": len(pairs), "train": len(train_pairs), "validation": len(val_pairs),
                   "holdout": len(hold_pairs), "extra": len(extra), "extra_used": len(extra_used)},
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
            "train_runtime_s": res.train_runtime_s, "world_size": res.world_size, "analysis": analyze(history),
        },
        "timing": timing,
    }
    atomic_write_text(run_dir / "metrics.json", json.dumps(json_safe(metrics), indent=2) + "\n")
    plots = sorted(p.name for p in run_dir.glob("*.png"))
    atomic_write_text(run_dir / "report.md", render_train_report(metrics, plots))
    if not cfg.keep_checkpoints:
        from prefpred.training.trainer import CHECKPOINT_DIR

        shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    logger.info("run written to %s (%.1f s)", run_dir, timing["total_s"])
    return run_dir





def render_train_report(metrics: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """Markdown ``report.md`` of an LLM training run from its ``metrics.json`` content."""
    from prefpred.training_analysis import describe

    m = metrics
    c = m.get("counts", {})
    lines = [f"# prefpred LLM run `{m.get('name')}`", "",
             f"Created {m.get('created')} · seed {m.get('seed')} · `{m.get('base_model')}` · head "
             f"`{m.get('head')}` · method `{m.get('method')}` · prompt style `{m.get('style')}` · total time "
             f"{fmt(m.get('timing', {}).get('total_s'), 1)} s", "",
             f"Data: `{m.get('data_path') or 'hub dataset'}` — {c.get('pairs')} labelled pairs: {c.get('train')} "
             f"training, {c.get('validation')} validation (early stopping, best checkpoint), {c.get('holdout')} "
             "holdout (never trained or early-stopped on)"
             + (f", plus {c.get('extra_used')} extra training pairs (weight {m.get('extra_weight')})"
                if c.get("extra_used") else "") + ".", "", "## Results", "",
             "| predictions | log loss | accuracy | Brier | ECE | n |", "|---|---|---|---|---|---|"]
    for part in ("validation", "holdout"):
        r = m.get(part)
        if not r:
            continue
        for who in ("prior", "model"):
            x = r[who]
            label = f"{'class prior' if who == 'prior' else 'model'}, {part}"
            lines.append(f"| {label} | {fmt(x['log_loss'])} | {fmt(x['accuracy'], 3)} | {fmt(x['brier'])} | "
                         f"{fmt(x['ece'])} | {x['n']} |")
    lines += ["", "The holdout number is the honest one: validation pairs chose the best checkpoint.", ""]
    t = m.get("training", {})
    lines += ["## Training", "",
              f"{t.get('global_step')} optimizer steps; best eval loss {fmt(t.get('best_eval_loss'))} at step "
              f"{t.get('best_step')}" + (" (stopped early)" if t.get("stopped_early") else "")
              + (f"; resumed from step {t['resumed_from_step']}" if t.get("resumed_from_step") else "") + ".", ""]
    lines += [f"- {line}" for line in describe(t.get("analysis", {}))]
    lines.append("")
    lines += plots_section(plots)
    lines += ["## Files", "", "`config.yaml` · `splits.csv` (id → fold, -1 = holdout) · `metrics.jsonl` (per "
              "logged step) · `metrics.json` · `validation.csv` / `holdout.csv` (predictions) · `model/` "
              "(adapter or weights + tokenizer + head)", ""]
    return "\n".join(lines)
