"""The in-process (transformers) scoring engine: :class:`Scorer`.

A back-end: :func:`prefpred.inference.dispatch.score_pairs` picks it (or vLLM, or data-parallel workers);
this module imports no other back-end.

What makes it fast on real weights (``prefpred bench inference`` measures it against a naive loop and the
body-only roofline):

* label-token heads ask the model for logits at the last position only (``logits_to_keep=1``): a naive
  ``model(**inputs)`` computes the vocabulary projection at every position (+26% work on SmolLM2);
* length-bucketed batches under a token budget keep padding to a few percent, and batched GEMMs beat
  one-sequence forwards;
* the style's shared prefix is encoded once and its keys/values reused (a fresh ``DynamicCache`` per batch,
  passed through the current ``cache=`` argument) only in batches where the prefix is a real share of the work
  (:data:`MIN_PREFIX_SHARE`), so the cache never makes scoring slower;
* long jobs log ``pairs done, pairs/s, ETA`` lines (:class:`ProgressLog`).

Limits: one process, one device; the prefix cache needs a model whose cache has per-layer ``keys``/``values``
(transformers' own decoder models), else scoring runs without it.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterator, Sequence

import numpy as np

from prefpred.inference.batching import (
    Batch,
    Encoder,
    Prefetcher,
    collate,
    encode_in_background,
    pack_batches,
)
from prefpred.inference.common import combine_swapped
from prefpred.inference.config import HEADS, InferenceConfig, InferenceStats
from prefpred.types import ConfigError, Pair

logger = logging.getLogger(__name__)


def model_device(model):
    """The device the model's inputs go to."""
    import torch

    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


MIN_PREFIX_SHARE = 0.05
"""A batch reuses the shared-prefix cache only when the prefix is at least this share of its mean length.

The cache saves the prefix's share of the body's work (the projections and MLPs of ``prefix`` positions per
row) and costs a copy of the prefix keys/values per layer and a wider attention mask. Measured on SmolLM2 with
``seed-digits`` (51-token prefix) at 256 tokens it saved 10% of the CPU time; below a few percent the saving
is within the noise and the copies can make it a loss, so the engine scores such batches without the cache.
"""


def cache_pays(prefix: int, seqs: Sequence[np.ndarray]) -> bool:
    """Whether reusing ``prefix`` cached positions is worth it for a batch of ``seqs`` (see MIN_PREFIX_SHARE)."""
    if prefix <= 0 or not seqs:
        return False
    mean = sum(len(x) for x in seqs) / len(seqs)
    return prefix >= MIN_PREFIX_SHARE * mean


