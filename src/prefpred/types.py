"""The canonical pair record every stage of prefpred consumes.

A :class:`Pair` holds one comparison: a conversation of one or more turns, each turn a user message and the two
assistants' replies, plus the human label. Labels are always expressed over the three classes in
:data:`LABELS` (``a``, ``b``, ``tie``), in that order; a hard label is stored as a one-hot soft label, so code
that trains on soft labels (distillation) and code that trains on hard labels read the same field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

LABELS: tuple[str, str, str] = ("a", "b", "tie")
"""Class order used everywhere: probability arrays are ``n x 3`` in this order."""

LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}


class UserError(Exception):
    """An error caused by the user's input or environment, shown by the CLI as one line with exit code 2."""

    def one_line(self) -> str:
        return str(self)


class ConfigError(UserError, ValueError):
    """A bad configuration value or file."""


class MissingDependencyError(UserError, ImportError):
    """An optional dependency (e.g. vLLM, bitsandbytes) needed for the requested feature is not installed."""


class DataError(UserError, ValueError):
    """Bad input data, reported as one line: file, row, column and what is wrong.

    ``row`` is 1-based and counts data rows (the header of a CSV is not a row); ``None`` when the problem
    concerns the whole file.
    """

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 column: str | None = None):
        self.message = message
        self.path = path
        self.row = row
        self.column = column
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = []
        if self.path:
            where.append(str(self.path))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column:
            where.append(f"column {self.column!r}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


@dataclass(frozen=True)
class Turn:
    """One turn: the user's message and the two replies (``None`` items of the source become ``""``)."""

    prompt: str
    response_a: str
    response_b: str


@dataclass(frozen=True)
class Pair:
    """One pairwise comparison.

    Attributes:
        id: Unique identifier (string; Kaggle ids are integers written as strings).
        turns: The conversation, oldest turn first.
        label: Soft label over :data:`LABELS` (three probabilities summing to 1), or ``None`` for unlabelled
            (test) rows. Hard labels are one-hot.
        model_a: Name of the model that wrote response A, if known.
        model_b: Name of the model that wrote response B, if known.
        source: Where the row came from (e.g. ``arena``, ``autoj``).
        weight: Sample weight used in training (e.g. ``--extra-weight`` for synthetic pairs).
    """

    id: str
    turns: tuple[Turn, ...]
    label: tuple[float, float, float] | None = None
    model_a: str | None = None
    model_b: str | None = None
    source: str = "unknown"
    weight: float = 1.0
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def prompt(self) -> str:
        """The first user message (used for grouping splits)."""
        return self.turns[0].prompt if self.turns else ""

    @property
    def hard_label(self) -> str | None:
        """The most probable class name, or ``None`` when unlabelled."""
        if self.label is None:
            return None
        return LABELS[int(np.argmax(self.label))]

    @property
    def is_hard(self) -> bool:
        return self.label is not None and max(self.label) == 1.0

    def swapped(self) -> Pair:
        """The same pair with A and B exchanged (label and model names too)."""
        turns = tuple(Turn(t.prompt, t.response_b, t.response_a) for t in self.turns)
        label = None if self.label is None else (self.label[1], self.label[0], self.label[2])
        return replace(self, turns=turns, label=label, model_a=self.model_b, model_b=self.model_a)

    def text_a(self) -> str:
        return "\n\n".join(t.response_a for t in self.turns)

    def text_b(self) -> str:
        return "\n\n".join(t.response_b for t in self.turns)

    def text_prompt(self) -> str:
        return "\n\n".join(t.prompt for t in self.turns)


def one_hot(label: str) -> tuple[float, float, float]:
    """``"a"`` -> ``(1.0, 0.0, 0.0)`` and so on."""
    out = [0.0, 0.0, 0.0]
    out[LABEL_INDEX[label]] = 1.0
    return (out[0], out[1], out[2])


def label_matrix(pairs: Sequence[Pair]) -> np.ndarray:
    """``n x 3`` float array of the pairs' (soft) labels; raises if any pair is unlabelled."""
    if any(p.label is None for p in pairs):
        raise ValueError("label_matrix needs labelled pairs")
    return np.asarray([p.label for p in pairs], dtype=np.float64).reshape(len(pairs), 3)


def hard_labels(pairs: Sequence[Pair]) -> np.ndarray:
    """Integer class index (0=a, 1=b, 2=tie) of each pair's most probable label."""
    return label_matrix(pairs).argmax(axis=1)


def swap_proba(proba: np.ndarray) -> np.ndarray:
    """Exchange the A and B columns of an ``n x 3`` probability array."""
    proba = np.asarray(proba)
    return proba[:, [1, 0, 2]]


def check_run_name(name: str) -> str:
    """Raise :class:`ConfigError` (one line) unless ``name`` is a plain, visible folder name (a run's name)."""
    import os

    if (not name or not name.strip() or name in {".", ".."} or "/" in name or os.sep in name
            or name.startswith(".")):
        raise ConfigError(f"run name must be a plain folder name, got {name!r}")
    return name
