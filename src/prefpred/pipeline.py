"""The main job: ``prefpred run`` — cross-validated training of the CPU model, honest evaluation, a run directory.

:func:`run_job` does, with one seed for everything:

1. load and validate the pairs (every row labelled, ids unique) and the optional extra training pairs;
2. split them (grouped by prompt): a holdout plus K folds (:mod:`prefpred.splits`);
3. for each fold, train on the fold's training part (+ extra pairs) with early stopping on its validation part,
   and predict the validation part: the out-of-fold (OOF) predictions;
4. score OOF (pooled and per fold, mean ± std) and a class-prior baseline;
5. fit a calibrator on the OOF predictions;
6. refit on every non-holdout row (+ extra pairs) with ``n_estimators`` = the folds' mean best iteration and
   score the holdout, raw and calibrated;
7. write the run directory (``config.yaml``, ``splits.csv``, ``metrics.json``, ``oof.csv``, ``holdout.csv``,
   ``model/``, ``calibration.json``, plots, ``report.md``).

Extra pairs (``DataConfig.extra_path``) are only ever added to training parts. Extra pairs whose normalized
prompt is also the prompt of a validation or holdout row are left out of that training part, so
teacher-labelled copies of evaluation prompts cannot leak.

The run directory is assembled by :func:`prefpred.runs.new_run_dir`: in a temporary folder beside it, moved
into place atomically and marked complete at the end, so a failed or killed run never replaces a complete one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from prefpred.calibration import METHODS, Calibrator
from prefpred.config import RunBase, config_dataclass
from prefpred.evaluation import align_predictions, evaluate_predictions  # noqa: F401  (moved; re-exported)
from prefpred.jobs import (
    JobData,
    check_classes,
    extra_prompt_keys,
    finish_run,
    leak_free_extra,
    load_job_data,
    write_run_files,
)
from prefpred.metrics import (
    compute_metrics,
    fold_summary,
    prior_proba,
    segment_metrics,
    swap_consistency,
)
from prefpred.models.cpu import CPUModelConfig, CPUPreferenceModel
from prefpred.runs import CALIBRATION_FILE, check_run_target, load_predictor, new_run_dir
from prefpred.splits import SplitConfig, holdout_mask, iter_folds, make_splits
from prefpred.submission import write_predictions
from prefpred.types import Pair, label_matrix
from prefpred.utils import set_seed

logger = logging.getLogger(__name__)

TOP_FEATURES = 20


@config_dataclass
class RunConfig(RunBase):
    """Everything a ``prefpred run`` needs; saved, resolved, as ``config.yaml`` in the run directory."""

    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    """Cross-validation folds and holdout."""
    model: CPUModelConfig = dataclasses.field(default_factory=CPUModelConfig)
    """The CPU (LightGBM) model."""
    calibrate: bool = True
    """Fit a calibrator on the out-of-fold predictions and apply it to holdout and ``predict`` output."""
    calibration_method: Literal[METHODS] = "temperature"
    """``temperature`` (one parameter, keeps the argmax), ``bias`` (temperature + class offsets) or ``vector``."""
    overwrite: bool = False
    """Replace an existing run directory of the same name (otherwise that is an error)."""


IMPORTANCE_TYPE = "share of the total split gain (LightGBM importance_type='gain')"
"""What ``top_features`` of a run's ``metrics.json`` measure."""


def _top_features(model: Any, k: int = TOP_FEATURES) -> list[dict[str, Any]]:
    """The model's ``feature_importance()`` (Series, DataFrame, dict or list of pairs) as sorted records."""
    try:
        imp = model.feature_importance()
    except (AttributeError, NotImplementedError):
        return []
    import pandas as pd

    if isinstance(imp, pd.DataFrame):
        name_col = next((c for c in ("feature", "name") if c in imp.columns), imp.columns[0])
        val_col = next((c for c in ("importance", "gain", "split") if c in imp.columns), imp.columns[-1])
        items = list(zip(imp[name_col], imp[val_col], strict=True))
    elif isinstance(imp, pd.Series):
        items = list(imp.items())
    elif isinstance(imp, dict):
        items = list(imp.items())
    else:
        items = [tuple(x) for x in imp]
    items = sorted(((str(n), float(v)) for n, v in items), key=lambda x: -x[1])[:k]
    return [{"feature": n, "importance": v} for n, v in items]


def _best_iterations(models_best: list[int | None], fallback: int) -> int:
    vals = [b for b in models_best if b]
    if not vals:
        return fallback
    return max(1, int(round(float(np.mean(vals)))))


