"""Zero-shot LLM judge: an instruct causal LM asked which response a human prefers, no training.

Two ways to turn the model's answer into probabilities:

* **label-token probabilities** (default): the prompt style's three answer words (``0``/``1``/``2`` for
  ``seed-digits``) are single tokens; the probabilities are the softmax over the model's next-token logits at
  those three ids, right after the rendered prompt. Scored in batches by the shared engine
  (:func:`prefpred.inference.score_pairs`: length buckets, shared-prefix KV cache, swap averaging);
* **parse-generation** (``parse_generation=True``): what the original study did: greedy-generate a few tokens,
  parse the first label digit, one-hot on it (uniform 1/3 each when nothing parses). The share of answers that
  did not parse is kept in :attr:`ZeroShotJudge.unparseable_rate_`, for comparison with the first mode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.models.base import PreferenceModel, read_model_meta, register_model
from prefpred.prompts import PromptStyle, get_style, has_chat_template
from prefpred.types import ConfigError, Pair, swap_proba

logger = logging.getLogger(__name__)

_PARAMS = ("model", "style", "max_length", "device", "dtype", "load_in_4bit", "swap_average", "parse_generation",
           "max_new_tokens", "token_budget", "max_batch_size", "prefix_cache", "num_processes", "engine")


@register_model("zero-shot")
class ZeroShotJudge(PreferenceModel):
    """Judge pairs zero-shot with any causal LM (hub id or local directory).

    Args:
        model: Hugging Face hub id or local model directory (``minilm`` style aliases of
            :func:`prefpred.hf.resolve_model_path` also work, though an encoder cannot judge).
        style: Prompt style name (:func:`prefpred.prompts.list_styles`); its label words must be single tokens.
        max_length: Token cap per rendered prompt; longer pairs are truncated by the style, never dropped.
        device: ``auto`` (CUDA, then MPS, then CPU) or a torch device string.
        dtype: ``auto`` (bf16/fp16 on GPU, fp32 on CPU) or ``float32``/``bfloat16``/``float16``.
        load_in_4bit: Load the LLM in 4-bit NF4 (bitsandbytes).
        swap_average: Also judge every pair with A and B exchanged and average (removes position bias).
        parse_generation: Generate and parse the answer instead of reading the label-token probabilities.
        max_new_tokens: Tokens generated per pair in parse-generation mode.
        token_budget: Maximum padded tokens per batch.
        max_batch_size: Maximum sequences per batch.
        prefix_cache: Encode the style's shared prefix once and reuse its KV cache (label-token mode).
        num_processes: Data-parallel scoring processes (``"auto"`` = one per GPU).
        engine: ``hf`` (transformers) or ``vllm`` (label-token mode only; needs ``prefpred[vllm]``).

    Attributes set by :meth:`predict_proba`:
        unparseable_rate_: Share of generated answers with no label word (parse-generation mode; else ``None``).
        generations_: The generated answers of the last call (parse-generation mode; direct then swapped).
        inference_stats_: Throughput numbers of the last label-token scoring call.
    """

    def __init__(self, model: str = "", style: str = "seed-digits", max_length: int = 2048, device: str = "auto",
                 dtype: str = "auto", load_in_4bit: bool = False, swap_average: bool = True,
                 parse_generation: bool = False, max_new_tokens: int = 8, token_budget: int = 16384,
                 max_batch_size: int = 32, prefix_cache: bool = True, num_processes: int | str = 1,
                 engine: str = "hf"):
        self.model = model
        self.style = style
        self.max_length = max_length
        self.device = device
        self.dtype = dtype
        self.load_in_4bit = load_in_4bit
        self.swap_average = swap_average
        self.parse_generation = parse_generation
        self.max_new_tokens = max_new_tokens
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.prefix_cache = prefix_cache
        self.num_processes = num_processes
        self.engine = engine

    # ------------------------------------------------------------------------------------ params
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _PARAMS}

    def set_params(self, **params: Any) -> ZeroShotJudge:
        for k, v in params.items():
            if k not in _PARAMS:
                raise ConfigError(f"zero-shot judge: unknown parameter {k!r} (known: {', '.join(_PARAMS)})")
            setattr(self, k, v)
        self.__dict__.pop("_lm", None)
        self.__dict__.pop("_tok", None)
        self.__dict__.pop("_vllm", None)
        return self

    @property
    def prompt_style(self) -> PromptStyle:
        return get_style(self.style)

    # ------------------------------------------------------------------------------------ loading
    def _model_path(self) -> str:
        from prefpred.hf import resolve_model_path

        if not self.model:
            raise ConfigError("zero-shot judge: no model given (a hub id or a local model directory)")
        return resolve_model_path(str(self.model))

    def load_tokenizer(self):
        """The tokenizer (loaded once; left padding for generation)."""
        if getattr(self, "_tok", None) is None:
            from prefpred.hf import load_tokenizer

            self._tok = load_tokenizer(self._model_path())
        return self._tok

    def load_lm(self):
        """The causal LM on the configured device and dtype (loaded once)."""
        if getattr(self, "_lm", None) is None:
            from prefpred.hf import load_causal_lm

            self._lm = load_causal_lm(self._model_path(), device=self.device, dtype=self.dtype,
                                      load_in_4bit=self.load_in_4bit).eval()
        return self._lm

    def load_vllm(self):
        """The vLLM engine of the model (``engine="vllm"``): its ``vllm.LLM`` is built once, on first use."""
        if getattr(self, "_vllm", None) is None:
            from prefpred.inference.vllm_engine import VLLMEngine

            self._vllm = VLLMEngine(self._model_path())
        return self._vllm

    # ------------------------------------------------------------------------------------ interface
    def fit(self, pairs: Sequence[Pair], eval_pairs: Sequence[Pair] | None = None) -> ZeroShotJudge:
        """No training: a zero-shot judge only checks its prompt style and returns ``self``."""
        get_style(self.style)  # raises ConfigError for an unknown style
        return self

    def predict_proba(self, pairs: Sequence[Pair]) -> np.ndarray:
        """``n x 3`` probabilities (a, b, tie).

        Label-token mode: softmax over the next-token logits of the style's three label tokens (averaged over
        the A/B and B/A orders with ``swap_average``). Parse-generation mode: one-hot on the parsed answer,
        uniform when it does not parse.
        """
        pairs = list(pairs)
        style = self.prompt_style
        if self.parse_generation:
            return self._predict_by_generation(pairs, style)
        self.unparseable_rate_ = None
        self.generations_ = None
        if not pairs:
            return np.zeros((0, 3))
        from prefpred.inference import InferenceConfig, score_pairs

        config = InferenceConfig(max_length=self.max_length, token_budget=self.token_budget,
                                 max_batch_size=self.max_batch_size, swap_average=self.swap_average,
                                 prefix_cache=self.prefix_cache, num_processes=self.num_processes,
                                 engine=self.engine)
        tok = self.load_tokenizer()
        label_ids = style.label_token_ids(tok)
        model = self.load_vllm() if self.engine == "vllm" else self.load_lm()
        stats: dict = {}
        proba = score_pairs(pairs, model, tok, style, head="label-token", label_token_ids=label_ids,
                            config=config, stats=stats)
        self.inference_stats_ = stats
        return np.asarray(proba, dtype=np.float64)

    # ------------------------------------------------------------------------------------ generation
    def _predict_by_generation(self, pairs: list[Pair], style: PromptStyle) -> np.ndarray:
        if self.engine != "hf":
            raise ConfigError("parse-generation mode runs on the hf engine only")
        orders = [pairs, [p.swapped() for p in pairs]] if self.swap_average else [pairs]
        answers: list[str] = []
        probas = []
        for order in orders:
            texts = generate_answers(order, self.load_lm(), self.load_tokenizer(), style,
                                     max_length=self.max_length, max_new_tokens=self.max_new_tokens,
                                     max_batch_size=self.max_batch_size, token_budget=self.token_budget)
            answers.extend(texts)
            probas.append(answers_to_proba(texts, style))
        proba = probas[0] if len(probas) == 1 else (probas[0] + swap_proba(probas[1])) / 2.0
        parsed = [style.parse_answer(t) for t in answers]
        self.generations_ = answers
        self.unparseable_rate_ = float(np.mean([p is None for p in parsed])) if parsed else 0.0
        self.inference_stats_ = None
        logger.info("parse-generation: %d answers, %.1f%% unparseable", len(answers),
                    100 * self.unparseable_rate_)
        return proba

    # ------------------------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``prefpred_model.json`` naming the model (absolute path for a local directory) and settings.

        No weights are copied: a hub id stays a hub id, a local directory is referenced where it is.
        """
        directory = Path(directory)
        params = self.get_params()
        local = Path(str(self.model))
        if self.model and local.exists():
            params["model"] = str(local.resolve())
        self._write_meta(directory, {"params": params})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ZeroShotJudge:
        meta = read_model_meta(directory)
        params = {k: v for k, v in meta.get("params", {}).items() if k in _PARAMS}
        return cls(**params)


