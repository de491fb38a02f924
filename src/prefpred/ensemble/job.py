"""``prefpred ensemble``: blend finished runs into a new run directory of kind ``ensemble``.

:func:`build_ensemble` does:

1. read the member runs and check that their held-out rows, labels and folds line up
   (:func:`prefpred.ensemble.members.load_members`; refused in one line otherwise);
2. optionally read the pairs (``data``, default: the first member's data file) for the stacker's cheap features;
   without them the stacker sees member probabilities only;
3. cross-validate every candidate over the members' folds and pick the one with the lowest log loss
   (:func:`prefpred.ensemble.select.cross_validate`), and score that choice honestly with nested validation
   (:func:`~prefpred.ensemble.select.nested_oof`): these nested out-of-fold predictions are the run's
   ``oof.csv`` and its headline number, fold by fold against every member;
4. refit the chosen candidate on all held-out rows and score the members' shared holdout, raw and calibrated;
5. write the run directory (atomically, :func:`prefpred.runs.new_run_dir`): ``config.yaml``, ``splits.csv`` (the
   members'), ``weights.json`` (members, combiner, calibrator), ``metrics.json`` (kind ``ensemble``),
   ``oof.csv``, ``holdout.csv``, plots and ``report.md``.

``prefpred predict``/``evaluate``/``serve`` then load it through :func:`prefpred.runs.load_predictor`, which
loads each member run (by its path relative to the ensemble, else its absolute path) and blends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.config import save_config
from prefpred.ensemble.blend import PAIR_FEATURES, Candidate, CandidateSpec, pair_features
from prefpred.ensemble.members import Member, holdout_arrays, load_members
from prefpred.ensemble.select import cross_validate, nested_oof
from prefpred.metrics import compute_metrics, label_targets, log_loss
from prefpred.runs import check_run_target, new_run_dir, write_metrics
from prefpred.submission import write_predictions
from prefpred.types import Pair, UserError
from prefpred.utils import atomic_write_text, json_safe

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.json"


@dataclasses.dataclass
class EnsembleConfig:
    """What ``prefpred ensemble`` blends and where the run goes; saved as the run's ``config.yaml``."""

    members: list[str] = dataclasses.field(default_factory=list)
    """Member run directories (absolute paths once resolved)."""
    name: str | None = None
    """Run name (default ``ensemble-<UTC timestamp>``)."""
    out_dir: str = "runs"
    data: str | None = None
    """Pairs of the members' held-out rows, for the stacker's pair features (default: first member's data)."""
    pair_features: bool = True
    """Give the stacker the cheap pair features (length ratio, multi-turn) when the pairs can be read."""
    overwrite: bool = False


def _pairs_by_id(cfg: EnsembleConfig, members: list[Member]) -> dict[str, Pair] | None:
    path = cfg.data or members[0].data_path
    if not cfg.pair_features or not path:
        return None
    if not Path(path).exists():
        logger.warning("data %s not found: the stacker sees member probabilities only", path)
        return None
    from prefpred.data import load_pairs

    try:
        return {p.id: p for p in load_pairs(path, skip_invalid=True)}
    except UserError as e:
        logger.warning("cannot read %s (%s): the stacker sees member probabilities only", path, e.one_line())
        return None


def _features(by_id: dict[str, Pair] | None, ids: list[str]) -> tuple[np.ndarray | None, list[Pair] | None]:
    if by_id is None or any(i not in by_id for i in ids):
        return None, None
    pairs = [by_id[i] for i in ids]
    return pair_features(pairs), pairs


def _per_fold(members: list[Member], y: np.ndarray, folds: np.ndarray, nested: np.ndarray) -> list[dict]:
    """Per fold: the nested ensemble against the best member (lowest pooled OOF log loss) and, in hindsight,
    against the member that happened to be best on that fold."""
    pooled = {mb.name: log_loss(y, mb.proba) for mb in members}
    best = min(pooled, key=pooled.get)
    rows = []
    for k in np.unique(folds):
        m = folds == k
        member_ll = {mb.name: log_loss(y[m], mb.proba[m]) for mb in members}
        fold_best = min(member_ll, key=member_ll.get)
        ens = log_loss(y[m], nested[m])
        rows.append({"fold": int(k), "n": int(m.sum()), "ensemble": ens, "best_member": best,
                     "best_member_log_loss": member_ll[best], "fold_best_member": fold_best,
                     "fold_best_log_loss": member_ll[fold_best], "members": member_ll,
                     "not_worse": bool(ens <= member_ll[best] + 1e-12)})
    return rows


