"""Side-by-side throughput comparison of the engine's paths (``prefpred bench inference``, ``bench/``).

Paths, all on the same pairs and model:

* ``bucketed``: length-sorted dynamic batches under the token budget (prefix cache on for label-token heads);
* ``fixed``: fixed-size batches in input order, ``token_budget // max_length`` sequences each, i.e. the same
  maximum padded tokens per batch (the same peak batch memory) as ``bucketed``;
* ``bucketed_uncached`` (label-token heads): ``bucketed`` without the shared-prefix cache;
* ``parallel`` (``processes > 1``): ``bucketed`` over that many worker processes;
* ``naive`` (label-token heads, :func:`reference_paths`): one sequence at a time, plain ``model(input_ids=...)``
  (logits at every position), softmax over the label tokens at the last one: what a first attempt does;
* ``roofline`` (label-token heads): the transformer body alone (``model.get_decoder()``, no ``lm_head``) over
  each sequence alone, no padding: the rate no scoring of these sequences can beat with this model on this
  machine. ``judge_vs_roofline`` is the judge's tokens/s over it (CPU time when measured on a busy machine).

The reference paths score the token ids the engine's :class:`~prefpred.inference.batching.Encoder` produced
(their encoding time is not counted; the judge's is), so every path sees identical tokens.

``max_abs_diff`` is the largest difference in probabilities between any two paths (they must agree).
Peak memory on CPU is the process's resident set size, which only grows across paths; compare
``max_batch_tokens`` for the batch-memory high-water mark of each path.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import asdict, replace

import numpy as np

from prefpred.inference.config import InferenceConfig
from prefpred.inference.dispatch import score_pairs
from prefpred.types import Pair

logger = logging.getLogger(__name__)


def _cpu_rate(tokens: int, cpu_s: float) -> float | None:
    return tokens / cpu_s if cpu_s > 0 else None


def reference_paths(pairs: Sequence[Pair], model, tokenizer, style, *, config: InferenceConfig | None = None,
                    label_token_ids: Sequence[int] | None = None, paths: Sequence[str] = ("naive", "roofline")
                    ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """The ``naive`` loop's probabilities and the ``naive``/``roofline`` throughput stats (see the module doc)."""
    import time

    import torch

    from prefpred.inference.batching import Encoder
    from prefpred.inference.common import combine_swapped
    from prefpred.inference.engine import model_device

    config = config or InferenceConfig()
    k = 2 if config.swap_average else 1
    seqs: list[Pair] = []
    for p in pairs:
        seqs.extend([p, p.swapped()] if k == 2 else [p])
    ids, _ = Encoder(tokenizer, style, "label-token", config.seq_cap).encode(seqs)
    label = list(label_token_ids if label_token_ids is not None else style.label_token_ids(tokenizer))
    device = model_device(model)
    tokens = int(sum(len(x) for x in ids))
    probs: dict[str, np.ndarray] = {}
    stats: dict[str, dict] = {}
    body = model.get_decoder() if "roofline" in paths else None
    model.eval()
    with torch.inference_mode():
        for name in paths:
            out = np.zeros((len(ids), 3))
            t0, c0 = time.perf_counter(), time.process_time()
            for i, x in enumerate(ids):
                inp = torch.as_tensor(x, dtype=torch.long, device=device)[None]
                if name == "naive":
                    logits = model(input_ids=inp).logits
                    out[i] = torch.softmax(logits[0, -1, label].float(), dim=-1).cpu().numpy()
                else:
                    body(input_ids=inp)
            sec, cpu = time.perf_counter() - t0, time.process_time() - c0
            if name == "naive":
                probs[name] = combine_swapped(out[0::k], out[1::k] if k == 2 else None)
            stats[name] = {"pairs": len(pairs), "sequences": len(ids), "batches": len(ids), "tokens": tokens,
                           "seconds": sec, "cpu_seconds": cpu, "pairs_per_s": len(pairs) / sec if sec else 0.0,
                           "tokens_per_s": tokens / sec if sec else 0.0, "tokens_per_cpu_s": _cpu_rate(tokens, cpu),
                           "padding_fraction": 0.0, "max_batch_tokens": max((len(x) for x in ids), default=0),
                           "peak_memory_mb": None, "device": str(device)}  # not measured on these paths
            logger.info("%-18s %8.2f pairs/s  %9.0f tokens/s", name, stats[name]["pairs_per_s"],
                        stats[name]["tokens_per_s"])
    return probs, stats


