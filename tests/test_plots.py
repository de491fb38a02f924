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