# ---------------------------------------------------------------------------------------------- the job
@dataclasses.dataclass
class _Split:
    """The split table and, per row of the data, its label, holdout flag and position."""

    table: pd.DataFrame
    ids: list[str]
    hold: np.ndarray
    y: np.ndarray

    @property
    def cv_mask(self) -> np.ndarray:
        return ~self.hold


@dataclasses.dataclass
class _CV:
    """Out-of-fold results of the cross-validation."""

    oof: np.ndarray
    oof_prior: np.ndarray
    per_fold: list[dict[str, Any]]
    best_iters: list[int | None]


def run_job(cfg: RunConfig) -> Path:
    """Run cross-validated training and evaluation; returns the run directory (see the module docstring)."""
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    set_seed(cfg.seed, with_torch=None)  # torch only if embeddings already imported it
    cfg = dataclasses.replace(cfg, name=cfg.run_name("run"))
    run_dir = check_run_target(Path(cfg.out_dir) / cfg.name, force=cfg.overwrite)
    t0 = time.perf_counter()
    data = load_job_data(cfg.data, seed=cfg.seed)
    timing["load_s"] = time.perf_counter() - t0
    split = _split(cfg, data)
    with new_run_dir(cfg.out_dir, cfg.name, force=cfg.overwrite) as work:
        write_run_files(work, cfg, split.table)
        t0 = time.perf_counter()
        cv = _cross_validate(cfg, data, split)
        timing["cv_s"] = time.perf_counter() - t0
        calibrator = _calibrate(cfg, cv, split, work)
        t0 = time.perf_counter()
        final, refit = _refit(cfg, data, split, cv, work)
        timing["refit_s"] = time.perf_counter() - t0
        hold = _score_holdout(final, calibrator, data, split, cv, work)
        metrics = _metrics(cfg, data, split, cv, calibrator, final, refit, hold)
        metrics["analysis"] = _error_analysis(work, data, split, cv)
        _plots(work, cfg.name, metrics, split, cv, hold)
        timing["total_s"] = time.perf_counter() - t_start
        metrics["timing"] = timing
        finish_run(work, metrics, kind="cpu")
    logger.info("run written to %s (%.1f s)", run_dir, timing["total_s"])
    return run_dir


def _split(cfg: RunConfig, data: JobData) -> _Split:
    """Holdout + K folds grouped by prompt (:func:`prefpred.splits.make_splits`)."""
    table = make_splits(data.pairs, cfg.split, cfg.seed)
    ids = [p.id for p in data.pairs]
    return _Split(table=table, ids=ids, hold=holdout_mask(table, ids), y=label_matrix(data.pairs))


def _cross_validate(cfg: RunConfig, data: JobData, split: _Split) -> _CV:
    """Train on each fold's training part (+ leak-free extra pairs), early-stopped on and predicting its
    validation part: the out-of-fold predictions and per-fold metrics."""
    pairs, y = data.pairs, split.y
    hold_pairs = [p for p, h in zip(pairs, split.hold, strict=True) if h]
    extra_keys = extra_prompt_keys(data.extra)
    folds = list(iter_folds(split.table, split.ids))
    cv = _CV(oof=np.full((len(pairs), 3), np.nan), oof_prior=np.full((len(pairs), 3), np.nan), per_fold=[],
             best_iters=[])
    for fold, tr, va in tqdm(folds, desc="folds", unit="fold", disable=None):
        val_pairs = [pairs[i] for i in va]
        fold_extra = leak_free_extra(data.extra, val_pairs + hold_pairs, keys=extra_keys)
        train_pairs = [pairs[i] for i in tr] + fold_extra
        check_classes(train_pairs, data.where, part=f"the training part of fold {fold}")
        model = CPUPreferenceModel(cfg.model, seed=cfg.seed)
        model.fit(train_pairs, eval_pairs=val_pairs)
        cv.oof[va] = model.predict_proba(val_pairs)
        cv.oof_prior[va] = prior_proba(y[tr], len(va))
        best = getattr(model, "best_iteration_", None)
        cv.best_iters.append(int(best) if best else None)
        cv.per_fold.append({"fold": int(fold), "n_train": len(train_pairs), "n_val": len(va),
                            "n_extra": len(fold_extra), "best_iteration": int(best) if best else None,
                            **compute_metrics(y[va], cv.oof[va])})
        logger.info("fold %d: log loss %.4f, accuracy %.3f (best iteration %s)", fold,
                    cv.per_fold[-1]["log_loss"], cv.per_fold[-1]["accuracy"], best)
    return cv