def compare_paths(pairs: Sequence[Pair], model, tokenizer, style, *, head: str = "label-token",
                  config: InferenceConfig | None = None, processes: int = 1, repeats: int = 1,
                  warmup: int = 4, paths: Sequence[str] | None = None, reference: bool = True) -> dict:
    """Score ``pairs`` along each path; return a JSON-ready dict of throughput numbers and agreement.

    ``repeats`` > 1 keeps the fastest of several runs of each path (less noise on a busy machine); the runs go
    round-robin over the paths.
    ``reference`` adds the ``naive`` and ``roofline`` paths (label-token heads on the hf engine).
    """
    config = config or InferenceConfig()
    base = replace(config, num_processes=1, progress=False)
    todo = {"bucketed": replace(base, bucket=True), "fixed": replace(base, bucket=False)}
    if config.engine == "vllm":  # vLLM batches and caches by itself: one path
        todo = {"vllm": base}
    elif head == "label-token":
        todo["bucketed_uncached"] = replace(base, bucket=True, prefix_cache=False)
    if processes > 1 and config.engine == "hf":
        todo["parallel"] = replace(base, bucket=True, num_processes=processes)
    if paths is not None:
        todo = {k: v for k, v in todo.items() if k in paths}
    pairs = list(pairs)
    if warmup and pairs:
        score_pairs(pairs[:warmup], model, tokenizer, style, head=head, config=base)
    probs: dict[str, np.ndarray] = {}
    stats: dict[str, dict] = {}
    ref: list[str] = []
    if reference and head == "label-token" and config.engine == "hf" and pairs:
        ref = [p for p in ("naive", "roofline") if paths is None or p in paths]
    # repeats go round-robin over the paths, so a change of load on a shared machine hits every path alike
    for _ in range(max(1, repeats)):
        for name, cfg in todo.items():
            s: dict = {}
            p = score_pairs(pairs, model, tokenizer, style, head=head, config=cfg, stats=s)
            if name not in stats or s["seconds"] < stats[name]["seconds"]:
                probs[name], stats[name] = p, s
        if ref:
            ref_probs, ref_stats = reference_paths(pairs, model, tokenizer, style, config=base, paths=ref)
            for name, s in ref_stats.items():
                if name not in stats or s["seconds"] < stats[name]["seconds"]:
                    stats[name] = s
                    if name in ref_probs:
                        probs[name] = ref_probs[name]
    for name, s in stats.items():
        logger.info("%-18s %8.2f pairs/s  %9.0f tokens/s  padding %5.1f%%  max batch tokens %d", name,
                    s["pairs_per_s"], s["tokens_per_s"], 100 * s["padding_fraction"], s["max_batch_tokens"])
    for s in stats.values():
        s.setdefault("tokens_per_cpu_s", _cpu_rate(s["tokens"], s["cpu_seconds"]))
    diffs = {f"{a}~{b}": float(np.abs(probs[a] - probs[b]).max()) if len(pairs) else 0.0
             for a, b in itertools.combinations(probs, 2)}

    def rate(name: str) -> float | None:
        return stats[name]["pairs_per_s"] if name in stats else None

    def ratio(a: str, b: str) -> float | None:
        ra, rb = rate(a), rate(b)
        return ra / rb if ra and rb else None

    def cpu_ratio(a: str, b: str) -> float | None:
        if a not in stats or b not in stats or not stats[a]["cpu_seconds"]:
            return None
        return stats[b]["cpu_seconds"] / stats[a]["cpu_seconds"]

    def token_ratio(a: str, b: str, key: str) -> float | None:
        ra, rb = (stats.get(a) or {}).get(key), (stats.get(b) or {}).get(key)
        return ra / rb if ra and rb else None

    return {
        "n_pairs": len(pairs),
        "head": head,
        "style": getattr(style, "name", str(style)),
        "config": {k: v for k, v in asdict(base).items() if k != "progress"},
        "bucketed_pairs_per_s": rate("bucketed"),
        "fixed_pairs_per_s": rate("fixed"),
        "bucketing_speedup": ratio("bucketed", "fixed"),
        "bucketing_cpu_speedup": cpu_ratio("bucketed", "fixed"),
        "uncached_pairs_per_s": rate("bucketed_uncached"),
        "prefix_cache_speedup": ratio("bucketed", "bucketed_uncached"),
        "prefix_cache_cpu_speedup": cpu_ratio("bucketed", "bucketed_uncached"),
        "naive_pairs_per_s": rate("naive"),
        "judge_vs_naive": ratio("bucketed", "naive"),
        "judge_vs_naive_cpu": cpu_ratio("bucketed", "naive"),
        "judge_vs_roofline": token_ratio("bucketed", "roofline", "tokens_per_s"),
        "judge_vs_roofline_cpu": token_ratio("bucketed", "roofline", "tokens_per_cpu_s"),
        "parallel_pairs_per_s": rate("parallel"),
        "parallel_speedup": ratio("parallel", "bucketed"),
        "max_abs_diff": max(diffs.values(), default=0.0),
        "pairwise_max_abs_diff": diffs,
        "paths": stats,
    }


