"""Prediction files: Kaggle submissions and prefpred's own ``oof.csv`` / ``holdout.csv``.

* :func:`write_submission` writes ``id,winner_model_a,winner_model_b,winner_tie`` with ids in input order and
  probabilities at 6 decimals whose rows sum to exactly 1;
* :func:`write_predictions` writes ``id,p_a,p_b,p_tie[,label]`` at full precision;
* :func:`read_predictions` reads either format back as ``(ids, proba)``: unique ids, probabilities in 0..1
  whose rows sum to 1 within :data:`SUM_TOLERANCE` (rescaled to exactly 1), else a one-line DataError.

All files are written atomically (temporary file, then rename), so an interrupted write never leaves half a
file, and an existing file is kept unless ``force=True``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prefpred.types import LABELS, DataError, UserError
from prefpred.utils import atomic_path

SUBMISSION_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")
PREDICTION_COLUMNS = ("p_a", "p_b", "p_tie")
DECIMALS = 6
_UNIT = 10**DECIMALS
SUM_TOLERANCE = 0.01
"""How far a read row's probabilities may sum from 1 (rounding) before it is refused; rows are rescaled."""


def _check(ids: Sequence[Any], proba: Any) -> tuple[list[str], np.ndarray]:
    ids = [str(i) for i in ids]
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise UserError(f"predictions must be an n x 3 array (a, b, tie), got shape {p.shape}")
    if len(ids) != len(p):
        raise UserError(f"{len(ids)} ids for {len(p)} prediction rows")
    bad = ~np.isfinite(p).all(axis=1)
    if bad.any():
        raise UserError(f"predictions contain NaN or infinite values (first at id {ids[int(np.argmax(bad))]})")
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise UserError(f"duplicate id {i!r} in predictions")
        seen.add(i)
    return ids, p


def round_rows(proba: Any, decimals: int = DECIMALS) -> np.ndarray:
    """Integer rows in units of ``10**-decimals`` that sum exactly to ``10**decimals``.

    Negative values are set to 0 and rows renormalised, rounded, and the rounding remainder goes to the
    last column (tie); should that push it outside [0, 1] the remainder goes to the largest column instead.
    """
    unit = 10**decimals
    p = np.clip(np.asarray(proba, dtype=np.float64), 0.0, None)
    sums = p.sum(axis=1, keepdims=True)
    p = np.divide(p, sums, out=np.full_like(p, 1 / 3), where=sums > 0)
    q = np.rint(p * unit).astype(np.int64)
    diff = unit - q.sum(axis=1)
    last = q[:, 2] + diff
    ok = (last >= 0) & (last <= unit)
    q[ok, 2] = last[ok]
    for i in np.flatnonzero(~ok):
        q[i, int(np.argmax(q[i]))] += diff[i]
    return q


def _fmt(units: int, decimals: int = DECIMALS) -> str:
    unit = 10**decimals
    return f"{units // unit}.{units % unit:0{decimals}d}"


def write_submission(ids: Sequence[Any], proba: Any, path: str | Path, force: bool = False) -> Path:
    """Write a Kaggle submission CSV; raises :class:`FileExistsError` if ``path`` exists and not ``force``."""
    ids, p = _check(ids, proba)
    q = round_rows(p)
    path = Path(path)
    with atomic_path(path, force=force) as tmp:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["id", *SUBMISSION_COLUMNS])
            for i, row in zip(ids, q, strict=True):
                w.writerow([i, *(_fmt(int(v)) for v in row)])
    return path


def write_predictions(ids: Sequence[Any], proba: Any, path: str | Path, labels: Any = None,
                      force: bool = True) -> Path:
    """Write ``id,p_a,p_b,p_tie[,label]`` (full precision). ``labels``: names, indices or an ``n x 3`` matrix
    (written as the most probable label name)."""
    ids, p = _check(ids, proba)
    df = pd.DataFrame({"id": ids, "p_a": p[:, 0], "p_b": p[:, 1], "p_tie": p[:, 2]})
    if labels is not None:
        from prefpred.metrics import label_targets

        t = label_targets(labels, len(ids))
        df["label"] = [LABELS[k] for k in t.argmax(axis=1)]
    with atomic_path(path, force=force) as tmp:
        df.to_csv(tmp, index=False, float_format="%.10g")
    return Path(path)


def read_predictions(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a Kaggle submission or a prefpred prediction file: ``(ids, n x 3 proba)`` in file order."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory (pass a predictions CSV, e.g. a run's holdout.csv or oof.csv)",
                                str(path))
    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    try:
        df = pd.read_csv(path, dtype={"id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"not a readable CSV ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                        path=str(path)) from e
    for cols in (SUBMISSION_COLUMNS, PREDICTION_COLUMNS):
        if set(cols) <= set(df.columns):
            break
    else:
        raise DataError(f"expected columns id,{','.join(SUBMISSION_COLUMNS)} or id,{','.join(PREDICTION_COLUMNS)};"
                        f" found {','.join(map(str, df.columns))}", path=str(path))
    if "id" not in df.columns:
        raise DataError("missing column", path=str(path), column="id")
    if df.empty:
        raise DataError("no prediction rows (only a header)", path=str(path))
    for c in cols:
        vals = pd.to_numeric(df[c], errors="coerce")
        if vals.isna().any():
            row = int(np.flatnonzero(vals.isna().to_numpy())[0]) + 1
            raise DataError("not a number", path=str(path), row=row, column=c)
        bad = ~((vals >= 0) & (vals <= 1)).to_numpy()  # also inf
        if bad.any():
            row = int(np.flatnonzero(bad)[0]) + 1
            raise DataError(f"{df[c].iloc[row - 1]} is not a probability (0..1)", path=str(path), row=row, column=c)
        df[c] = vals
    if df["id"].isna().any():
        row = int(np.flatnonzero(df["id"].isna().to_numpy())[0]) + 1
        raise DataError("empty id", path=str(path), row=row, column="id")
    ids = df["id"].astype(str).tolist()
    first_row: dict[str, int] = {}
    for row, i in enumerate(ids, start=1):
        if first_row.setdefault(i, row) != row:
            raise DataError(f"duplicate id {i!r} (first in row {first_row[i]})", path=str(path), row=row, column="id")
    return ids, _normalised(np.asarray(df[list(cols)].to_numpy(dtype=np.float64)), path)


def _normalised(proba: np.ndarray, path: Path) -> np.ndarray:
    """Rows scaled to sum to 1 (rounded files are a little off); a row off by more than ``SUM_TOLERANCE`` is refused."""
    sums = proba.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)
    if off.size:
        row = int(off[0])
        raise DataError(f"the 3 probabilities sum to {sums[row]:.6g}, not 1", path=str(path), row=row + 1)
    return proba / sums[:, None]
