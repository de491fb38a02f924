"""PNG plots (matplotlib, Agg backend): model comparison bars, reliability diagram, confusion matrix.

Every ``plot_*`` function writes one PNG atomically and returns its path; the matching ``*_figure`` function
returns the matplotlib figure instead (tests read its texts). They only need metrics or an ``n x 3``
probability array with labels, so any model's output can be plotted.

Each figure says what it shows: what the error bars are (``error_bars``, default ± 1 std across folds), which
prediction sets are drawn (e.g. holdout raw vs calibrated) in the titles, and how many rows each reliability bin
holds (step histogram on the true bin edges, with the counts written on it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from prefpred.metrics import (  # noqa: E402
    confusion_matrix,
    expected_calibration_error,
    label_targets,
    reliability_bins,
)
from prefpred.types import LABELS  # noqa: E402
from prefpred.utils import atomic_path  # noqa: E402

_CLASS_COLORS = {"a": "#1f77b4", "b": "#ff7f0e", "tie": "#2ca02c"}
_MIN_BIN = 5  # reliability points from bins with fewer rows are noise and are not drawn
_BAR_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _bars(ax: Any, names: list[str], values: list[float], errs: list[float | None], title: str,
          fmt: str, ylim: tuple[float, float] | None = None, ref: float | None = None,
          ref_label: str | None = None) -> None:
    x = np.arange(len(names))
    colors = [_BAR_COLORS[i % len(_BAR_COLORS)] for i in range(len(names))]
    bars = ax.bar(x, values, color=colors, edgecolor="black", linewidth=0.5)
    with_err = [i for i, e in enumerate(errs) if e]
    if with_err:
        ax.errorbar(x[with_err], [values[i] for i in with_err], yerr=[errs[i] for i in with_err], fmt="none",
                    ecolor="black", capsize=4, linewidth=1)
    for bar, v, e in zip(bars, values, errs, strict=True):
        if not np.isfinite(v):
            continue
        label = format(v, fmt) + (f" ± {format(e, fmt)}" if e else "")
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, v + (e or 0.0)), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
    if ref is not None:
        ax.axhline(ref, color="gray", linestyle="--", linewidth=1, label=ref_label)
        if ref_label:
            ax.legend(loc="best", fontsize=8, framealpha=0.9)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=25 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center",
                       fontsize=9)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if ylim:
        ax.set_ylim(*ylim)


DEFAULT_ERROR_BARS = "± 1 std across cross-validation folds"


def plot_model_comparison(results: Mapping[str, Mapping[str, float]], path: str | Path,
                          title: str | None = None, error_bars: str = DEFAULT_ERROR_BARS) -> Path:
    """Accuracy and log loss side by side, one bar per model or run (see :func:`model_comparison_figure`)."""
    return _save(model_comparison_figure(results, title=title, error_bars=error_bars), path)


def model_comparison_figure(results: Mapping[str, Mapping[str, float]], title: str | None = None,
                            error_bars: str = DEFAULT_ERROR_BARS) -> Any:
    """Accuracy and log loss side by side, one bar per model or run.

    ``results`` maps a name to ``{"accuracy": ..., "log_loss": ...}``; optional ``accuracy_std`` /
    ``log_loss_std`` draw error bars, and ``error_bars`` says what they are (a note under the plots: the
    default is the spread across folds; pass e.g. "± 1 SE, bootstrap" for standard errors). Bars keep the
    mapping's order. A dashed line marks chance accuracy (1/3) and the log loss of the uniform prediction (ln 3).
    """
    if not results:
        raise ValueError("plot_model_comparison needs at least one result")
    names = list(results)
    for name in names:
        missing = {"accuracy", "log_loss"} - set(results[name])
        if missing:
            raise ValueError(f"result {name!r} lacks {', '.join(sorted(missing))}")
    acc = [float(results[n]["accuracy"]) for n in names]
    ll = [float(results[n]["log_loss"]) for n in names]
    acc_e = [results[n].get("accuracy_std") for n in names]
    ll_e = [results[n].get("log_loss_std") for n in names]
    width = max(9.0, 1.3 * len(names) * 2)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(min(width, 20.0), 4.6))
    top_acc = max([a + (e or 0) for a, e in zip(acc, acc_e, strict=True) if np.isfinite(a)] + [1 / 3])
    _bars(ax1, names, acc, acc_e, "Accuracy (higher is better)", ".3f", (0, min(1.0, top_acc * 1.15 + 0.02)),
          ref=1 / 3, ref_label="chance (1/3)")
    finite = [(v, e or 0.0) for v, e in zip(ll, ll_e, strict=True) if np.isfinite(v)]
    top_ll = max([v + e for v, e in finite] + [np.log(3)])
    low_ll = min([v - e for v, e in finite] + [np.log(3)])
    span = max(top_ll - low_ll, 0.02)
    # log losses of real models sit close together (0.95-1.10): zoom in so differences are visible
    bottom = max(0.0, low_ll - 0.6 * span)
    _bars(ax2, names, ll, ll_e, "Log loss (lower is better" + (", axis zoomed)" if bottom > 0 else ")"), ".4f",
          (bottom, top_ll + 0.25 * span), ref=float(np.log(3)), ref_label="uniform (ln 3)")
    if title:
        fig.suptitle(title)
    if any(acc_e) or any(ll_e):
        note = f"Error bars: {error_bars}" + (" (bars without one: a single value)" if not all(acc_e) else "")
        fig.text(0.5, -0.01, note, ha="center", va="top", fontsize=8, color="dimgray")
    fig.tight_layout()
    return fig


def plot_reliability(y: Any, proba: Any | Mapping[str, Any], path: str | Path, n_bins: int = 10,
                     title: str | None = None) -> Path:
    """Reliability diagram as a PNG (see :func:`reliability_figure`)."""
    return _save(reliability_figure(y, proba, n_bins=n_bins, title=title), path)


def reliability_figure(y: Any, proba: Any | Mapping[str, Any], n_bins: int = 10, title: str | None = None) -> Any:
    """Reliability diagram.

    Left: top-label confidence vs accuracy per confidence bin (one line per prediction set when ``proba`` is a
    mapping such as ``{"holdout raw": p, "holdout calibrated": q}``; the title names the sets), with the ECE in
    the legend and the rows per bin as step histograms on the true bin edges (one outline per set, the first
    set's counts written on its bars); points of bins with fewer than 5 rows are not drawn. Right: per-class
    (one-vs-rest) reliability of the first prediction set: mean predicted probability of a, b and tie vs their
    observed frequency.
    """
    sets = dict(proba) if isinstance(proba, Mapping) else {"model": proba}
    if not sets:
        raise ValueError("plot_reliability needs at least one prediction set")
    first = np.asarray(next(iter(sets.values())), dtype=np.float64)
    t = label_targets(y, len(first))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.8))
    ax1.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect")
    hist_ax = ax1.twinx()
    for i, (name, p) in enumerate(sets.items()):
        p = np.asarray(p, dtype=np.float64)
        table = reliability_bins(t, p, n_bins)
        used = table[table["count"] >= min(_MIN_BIN, table["count"].max())]  # skip near-empty bins
        ece = expected_calibration_error(t, p, n_bins)
        color = _BAR_COLORS[i % len(_BAR_COLORS)]
        ax1.plot(used["confidence"], used["accuracy"], marker="o", color=color, label=f"{name} (ECE {ece:.3f})")
        # counts on the real bin edges: sets overlap as outlines instead of being shifted into fake bins
        edges_i = np.append(table["lower"].to_numpy(), table["upper"].to_numpy()[-1])
        counts = table["count"].to_numpy()
        hist_ax.stairs(counts, edges_i, color=color, alpha=0.7, linewidth=1.2, fill=False)
        if i == 0:
            hist_ax.stairs(counts, edges_i, color=color, alpha=0.12, fill=True)
            for lo, hi, c in zip(edges_i[:-1], edges_i[1:], counts, strict=True):
                if c:
                    hist_ax.text((lo + hi) / 2, c, str(int(c)), ha="center", va="bottom", fontsize=7,
                                 color="dimgray")
    hist_ax.set_ylim(0, max(1.0, hist_ax.get_ylim()[1] * 1.1))
    hist_ax.set_ylabel("rows per bin (histogram)", color="gray")
    hist_ax.tick_params(axis="y", colors="gray")
    ax1.set_zorder(hist_ax.get_zorder() + 1)
    ax1.patch.set_visible(False)
    ax1.set_xlim(0, 1)
    ax1.set_ylim(0, 1)
    ax1.set_xlabel(f"confidence (max probability), {n_bins} bins; bins with < {_MIN_BIN} rows: no point")
    ax1.set_ylabel("accuracy")
    ax1.set_title(f"Top-label reliability ({' vs '.join(sets)}, n={len(first)})")
    ax1.legend(loc="upper left", fontsize=8)
    ax1.grid(alpha=0.3)

    edges = np.linspace(0, 1, n_bins + 1)
    ax2.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
    for k, cls in enumerate(LABELS):
        pk, yk = first[:, k], t[:, k]
        idx = np.clip(np.searchsorted(edges, pk, side="left") - 1, 0, n_bins - 1)
        xs, ys = [], []
        for b in range(n_bins):
            m = idx == b
            if m.sum() >= min(_MIN_BIN, len(pk)):
                xs.append(pk[m].mean())
                ys.append(yk[m].mean())
        ax2.plot(xs, ys, marker="o", color=_CLASS_COLORS[cls], label=f"{cls} (mean p {pk.mean():.2f}, "
                 f"freq {yk.mean():.2f})")
    ax2.set_xlim(0, 1)
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("predicted probability")
    ax2.set_ylabel("observed frequency")
    ax2.set_title(f"Per-class reliability ({next(iter(sets))})")
    ax2.legend(loc="upper left", fontsize=8)
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion(y: Any, proba: Any, path: str | Path, title: str | None = None) -> Path:
    """Confusion matrix heat map as a PNG (see :func:`confusion_figure`)."""
    return _save(confusion_figure(y, proba, title=title), path)


def confusion_figure(y: Any, proba: Any, title: str | None = None) -> Any:
    """Confusion matrix heat map (rows: true label, columns: predicted = argmax), with counts and row shares.
    ``title`` should say which predictions these are (e.g. "Holdout confusion, calibrated")."""
    p = np.asarray(proba, dtype=np.float64)
    cm = confusion_matrix(y, p)
    row_sums = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row_sums, out=np.zeros_like(cm, dtype=float), where=row_sums > 0)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(3):
        for j in range(3):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=10,
                    color="white" if share[i, j] > 0.55 else "black")
    ax.set_xticks(range(3))
    ax.set_yticks(range(3))
    ax.set_xticklabels(LABELS)
    ax.set_yticklabels(LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(title or f"Confusion matrix (n={cm.sum()}, accuracy {acc:.3f})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true label")
    fig.tight_layout()
    return fig


_SEGMENT_PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]

def plot_segment_log_loss(segments: Any, path: str | Path, title: str | None = None) -> Path:
    """Horizontal bars of log loss per segment (records or a DataFrame with ``segment``, ``value``, ``n``,
    ``log_loss``), grouped by segment, with the overall log loss as a dashed line and ``n`` beside each bar."""
    rows = [dict(r) for r in (segments.to_dict(orient="records") if hasattr(segments, "to_dict") else segments)]
    rows = [r for r in rows if r.get("log_loss") is not None and np.isfinite(float(r["log_loss"]))]
    if not rows:
        raise ValueError("plot_segment_log_loss needs at least one segment with a log loss")
    overall = next((float(r["log_loss"]) for r in rows if r["segment"] == "all"), None)
    rows = [r for r in rows if r["segment"] != "all"] or rows
    kinds = list(dict.fromkeys(r["segment"] for r in rows))
    colors = {k: _SEGMENT_PALETTE[i % len(_SEGMENT_PALETTE)] for i, k in enumerate(kinds)}
    labels = [f"{r['segment']}: {r['value']}" for r in rows]
    values = [float(r["log_loss"]) for r in rows]
    fig, ax = plt.subplots(figsize=(8.0, max(3.0, 0.28 * len(rows) + 1.2)))
    ypos = np.arange(len(rows))[::-1]
    ax.barh(ypos, values, color=[colors[r["segment"]] for r in rows])
    for y, v, r in zip(ypos, values, rows, strict=True):
        ax.text(v, y, f" {v:.3f} (n={int(r['n'])})", va="center", fontsize=7)
    ax.set_yticks(ypos, labels, fontsize=8)
    if overall is not None:
        ax.axvline(overall, color="black", linestyle="--", linewidth=1, label=f"all rows ({overall:.3f})")
        ax.legend(loc="lower right", fontsize=8)
    ax.axvline(float(np.log(3)), color="grey", linestyle=":", linewidth=1)
    lo, hi = min(values + [overall or values[0]]), max(values + [np.log(3)])
    ax.set_xlim(max(0.0, lo - 0.3 * (hi - lo + 0.05)), hi + 0.35 * (hi - lo + 0.05))
    ax.set_xlabel("log loss (lower is better; dotted: uniform ln 3)")
    ax.set_title(title or "Log loss by segment")
    fig.tight_layout()
    return _save(fig, path)


def plot_suite(rows: Any, path: str | Path, title: str | None = None) -> Path:
    """Non-tie accuracy per dataset of an evaluation suite, with its confidence interval as error bars and
    chance (0.5) as a dashed line; ``rows`` are records with ``dataset``, ``n_nontie``, ``nontie_accuracy``,
    ``ci_low``, ``ci_high``."""
    rows = [dict(r) for r in rows if r.get("nontie_accuracy") is not None]
    if not rows:
        raise ValueError("plot_suite needs at least one dataset with a non-tie accuracy")
    names = [str(r["dataset"]) for r in rows]
    acc = np.array([float(r["nontie_accuracy"]) for r in rows])
    lo = np.array([float(r.get("ci_low", a)) for r, a in zip(rows, acc, strict=True)])
    hi = np.array([float(r.get("ci_high", a)) for r, a in zip(rows, acc, strict=True)])
    fig, ax = plt.subplots(figsize=(max(7.0, 0.8 * len(rows) + 2), 4.4))
    x = np.arange(len(rows))
    ax.bar(x, acc, color=_SEGMENT_PALETTE[0], yerr=np.vstack([acc - lo, hi - acc]), capsize=3)
    for xi, a, top, r in zip(x, acc, hi, rows, strict=True):  # labels above the error bar
        ax.text(xi, min(max(a, top) + 0.02, 0.92), f"{a:.2f}\nn={int(r.get('n_nontie', 0))}", ha="center",
                va="bottom", fontsize=7)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (0.5)")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy on non-tie pairs (95% CI)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "Agreement with human labels per dataset")
    fig.tight_layout()
    return _save(fig, path)
