"""``prefpred experiment``: the study end to end from one config, on any Hugging Face model.

The study this project grew from fine-tuned Qwen2.5-0.5B-Instruct with LoRA/QLoRA to predict which response
people prefer, and compared the base model's zero-shot accuracy with the fine-tuned model's on a 20%
group-stratified validation split. :func:`run_experiment` does the same, honestly, with one seed for everything:

1. load and validate the pairs; one grouped (by prompt), stratified validation split of
   ``validation_fraction`` (:func:`validation_split`, built on :func:`prefpred.splits.make_splits`): no prompt
   is on both sides;
2. the **base** model judges the validation pairs zero-shot (:class:`~prefpred.models.judge.ZeroShotJudge`:
   softmax over the next-token logits of the prompt style's three label tokens, through the shared inference
   engine, swap-averaged as configured); optionally also the study's way (greedy-generate, parse the digit);
3. the model is **fine-tuned** (:class:`~prefpred.models.llm.LLMPreferenceModel`, LoRA / QLoRA / full) on the
   training part, evaluated every ``eval_steps`` on the validation part (early stopping, best checkpoint);
4. the fine-tuned model scores the validation pairs;
5. the **CPU model** (:class:`~prefpred.models.cpu.CPUPreferenceModel`) is trained on the same training part
   (early-stopped on the same validation part) as a baseline, and the class prior of the training labels too;
6. everything is written to the run directory: ``config.yaml``, ``splits.csv``, ``metrics.json``,
   ``metrics.jsonl`` (training log), ``predictions/*.csv``, ``model/`` (adapter or weights), ``training_curves.png``,
   ``model_comparison.png``, ``reliability.png`` and ``report.md``.

Accuracy and log loss of every model come with their uncertainty: the binomial standard error of accuracy on the
validation size, and a bootstrap over prompt groups (pairs that share a prompt are resampled together) of each
model's metrics and of the paired differences (:func:`grouped_bootstrap`). A difference whose 95% interval
contains zero is reported as within noise.

The run directory is written in place: an interrupted fine-tuning started again with the same config resumes
from its last checkpoint (``training.resume``). The experiment runs in one process (no ``accelerate launch``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from prefpred.bootstrap import _row_scores, grouped_bootstrap  # noqa: F401 - re-exported (moved there)
from prefpred.config import NonNegativeInt, PositiveInt, RunBase, config_dataclass, parse_set
from prefpred.inference.config import InferenceConfig
from prefpred.jobs import (
    JobData,
    check_classes,
    finish_run,
    leak_free_extra,
    load_job_data,
    prepare_in_place,
    write_run_files,
)
from prefpred.models.cpu import CPUModelConfig
from prefpred.report.experiment import (  # noqa: F401 - re-exported (the renderer moved there)
    MODEL_LABELS,
    STUDY_REFERENCE,
    comparison_sentence,
    model_label,
    render_experiment_report,
    results_table,
)
from prefpred.splits import GROUP_BY_CHOICES, SplitConfig
from prefpred.training.config import LLMModelConfig, TrainingConfig
from prefpred.training.job import aligned_inference
from prefpred.types import ConfigError, DataError, Pair, UserError
from prefpred.utils import json_safe

logger = logging.getLogger(__name__)

VALIDATION_FOLD = 0
"""``fold`` of validation rows in an experiment's ``splits.csv``."""
TRAIN_FOLD = 1
"""``fold`` of training rows in an experiment's ``splits.csv``."""

COMPARISONS = (("fine_tuned", "base"), ("fine_tuned", "cpu"), ("fine_tuned", "prior"), ("base", "prior"),
               ("cpu", "prior"), ("base", "base_generation"))
"""Paired differences an experiment reports (first minus second); the first one is "the improvement"."""

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


@config_dataclass
class ZeroShotConfig:
    """How the base model is judged zero-shot on the validation pairs."""

    enabled: bool = True
    """Judge with the base model before fine-tuning (skipped, with the reason in the report, for models that
    cannot generate text, such as encoders)."""
    style: str = ""
    """Prompt style of the judge; empty = the fine-tuned model's style for a ``label-token`` head, else
    ``seed-digits``. Its three label words must be single tokens."""
    load_in_4bit: bool | None = None
    """Load the judge in 4-bit NF4; ``null`` = like the fine-tuned base (4-bit for ``qlora``), so the comparison
    isolates what the adapters add."""
    parse_generation: bool = False
    """Also judge the study's way: greedy-generate a few tokens and parse the first label digit (one-hot; 1/3 each
    when nothing parses). Reported as an extra row with the unparseable rate."""
    max_new_tokens: PositiveInt = 8
    """Tokens generated per pair with ``parse_generation``."""


