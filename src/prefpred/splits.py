"""Leak-free splits: an ``id -> fold`` table grouped by prompt and stratified by label.

The same prompt is often asked many times in Chatbot Arena data; a model that sees a prompt in training and
again in validation is graded on memory, not on judgement. :func:`make_splits` therefore groups pairs by their
normalized first user message (:func:`normalize_prompt`) and keeps every group on one side of every cut:

1. a grouped, stratified **holdout** (``fold == HOLDOUT_FOLD``, about ``holdout_fraction`` of the rows), then
2. ``n_folds`` grouped, stratified cross-validation folds (``StratifiedGroupKFold``) over the rest.

Both steps are deterministic for a given seed. The table is saved as ``splits.csv`` (``id,fold,group``) in
every run directory, where ``group`` is a short hash of the normalized prompt (the text itself is not copied).
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from sklearn.model_selection import StratifiedGroupKFold

from prefpred.config import config_dataclass
from prefpred.types import DataError, Pair
from prefpred.utils import atomic_path

logger = logging.getLogger(__name__)

HOLDOUT_FOLD = -1
"""Fold number of holdout rows: they belong to no training or validation part of any fold."""

GROUP_BY_CHOICES = ("prompt", "none")
_UNLABELLED = 3  # stratum of pairs without a label


@config_dataclass
class SplitConfig:
    """How pairs are split into cross-validation folds and a holdout."""

    n_folds: Annotated[int, Field(ge=2)] = 5
    """Number K of grouped, stratified cross-validation folds (at least 2)."""
    holdout_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    """Fraction of rows (whole groups) set aside as a final holdout before the folds; 0 disables it."""
    group_by: Literal[GROUP_BY_CHOICES] = "prompt"
    """``prompt``: pairs with the same normalized first user message share a group; ``none``: no grouping."""


_WS = re.compile(r"\s+")


def _is_edge_char(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def normalize_prompt(text: str) -> str:
    """Casefold, collapse runs of whitespace to one space, strip punctuation and spaces at both ends.

    ``"  What is   2+2? "`` and ``"what is 2+2"`` normalize to the same string.
    """
    text = _WS.sub(" ", (text or "").casefold())
    start, end = 0, len(text)
    while start < end and _is_edge_char(text[start]):
        start += 1
    while end > start and _is_edge_char(text[end - 1]):
        end -= 1
    return text[start:end]


def group_key(pair: Pair, group_by: str) -> str:
    """The ``group`` a split table gives ``pair``: a hash of its normalized prompt (or of its id for ``none``)."""
    if group_by == "none":
        source = "id:" + pair.id
    else:
        source = "prompt:" + normalize_prompt(pair.prompt)
    return hashlib.sha1(source.encode("utf-8")).hexdigest()[:16]


def _strata(pairs: Sequence[Pair]) -> np.ndarray:
    return np.asarray([_UNLABELLED if p.label is None else int(np.argmax(p.label)) for p in pairs], dtype=int)


def _grouped_holdout(strata: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of whole groups whose per-class counts come close to ``fraction`` of each class.

    Groups are visited in a seeded random order (larger groups first, so they are placed while there is still
    room); each goes to the holdout when that brings the holdout's per-class counts closer to their targets.
    """
    n_classes = _UNLABELLED + 1
    uniq, inverse = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(uniq), n_classes))
    np.add.at(counts, (inverse, strata), 1.0)
    target = fraction * counts.sum(axis=0)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    sizes = counts.sum(axis=1)
    order = order[np.argsort(-sizes[order], kind="stable")]
    held = np.zeros(n_classes)
    chosen = np.zeros(len(uniq), dtype=bool)
    for g in order:
        before = np.abs(held - target).sum()
        after = np.abs(held + counts[g] - target).sum()
        if after < before:
            chosen[g] = True
            held += counts[g]
    return chosen[inverse]


