"""``report.md`` of a ``prefpred train`` run (kind ``llm``): validation/holdout results and the training analysis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefpred.report.fmt import fmt, plots_section
from prefpred.report.registry import register_renderer


@register_renderer("llm")
def render_train_report(metrics: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """Markdown ``report.md`` of an LLM training run from its ``metrics.json`` content."""
    from prefpred.training_analysis import describe

    m = metrics
    c = m.get("counts", {})
    lines = [f"# prefpred LLM run `{m.get('name')}`", "",
             f"Created {m.get('created')} · seed {m.get('seed')} · `{m.get('base_model')}` · head "
             f"`{m.get('head')}` · method `{m.get('method')}` · prompt style `{m.get('style')}` · total time "
             f"{fmt(m.get('timing', {}).get('total_s'), 1)} s", "",
             f"Data: `{m.get('data_path') or 'hub dataset'}` — {c.get('pairs')} labelled pairs: {c.get('train')} "
             f"training, {c.get('validation')} validation (early stopping, best checkpoint), {c.get('holdout')} "
             "holdout (never trained or early-stopped on)"
             + (f", plus {c.get('extra_used')} extra training pairs (weight {m.get('extra_weight')})"
                if c.get("extra_used") else "") + ".", "", "## Results", "",
             "| predictions | log loss | accuracy | Brier | ECE | n |", "|---|---|---|---|---|---|"]
    for part in ("validation", "holdout"):
        r = m.get(part)
        if not r:
            continue
        for who in ("prior", "model"):
            x = r[who]
            label = f"{'class prior' if who == 'prior' else 'model'}, {part}"
            lines.append(f"| {label} | {fmt(x['log_loss'])} | {fmt(x['accuracy'], 3)} | {fmt(x['brier'])} | "
                         f"{fmt(x['ece'])} | {x['n']} |")
    lines += ["", "The holdout number is the honest one: validation pairs chose the best checkpoint.", ""]
    t = m.get("training", {})
    lines += ["## Training", "",
              f"{t.get('global_step')} optimizer steps; best eval loss {fmt(t.get('best_eval_loss'))} at step "
              f"{t.get('best_step')}" + (" (stopped early)" if t.get("stopped_early") else "")
              + (f"; resumed from step {t['resumed_from_step']}" if t.get("resumed_from_step") else "") + ".", ""]
    lines += [f"- {line}" for line in describe(t.get("analysis", {}))]
    lines.append("")
    lines += plots_section(plots)
    lines += ["## Files", "", "`config.yaml` · `splits.csv` (id → fold, -1 = holdout) · `metrics.jsonl` (per "
              "logged step) · `metrics.json` · `validation.csv` / `holdout.csv` (predictions) · `model/` "
              "(adapter or weights + tokenizer + head)", ""]
    return "\n".join(lines)
