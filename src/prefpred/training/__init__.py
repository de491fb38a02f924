"""LLM fine-tuning: configs, model building (LoRA / QLoRA / full), the training loop and the ``train`` job.

Light to import: only the config dataclasses load eagerly; the torch/transformers parts load on first use.

* :mod:`prefpred.training.config` -- :class:`LoRAConfig`, :class:`LLMModelConfig`, :class:`TrainingConfig`;
* :mod:`prefpred.training.modeling` -- base model, head detection, LoRA targets, peft wrapping;
* :mod:`prefpred.training.data` -- pair dataset (swap augmentation) and the collator (soft targets, weights);
* :mod:`prefpred.training.trainer` -- the ``Trainer`` subclass, ``metrics.jsonl``, checkpoints and resume;
* :mod:`prefpred.training.job` -- :class:`TrainConfig` and :func:`train_job` (``prefpred train``).
"""

from __future__ import annotations

from typing import Any

from prefpred.training.config import LLMModelConfig, LoRAConfig, TrainingConfig

__all__ = ["LLMModelConfig", "LoRAConfig", "TrainConfig", "TrainingConfig", "train_job"]


def __getattr__(name: str) -> Any:
    if name in ("TrainConfig", "train_job"):
        from prefpred.training import job

        return getattr(job, name)
    raise AttributeError(f"module 'prefpred.training' has no attribute {name!r}")
