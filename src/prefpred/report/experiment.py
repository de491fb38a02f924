"""``report.md`` (and the terminal table) of a ``prefpred experiment`` run (kind ``experiment``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from prefpred.report.fmt import fmt, plots_section
from prefpred.report.registry import register_renderer

MODEL_LABELS = {
    "prior": "class prior (training label frequencies)",
    "base": "base model, zero-shot",
    "base_generation": "base model, zero-shot, parsed generation (the study's method)",
    "fine_tuned": "fine-tuned model",
    "cpu": "CPU model (features + LightGBM)",
}
"""Row names of the models an experiment compares, in report order."""

STUDY_REFERENCE = {"model": "Qwen/Qwen2.5-0.5B-Instruct", "base_accuracy": 0.3475, "fine_tuned_accuracy": 0.3566}
"""The study's published validation accuracies (one sampled digit parsed; short training)."""

# ------------------------------------------------------------------------------------------------ report

def _ci(ci: Sequence[float] | None, digits: int = 4, sign: bool = True) -> str:
    if not ci:
        return "no interval"
    return f"95% CI {fmt(ci[0], digits, sign)} to {fmt(ci[1], digits, sign)}"


def model_label(key: str, metrics: Mapping[str, Any]) -> str:
    """Readable row name of a model key of an experiment's ``metrics.json``."""
    if key == "base":
        return f"base model, zero-shot (`{metrics.get('zero_shot_style')}`, label-token probabilities)"
    if key == "fine_tuned":
        return f"fine-tuned ({metrics.get('method')}, `{metrics.get('head')}` head, `{metrics.get('style')}`)"
    return MODEL_LABELS.get(key, key)


def comparison_sentence(c: Mapping[str, Any]) -> list[str]:
    """Two report lines (accuracy, log loss) for one paired comparison of :func:`grouped_bootstrap`."""
    acc_noise, ll_noise = c.get("accuracy_within_noise"), c.get("log_loss_within_noise")

    def verdict(noise: bool | None, better: bool) -> str:
        if noise is None:
            return "no interval (too few prompt groups)"
        if noise:
            return "**within noise** (the interval contains 0)"
        return "**better**, beyond noise" if better else "**worse**, beyond noise"

    return [f"accuracy {fmt(c['accuracy_gain'], 4, True)} ({_ci(c.get('accuracy_gain_ci95'))}): "
            f"{verdict(acc_noise, c['accuracy_gain'] > 0)}",
            f"log loss change {fmt(-c['log_loss_reduction'], 4, True)} (lower is better; reduction "
            f"{_ci(c.get('log_loss_reduction_ci95'))}): {verdict(ll_noise, c['log_loss_reduction'] > 0)}"]