def _never_worse_than_best_member(spec: CandidateSpec, nested: np.ndarray, P: np.ndarray, y: np.ndarray,
                                  names: list[str]) -> tuple[CandidateSpec, np.ndarray, dict[str, Any] | None]:
    """The chosen method, unless its nested out-of-fold log loss is worse than the best member's own: then the
    best member alone (its out-of-fold predictions are as honest as the nested ones), and why."""
    member_ll = [log_loss(y, p) for p in P]
    best = int(np.argmin(member_ll))
    ens_ll = log_loss(y, nested)
    if ens_ll <= member_ll[best]:
        return spec, nested, None
    logger.warning("scored by nested validation the ensemble reaches log loss %.4f, worse than its best member %s "
                   "(%.4f): using %s alone", ens_ll, names[best], member_ll[best], names[best])
    return (CandidateSpec("best-member"), P[best].copy(),
            {"instead_of": spec.name, "nested_log_loss": ens_ll, "best_member": names[best],
             "best_member_log_loss": member_ll[best]})


def _rel(target: Path, start: Path) -> str:
    try:
        return os.path.relpath(target, start)
    except ValueError:  # other drive on Windows
        return str(target)


@dataclasses.dataclass
class _Fit:
    """The members' held-out rows and the ensemble chosen, scored and refitted on them."""

    y: np.ndarray
    P: np.ndarray
    folds: np.ndarray
    X: np.ndarray | None
    pairs: list[Pair] | None
    by_id: dict[str, Pair] | None
    spec: CandidateSpec
    cv: Any
    nested: np.ndarray
    chosen: Any
    fallback: dict[str, Any] | None
    final: Candidate


def build_ensemble(cfg: EnsembleConfig) -> Path:
    """Blend the member runs of ``cfg`` into a new run directory; returns its path."""
    t0 = time.perf_counter()
    name = cfg.name or f"ensemble-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    out_dir = Path(cfg.out_dir)
    check_run_target(out_dir / name, force=cfg.overwrite)  # refuse before the work, not after it
    members = load_members(cfg.members)
    fit = _choose_and_fit(cfg, members)
    member_rows = {m.name: {"path": str(m.path), "kind": m.kind, "source": m.source,
                            "has_calibration": m.calibrated, "oof": compute_metrics(fit.y, m.proba)}
                   for m in members}
    hold = holdout_arrays(members)
    holdout, hold_pred = _score_holdout(fit, members, hold, member_rows)
    weights = _weights_doc(fit, members, (out_dir / name).resolve())
    metrics = _metrics(cfg, name, fit, members, member_rows, hold, holdout, weights)

    with new_run_dir(out_dir, name, force=cfg.overwrite) as work:
        save_config(dataclasses.replace(cfg, name=name, members=[str(m.path) for m in members]),
                    work / "config.yaml")
        shutil.copyfile(members[0].path / "splits.csv", work / "splits.csv")
        atomic_write_text(work / WEIGHTS_FILE, json.dumps(json_safe(weights), indent=2) + "\n")
        write_predictions(members[0].ids, fit.nested, work / "oof.csv", labels=fit.y)
        if holdout is not None and hold is not None and hold_pred is not None:
            write_predictions(hold[0], hold_pred, work / "holdout.csv", labels=label_targets(hold[2]))
        _plots(work, metrics, fit.y, fit.nested, members, hold, hold_pred, fit.pairs)
        metrics["timing"] = {"total_s": time.perf_counter() - t0}
        write_metrics(work, metrics, kind="ensemble")
        from prefpred.report import build_report

        build_report(work)
    logger.info("ensemble written to %s", out_dir / name)
    return out_dir / name


def _choose_and_fit(cfg: EnsembleConfig, members: list[Member]) -> _Fit:
    """Cross-validate the candidates, score the choice by nested validation (falling back to the best member when
    it loses) and refit it on all held-out rows."""
    ref = members[0]
    y = label_targets(ref.labels)
    P = np.stack([m.proba for m in members])
    folds = ref.folds
    by_id = _pairs_by_id(cfg, members)
    X, pairs = _features(by_id, ref.ids)
    logger.info("ensemble of %d members over %d held-out rows in %d folds (%s)", len(members), len(y),
                len(np.unique(folds)), "with pair features" if X is not None else "member probabilities only")
    cv = cross_validate(P, y, folds, X)
    nested, chosen = nested_oof(P, y, folds, X)
    spec, nested, fallback = _never_worse_than_best_member(cv.best, nested, P, y, [m.name for m in members])
    final = Candidate.fit(spec, P, y, X)
    cv_note = f"cross-validated log loss {cv.log_loss[spec.name]:.4f}; " if spec.name in cv.log_loss else ""
    logger.info("chosen %s: %snested %.4f", spec.name, cv_note, log_loss(y, nested))
    return _Fit(y=y, P=P, folds=folds, X=X, pairs=pairs, by_id=by_id, spec=spec, cv=cv, nested=nested,
                chosen=chosen, fallback=fallback, final=final)


