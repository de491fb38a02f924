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
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from prefpred.calibration import METHODS, Calibrator
from prefpred.config import RunBase, save_config
from prefpred.evaluation import align_predictions, evaluate_predictions  # noqa: F401  (moved; re-exported)
from prefpred.metrics import (
    compute_metrics,
    fold_summary,
    prior_proba,
    segment_metrics,
    swap_consistency,
)
from prefpred.models.cpu import CPUModelConfig, CPUPreferenceModel
from prefpred.runs import CALIBRATION_FILE, check_run_target, load_predictor, new_run_dir, write_metrics
from prefpred.splits import SplitConfig, holdout_mask, iter_folds, make_splits, normalize_prompt, save_splits
from prefpred.submission import write_predictions
from prefpred.types import ConfigError, DataError, Pair, label_matrix
from prefpred.utils import set_seed

logger = logging.getLogger(__name__)

TOP_FEATURES = 20


@dataclasses.dataclass
class RunConfig(RunBase):
    """Everything a ``prefpred run`` needs; saved, resolved, as ``config.yaml`` in the run directory."""

    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    """Cross-validation folds and holdout."""
    model: CPUModelConfig = dataclasses.field(default_factory=CPUModelConfig)
    """The CPU (LightGBM) model."""
    calibrate: bool = True
    """Fit a calibrator on the out-of-fold predictions and apply it to holdout and ``predict`` output."""
    calibration_method: str = "temperature"
    """``temperature`` (one parameter, keeps the argmax), ``bias`` (temperature + class offsets) or ``vector``."""
    overwrite: bool = False
    """Replace an existing run directory of the same name (otherwise that is an error)."""

    def __post_init__(self) -> None:
        if self.calibration_method not in METHODS:
            raise ConfigError(f"calibration_method must be one of {list(METHODS)}, got {self.calibration_method!r}")
        if self.name is not None and (not self.name.strip() or "/" in self.name or self.name in {".", ".."}):
            raise ConfigError(f"name must be a plain folder name, got {self.name!r}")


def _validate(pairs: Sequence[Pair], where: str) -> None:
    if not pairs:
        raise DataError("no pairs to train on", path=where)
    unlabelled = [i for i, p in enumerate(pairs) if p.label is None]
    if unlabelled:
        raise DataError(f"{len(unlabelled)} row(s) have no label (first: id {pairs[unlabelled[0]].id!r}); "
                        "training needs labelled data", path=where)




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


