"""Configuration of LLM fine-tuning: the model (base, head, prompt style, LoRA/QLoRA/full) and the optimizer loop.

These dataclasses are read from the ``model:`` and ``training:`` sections of an LLM YAML config (see
``configs/*.yaml``) by :func:`prefpred.config.from_dict`, so every field below is also a YAML key. The
annotations are the checks: ``Literal`` choices and ``Field`` bounds (pydantic, :func:`~prefpred.config.config_dataclass`).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import Field

from prefpred.config import Device, NonNegativeInt, PositiveInt, config_dataclass
from prefpred.types import ConfigError

HEADS = ("label-token", "classifier")
METHODS = ("lora", "qlora", "full")
SCHEDULERS = ("linear", "cosine", "constant")
LABEL_TOKEN_LOSSES = ("vocab", "restricted")
DTYPES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")


@config_dataclass
class LoRAConfig:
    """Low-rank adapters (peft LoRA) on the base model's linear layers."""

    r: PositiveInt = 16
    """Rank of the adapters."""
    alpha: int = 32
    """Scaling numerator: the adapter update is multiplied by ``alpha / r``."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    """Dropout on the adapter input."""
    target_modules: str | list[str] = "all-linear"
    """``all-linear`` (attention and MLP projections), ``attention`` (attention projections only), or explicit
    module names (``[q_proj, v_proj]``) passed to peft as they are. The output layer and the classification head
    are never targeted (the head is trained in full through ``modules_to_save``)."""

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ConfigError("lora.target_modules must not be empty")


@config_dataclass
class LLMModelConfig:
    """Which model is fine-tuned, with which head, prompt style and method."""

    name_or_path: str = ""
    """Hugging Face hub id or local model directory (``minilm`` = the offline all-MiniLM-L6-v2 encoder)."""
    head: Literal[HEADS] = "classifier"
    """``label-token``: causal LM, cross-entropy on the answer token only (the study); ``classifier``:
    ``AutoModelForSequenceClassification`` with 3 labels (decoders and encoders alike)."""
    style: str = ""
    """Prompt style (``prefpred.prompts``); empty = ``seed-digits`` for ``label-token``, ``classifier`` otherwise."""
    method: Literal[METHODS] = "lora"
    """``lora`` (adapters on a frozen base), ``qlora`` (adapters on a 4-bit NF4 base, bitsandbytes) or ``full``."""
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    """Adapter settings (``lora`` and ``qlora``)."""
    max_length: Annotated[int, Field(ge=8)] = 1024
    """Token cap of one rendered pair; the prompt style truncates longer pairs (never drops them)."""
    dtype: Literal[DTYPES] = "auto"
    """``auto`` (bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU), ``float32``, ``bfloat16``,
    ``float16``. Full fine-tuning with ``auto`` keeps fp32 master weights and trains with bf16/fp16 autocast."""
    device: Device = "auto"
    """``auto`` (CUDA of this process's local rank, then MPS, then CPU) or a torch device string."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""
    tokenizer: str | None = None
    """Tokenizer path when it differs from ``name_or_path``."""

    @property
    def style_name(self) -> str:
        """The prompt style actually used (the head's default when ``style`` is empty)."""
        if self.style:
            return self.style
        return "seed-digits" if self.head == "label-token" else "classifier"


@config_dataclass
class TrainingConfig:
    """The optimizer loop (transformers ``Trainer``): AdamW, schedule, steps, evaluation, checkpoints."""

    learning_rate: Annotated[float, Field(gt=0)] = 2e-4
    """Peak learning rate of AdamW (2e-4 is usual for LoRA; use ~2e-5 for full fine-tuning)."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and norms)."""
    warmup_steps: Annotated[float, Field(ge=0)] = 0
    """Linear warm-up: a number of optimizer steps (>= 1) or a fraction of all steps (< 1)."""
    lr_scheduler: Literal[SCHEDULERS] = "linear"
    """Decay after warm-up: ``linear`` (to 0), ``cosine`` or ``constant``."""
    max_steps: int = -1
    """Optimizer steps to run; -1 = run ``num_epochs`` epochs."""
    num_epochs: float = 1.0
    """Epochs over the (swap-augmented) training pairs when ``max_steps`` is -1."""
    batch_size: PositiveInt = 4
    """Sequences per device per micro-batch."""
    eval_batch_size: int | None = None
    """Sequences per device in the evaluation loss pass (default ``batch_size``)."""
    gradient_accumulation_steps: PositiveInt = 1
    """Micro-batches per optimizer step (effective batch = batch_size x this x number of processes)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""
    eval_steps: PositiveInt = 100
    """Evaluate on the validation pairs every N optimizer steps (eval loss, log loss, accuracy)."""
    eval_on_start: bool = False
    """Also evaluate before the first step (a baseline point on the curves)."""
    logging_steps: PositiveInt = 10
    """Log train loss, token accuracy and learning rate every N steps (``metrics.jsonl``)."""
    save_steps: PositiveInt = 100
    """Write a checkpoint every N steps (rounded up to a multiple of ``eval_steps`` when evaluating, so the
    best checkpoint can be kept)."""
    save_total_limit: int | None = 2
    """Checkpoints kept on disk (the best one is always kept besides the latest)."""
    early_stopping_patience: int | None = 3
    """Stop after this many evaluations without a lower eval loss; ``null``/0 disables early stopping."""
    early_stopping_threshold: float = 0.0
    """Minimum eval loss improvement that counts."""
    swap_augment: bool = True
    """Also train on every pair with A and B exchanged (label exchanged too): doubles the data, removes
    position bias."""
    resume: bool = True
    """Resume from the last checkpoint in the output folder when there is one."""
    label_token_loss: Literal[LABEL_TOKEN_LOSSES] = "vocab"
    """Label-token head: ``vocab`` = cross-entropy over the whole vocabulary at the answer position with the
    (soft) target on the three label tokens (the study's causal-LM loss for hard labels); ``restricted`` =
    cross-entropy over the three label-token logits only."""
    dataloader_num_workers: NonNegativeInt = 0
    """Background processes building batches (0 = in the training process)."""
    deepspeed: str | None = None
    """DeepSpeed JSON config (``configs/deepspeed/zero2.json``, ``zero3.json``) under ``accelerate launch``."""

    def __post_init__(self) -> None:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"training.max_steps must be -1 (use epochs) or >= 1, got {self.max_steps}")
        if self.max_steps == -1 and self.num_epochs <= 0:
            raise ConfigError(f"training.num_epochs must be > 0, got {self.num_epochs}")
