"""The run lifecycle: every job writes one self-describing run directory, the same way.

A run directory is assembled in a hidden temporary folder beside its final place (``.<name>.<random>.tmp``,
holding an ``.owner`` file with the writing process id). Only when every artifact is written does
:func:`new_run_dir` put it in place, atomically:

1. write the completion marker (:data:`COMPLETE_MARKER`) into the temporary folder;
2. rename an existing run of the same name aside (``.<name>.<random>.old``), only with ``force``;
3. rename the temporary folder into place;
4. delete the old run.

A kill at any point leaves either the old run or the new one complete under ``<name>`` (between 2 and 3 there
is briefly no ``<name>``, and the old run is still whole under its ``.old`` name: the next run of that name
puts it back if the new one never arrived). A run directory without the marker is incomplete:
:func:`read_run` and :func:`load_predictor` refuse it with one line. Leftover temporary folders of processes
that are no longer alive are removed the next time a run of the same name starts.

Runs that train in place (fine-tuning with checkpoints, which must survive a kill to be resumed) use
:func:`mark_complete` at their end instead of :func:`new_run_dir`.

:func:`load_predictor` turns any complete run into something with ``predict_proba(pairs) -> n x 3``: each run
kind registers a loader with :func:`register_predictor`; runs whose ``model/`` folder holds a saved
:class:`~prefpred.models.base.PreferenceModel` (the CPU model, fine-tuned LLMs) share the default loader, which
also applies the run's ``calibration.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from prefpred.types import Pair, UserError, check_run_name
from prefpred.utils import atomic_write_text, json_safe, naming_path, umask_mode

logger = logging.getLogger(__name__)

COMPLETE_MARKER = ".prefpred-complete"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
CALIBRATION_FILE = "calibration.json"
MODEL_DIR = "model"
_OWNER_FILE = ".owner"


class RunError(UserError):
    """A run directory that is missing, incomplete, foreign or damaged (one line, exit code 2)."""


# ------------------------------------------------------------------------------------------- writing
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _owner_alive(folder: Path) -> bool:
    try:
        return _pid_alive(int((folder / _OWNER_FILE).read_text().strip()))
    except (OSError, ValueError):
        return False


def _cleanup_leftovers(parent: Path, name: str) -> None:
    """Remove ``.<name>.*.tmp`` folders of dead processes; restore a ``.old`` run whose replacement never came."""
    final = parent / name
    for old in sorted(parent.glob(f".{name}.*.old")):
        if not final.exists() and (old / COMPLETE_MARKER).is_file():
            os.replace(old, final)
            logger.warning("restored %s from an interrupted replacement", final)
        elif not _owner_alive(old):
            shutil.rmtree(old, ignore_errors=True)
    for tmp in parent.glob(f".{name}.*.tmp"):
        if tmp.is_dir() and not _owner_alive(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            logger.info("removed leftover %s of an interrupted run", tmp)


def check_run_target(run_dir: str | Path, *, force: bool) -> Path:
    """Raise :class:`FileExistsError` (one line) when ``run_dir`` exists, is not empty and ``force`` is off."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not force and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise FileExistsError(f"{run_dir} exists (use --force or another --name)")
    return run_dir