@config_dataclass
class ExperimentConfig(RunBase):
    """Everything ``prefpred experiment`` needs; saved, resolved, as ``config.yaml`` in the run directory."""

    validation_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    """Share of the rows (whole prompt groups, stratified by label) in the validation split."""
    group_by: Literal[GROUP_BY_CHOICES] = "prompt"
    """``prompt``: pairs with the same normalized first user message stay on one side; ``none``: rows are split
    one by one (leaks repeated prompts; for comparison only)."""
    model: LLMModelConfig = dataclasses.field(
        default_factory=lambda: LLMModelConfig(head="label-token", method="qlora"))
    """The model to judge zero-shot and to fine-tune (hub id or local directory, head, style, method, LoRA)."""
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    """The fine-tuning loop (evaluation and early stopping on the validation split)."""
    inference: InferenceConfig = dataclasses.field(default_factory=InferenceConfig)
    """Batching and swap averaging of every LLM scoring pass, zero-shot and fine-tuned alike (``max_length``
    follows ``model.max_length`` when left at the default)."""
    zero_shot: ZeroShotConfig = dataclasses.field(default_factory=ZeroShotConfig)
    """The base model's zero-shot judging."""
    run_cpu_baseline: bool = True
    """Train the CPU model on the same training part as a baseline."""
    cpu_model: CPUModelConfig = dataclasses.field(default_factory=CPUModelConfig)
    """Settings of the CPU baseline."""
    bootstrap_samples: NonNegativeInt = 2000
    """Resamples of the validation prompt groups for the confidence intervals (0 = none)."""
    keep_checkpoints: bool = False
    """Keep ``checkpoints/`` after a successful run (the best weights are in ``model/`` either way)."""
    overwrite: bool = False
    """Replace an existing run directory of the same name."""


# ------------------------------------------------------------------------------------------------ split
def validation_split(pairs: Sequence[Pair], fraction: float, seed: int, group_by: str = "prompt") -> pd.DataFrame:
    """One grouped, stratified train/validation split: columns ``id``, ``fold``, ``group``, ``part``.

    The validation rows are the grouped, label-stratified holdout of :func:`prefpred.splits.make_splits` with
    ``holdout_fraction=fraction`` (whole prompt groups, per-class counts close to ``fraction`` of each class);
    ``fold`` is :data:`VALIDATION_FOLD` (0) for them and :data:`TRAIN_FOLD` (1) for the rest, so
    :func:`prefpred.splits.iter_folds` on the saved table yields exactly this split as its fold 0.
    """
    from prefpred.splits import HOLDOUT_FOLD, make_splits

    table = make_splits(pairs, SplitConfig(n_folds=2, holdout_fraction=fraction, group_by=group_by), seed)
    val = table["fold"].to_numpy(dtype=int) == HOLDOUT_FOLD
    if not val.any() or val.all():
        raise DataError(f"validation split of {fraction:.0%} left {int(val.sum())} validation and "
                        f"{int((~val).sum())} training rows: add data or change validation_fraction")
    table["fold"] = np.where(val, VALIDATION_FOLD, TRAIN_FOLD)
    table["part"] = np.where(val, "validation", "train")
    return table[["id", "fold", "group", "part"]]