def _score_holdout(fit: _Fit, members: list[Member], hold: Any, member_rows: dict[str, dict[str, Any]]
                   ) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """The refitted ensemble (raw and calibrated) and each member on the members' shared holdout, if any; the
    members' holdout metrics go into ``member_rows``."""
    if hold is None:
        return None, None
    h_ids, Ph, h_labels = hold
    Xh, _ = _features(fit.by_id, h_ids) if fit.X is not None else (None, None)
    if fit.X is not None and Xh is None:
        logger.warning("holdout pairs not found in the data: the holdout is not scored")
        return None, None
    yh = label_targets(h_labels)
    hold_pred = fit.final.predict(Ph, Xh)
    holdout = {"raw": compute_metrics(yh, fit.final.predict(Ph, Xh, calibrated=False))}
    if fit.final.calibrator is not None:
        holdout["calibrated"] = compute_metrics(yh, hold_pred)
    for i, m in enumerate(members):
        member_rows[m.name]["holdout"] = compute_metrics(yh, Ph[i])
    return holdout, hold_pred


def _weights_doc(fit: _Fit, members: list[Member], run_dir: Path) -> dict[str, Any]:
    """``weights.json``: the members (by path relative to the run, and absolute), combiner and calibrator."""
    names = [m.name for m in members]
    return {"members": [{"name": m.name, "path": _rel(m.path, run_dir), "abs_path": str(m.path)} for m in members],
            "method": fit.spec.name, "combiner": fit.final.combiner.to_dict(),
            "calibration": fit.final.calibrator.to_dict() if fit.final.calibrator is not None else None,
            "pair_features": list(PAIR_FEATURES) if fit.X is not None else [],
            "member_weights": dict(zip(names, fit.final.combiner.weights(len(members)), strict=True))}


def _metrics(cfg: EnsembleConfig, name: str, fit: _Fit, members: list[Member],
             member_rows: dict[str, dict[str, Any]], hold: Any, holdout: dict[str, Any] | None,
             weights: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json`` of the ensemble run (the nested out-of-fold numbers are the headline)."""
    y, ref = fit.y, members[0]
    nested_metrics = compute_metrics(y, fit.nested)
    metrics: dict[str, Any] = {
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_kind": "ensemble",
        "data_path": cfg.data or ref.data_path,
        "method": fit.spec.name,
        "member_weights": weights["member_weights"],
        "counts": {"pairs": len(y) + (len(hold[0]) if hold else 0), "cv": len(y),
                   "holdout": len(hold[0]) if hold else 0, "members": len(members)},
        "headline": {
            "oof_log_loss": nested_metrics["log_loss"], "oof_accuracy": nested_metrics["accuracy"],
            "holdout_log_loss": holdout["raw"]["log_loss"] if holdout else None,
            "holdout_accuracy": holdout["raw"]["accuracy"] if holdout else None,
            "holdout_log_loss_calibrated": (holdout.get("calibrated", {}).get("log_loss") if holdout else None),
            "best_member_oof_log_loss": min(r["oof"]["log_loss"] for r in member_rows.values()),
        },
        "cv": {"n_folds": len(np.unique(fit.folds)), "oof": nested_metrics,
               "per_fold": _per_fold(members, y, fit.folds, fit.nested), "nested_choices": fit.chosen,
               "candidates": fit.cv.log_loss, "source": ref.source},
        "holdout": holdout,
        "members": member_rows,
        "fallback": fit.fallback,
    }
    if fit.pairs is not None:
        from prefpred.analysis import analyze

        metrics["analysis"] = analyze(fit.pairs, fit.nested, on="nested out-of-fold")
    return metrics


def _plots(work: Path, metrics: dict[str, Any], y: np.ndarray, nested: np.ndarray, members: list[Member],
           hold: Any, hold_pred: np.ndarray | None, pairs: list[Pair] | None) -> None:
    from prefpred.plots import plot_model_comparison, plot_reliability

    comparison = {m.name: {"log_loss": r["oof"]["log_loss"], "accuracy": r["oof"]["accuracy"]}
                  for m, r in zip(members, metrics["members"].values(), strict=True)}
    comparison["ensemble (nested)"] = {"log_loss": metrics["cv"]["oof"]["log_loss"],
                                       "accuracy": metrics["cv"]["oof"]["accuracy"]}
    plot_model_comparison(comparison, work / "model_comparison.png",
                          title=f"Members vs ensemble ({metrics['method']}), out-of-fold")
    if hold_pred is not None:
        plot_reliability(label_targets(hold[2]), {"ensemble holdout": hold_pred}, work / "reliability.png")
    else:
        plot_reliability(y, {"ensemble nested OOF": nested}, work / "reliability.png")
    if metrics.get("analysis"):
        from prefpred.plots import plot_segment_log_loss

        plot_segment_log_loss(metrics["analysis"]["segments"], work / "errors_by_segment.png")
