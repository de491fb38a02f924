"""``report.md`` of an ensemble run, rendered from its ``metrics.json`` (re-renderable at any time)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefpred.report.fmt import fmt, plots_section
from prefpred.report.registry import register_renderer

CAPTIONS = {
    "model_comparison.png": "Members vs the ensemble, out-of-fold (the ensemble's number is nested)",
    "reliability.png": "Reliability of the ensemble (holdout when there is one, else nested out-of-fold)",
    "errors_by_segment.png": "Log loss by segment (nested out-of-fold)",
}


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in cells) + " |"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return [_row(headers), "|" + "|".join("---" for _ in headers) + "|", *(_row(r) for r in rows), ""]


@register_renderer("ensemble")
def render_ensemble_report(m: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """Markdown text for an ensemble run's ``metrics.json`` content."""
    cv = m.get("cv") or {}
    lines = [f"# prefpred ensemble `{m.get('name', '?')}`", "",
             f"Created {m.get('created', '?')} · method `{m.get('method')}` · {m.get('counts', {}).get('members')} "
             f"members · {cv.get('n_folds')} folds of {cv.get('oof', {}).get('n')} held-out rows "
             f"({cv.get('source')})", ""]
    fb = m.get("fallback")
    if fb:
        lines += [f"**The nested ensemble (`{fb['instead_of']}`, log loss {fmt(fb['nested_log_loss'])}) was worse "
                  f"than its best member `{fb['best_member']}` ({fmt(fb['best_member_log_loss'])}), so this run "
                  "uses that member alone.**", ""]
    lines += ["## Members and weights", ""]
    rows = []
    for name, r in (m.get("members") or {}).items():
        rows.append([f"`{name}`", r.get("kind", "?"), (m.get("member_weights") or {}).get(name),
                     r["oof"]["log_loss"], r["oof"]["accuracy"], (r.get("holdout") or {}).get("log_loss")])
    o, h = cv.get("oof") or {}, m.get("holdout") or {}
    rows.append(["**ensemble**", m.get("method", ""), 1.0, o.get("log_loss"), o.get("accuracy"),
                 (h.get("calibrated") or h.get("raw") or {}).get("log_loss")])
    lines += _table(["run", "kind", "weight", "OOF log loss", "OOF accuracy", "holdout log loss"], rows)
    lines += ["Members' out-of-fold predictions are used raw (a member's own calibration was fitted on these "
              "very rows); the ensemble calibrates the blend itself. The ensemble's OOF number is *nested*: each fold was predicted by a method chosen and "
              "fitted on the other folds only. Stacker weights are the share of its coefficient mass.", ""]
    lines += ["## Candidates (cross-validated log loss)", ""]
    cands = cv.get("candidates") or {}
    lines += _table(["candidate", "log loss"], [[f"`{k}`" + (" ← chosen" if k == m.get("method") else ""), v]
                                                for k, v in sorted(cands.items(), key=lambda kv: kv[1])])
    per_fold = cv.get("per_fold") or []
    if per_fold:
        lines += ["## Per fold: ensemble vs its best member", "",
                  "The best member is the one with the lowest pooled out-of-fold log loss; the last column names the "
                  "member that was best on that fold in hindsight.", ""]
        choices = {c["fold"]: c["chosen"] for c in cv.get("nested_choices") or []}
        lines += _table(["fold", "n", "chosen inside", "ensemble", "best member", "not worse", "fold's best"],
                        [[f["fold"], f["n"], choices.get(f["fold"], "?"), f["ensemble"],
                          f"`{f['best_member']}` {fmt(f['best_member_log_loss'])}",
                          "yes" if f["not_worse"] else "**no**",
                          f"`{f.get('fold_best_member', '?')}` {fmt(f.get('fold_best_log_loss'))}"]
                         for f in per_fold])
    if h:
        lines += ["## Holdout", ""]
        lines += _table(["predictions", "log loss", "accuracy", "ECE", "n"],
                        [[k, v.get("log_loss"), v.get("accuracy"), v.get("ece"), v.get("n")] for k, v in h.items()])
    from prefpred.analysis import analysis_section

    lines += analysis_section(m.get("analysis"))
    lines += plots_section(list(plots), CAPTIONS)
    lines += ["## Files", "", "`config.yaml` (member paths) · `weights.json` (combiner, calibrator, member paths "
              "relative to this folder) · `splits.csv` (the members') · `oof.csv` (nested out-of-fold) · "
              "`holdout.csv` · `metrics.json`", ""]
    return "\n".join(lines)
