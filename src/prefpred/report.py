"""``report.md``: the page a person reads first, rendered from a run directory's own artifacts.

:func:`build_report` reads ``metrics.json`` (and names the PNGs that exist beside it), so a report can be
re-rendered at any time from a finished run without retraining.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefpred.utils import atomic_write_text

PLOTS = (
    ("model_comparison.png", "Model comparison: class prior vs model, out-of-fold and holdout"),
    ("reliability.png", "Reliability (holdout, raw and calibrated; OOF when there is no holdout)"),
    ("confusion.png", "Confusion matrix"),
)


def fmt(v: Any, digits: int = 4, sign: bool = False) -> str:
    """A table cell: ``–`` for missing, floats to ``digits`` places (with ``+`` when ``sign``), else ``str``."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"
    return str(v)


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.{digits}f}"
    return str(v)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        out.append("| " + " | ".join(_num(v) if not isinstance(v, str) else v for v in row) + " |")
    return "\n".join(out)


def _pm(summary: Mapping[str, Any], key: str, digits: int = 4) -> str:
    s = summary.get(key)
    if not s:
        return "–"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _plain(v: Any) -> str:
    """Compact number: integers without decimals, other floats with one decimal."""
    if isinstance(v, float) and math.isfinite(v):
        return f"{int(v):,}" if v.is_integer() else f"{v:,.1f}"
    return _num(v)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` rows; a mapping of more than 3 numbers (e.g. percentiles) becomes one row."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and len(v) > 3 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values()):
            out.append((key, " · ".join(f"{kk} {_plain(x)}" for kk, x in v.items())))
        elif isinstance(v, Mapping):
            out.extend(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out.append((key, ", ".join(_num(x) for x in v)))
        else:
            out.append((key, v))
    return out


def plots_section(plots: Sequence[str], captions: Mapping[str, str] | None = None) -> list[str]:
    """Markdown lines embedding each PNG (with a bold caption when one is given); empty without plots."""
    lines: list[str] = ["## Plots", ""] if plots else []
    for p in plots:
        caption = (captions or {}).get(p)
        lines += ([f"**{caption}**", ""] if caption else []) + [f"![{p}]({p})", ""]
    return lines


def render_report(metrics: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """Markdown text of the report for a run's ``metrics.json`` content; ``plots`` are PNG names to embed."""
    from prefpred.analysis import analysis_section
    m = metrics
    lines: list[str] = [f"# prefpred run `{m.get('name', '?')}`", ""]
    lines.append(f"Created {m.get('created', '?')} · seed {m.get('seed', '?')} · model `{m.get('model_kind', '?')}` · "
                 f"total time {_num(m.get('timing', {}).get('total_s'), 1)} s")
    lines.append("")
    counts = m.get("counts", {})
    lines.append(f"Data: `{m.get('data_path') or 'hub dataset'}` — {_num(counts.get('pairs'))} labelled pairs: "
                 f"{_num(counts.get('cv'))} in {m.get('cv', {}).get('n_folds', '?')}-fold cross-validation, "
                 f"{_num(counts.get('holdout'))} in the holdout"
                 + (f", plus {_num(counts.get('extra'))} extra training pairs (weight "
                    f"{_num(m.get('extra_weight'), 2)})" if counts.get("extra") else "") + ".")
    lines.append("")

    # headline ---------------------------------------------------------------------------------------
    lines += ["## Results", ""]
    cv = m.get("cv", {})
    summ = cv.get("summary", {})
    rows = []
    prior = m.get("prior", {})
    if prior.get("oof"):
        p = prior["oof"]
        rows.append(["class prior, out-of-fold", p["log_loss"], p["accuracy"], p["brier"], p["ece"], p["n"]])
    if cv.get("oof"):
        o = cv["oof"]
        rows.append(["model, out-of-fold (pooled)", o["log_loss"], o["accuracy"], o["brier"], o["ece"], o["n"]])
        rows.append(["model, per-fold mean ± std", _pm(summ, "log_loss"), _pm(summ, "accuracy"),
                     _pm(summ, "brier"), _pm(summ, "ece"), "–"])
    hold = m.get("holdout") or {}
    if prior.get("holdout"):
        p = prior["holdout"]
        rows.append(["class prior, holdout", p["log_loss"], p["accuracy"], p["brier"], p["ece"], p["n"]])
    if hold.get("raw"):
        h = hold["raw"]
        rows.append(["model, holdout (raw)", h["log_loss"], h["accuracy"], h["brier"], h["ece"], h["n"]])
    if hold.get("calibrated"):
        h = hold["calibrated"]
        rows.append(["model, holdout (calibrated)", h["log_loss"], h["accuracy"], h["brier"], h["ece"], h["n"]])
    lines += [_table(["predictions", "log loss", "accuracy", "Brier", "ECE", "n"], rows), ""]
    lines += ["Lower log loss, Brier and ECE are better. The holdout was never used for training, early stopping "
              "or calibration, so it is the honest number; out-of-fold numbers used each fold's validation part "
              "for early stopping and are slightly optimistic. The final model was refit on all non-holdout rows "
              f"with {_num(m.get('refit', {}).get('n_estimators'))} trees (mean best iteration across folds).", ""]

    per_fold = cv.get("per_fold") or []
    if per_fold:
        lines += ["### Folds", ""]
        keys = [k for k in ("n_train", "n_val", "best_iteration", "log_loss", "accuracy", "brier", "ece")
                if k in per_fold[0]]
        lines += [_table(["fold", *keys], [[f.get("fold"), *(f.get(k) for k in keys)] for f in per_fold]), ""]

    cal = m.get("calibration")
    if cal:
        lines += ["## Calibration", ""]
        desc = f"Method `{cal.get('method')}` fitted on the out-of-fold predictions"
        if cal.get("temperature") is not None:
            desc += f" (temperature {cal['temperature']:.3f})"
        desc += (f": OOF log loss {_num(cal.get('log_loss_before'))} → {_num(cal.get('log_loss_after'))} "
                 "(in-sample for the calibrator).")
        if hold.get("raw") and hold.get("calibrated"):
            desc += (f" Holdout log loss {_num(hold['raw']['log_loss'])} → {_num(hold['calibrated']['log_loss'])}"
                     f", ECE {_num(hold['raw']['ece'])} → {_num(hold['calibrated']['ece'])}.")
        lines += [desc, ""]

    lines += plots_section([p for p, _ in PLOTS if p in plots] + [p for p in plots if p not in dict(PLOTS)],
                           dict(PLOTS))

    lines += analysis_section(m.get("analysis"))  # error analysis (prefpred.analysis); replaces "Segments"
    segs = m.get("segments") or []
    if segs and not m.get("analysis"):
        lines += ["## Segments", "", f"Metrics per segment of the {m.get('segments_on', 'out-of-fold')} predictions.",
                  ""]
        lines += [_table(["segment", "value", "n", "share", "log loss", "accuracy", "Brier"],
                         [[s["segment"], s["value"], s["n"], s["share"], s["log_loss"], s["accuracy"], s["brier"]]
                          for s in segs]), ""]

    swap = m.get("swap_consistency")
    if swap:
        lines += ["## Swap consistency", "",
                  f"On {_num(swap.get('n'))} {swap.get('on', '')} pairs with responses A and B exchanged, the "
                  f"predicted label mirrored in {_num(100 * swap['consistency'], 1)}% of pairs (flip rate "
                  f"{_num(100 * swap['flip_rate'], 1)}%; the same position chosen both times in "
                  f"{_num(100 * swap['position_flip_rate'], 1)}%). Mean absolute probability change: "
                  f"{_num(swap['mean_abs_diff'])}.", ""]

    feats = m.get("top_features") or []
    if feats:
        lines += ["## Top features", ""]
        lines += [_table(["rank", "feature", "importance"],
                         [[i + 1, f"`{f['feature']}`", f["importance"]] for i, f in enumerate(feats)]), ""]

    data = m.get("data")
    if data:
        lines += ["## Data summary", "",
                  _table(["field", "value"], [[k, v if isinstance(v, str) else _plain(v)] for k, v in _flatten(data)]),
                  ""]

    lines += ["## Files", "",
              "`config.yaml` (resolved config) · `splits.csv` (id → fold, -1 = holdout) · `metrics.json` · "
              "`oof.csv` (out-of-fold predictions) · `holdout.csv` (holdout predictions as `prefpred predict` "
              "makes them) · `model/` · `calibration.json` (when calibrated)", ""]
    return "\n".join(lines)


def build_report(run_dir: str | Path) -> Path:
    """Render ``report.md`` in ``run_dir`` from its ``metrics.json`` and PNG files; returns the path."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(2, "No such file or directory (not a prefpred run directory?)", str(metrics_path))
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    plots = sorted(p.name for p in run_dir.glob("*.png"))
    if metrics.get("kind") == "experiment":  # `prefpred experiment` runs have their own layout
        from prefpred.experiment import render_experiment_report

        return atomic_write_text(run_dir / "report.md", render_experiment_report(metrics, plots))
    if metrics.get("kind") == "ensemble":  # `prefpred ensemble` runs too
        from prefpred.ensemble.report import render_ensemble_report

        return atomic_write_text(run_dir / "report.md", render_ensemble_report(metrics, plots))
    if metrics.get("model_kind") == "llm":  # so do LLM training runs
        from prefpred.training.job import render_train_report

        return atomic_write_text(run_dir / "report.md", render_train_report(metrics, plots))
    return atomic_write_text(run_dir / "report.md", render_report(metrics, plots))