# ------------------------------------------------------------------------------------------------ steps
def _is_causal_lm(path: str) -> tuple[bool, str]:
    """Whether ``path`` names a model that generates text (a judge), with the architecture names."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: could not read the model config ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'}); offline? pass a local model "
                        "directory") from e
    archs = list(getattr(config, "architectures", None) or [])
    return any(a.endswith(_CAUSAL_SUFFIXES) for a in archs), ", ".join(archs) or config.model_type


def judge_params(cfg: ExperimentConfig, model_path: str) -> dict[str, Any]:
    """The :class:`~prefpred.models.judge.ZeroShotJudge` parameters an experiment uses for the base model."""
    zs, inf, mcfg = cfg.zero_shot, cfg.inference, cfg.model
    style = zs.style or (mcfg.style_name if mcfg.head == "label-token" else "seed-digits")
    four_bit = mcfg.method == "qlora" if zs.load_in_4bit is None else zs.load_in_4bit
    return {"model": model_path, "style": style, "max_length": inf.max_length, "device": mcfg.device,
            "dtype": mcfg.dtype, "load_in_4bit": four_bit, "swap_average": inf.swap_average,
            "parse_generation": False, "max_new_tokens": zs.max_new_tokens, "token_budget": inf.token_budget,
            "max_batch_size": inf.max_batch_size, "prefix_cache": inf.prefix_cache,
            "num_processes": inf.num_processes, "engine": inf.engine}


def _free_accelerator_memory() -> None:
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _zero_shot(cfg: ExperimentConfig, model_path: str, val_pairs: list[Pair],
               probas: dict[str, np.ndarray], skipped: dict[str, str]) -> dict[str, Any]:
    """Judge ``val_pairs`` with the base model; fills ``probas``/``skipped``; returns what to record."""
    from prefpred.models.judge import ZeroShotJudge

    info: dict[str, Any] = {}
    if not cfg.zero_shot.enabled:
        skipped["base"] = "zero-shot judging disabled (zero_shot.enabled: false)"
        return info
    causal, arch = _is_causal_lm(model_path)
    if not causal:
        skipped["base"] = (f"{arch} is not a causal LM: an encoder cannot judge zero-shot (its classification "
                           "head would be random)")
        logger.warning("zero-shot skipped: %s", skipped["base"])
        return info
    params = judge_params(cfg, model_path)
    info["params"] = params
    t0 = time.perf_counter()
    judge = ZeroShotJudge(**params).fit([])
    probas["base"] = judge.predict_proba(val_pairs)
    info["inference_stats"] = getattr(judge, "inference_stats_", None)
    info["seconds"] = time.perf_counter() - t0
    if cfg.zero_shot.parse_generation:
        t0 = time.perf_counter()
        judge.set_params(parse_generation=True)
        probas["base_generation"] = judge.predict_proba(val_pairs)
        info["generation"] = {"unparseable_rate": judge.unparseable_rate_, "seconds": time.perf_counter() - t0,
                              "examples": list((judge.generations_ or [])[:5])}
    del judge
    _free_accelerator_memory()
    return info


def _cpu_baseline(cfg: ExperimentConfig, train_pairs: list[Pair], val_pairs: list[Pair],
                  probas: dict[str, np.ndarray], skipped: dict[str, str]) -> dict[str, Any]:
    from prefpred.models.cpu import CPUPreferenceModel

    if not cfg.run_cpu_baseline:
        skipped["cpu"] = "CPU baseline disabled (run_cpu_baseline: false)"
        return {}
    t0 = time.perf_counter()
    model = CPUPreferenceModel(cfg.cpu_model, seed=cfg.seed).fit(train_pairs, eval_pairs=val_pairs)
    probas["cpu"] = model.predict_proba(val_pairs)
    best = getattr(model, "best_iteration_", None)
    return {"seconds": time.perf_counter() - t0, "best_iteration": int(best) if best else None}


# ------------------------------------------------------------------------------------------------ the job
@dataclasses.dataclass
class _Split:
    """The experiment's one split: the table written as ``splits.csv`` and the pairs on each side."""

    table: pd.DataFrame
    is_val: np.ndarray
    train: list[Pair]
    val: list[Pair]
    val_groups: list[str]
    extra_used: list[Pair]

    @property
    def train_all(self) -> list[Pair]:
        return self.train + self.extra_used


def _split(cfg: ExperimentConfig, data: JobData) -> _Split:
    """Split grouped by prompt, check the training side has every class, keep only leak-free extra pairs."""
    table = validation_split(data.pairs, cfg.validation_fraction, cfg.seed, cfg.group_by)
    is_val = table["fold"].to_numpy(dtype=int) == VALIDATION_FOLD
    train = [p for p, v in zip(data.pairs, is_val, strict=True) if not v]
    val = [p for p, v in zip(data.pairs, is_val, strict=True) if v]
    check_classes(train, data.where, part="the training split")
    return _Split(table=table, is_val=is_val, train=train, val=val,
                  val_groups=table["group"].to_numpy()[is_val].tolist(),
                  extra_used=leak_free_extra(data.extra, val))


