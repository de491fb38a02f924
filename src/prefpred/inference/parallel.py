"""Data parallel scoring: one worker process per device, results merged back in input order.

Worker processes are started with ``spawn`` (safe with CUDA) and load their own copy of the model through a
picklable ``model_loader`` (a model directory or a top-level function ``device -> (model, tokenizer)``), since
an in-memory model cannot be shipped to them cheaply. Pairs are dealt out round-robin (pair ``i`` goes to worker
``i % n``), which balances long and short conversations across workers; each worker buckets its own share.
On CPU the same code runs with several processes (each with ``cpu_count // n`` torch threads).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from prefpred.inference.common import resolve_num_processes
from prefpred.inference.config import InferenceConfig, InferenceStats
from prefpred.types import ConfigError, Pair

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DirLoader:
    """Picklable loader of a saved model directory (model + tokenizer) onto a given device."""

    path: str
    head: str = "label-token"
    dtype: str = "auto"

    def __call__(self, device: str):
        from prefpred import hf

        tok = hf.load_tokenizer(self.path)
        if self.head == "classifier":
            model = hf.load_sequence_classifier(self.path, num_labels=3, device=device, dtype=self.dtype,
                                                pad_token_id=tok.pad_token_id)
        else:
            model = hf.load_causal_lm(self.path, device=device, dtype=self.dtype)
        return model.eval(), tok


def worker_devices(n: int) -> list[str]:
    """``cuda:i`` for worker ``i`` (round-robin over visible GPUs), or ``cpu`` for all when there is no GPU."""
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return [f"cuda:{i % count}" for i in range(n)]
    return ["cpu"] * n


def _resolve_style(style):
    if isinstance(style, str):
        from prefpred.prompts import get_style

        return get_style(style)
    return style


def _score_shard(pairs: list[Pair], loader, style, head: str, label_token_ids, config: InferenceConfig,
                 device: str, threads: int) -> tuple[np.ndarray, dict]:
    """Worker entry point: load the model on ``device`` and score one shard."""
    import torch

    from prefpred.inference.engine import Scorer

    if device == "cpu" and threads > 0:
        torch.set_num_threads(threads)
    model, tokenizer = loader(device)
    scorer = Scorer(model, tokenizer, _resolve_style(style), head=head, label_token_ids=label_token_ids,
                    config=config)
    out = scorer.score(pairs)
    return out, scorer.last_stats.to_dict() if scorer.last_stats else {}


def _stats_from_dict(d: dict) -> InferenceStats:
    fields = InferenceStats.__dataclass_fields__
    return InferenceStats(**{k: v for k, v in d.items() if k in fields})


def score_pairs_parallel(pairs: Sequence[Pair], model_loader: str | Path | Callable, style, *,
                         head: str = "label-token", label_token_ids=None, config: InferenceConfig | None = None,
                         num_processes: int | str | None = None, devices: Sequence[str] | None = None,
                         threads_per_process: int | None = None, stats: dict | None = None) -> np.ndarray:
    """Score ``pairs`` with ``num_processes`` worker processes (default ``config.num_processes``).

    Args:
        model_loader: a saved model directory (loaded with :mod:`prefpred.hf` for ``head``), or a picklable
            callable ``device -> (model, tokenizer)`` (a top-level function or a ``functools.partial``).
        style: a prompt style object (picklable) or a style name for :func:`prefpred.prompts.get_style`.
        devices: one device per worker; default ``cuda:0..n-1`` when GPUs are visible, else ``cpu``.
        threads_per_process: torch threads of each CPU worker (default ``cpu_count // n``).

    Returns the same ``n x 3`` array as :func:`prefpred.inference.score_pairs`, in input order.
    """
    config = config or InferenceConfig()
    n = resolve_num_processes(num_processes if num_processes is not None else config.num_processes)
    pairs = list(pairs)
    loader = DirLoader(str(model_loader), head) if isinstance(model_loader, str | Path) else model_loader
    n = max(1, min(n, len(pairs)))
    devices = list(devices) if devices is not None else worker_devices(n)
    if len(devices) < n:
        raise ConfigError(f"{n} processes need {n} devices, got {devices}")
    threads = threads_per_process or max(1, (os.cpu_count() or 1) // n)
    worker_cfg = replace(config, num_processes=1, progress=False)
    start = time.perf_counter()
    shards = [np.arange(i, len(pairs), n) for i in range(n)]
    if n == 1:
        results = [_score_shard(pairs, loader, style, head, label_token_ids, worker_cfg, devices[0], 0)]
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_score_shard, [pairs[i] for i in idx], loader, style, head, label_token_ids,
                                   worker_cfg, devices[w], threads) for w, idx in enumerate(shards)]
            results = [f.result() for f in futures]
    out = np.zeros((len(pairs), 3), dtype=np.float64)
    for idx, (probs, _) in zip(shards, results, strict=True):
        out[idx] = probs
    merged = InferenceStats.merge([_stats_from_dict(s) for _, s in results], time.perf_counter() - start)
    if pairs:
        logger.info("scored %s", merged.summary())
    if stats is not None:
        stats.update(merged.to_dict())
    return out


def score_in_memory_model_parallel(pairs: Sequence[Pair], model, tokenizer, style, *, head: str,
                                   label_token_ids, config: InferenceConfig, num_processes: int,
                                   stats: dict | None = None) -> np.ndarray:
    """Save an in-memory model to a temporary folder, then :func:`score_pairs_parallel` from it."""
    if hasattr(model, "peft_config"):
        raise ConfigError("data-parallel scoring of an in-memory PEFT model is not supported: save the merged "
                          "model and call prefpred.inference.score_pairs_parallel with its directory")
    dtype = str(getattr(model, "dtype", "auto")).replace("torch.", "")
    with tempfile.TemporaryDirectory(prefix="prefpred-dp-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return score_pairs_parallel(pairs, DirLoader(tmp, head, dtype), style, head=head,
                                    label_token_ids=label_token_ids, config=config,
                                    num_processes=num_processes, stats=stats)