def cache_kwarg(model) -> str:
    """Name of the forward argument that takes a KV cache: ``cache`` (transformers >= 5.2x) or the older
    ``past_key_values`` (deprecated there; still the name in older versions and some remote-code models)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


class Scorer:
    """Scores pairs with one model; keeps the shared-prefix cache and the last call's throughput stats.

    Args:
        model: a causal LM (``head="label-token"``) or a 3-label sequence classifier (``head="classifier"``).
        tokenizer: its tokenizer (needs a pad token, or the EOS token is used).
        style: a :class:`prefpred.prompts.PromptStyle` (``render``, ``shared_prefix``, ``label_token_ids``).
        head: ``"label-token"``: softmax over the next-token logits of the three label tokens (order a, b, tie)
            at the last position; ``"classifier"``: softmax over the classifier's 3 logits.
        label_token_ids: three token ids (a, b, tie); default ``style.label_token_ids(tokenizer)``.
        config: batching options (:class:`InferenceConfig`).
    """

    def __init__(self, model, tokenizer, style, *, head: str = "label-token", label_token_ids=None,
                 config: InferenceConfig | None = None):
        if head not in HEADS:
            raise ConfigError(f"unknown scoring head {head!r} (use {', '.join(HEADS)})")
        self.model = model
        self.tokenizer = tokenizer
        self.style = style
        self.head = head
        self.config = config or InferenceConfig()
        self.last_stats: InferenceStats | None = None
        self.label_token_ids: list[int] | None = None
        if head == "label-token":
            ids = label_token_ids if label_token_ids is not None else style.label_token_ids(tokenizer)
            self.label_token_ids = [int(i) for i in ids]
            if len(self.label_token_ids) != 3:
                raise ConfigError(f"need 3 label token ids (a, b, tie), got {self.label_token_ids}")
        # a decoder classifier finds its last token through config.pad_token_id: pad with exactly that id
        pad = getattr(getattr(model, "config", None), "pad_token_id", None) if head == "classifier" else None
        if pad is None:
            pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.encoder = Encoder(tokenizer, style, head, self.config.seq_cap)
        self._prefix_kv = None  # list of (key, value) per layer, batch size 1
        self._prefix_len = 0
        self._prefix_failed = False
        self._logits_kw = {"logits_to_keep": 1} if head == "label-token" and _accepts(model.forward,
                                                                                       "logits_to_keep") else {}
        self._cache_kw = cache_kwarg(model)

    # ------------------------------------------------------------------ public
    def reset_cache(self) -> None:
        """Forget the shared-prefix KV cache (call after changing the model's weights)."""
        self._prefix_kv, self._prefix_len, self._prefix_failed = None, 0, False

    def score(self, pairs: Sequence[Pair]) -> np.ndarray:
        """``n x 3`` probabilities (a, b, tie) in input order; rows sum to 1."""
        import torch

        cfg = self.config
        pairs = list(pairs)
        start, cpu_start = time.perf_counter(), time.process_time()
        device = model_device(self.model)
        stats = InferenceStats(pairs=len(pairs), device=str(device))
        if not pairs:
            self.last_stats = stats
            return np.zeros((0, 3), dtype=np.float64)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        peak_rss = _rss_mb()
        # sequence s: pair s // k, swapped when s % k == 1 (k = 2 with swap averaging)
        k = 2 if cfg.swap_average else 1
        probs = np.zeros((len(pairs) * k, 3), dtype=np.float64)
        was_training = getattr(self.model, "training", False)
        self.model.eval()
        try:
            with torch.inference_mode():
                use_cache = self._use_prefix_cache(device)
                stats.prefix_tokens = self._prefix_len if use_cache else 0
                batches = Prefetcher(self._batches(pairs, k, stats, use_cache, device), size=cfg.prefetch)
                for batch in self._progress(batches, len(pairs) * k, k):
                    probs[batch.index] = self._forward(batch, device, use_cache)
                    stats.batches += 1
                    stats.sequences += len(batch.index)
                    stats.tokens += batch.real_tokens
                    stats.padded_tokens += batch.padded_tokens
                    stats.computed_tokens += int(batch.input_ids.numel())
                    stats.max_batch_tokens = max(stats.max_batch_tokens, batch.padded_tokens)
                    if device.type != "cuda":
                        peak_rss = max(peak_rss, _rss_mb())
        finally:
            if was_training:
                self.model.train()
        out = combine_swapped(probs[0::k], probs[1::k] if k == 2 else None)
        stats.seconds = time.perf_counter() - start
        stats.cpu_seconds = time.process_time() - cpu_start
        stats.peak_memory_mb = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                                else peak_rss)
        self.last_stats = stats
        logger.info("scored %s", stats.summary())
        return out

    # ------------------------------------------------------------------ internals
    def _progress(self, it, total: int, per_pair: int):
        if not self.config.progress:
            return it
        return ProgressLog(it, total, per_pair=per_pair)

    def _use_prefix_cache(self, device) -> bool:
        if not (self.config.prefix_cache and self.head == "label-token" and len(self.encoder.prefix_ids) > 1):
            return False
        if self._prefix_kv is None and not self._prefix_failed:
            self._build_prefix_cache(device)
        return self._prefix_kv is not None

    def _build_prefix_cache(self, device) -> None:
        import torch

        # a batch whose shortest sequence is not longer than the prefix uses only part of it (_window_batches)
        ids = torch.tensor([self.encoder.prefix_ids], dtype=torch.long, device=device)
        try:
            out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                             **self._logits_kw)
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            layers = getattr(cache, "layers", None)
            if layers is None or any(getattr(lay, "keys", None) is None for lay in layers):
                raise TypeError(f"unsupported cache type {type(cache).__name__}")
            self._prefix_kv = [(lay.keys, lay.values) for lay in layers]
            self._prefix_len = ids.shape[1]
        except (TypeError, AttributeError, ValueError) as e:
            logger.warning("shared-prefix cache unavailable for this model (%s); scoring without it", e)
            self._prefix_kv, self._prefix_len, self._prefix_failed = None, 0, True

    def _cache_for(self, batch_size: int, cut: int):
        """A fresh :class:`~transformers.DynamicCache` holding the first ``cut`` prefix positions per row.

        Each forward appends to its cache, so every batch gets its own (the prefix tensors are expanded, not
        copied, until the first append).
        """
        from transformers import DynamicCache

        cache = DynamicCache(config=getattr(self.model, "config", None))
        for layer, (k, v) in enumerate(self._prefix_kv):
            cache.update(k[:, :, :cut].expand(batch_size, -1, -1, -1),
                         v[:, :, :cut].expand(batch_size, -1, -1, -1), layer)
        return cache

    def _batches(self, pairs: list[Pair], k: int, stats: InferenceStats, use_cache: bool,
                 device) -> Iterator[Batch]:
        cfg = self.config
        pin = device.type == "cuda"
        left = self.head == "label-token"
        window = cfg.bucket_window if cfg.bucket and cfg.bucket_window > 0 else max(1, len(pairs))
        seqs: list[Pair] = []
        for p in pairs:
            seqs.append(p)
            if k == 2:
                seqs.append(p.swapped())
        chunk = max(1, min(64, window * k))
        # keep about two windows of token ids ahead of the model
        ahead = max(2 * cfg.num_workers, 2 * (window * k + chunk - 1) // chunk)
        encoded = encode_in_background(self.encoder, seqs, num_workers=cfg.num_workers, chunk=chunk, ahead=ahead)
        offset = 0
        pending: list[np.ndarray] = []
        # window boundaries are on whole pairs so a pair and its swap share a window
        for ids, cut in encoded:
            stats.truncated += cut
            pending.extend(ids)
            if len(pending) >= window * k:
                yield from self._window_batches(pending, offset, use_cache, left, pin)
                offset += len(pending)
                pending = []
        if pending:
            yield from self._window_batches(pending, offset, use_cache, left, pin)

    def _window_batches(self, ids: list[np.ndarray], offset: int, use_cache: bool, left: bool,
                        pin: bool) -> Iterator[Batch]:
        cfg = self.config
        lengths = [len(x) for x in ids]
        groups = pack_batches(lengths, cfg.token_budget, cfg.max_batch_size, bucket=cfg.bucket,
                              fixed_batch_size=cfg.fixed_batch_size)
        for g in groups:
            seqs = [ids[i] for i in g]
            prefix = 0
            if use_cache:  # keep >= 1 token per sequence outside the cache
                prefix = min(self._prefix_len, min(len(s) for s in seqs) - 1)
                if not cache_pays(prefix, seqs):
                    prefix = 0
            yield collate(seqs, np.asarray(g) + offset, pad_id=self.pad_id, left=left, prefix_len=max(prefix, 0),
                          pin=pin)

    def _forward(self, batch: Batch, device, use_cache: bool) -> np.ndarray:
        import torch

        ids = batch.input_ids.to(device, non_blocking=True)
        mask = batch.attention_mask.to(device, non_blocking=True)
        if self.head == "classifier":
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            return torch.softmax(logits.float(), dim=-1).cpu().numpy()
        pos = batch.position_ids.to(device, non_blocking=True)
        kwargs = dict(self._logits_kw)
        prefix = mask.shape[1] - ids.shape[1]
        if use_cache and prefix > 0:
            kwargs.update({self._cache_kw: self._cache_for(ids.shape[0], prefix), "use_cache": True})
        else:
            kwargs["use_cache"] = False
        try:
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **kwargs).logits
        except TypeError as e:  # a model whose **kwargs do not take logits_to_keep after all
            if "logits_to_keep" not in str(e) or not self._logits_kw:
                raise
            self._logits_kw = {}
            kwargs.pop("logits_to_keep", None)
            if use_cache and prefix > 0:
                kwargs[self._cache_kw] = self._cache_for(ids.shape[0], prefix)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **kwargs).logits
        last = logits[:, -1, :].float()
        label = last[:, self.label_token_ids]
        return torch.softmax(label, dim=-1).cpu().numpy()


