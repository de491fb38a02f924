"""``report.md``: the page a person reads first, rendered from a run directory's own artifacts.

:func:`build_report` reads ``metrics.json`` (and names the PNGs that exist beside it) and hands it to the renderer
registered for the run's ``kind`` (:mod:`prefpred.report.registry`): ``cpu`` (:mod:`prefpred.report.cpu`),
``llm`` (:mod:`prefpred.report.llm`), ``experiment`` (:mod:`prefpred.report.experiment`). A report can be
re-rendered at any time from a finished run without retraining. :mod:`prefpred.report.fmt` holds the shared cell
and table formatting; nothing here imports a job module.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefpred.report.cpu import render_report
from prefpred.report.fmt import _flatten, _num, _plain, _pm, _table, fmt, plots_section  # noqa: F401 - shared
from prefpred.report.registry import register_renderer, render, renderer_for, run_kind
from prefpred.types import UserError
from prefpred.utils import atomic_write_text


def build_report(run_dir: str | Path) -> Path:
    """Render ``report.md`` in ``run_dir`` from its ``metrics.json`` and PNG files; returns the path."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(2, "No such file or directory (not a prefpred run directory?)", str(metrics_path))
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{metrics_path}: damaged ({type(e).__name__}: not valid JSON text)") from None
    plots = sorted(p.name for p in run_dir.glob("*.png"))
    return atomic_write_text(run_dir / "report.md", render(metrics, plots))


__all__ = ["build_report", "fmt", "plots_section", "register_renderer", "render", "render_report", "renderer_for",
           "run_kind"]
