"""Building the network to fine-tune: base model (full precision or 4-bit), head, LoRA adapters.

* ``label-token`` head: a causal LM; the answer token's logits are the head (no new parameters);
* ``classifier`` head: ``AutoModelForSequenceClassification`` with 3 labels. The freshly initialised head
  modules (``score`` for Qwen2/Llama/Gemma/Phi-3, ``classifier`` for BERT-style encoders, plus e.g. DeBERTa's
  ``pooler``) are found by structure (:func:`head_modules`) and trained in full under LoRA through peft's
  ``modules_to_save``, with ``task_type=SEQ_CLS`` (without it the head would silently stay frozen).

Devices and dtypes come from :mod:`prefpred.hf` (no hard-coded device).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from prefpred.training.config import LLMModelConfig
from prefpred.types import ConfigError

logger = logging.getLogger(__name__)


def model_path(cfg: LLMModelConfig) -> str:
    """The base model to load: :func:`prefpred.sources.resolve_model` of ``cfg.name_or_path`` (aliases, GGUF
    files and offline hub ids resolved to local folders; local paths made absolute)."""
    from prefpred.sources import resolve_model

    if not cfg.name_or_path:
        raise ConfigError("model.name_or_path is empty: give a hub id or a local model directory")
    return resolve_model(cfg.name_or_path)


def load_tokenizer(cfg: LLMModelConfig, path: str | None = None):
    """The tokenizer of ``cfg`` (with a pad token)."""
    from prefpred.hf import load_tokenizer as _load

    return _load(cfg.tokenizer or path or model_path(cfg))


def _load_dtype(cfg: LLMModelConfig) -> str:
    # full fine-tuning keeps fp32 master weights; autocast (bf16/fp16) is switched on by the trainer on GPUs
    if cfg.method == "full" and cfg.dtype == "auto":
        return "float32"
    return cfg.dtype


def load_base(cfg: LLMModelConfig, tokenizer, path: str | None = None, *, quantize: bool | None = None):
    """Load the base network for ``cfg.head`` on ``cfg.device``; 4-bit NF4 when ``quantize`` (default: qlora)."""
    from prefpred import hf

    path = path or model_path(cfg)
    four_bit = cfg.method == "qlora" if quantize is None else quantize
    if cfg.head == "classifier":
        model = hf.load_sequence_classifier(path, num_labels=3, device=cfg.device, dtype=_load_dtype(cfg),
                                            load_in_4bit=four_bit, pad_token_id=tokenizer.pad_token_id)
    else:
        model = hf.load_causal_lm(path, device=cfg.device, dtype=_load_dtype(cfg), load_in_4bit=four_bit)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def head_modules(model) -> list[str]:
    """Names of the task head's top-level modules: children of a classifier other than its backbone.

    ``Qwen2ForSequenceClassification`` -> ``["score"]``; ``BertForSequenceClassification`` -> ``["classifier"]``;
    ``DebertaV2ForSequenceClassification`` -> ``["pooler", "classifier"]``.
    """
    prefix = getattr(model, "base_model_prefix", "")
    names = [name for name, child in model.named_children()
             if name != prefix and any(True for _ in child.parameters())]
    if not names:
        raise ConfigError(f"{type(model).__name__}: could not find the classification head")
    return names


def _is_linear(module) -> bool:
    import torch

    if isinstance(module, torch.nn.Linear):  # bitsandbytes Linear4bit/Linear8bitLt subclass it
        return True
    return type(module).__name__ == "Conv1D"  # GPT-2 style projections


_ATTN = re.compile(r"(attn|attention)", re.IGNORECASE)


def lora_target_modules(model, target: str | list[str], exclude: list[str] | tuple[str, ...] = ()) -> str | list[str]:
    """peft ``target_modules`` for ``target``: ``all-linear``/``attention`` become a regex over the backbone.

    Linear layers under the backbone (``model.base_model_prefix``) are matched by their path inside a layer
    (``self_attn.q_proj``, ``mlp.down_proj``, ``attention.self.query``, ``attention.output.dense``), so an
    encoder's attention ``dense`` is told apart from its MLP ``dense``. The output layer (``lm_head``) and the
    classification head (``exclude``) are never targeted. Explicit name lists are returned unchanged.
    """
    if isinstance(target, list):
        return list(target)
    if target not in ("all-linear", "attention"):
        raise ConfigError(f"lora.target_modules must be 'all-linear', 'attention' or a list of module names, "
                          f"got {target!r}")
    prefix = getattr(model, "base_model_prefix", "") or ""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tails: set[str] = set()
    for name, module in model.named_modules():
        if not _is_linear(module) or module is output:
            continue
        if prefix and not name.startswith(prefix + "."):
            continue
        if any(name == e or name.startswith(e + ".") for e in exclude):
            continue
        parts = name.split(".")
        digits = [i for i, p in enumerate(parts) if p.isdigit()]
        tail = ".".join(parts[digits[-1] + 1:]) if digits else ".".join(parts[1:])
        if target == "attention" and not _ATTN.search(tail):
            continue
        tails.add(tail)
    if not tails:
        raise ConfigError(f"lora.target_modules={target!r} matches no linear layer of {type(model).__name__}")
    alternatives = "|".join(re.escape(t) for t in sorted(tails))
    head = re.escape(prefix) + r"\.(?:.*\.)?" if prefix else r"(?:.*\.)?"
    return rf"^{head}(?:{alternatives})$"


def wrap_lora(model, cfg: LLMModelConfig):
    """Freeze the base and add LoRA adapters (``modules_to_save`` = the classification head)."""
    from peft import LoraConfig, TaskType, get_peft_model

    heads = head_modules(model) if cfg.head == "classifier" else []
    targets = lora_target_modules(model, cfg.lora.target_modules, exclude=heads)
    lcfg = LoraConfig(
        task_type=TaskType.SEQ_CLS if cfg.head == "classifier" else TaskType.CAUSAL_LM,
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=targets,
        modules_to_save=heads or None, bias="none",
    )
    model = get_peft_model(model, lcfg)
    _trainable_fp32(model)
    return model


def _trainable_fp32(model) -> None:
    """Trainable parameters in fp32 (adapters and a copied head of a bf16/fp16 base): AMP needs fp32 masters."""
    import torch

    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()


def build_model(cfg: LLMModelConfig, tokenizer, *, path: str | None = None):
    """The network ready to train: loaded, quantized (qlora), checkpointed, wrapped (lora/qlora) or full."""
    model = load_base(cfg, tokenizer, path)
    model.config.use_cache = False
    gc_kwargs = {"use_reentrant": False}
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=gc_kwargs)
    elif cfg.gradient_checkpointing:
        enable_checkpointing(model, gc_kwargs)
    if cfg.method in ("lora", "qlora"):
        if cfg.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        model = wrap_lora(model, cfg)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    n_train, n_all = count_parameters(model)
    logger.info("%s (%s, %s head): %s trainable of %s parameters (%.2f%%)", cfg.name_or_path, cfg.method,
                cfg.head, f"{n_train:,}", f"{n_all:,}", 100.0 * n_train / max(n_all, 1))
    return model


def enable_checkpointing(model, kwargs: dict) -> None:
    """Activation (gradient) checkpointing under its transformers >= 5.x name, or the older one."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # pragma: no cover - transformers < 5.x
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts (4-bit weights counted as stored elements x 2)."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def load_adapter(base, directory: str | Path, *, trainable: bool = False):
    """Attach a saved peft adapter (and its saved head) to ``base``."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(directory), is_trainable=trainable)


def unwrap(model) -> Any:
    """The model under DDP/DeepSpeed wrappers (``.module``), if any."""
    while hasattr(model, "module") and not hasattr(model, "peft_config"):
        model = model.module
    return model
