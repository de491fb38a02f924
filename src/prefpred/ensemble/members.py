"""Reading ensemble members: the held-out predictions of finished runs, checked to line up row for row.

A member is any complete run directory (:func:`prefpred.runs.read_run`) with held-out predictions of labelled
rows and the ``splits.csv`` they came from:

* ``oof.csv`` (``prefpred run``: out-of-fold predictions of K-fold cross-validation), whose rows carry their fold
  from ``splits.csv``; or
* ``validation.csv`` (``prefpred train``: one validation part), whose rows are put in :data:`VALIDATION_FOLDS`
  folds by a stable hash of their prompt group, so the ensemble can still be validated fold by fold.

Members enter the ensemble *raw*: a run's ``calibration.json`` was fitted on the very out-of-fold rows the ensemble
is fitted and validated on, so applying it would make every member look better than it is; the ensemble
calibrates the blend itself (and its predictor loads members with ``calibrated=False``). ``holdout.csv`` holds
calibrated predictions; the run's temperature / bias calibration is undone exactly (a softmax of ``w log p + b``
with one scale ``w`` is inverted up to a per-row constant); a holdout calibrated otherwise is not used.

:func:`load_members` refuses, with one line naming the runs, members whose ids, labels or folds differ (they were
run on other data, another seed or another split config) or that use different prediction files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prefpred.runs import CALIBRATION_FILE, read_run
from prefpred.splits import HOLDOUT_FOLD, load_splits
from prefpred.submission import read_predictions
from prefpred.types import LABELS, UserError

logger = logging.getLogger(__name__)

SOURCES = ("oof.csv", "validation.csv")
VALIDATION_FOLDS = 5


class EnsembleError(UserError):
    """Members that cannot be blended (one line, exit code 2)."""


@dataclasses.dataclass
class Member:
    """One member run's held-out predictions, rows sorted by id."""

    name: str
    path: Path
    kind: str
    source: str
    ids: list[str]
    proba: np.ndarray
    labels: list[str]
    folds: np.ndarray
    holdout_ids: list[str] | None
    holdout_proba: np.ndarray | None
    holdout_labels: list[str] | None
    data_path: str | None
    calibrated: bool


def _read_labelled(path: Path) -> tuple[list[str], np.ndarray, list[str] | None]:
    ids, proba = read_predictions(path)
    df = pd.read_csv(path, dtype={"id": str, "label": str}, usecols=lambda c: c in ("id", "label"),
                     keep_default_na=False)
    labels = df["label"].tolist() if "label" in df.columns else None
    if labels is not None and any(lab not in LABELS for lab in labels):
        raise EnsembleError(f"{path}: column 'label' must hold {', '.join(LABELS)}")
    return ids, proba, labels


def uncalibrate(calibrator: Any, q: np.ndarray) -> np.ndarray | None:
    """The raw probabilities behind ``calibrator.transform(p) == q`` for one-scale (temperature / bias)
    calibrators; ``None`` for per-class scales, which cannot be undone."""
    w, b = np.asarray(calibrator.weights_, dtype=np.float64), np.asarray(calibrator.bias_, dtype=np.float64)
    if not np.allclose(w, w[0]) or w[0] <= 0:
        logger.warning("calibration with per-class scales cannot be undone: holdout not used")
        return None
    z = (np.log(np.clip(q, 1e-300, None)) - b) / w[0]
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _stable_fold(group: str, k: int) -> int:
    return int.from_bytes(hashlib.sha256(group.encode()).digest()[:4], "big") % k


def _data_path(info: Any) -> str | None:
    path = info.metrics.get("data_path")
    if path:
        return str(path)
    cfg = info.path / "config.yaml"
    if cfg.is_file():
        from prefpred.config import read_yaml

        return (read_yaml(cfg).get("data") or {}).get("path")
    return None