def answers_to_proba(texts: Sequence[str], style: PromptStyle) -> np.ndarray:
    """One-hot rows on each text's parsed label; ``1/3`` each where nothing parses."""
    out = np.full((len(texts), 3), 1.0 / 3.0)
    for i, t in enumerate(texts):
        k = style.parse_answer(t)
        if k is not None:
            out[i] = 0.0
            out[i, k] = 1.0
    return out


def generate_answers(pairs: Sequence[Pair], model, tokenizer, style: PromptStyle, *, max_length: int,
                     max_new_tokens: int = 8, max_batch_size: int = 32, token_budget: int = 16384) -> list[str]:
    """Greedy-generate up to ``max_new_tokens`` tokens after each rendered pair; the decoded new text.

    Prompts are rendered with ``max_tokens=max_length`` (the same text the label-token mode scores), sorted
    by length and left-padded into batches of at most ``max_batch_size`` sequences and ``token_budget``
    padded tokens. Prompt and answer must fit the model's context (``max_position_embeddings``): prompts are
    capped below it and ``max_new_tokens`` is clamped per batch to the room left (logged once).
    """
    import torch
    from transformers import GenerationConfig

    from prefpred.inference.engine import ProgressLog, model_device

    chat = has_chat_template(tokenizer)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(context, int) and context > 1:
        max_length = min(max_length, context - min(max_new_tokens, max(1, context // 2)))
    else:
        context = None
    texts = [style.render(p, tokenizer, max_tokens=max_length) for p in pairs]
    ids = tokenizer(texts, add_special_tokens=not chat)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                               eos_token_id=tokenizer.eos_token_id)
    device = model_device(model)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            cur = batches[-1]
            width = len(ids[cur[0]]) + max_new_tokens
            if len(cur) < max_batch_size and (len(cur) + 1) * width <= token_budget:
                cur.append(i)
                continue
        batches.append([i])
    out: list[str] = [""] * len(ids)
    clamped = False
    with torch.inference_mode():
        progress = ProgressLog(batches, len(ids), label="generating", count=len)
        for batch in progress:
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                n = len(ids[i])
                input_ids[row, width - n:] = torch.tensor(ids[i], dtype=torch.long)
                mask[row, width - n:] = 1
            n_new = max(1, min(max_new_tokens, context - width)) if context else max_new_tokens
            if n_new < max_new_tokens and not clamped:
                clamped = True
                logger.warning("max_new_tokens %d does not fit the %d-token context after a %d-token prompt: "
                               "generating %d", max_new_tokens, context, width, n_new)
            gen = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                 generation_config=gen_cfg, max_new_tokens=n_new)
            new = gen[:, width:].cpu()
            for row, i in enumerate(batch):
                out[i] = tokenizer.decode(new[row].tolist(), skip_special_tokens=True)
    return out
