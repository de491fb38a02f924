"""Battles: who met whom and who won, read and validated from a votes file or from pairs.

A :class:`Battles` table holds one row per battle: the two models (as indices into :attr:`Battles.models`), the
outcome as three probabilities ``(a, b, tie)`` (one-hot for human votes, soft for predicted ones) and, when the
battles carry text or style columns, per-side style counts (:data:`STYLE_FEATURES`).

Two kinds of input are read:

* **votes tables** (CSV, CSV.GZ or parquet without a ``prompt`` column): ``model_a``, ``model_b`` and either
  ``winner`` (``model_a``/``model_b``/``tie``/``both_bad``; ``tie (bothbad)`` = ``both_bad``) or the one-hot
  ``winner_model_a``/``winner_model_b``/``winner_tie`` columns; optional ``id`` and style columns
  ``<feature>_a``/``<feature>_b`` for features in :data:`STYLE_FEATURES`. Read with pandas, checked column-wise,
  so 100k+ rows take well under a second.
* **pairs with text** (every format :mod:`prefpred.data` reads, e.g. Kaggle ``train.csv``): model names from
  :attr:`Pair.model_a`/``model_b``, outcome from the (soft) label, style counts from the responses' text.

Checks raise :class:`~prefpred.types.DataError` with file, row and column: no model columns, an empty model
name, an unknown winner, a self-battle (a model against itself). With ``skip_invalid`` the bad rows are dropped
and counted instead. Models with fewer than ``min_battles`` battles are flagged and, by ``rare``, kept, dropped or
refused; battles whose models fall apart into groups that never meet are refused (their ratings would not be
comparable).

Limits: the outcome of a text pair is its label only (``both_bad`` is not distinguishable there: it is a tie);
style counts are simple regular-expression counts of Markdown, not a parser.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from prefpred.types import DataError, Pair, UserError

logger = logging.getLogger(__name__)

STYLE_FEATURES: tuple[str, ...] = ("length", "headers", "lists", "bold")
"""Per-response style counts: characters, Markdown header lines, list-item lines, bold spans."""

WINNERS = {"model_a": "a", "model_b": "b", "tie": "tie", "both_bad": "both_bad", "tie (bothbad)": "both_bad"}
"""Accepted ``winner`` values and what they mean."""

BOTH_BAD = ("tie", "drop")
RARE = ("keep", "drop", "error")
OUTCOME_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")

_HEADER = re.compile(r"^\s{0,3}#{1,6}\s", re.MULTILINE)
_LIST = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\S", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")


@dataclasses.dataclass
class Battles:
    """Validated battles; ``a``/``b`` index :attr:`models`, ``outcome`` is ``n x 3`` (a, b, tie)."""

    models: list[str]
    a: np.ndarray
    b: np.ndarray
    outcome: np.ndarray
    ids: list[str]
    source: str = ""
    style_a: np.ndarray | None = None
    style_b: np.ndarray | None = None
    style_names: tuple[str, ...] = ()
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    """Rows left out, by reason (``both_bad``, ``self-battle``, ``rare model``, ...)."""
    flags: dict[str, str] = dataclasses.field(default_factory=dict)
    """Model -> why its rating needs care (e.g. few battles)."""
    in_sample: int = 0
    """Predicted battles: how many of the judged pairs were in the judging run's own data (trained or validated
    on), whose predictions are therefore not out-of-sample."""

    def __len__(self) -> int:
        return len(self.a)

    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def has_style(self) -> bool:
        return self.style_a is not None and len(self.style_names) > 0

    def win_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Per battle, the share of a win each side gets: ``p_a + p_tie/2`` and ``p_b + p_tie/2``."""
        half_tie = self.outcome[:, 2] / 2
        return self.outcome[:, 0] + half_tie, self.outcome[:, 1] + half_tie

    def battle_counts(self) -> np.ndarray:
        """Battles per model (index as :attr:`models`)."""
        return np.bincount(self.a, minlength=self.n_models) + np.bincount(self.b, minlength=self.n_models)

    def subset(self, mask: np.ndarray) -> Battles:
        """The battles where ``mask`` holds, with models that no longer appear removed."""
        mask = np.asarray(mask, dtype=bool)
        a, b = self.a[mask], self.b[mask]
        used = np.unique(np.concatenate([a, b]))
        remap = np.full(self.n_models, -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        models = [self.models[i] for i in used]
        return dataclasses.replace(
            self, models=models, a=remap[a], b=remap[b], outcome=self.outcome[mask],
            ids=[i for i, keep in zip(self.ids, mask, strict=True) if keep],
            style_a=None if self.style_a is None else self.style_a[mask],
            style_b=None if self.style_b is None else self.style_b[mask],
            dropped=dict(self.dropped), flags={m: f for m, f in self.flags.items() if m in set(models)})

    def swapped(self) -> Battles:
        """Every battle with its sides exchanged (outcome and style too): ratings must not change."""
        return dataclasses.replace(self, a=self.b.copy(), b=self.a.copy(), outcome=self.outcome[:, [1, 0, 2]],
                                   style_a=self.style_b, style_b=self.style_a)


# ------------------------------------------------------------------------------------------------ building
def make_battles(model_a: Sequence[str], model_b: Sequence[str], outcome: np.ndarray, *,
                 ids: Sequence[str] | None = None, style_a: np.ndarray | None = None,
                 style_b: np.ndarray | None = None, style_names: Sequence[str] = (), source: str = "") -> Battles:
    """A :class:`Battles` from model names per row (models are indexed in sorted order)."""
    names_a = np.asarray(model_a, dtype=object)
    names_b = np.asarray(model_b, dtype=object)
    index = pd.Index(sorted(set(names_a) | set(names_b)))
    outcome = np.asarray(outcome, dtype=np.float64).reshape(len(names_a), 3)
    return Battles(models=list(index), a=index.get_indexer(names_a).astype(np.int64),
                   b=index.get_indexer(names_b).astype(np.int64), outcome=outcome,
                   ids=[str(i) for i in ids] if ids is not None else [str(i) for i in range(1, len(names_a) + 1)],
                   source=source, style_a=style_a, style_b=style_b, style_names=tuple(style_names))


def style_counts(text: str) -> list[float]:
    """The :data:`STYLE_FEATURES` counts of one response."""
    return [float(len(text)), float(len(_HEADER.findall(text))), float(len(_LIST.findall(text))),
            float(len(_BOLD.findall(text)))]


class _Drops:
    """Collects row errors: raises the first one, or (``skip_invalid``) marks its rows dropped and counts them."""

    def __init__(self, n: int, skip_invalid: bool):
        self.keep = np.ones(n, dtype=bool)
        self.skip_invalid = skip_invalid
        self.counts: Counter[str] = Counter()

    def check(self, bad: np.ndarray, reason: str, error) -> None:
        bad = np.asarray(bad, dtype=bool) & self.keep
        if not bad.any():
            return
        first = int(np.flatnonzero(bad)[0])
        if not self.skip_invalid:
            raise error(first, int(bad.sum()))
        self.counts[reason] += int(bad.sum())
        self.keep &= ~bad


def _check_names(names_a: np.ndarray, names_b: np.ndarray, drops: _Drops, path: str) -> None:
    for col, names in (("model_a", names_a), ("model_b", names_b)):
        drops.check(names == "", "empty model name", lambda i, n, col=col: DataError(
            f"empty model name ({n} such row(s); pass --skip-invalid to drop them)", path=path, row=i + 1,
            column=col))
    drops.check(names_a == names_b, "self-battle", lambda i, n: DataError(
        f"self-battle: {names_a[i]!r} against itself ({n} such row(s); pass --skip-invalid to drop them)",
        path=path, row=i + 1, column="model_b"))


# ------------------------------------------------------------------------------------------------ votes tables
def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError("file not found", path=str(path))
    if path.is_dir():
        raise DataError("is a directory (pass a battles file)", path=str(path))
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as e:
        raise DataError(f"not a readable table ({type(e).__name__}: {str(e).splitlines()[0][:120]})",
                        path=str(path)) from None
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise DataError("file has a header but no rows", path=str(path))
    return df


def _votes_outcome(df: pd.DataFrame, drops: _Drops, path: str, both_bad: str) -> np.ndarray:
    n = len(df)
    if "winner" in df.columns:
        raw = df["winner"].astype(str).str.strip().to_numpy(dtype=object)
        meaning = np.array([WINNERS.get(v, "?") for v in raw], dtype=object)
        drops.check(meaning == "?", "unknown winner", lambda i, k: DataError(
            f"unknown winner {raw[i]!r} (expected model_a, model_b, tie or both_bad; {k} such row(s))",
            path=path, row=i + 1, column="winner"))
        outcome = np.zeros((n, 3))
        outcome[meaning == "a", 0] = 1.0
        outcome[meaning == "b", 1] = 1.0
        outcome[(meaning == "tie") | (meaning == "both_bad"), 2] = 1.0
        bad_both = (meaning == "both_bad") & drops.keep
        if both_bad == "drop" and bad_both.any():
            drops.counts["both_bad"] += int(bad_both.sum())
            drops.keep &= ~bad_both
        return outcome
    if all(c in df.columns for c in OUTCOME_COLUMNS):
        values = np.zeros((n, 3))
        for k, col in enumerate(OUTCOME_COLUMNS):
            num = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
            drops.check(~np.isin(num, (0.0, 1.0)), f"{col} not 0/1", lambda i, m, col=col: DataError(
                f"must be 0 or 1, got {df[col].iloc[i]!r} ({m} such row(s))", path=path, row=i + 1, column=col))
            values[:, k] = np.nan_to_num(num)
        drops.check(values.sum(axis=1) != 1.0, "not one-hot", lambda i, m: DataError(
            f"outcome is not one-hot ({m} such row(s))", path=path, row=i + 1, column="winner_model_a"))
        return values
    raise DataError(f"no outcome column: a battles file needs 'winner' or {', '.join(OUTCOME_COLUMNS)} "
                    f"(found: {', '.join(df.columns)})", path=path, column="winner")


def _votes_style(df: pd.DataFrame, path: str) -> tuple[np.ndarray | None, np.ndarray | None, tuple[str, ...]]:
    names = tuple(f for f in STYLE_FEATURES if f"{f}_a" in df.columns and f"{f}_b" in df.columns)
    if not names:
        return None, None, ()
    sides = []
    for side in ("a", "b"):
        cols = []
        for f in names:
            col = f"{f}_{side}"
            num = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
            if (bad := ~np.isfinite(num) | (num < 0)).any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(f"style count must be a number >= 0, got {df[col].iloc[i]!r}", path=path,
                                row=i + 1, column=col)
            cols.append(num)
        sides.append(np.column_stack(cols))
    return sides[0], sides[1], names


def read_votes(path: str | Path, *, both_bad: str = "tie", skip_invalid: bool = False) -> Battles:
    """Battles from a votes table (see the module docstring)."""
    path = Path(path)
    where = str(path)
    df = _read_table(path)
    missing = [c for c in ("model_a", "model_b") if c not in df.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}: a battles file needs the names of both models "
                        f"(found: {', '.join(df.columns)})", path=where, column=missing[0])
    drops = _Drops(len(df), skip_invalid)
    names_a = df["model_a"].astype(str).str.strip().to_numpy(dtype=object)
    names_b = df["model_b"].astype(str).str.strip().to_numpy(dtype=object)
    _check_names(names_a, names_b, drops, where)
    outcome = _votes_outcome(df, drops, where, both_bad)
    style_a, style_b, style_names = _votes_style(df, where)
    ids = df["id"].astype(str).to_numpy(dtype=object) if "id" in df.columns else np.arange(1, len(df) + 1)
    keep = drops.keep
    if not keep.any():
        raise DataError("no battles left after dropping invalid rows", path=where)
    battles = make_battles(names_a[keep], names_b[keep], outcome[keep], ids=list(ids[keep]),
                           style_a=None if style_a is None else style_a[keep],
                           style_b=None if style_b is None else style_b[keep], style_names=style_names,
                           source=where)
    battles.dropped = dict(drops.counts)
    return battles