def _calibrate(cfg: RunConfig, cv: _CV, split: _Split, work: Path) -> Calibrator | None:
    """Fit the calibrator on the out-of-fold predictions (``calibration.json``); ``None`` when off."""
    if not cfg.calibrate:
        return None
    m = split.cv_mask
    calibrator = Calibrator(cfg.calibration_method).fit(cv.oof[m], split.y[m])
    calibrator.save(work / CALIBRATION_FILE)
    return calibrator


def _refit(cfg: RunConfig, data: JobData, split: _Split, cv: _CV, work: Path,
           ) -> tuple[CPUPreferenceModel, dict[str, int]]:
    """Refit on every non-holdout row (+ leak-free extra pairs) with the folds' mean best iteration; ``model/``."""
    n_est = _best_iterations(cv.best_iters, cfg.model.n_estimators)
    hold_pairs = [p for p, h in zip(data.pairs, split.hold, strict=True) if h]
    refit_extra = leak_free_extra(data.extra, hold_pairs)
    cv_pairs = [p for p, h in zip(data.pairs, split.hold, strict=True) if not h]
    check_classes(cv_pairs + refit_extra, data.where, part="the refit's training pairs")
    final = CPUPreferenceModel(dataclasses.replace(cfg.model, n_estimators=n_est), seed=cfg.seed)
    final.fit(cv_pairs + refit_extra)
    final.save(work / "model")
    return final, {"n_estimators": n_est, "n_train": len(cv_pairs) + len(refit_extra),
                   "extra_used": len(refit_extra)}


@dataclasses.dataclass
class _Holdout:
    pairs: list[Pair]
    raw: np.ndarray | None
    final: np.ndarray | None
    swap: dict[str, Any]


def _score_holdout(final: CPUPreferenceModel, calibrator: Calibrator | None, data: JobData, split: _Split,
                   cv: _CV, work: Path) -> _Holdout:
    """Predict the holdout (raw and calibrated), write ``holdout.csv`` and ``oof.csv``, measure swap consistency."""
    y, hold, m = split.y, split.hold, split.cv_mask
    hold_pairs = [p for p, h in zip(data.pairs, hold, strict=True) if h]
    hold_raw = hold_final = None
    if hold_pairs:
        hold_raw = final.predict_proba(hold_pairs)
        hold_final = calibrator.transform(hold_raw) if calibrator else hold_raw
        write_predictions([p.id for p in hold_pairs], hold_final, work / "holdout.csv", labels=y[hold])
    write_predictions([split.ids[i] for i in np.flatnonzero(m)], cv.oof[m], work / "oof.csv", labels=y[m])
    cv_pairs = [p for p, h in zip(data.pairs, hold, strict=True) if not h]
    swap_pairs, swap_on = (hold_pairs, "holdout") if hold_pairs else (cv_pairs, "training (in-sample)")
    base = hold_raw if hold_pairs else final.predict_proba(swap_pairs)
    swapped = final.predict_proba([p.swapped() for p in swap_pairs])
    return _Holdout(pairs=hold_pairs, raw=hold_raw, final=hold_final,
                    swap={**swap_consistency(base, swapped), "on": swap_on})