@register_renderer("experiment")
def render_experiment_report(metrics: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """Markdown ``report.md`` of an experiment from its ``metrics.json`` content."""
    from prefpred.training_analysis import describe

    m = metrics
    c = m.get("counts", {})
    res = m.get("validation", {})
    n_val = c.get("validation")
    lines = [f"# prefpred experiment `{m.get('name')}`", "",
             f"Created {m.get('created')} · seed {m.get('seed')} · model `{m.get('base_model')}` · method "
             f"`{m.get('method')}` · head `{m.get('head')}` · prompt style `{m.get('style')}` · total time "
             f"{fmt((m.get('timing') or {}).get('total_s'), 1)} s", "",
             f"Data: `{m.get('data_path') or 'hub dataset'}` — {c.get('pairs')} labelled pairs, split by prompt "
             f"(grouped by `{m.get('group_by')}`, stratified by label): {c.get('train')} training pairs "
             f"({c.get('train_groups')} prompt groups) and {n_val} validation pairs ({c.get('validation_groups')} "
             "prompt groups); no prompt is on both sides"
             + (f"; plus {c.get('extra_used')} extra training pairs" if c.get("extra_used") else "") + ".", "",
             f"## Results on the validation split (n = {n_val})", "",
             "| model | log loss | accuracy | accuracy 95% CI | Brier | ECE |", "|---|---|---|---|---|---|"]
    for key, r in res.items():
        lines.append(f"| {model_label(key, m)} | {fmt(r.get('log_loss'))} | {fmt(r.get('accuracy'), 4)} | "
                     f"{_ci(r.get('accuracy_ci95'), 3, False).replace('95% CI ', '')} | {fmt(r.get('brier'))} | "
                     f"{fmt(r.get('ece'))} |")
    for key in m.get("skipped") or {}:
        lines.append(f"| {model_label(key, m)} | – | – | – | – | – |")
    lines.append("")
    for key, reason in (m.get("skipped") or {}).items():
        lines.append(f"- {MODEL_LABELS.get(key, key)} not run: {reason}.")
    gen = (m.get("zero_shot") or {}).get("generation")
    if gen:
        lines.append(f"- Parsed generation: {100 * (gen.get('unparseable_rate') or 0):.1f}% of the generated "
                     "answers held no label digit (scored 1/3 each).")
    lines += ["- Confidence intervals: bootstrap over the validation prompt groups "
              f"({(m.get('bootstrap') or {}).get('n_boot')} resamples of {(m.get('bootstrap') or {}).get('n_groups')} "
              "groups; pairs sharing a prompt are resampled together).", ""]

    imp = m.get("improvement")
    lines += ["## Improvement: fine-tuned vs base model", ""]
    if imp:
        lines += [f"- {s}" for s in comparison_sentence(imp)]
    else:
        lines.append("- No comparison: the base model was not judged zero-shot (see above).")
    lines += ["", "| comparison | accuracy gain | 95% CI | log loss reduction | 95% CI |", "|---|---|---|---|---|"]
    short = {"prior": "class prior", "base": "base", "base_generation": "base (parsed)", "fine_tuned": "fine-tuned",
             "cpu": "CPU model"}
    for cmp in m.get("comparisons") or []:
        lines.append(f"| {short.get(cmp['a'], cmp['a'])} vs {short.get(cmp['b'], cmp['b'])} | "
                     f"{fmt(cmp['accuracy_gain'], 4, True)} | "
                     f"{_ci(cmp.get('accuracy_gain_ci95')).replace('95% CI ', '')} | "
                     f"{fmt(cmp['log_loss_reduction'], 4, True)} | "
                     f"{_ci(cmp.get('log_loss_reduction_ci95')).replace('95% CI ', '')} |")
    lines.append("")

    lines += ["## Reading these numbers honestly", ""]
    if n_val:
        se = math.sqrt(0.25 / n_val)
        lines.append(f"- With {n_val} validation pairs the standard error of an accuracy near 0.5 is about "
                     f"±{se:.3f} (binomial; the bootstrap over prompts above is wider when prompts repeat), so "
                     f"differences below roughly {2 * se:.3f} between two models cannot be told from noise.")
    noisy = [cmp for cmp in m.get("comparisons") or [] if cmp.get("accuracy_within_noise")
             and cmp.get("log_loss_within_noise")]
    if noisy:
        names = ", ".join(f"{short.get(x['a'], x['a'])} vs {short.get(x['b'], x['b'])}" for x in noisy)
        lines.append(f"- Within noise in both accuracy and log loss: {names}.")
    lines += ["- The fine-tuned model's best checkpoint (early stopping) and the CPU model's number of trees were "
              "chosen on these same validation pairs, so their numbers are slightly optimistic; the base model "
              "and the class prior were not tuned on them.",
              "- Chance accuracy is 1/3 and the uniform prediction's log loss is ln 3 = 1.0986; the class prior row "
              "is the bar any model must clear."]
    if "qwen2.5-0.5b" in str(m.get("base_model", "")).lower():
        s = STUDY_REFERENCE
        lines.append(f"- The study reported base {s['base_accuracy']:.4f} and fine-tuned "
                     f"{s['fine_tuned_accuracy']:.4f} validation accuracy with this model (one sampled digit "
                     "parsed, brief training): barely above chance, and within noise of each other.")
    lines.append("")

    t = m.get("training") or {}
    a = t.get("analysis") or {}
    lines += ["## Training analysis", "",
              f"{t.get('global_step')} optimizer steps; best eval loss {fmt(t.get('best_eval_loss'))} at step "
              f"{t.get('best_step')}" + (" (stopped early)" if t.get("stopped_early") else "")
              + (f"; resumed from step {t['resumed_from_step']}" if t.get("resumed_from_step") else "") + ".", "",
              "| figure | value |", "|---|---|",
              f"| train loss reduction (first vs last window) | "
              f"{fmt(a.get('loss_reduction_pct'), 1)}{'%' if a.get('loss_reduction_pct') is not None else ''} |",
              f"| minimum train loss | {fmt(a.get('min_loss'))} (step {fmt(a.get('min_loss_step'))}) |",
              f"| maximum token accuracy | {fmt(a.get('max_token_accuracy'), 3)} |",
              f"| train loss still falling at the end | {fmt(a.get('still_falling'))} |",
              f"| best eval loss | {fmt(a.get('min_eval_loss'))} (step {fmt(a.get('best_eval_step'))}) |", ""]
    lines += [f"- {line}" for line in describe(a)]
    lines.append("")
    lines += plots_section(plots)
    lines += ["## Files", "", "`config.yaml` (resolved config) · `splits.csv` (id → fold: 0 = validation, 1 = "
              "training) · `metrics.json` · `metrics.jsonl` (fine-tuning log) · `predictions/*.csv` (validation "
              "predictions per model) · `model/` (adapter or weights + tokenizer + head)", ""]
    return "\n".join(lines)


def results_table(metrics: Mapping[str, Any]) -> list[Any]:
    """Rich renderables for the terminal: the models side by side, then the improvement lines."""
    from rich.table import Table

    table = Table(title=f"prefpred experiment {metrics.get('name', '')}: validation n="
                        f"{(metrics.get('counts') or {}).get('validation')}")
    for col in ("model", "log loss", "± SE", "accuracy", "± SE", "Brier"):
        table.add_column(col, justify="left" if col == "model" else "right")
    short = {"prior": "class prior", "base": "base model (zero-shot)", "base_generation": "base (parsed digit)",
             "fine_tuned": f"fine-tuned ({metrics.get('method')})", "cpu": "CPU model"}
    for key, r in (metrics.get("validation") or {}).items():
        table.add_row(short.get(key, key), fmt(r.get("log_loss")), fmt(r.get("log_loss_se")),
                      fmt(r.get("accuracy"), 4), fmt(r.get("accuracy_se"), 4), fmt(r.get("brier")),
                      style="dim" if key == "prior" else "bold" if key == "fine_tuned" else None)
    for key, reason in (metrics.get("skipped") or {}).items():
        table.add_row(short.get(key, key), "–", "–", "–", "–", "–", style="dim")
        table.caption = (table.caption + "; " if table.caption else "") + f"{short.get(key, key)}: {reason}"
    out: list[Any] = [table]
    imp = metrics.get("improvement")
    if imp:
        out.append("improvement, fine-tuned vs base: " + "; ".join(s.replace("**", "")
                                                                  for s in comparison_sentence(imp)))
    return out
