"""Training analysis figures from known histories, and the curves plot."""

from __future__ import annotations

import pytest

from prefpred.training_analysis import analyze, describe, plot_training_curves


def _history(losses, accs=None, evals=()):
    rows = []
    for i, loss in enumerate(losses):
        row = {"kind": "train", "step": 10 * (i + 1), "train_loss": loss, "lr": 1e-4}
        if accs is not None:
            row["token_accuracy"] = accs[i]
        rows.append(row)
    for step, el, ell, ea in evals:
        rows.append({"kind": "eval", "step": step, "eval_loss": el, "eval_log_loss": ell, "eval_accuracy": ea})
    return rows


def test_figures_of_a_known_history():
    losses = [4.0, 3.0, 2.5, 2.0, 1.8, 1.6, 1.5, 1.4, 1.3, 1.2]
    accs = [0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.45, 0.55, 0.6, 0.58]
    evals = [(50, 1.9, 1.05, 0.40), (100, 1.5, 1.01, 0.45)]
    a = analyze(_history(losses, accs, evals), window=2)
    assert a["first_window_loss"] == pytest.approx(3.5)
    assert a["last_window_loss"] == pytest.approx(1.25)
    assert a["loss_reduction_pct"] == pytest.approx(100 * (3.5 - 1.25) / 3.5)
    assert a["min_loss"] == 1.2 and a["min_loss_step"] == 100 and a["final_loss"] == 1.2
    assert a["max_token_accuracy"] == 0.6 and a["max_token_accuracy_step"] == 90
    assert a["still_falling"] is True
    assert a["n_evals"] == 2 and a["min_eval_loss"] == 1.5 and a["best_eval_step"] == 100
    assert a["final_eval_log_loss"] == 1.01 and a["final_eval_accuracy"] == 0.45 and a["max_eval_accuracy"] == 0.45
    assert a["last_step"] == 100 and a["n_logged"] == 10
    text = " ".join(describe(a))
    assert "64.3%" in text and "still falling" in text


def test_levelled_off_and_default_window():
    losses = [3.0, 2.0, 1.5] + [1.0, 1.01, 0.99, 1.0] * 4 + [1.0]
    a = analyze(_history(losses))
    assert a["window"] == 2  # 10% of 20 logged points
    assert a["still_falling"] is False
    assert a["max_token_accuracy"] is None and a["min_eval_loss"] is None


def test_trl_style_log_history_and_empty():
    rows = [{"step": 1, "loss": 2.0, "mean_token_accuracy": 0.2}, {"step": 2, "loss": 1.0, "mean_token_accuracy": 0.5},
            {"step": 2, "train_runtime": 3.0}]
    a = analyze(rows)
    assert a["loss_reduction_pct"] == pytest.approx(50.0) and a["max_token_accuracy"] == 0.5
    assert a["still_falling"] is None  # too few points to tell
    empty = analyze([])
    assert empty["loss_reduction_pct"] is None and empty["n_logged"] == 0
    never = analyze([{"step": s, "loss": 2.0 - s / 10, "mean_token_accuracy": 0.0} for s in (1, 2, 3)])
    assert never["max_token_accuracy"] == 0.0
    text = " ".join(describe(never))  # not "Maximum token accuracy 0.000 at step 1"
    assert "Token accuracy stayed at 0" in text and "Maximum token accuracy" not in text
    rising = " ".join(describe(analyze([{"step": s, "loss": 1.0 + s / 10} for s in range(1, 11)])))
    assert "Train loss rose" in rising and "fell -" not in rising  # was "fell -2.1%"


def test_plot_training_curves_writes_png(tmp_path):
    hist = _history([3.0, 2.0, 1.5, 1.2], [0.1, 0.3, 0.4, 0.5], [(20, 1.8, 1.0, 0.5), (40, 1.6, 0.98, 0.55)])
    path = plot_training_curves(hist, tmp_path / "training_curves.png", title="t")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert plot_training_curves([], tmp_path / "empty.png").is_file()
