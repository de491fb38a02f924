"""Leaf formatting helpers of every ``report.md`` renderer: table cells, markdown tables, plot sections.

Imports nothing of prefpred, so any renderer (and the CLI's terminal tables) can use it without cycles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def fmt(v: Any, digits: int = 4, sign: bool = False) -> str:
    """A table cell: ``–`` for missing, floats to ``digits`` places (with ``+`` when ``sign``), else ``str``."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"
    return str(v)


def cut_middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters by dropping its middle (``gemini-2.5-…-03-25``): names that share a
    long prefix and differ at the end stay apart."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    head = width // 2
    tail = width - 1 - head
    return text[:head] + "…" + (text[-tail:] if tail else "")


def flexible_width(widths: Sequence[int], flexible: int, total: int, *, edges: bool = True) -> int:
    """Room left for column ``flexible`` of a rich table ``total`` characters wide whose other columns keep their
    ``widths``: each column has one space of padding on both sides, columns are separated by one rule, and the
    outer rules are drawn only with ``edges``."""
    chrome = 3 * len(widths) + (1 if edges else -1)
    return total - (sum(widths) - widths[flexible]) - chrome


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