def _metrics(cfg: RunConfig, data: JobData, split: _Split, cv: _CV, calibrator: Calibrator | None,
             final: CPUPreferenceModel, refit: dict[str, int], hold: _Holdout) -> dict[str, Any]:
    """The run's ``metrics.json`` content (without ``timing``)."""
    from prefpred.data import pairs_summary

    y, m = split.y, split.cv_mask
    oof_metrics = compute_metrics(y[m], cv.oof[m])
    prior_oof = compute_metrics(y[m], cv.oof_prior[m])
    holdout: dict[str, Any] | None = None
    prior_hold = None
    if hold.pairs:
        holdout = {"raw": compute_metrics(y[split.hold], hold.raw)}
        if calibrator:
            holdout["calibrated"] = compute_metrics(y[split.hold], hold.final)
        prior_hold = compute_metrics(y[split.hold], prior_proba(y[m], len(hold.pairs)))
    cv_pairs = [p for p, h in zip(data.pairs, split.hold, strict=True) if not h]
    summary = fold_summary(cv.per_fold)
    return {
        "name": cfg.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": cfg.seed,
        "model_kind": getattr(final, "kind", type(final).__name__),
        "embeddings": cfg.model.embeddings,
        "data_path": data.data_path,
        "extra_path": cfg.data.extra_path,
        "extra_weight": cfg.data.extra_weight,
        "counts": {"pairs": len(data.pairs), "cv": int(m.sum()), "holdout": int(split.hold.sum()),
                   "extra": len(data.extra), "extra_used_refit": refit["extra_used"],
                   "dropped_invalid": data.dropped},
        "headline": {
            "oof_log_loss": oof_metrics["log_loss"],
            "oof_log_loss_std": summary.get("log_loss", {}).get("std"),
            "oof_accuracy": oof_metrics["accuracy"],
            "oof_accuracy_std": summary.get("accuracy", {}).get("std"),
            "holdout_log_loss": holdout["raw"]["log_loss"] if holdout else None,
            "holdout_accuracy": holdout["raw"]["accuracy"] if holdout else None,
            "holdout_log_loss_calibrated": (holdout.get("calibrated", {}).get("log_loss")
                                            if holdout else None),
            "prior_oof_log_loss": prior_oof["log_loss"],
        },
        "cv": {"n_folds": len(cv.per_fold), "per_fold": cv.per_fold, "summary": summary, "oof": oof_metrics},
        "holdout": holdout,
        "prior": {"oof": prior_oof, "holdout": prior_hold},
        "calibration": calibrator.to_dict() if calibrator else None,
        "refit": {"n_estimators": refit["n_estimators"], "n_train": refit["n_train"]},
        "swap_consistency": hold.swap,
        "segments": segment_metrics(cv_pairs, cv.oof[m]).to_dict(orient="records"),
        "segments_on": "out-of-fold",
        "top_features": _top_features(final),
        "top_features_importance": IMPORTANCE_TYPE,
        "data": pairs_summary(data.pairs),
    }


def _error_analysis(work: Path, data: JobData, split: _Split, cv: _CV) -> dict[str, Any]:
    """Out-of-fold error analysis by segment and the most confidently wrong pairs (+ ``errors_by_segment.png``)."""
    from prefpred.analysis import write_analysis

    cv_pairs = [p for p, h in zip(data.pairs, split.hold, strict=True) if not h]
    return write_analysis(work, cv_pairs, cv.oof[split.cv_mask], on="out-of-fold")


def _plots(work: Path, name: str, metrics: dict[str, Any], split: _Split, cv: _CV, hold: _Holdout) -> None:
    """``model_comparison.png``, ``reliability.png`` and ``confusion.png`` (holdout; OOF without a holdout)."""
    from prefpred.plots import plot_confusion, plot_model_comparison, plot_reliability

    def point(m: dict[str, Any]) -> dict[str, Any]:
        return {"accuracy": m["accuracy"], "log_loss": m["log_loss"]}

    summary, prior, holdout = metrics["cv"]["summary"], metrics["prior"], metrics["holdout"]
    comparison = {"prior OOF": point(prior["oof"]),
                  "model OOF": {**point(metrics["cv"]["oof"]), "accuracy_std": summary.get("accuracy", {}).get("std"),
                                "log_loss_std": summary.get("log_loss", {}).get("std")}}
    if holdout:
        comparison["prior holdout"] = point(prior["holdout"])
        comparison["model holdout (raw)"] = point(holdout["raw"])
        if "calibrated" in holdout:
            comparison["model holdout (calibrated)"] = point(holdout["calibrated"])
    plot_model_comparison(comparison, work / "model_comparison.png", title=f"Run {name}")
    y, m = split.y, split.cv_mask
    if hold.pairs:
        calibrated = metrics["calibration"] is not None
        rel_sets = {"holdout raw": hold.raw, **({"holdout calibrated": hold.final} if calibrated else {})}
        plot_reliability(y[split.hold], rel_sets, work / "reliability.png")
        plot_confusion(y[split.hold], hold.final, work / "confusion.png",
                       title=f"Holdout confusion, {'calibrated' if calibrated else 'raw'} (n={len(hold.pairs)})")
    else:
        plot_reliability(y[m], {"OOF": cv.oof[m]}, work / "reliability.png")
        plot_confusion(y[m], cv.oof[m], work / "confusion.png", title=f"Out-of-fold confusion (n={int(m.sum())})")


# ---------------------------------------------------------------------------------------------- reuse
def predict_run(run_dir: str | Path, pairs: Sequence[Pair], calibrated: bool = True) -> np.ndarray:
    """``n x 3`` predictions of a run's final model (calibrated when the run fitted a calibrator)."""
    return load_predictor(run_dir, calibrated=calibrated).predict_proba(pairs)