def run_job(cfg: RunConfig) -> Path:
    """Run cross-validated training and evaluation; returns the run directory."""
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    set_seed(cfg.seed, with_torch=None)  # torch only if embeddings already imported it
    name = cfg.run_name("run")
    cfg = dataclasses.replace(cfg, name=name)
    run_dir = check_run_target(Path(cfg.out_dir) / name, force=cfg.overwrite)

    # 1. data ------------------------------------------------------------------------------------------
    from prefpred.data import load_data, load_extra, pairs_summary

    t0 = time.perf_counter()
    loaded = load_data(cfg.data, seed=cfg.seed)
    pairs = list(loaded.pairs)
    where = loaded.path or cfg.data.path or cfg.data.hub_dataset
    _validate(pairs, str(where))
    extra = load_extra(cfg.data, seed=cfg.seed)
    if extra:
        _validate(extra, str(cfg.data.extra_path))
    timing["load_s"] = time.perf_counter() - t0
    logger.info("loaded %d pairs from %s%s", len(pairs), where,
                f" and {len(extra)} extra training pairs" if extra else "")

    # 2. splits ----------------------------------------------------------------------------------------
    splits = make_splits(pairs, cfg.split, cfg.seed)
    ids = [p.id for p in pairs]
    hold = holdout_mask(splits, ids)
    y = label_matrix(pairs)
    prompt_keys = [normalize_prompt(p.prompt) for p in pairs]
    extra_keys = [normalize_prompt(p.prompt) for p in extra]
    holdout_keys = {k for k, h in zip(prompt_keys, hold, strict=True) if h}

    def extra_for(excluded: set[str]) -> list[Pair]:
        return [e for e, k in zip(extra, extra_keys, strict=True) if k not in excluded]

    with new_run_dir(cfg.out_dir, name, force=cfg.overwrite) as work:
        save_config(cfg, work / "config.yaml")
        save_splits(splits, work / "splits.csv")

        # 3. cross-validation --------------------------------------------------------------------------
        t0 = time.perf_counter()
        folds = list(iter_folds(splits, ids))
        oof = np.full((len(pairs), 3), np.nan)
        oof_prior = np.full((len(pairs), 3), np.nan)
        per_fold: list[dict[str, Any]] = []
        best_iters: list[int | None] = []
        n_extra_used = []
        for fold, tr, va in tqdm(folds, desc="folds", unit="fold", disable=None):
            val_keys = {prompt_keys[i] for i in va}
            fold_extra = extra_for(val_keys | holdout_keys)
            n_extra_used.append(len(fold_extra))
            train_pairs = [pairs[i] for i in tr] + fold_extra
            val_pairs = [pairs[i] for i in va]
            model = CPUPreferenceModel(cfg.model, seed=cfg.seed)
            model.fit(train_pairs, eval_pairs=val_pairs)
            oof[va] = model.predict_proba(val_pairs)
            oof_prior[va] = prior_proba(y[tr], len(va))
            best = getattr(model, "best_iteration_", None)
            best_iters.append(int(best) if best else None)
            per_fold.append({"fold": int(fold), "n_train": len(train_pairs), "n_val": len(va),
                             "n_extra": len(fold_extra), "best_iteration": int(best) if best else None,
                             **compute_metrics(y[va], oof[va])})
            logger.info("fold %d: log loss %.4f, accuracy %.3f (best iteration %s)", fold,
                        per_fold[-1]["log_loss"], per_fold[-1]["accuracy"], best)
        timing["cv_s"] = time.perf_counter() - t0
        cv_mask = ~hold
        oof_metrics = compute_metrics(y[cv_mask], oof[cv_mask])
        prior_oof_metrics = compute_metrics(y[cv_mask], oof_prior[cv_mask])

        # 4. calibration on OOF ------------------------------------------------------------------------
        calibrator = None
        cal_info: dict[str, Any] | None = None
        if cfg.calibrate:
            calibrator = Calibrator(cfg.calibration_method).fit(oof[cv_mask], y[cv_mask])
            calibrator.save(work / CALIBRATION_FILE)
            cal_info = calibrator.to_dict()

        # 5. refit on all non-holdout rows -------------------------------------------------------------
        t0 = time.perf_counter()
        n_est = _best_iterations(best_iters, cfg.model.n_estimators)
        refit_cfg = dataclasses.replace(cfg.model, n_estimators=n_est)
        refit_extra = extra_for(holdout_keys)
        cv_pairs = [p for p, h in zip(pairs, hold, strict=True) if not h]
        final = CPUPreferenceModel(refit_cfg, seed=cfg.seed)
        final.fit(cv_pairs + refit_extra)
        final.save(work / "model")
        timing["refit_s"] = time.perf_counter() - t0

        # 6. holdout -----------------------------------------------------------------------------------
        hold_pairs = [p for p, h in zip(pairs, hold, strict=True) if h]
        holdout: dict[str, Any] | None = None
        prior_hold_metrics = None
        hold_raw = hold_final = None
        if hold_pairs:
            hold_raw = final.predict_proba(hold_pairs)
            hold_final = calibrator.transform(hold_raw) if calibrator else hold_raw
            holdout = {"raw": compute_metrics(y[hold], hold_raw)}
            if calibrator:
                holdout["calibrated"] = compute_metrics(y[hold], hold_final)
            prior_hold_metrics = compute_metrics(y[hold], prior_proba(y[cv_mask], len(hold_pairs)))
            write_predictions([p.id for p in hold_pairs], hold_final, work / "holdout.csv", labels=y[hold])
        write_predictions([ids[i] for i in np.flatnonzero(cv_mask)], oof[cv_mask], work / "oof.csv",
                          labels=y[cv_mask])

        # 7. diagnostics -------------------------------------------------------------------------------
        swap_pairs, swap_on = (hold_pairs, "holdout") if hold_pairs else (cv_pairs, "training (in-sample)")
        base = hold_raw if hold_pairs else final.predict_proba(swap_pairs)
        swapped = final.predict_proba([p.swapped() for p in swap_pairs])
        swap = {**swap_consistency(base, swapped), "on": swap_on}
        segments = segment_metrics(cv_pairs, oof[cv_mask])

        summary = fold_summary(per_fold)
        metrics: dict[str, Any] = {
            "name": name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seed": cfg.seed,
            "model_kind": getattr(final, "kind", type(final).__name__),
            "data_path": loaded.path or cfg.data.path,
            "extra_path": cfg.data.extra_path,
            "extra_weight": cfg.data.extra_weight,
            "counts": {"pairs": len(pairs), "cv": int(cv_mask.sum()), "holdout": int(hold.sum()),
                       "extra": len(extra), "extra_used_refit": len(refit_extra),
                       "dropped_invalid": len(getattr(loaded, "dropped", []) or [])},
            "headline": {
                "oof_log_loss": oof_metrics["log_loss"],
                "oof_log_loss_std": summary.get("log_loss", {}).get("std"),
                "oof_accuracy": oof_metrics["accuracy"],
                "oof_accuracy_std": summary.get("accuracy", {}).get("std"),
                "holdout_log_loss": holdout["raw"]["log_loss"] if holdout else None,
                "holdout_accuracy": holdout["raw"]["accuracy"] if holdout else None,
                "holdout_log_loss_calibrated": (holdout.get("calibrated", {}).get("log_loss")
                                                if holdout else None),
                "prior_oof_log_loss": prior_oof_metrics["log_loss"],
            },
            "cv": {"n_folds": len(folds), "per_fold": per_fold, "summary": summary, "oof": oof_metrics},
            "holdout": holdout,
            "prior": {"oof": prior_oof_metrics, "holdout": prior_hold_metrics},
            "calibration": cal_info,
            "refit": {"n_estimators": n_est, "n_train": len(cv_pairs) + len(refit_extra)},
            "swap_consistency": swap,
            "segments": segments.to_dict(orient="records"),
            "segments_on": "out-of-fold",
            "top_features": _top_features(final),
            "data": pairs_summary(pairs),
        }
        from prefpred.analysis import write_analysis  # error analysis section + errors_by_segment.png
        metrics["analysis"] = write_analysis(work, cv_pairs, oof[cv_mask], on="out-of-fold")

        # 8. plots + report ----------------------------------------------------------------------------
        from prefpred.plots import plot_confusion, plot_model_comparison, plot_reliability
        from prefpred.report import build_report

        comparison = {
            "prior OOF": {"accuracy": prior_oof_metrics["accuracy"], "log_loss": prior_oof_metrics["log_loss"]},
            "model OOF": {"accuracy": oof_metrics["accuracy"], "log_loss": oof_metrics["log_loss"],
                          "accuracy_std": summary.get("accuracy", {}).get("std"),
                          "log_loss_std": summary.get("log_loss", {}).get("std")},
        }
        if holdout:
            comparison["prior holdout"] = {"accuracy": prior_hold_metrics["accuracy"],
                                           "log_loss": prior_hold_metrics["log_loss"]}
            comparison["model holdout"] = {"accuracy": holdout["raw"]["accuracy"],
                                           "log_loss": holdout["raw"]["log_loss"]}
            if "calibrated" in holdout:
                comparison["model holdout (calibrated)"] = {"accuracy": holdout["calibrated"]["accuracy"],
                                                            "log_loss": holdout["calibrated"]["log_loss"]}
        plot_model_comparison(comparison, work / "model_comparison.png", title=f"Run {name}")
        if hold_pairs:
            rel_sets = {"holdout raw": hold_raw, **({"holdout calibrated": hold_final} if calibrator else {})}
            plot_reliability(y[hold], rel_sets, work / "reliability.png")
            plot_confusion(y[hold], hold_final, work / "confusion.png",
                           title=f"Holdout confusion (n={len(hold_pairs)})")
        else:
            plot_reliability(y[cv_mask], {"OOF": oof[cv_mask]}, work / "reliability.png")
            plot_confusion(y[cv_mask], oof[cv_mask], work / "confusion.png",
                           title=f"Out-of-fold confusion (n={int(cv_mask.sum())})")
        timing["total_s"] = time.perf_counter() - t_start
        metrics["timing"] = timing
        write_metrics(work, metrics, kind="cpu")
        build_report(work)
    logger.info("run written to %s (%.1f s)", run_dir, timing["total_s"])
    return run_dir


# ---------------------------------------------------------------------------------------------- reuse
def predict_run(run_dir: str | Path, pairs: Sequence[Pair], calibrated: bool = True) -> np.ndarray:
    """``n x 3`` predictions of a run's final model (calibrated when the run fitted a calibrator)."""
    return load_predictor(run_dir, calibrated=calibrated).predict_proba(pairs)
