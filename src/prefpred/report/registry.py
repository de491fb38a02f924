"""Which renderer writes ``report.md`` for which run ``kind``: renderers join with :func:`register_renderer`.

A renderer is ``render(metrics, plots) -> markdown text``, pure: it reads a run's ``metrics.json`` content and the
names of its PNG files, never the job that wrote them, so the report package imports no job module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prefpred.types import UserError

Renderer = Callable[[Mapping[str, Any], Sequence[str]], str]
_RENDERERS: dict[str, Renderer] = {}

RENDERER_MODULES: tuple[str, ...] = ("prefpred.report.cpu", "prefpred.report.llm", "prefpred.report.experiment",
                                     "prefpred.report.ensemble")
"""Modules that register renderers, imported on first use (a new run kind adds its module here)."""


def register_renderer(*kinds: str) -> Callable[[Renderer], Renderer]:
    """Decorator: ``render(metrics, plots)`` writes the report of runs of these kinds."""

    def deco(fn: Renderer) -> Renderer:
        for kind in kinds:
            _RENDERERS[kind] = fn
        return fn

    return deco


def run_kind(metrics: Mapping[str, Any]) -> str:
    """``kind`` of a run's metrics (:func:`prefpred.runs.infer_kind`); ``cpu`` when nothing says otherwise."""
    from prefpred.runs import infer_kind

    return infer_kind(dict(metrics)) or "cpu"


def renderer_for(kind: str) -> Renderer:
    """The renderer registered for ``kind`` (one-line :class:`UserError` when there is none)."""
    for module in RENDERER_MODULES:
        importlib.import_module(module)
    if kind not in _RENDERERS:
        raise UserError(f"no report renderer for run kind {kind!r} (known: {', '.join(sorted(_RENDERERS))})")
    return _RENDERERS[kind]


def render(metrics: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """Markdown report of any run kind from its ``metrics.json`` content and PNG names."""
    return renderer_for(run_kind(metrics))(metrics, plots)
