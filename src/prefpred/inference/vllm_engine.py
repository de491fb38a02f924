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

:class:`VLLMEngine` holds one ``vllm.LLM`` per model and reuses it across calls (building one takes from
seconds to minutes: weights loaded, CUDA graphs captured, KV cache reserved).

Limits: this module has never run against a real vLLM (none on the CPU machines it was written on); its tests
drive it through a fake ``vllm`` module at the import boundary (what is constructed, how often, and what is
passed). Label-token head only; a fine-tuned LoRA model must be merged and saved before vLLM can load it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np

from prefpred.inference.batching import Encoder
from prefpred.inference.common import combine_swapped
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


class VLLMEngine:
    """One ``vllm.LLM`` for one model, built on first use and reused by every :meth:`score` call.

    A judge keeps one of these (not a model name) so that repeated ``predict_proba`` calls do not start vLLM
    again. The ``LLM`` is built with room for ``config.seq_cap`` tokens; a later call that needs longer
    sequences builds it once more (logged), since vLLM cannot grow ``max_model_len`` in place.

    Args:
        model: a model name or local path for ``vllm.LLM(model=...)``.
        config: the inference config the ``LLM`` is sized for (``prefix_cache``, ``max_length``).
        llm_kwargs: extra ``vllm.LLM`` arguments (``tensor_parallel_size``, ``gpu_memory_utilization``, ...).
        llm: an already built ``vllm.LLM`` to use instead of building one.
    """

    def __init__(self, model: str, config: InferenceConfig | None = None, llm_kwargs: dict | None = None, *,
                 llm=None):
        self.model = model
        self.config = config or InferenceConfig()
        self.llm_kwargs = dict(llm_kwargs or {})
        self._llm = llm
        self._max_len = None if llm is None else _max_model_len(llm)

    def get_llm(self, config: InferenceConfig | None = None):
        """The ``vllm.LLM`` (built on first use; again only if ``config`` needs longer sequences)."""
        config = config or self.config
        needed = config.seq_cap + 16
        if self._llm is not None and (self._max_len is None or self._max_len >= needed):
            return self._llm
        if self._llm is not None:
            logger.info("rebuilding the vLLM engine of %s for %d tokens (was %d)", self.model, needed,
                        self._max_len)
        self._llm = make_llm(self.model, config, **self.llm_kwargs)
        self._max_len = needed
        return self._llm

    def score(self, pairs: Sequence[Pair], style, *, tokenizer=None, head: str = "label-token",
              label_token_ids=None, config: InferenceConfig | None = None, stats: dict | None = None) -> np.ndarray:
        """``n x 3`` probabilities (a, b, tie) in input order; same contract as ``score_pairs``."""
        if head != "label-token":
            raise ConfigError("the vLLM engine scores generative judges only (head 'label-token')")
        vllm = _import_vllm()
        config = config or self.config
        start = time.perf_counter()
        llm = self.get_llm(config)
        tokenizer = tokenizer or llm.get_tokenizer()
        ids = label_token_ids if label_token_ids is not None else style.label_token_ids(tokenizer)
        ids = [int(i) for i in ids]
        k = 2 if config.swap_average else 1
        seqs = [q for p in pairs for q in ((p, p.swapped()) if k == 2 else (p,))]
        encoded, cut = Encoder(tokenizer, style, "label-token", config.seq_cap).encode(seqs)
        params = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=NUM_LOGPROBS, allowed_token_ids=ids)
        outputs = llm.generate([{"prompt_token_ids": [int(t) for t in x]} for x in encoded], params,
                               use_tqdm=config.progress) if encoded else []
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


def _max_model_len(llm) -> int | None:
    try:
        return int(llm.llm_engine.model_config.max_model_len)
    except (AttributeError, TypeError, ValueError):
        return None


def as_engine(model, config: InferenceConfig | None = None, llm_kwargs: dict | None = None) -> VLLMEngine:
    """A :class:`VLLMEngine` from an engine, a ``vllm.LLM`` or a model name/path (a new one for a name)."""
    if isinstance(model, VLLMEngine):
        return model
    if isinstance(model, str):
        return VLLMEngine(model, config, llm_kwargs)
    if hasattr(model, "generate") and hasattr(model, "get_tokenizer"):  # a vllm.LLM
        return VLLMEngine(str(getattr(model, "model", "vllm.LLM")), config, llm_kwargs, llm=model)
    raise ConfigError(f"the vLLM engine needs a model name/path, a vllm.LLM or a VLLMEngine, not a "
                      f"{type(model).__name__} (save a fine-tuned model, merged, and pass its folder)")


def score_pairs_vllm(pairs: Sequence[Pair], model, style, *, tokenizer=None, head: str = "label-token",
                     label_token_ids=None, config: InferenceConfig | None = None, stats: dict | None = None,
                     llm_kwargs: dict | None = None) -> np.ndarray:
    """Score pairs with vLLM; same output as ``score_pairs``.

    ``model`` is a :class:`VLLMEngine` or a ``vllm.LLM`` (reused), or a model name/path, which builds a new
    ``vllm.LLM`` for this call only: callers that score more than once keep a :class:`VLLMEngine`.
    """
    if head != "label-token":
        raise ConfigError("the vLLM engine scores generative judges only (head 'label-token')")
    _import_vllm()
    engine = as_engine(model, config, llm_kwargs)
    return engine.score(pairs, style, tokenizer=tokenizer, label_token_ids=label_token_ids, config=config,
                        stats=stats)
