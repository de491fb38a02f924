"""The one interface every preference model implements.

A :class:`PreferenceModel` is trained on :class:`~prefpred.types.Pair` records, turns pairs into an ``n x 3``
probability array in the order ``a, b, tie`` (:data:`~prefpred.types.LABELS`), and saves to / loads from a
directory. Metrics, calibration, ensembles, submissions and reports only ever see that array, so they never
care which model made it.

Concrete models register themselves with :func:`register_model` under a ``kind`` name; a saved model
directory holds ``prefpred_model.json`` naming its kind, so :func:`load_model` can rebuild any of them.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.types import LABELS, Pair

MODEL_META_FILE = "prefpred_model.json"

_REGISTRY: dict[str, type[PreferenceModel]] = {}


class PreferenceModel(ABC):
    """Base class: ``fit`` on pairs, ``predict_proba`` to an ``n x 3`` array, ``save``/``load`` a directory."""

    kind: str = "base"
    classes_: tuple[str, str, str] = LABELS

    @abstractmethod
    def fit(self, pairs: Sequence[Pair], eval_pairs: Sequence[Pair] | None = None) -> PreferenceModel:
        """Train on labelled pairs (optionally early-stopping on ``eval_pairs``); returns ``self``."""

    @abstractmethod
    def predict_proba(self, pairs: Sequence[Pair]) -> np.ndarray:
        """``n x 3`` probabilities (rows sum to 1) in the order of :data:`LABELS`."""

    @abstractmethod
    def save(self, directory: str | Path) -> Path:
        """Write every artifact needed by :meth:`load` into ``directory``; returns it."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> PreferenceModel:
        """Rebuild a model saved with :meth:`save`."""

    def predict(self, pairs: Sequence[Pair]) -> list[str]:
        """Most probable label name per pair."""
        proba = self.predict_proba(pairs)
        return [LABELS[i] for i in np.asarray(proba).argmax(axis=1)]

    # helpers for subclasses -------------------------------------------------------------------------
    def _write_meta(self, directory: Path, extra: dict[str, Any] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "classes": list(LABELS), **(extra or {})}
        (directory / MODEL_META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def register_model(kind: str) -> Callable[[type[PreferenceModel]], type[PreferenceModel]]:
    """Class decorator: make a model loadable by :func:`load_model` under ``kind``."""

    def deco(cls: type[PreferenceModel]) -> type[PreferenceModel]:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return deco


def read_model_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MODEL_META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a prefpred model directory (no {MODEL_META_FILE})")
    return json.loads(path.read_text())


BUILTIN_KINDS: dict[str, str] = {
    "cpu": "prefpred.models.cpu",
    "llm": "prefpred.models.llm",
    "zero-shot": "prefpred.models.judge",
    "remote-judge": "prefpred.models.remote_judge",
}
"""Module that registers each built-in kind, imported only when a model of that kind is loaded (so loading a CPU
model never imports torch, and this module never imports its subclasses)."""


def _import_kind(kind: str) -> None:
    import importlib

    if kind not in _REGISTRY and kind in BUILTIN_KINDS:
        importlib.import_module(BUILTIN_KINDS[kind])


def load_model(directory: str | Path) -> PreferenceModel:
    """Load any registered model from a directory written by its ``save``."""
    meta = read_model_meta(directory)
    kind = meta["kind"]
    _import_kind(kind)
    if kind not in _REGISTRY:
        raise ValueError(f"{directory}: unknown model kind {kind!r} (known: {registered_kinds()})")
    return _REGISTRY[kind].load(directory)


def registered_kinds() -> list[str]:
    for kind in BUILTIN_KINDS:
        _import_kind(kind)
    return sorted(_REGISTRY)
