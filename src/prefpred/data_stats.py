"""Summaries of a set of pairs (``prefpred data stats``, a run's ``metrics.json`` data section).

:func:`pairs_summary` works on any :class:`~prefpred.types.Pair` list, whatever reader produced it: rows, label
mix, soft labels, sources, turns, length percentiles in characters (not tokens) and three kinds of duplicates.
Length percentiles count the text of all turns joined; duplicates compare exact text (prompts case-folded).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from prefpred.types import LABELS, Pair


def _percentiles(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (5, 25, 50, 75, 95)} | {"max": float(arr.max())}


def has_text(pairs: Sequence[Pair]) -> bool:
    """Whether any pair has a prompt or response text (vote-only files such as ``arena-votes`` have none)."""
    return any(t.prompt or t.response_a or t.response_b for p in pairs for t in p.turns)


def pairs_summary(pairs: Sequence[Pair]) -> dict[str, Any]:
    """Rows, label mix, turns, length percentiles (characters) and duplicates of a set of pairs."""
    labels = Counter(p.hard_label or "unlabelled" for p in pairs)
    soft = sum(1 for p in pairs if p.label is not None and not p.is_hard)
    turns = Counter(len(p.turns) for p in pairs)
    content = Counter((p.text_prompt(), p.text_a(), p.text_b()) for p in pairs)
    prompts = Counter(p.prompt.strip().casefold() for p in pairs)
    return {
        "rows": len(pairs),
        "labels": {k: labels.get(k, 0) for k in (*LABELS, "unlabelled") if labels.get(k, 0) or k in LABELS},
        "soft_labels": soft,
        "sources": dict(Counter(p.source for p in pairs)),
        "has_text": has_text(pairs),
        "turns": {"single": turns.get(1, 0), "multi": sum(v for k, v in turns.items() if k > 1),
                  "max": max(turns) if turns else 0},
        "length_chars": {
            "prompt": _percentiles([len(p.text_prompt()) for p in pairs]),
            "response_a": _percentiles([len(p.text_a()) for p in pairs]),
            "response_b": _percentiles([len(p.text_b()) for p in pairs]),
        },
        "duplicates": {
            "identical_pairs": sum(c - 1 for c in content.values() if c > 1),
            "repeated_prompts": sum(c - 1 for c in prompts.values() if c > 1),
            "identical_responses": sum(1 for p in pairs if p.text_a() == p.text_b()),
        },
    }
