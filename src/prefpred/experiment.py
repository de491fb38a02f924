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
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prefpred.config import RunBase, save_config
from prefpred.inference.config import InferenceConfig
from prefpred.models.cpu import CPUModelConfig
from prefpred.report import fmt, plots_section
from prefpred.runs import mark_complete, write_metrics
from prefpred.splits import GROUP_BY_CHOICES, SplitConfig
from prefpred.training.config import LLMModelConfig, TrainingConfig
from prefpred.training.job import aligned_inference, prepare_run_dir
from prefpred.types import ConfigError, DataError, Pair, UserError
from prefpred.utils import atomic_path, atomic_write_text, json_safe

logger = logging.getLogger(__name__)

VALIDATION_FOLD = 0
"""``fold`` of validation rows in an experiment's ``splits.csv``."""
TRAIN_FOLD = 1
"""``fold`` of training rows in an experiment's ``splits.csv``."""

MODEL_LABELS = {
    "prior": "class prior (training label frequencies)",
    "base": "base model, zero-shot",
    "base_generation": "base model, zero-shot, parsed generation (the study's method)",
    "fine_tuned": "fine-tuned model",
    "cpu": "CPU model (features + LightGBM)",
}
"""Row names of the models an experiment compares, in report order."""

COMPARISONS = (("fine_tuned", "base"), ("fine_tuned", "cpu"), ("fine_tuned", "prior"), ("base", "prior"),
               ("cpu", "prior"), ("base", "base_generation"))
"""Paired differences an experiment reports (first minus second); the first one is "the improvement"."""

STUDY_REFERENCE = {"model": "Qwen/Qwen2.5-0.5B-Instruct", "base_accuracy": 0.3475, "fine_tuned_accuracy": 0.3566}
"""The study's published validation accuracies (one sampled digit parsed; short training)."""

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


@dataclasses.dataclass
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
    max_new_tokens: int = 8
    """Tokens generated per pair with ``parse_generation``."""


