"""Fast batched inference: one engine behind ``predict``, ``evaluate``, ``experiment`` and LLM judging.

* length-bucketed dynamic batches under a token budget (input order restored at the end);
* swap averaging ((A,B) and (B,A) in the same batched pass), on by default;
* a shared-prefix KV cache for label-token judging (instructions encoded once);
* background tokenization/collation threads, pinned memory and non-blocking copies on CUDA;
* data parallel over devices (one process each), and a vLLM engine for generative judging;
* throughput statistics (pairs/s, tokens/s, padding fraction, peak memory) on every call.
"""

from prefpred.inference.batching import fit_length, pack_batches
from prefpred.inference.config import InferenceConfig, InferenceStats
from prefpred.inference.engine import Scorer, combine_swapped, resolve_num_processes, score_pairs
from prefpred.inference.parallel import score_pairs_parallel
from prefpred.inference.vllm_engine import label_probs_from_logprobs, score_pairs_vllm

__all__ = [
    "InferenceConfig",
    "InferenceStats",
    "Scorer",
    "combine_swapped",
    "fit_length",
    "label_probs_from_logprobs",
    "pack_batches",
    "resolve_num_processes",
    "score_pairs",
    "score_pairs_parallel",
    "score_pairs_vllm",
]
