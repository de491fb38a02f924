"""vLLM engine for generative (label-token) judging: ``--engine vllm``, optional extra ``prefpred[vllm]``.

vLLM is imported lazily; without it :func:`score_pairs_vllm` raises
:class:`~prefpred.types.MissingDependencyError` (one line in the CLI, exit code 2). Prompts are sent as token
ids built by the same :class:`~prefpred.inference.batching.Encoder` as the transformers engine, so both engines
see identical inputs; vLLM's automatic prefix caching plays the part of the shared-prefix cache.

The label probabilities come from the log-probabilities vLLM returns for the first generated token. By default
vLLM reports the top-``k`` *raw* log-probabilities over the whole vocabulary (before the allowed-token filter),
plus the sampled token, which is always a label token since generation is restricted to them. A label token
missing from the top ``k`` is given the smallest returned log-probability (an upper bound on its true value).
The three values are then renormalised with a softmax, which equals the transformers engine's softmax over the
three label logits whenever all three are returned.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np

from prefpred.inference.config import InferenceConfig, InferenceStats
from prefpred.types import ConfigError, MissingDependencyError, Pair

logger = logging.getLogger(__name__)

NUM_LOGPROBS = 20
"""Top log-probabilities requested per request (vLLM's default ``max_logprobs``)."""


def _value(lp) -> float:
    v = getattr(lp, "logprob", lp)
    return float(v)


def label_probs_from_logprobs(logprobs: Mapping | None, label_token_ids: Sequence[int]) -> np.ndarray:
    """Three probabilities (a, b, tie) from one position's ``{token_id: Logprob | float}`` mapping.

    Missing label tokens get the smallest returned log-probability; no information at all gives uniform.
    """
    if not logprobs:
        return np.full(3, 1.0 / 3.0)
    values = {int(t): _value(lp) for t, lp in logprobs.items()}
    finite = [v for v in values.values() if math.isfinite(v)]
    floor = min(finite) if finite else -math.inf
    lps = np.array([values.get(int(t), floor) for t in label_token_ids], dtype=np.float64)
    if not np.isfinite(lps).any():
        return np.full(3, 1.0 / 3.0)
    lps = lps - np.max(lps[np.isfinite(lps)])
    p = np.exp(lps)
    return p / p.sum()


def probs_from_request_outputs(outputs: Sequence, label_token_ids: Sequence[int]) -> np.ndarray:
    """``n x 3`` probabilities from vLLM ``RequestOutput``s (first completion, first generated position)."""
    rows = []
    for out in outputs:
        completion = out.outputs[0] if getattr(out, "outputs", None) else None
        lps = getattr(completion, "logprobs", None) if completion is not None else None
        rows.append(label_probs_from_logprobs(lps[0] if lps else None, label_token_ids))
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 3)


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise MissingDependencyError("the vLLM engine needs vLLM, which is not installed: "
                                     "pip install 'prefpred[vllm]'") from e
    return vllm


def make_llm(model: str, config: InferenceConfig | None = None, **llm_kwargs):
    """A ``vllm.LLM`` for judging: automatic prefix caching (``config.prefix_cache``), room for ``max_length``."""
    vllm = _import_vllm()
    config = config or InferenceConfig()
    kwargs = {"enable_prefix_caching": config.prefix_cache, "max_model_len": config.seq_cap + 16,
              "max_logprobs": NUM_LOGPROBS}
    kwargs.update(llm_kwargs)
    return vllm.LLM(model=model, **kwargs)


def score_pairs_vllm(pairs: Sequence[Pair], model, style, *, tokenizer=None, head: str = "label-token",
                     label_token_ids=None, config: InferenceConfig | None = None, stats: dict | None = None,
                     llm_kwargs: dict | None = None) -> np.ndarray:
    """Score pairs with vLLM: ``model`` is a model name/path or a ``vllm.LLM``; same output as ``score_pairs``."""
    if head != "label-token":
        raise ConfigError("the vLLM engine scores generative judges only (head 'label-token')")
    vllm = _import_vllm()
    from prefpred.inference.batching import Encoder
    from prefpred.inference.engine import combine_swapped

    config = config or InferenceConfig()
    start = time.perf_counter()
    llm = make_llm(model, config, **(llm_kwargs or {})) if isinstance(model, str) else model
    tokenizer = tokenizer or llm.get_tokenizer()
    ids = label_token_ids if label_token_ids is not None else style.label_token_ids(tokenizer)
    ids = [int(i) for i in ids]
    seqs: list[Pair] = []
    k = 2 if config.swap_average else 1
    for p in pairs:
        seqs.append(p)
        if k == 2:
            seqs.append(p.swapped())
    encoded, cut = Encoder(tokenizer, style, "label-token", config.seq_cap).encode(seqs)
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=NUM_LOGPROBS, allowed_token_ids=ids)
    outputs = llm.generate([{"prompt_token_ids": x} for x in encoded], params, use_tqdm=config.progress) \
        if encoded else []
    probs = probs_from_request_outputs(outputs, ids)
    out = combine_swapped(probs[0::k], probs[1::k] if k == 2 else None) if len(pairs) else np.zeros((0, 3))
    st = InferenceStats(pairs=len(pairs), sequences=len(encoded), seconds=time.perf_counter() - start,
                        tokens=sum(len(x) for x in encoded), truncated=cut, device="vllm")
    st.padded_tokens = st.computed_tokens = st.tokens
    if pairs:
        logger.info("scored %s", st.summary())
    if stats is not None:
        stats.update(st.to_dict())
    return out
