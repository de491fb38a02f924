from __future__ import annotations

import numpy as np
import pytest

from prefpred.plots import plot_confusion, plot_model_comparison, plot_reliability

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 2000


def _proba(n, seed):
    return np.random.default_rng(seed).dirichlet([2, 2, 1], size=n)


def test_model_comparison_png(tmp_path):
    results = {"prior": {"accuracy": 0.35, "log_loss": 1.097},
               "cpu OOF": {"accuracy": 0.47, "log_loss": 1.03, "accuracy_std": 0.02, "log_loss_std": 0.01},
               "cpu holdout": {"accuracy": 0.46, "log_loss": 1.04}}
    out = plot_model_comparison(results, tmp_path / "cmp.png", title="t")
    assert out == tmp_path / "cmp.png" and _is_png(out)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temp file left


def test_model_comparison_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        plot_model_comparison({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="log_loss"):
        plot_model_comparison({"m": {"accuracy": 0.5}}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_reliability_and_confusion_png(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=300)
    p = _proba(300, 1)
    assert _is_png(plot_reliability(y, p, tmp_path / "rel.png"))
    assert _is_png(plot_reliability(y, {"raw": p, "calibrated": _proba(300, 2)}, tmp_path / "rel2.png"))
    assert _is_png(plot_confusion(["a", "b", "tie"] * 100, p, tmp_path / "cm.png"))


# ------------------------------------------------------------------------------------------- what the plots say
def _texts(fig) -> list[str]:
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), *(t.get_text() for t in ax.texts)]
        legend = ax.get_legend()
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()]
    return out


def test_model_comparison_says_what_error_bars_are():
    import matplotlib.pyplot as plt

    from prefpred.plots import model_comparison_figure

    with_std = {"prior": {"accuracy": 0.35, "log_loss": 1.097},
                "cpu OOF": {"accuracy": 0.47, "log_loss": 1.03, "accuracy_std": 0.02, "log_loss_std": 0.01}}
    fig = model_comparison_figure(with_std)
    assert any("Error bars: ± 1 std across cross-validation folds" in t for t in _texts(fig))
    plt.close(fig)
    fig = model_comparison_figure(with_std, error_bars="± 1 SE, bootstrap over 40 prompt groups")
    assert any("± 1 SE, bootstrap over 40 prompt groups" in t for t in _texts(fig))
    assert not any("std across" in t for t in _texts(fig))
    plt.close(fig)
    fig = model_comparison_figure({"prior": {"accuracy": 0.35, "log_loss": 1.097}})
    assert not any("Error bars" in t for t in _texts(fig))
    plt.close(fig)


def test_reliability_names_the_sets_and_shows_bin_counts_on_true_bin_edges():
    import matplotlib.pyplot as plt
    from matplotlib.patches import StepPatch

    from prefpred.metrics import label_targets, reliability_bins
    from prefpred.plots import reliability_figure

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=400)
    raw, cal = _proba(400, 1), _proba(400, 2)
    fig = reliability_figure(y, {"holdout raw": raw, "holdout calibrated": cal}, n_bins=10)
    texts = _texts(fig)
    assert any("holdout raw vs holdout calibrated" in t and "n=400" in t for t in texts)
    counts = reliability_bins(label_targets(y, 400), raw, 10)["count"].to_numpy()
    shown = sorted(int(t) for t in texts if t.isdigit())
    assert shown == sorted(int(c) for c in counts if c), (shown, counts)
    edges = np.linspace(0, 1, 11)
    steps = [p for ax in fig.axes for p in ax.patches if isinstance(p, StepPatch)]
    assert len(steps) >= 2  # one outline per set (+ the first set's fill)
    for step in steps:
        np.testing.assert_allclose(step.get_data().edges, edges)  # same bins for every set, not offset bars
    plt.close(fig)