# ------------------------------------------------------------------------------------------------ pairs
def battles_from_pairs(pairs: Sequence[Pair], *, path: str = "", outcome: np.ndarray | None = None,
                       skip_invalid: bool = False) -> Battles:
    """Battles of pairs with model names; ``outcome`` (``n x 3``) replaces their labels (predicted battles)."""
    if not pairs:
        raise DataError("no pairs", path=path)
    if all(p.model_a is None and p.model_b is None for p in pairs):
        raise DataError("no model_a/model_b columns: a battles file needs the names of both models",
                        path=path, column="model_a")
    if outcome is None:
        if (unlabelled := [i for i, p in enumerate(pairs) if p.label is None]):
            raise DataError("unlabelled row (battles need an outcome; use --run to judge unlabelled pairs)",
                            path=path, row=unlabelled[0] + 1, column="label")
        outcome = np.asarray([p.label for p in pairs], dtype=np.float64)
    outcome = np.asarray(outcome, dtype=np.float64).reshape(len(pairs), 3)
    drops = _Drops(len(pairs), skip_invalid)
    names_a = np.array([(p.model_a or "").strip() for p in pairs], dtype=object)
    names_b = np.array([(p.model_b or "").strip() for p in pairs], dtype=object)
    _check_names(names_a, names_b, drops, path)
    keep = drops.keep
    if not keep.any():
        raise DataError("no battles left after dropping invalid rows", path=path)
    kept = [p for p, k in zip(pairs, keep, strict=True) if k]
    style_a = style_b = None
    names: tuple[str, ...] = ()
    if any(p.text_a() or p.text_b() for p in kept):
        style_a = np.asarray([style_counts(p.text_a()) for p in kept])
        style_b = np.asarray([style_counts(p.text_b()) for p in kept])
        names = STYLE_FEATURES
    battles = make_battles(names_a[keep], names_b[keep], outcome[keep], ids=[p.id for p in kept],
                           style_a=style_a, style_b=style_b, style_names=names, source=path)
    battles.dropped = dict(drops.counts)
    return battles