def _mb(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def format_report(result: dict) -> str:
    """A plain-text table of :func:`compare_paths`'s result."""
    lines = [f"{result['n_pairs']} pairs, style {result['style']}, head {result['head']}, "
             f"max_length {result['config']['max_length']}, token_budget {result['config']['token_budget']}, "
             f"swap averaging {'on' if result['config']['swap_average'] else 'off'}",
             f"{'path':<18} {'pairs/s':>9} {'tokens/s':>10} {'padding':>8} {'batches':>8} {'max batch tok':>13} "
             f"{'peak MB':>8} {'seconds':>8} {'cpu s':>8} {'tok/cpu s':>9}"]
    for name, s in result["paths"].items():
        lines.append(f"{name:<18} {s['pairs_per_s']:>9.2f} {s['tokens_per_s']:>10.0f} "
                     f"{100 * s['padding_fraction']:>7.1f}% {s['batches']:>8d} {s['max_batch_tokens']:>13d} "
                     f"{_mb(s['peak_memory_mb']):>8} {s['seconds']:>8.2f} {s['cpu_seconds']:>8.2f} "
                     f"{s.get('tokens_per_cpu_s') or 0:>9.0f}")
    for key, label in (("bucketing_speedup", "bucketed / fixed"), ("prefix_cache_speedup", "cached / uncached"),
                       ("parallel_speedup", "parallel / 1 process")):
        if result.get(key):
            cpu = result.get(key.replace("_speedup", "_cpu_speedup"))
            lines.append(f"{label}: {result[key]:.2f}x" + (f" (CPU time ratio {cpu:.2f}x)" if cpu else ""))
    for key, label in (("judge_vs_naive", "judge / naive loop"), ("judge_vs_roofline", "judge / roofline (tokens/s)")):
        if result.get(key):
            cpu = result.get(key + "_cpu")
            lines.append(f"{label}: {result[key]:.2f}x" + (f" (CPU time {cpu:.2f}x)" if cpu else ""))
    lines.append(f"max abs difference between paths: {result['max_abs_diff']:.2e}")
    return "\n".join(lines)
