"""Writers: pairs as prefpred JSONL (:func:`write_pairs_jsonl`) or in the Kaggle LMSYS CSV layout
(:func:`write_arena_csv`), both atomically; :func:`pair_to_json` is the inverse of the ``prefpred-jsonl`` reader."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prefpred.data_io import ARENA_LABEL_COLUMNS, ARENA_TEXT_COLUMNS
from prefpred.types import Pair, one_hot
from prefpred.utils import atomic_path


def pair_to_json(pair: Pair) -> dict[str, Any]:
    """The prefpred JSONL record of a pair (inverse of the ``prefpred-jsonl`` reader)."""
    rec: dict[str, Any] = {
        "id": pair.id,
        "prompt": [t.prompt for t in pair.turns],
        "response_a": [t.response_a for t in pair.turns],
        "response_b": [t.response_b for t in pair.turns],
        "label": list(pair.label) if pair.label is not None else None,
        "model_a": pair.model_a,
        "model_b": pair.model_b,
        "source": pair.source,
    }
    if pair.weight != 1.0:
        rec["weight"] = pair.weight
    rec.update(pair.meta)
    return rec


def write_pairs_jsonl(pairs: Iterable[Pair], path: str | Path, *, force: bool = True) -> Path:
    """Write pairs as prefpred JSONL, atomically."""
    with atomic_path(path, force=force) as tmp, tmp.open("w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(pair_to_json(p), ensure_ascii=False) + "\n")
    return Path(path)


def write_arena_csv(pairs: Iterable[Pair], path: str | Path, *, labels: bool = True, force: bool = True) -> Path:
    """Write pairs in the Kaggle LMSYS layout, atomically: JSON-encoded turn lists and, with ``labels``, one-hot
    ``winner_model_a/b/tie`` columns (soft labels are written as their most probable class); without ``labels``
    the test layout ``id,prompt,response_a,response_b``."""
    cols = ["id", "model_a", "model_b", *ARENA_TEXT_COLUMNS, *ARENA_LABEL_COLUMNS] if labels \
        else ["id", *ARENA_TEXT_COLUMNS]
    with atomic_path(path, force=force) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for p in pairs:
            row = {"id": p.id, "model_a": p.model_a or "", "model_b": p.model_b or "",
                   "prompt": json.dumps([t.prompt for t in p.turns], ensure_ascii=False),
                   "response_a": json.dumps([t.response_a for t in p.turns], ensure_ascii=False),
                   "response_b": json.dumps([t.response_b for t in p.turns], ensure_ascii=False)}
            if labels:
                if p.hard_label is None:
                    raise ValueError(f"pair {p.id!r} has no label (write with labels=False for a test file)")
                row.update(zip(ARENA_LABEL_COLUMNS, (int(v) for v in one_hot(p.hard_label)), strict=True))
            w.writerow([row[c] for c in cols])
    return Path(path)