@contextlib.contextmanager
def new_run_dir(out_dir: str | Path, name: str, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to write a run into; on success it becomes ``<out_dir>/<name>``, complete.

    Refuses (before anything is written) when ``<out_dir>/<name>`` exists and is not empty, unless ``force``.
    An exception inside the block removes the temporary folder and leaves any existing run untouched.
    """
    check_run_name(name)
    parent = Path(out_dir)
    parent.mkdir(parents=True, exist_ok=True)
    _cleanup_leftovers(parent, name)
    final = check_run_target(parent / name, force=force)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
    os.chmod(work, umask_mode(0o777))
    (work / _OWNER_FILE).write_text(f"{os.getpid()}\n")
    try:
        with naming_path(final):  # an OSError naming no file (ENOSPC) names the run
            yield work
            mark_complete(work)
            (work / _OWNER_FILE).unlink(missing_ok=True)
            old = None
            if final.exists() or final.is_symlink():
                check_run_target(final, force=force)  # the folder may have appeared meanwhile
                old = parent / f".{name}.{secrets.token_hex(4)}.old"
                os.replace(final, old)
            os.replace(work, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def mark_complete(run_dir: str | Path) -> Path:
    """Write the completion marker: from now on the run directory counts as complete."""
    return atomic_write_text(Path(run_dir) / COMPLETE_MARKER, "complete\n")


def is_complete(run_dir: str | Path) -> bool:
    return (Path(run_dir) / COMPLETE_MARKER).is_file()


def write_metrics(run_dir: str | Path, metrics: dict[str, Any], *, kind: str) -> Path:
    """Write ``metrics.json`` (JSON-safe: NaN -> null) with its ``kind`` first; returns the path."""
    body = {"kind": kind, **{k: v for k, v in metrics.items() if k != "kind"}}
    return atomic_write_text(Path(run_dir) / METRICS_FILE, json.dumps(json_safe(body), indent=2) + "\n")


# ------------------------------------------------------------------------------------------- reading
@dataclasses.dataclass(frozen=True)
class RunInfo:
    """A complete run directory, as read back: its path, ``kind`` and ``metrics.json`` contents."""

    path: Path
    kind: str
    metrics: dict[str, Any]


def infer_kind(metrics: dict[str, Any]) -> str | None:
    """``kind`` of metrics.json; runs written before every job named it carry only ``model_kind``."""
    kind = metrics.get("kind")
    if kind:
        return str(kind)
    legacy = {"lightgbm": "cpu", "cpu": "cpu", "llm": "llm"}
    return legacy.get(str(metrics.get("model_kind")))


def read_run(run_dir: str | Path) -> RunInfo:
    """Read a run directory's ``metrics.json``; one-line :class:`RunError` when missing, incomplete or damaged."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        if (run_dir / "config.yaml").is_file():  # a job that trains in place, stopped before it finished
            raise RunError(f"{run_dir}: incomplete run (it stopped before writing {METRICS_FILE}; run the same "
                           "command again to resume or start over, or --force to replace it)")
        raise RunError(f"{run_dir}: not a prefpred run directory (no {METRICS_FILE})")
    if not is_complete(run_dir):
        raise RunError(f"{run_dir}: incomplete run (interrupted or still running; no {COMPLETE_MARKER} marker)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: damaged ({type(e).__name__}: not valid JSON text)") from None
    if not isinstance(metrics, dict):
        raise RunError(f"{path}: damaged (expected a JSON object)")
    kind = infer_kind(metrics)
    if kind is None:
        raise RunError(f"{path}: no run 'kind' (not written by prefpred?)")
    return RunInfo(path=run_dir, kind=kind, metrics=metrics)


class Predictor(Protocol):
    """What :func:`load_predictor` returns: scores pairs as ``n x 3`` probabilities (a, b, tie)."""

    def predict_proba(self, pairs: Sequence[Pair]) -> np.ndarray: ...


PredictorLoader = Callable[[RunInfo, bool], Predictor]
_LOADERS: dict[str, PredictorLoader] = {}


def register_predictor(*kinds: str) -> Callable[[PredictorLoader], PredictorLoader]:
    """Decorator: ``loader(info, calibrated) -> Predictor`` serves runs of these kinds in :func:`load_predictor`."""

    def deco(fn: PredictorLoader) -> PredictorLoader:
        for kind in kinds:
            _LOADERS[kind] = fn
        return fn

    return deco


@dataclasses.dataclass
class ModelPredictor:
    """A run's saved model (``model/``) followed by the run's calibrator, when it has one and it is wanted."""

    model: Any
    calibrator: Any = None

    def predict_proba(self, pairs: Sequence[Pair]) -> np.ndarray:
        proba = np.asarray(self.model.predict_proba(list(pairs)), dtype=np.float64)
        return self.calibrator.transform(proba) if self.calibrator is not None else proba


def _damaged(what: Path, err: Exception) -> RunError:
    detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    return RunError(f"{what}: damaged or unreadable ({type(err).__name__}: {detail})")


@register_predictor("cpu", "llm")
def _load_model_run(info: RunInfo, calibrated: bool) -> ModelPredictor:
    from prefpred.calibration import Calibrator
    from prefpred.models.base import load_model

    model_dir = info.path / MODEL_DIR
    if not model_dir.is_dir():
        raise RunError(f"{info.path}: run has no {MODEL_DIR}/ folder")
    try:
        model = load_model(model_dir)
    except UserError:
        raise
    except Exception as e:  # a damaged LightGBM file, weights file or meta file: one line, not a traceback
        raise _damaged(model_dir, e) from e
    calibrator = None
    cal_path = info.path / CALIBRATION_FILE
    if calibrated and cal_path.is_file():
        try:
            calibrator = Calibrator.load(cal_path)
        except Exception as e:
            raise _damaged(cal_path, e) from e
    return ModelPredictor(model, calibrator)


def load_predictor(run_dir: str | Path, *, calibrated: bool = True) -> Predictor:
    """A complete run of any registered kind as a :class:`Predictor` (calibrated unless ``calibrated=False``)."""
    info = read_run(run_dir)
    _import_run_kinds()
    loader = _LOADERS.get(info.kind)
    if loader is None:
        raise RunError(f"{info.path}: run kind {info.kind!r} cannot predict (kinds that can: "
                       f"{', '.join(sorted(_LOADERS))})")
    return loader(info, calibrated)


def _import_run_kinds() -> None:
    """Import the modules that register loaders for run kinds defined outside this module."""
    import importlib

    for module in RUN_KIND_MODULES:
        importlib.import_module(module)


RUN_KIND_MODULES: tuple[str, ...] = ("prefpred.ensemble",)
"""Modules that call :func:`register_predictor` for their run kinds (e.g. ensembles), imported on demand."""


def run_overlap(run_dir: str | Path, pairs: Sequence[Pair]) -> int:
    """How many of ``pairs`` the run trained or validated on (see :func:`training_keys`)."""
    return count_in(training_keys(run_dir), pairs)


def training_keys(run_dir: str | Path) -> frozenset[tuple[str, str]]:
    """``(id, group)`` of every pair the run trained or validated on: its ``splits.csv`` outside the holdout (fold
    -1, never trained on). Empty for runs without one (a zero-shot judge) or with a foreign or damaged one."""
    import pandas as pd

    from prefpred.splits import HOLDOUT_FOLD

    splits = Path(run_dir) / "splits.csv"
    if not splits.is_file():
        return frozenset()
    try:
        table = pd.read_csv(splits, dtype={"id": str, "group": str}, usecols=["id", "fold", "group"],
                            keep_default_na=False)
        table = table[pd.to_numeric(table["fold"], errors="coerce") != HOLDOUT_FOLD]
    except (ValueError, KeyError, OSError, pd.errors.ParserError):  # a foreign or damaged file: no claim
        return frozenset()
    return frozenset(zip(table["id"], table["group"], strict=True))


def count_in(keys: frozenset[tuple[str, str]], pairs: Sequence[Pair]) -> int:
    """How many of ``pairs`` are in ``keys``: the same id with the same prompt (or id) group, so a reused id of
    another pair does not count."""
    from prefpred.splits import group_key

    if not keys:
        return 0
    return sum(1 for p in pairs if (p.id, group_key(p, "prompt")) in keys or (p.id, group_key(p, "none")) in keys)
