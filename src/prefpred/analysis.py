"""Error analysis: where a model's predictions are good and where they fail, for every run report and
``prefpred evaluate``.

:func:`segment_table` scores the predictions per segment of the pairs:

* ``turns``: single vs multi-turn conversations;
* ``length``: combined length of both responses (:data:`prefpred.metrics.LENGTH_BUCKETS`);
* ``length diff``: relative length difference ``(len A - len B) / (len A + len B)`` (:data:`LENGTH_DIFF_BUCKETS`)
  — a length model does well when the longer answer wins and badly when it loses;
* ``label``: tie vs not tie (the true label);
* ``category``: of the first prompt, by simple keyword rules (:func:`prompt_category`: code, math, writing,
  other) — a rough guide, not a classifier;
* ``script``: the writing system most letters of the first prompt use (:func:`prompt_script`);
* ``model``: pairs where one side is a given model, for the most frequent models, when names are present.

:func:`confident_errors` lists the most confidently wrong pairs (id, truncated prompt, predicted vs true).
:func:`analyze` bundles both as JSON-ready records (stored in ``metrics.json`` as ``analysis``);
:func:`analysis_section` renders them as report markdown and :func:`prefpred.plots.plot_segment_log_loss`
draws log loss by segment. Segments smaller than :data:`MIN_SEGMENT` rows are left out (too noisy to read).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from prefpred.metrics import LENGTH_BUCKETS, accuracy, brier_score, length_bucket, log_loss, normalize_proba
from prefpred.types import LABELS, Pair, label_matrix
from prefpred.utils import json_safe

MIN_SEGMENT = 5
TOP_MODELS = 8
TEXT_CHARS = 100

LENGTH_DIFF_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("B much longer (<-30%)", -np.inf, -0.3),
    ("B longer (-30..-10%)", -0.3, -0.1),
    ("similar (±10%)", -0.1, 0.1),
    ("A longer (+10..30%)", 0.1, 0.3),
    ("A much longer (>+30%)", 0.3, np.inf),
)

_CODE = re.compile(r"```|\bdef |\bclass |\bimport |#include|\bfunction\b|\bSELECT\b|\bpython\b|\bjava(script)?\b|"
                   r"\bc\+\+|\bsql\b|\bcode\b|\bbug\b|\bcompile|\bregex\b|\bapi\b|\bscript\b|\bhtml\b|\bjson\b",
                   re.IGNORECASE)
_MATH = re.compile(r"\d\s*[+*/^=]\s*\d|\d\s+-\s+\d|\bsolve\b|\bequation|\bcalculat|\bintegral|\bderivative|\bprobabilit|"
                   r"\bmath|\bsum of\b|\bhow many\b|\bprime\b|\bx\^?2\b|\bproof\b|\bprove\b", re.IGNORECASE)
_WRITING = re.compile(r"\bwrite\b|\bessay|\bpoem|\bstory|\bletter\b|\bemail\b|\brewrite|\brephrase|\bparagraph|"
                      r"\bsong\b|\blyrics|\bslogan|\bblog|\barticle|\bcover letter|\bhaiku", re.IGNORECASE)
CATEGORIES = ("code", "math", "writing", "other")


def prompt_category(text: str) -> str:
    """``code``, ``math``, ``writing`` or ``other`` by keyword rules on the prompt (first match wins)."""
    for name, rx in (("code", _CODE), ("math", _MATH), ("writing", _WRITING)):
        if rx.search(text):
            return name
    return "other"


def _script_of(ch: str) -> str | None:
    if not ch.isalpha():
        return None
    if ord(ch) < 0x250:
        return "latin"
    name = unicodedata.name(ch, "")
    for key, script in (("CJK", "cjk"), ("HIRAGANA", "cjk"), ("KATAKANA", "cjk"), ("HANGUL", "cjk"),
                        ("CYRILLIC", "cyrillic"), ("ARABIC", "arabic"), ("LATIN", "latin")):
        if name.startswith(key) or f" {key}" in name[:20]:
            return script
    return "other"


def prompt_script(text: str, max_chars: int = 400) -> str:
    """The writing system of most letters in ``text`` (latin, cjk, cyrillic, arabic, other; ``none``)."""
    counts = Counter(s for s in map(_script_of, text[:max_chars]) if s)
    return counts.most_common(1)[0][0] if counts else "none"


def _length_diff(pair: Pair) -> float:
    la, lb = len(pair.text_a()), len(pair.text_b())
    return (la - lb) / (la + lb) if la + lb else 0.0


def _groups(pairs: Sequence[Pair]) -> list[tuple[str, str, np.ndarray]]:
    n = len(pairs)
    groups: list[tuple[str, str, np.ndarray]] = [("all", "all", np.ones(n, dtype=bool))]
    turns = np.array([len(p.turns) for p in pairs])
    groups += [("turns", "single", turns <= 1), ("turns", "multi", turns > 1)]
    lengths = np.array([length_bucket(p) for p in pairs])
    groups += [("length", name, lengths == name) for name, _, _ in LENGTH_BUCKETS]
    diff = np.array([_length_diff(p) for p in pairs])
    groups += [("length diff", name, (diff >= lo) & (diff < hi)) for name, lo, hi in LENGTH_DIFF_BUCKETS]
    if all(p.label is not None for p in pairs):
        tie = label_matrix(pairs).argmax(1) == 2 if n else np.zeros(0, dtype=bool)
        groups += [("label", "tie", tie), ("label", "not tie", ~tie)]
    cats = np.array([prompt_category(p.prompt) for p in pairs])
    groups += [("category", c, cats == c) for c in CATEGORIES]
    scripts = np.array([prompt_script(p.prompt) for p in pairs])
    groups += [("script", s, scripts == s) for s, _ in Counter(scripts.tolist()).most_common()]
    names = Counter(m for p in pairs for m in {p.model_a, p.model_b} if m)
    for model, _ in names.most_common(TOP_MODELS):
        groups.append(("model", model, np.array([model in (p.model_a, p.model_b) for p in pairs])))
    return groups


SEGMENT_COLUMNS = ["segment", "value", "n", "share", "log_loss", "accuracy", "brier"]


def segment_table(pairs: Sequence[Pair], proba: Any, min_rows: int = MIN_SEGMENT) -> pd.DataFrame:
    """Metrics per segment (see the module docstring) of labelled ``pairs``; columns :data:`SEGMENT_COLUMNS`."""
    p = normalize_proba(proba)
    if len(pairs) != len(p):
        raise ValueError(f"{len(pairs)} pairs for {len(p)} predictions")
    t = label_matrix(pairs)
    rows = []
    for segment, value, mask in _groups(pairs):
        m = int(mask.sum())
        if m < min_rows and segment != "all" or m == 0:
            continue
        rows.append({"segment": segment, "value": value, "n": m, "share": m / len(pairs),
                     "log_loss": log_loss(t[mask], p[mask]), "accuracy": accuracy(t[mask], p[mask]),
                     "brier": brier_score(t[mask], p[mask])})
    return pd.DataFrame(rows, columns=SEGMENT_COLUMNS)


def _short(text: str, k: int = TEXT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= k else text[: k - 1] + "…"


def confident_errors(pairs: Sequence[Pair], proba: Any, k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` wrong predictions with the highest predicted probability, most confident first."""
    p = normalize_proba(proba)
    t = label_matrix(pairs).argmax(1)
    pred = p.argmax(1)
    conf = p[np.arange(len(p)), pred]
    wrong = np.flatnonzero(pred != t)
    order = wrong[np.argsort(-conf[wrong], kind="stable")][:k]
    return [{"id": pairs[i].id, "prompt": _short(pairs[i].prompt), "predicted": LABELS[pred[i]],
             "p_predicted": float(conf[i]), "true": LABELS[t[i]], "p_true": float(p[i, t[i]]),
             "len_a": len(pairs[i].text_a()), "len_b": len(pairs[i].text_b())} for i in order]