def read_member(run_dir: str | Path, name: str | None = None) -> Member:
    """Read one member run (see the module docstring); one-line errors for anything missing."""
    info = read_run(run_dir)
    source = next((s for s in SOURCES if (info.path / s).is_file()), None)
    if source is None:
        raise EnsembleError(f"{info.path}: no held-out predictions to blend ({' or '.join(SOURCES)})")
    if not (info.path / "splits.csv").is_file():
        raise EnsembleError(f"{info.path}: no splits.csv (needed to line up the members' folds)")
    ids, proba, labels = _read_labelled(info.path / source)
    if labels is None:
        raise EnsembleError(f"{info.path / source}: no 'label' column (members need labelled held-out rows)")
    calibrator = None
    if (info.path / CALIBRATION_FILE).is_file():
        from prefpred.calibration import Calibrator

        calibrator = Calibrator.load(info.path / CALIBRATION_FILE)
    splits = load_splits(info.path / "splits.csv").set_index("id")
    missing = [i for i in ids if i not in splits.index]
    if missing:
        raise EnsembleError(f"{info.path}: {len(missing)} id(s) of {source} are not in splits.csv "
                            f"(e.g. {missing[0]!r})")
    if source == "oof.csv":
        folds = splits.loc[ids, "fold"].to_numpy(dtype=int)
        if np.any(folds == HOLDOUT_FOLD):
            raise EnsembleError(f"{info.path}: oof.csv holds holdout rows (fold {HOLDOUT_FOLD})")
    else:
        groups = splits.loc[ids, "group"] if "group" in splits.columns else pd.Series(ids)
        folds = np.array([_stable_fold(str(g), VALIDATION_FOLDS) for g in groups], dtype=int)
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    h_ids = h_proba = h_labels = None
    if (info.path / "holdout.csv").is_file():
        h_ids, h_proba, h_labels = _read_labelled(info.path / "holdout.csv")
        h_proba = uncalibrate(calibrator, h_proba) if calibrator is not None else h_proba
    if h_proba is not None:
        h_order = np.argsort(np.asarray(h_ids, dtype=object), kind="stable")
        h_ids, h_proba = [h_ids[i] for i in h_order], h_proba[h_order]
        h_labels = [h_labels[i] for i in h_order] if h_labels is not None else None
    return Member(name=name or info.path.name, path=info.path.resolve(), kind=info.kind, source=source,
                  ids=[ids[i] for i in order], proba=proba[order], labels=[labels[i] for i in order],
                  folds=folds[order], holdout_ids=h_ids, holdout_proba=h_proba, holdout_labels=h_labels,
                  data_path=_data_path(info), calibrated=calibrator is not None)


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        base = Path(p).resolve().name
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _first_diff(a: Sequence[Any], b: Sequence[Any]) -> int:
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)


def check_aligned(members: Sequence[Member]) -> None:
    """Raise :class:`EnsembleError` unless every member has the same ids, labels and folds as the first."""
    ref = members[0]
    for m in members[1:]:
        where = f"{ref.path} and {m.path}"
        if m.source != ref.source:
            raise EnsembleError(f"{where}: one has {ref.source}, the other {m.source}; members must be the same "
                                "kind of held-out predictions")
        if m.ids != ref.ids:
            only = sorted(set(ref.ids) ^ set(m.ids))
            detail = f"{len(only)} id(s) in only one (e.g. {only[0]!r})" if only else "same ids, other order"
            raise EnsembleError(f"{where}: held-out ids do not line up ({detail}); members must be run on the "
                                "same data with the same seed and split config")
        if m.labels != ref.labels:
            i = _first_diff(ref.labels, m.labels)
            raise EnsembleError(f"{where}: labels differ (e.g. id {ref.ids[i]!r}: {ref.labels[i]} vs "
                                f"{m.labels[i]}); were they run on the same data?")
        if not np.array_equal(m.folds, ref.folds):
            n = int((m.folds != ref.folds).sum())
            i = int(np.argmax(m.folds != ref.folds))
            raise EnsembleError(f"{where}: folds differ for {n} id(s) (e.g. id {ref.ids[i]!r}); members must "
                                "share data, seed and split config")


def load_members(run_dirs: Sequence[str | Path]) -> list[Member]:
    """Read and check the member runs; at least two distinct runs are needed."""
    paths = [Path(p) for p in run_dirs]
    if len(paths) < 2:
        raise EnsembleError("an ensemble needs at least two member runs")
    if len({p.resolve() for p in paths}) != len(paths):
        raise EnsembleError("the same run is given twice")
    members = []
    for path, name in zip(paths, _unique_names(paths), strict=True):
        members.append(read_member(path, name))
    check_aligned(members)
    return members


def holdout_arrays(members: Sequence[Member]) -> tuple[list[str], np.ndarray, list[str]] | None:
    """``(ids, members x n x 3, labels)`` of the holdout when every member has the same labelled one."""
    ref = members[0]
    if any(m.holdout_ids is None or m.holdout_proba is None or m.holdout_labels is None for m in members):
        return None
    if any(m.holdout_ids != ref.holdout_ids for m in members):
        logger.warning("members' holdout.csv files cover different ids: the holdout is not scored")
        return None
    return ref.holdout_ids, np.stack([m.holdout_proba for m in members]), ref.holdout_labels