class ProgressLog:
    """Wrap an iterator of batches; log ``done/total pairs, pairs/s, ETA`` now and then (INFO).

    The first line comes after ``first`` seconds, then one every ``every`` seconds, and a last one at the end
    when any was logged: a short job stays quiet, a long one (``judge`` on 200 pairs on a CPU) shows it is alive.
    Log lines rather than a bar, so the progress is visible in CI logs and under ``nohup`` too.
    """

    def __init__(self, it, total: int, *, per_pair: int = 1, label: str = "scoring", first: float = 10.0,
                 every: float = 30.0, count=None):
        self.it, self.total, self.per_pair, self.label = it, total, max(1, per_pair), label
        self.count = count or (lambda b: len(b.index))  # sequences in one item of ``it``
        self.first, self.every = first, every
        self.done = 0
        self.start = time.perf_counter()
        self.next_at = self.start + first
        self.logged = False

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        pairs, total = self.done / self.per_pair, self.total / self.per_pair
        rate = pairs / elapsed if elapsed > 0 else 0.0
        eta = (total - pairs) / rate if rate > 0 else float("inf")
        eta_s = "?" if eta == float("inf") else f"{int(eta // 60)}m{int(eta % 60):02d}s"
        return (f"{self.label}: {pairs:.0f}/{total:.0f} pairs ({100 * self.done / max(1, self.total):.0f}%), "
                f"{rate:.2f} pairs/s, elapsed {elapsed:.0f}s, ETA {eta_s}")

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now >= self.next_at and self.done < self.total:
            logger.info("%s", self.line())
            self.logged = True
            self.next_at = now + self.every

    def __iter__(self):
        for b in self.it:
            yield b
            self.update(self.count(b))
        if self.logged:
            logger.info("%s", self.line())
