"""``report.md`` of a ``prefpred run`` (kind ``cpu``): CV, holdout, calibration, segments, swap, features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefpred.report.fmt import _flatten, _num, _plain, _pm, _table, plots_section
from prefpred.report.registry import register_renderer

PLOTS = (
    ("model_comparison.png", "Model comparison: class prior vs model, out-of-fold and holdout"),
    ("reliability.png", "Reliability (holdout, raw and calibrated; OOF when there is no holdout)"),
    ("confusion.png", "Confusion matrix"),
    ("errors_by_segment.png", "Log loss by segment (out-of-fold; see the error analysis below)"),
)


LENGTH_SEGMENT = "combined length of both responses in characters, all turns"
"""What the ``length`` segment measures (:func:`prefpred.metrics.length_bucket`)."""
DEFAULT_IMPORTANCE = "share of the total split gain"
"""What ``top_features`` measure when a run's metrics do not say (runs written before they did)."""


@register_renderer("cpu")
def render_report(metrics: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """Markdown text of the report for a run's ``metrics.json`` content; ``plots`` are PNG names to embed."""
    m = metrics
    lines = _header(m) + _results(m) + _calibration(m)
    lines += plots_section([p for p, _ in PLOTS if p in plots] + [p for p in plots if p not in dict(PLOTS)],
                           dict(PLOTS))
    if m.get("analysis"):
        from prefpred.analysis import analysis_section

        lines += analysis_section(m["analysis"])
    else:
        lines += _segments(m)
    lines += _swap(m) + _features(m)
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


def _header(m: Mapping[str, Any]) -> list[str]:
    emb = m.get("embeddings")
    features = ("hand-made + MiniLM sentence embeddings" if emb else "hand-made only, sentence embeddings off"
                if emb is not None else "embedding features not recorded")
    counts = m.get("counts", {})
    return [f"# prefpred run `{m.get('name', '?')}`", "",
            f"Created {m.get('created', '?')} · seed {m.get('seed', '?')} · model `{m.get('model_kind', '?')}` · "
            f"features: {features} · total time {_num(m.get('timing', {}).get('total_s'), 1)} s", "",
            f"Data: `{m.get('data_path') or 'hub dataset'}` — {_num(counts.get('pairs'))} labelled pairs: "
            f"{_num(counts.get('cv'))} in {m.get('cv', {}).get('n_folds', '?')}-fold cross-validation, "
            f"{_num(counts.get('holdout'))} in the holdout"
            + (f", plus {_num(counts.get('extra'))} extra training pairs (weight "
               f"{_num(m.get('extra_weight'), 2)})" if counts.get("extra") else "") + ".", ""]


def _results(m: Mapping[str, Any]) -> list[str]:
    lines = ["## Results", ""]
    cv = m.get("cv", {})
    summ = cv.get("summary", {})
    prior, hold = m.get("prior", {}), m.get("holdout") or {}

    def row(label: str, r: Mapping[str, Any]) -> list[Any]:
        return [label, r["log_loss"], r["accuracy"], r["brier"], r["ece"], r["n"]]

    rows = [row("class prior, out-of-fold", prior["oof"])] if prior.get("oof") else []
    if cv.get("oof"):
        rows.append(row("model, out-of-fold (pooled)", cv["oof"]))
        rows.append(["model, per-fold mean ± std", _pm(summ, "log_loss"), _pm(summ, "accuracy"),
                     _pm(summ, "brier"), _pm(summ, "ece"), "–"])
    for label, r in (("class prior, holdout", prior.get("holdout")), ("model, holdout (raw)", hold.get("raw")),
                     ("model, holdout (calibrated)", hold.get("calibrated"))):
        if r:
            rows.append(row(label, r))
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
    return lines


def _calibration(m: Mapping[str, Any]) -> list[str]:
    cal = m.get("calibration")
    if not cal:
        return []
    hold = m.get("holdout") or {}
    desc = f"Method `{cal.get('method')}` fitted on the out-of-fold predictions"
    if cal.get("temperature") is not None:
        desc += f" (temperature {cal['temperature']:.3f})"
    desc += (f": OOF log loss {_num(cal.get('log_loss_before'))} → {_num(cal.get('log_loss_after'))} "
             "(in-sample for the calibrator).")
    if hold.get("raw") and hold.get("calibrated"):
        desc += (f" Holdout log loss {_num(hold['raw']['log_loss'])} → {_num(hold['calibrated']['log_loss'])}"
                 f", ECE {_num(hold['raw']['ece'])} → {_num(hold['calibrated']['ece'])}.")
    return ["## Calibration", "", desc, ""]


def _segments(m: Mapping[str, Any]) -> list[str]:
    segs = m.get("segments") or []
    if not segs:
        return []
    return ["## Segments", "", f"Metrics per segment of the {m.get('segments_on', 'out-of-fold')} predictions. "
            f"`turns`: single vs multi-turn conversations; `length`: the {LENGTH_SEGMENT}; `label`: tie vs not.",
            "", _table(["segment", "value", "n", "share", "log loss", "accuracy", "Brier"],
                       [[s["segment"], s["value"], s["n"], s["share"], s["log_loss"], s["accuracy"], s["brier"]]
                        for s in segs]), ""]


def _swap(m: Mapping[str, Any]) -> list[str]:
    swap = m.get("swap_consistency")
    if not swap:
        return []
    return ["## Swap consistency", "",
            f"On {_num(swap.get('n'))} {swap.get('on', '')} pairs with responses A and B exchanged, the "
            f"predicted label mirrored in {_num(100 * swap['consistency'], 1)}% of pairs (flip rate "
            f"{_num(100 * swap['flip_rate'], 1)}%; the same position chosen both times in "
            f"{_num(100 * swap['position_flip_rate'], 1)}%). Mean absolute probability change: "
            f"{_num(swap['mean_abs_diff'])}.", ""]


def _features(m: Mapping[str, Any]) -> list[str]:
    feats = m.get("top_features") or []
    if not feats:
        return []
    return ["## Top features", "", f"Importance: {m.get('top_features_importance') or DEFAULT_IMPORTANCE} of the "
            "final model.", "",
            _table(["rank", "feature", "importance"],
                   [[i + 1, f"`{f['feature']}`", f["importance"]] for i, f in enumerate(feats)]), ""]
