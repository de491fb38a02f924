"""Side-by-side throughput comparison of the engine's paths (``prefpred bench inference``, ``bench/``).

Paths, all on the same pairs and model:

* ``bucketed``: length-sorted dynamic batches under the token budget (prefix cache on for label-token heads);
* ``fixed``: fixed-size batches in input order, ``token_budget // max_length`` sequences each, i.e. the same
  maximum padded tokens per batch (the same peak batch memory) as ``bucketed``;
* ``bucketed_uncached`` (label-token heads): ``bucketed`` without the shared-prefix cache;
* ``parallel`` (``processes > 1``): ``bucketed`` over that many worker processes.

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


def compare_paths(pairs: Sequence[Pair], model, tokenizer, style, *, head: str = "label-token",
                  config: InferenceConfig | None = None, processes: int = 1, repeats: int = 1,
                  warmup: int = 4, paths: Sequence[str] | None = None) -> dict:
    """Score ``pairs`` along each path; return a JSON-ready dict of throughput numbers and agreement.

    ``repeats`` > 1 keeps the fastest of several runs of each path (less noise on a busy machine).
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
    for name, cfg in todo.items():
        for _ in range(max(1, repeats)):
            s: dict = {}
            p = score_pairs(pairs, model, tokenizer, style, head=head, config=cfg, stats=s)
            if name not in stats or s["seconds"] < stats[name]["seconds"]:
                probs[name], stats[name] = p, s
        logger.info("%-18s %8.2f pairs/s  %9.0f tokens/s  padding %5.1f%%  max batch tokens %d", name,
                    stats[name]["pairs_per_s"], stats[name]["tokens_per_s"],
                    100 * stats[name]["padding_fraction"], stats[name]["max_batch_tokens"])
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
        "parallel_pairs_per_s": rate("parallel"),
        "parallel_speedup": ratio("parallel", "bucketed"),
        "max_abs_diff": max(diffs.values(), default=0.0),
        "pairwise_max_abs_diff": diffs,
        "paths": stats,
    }


def format_report(result: dict) -> str:
    """A plain-text table of :func:`compare_paths`'s result."""
    lines = [f"{result['n_pairs']} pairs, style {result['style']}, head {result['head']}, "
             f"max_length {result['config']['max_length']}, token_budget {result['config']['token_budget']}, "
             f"swap averaging {'on' if result['config']['swap_average'] else 'off'}",
             f"{'path':<18} {'pairs/s':>9} {'tokens/s':>10} {'padding':>8} {'batches':>8} {'max batch tok':>13} "
             f"{'peak MB':>8} {'seconds':>8} {'cpu s':>8}"]
    for name, s in result["paths"].items():
        lines.append(f"{name:<18} {s['pairs_per_s']:>9.2f} {s['tokens_per_s']:>10.0f} "
                     f"{100 * s['padding_fraction']:>7.1f}% {s['batches']:>8d} {s['max_batch_tokens']:>13d} "
                     f"{s['peak_memory_mb']:>8.0f} {s['seconds']:>8.2f} {s['cpu_seconds']:>8.2f}")
    for key, label in (("bucketing_speedup", "bucketed / fixed"), ("prefix_cache_speedup", "cached / uncached"),
                       ("parallel_speedup", "parallel / 1 process")):
        if result.get(key):
            cpu = result.get(key.replace("_speedup", "_cpu_speedup"))
            lines.append(f"{label}: {result[key]:.2f}x" + (f" (CPU time ratio {cpu:.2f}x)" if cpu else ""))
    lines.append(f"max abs difference between paths: {result['max_abs_diff']:.2e}")
    return "\n".join(lines)