def _is_votes_table(path: Path) -> bool:
    """A table without text (no ``prompt`` column) is a votes table; anything else goes to prefpred.data."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            cols = set(pq.read_schema(path).names)
        except Exception:  # unreadable: let the reader say so in one line
            return True
        return "prompt" not in cols
    if not name.endswith((".csv", ".csv.gz")) or not path.is_file():
        return False
    import gzip

    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as f:
            header = f.readline()
    except OSError:
        return True
    cols = {c.strip().strip('"') for c in header.strip().split(",")}
    return "prompt" not in cols


def read_battles(path: str | Path, *, both_bad: str = "tie", skip_invalid: bool = False) -> Battles:
    """Battles from a votes table or any pairs file :mod:`prefpred.data` reads (see the module docstring)."""
    if both_bad not in BOTH_BAD:
        raise UserError(f"both_bad must be one of {', '.join(BOTH_BAD)}, got {both_bad!r}")
    path = Path(path)
    if _is_votes_table(path):
        battles = read_votes(path, both_bad=both_bad, skip_invalid=skip_invalid)
    else:
        from prefpred.data import read_pairs

        res = read_pairs(path, skip_invalid=skip_invalid)
        battles = battles_from_pairs(res.pairs, path=str(path), skip_invalid=skip_invalid)
        for reason, n in res.drop_summary().items():
            battles.dropped[reason] = battles.dropped.get(reason, 0) + n
    if battles.dropped:
        logger.warning("%s: rows left out: %s", path, ", ".join(f"{r} {n:,}" for r, n in battles.dropped.items()))
    return battles


# ------------------------------------------------------------------------------------------------ checks
def apply_min_battles(battles: Battles, min_battles: int, rare: str = "keep") -> Battles:
    """Flag models with fewer than ``min_battles`` battles; ``rare`` keeps, drops or refuses them."""
    if rare not in RARE:
        raise UserError(f"rare must be one of {', '.join(RARE)}, got {rare!r}")
    while True:
        counts = battles.battle_counts()
        few = np.flatnonzero(counts < min_battles)
        if len(few) == 0:
            return battles
        names = [battles.models[i] for i in few]
        if rare == "error":
            i = few[np.argmin(counts[few])]
            raise DataError(f"model {battles.models[i]!r} has only {counts[i]} battle(s) (< --min-battles "
                            f"{min_battles}; {len(few)} such model(s)); pass --rare keep or --rare drop",
                            path=battles.source, column="model_a")
        if rare == "keep":
            for i in few:
                battles.flags[battles.models[i]] = f"few battles ({counts[i]} < {min_battles})"
            logger.warning("%d model(s) with fewer than %d battles (kept, flagged): %s", len(few), min_battles,
                           ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
            return battles
        rare_mask = np.isin(battles.a, few) | np.isin(battles.b, few)
        dropped = dict(battles.dropped)
        dropped["rare model"] = dropped.get("rare model", 0) + int(rare_mask.sum())
        logger.warning("dropping %d model(s) with fewer than %d battles (%d battles): %s", len(few), min_battles,
                       int(rare_mask.sum()), ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
        if rare_mask.all():
            raise DataError(f"no battles left after dropping models with fewer than {min_battles} battles",
                            path=battles.source)
        battles = battles.subset(~rare_mask)
        battles.dropped = dropped


def check_connected(battles: Battles) -> None:
    """Refuse battles whose models form groups that never meet (their ratings are not comparable)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = battles.n_models
    graph = coo_matrix((np.ones(len(battles)), (battles.a, battles.b)), shape=(n, n))
    n_groups, labels = connected_components(graph, directed=False)
    if n_groups > 1:
        sizes = np.bincount(labels)
        small = int(np.argmin(sizes))
        example = battles.models[int(np.flatnonzero(labels == small)[0])]
        raise DataError(f"the models form {n_groups} groups that never meet (e.g. {example!r} and "
                        f"{int(sizes[small]) - 1} other(s) only battle each other): ratings across groups are "
                        "not comparable", path=battles.source, column="model_a")
