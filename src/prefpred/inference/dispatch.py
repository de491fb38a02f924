"""The one entry point of scoring, :func:`score_pairs`: picks a back-end and hands the pairs to it.

Back-ends: the in-process transformers engine (:mod:`~prefpred.inference.engine`), data-parallel worker
processes (:mod:`~prefpred.inference.parallel`) and vLLM (:mod:`~prefpred.inference.vllm_engine`). This module
imports them; none of them imports it (shared helpers live in the leaf :mod:`~prefpred.inference.common`), so
there is no import cycle. The back-ends are imported when first used, keeping ``import prefpred.inference``
free of torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prefpred.inference.common import resolve_num_processes
from prefpred.inference.config import InferenceConfig
from prefpred.types import Pair


def score_pairs(pairs: Sequence[Pair], model, tokenizer, style, *, head: str = "label-token",
                label_token_ids=None, config: InferenceConfig | None = None,
                stats: dict | None = None) -> np.ndarray:
    """Score pairs: ``n x 3`` probabilities (a, b, tie) in input order, rows summing to 1.

    ``head="label-token"``: ``model`` is a causal LM; the probabilities are the softmax over the next-token
    logits of ``label_token_ids`` (default ``style.label_token_ids(tokenizer)``) at the last real position.
    ``head="classifier"``: ``model`` is a 3-label sequence classifier; softmax over its logits. Text comes from
    ``style.render(pair, tokenizer, max_tokens=config.max_length)``. ``stats``, when given, receives the
    throughput numbers (:meth:`InferenceStats.to_dict`).

    With ``config.engine == "vllm"``, ``model`` is a :class:`~prefpred.inference.vllm_engine.VLLMEngine`
    (reuses its ``vllm.LLM``), a ``vllm.LLM``, or a model name/path (a new ``LLM`` for this call only);
    label-token head only. With ``config.num_processes > 1`` the model is saved to a temporary folder and
    scored by one worker process per device (:func:`prefpred.inference.parallel.score_pairs_parallel`).
    """
    config = config or InferenceConfig()
    if config.engine == "vllm":
        from prefpred.inference.vllm_engine import score_pairs_vllm

        return score_pairs_vllm(pairs, model, style, tokenizer=tokenizer, head=head,
                                label_token_ids=label_token_ids, config=config, stats=stats)
    n_proc = resolve_num_processes(config.num_processes)
    if n_proc > 1 and len(pairs) > 1:
        from prefpred.inference.parallel import score_in_memory_model_parallel

        return score_in_memory_model_parallel(pairs, model, tokenizer, style, head=head,
                                              label_token_ids=label_token_ids, config=config,
                                              num_processes=n_proc, stats=stats)
    from prefpred.inference.engine import Scorer

    scorer = Scorer(model, tokenizer, style, head=head, label_token_ids=label_token_ids, config=config)
    out = scorer.score(pairs)
    if stats is not None and scorer.last_stats is not None:
        stats.update(scorer.last_stats.to_dict())
    return out