def make_splits(pairs: Sequence[Pair], cfg: SplitConfig, seed: int) -> pd.DataFrame:
    """Assign every pair a fold: ``HOLDOUT_FOLD`` (-1) for the holdout, ``0..n_folds-1`` otherwise.

    Returns a DataFrame with columns ``id`` (str), ``fold`` (int) and ``group`` (str hash of the normalized
    first user message, or of the id with ``group_by="none"``), one row per pair in input order.
    """
    ids = [str(p.id) for p in pairs]
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise DataError(f"duplicate pair id {dup!r}: split tables need unique ids")
    groups = np.asarray([group_key(p, cfg.group_by) for p in pairs], dtype=object)
    strata = _strata(pairs)
    folds = np.full(len(pairs), HOLDOUT_FOLD, dtype=int)

    holdout = np.zeros(len(pairs), dtype=bool)
    if cfg.holdout_fraction > 0 and len(pairs):
        holdout = _grouped_holdout(strata, groups, cfg.holdout_fraction, seed)
    rest = np.flatnonzero(~holdout)
    n_groups = len(set(groups[rest]))
    if n_groups < cfg.n_folds:
        raise DataError(
            f"{n_groups} prompt group(s) outside the holdout, fewer than split.n_folds="
            f"{cfg.n_folds}: add data, lower n_folds or the holdout fraction"
        )
    sgkf = StratifiedGroupKFold(n_splits=cfg.n_folds, shuffle=True, random_state=seed % (2**32))
    for k, (_, val) in enumerate(sgkf.split(np.zeros(len(rest)), strata[rest], groups[rest])):
        folds[rest[val]] = k
    table = pd.DataFrame(
        {"id": pd.Series(ids, dtype=str), "fold": folds, "group": pd.Series(groups, dtype=str)}
    )
    logger.info(
        "splits: %d rows, %d groups, %d holdout rows, %d folds of ~%d rows",
        len(table),
        len(set(groups)),
        int(holdout.sum()),
        cfg.n_folds,
        len(rest) // max(cfg.n_folds, 1),
    )
    return table


def _positions(splits: pd.DataFrame, ids: Sequence[str]) -> np.ndarray:
    """Fold number of each of ``ids`` (in order); unknown ids raise a clear error."""
    table = pd.Series(splits["fold"].to_numpy(dtype=int), index=splits["id"].astype(str).to_numpy())
    if not table.index.is_unique:
        raise DataError("the split table has duplicate ids")
    wanted = pd.Index([str(i) for i in ids])
    missing = wanted[~wanted.isin(table.index)]
    if len(missing):
        examples = ", ".join(repr(m) for m in missing[:5])
        raise DataError(
            f"{len(missing)} id(s) are not in the split table (e.g. {examples}); "
            "were the splits made for other data?"
        )
    return table.reindex(wanted).to_numpy(dtype=int)


def iter_folds(splits: pd.DataFrame, ids: Sequence[str]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(fold, train_idx, val_idx)`` for each CV fold, as positional indices into ``ids``.

    Holdout rows are in neither part of any fold.
    """
    folds = _positions(splits, ids)
    for k in sorted(int(f) for f in np.unique(folds) if f != HOLDOUT_FOLD):
        val = np.flatnonzero(folds == k)
        train = np.flatnonzero((folds != k) & (folds != HOLDOUT_FOLD))
        yield k, train, val


def holdout_mask(splits: pd.DataFrame, ids: Sequence[str]) -> np.ndarray:
    """Boolean array: which of ``ids`` are in the holdout."""
    return _positions(splits, ids) == HOLDOUT_FOLD


def save_splits(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the split table as CSV (``id,fold`` and ``group`` when present), atomically."""
    cols = [c for c in ("id", "fold", "group") if c in df.columns]
    with atomic_path(path) as tmp:
        df[cols].to_csv(tmp, index=False)
    return Path(path)


def load_splits(path: str | Path) -> pd.DataFrame:
    """Read a split table written by :func:`save_splits` (ids stay strings)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("split file not found", path=str(path))
    df = pd.read_csv(path, dtype={"id": str, "group": str}, keep_default_na=False)
    for col in ("id", "fold"):
        if col not in df.columns:
            raise DataError(f"missing column {col!r} (expected id,fold)", path=str(path))
    try:
        df["fold"] = df["fold"].astype(int)
    except (TypeError, ValueError) as e:
        raise DataError(f"fold must be an integer ({e})", path=str(path), column="fold") from e
    df["id"] = df["id"].astype(str)
    return df