@dataclasses.dataclass
class ExperimentConfig(RunBase):
    """Everything ``prefpred experiment`` needs; saved, resolved, as ``config.yaml`` in the run directory."""

    validation_fraction: float = 0.2
    """Share of the rows (whole prompt groups, stratified by label) in the validation split."""
    group_by: str = "prompt"
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
    bootstrap_samples: int = 2000
    """Resamples of the validation prompt groups for the confidence intervals (0 = none)."""
    keep_checkpoints: bool = False
    """Keep ``checkpoints/`` after a successful run (the best weights are in ``model/`` either way)."""
    overwrite: bool = False
    """Replace an existing run directory of the same name."""

    def __post_init__(self) -> None:
        if self.name is not None and (not self.name.strip() or "/" in self.name or self.name in {".", ".."}):
            raise ConfigError(f"name must be a plain folder name, got {self.name!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.group_by not in GROUP_BY_CHOICES:
            raise ConfigError(f"group_by must be one of {list(GROUP_BY_CHOICES)}, got {self.group_by!r}")
        if self.bootstrap_samples < 0:
            raise ConfigError(f"bootstrap_samples must be >= 0, got {self.bootstrap_samples}")


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


# ------------------------------------------------------------------------------------------------ bootstrap
def _row_scores(y: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row correctness and log loss (clipped and renormalised like :func:`prefpred.metrics.log_loss`)."""
    from prefpred.metrics import normalize_proba

    p = normalize_proba(proba)
    correct = (np.asarray(proba).argmax(axis=1) == y.argmax(axis=1)).astype(np.float64)
    return correct, -(y * np.log(p)).sum(axis=1)


def grouped_bootstrap(y: np.ndarray, probas: Mapping[str, np.ndarray], groups: Sequence[str], *,
                      comparisons: Sequence[tuple[str, str]] = (), n_boot: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """Confidence intervals of accuracy and log loss, resampling whole prompt groups with replacement.

    Returns ``{"models": {name: {accuracy_se, accuracy_ci95, log_loss_se, log_loss_ci95}}, "comparisons":
    [...]}``; each comparison ``(a, b)`` (both in ``probas``) holds ``accuracy_gain`` (accuracy of ``a`` minus
    ``b``) and ``log_loss_reduction`` (log loss of ``b`` minus ``a``; positive = ``a`` is better), each with
    its bootstrap standard error, 95% percentile interval and ``*_within_noise`` (the interval contains 0).
    Pairs that share a prompt are correlated, so resampling groups gives honest, wider intervals than
    resampling rows.
    """
    y = np.asarray(y, dtype=np.float64)
    codes, uniq = pd.factorize(pd.Series(list(groups), dtype=str))
    n_groups = len(uniq)
    sizes = np.bincount(codes, minlength=n_groups).astype(np.float64)
    rng = np.random.default_rng(seed)
    weights = None
    if n_boot > 0 and n_groups > 1:
        draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
        weights = np.zeros((n_boot, n_groups))
        np.add.at(weights, (np.repeat(np.arange(n_boot), n_groups), draws.ravel()), 1.0)
    denom = weights @ sizes if weights is not None else None

    sums: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    point: dict[str, tuple[float, float]] = {}
    for name, proba in probas.items():
        correct, ll = _row_scores(y, np.asarray(proba, dtype=np.float64))
        sums[name] = (np.bincount(codes, weights=correct, minlength=n_groups),
                      np.bincount(codes, weights=ll, minlength=n_groups))
        point[name] = (float(correct.mean()), float(ll.mean()))

    def boot(vec: np.ndarray) -> np.ndarray | None:
        return None if weights is None else (weights @ vec) / denom

    def interval(samples: np.ndarray | None) -> tuple[float | None, list[float] | None]:
        if samples is None:
            return None, None
        lo, hi = np.percentile(samples, [2.5, 97.5])
        return float(samples.std(ddof=1)), [float(lo), float(hi)]

    out: dict[str, Any] = {"n_boot": n_boot if weights is not None else 0, "n_groups": n_groups,
                           "n": int(len(y)), "models": {}, "comparisons": []}
    for name, (acc_s, ll_s) in sums.items():
        acc_se, acc_ci = interval(boot(acc_s))
        ll_se, ll_ci = interval(boot(ll_s))
        acc = point[name][0]
        out["models"][name] = {
            "accuracy_se": acc_se, "accuracy_ci95": acc_ci, "log_loss_se": ll_se, "log_loss_ci95": ll_ci,
            "accuracy_se_binomial": math.sqrt(acc * (1 - acc) / len(y)) if len(y) else None,
        }
    for a, b in comparisons:
        if a not in sums or b not in sums:
            continue
        gain_se, gain_ci = interval(boot(sums[a][0] - sums[b][0]))
        red_se, red_ci = interval(boot(sums[b][1] - sums[a][1]))
        out["comparisons"].append({
            "a": a, "b": b,
            "accuracy_gain": point[a][0] - point[b][0], "accuracy_gain_se": gain_se, "accuracy_gain_ci95": gain_ci,
            "accuracy_within_noise": None if gain_ci is None else bool(gain_ci[0] <= 0.0 <= gain_ci[1]),
            "log_loss_reduction": point[b][1] - point[a][1], "log_loss_reduction_se": red_se,
            "log_loss_reduction_ci95": red_ci,
            "log_loss_within_noise": None if red_ci is None else bool(red_ci[0] <= 0.0 <= red_ci[1]),
        })
    return out


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
def run_experiment(cfg: ExperimentConfig) -> Path:
    """Run the whole experiment (see the module docstring); returns the run directory."""
    from prefpred.data import load_data, load_extra
    from prefpred.metrics import compute_metrics, prior_proba
    from prefpred.models.llm import LLMPreferenceModel
    from prefpred.splits import normalize_prompt
    from prefpred.training.modeling import model_path
    from prefpred.types import label_matrix
    from prefpred.utils import set_seed

    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    if not cfg.model.name_or_path:
        raise ConfigError("model.name_or_path is empty: give a hub id or a local model directory (--model)")
    set_seed(cfg.seed)
    name = cfg.run_name("experiment")
    cfg = dataclasses.replace(cfg, name=name, inference=aligned_inference(cfg.model, cfg.inference))
    run_dir = Path(cfg.out_dir) / name
    resuming = prepare_run_dir(run_dir, overwrite=cfg.overwrite, resume=cfg.training.resume)

    # 1. data and split --------------------------------------------------------------------------------
    t0 = time.perf_counter()
    loaded = load_data(cfg.data, seed=cfg.seed)
    pairs = list(loaded.pairs)
    where = str(loaded.path or cfg.data.path or cfg.data.hub_dataset)
    if not pairs:
        raise DataError("no pairs", path=where)
    unlabelled = [p for p in pairs if p.label is None]
    if unlabelled:
        raise DataError(f"{len(unlabelled)} row(s) have no label (first: id {unlabelled[0].id!r}); an experiment "
                        "needs labelled data", path=where)
    extra = load_extra(cfg.data, seed=cfg.seed)
    splits = validation_split(pairs, cfg.validation_fraction, cfg.seed, cfg.group_by)
    is_val = splits["fold"].to_numpy(dtype=int) == VALIDATION_FOLD
    train_pairs = [p for p, v in zip(pairs, is_val, strict=True) if not v]
    val_pairs = [p for p, v in zip(pairs, is_val, strict=True) if v]
    val_groups = splits["group"].to_numpy()[is_val].tolist()
    val_prompts = {normalize_prompt(p.prompt) for p in val_pairs}
    extra_used = [e for e in extra if normalize_prompt(e.prompt) not in val_prompts]
    train_all = train_pairs + extra_used
    timing["load_s"] = time.perf_counter() - t0
    logger.info("%d training pairs (+%d extra), %d validation pairs (%d prompt groups)%s", len(train_pairs),
                len(extra_used), len(val_pairs), len(set(val_groups)), " (resuming)" if resuming else "")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    with atomic_path(run_dir / "splits.csv") as tmp:
        splits.to_csv(tmp, index=False)

    y_val = label_matrix(val_pairs)
    probas: dict[str, np.ndarray] = {"prior": prior_proba(label_matrix(train_pairs), len(val_pairs))}
    skipped: dict[str, str] = {}
    path = model_path(cfg.model)

    # 2. the base model, zero-shot ---------------------------------------------------------------------
    t0 = time.perf_counter()
    zero_shot_info = _zero_shot(cfg, path, val_pairs, probas, skipped)
    timing["zero_shot_s"] = time.perf_counter() - t0

    # 3-4. fine-tune, then score -----------------------------------------------------------------------
    t0 = time.perf_counter()
    model = LLMPreferenceModel(cfg.model, cfg.training, seed=cfg.seed, inference=cfg.inference)
    model.fit(train_all, eval_pairs=val_pairs, output_dir=run_dir)
    timing["train_s"] = time.perf_counter() - t0
    model.save(run_dir / "model")
    t0 = time.perf_counter()
    probas["fine_tuned"] = model.predict_proba(val_pairs)
    timing["score_s"] = time.perf_counter() - t0
    ft_stats = getattr(model, "inference_stats_", None)
    history = list(model.history_)
    result = model.training_result_
    del model
    _free_accelerator_memory()

    # 5. the CPU baseline ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    cpu_info = _cpu_baseline(cfg, train_all, val_pairs, probas, skipped)
    timing["cpu_s"] = time.perf_counter() - t0

    # 6. metrics, predictions, plots, report -----------------------------------------------------------
    from prefpred.submission import write_predictions
    from prefpred.training_analysis import analyze, plot_training_curves

    order = [k for k in MODEL_LABELS if k in probas]
    probas = {k: probas[k] for k in order}
    results = {k: compute_metrics(y_val, p) for k, p in probas.items()}
    boot = grouped_bootstrap(y_val, probas, val_groups, comparisons=COMPARISONS, n_boot=cfg.bootstrap_samples,
                             seed=cfg.seed)
    for k in results:
        results[k].update(boot["models"][k])
    val_ids = [p.id for p in val_pairs]
    for k, p in probas.items():
        if k != "prior":
            write_predictions(val_ids, p, run_dir / "predictions" / f"{k}.csv", labels=y_val)
    plot_training_curves(history, run_dir / "training_curves.png", title=f"Experiment {name}: fine-tuning")
    _plots(run_dir, name, y_val, probas, results, boot["n_groups"])

    comparisons = boot["comparisons"]
    improvement = next((c for c in comparisons if (c["a"], c["b"]) == ("fine_tuned", "base")), None)
    timing["total_s"] = time.perf_counter() - t_start
    metrics: dict[str, Any] = {
        "kind": "experiment",
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": cfg.seed,
        "base_model": cfg.model.name_or_path,
        "head": cfg.model.head,
        "method": cfg.model.method,
        "style": cfg.model.style_name,
        "zero_shot_style": (zero_shot_info.get("params") or {}).get("style"),
        "data_path": loaded.path or cfg.data.path,
        "extra_path": cfg.data.extra_path,
        "counts": {"pairs": len(pairs), "train": len(train_pairs), "validation": len(val_pairs),
                   "extra": len(extra), "extra_used": len(extra_used),
                   "train_groups": int(splits.loc[~is_val, "group"].nunique()),
                   "validation_groups": int(splits.loc[is_val, "group"].nunique())},
        "validation_fraction": cfg.validation_fraction,
        "group_by": cfg.group_by,
        "validation": results,
        "skipped": skipped,
        "improvement": improvement,
        "comparisons": comparisons,
        "bootstrap": {"n_boot": boot["n_boot"], "n_groups": boot["n_groups"], "unit": "prompt group"},
        "zero_shot": zero_shot_info,
        "fine_tuned": {"inference_stats": ft_stats},
        "cpu": cpu_info,
        "training": {
            "global_step": result.global_step, "best_step": result.best_step,
            "best_eval_loss": result.best_eval_loss, "resumed_from_step": result.resumed_from_step,
            "stopped_early": result.stopped_early, "train_runtime_s": result.train_runtime_s,
            "analysis": analyze(history),
        },
        "timing": timing,
    }
    metrics = json_safe(metrics)
    write_metrics(run_dir, metrics, kind="experiment")
    plots = sorted(p.name for p in run_dir.glob("*.png"))
    atomic_write_text(run_dir / "report.md", render_experiment_report(metrics, plots))
    if not cfg.keep_checkpoints:
        from prefpred.training.trainer import CHECKPOINT_DIR

        shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    mark_complete(run_dir)
    logger.info("experiment written to %s (%.1f s)", run_dir, timing["total_s"])
    return run_dir


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




# ------------------------------------------------------------------------------------------------ report

def _ci(ci: Sequence[float] | None, digits: int = 4, sign: bool = True) -> str:
    if not ci:
        return "no interval"
    return f"95% CI {fmt(ci[0], digits, sign)} to {fmt(ci[1], digits, sign)}"


def model_label(key: str, metrics: Mapping[str, Any]) -> str:
    """Readable row name of a model key of an experiment's ``metrics.json``."""
    if key == "base":
        return f"base model, zero-shot (`{metrics.get('zero_shot_style')}`, label-token probabilities)"
    if key == "fine_tuned":
        return f"fine-tuned ({metrics.get('method')}, `{metrics.get('head')}` head, `{metrics.get('style')}`)"
    return MODEL_LABELS.get(key, key)


def comparison_sentence(c: Mapping[str, Any]) -> list[str]:
    """Two report lines (accuracy, log loss) for one paired comparison of :func:`grouped_bootstrap`."""
    acc_noise, ll_noise = c.get("accuracy_within_noise"), c.get("log_loss_within_noise")

    def verdict(noise: bool | None, better: bool) -> str:
        if noise is None:
            return "no interval (too few prompt groups)"
        if noise:
            return "**within noise** (the interval contains 0)"
        return "**better**, beyond noise" if better else "**worse**, beyond noise"

    return [f"accuracy {fmt(c['accuracy_gain'], 4, True)} ({_ci(c.get('accuracy_gain_ci95'))}): "
            f"{verdict(acc_noise, c['accuracy_gain'] > 0)}",
            f"log loss {fmt(-c['log_loss_reduction'], 4, True)} (reduction {fmt(c['log_loss_reduction'], 4, True)}, "
            f"{_ci(c.get('log_loss_reduction_ci95'))}): {verdict(ll_noise, c['log_loss_reduction'] > 0)}"]


def render_experiment_report(metrics: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """Markdown ``report.md`` of an experiment from its ``metrics.json`` content."""
    from prefpred.training_analysis import describe

    m = metrics
    c = m.get("counts", {})
    res = m.get("validation", {})
    n_val = c.get("validation")
    lines = [f"# prefpred experiment `{m.get('name')}`", "",
             f"Created {m.get('created')} · seed {m.get('seed')} · model `{m.get('base_model')}` · method "
             f"`{m.get('method')}` · head `{m.get('head')}` · prompt style `{m.get('style')}` · total time "
             f"{fmt((m.get('timing') or {}).get('total_s'), 1)} s", "",
             f"Data: `{m.get('data_path') or 'hub dataset'}` — {c.get('pairs')} labelled pairs, split by prompt "
             f"(grouped by `{m.get('group_by')}`, stratified by label): {c.get('train')} training pairs "
             f"({c.get('train_groups')} prompt groups) and {n_val} validation pairs ({c.get('validation_groups')} "
             "prompt groups); no prompt is on both sides"
             + (f"; plus {c.get('extra_used')} extra training pairs" if c.get("extra_used") else "") + ".", "",
             f"## Results on the validation split (n = {n_val})", "",
             "| model | log loss | accuracy | accuracy 95% CI | Brier | ECE |", "|---|---|---|---|---|---|"]
    for key, r in res.items():
        lines.append(f"| {model_label(key, m)} | {fmt(r.get('log_loss'))} | {fmt(r.get('accuracy'), 4)} | "
                     f"{_ci(r.get('accuracy_ci95'), 3, False).replace('95% CI ', '')} | {fmt(r.get('brier'))} | "
                     f"{fmt(r.get('ece'))} |")
    for key in m.get("skipped") or {}:
        lines.append(f"| {model_label(key, m)} | – | – | – | – | – |")
    lines.append("")
    for key, reason in (m.get("skipped") or {}).items():
        lines.append(f"- {MODEL_LABELS.get(key, key)} not run: {reason}.")
    gen = (m.get("zero_shot") or {}).get("generation")
    if gen:
        lines.append(f"- Parsed generation: {100 * (gen.get('unparseable_rate') or 0):.1f}% of the generated "
                     "answers held no label digit (scored 1/3 each).")
    lines += ["- Confidence intervals: bootstrap over the validation prompt groups "
              f"({(m.get('bootstrap') or {}).get('n_boot')} resamples of {(m.get('bootstrap') or {}).get('n_groups')} "
              "groups; pairs sharing a prompt are resampled together).", ""]

    imp = m.get("improvement")
    lines += ["## Improvement: fine-tuned vs base model", ""]
    if imp:
        lines += [f"- {s}" for s in comparison_sentence(imp)]
    else:
        lines.append("- No comparison: the base model was not judged zero-shot (see above).")
    lines += ["", "| comparison | accuracy gain | 95% CI | log loss reduction | 95% CI |", "|---|---|---|---|---|"]
    short = {"prior": "class prior", "base": "base", "base_generation": "base (parsed)", "fine_tuned": "fine-tuned",
             "cpu": "CPU model"}
    for cmp in m.get("comparisons") or []:
        lines.append(f"| {short.get(cmp['a'], cmp['a'])} vs {short.get(cmp['b'], cmp['b'])} | "
                     f"{fmt(cmp['accuracy_gain'], 4, True)} | "
                     f"{_ci(cmp.get('accuracy_gain_ci95')).replace('95% CI ', '')} | "
                     f"{fmt(cmp['log_loss_reduction'], 4, True)} | "
                     f"{_ci(cmp.get('log_loss_reduction_ci95')).replace('95% CI ', '')} |")
    lines.append("")

    lines += ["## Reading these numbers honestly", ""]
    if n_val:
        se = math.sqrt(0.25 / n_val)
        lines.append(f"- With {n_val} validation pairs the standard error of an accuracy near 0.5 is about "
                     f"±{se:.3f} (binomial; the bootstrap over prompts above is wider when prompts repeat), so "
                     f"differences below roughly {2 * se:.3f} between two models cannot be told from noise.")
    noisy = [cmp for cmp in m.get("comparisons") or [] if cmp.get("accuracy_within_noise")
             and cmp.get("log_loss_within_noise")]
    if noisy:
        names = ", ".join(f"{short.get(x['a'], x['a'])} vs {short.get(x['b'], x['b'])}" for x in noisy)
        lines.append(f"- Within noise in both accuracy and log loss: {names}.")
    lines += ["- The fine-tuned model's best checkpoint (early stopping) and the CPU model's number of trees were "
              "chosen on these same validation pairs, so their numbers are slightly optimistic; the base model "
              "and the class prior were not tuned on them.",
              "- Chance accuracy is 1/3 and the uniform prediction's log loss is ln 3 = 1.0986; the class prior row "
              "is the bar any model must clear."]
    if "qwen2.5-0.5b" in str(m.get("base_model", "")).lower():
        s = STUDY_REFERENCE
        lines.append(f"- The study reported base {s['base_accuracy']:.4f} and fine-tuned "
                     f"{s['fine_tuned_accuracy']:.4f} validation accuracy with this model (one sampled digit "
                     "parsed, brief training): barely above chance, and within noise of each other.")
    lines.append("")

    t = m.get("training") or {}
    a = t.get("analysis") or {}
    lines += ["## Training analysis", "",
              f"{t.get('global_step')} optimizer steps; best eval loss {fmt(t.get('best_eval_loss'))} at step "
              f"{t.get('best_step')}" + (" (stopped early)" if t.get("stopped_early") else "")
              + (f"; resumed from step {t['resumed_from_step']}" if t.get("resumed_from_step") else "") + ".", "",
              "| figure | value |", "|---|---|",
              f"| train loss reduction (first vs last window) | "
              f"{fmt(a.get('loss_reduction_pct'), 1)}{'%' if a.get('loss_reduction_pct') is not None else ''} |",
              f"| minimum train loss | {fmt(a.get('min_loss'))} (step {fmt(a.get('min_loss_step'))}) |",
              f"| maximum token accuracy | {fmt(a.get('max_token_accuracy'), 3)} |",
              f"| train loss still falling at the end | {fmt(a.get('still_falling'))} |",
              f"| best eval loss | {fmt(a.get('min_eval_loss'))} (step {fmt(a.get('best_eval_step'))}) |", ""]
    lines += [f"- {line}" for line in describe(a)]
    lines.append("")
    lines += plots_section(plots)
    lines += ["## Files", "", "`config.yaml` (resolved config) · `splits.csv` (id → fold: 0 = validation, 1 = "
              "training) · `metrics.json` · `metrics.jsonl` (fine-tuning log) · `predictions/*.csv` (validation "
              "predictions per model) · `model/` (adapter or weights + tokenizer + head)", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI helpers
def parse_set_options(items: Sequence[str]) -> dict[str, Any]:
    """``["training.learning_rate=1e-4", "model.lora.r=8"]`` -> dotted overrides (values read as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. training.learning_rate=1e-4), got {item!r}")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            out[key] = value
    return out


def results_table(metrics: Mapping[str, Any]) -> list[Any]:
    """Rich renderables for the terminal: the models side by side, then the improvement lines."""
    from rich.table import Table

    table = Table(title=f"prefpred experiment {metrics.get('name', '')}: validation n="
                        f"{(metrics.get('counts') or {}).get('validation')}")
    for col in ("model", "log loss", "± SE", "accuracy", "± SE", "Brier"):
        table.add_column(col, justify="left" if col == "model" else "right")
    short = {"prior": "class prior", "base": "base model (zero-shot)", "base_generation": "base (parsed digit)",
             "fine_tuned": f"fine-tuned ({metrics.get('method')})", "cpu": "CPU model"}
    for key, r in (metrics.get("validation") or {}).items():
        table.add_row(short.get(key, key), fmt(r.get("log_loss")), fmt(r.get("log_loss_se")),
                      fmt(r.get("accuracy"), 4), fmt(r.get("accuracy_se"), 4), fmt(r.get("brier")),
                      style="dim" if key == "prior" else "bold" if key == "fine_tuned" else None)
    for key, reason in (metrics.get("skipped") or {}).items():
        table.add_row(short.get(key, key), "–", "–", "–", "–", "–", style="dim")
        table.caption = (table.caption + "; " if table.caption else "") + f"{short.get(key, key)}: {reason}"
    out: list[Any] = [table]
    imp = metrics.get("improvement")
    if imp:
        out.append("improvement, fine-tuned vs base: " + "; ".join(s.replace("**", "")
                                                                  for s in comparison_sentence(imp)))
    return out


def build_experiment_report(run_dir: str | Path) -> Path:
    """Re-render ``report.md`` of an experiment run directory from its ``metrics.json`` and PNG files."""
    from prefpred.report import build_report

    path = Path(run_dir) / "metrics.json"
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("kind") != "experiment":
        raise UserError(f"{run_dir}: not an experiment run (metrics.json has no kind 'experiment')")
    return build_report(run_dir)
