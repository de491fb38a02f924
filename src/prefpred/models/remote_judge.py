"""Remote zero-shot judge: the local judge's prompt and swap averaging, scored by an OpenAI-compatible server.

:class:`RemoteJudge` sends every pair, rendered by a :mod:`prefpred.prompts` style (``PromptStyle.fill``: the same
user message the local :class:`~prefpred.models.judge.ZeroShotJudge` puts through the model's chat template), as
the only user message of a chat completion asking for one token with ``logprobs`` and ``top_logprobs``. The
three label words' log-probabilities among the first token's ``top_logprobs`` become probabilities exactly as
the vLLM engine does it (:func:`prefpred.inference.label_probs_from_logprobs`: a label word missing from the top
``k`` gets the smallest returned log-probability, an upper bound), and the A/B and B/A orders are averaged with
:func:`prefpred.inference.combine_swapped`, as the local judge does. ``parse_generation=True`` asks for a few
tokens instead and parses the label word (for servers that return no log-probabilities, e.g.
``transformers serve``), one-hot or uniform like the local judge's parse-generation mode.

Requests go through :class:`prefpred.synth.client.TeacherClient`: bounded concurrency, counted retries, an overall
deadline per attempt, a circuit breaker, and the API key (read from ``api_key_env``) never logged or saved.

Limits: the server applies its own chat template and runs its own weights (a llama.cpp server runs the quantized
GGUF), so probabilities are close to, not equal to, the local judge's on the same model. There is no
tokenizer here, so pairs are not truncated: a pair longer than the server's context is refused, gets the uniform
row and is counted in :attr:`RemoteJudge.failed_`. A label token is matched by its text (``"0"``, ``" 0"``);
a server that returns no ``top_logprobs`` at all fails with :class:`~prefpred.types.ConfigError`. Hosted APIs
cap ``top_logprobs`` at 20.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.inference import combine_swapped, label_probs_from_logprobs
from prefpred.models.base import PreferenceModel, read_model_meta, register_model
from prefpred.models.judge import answers_to_proba
from prefpred.prompts import PromptStyle, get_style
from prefpred.types import ConfigError, Pair

logger = logging.getLogger(__name__)

_PARAMS = ("base_url", "model", "style", "swap_average", "parse_generation", "max_new_tokens", "top_logprobs",
           "api_key_env", "concurrency", "timeout", "max_retries", "max_consecutive_failures")


@register_model("remote-judge")
class RemoteJudge(PreferenceModel):
    """Judge pairs zero-shot with a model behind an OpenAI-compatible server (see the module docstring).

    Args:
        base_url: Server URL including ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``).
        model: Model name on the server.
        style: Prompt style name (:func:`prefpred.prompts.list_styles`).
        swap_average: Also judge every pair with A and B exchanged and average (removes position bias).
        parse_generation: Generate ``max_new_tokens`` tokens and parse the label word instead of reading the
            label-token log-probabilities.
        max_new_tokens: Tokens generated per pair in parse-generation mode.
        top_logprobs: How many top log-probabilities to ask for (label-token mode).
        api_key_env: Environment variable holding the API key (a local server needs none).
        concurrency: Requests in flight at once.
        timeout: Overall deadline of one attempt, in seconds.
        max_retries: Retries of a request after HTTP 429/5xx, a timeout or a connection error.
        max_consecutive_failures: Stop after this many failed attempts in a row (0: never).

    Attributes set by :meth:`predict_proba`:
        failed_: Requests that got no answer (their pair's order counts as uniform).
        no_label_: Label-token answers whose ``top_logprobs`` held none of the label words (uniform).
        unparseable_rate_: Share of generated answers with no label word (parse-generation mode; else ``None``).
        generations_: The generated answers (parse-generation mode; direct then swapped).
    """

    def __init__(self, base_url: str = "", model: str = "", style: str = "seed-digits", swap_average: bool = True,
                 parse_generation: bool = False, max_new_tokens: int = 8, top_logprobs: int = 20,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4, timeout: float = 120.0,
                 max_retries: int = 3, max_consecutive_failures: int = 10):
        self.base_url = base_url
        self.model = model
        self.style = style
        self.swap_average = swap_average
        self.parse_generation = parse_generation
        self.max_new_tokens = max_new_tokens
        self.top_logprobs = top_logprobs
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_consecutive_failures = max_consecutive_failures

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _PARAMS}

    def set_params(self, **params: Any) -> RemoteJudge:
        for k, v in params.items():
            if k not in _PARAMS:
                raise ConfigError(f"remote judge: unknown parameter {k!r} (known: {', '.join(_PARAMS)})")
            setattr(self, k, v)
        return self

    @property
    def prompt_style(self) -> PromptStyle:
        return get_style(self.style)

    # ------------------------------------------------------------------------------------ interface
    def fit(self, pairs: Sequence[Pair], eval_pairs: Sequence[Pair] | None = None) -> RemoteJudge:
        """No training: checks the settings and returns ``self``."""
        get_style(self.style)
        self._client_config().validate()
        if not self.model:
            raise ConfigError("remote judge: no model name given (--model)")
        if not 1 <= self.top_logprobs <= 20:
            raise ConfigError("remote judge: top_logprobs must be between 1 and 20")
        return self

    def predict_proba(self, pairs: Sequence[Pair]) -> np.ndarray:
        """``n x 3`` probabilities (a, b, tie), swap-averaged unless ``swap_average=False``."""
        self.fit([])
        pairs = list(pairs)
        style = self.prompt_style
        if not pairs:
            return np.zeros((0, 3))
        orders = [pairs, [p.swapped() for p in pairs]] if self.swap_average else [pairs]
        shown = [p for order in orders for p in order]
        replies = asyncio.run(self._ask_all([style.fill(p) for p in shown]))
        self.failed_ = sum(r is None for r in replies)
        if self.parse_generation:
            texts = [r.text or "" if r is not None else "" for r in replies]
            rows = answers_to_proba(texts, style)
            parsed = [style.parse_answer(t) for t in texts]
            self.generations_ = texts
            self.unparseable_rate_ = float(np.mean([p is None for p in parsed]))
            self.no_label_ = 0
        else:
            rows = self._label_rows(replies, style)
            self.generations_ = None
            self.unparseable_rate_ = None
        n = len(pairs)
        proba = combine_swapped(rows[:n], rows[n:] if self.swap_average else None)
        if self.failed_:
            logger.warning("%d of %d requests got no answer; their orders count as uniform", self.failed_,
                           len(replies))
        return np.asarray(proba, dtype=np.float64)

    def _label_rows(self, replies: Sequence[Any], style: PromptStyle) -> np.ndarray:
        answered = [r for r in replies if r is not None]
        if answered and all(r.top_logprobs is None for r in answered):
            raise ConfigError(f"the server at {self.base_url} returned no top_logprobs (it does not support "
                              "logprobs): use --parse-generation")
        rows, self.no_label_ = [], 0
        for r in replies:
            top = (r.top_logprobs or {}) if r is not None else {}
            mapping = label_logprobs(top, style.label_words)
            if r is not None and not any(i in mapping for i in range(3)):
                self.no_label_ += 1
            rows.append(label_probs_from_logprobs(mapping, [0, 1, 2]))
        if self.no_label_:
            logger.warning("%d answer(s) had no label word among their top %d tokens (counted as uniform)",
                           self.no_label_, self.top_logprobs)
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), 3)

    # ------------------------------------------------------------------------------------ requests
    def _client_config(self):
        from prefpred.synth.client import ClientConfig

        return ClientConfig(base_url=self.base_url, api_key_env=self.api_key_env, concurrency=self.concurrency,
                            timeout=self.timeout, max_retries=self.max_retries, temperature=0.0,
                            max_tokens=self.max_new_tokens if self.parse_generation else 1, json_mode="none",
                            max_consecutive_failures=self.max_consecutive_failures)

    async def _ask_all(self, contents: Sequence[str]) -> list[Any]:
        """One reply per user message (``None`` where the request failed), in order, ``concurrency`` at a time."""
        from tqdm.auto import tqdm

        from prefpred.synth.client import RequestFailed, TeacherClient, resolve_api_key

        cfg = self._client_config()
        client = TeacherClient(cfg, resolve_api_key(cfg.api_key_env, cfg.base_url))
        extra = None if self.parse_generation else {"logprobs": True, "top_logprobs": int(self.top_logprobs)}
        gate = asyncio.Semaphore(cfg.concurrency)
        bar = tqdm(total=len(contents), desc="judging", unit="req", disable=not sys.stderr.isatty())

        async def one(content: str):
            async with gate:
                try:
                    return await client.chat(self.model, [{"role": "user", "content": content}], extra=extra)
                except RequestFailed as e:
                    logger.warning("a judging request failed: %s", e)
                    return None
                finally:
                    bar.update(1)

        try:
            return list(await asyncio.gather(*(one(c) for c in contents)))
        finally:
            bar.close()
            await client.close()

    # ------------------------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``prefpred_model.json`` with the server URL, model name and settings (never the API key)."""
        directory = Path(directory)
        self._write_meta(directory, {"params": self.get_params()})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> RemoteJudge:
        meta = read_model_meta(directory)
        return cls(**{k: v for k, v in meta.get("params", {}).items() if k in _PARAMS})


def label_logprobs(top: dict[str, float], label_words: Sequence[str]) -> dict[int, float]:
    """``top_logprobs`` (token text -> log-probability) keyed for :func:`label_probs_from_logprobs`: label ``i``
    under key ``i`` (the best of its spellings, e.g. ``"0"`` and ``" 0"``), every other token under a key of
    its own (they set the floor given to a missing label)."""
    out: dict[int, float] = {}
    for k, (token, lp) in enumerate(top.items()):
        word = token.strip()
        if word in label_words:
            i = label_words.index(word)
            out[i] = max(lp, out.get(i, -np.inf))
        else:
            out[3 + k] = lp
    return out
