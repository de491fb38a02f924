"""The study for real: SmolLM2-135M-Instruct zero-shot vs LoRA fine-tuned (two heads) vs the CPU model, on CPU.

    python bench/bench_study.py --data ../shared/data/arena/train.csv --out bench/out/study

On one grouped (by prompt), label-stratified 20% validation split of the rows
(:func:`prefpred.experiment.validation_split`; ``configs/experiment-smollm2.yaml`` sets the rows, lengths, steps):

* ``prior``: the training labels' frequencies;
* ``base``: SmolLM2 zero-shot with the study's prompt (``seed-digits``), softmax over the next-token logits of
  ``0``/``1``/``2``, swap-averaged;
* ``base_generation``: the study's own way: greedy-generate a few tokens in the A/B order only, parse the first
  digit, one-hot (1/3 each when nothing parses);
* ``fine_tuned``: LoRA fine-tuning with the study's label-token loss (cross-entropy on the answer digit);
* ``fine_tuned_classifier``: LoRA with a fresh 3-class classification head (``AutoModelForSequenceClassification``,
  the head Kaggle winners used), same steps, rank and learning rate;
* ``cpu``: the CPU model (features + LightGBM) on the same training part.

Accuracy and log loss come with 95% intervals from a bootstrap over validation prompt groups
(:func:`prefpred.experiment.grouped_bootstrap`), and paired differences between the models. Written to ``--out``:
``results.json``, ``report.md``, ``model_comparison.png``, ``training_curves_<variant>.png``, ``reliability.png``,
``splits.csv``, ``predictions/*.csv``, and each fine-tuned adapter under ``<variant>/model``.

Every stage stores its probabilities in ``stages/<name>.npz`` when it ends, so a run that was stopped starts again
where it left off (``--fresh`` starts over) and ``--report-only`` writes the report from the stages done so far.
During fine-tuning the evaluation (every ``training.eval_steps``) scores a fixed subset of ``--eval-pairs``
validation pairs in one order: cheap, and the best checkpoint is chosen on it (slightly optimistic numbers for the
fine-tuned rows, said in the report).

Measured cost with ``configs/experiment-smollm2.yaml`` (fp32 SmolLM2, ~330-390 tokens per CPU-second forward):
zero-shot scoring of 140 validation pairs x 2 orders x ~250 tokens 280 CPU-s, parsed digit 180 CPU-s, each
fine-tuning (30 steps x 4 x 256 tokens, 2 evaluations) plus its scoring ~570 CPU-s: ~1,600 CPU-s in all, 15-20
minutes of two idle cores. Stages may run in parallel processes (``--only NAME --threads 1``) sharing ``--out``;
give every process the same ``--set`` options (the split and the settings must match).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("bench_study")

ROWS = {
    "prior": "class prior (training label frequencies)",
    "base": "SmolLM2 zero-shot, label-token probabilities (swap-averaged)",
    "base_1024": "SmolLM2 zero-shot, label-token probabilities, max_length 1024 (more context)",
    "base_generation": "SmolLM2 zero-shot, parsed digit (the study's way, one order)",
    "fine_tuned": "LoRA, label-token loss (the study's head)",
    "fine_tuned_classifier": "LoRA, 3-class classifier head",
    "cpu": "CPU model (features + LightGBM)",
}
SHORT = {"prior": "class prior", "base": "zero-shot (label probs)", "base_1024": "zero-shot, 1024 tokens", "base_generation": "zero-shot (parsed digit)",
         "fine_tuned": "LoRA label-token", "fine_tuned_classifier": "LoRA classifier", "cpu": "CPU model"}
COMPARISONS = (("fine_tuned", "base"), ("fine_tuned_classifier", "base"), ("fine_tuned", "prior"),
               ("fine_tuned_classifier", "prior"), ("fine_tuned_classifier", "fine_tuned"), ("base", "prior"),
               ("base", "base_generation"), ("cpu", "prior"), ("fine_tuned", "cpu"))


# ------------------------------------------------------------------------------------------------ stages
class Stages:
    """Probabilities (and a JSON of facts) per finished stage under ``<out>/stages``."""

    def __init__(self, out: Path):
        self.dir = out / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)

    def done(self, name: str) -> bool:
        return (self.dir / f"{name}.npz").is_file()

    def load(self, name: str) -> tuple[np.ndarray, dict[str, Any]]:
        with np.load(self.dir / f"{name}.npz") as z:
            proba = z["proba"]
        info = json.loads((self.dir / f"{name}.json").read_text(encoding="utf-8"))
        return proba, info

    def save(self, name: str, proba: np.ndarray, info: dict[str, Any]) -> None:
        from prefpred.utils import atomic_path, atomic_write_text, json_safe

        atomic_write_text(self.dir / f"{name}.json", json.dumps(json_safe(info), indent=2) + "\n")
        with atomic_path(self.dir / f"{name}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, proba=np.asarray(proba, dtype=np.float64))
        logger.info("stage %s done (%.0f s)", name, info.get("seconds", 0.0))


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    proba, info = fn()
    info.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
    return proba, info


def zero_shot(cfg, path: str, val_pairs, generation: bool):
    from prefpred.experiment import judge_params
    from prefpred.models.judge import ZeroShotJudge

    params = judge_params(cfg, path)
    if generation:  # the study's way: one order, greedy digits
        params.update(parse_generation=True, swap_average=False)
    judge = ZeroShotJudge(**params).fit([])
    proba = judge.predict_proba(val_pairs)
    info: dict[str, Any] = {"params": params, "inference_stats": getattr(judge, "inference_stats_", None)}
    if generation:
        info.update(unparseable_rate=judge.unparseable_rate_, examples=list((judge.generations_ or [])[:8]))
    return proba, info


def fine_tune(cfg, head: str, train_pairs, val_pairs, eval_pairs, out: Path):
    """LoRA fine-tuning with ``head``; evaluation on ``eval_pairs`` in one order; scoring swap-averaged."""
    from prefpred.models.llm import LLMPreferenceModel
    from prefpred.training.job import aligned_inference

    mcfg = dataclasses.replace(cfg.model, head=head, style=cfg.model.style if head == "label-token" else "")
    inference = aligned_inference(mcfg, cfg.inference)
    model = LLMPreferenceModel(mcfg, cfg.training, seed=cfg.seed,
                               inference=dataclasses.replace(inference, swap_average=False))
    run_dir = out / head
    t0 = time.perf_counter()
    model.fit(train_pairs, eval_pairs=eval_pairs, output_dir=run_dir)
    train_s = time.perf_counter() - t0
    model.save(run_dir / "model")
    model.inference = inference  # score the validation pairs as the zero-shot judge does: both orders
    t0 = time.perf_counter()
    proba = model.predict_proba(val_pairs)
    r = model.training_result_
    info = {"head": head, "style": mcfg.style_name, "train_s": train_s, "score_s": time.perf_counter() - t0,
            "history": list(model.history_), "global_step": r.global_step, "best_step": r.best_step,
            "best_eval_loss": r.best_eval_loss, "inference_stats": getattr(model, "inference_stats_", None),
            "trainable_params": sum(p.numel() for p in model.model_.parameters() if p.requires_grad)}
    return proba, info


def cpu_model(cfg, train_pairs, val_pairs):
    from prefpred.models.cpu import CPUPreferenceModel

    model = CPUPreferenceModel(cfg.cpu_model, seed=cfg.seed).fit(train_pairs, eval_pairs=val_pairs)
    best = getattr(model, "best_iteration_", None)
    return model.predict_proba(val_pairs), {"best_iteration": int(best) if best else None}


# ------------------------------------------------------------------------------------------------ report
def evaluate(y, probas: dict[str, np.ndarray], groups, n_boot: int, seed: int) -> dict[str, Any]:
    from prefpred.experiment import grouped_bootstrap
    from prefpred.metrics import compute_metrics

    results = {k: compute_metrics(y, p) for k, p in probas.items()}
    boot = grouped_bootstrap(y, probas, groups, comparisons=COMPARISONS, n_boot=n_boot, seed=seed)
    for k in results:
        results[k].update(boot["models"][k])
    return {"models": results, "comparisons": boot["comparisons"], "n_groups": boot["n_groups"],
            "n_boot": boot["n_boot"]}


def _ci(ci, digits: int = 3) -> str:
    return "–" if not ci else f"{ci[0]:.{digits}f} to {ci[1]:.{digits}f}"


def render_report(res: dict[str, Any]) -> str:
    from prefpred.training_analysis import analyze, describe

    m, c, s = res["evaluation"]["models"], res["counts"], res["settings"]
    lines = ["# The study on SmolLM2-135M-Instruct (CPU, offline)", "",
             f"Data `{res['data']}`: {c['pairs']} pairs, grouped (by prompt) stratified split: {c['train']} "
             f"training pairs, {c['validation']} validation pairs in {res['evaluation']['n_groups']} prompt groups. "
             f"Model `{s['model']}` (`{s['resolved']}`), max_length {s['max_length']}, LoRA r {s['lora_r']} / alpha "
             f"{s['lora_alpha']} on {s['target_modules']}, {s['max_steps']} steps of batch {s['batch_size']}, lr "
             f"{s['learning_rate']} ({s['lr_scheduler']}), evaluation on {s['eval_pairs']} validation pairs every "
             f"{s['eval_steps']} steps. {s['threads']} torch threads; machine shared with other jobs.", "",
             f"## Validation results (n = {c['validation']}; 95% CI: bootstrap over prompt groups, "
             f"{res['evaluation']['n_boot']} resamples)", "",
             "| model | accuracy | 95% CI | log loss | 95% CI | wall s | CPU s |", "|---|---|---|---|---|---|---|"]
    for key, r in m.items():
        st = res["stages"].get(key, {})
        lines.append(f"| {ROWS.get(key, key)} | {r['accuracy']:.4f} | {_ci(r.get('accuracy_ci95'))} | "
                     f"{r['log_loss']:.4f} | {_ci(r.get('log_loss_ci95'))} | {st.get('seconds', 0):.0f} | "
                     f"{st.get('cpu_seconds', 0):.0f} |")
    missing = [k for k in ROWS if k not in m]
    if missing:
        lines += ["", "Not run (yet): " + ", ".join(ROWS[k] for k in missing) + "."]
    gen = res["stages"].get("base_generation") or {}
    if gen.get("unparseable_rate") is not None:
        lines += ["", f"Parsed digit: {100 * gen['unparseable_rate']:.1f}% of the answers held no label digit "
                      f"(scored 1/3 each). First answers: {', '.join(repr(x) for x in gen.get('examples', [])[:5])}."]
    lines += ["", "## Paired differences (first minus second)", "",
              "| comparison | accuracy gain | 95% CI | log loss reduction | 95% CI |", "|---|---|---|---|---|"]
    for cmp in res["evaluation"]["comparisons"]:
        lines.append(f"| {SHORT[cmp['a']]} vs {SHORT[cmp['b']]} | {cmp['accuracy_gain']:+.4f} | "
                     f"{_ci(cmp.get('accuracy_gain_ci95'))} | {cmp['log_loss_reduction']:+.4f} | "
                     f"{_ci(cmp.get('log_loss_reduction_ci95'))} |")
    lines += ["", "An interval that contains 0 is within noise. Chance accuracy is 1/3, the uniform log loss "
              "ln 3 = 1.0986; the class prior is the bar to clear. The fine-tuned rows' best checkpoint was chosen "
              "on a validation subset, so they are slightly optimistic.", "", "## Fine-tuning", ""]
    for key in ("fine_tuned", "fine_tuned_classifier"):
        st = res["stages"].get(key)
        if not st:
            continue
        a = analyze(st.get("history") or [])
        lines += [f"### {ROWS[key]}", "",
                  f"{st['global_step']} steps in {st['train_s']:.0f} s (+ {st['score_s']:.0f} s scoring); "
                  f"{st['trainable_params']:,} trainable weights; best eval loss "
                  f"{st['best_eval_loss'] if st['best_eval_loss'] is None else round(st['best_eval_loss'], 4)} "
                  f"at step {st['best_step']}. Curves: `training_curves_{key}.png`.", ""]
        lines += [f"- {line}" for line in describe(a)] + [""]
    lines += ["## Figures", "", "![model comparison](model_comparison.png)", "", "![reliability](reliability.png)",
              ""]
    lines += [f"![{k}](training_curves_{k}.png)" for k in ("fine_tuned", "fine_tuned_classifier")
              if k in res["stages"]]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, cfg, split, val_pairs, probas, stages_info, data: str, counts, resolved: str,
                  eval_n: int, threads: int) -> dict[str, Any]:
    from prefpred.plots import plot_model_comparison, plot_reliability
    from prefpred.submission import write_predictions
    from prefpred.training_analysis import plot_training_curves
    from prefpred.types import label_matrix
    from prefpred.utils import atomic_write_text, json_safe

    y = label_matrix(val_pairs)
    is_val = split["part"].to_numpy() == "validation"
    groups = split["group"].to_numpy()[is_val].tolist()
    order = [k for k in ROWS if k in probas]
    probas = {k: probas[k] for k in order}
    evaluation = evaluate(y, probas, groups, cfg.bootstrap_samples, cfg.seed)
    ids = [p.id for p in val_pairs]
    for k, p in probas.items():
        write_predictions(ids, p, out / "predictions" / f"{k}.csv", labels=y, force=True)
    plot_model_comparison({SHORT[k]: {"accuracy": r["accuracy"], "log_loss": r["log_loss"],
                                      "accuracy_std": r.get("accuracy_se"), "log_loss_std": r.get("log_loss_se")}
                           for k, r in evaluation["models"].items()}, out / "model_comparison.png",
                          title=f"SmolLM2 study: validation n={len(y)} (± 1 SE, bootstrap over prompt groups)")
    plot_reliability(y, {SHORT[k]: p for k, p in probas.items() if k != "prior"}, out / "reliability.png")
    for k in ("fine_tuned", "fine_tuned_classifier"):
        if k in stages_info and stages_info[k].get("history"):
            plot_training_curves(stages_info[k]["history"], out / f"training_curves_{k}.png", title=ROWS[k])
    m, t = cfg.model, cfg.training
    res = {"kind": "study", "data": data, "counts": counts, "evaluation": evaluation, "stages": stages_info,
           "settings": {"model": m.name_or_path, "resolved": resolved, "max_length": m.max_length,
                        "lora_r": m.lora.r, "lora_alpha": m.lora.alpha, "target_modules": m.lora.target_modules,
                        "max_steps": t.max_steps, "batch_size": t.batch_size, "learning_rate": t.learning_rate,
                        "lr_scheduler": t.lr_scheduler, "eval_steps": t.eval_steps, "eval_pairs": eval_n,
                        "threads": threads, "seed": cfg.seed}}
    res = json_safe(res)
    atomic_write_text(out / "results.json", json.dumps(res, indent=2) + "\n")
    atomic_write_text(out / "report.md", render_report(res))
    return res


def print_table(res: dict[str, Any]) -> None:
    print(f"\n{'model':<28} {'accuracy':>8} {'95% CI':>16} {'log loss':>8} {'95% CI':>16} {'wall s':>7}")
    for k, r in res["evaluation"]["models"].items():
        print(f"{SHORT[k]:<28} {r['accuracy']:>8.4f} {_ci(r.get('accuracy_ci95')):>16} {r['log_loss']:>8.4f} "
              f"{_ci(r.get('log_loss_ci95')):>16} {res['stages'].get(k, {}).get('seconds', 0):>7.0f}")


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/experiment-smollm2.yaml")
    ap.add_argument("--data", default=None, help="pairs file (default ../shared/data/arena/train.csv)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/study"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--eval-pairs", type=int, default=24, help="validation pairs scored at each evaluation")
    ap.add_argument("--only", default="", help="comma-separated stages to run (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="forget finished stages")
    ap.add_argument("--report-only", action="store_true", help="write the report from the finished stages")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    import torch

    from prefpred.config import load_config
    from prefpred.data import load_data
    from prefpred.experiment import ExperimentConfig, parse_set_options, validation_split
    from prefpred.metrics import prior_proba
    from prefpred.training.job import aligned_inference
    from prefpred.training.modeling import model_path
    from prefpred.types import label_matrix
    from prefpred.utils import repo_shared_data, set_seed

    torch.set_num_threads(args.threads)
    overrides = parse_set_options(args.set)
    data = args.data
    if data is None:
        root = repo_shared_data()
        if root is None or not (root / "arena" / "train.csv").is_file():
            sys.exit("../shared/data/arena/train.csv is absent: pass --data")
        data = str(root / "arena" / "train.csv")
    overrides["data.path"] = data
    cfg = load_config(ExperimentConfig, args.config, overrides)
    cfg = dataclasses.replace(cfg, inference=aligned_inference(cfg.model, cfg.inference))  # scored as trained
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out)
    if args.fresh:
        for f in stages.dir.iterdir():
            f.unlink()
    set_seed(cfg.seed)

    pairs = list(load_data(cfg.data, seed=cfg.seed).pairs)
    split = validation_split(pairs, cfg.validation_fraction, cfg.seed, cfg.group_by)
    split.to_csv(out / "splits.csv", index=False)
    is_val = split["part"].to_numpy() == "validation"
    train_pairs = [p for p, v in zip(pairs, is_val, strict=True) if not v]
    val_pairs = [p for p, v in zip(pairs, is_val, strict=True) if v]
    rng = np.random.default_rng(cfg.seed)
    eval_pairs = [val_pairs[i] for i in sorted(rng.choice(len(val_pairs), min(args.eval_pairs, len(val_pairs)),
                                                          replace=False))]
    counts = {"pairs": len(pairs), "train": len(train_pairs), "validation": len(val_pairs)}
    logger.info("%d training / %d validation pairs", len(train_pairs), len(val_pairs))
    t0 = time.perf_counter()
    path = model_path(cfg.model)
    logger.info("model %s -> %s (%.1f s)", cfg.model.name_or_path, path, time.perf_counter() - t0)

    todo = {  # cheapest and most important first: a run stopped early still has the headline rows
        "cpu": lambda: cpu_model(cfg, train_pairs, val_pairs),
        "base": lambda: zero_shot(cfg, path, val_pairs, generation=False),
        "fine_tuned": lambda: fine_tune(cfg, "label-token", train_pairs, val_pairs, eval_pairs, out),
        "fine_tuned_classifier": lambda: fine_tune(cfg, "classifier", train_pairs, val_pairs, eval_pairs, out),
        "base_generation": lambda: zero_shot(cfg, path, val_pairs, generation=True),
    }
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    probas: dict[str, np.ndarray] = {"prior": prior_proba(label_matrix(train_pairs), len(val_pairs))}
    info: dict[str, dict[str, Any]] = {}
    res = None
    for name in [k for k in ROWS if k not in todo and k != "prior"]:  # extra rows of earlier runs, if any
        if stages.done(name):
            probas[name], info[name] = stages.load(name)
    for name, fn in todo.items():
        if not stages.done(name) and not args.report_only and (not only or name in only):
            logger.info("stage %s ...", name)
            proba, facts = _timed(fn)
            stages.save(name, proba, facts)
        if stages.done(name):
            probas[name], info[name] = stages.load(name)
        if len(probas) > 1:  # a report after every stage: a stopped run still leaves one
            res = write_outputs(out, cfg, split, val_pairs, probas, info, data, counts, path, len(eval_pairs),
                                args.threads)
    if res is None:
        sys.exit("no stage finished: nothing to report")
    print_table(res)
    print(f"\nwrote {out / 'report.md'}")


if __name__ == "__main__":
    main()