def _fine_tune(cfg: ExperimentConfig, run_dir: Path, split: _Split, probas: dict[str, np.ndarray],
               timing: dict[str, float]) -> dict[str, Any]:
    """Fine-tune in ``run_dir`` (resumable), save ``model/``, score the validation pairs; returns what to record."""
    from prefpred.models.llm import LLMPreferenceModel

    t0 = time.perf_counter()
    model = LLMPreferenceModel(cfg.model, cfg.training, seed=cfg.seed, inference=cfg.inference)
    model.fit(split.train_all, eval_pairs=split.val, output_dir=run_dir)
    timing["train_s"] = time.perf_counter() - t0
    model.save(run_dir / "model")
    t0 = time.perf_counter()
    probas["fine_tuned"] = model.predict_proba(split.val)
    timing["score_s"] = time.perf_counter() - t0
    out = {"inference_stats": getattr(model, "inference_stats_", None), "history": list(model.history_),
           "result": model.training_result_}
    del model
    _free_accelerator_memory()
    return out


def run_experiment(cfg: ExperimentConfig) -> Path:
    """Run the whole experiment (see the module docstring); returns the run directory."""
    from prefpred.metrics import prior_proba
    from prefpred.training.modeling import model_path
    from prefpred.types import label_matrix
    from prefpred.utils import set_seed

    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    if not cfg.model.name_or_path:
        raise ConfigError("model.name_or_path is empty: give a hub id or a local model directory (--model)")
    set_seed(cfg.seed)
    cfg = dataclasses.replace(cfg, name=cfg.run_name("experiment"),
                              inference=aligned_inference(cfg.model, cfg.inference))
    run_dir = Path(cfg.out_dir) / cfg.name
    resuming = prepare_in_place(run_dir, overwrite=cfg.overwrite, resume=cfg.training.resume)

    # 1. data and split
    t0 = time.perf_counter()
    data = load_job_data(cfg.data, seed=cfg.seed, purpose="an experiment")
    split = _split(cfg, data)
    timing["load_s"] = time.perf_counter() - t0
    logger.info("%d training pairs (+%d extra), %d validation pairs (%d prompt groups)%s", len(split.train),
                len(split.extra_used), len(split.val), len(set(split.val_groups)), " (resuming)" if resuming else "")
    write_run_files(run_dir, cfg, split.table)
    probas: dict[str, np.ndarray] = {"prior": prior_proba(label_matrix(split.train), len(split.val))}
    skipped: dict[str, str] = {}

    # 2. the base model, zero-shot
    t0 = time.perf_counter()
    zero_shot_info = _zero_shot(cfg, model_path(cfg.model), split.val, probas, skipped)
    timing["zero_shot_s"] = time.perf_counter() - t0
    # 3-4. fine-tune, then score
    fine_tuned = _fine_tune(cfg, run_dir, split, probas, timing)
    # 5. the CPU baseline
    t0 = time.perf_counter()
    cpu_info = _cpu_baseline(cfg, split.train_all, split.val, probas, skipped)
    timing["cpu_s"] = time.perf_counter() - t0

    # 6. metrics, predictions, plots, report
    probas = {k: probas[k] for k in MODEL_LABELS if k in probas}
    results, boot = _evaluate(cfg, split, probas)
    _write_predictions_and_plots(run_dir, cfg.name, split, probas, results, boot, fine_tuned["history"])
    timing["total_s"] = time.perf_counter() - t_start
    metrics = _metrics(cfg, data, split, results, boot, skipped, zero_shot_info, fine_tuned, cpu_info, timing)
    finish_run(run_dir, metrics, kind="experiment", in_place=True, drop_checkpoints=not cfg.keep_checkpoints)
    logger.info("experiment written to %s (%.1f s)", run_dir, timing["total_s"])
    return run_dir


