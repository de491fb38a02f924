"""Training analysis: the figures the study reports, computed from a training history, and the curves plot.

A history is a list of dict rows as written to ``metrics.jsonl`` by :mod:`prefpred.training.trainer`
(``kind`` ``train`` rows with ``step``, ``train_loss``, ``token_accuracy``, ``lr``; ``kind`` ``eval`` rows with
``eval_loss``, ``eval_log_loss``, ``eval_accuracy``). Rows in the transformers/TRL ``log_history`` form
(``loss``, ``mean_token_accuracy``) are read too, so a study's own logs can be analysed the same way.

:func:`analyze` gives:

* ``loss_reduction_pct``: ``100 * (first - last) / first`` of the mean train loss over the first and the last
  logged window (a window is ``window`` logged points, default 10% of them, at least 1);
* ``min_loss`` (and its step), ``final_loss``, ``max_token_accuracy`` (and its step);
* ``still_falling``: whether train loss was still going down at the end: a least-squares line through the
  last quarter of the logged points (at least 3) has a negative slope that amounts to a drop of at least
  ``1%`` of their mean loss over that stretch;
* the same for evaluation: ``min_eval_loss``, ``best_eval_step``, ``final_eval_log_loss``, ``eval_still_falling``...
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

STILL_FALLING_MIN_DROP = 0.01
"""Relative drop over the final stretch that counts as "still falling" (1% of the stretch's mean loss)."""


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _series(history: Sequence[Mapping[str, Any]], keys: Sequence[str], *, kind: str | None) -> tuple[np.ndarray,
                                                                                                    np.ndarray]:
    """(steps, values) of the first present key among ``keys`` in rows of ``kind``, sorted by step, last row
    of a repeated step winning."""
    by_step: dict[int, float] = {}
    for r in history:
        if kind is not None and r.get("kind", kind) != kind:
            continue
        for k in keys:
            v = _num(r.get(k))
            if v is not None:
                by_step[int(r.get("step", 0))] = v
                break
    steps = np.asarray(sorted(by_step), dtype=float)
    return steps, np.asarray([by_step[int(s)] for s in steps], dtype=float)


def train_loss_series(history):
    return _series(history, ("train_loss", "loss"), kind="train")


def token_accuracy_series(history):
    return _series(history, ("token_accuracy", "mean_token_accuracy"), kind="train")


def _still_falling(steps: np.ndarray, values: np.ndarray, tail: float = 0.25) -> tuple[bool | None, float | None]:
    n = len(values)
    if n < 3:
        return None, None
    k = max(3, int(math.ceil(n * tail)))
    x, y = steps[-k:], values[-k:]
    if np.ptp(x) == 0:
        return None, None
    slope = float(np.polyfit(x, y, 1)[0])
    drop = -slope * float(np.ptp(x))
    mean = float(np.mean(np.abs(y))) or 1.0
    return bool(slope < 0 and drop >= STILL_FALLING_MIN_DROP * mean), slope


def analyze(history: Sequence[Mapping[str, Any]], window: int | None = None) -> dict[str, Any]:
    """The study's training figures (see the module docstring); keys are present with ``None`` when unknown."""
    steps, loss = train_loss_series(history)
    n = len(loss)
    w = window if window is not None else max(1, n // 10)
    w = max(1, min(w, n)) if n else 0
    out: dict[str, Any] = {"n_logged": n, "window": w, "last_step": int(steps[-1]) if n else None}
    if n:
        first, last = float(loss[:w].mean()), float(loss[-w:].mean())
        i_min = int(np.argmin(loss))
        falling, slope = _still_falling(steps, loss)
        out.update(
            first_window_loss=first, last_window_loss=last,
            loss_reduction_pct=100.0 * (first - last) / first if first != 0 else None,
            min_loss=float(loss[i_min]), min_loss_step=int(steps[i_min]), final_loss=float(loss[-1]),
            still_falling=falling, tail_slope=slope,
        )
    else:
        out.update(first_window_loss=None, last_window_loss=None, loss_reduction_pct=None, min_loss=None,
                   min_loss_step=None, final_loss=None, still_falling=None, tail_slope=None)
    t_steps, tok = token_accuracy_series(history)
    if len(tok):
        i_max = int(np.argmax(tok))
        wt = max(1, min(w or 1, len(tok)))
        out.update(max_token_accuracy=float(tok[i_max]), max_token_accuracy_step=int(t_steps[i_max]),
                   first_window_token_accuracy=float(tok[:wt].mean()),
                   last_window_token_accuracy=float(tok[-wt:].mean()))
    else:
        out.update(max_token_accuracy=None, max_token_accuracy_step=None, first_window_token_accuracy=None,
                   last_window_token_accuracy=None)

    e_steps, e_loss = _series(history, ("eval_loss",), kind="eval")
    out["n_evals"] = len(e_loss)
    if len(e_loss):
        i_best = int(np.argmin(e_loss))
        falling, _ = _still_falling(e_steps, e_loss)
        out.update(min_eval_loss=float(e_loss[i_best]), best_eval_step=int(e_steps[i_best]),
                   final_eval_loss=float(e_loss[-1]), eval_still_falling=falling)
    else:
        out.update(min_eval_loss=None, best_eval_step=None, final_eval_loss=None, eval_still_falling=None)
    for key in ("eval_log_loss", "eval_accuracy", "eval_token_accuracy"):
        s, v = _series(history, (key,), kind="eval")
        out[f"final_{key}"] = float(v[-1]) if len(v) else None
        if key == "eval_log_loss":
            out["min_eval_log_loss"] = float(v.min()) if len(v) else None
        else:
            out[f"max_{key}"] = float(v.max()) if len(v) else None
    return out


def _smooth(values: np.ndarray, w: int) -> np.ndarray:
    if w <= 1 or len(values) < w:
        return values
    kernel = np.ones(w) / w
    head = np.asarray([values[: i + 1].mean() for i in range(w - 1)])
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """``training_curves.png``: train/eval loss by step (left) and token/eval accuracy by step (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prefpred.utils import atomic_path

    steps, loss = train_loss_series(history)
    series_acc = [
        ("token accuracy (train)", token_accuracy_series(history), "-", "#1f77b4"),
        ("accuracy (train, 3 classes)", _series(history, ("train_accuracy",), kind="train"), "-", "#aec7e8"),
        ("token accuracy (eval)", _series(history, ("eval_token_accuracy",), kind="eval"), "o-", "#ff7f0e"),
        ("accuracy (eval, score_pairs)", _series(history, ("eval_accuracy",), kind="eval"), "s-", "#2ca02c"),
    ]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4.2))
    if len(loss):
        ax_l.plot(steps, loss, color="#1f77b4", alpha=0.35, lw=1, label="train loss")
        w = max(1, len(loss) // 10)
        if w > 1:
            ax_l.plot(steps, _smooth(loss, w), color="#1f77b4", lw=2, label=f"train loss ({w}-point mean)")
    for key, label, style, color in (("eval_loss", "eval loss", "o-", "#ff7f0e"),
                                     ("eval_log_loss", "eval log loss (score_pairs)", "s--", "#2ca02c")):
        s, v = _series(history, (key,), kind="eval")
        if len(v):
            ax_l.plot(s, v, style, color=color, ms=4, label=label)
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("loss")
    ax_l.set_title("Loss")
    ax_l.grid(alpha=0.3)
    if ax_l.has_data():
        ax_l.legend(fontsize=8)
    any_acc = False
    for label, (s, v), style, color in series_acc:
        if len(v):
            any_acc = True
            ax_a.plot(s, v, style, color=color, ms=4, lw=1.5, label=label)
    ax_a.set_xlabel("step")
    ax_a.set_ylabel("accuracy")
    ax_a.set_ylim(0, 1)
    ax_a.set_title("Accuracy")
    ax_a.grid(alpha=0.3)
    if any_acc:
        ax_a.legend(fontsize=8)
    else:
        ax_a.text(0.5, 0.5, "no accuracy logged", ha="center", va="center", transform=ax_a.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def describe(analysis: Mapping[str, Any]) -> list[str]:
    """Human-readable lines of the headline figures (for reports and the CLI)."""
    a = analysis
    lines = []
    if a.get("loss_reduction_pct") is not None:
        change = "fell" if a["loss_reduction_pct"] >= 0 else "rose"
        lines.append(f"Train loss {change} {abs(a['loss_reduction_pct']):.1f}% from the first to the last logged window "
                     f"({a['first_window_loss']:.4f} -> {a['last_window_loss']:.4f}, windows of {a['window']} "
                     f"logged step(s)); minimum {a['min_loss']:.4f} at step {a['min_loss_step']}.")
    if a.get("max_token_accuracy") is not None:
        lines.append("Token accuracy stayed at 0 (the label token never came out on top)." if
                     a["max_token_accuracy"] == 0 else
                     f"Maximum token accuracy {a['max_token_accuracy']:.3f} at step {a['max_token_accuracy_step']}.")
    if a.get("still_falling") is not None:
        lines.append("Train loss was still falling at the end (more steps may help)." if a["still_falling"]
                     else "Train loss had levelled off by the end.")
    if a.get("min_eval_loss") is not None:
        lines.append(f"Best eval loss {a['min_eval_loss']:.4f} at step {a['best_eval_step']} "
                     f"({a['n_evals']} evaluations; final {a['final_eval_loss']:.4f}).")
    if a.get("final_eval_log_loss") is not None:
        acc = a.get("final_eval_accuracy")
        lines.append(f"Last eval log loss {a['final_eval_log_loss']:.4f}"
                     + (f", accuracy {acc:.3f}" if acc is not None else "") + " (score_pairs).")
    return lines