def analyze(pairs: Sequence[Pair], proba: Any, *, on: str = "held-out", k: int = 10) -> dict[str, Any]:
    """Segments and most confident errors of labelled pairs' predictions, JSON-ready."""
    return json_safe({"on": on, "segments": segment_table(pairs, proba).to_dict(orient="records"),
                      "confident_errors": confident_errors(pairs, proba, k)})


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.0f}"
    return str(v).replace("|", "\\|")


def analysis_section(analysis: Mapping[str, Any] | None) -> list[str]:
    """Markdown lines of the error analysis (empty without one)."""
    if not analysis:
        return []
    lines = ["## Error analysis", "", f"On the {analysis.get('on', 'held-out')} predictions. Segments under "
             f"{MIN_SEGMENT} rows are left out; prompt categories come from keyword rules.", ""]
    cols = ["segment", "value", "n", "share", "log_loss", "accuracy"]
    lines += ["| " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|" + "---|" * len(cols)]
    for s in analysis.get("segments") or []:
        lines.append("| " + " | ".join(_cell(s.get(c)) for c in cols) + " |")
    lines.append("")
    errors = analysis.get("confident_errors") or []
    if errors:
        lines += ["### Most confidently wrong", "",
                  "| id | prompt | predicted | true | len A | len B |", "|---|---|---|---|---|---|"]
        for e in errors:
            lines.append(f"| `{e['id']}` | {_cell(e['prompt'])} | {e['predicted']} ({e['p_predicted']:.2f}) | "
                         f"{e['true']} ({e['p_true']:.2f}) | {e['len_a']:,} | {e['len_b']:,} |")
        lines.append("")
    return lines


def write_analysis(run_dir: Any, pairs: Sequence[Pair], proba: Any, *, on: str = "out-of-fold") -> dict[str, Any]:
    """:func:`analyze` the predictions and draw ``errors_by_segment.png`` into ``run_dir``; returns the analysis
    (what a run stores as ``metrics["analysis"]``)."""
    from pathlib import Path

    from prefpred.plots import plot_segment_log_loss

    result = analyze(pairs, proba, on=on)
    if result["segments"]:
        plot_segment_log_loss(result["segments"], Path(run_dir) / "errors_by_segment.png",
                              title=f"Log loss by segment ({on})")
    return result