def _evaluate(cfg: ExperimentConfig, split: _Split, probas: Mapping[str, np.ndarray],
              ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Metrics of every model on the validation pairs, with the grouped bootstrap's intervals merged in."""
    from prefpred.metrics import compute_metrics
    from prefpred.types import label_matrix

    y_val = label_matrix(split.val)
    results = {k: compute_metrics(y_val, p) for k, p in probas.items()}
    boot = grouped_bootstrap(y_val, probas, split.val_groups, comparisons=COMPARISONS,
                             n_boot=cfg.bootstrap_samples, seed=cfg.seed)
    for k in results:
        results[k].update(boot["models"][k])
    return results, boot


def _write_predictions_and_plots(run_dir: Path, name: str, split: _Split, probas: Mapping[str, np.ndarray],
                                 results: Mapping[str, Mapping[str, Any]], boot: Mapping[str, Any],
                                 history: Sequence[Mapping[str, Any]]) -> None:
    from prefpred.submission import write_predictions
    from prefpred.training_analysis import plot_training_curves
    from prefpred.types import label_matrix

    y_val = label_matrix(split.val)
    val_ids = [p.id for p in split.val]
    for k, p in probas.items():
        if k != "prior":
            write_predictions(val_ids, p, run_dir / "predictions" / f"{k}.csv", labels=y_val)
    plot_training_curves(history, run_dir / "training_curves.png", title=f"Experiment {name}: fine-tuning")
    _plots(run_dir, name, y_val, probas, results, boot["n_groups"])


def _metrics(cfg: ExperimentConfig, data: JobData, split: _Split, results: dict[str, Any], boot: dict[str, Any],
             skipped: dict[str, str], zero_shot_info: dict[str, Any], fine_tuned: dict[str, Any],
             cpu_info: dict[str, Any], timing: dict[str, float]) -> dict[str, Any]:
    """The experiment's ``metrics.json`` content."""
    from prefpred.training_analysis import analyze

    comparisons = boot["comparisons"]
    result = fine_tuned["result"]
    is_val = split.is_val
    return json_safe({
        "kind": "experiment",
        "name": cfg.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": cfg.seed,
        "base_model": cfg.model.name_or_path,
        "head": cfg.model.head,
        "method": cfg.model.method,
        "style": cfg.model.style_name,
        "zero_shot_style": (zero_shot_info.get("params") or {}).get("style"),
        "data_path": data.data_path,
        "extra_path": cfg.data.extra_path,
        "counts": {"pairs": len(data.pairs), "train": len(split.train), "validation": len(split.val),
                   "extra": len(data.extra), "extra_used": len(split.extra_used),
                   "train_groups": int(split.table.loc[~is_val, "group"].nunique()),
                   "validation_groups": int(split.table.loc[is_val, "group"].nunique())},
        "validation_fraction": cfg.validation_fraction,
        "group_by": cfg.group_by,
        "validation": results,
        "skipped": skipped,
        "improvement": next((c for c in comparisons if (c["a"], c["b"]) == ("fine_tuned", "base")), None),
        "comparisons": comparisons,
        "bootstrap": {"n_boot": boot["n_boot"], "n_groups": boot["n_groups"], "unit": "prompt group"},
        "zero_shot": zero_shot_info,
        "fine_tuned": {"inference_stats": fine_tuned["inference_stats"]},
        "cpu": cpu_info,
        "training": {
            "global_step": result.global_step, "best_step": result.best_step,
            "best_eval_loss": result.best_eval_loss, "resumed_from_step": result.resumed_from_step,
            "stopped_early": result.stopped_early, "train_runtime_s": result.train_runtime_s,
            "analysis": analyze(fine_tuned["history"]),
        },
        "timing": timing,
    })


def _plots(run_dir: Path, name: str, y: np.ndarray, probas: Mapping[str, np.ndarray],
           results: Mapping[str, Mapping[str, Any]], n_groups: int) -> None:
    from prefpred.plots import plot_model_comparison, plot_reliability

    short = {"prior": "class prior", "base": "base (zero-shot)", "base_generation": "base (parsed digit)",
             "fine_tuned": "fine-tuned", "cpu": "CPU model"}
    comparison = {}
    for k, r in results.items():
        comparison[short[k]] = {"accuracy": r["accuracy"], "log_loss": r["log_loss"],
                                "accuracy_std": r.get("accuracy_se"), "log_loss_std": r.get("log_loss_se")}
    plot_model_comparison(comparison, run_dir / "model_comparison.png",
                          title=f"Experiment {name}: validation n={len(y)}", error_bars=f"± 1 SE, bootstrap over {n_groups} prompt groups")
    sets = {short[k]: p for k, p in probas.items() if k != "prior"}
    plot_reliability(y, sets, run_dir / "reliability.png")




# ------------------------------------------------------------------------------------------------ CLI helpers
parse_set_options = parse_set
"""The one ``--set KEY=VALUE`` parser (:func:`prefpred.config.parse_set`), under its old name."""


def build_experiment_report(run_dir: str | Path) -> Path:
    """Re-render ``report.md`` of an experiment run directory from its ``metrics.json`` and PNG files."""
    from prefpred.report import build_report

    path = Path(run_dir) / "metrics.json"
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("kind") != "experiment":
        raise UserError(f"{run_dir}: not an experiment run (metrics.json has no kind 'experiment')")
    return build_report(run_dir)
