"""Fast batched inference: one engine behind ``predict``, ``evaluate``, ``experiment`` and LLM judging.

* length-bucketed dynamic batches under a token budget (input order restored at the end);
* swap averaging ((A,B) and (B,A) in the same batched pass), on by default;
* a shared-prefix KV cache for label-token judging (instructions encoded once);
* background tokenization/collation threads, pinned memory and non-blocking copies on CUDA;
* data parallel over devices (one process each), and a vLLM engine for generative judging;
* throughput statistics (pairs/s, tokens/s, padding fraction, peak memory) on every call.

Layout (imports point one way, no cycle): ``config`` and ``common`` are leaves; ``batching`` encodes and pads;
the back-ends ``engine`` (transformers), ``parallel`` (worker processes running ``engine``) and ``vllm_engine``
use only those; ``dispatch.score_pairs`` picks a back-end; ``bench`` times the dispatcher.
"""

from prefpred.inference.batching import fit_length, pack_batches
from prefpred.inference.common import combine_swapped, resolve_num_processes
from prefpred.inference.config import InferenceConfig, InferenceStats
from prefpred.inference.dispatch import score_pairs
from prefpred.inference.engine import Scorer
from prefpred.inference.parallel import score_pairs_parallel
from prefpred.inference.vllm_engine import VLLMEngine, label_probs_from_logprobs, score_pairs_vllm

__all__ = [
    "InferenceConfig",
    "InferenceStats",
    "Scorer",
    "VLLMEngine",
    "combine_swapped",
    "fit_length",
    "label_probs_from_logprobs",
    "pack_batches",
    "resolve_num_processes",
    "score_pairs",
    "score_pairs_parallel",
    "score_pairs_vllm",
]
