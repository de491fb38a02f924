from __future__ import annotations

import json

import numpy as np
import pytest

from prefpred.metrics import compute_metrics, fold_summary, prior_proba, segment_metrics, swap_consistency
from prefpred.plots import plot_model_comparison
from prefpred.report import build_report, render_report
from prefpred.testing import planted_pairs
from prefpred.types import label_matrix, swap_proba


def _metrics() -> dict:
    pairs = planted_pairs(80, seed=2)
    y = label_matrix(pairs)
    p = np.random.default_rng(0).dirichlet([2, 2, 1], size=len(pairs))
    per_fold = [{"fold": k, "n_train": 60, "n_val": 20, "best_iteration": 10 + k,
                 **compute_metrics(y[k * 20:(k + 1) * 20], p[k * 20:(k + 1) * 20])} for k in range(4)]
    return {
        "name": "demo", "created": "2025-01-01T00:00:00+00:00", "seed": 7, "model_kind": "cpu",
        "data_path": "train.csv", "counts": {"pairs": 80, "cv": 80, "holdout": 0, "extra": 0},
        "cv": {"n_folds": 4, "per_fold": per_fold, "summary": fold_summary(per_fold), "oof": compute_metrics(y, p)},
        "holdout": None,
        "prior": {"oof": compute_metrics(y, prior_proba(y, len(y))), "holdout": None},
        "calibration": {"method": "temperature", "temperature": 1.3, "log_loss_before": 1.1, "log_loss_after": 1.05},
        "refit": {"n_estimators": 12},
        "swap_consistency": {**swap_consistency(p, swap_proba(p)), "on": "holdout"},
        "segments": segment_metrics(pairs, p).to_dict(orient="records"),
        "top_features": [{"feature": "len_diff", "importance": 12.5}, {"feature": "md_diff", "importance": 3.0}],
        "data": {"rows": 80, "labels": {"a": 30, "b": 30, "tie": 20}},
        "timing": {"total_s": 1.5},
    }


def test_render_report_has_every_section():
    m = _metrics()
    text = render_report(m, ["model_comparison.png", "reliability.png"])
    for heading in ("# prefpred run `demo`", "## Results", "### Folds", "## Calibration", "## Plots",
                    "## Segments", "## Swap consistency", "## Top features", "## Data summary"):
        assert heading in text
    s = m["cv"]["summary"]["log_loss"]
    assert f"{s['mean']:.4f} ± {s['std']:.4f}" in text
    assert "![model_comparison.png](model_comparison.png)" in text
    assert "confusion.png" not in text  # only plots that exist are embedded
    assert "`len_diff`" in text and "100.0%" in text  # a symmetric model mirrors every pair
    assert "| turns | single |" in text


def test_build_report_from_run_dir(tmp_path):
    m = _metrics()
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    plot_model_comparison({"x": {"accuracy": 0.5, "log_loss": 1.0}}, tmp_path / "model_comparison.png")
    out = build_report(tmp_path)
    assert out == tmp_path / "report.md"
    assert "![model_comparison.png](model_comparison.png)" in out.read_text()


def test_build_report_needs_metrics(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path)


def test_run_report_says_what_the_features_segments_and_importances_are():
    m = _metrics()
    off = render_report({**m, "embeddings": False})
    assert "sentence embeddings off" in off
    on = render_report({**m, "embeddings": True, "top_features_importance": "share of the total split gain"})
    assert "MiniLM sentence embeddings" in on and "embeddings off" not in on
    assert "`length`: the combined length of both responses in characters, all turns" in on
    assert "Importance: share of the total split gain of the final model." in on
    assert "embedding features not recorded" in render_report(m)  # runs written before the key existed


@pytest.mark.parametrize("kind, heading", [("cpu", "# prefpred run"), ("llm", "# prefpred LLM run"),
                                           ("experiment", "# prefpred experiment")])
def test_report_is_chosen_by_run_kind(tmp_path, kind, heading):
    from prefpred.report import render

    m = {**_metrics(), "kind": kind}
    assert render(m).startswith(heading)
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    assert build_report(tmp_path).read_text().startswith(heading)


def test_unknown_kind_and_damaged_metrics_are_one_line(tmp_path):
    from prefpred.types import UserError

    (tmp_path / "metrics.json").write_text(json.dumps({"kind": "mystery"}))
    with pytest.raises(UserError, match="no report renderer for run kind 'mystery'"):
        build_report(tmp_path)
    (tmp_path / "metrics.json").write_bytes(b"\x89PNG\x00")
    with pytest.raises(UserError, match="damaged"):
        build_report(tmp_path)
