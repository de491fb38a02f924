"""Loading Hugging Face models and tokenizers: devices, dtypes, 4-bit quantization, offline-friendly errors.

Every LLM path in prefpred (zero-shot judging, fine-tuning, inference) loads through here, so the device and
dtype rules live in one place: no hard-coded device anywhere else.

* device ``"auto"``: the first CUDA GPU if there is one, else Apple ``mps``, else the CPU;
* dtype ``"auto"``: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU (bf16 is ~4x slower there);
* ``load_in_4bit``: NF4 quantization through bitsandbytes (QLoRA), an optional extra ``prefpred[qlora]``.

Every name is resolved first by :func:`prefpred.sources.resolve_model` (hub ids, local folders, ``.gguf`` files,
the aliases ``smollm2``, ``minilm`` and ``tiny:<arch>``; fast failure offline).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from prefpred.types import ConfigError, MissingDependencyError, UserError

logger = logging.getLogger(__name__)


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"``/``None`` -> the best available device string; anything else is returned unchanged."""
    import torch

    if device not in (None, "auto"):
        return str(device)
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str | None = "auto", device: str | None = None):
    """``"auto"`` -> bf16 on GPUs that support it, fp16 on other GPUs, fp32 elsewhere; or a named torch dtype."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in (None, "auto"):
        if dtype not in names:
            raise UserError(f"unknown dtype {dtype!r} (use auto, {', '.join(sorted(names))})")
        return names[dtype]
    device = device or resolve_device("auto")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _friendly_load_error(name: str, err: Exception) -> UserError:
    local = Path(name).exists()
    if local:
        return UserError(f"{name}: could not load model/tokenizer ({type(err).__name__}: {str(err).splitlines()[0]})")
    return UserError(
        f"{name}: could not load from the Hugging Face Hub ({type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else 'no detail'}); if you are offline, pass a local model directory"
    )


def load_tokenizer(name_or_path: str, *, padding_side: str | None = None, **kwargs: Any):
    """Load a tokenizer; make sure it has a pad token (falls back to EOS/UNK)."""
    from transformers import AutoTokenizer

    name_or_path = resolve_model_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        raise _friendly_load_error(name_or_path, e) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if padding_side:
        tok.padding_side = padding_side
    return tok


def quantization_config(load_in_4bit: bool, compute_dtype=None):
    """A bitsandbytes NF4 config (double quantization) for QLoRA, or ``None``."""
    if not load_in_4bit:
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            "4-bit loading (QLoRA) needs bitsandbytes: pip install 'prefpred[qlora]'"
        ) from e
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype or torch.float32,
    )


CPU_4BIT_BLOCK = 64
"""bitsandbytes' CPU 4-bit kernels work on blocks of this many input features."""


def check_cpu_4bit(model, name_or_path: str) -> None:
    """Refuse, in one line, a 4-bit model whose quantized layers the CPU kernels cannot run: bitsandbytes' CPU path
    needs every quantized linear layer's input width to be a multiple of its 64-wide block (``tiny:qwen2`` is 32
    wide), and otherwise fails at the first forward pass with a reshape traceback."""
    narrow = sorted({m.in_features for m in model.modules() if type(m).__name__ == "Linear4bit"
                     and m.in_features % CPU_4BIT_BLOCK})
    if narrow:
        raise ConfigError(f"{name_or_path}: 4-bit (QLoRA) on CPU needs linear layers whose input width is a multiple "
                          f"of {CPU_4BIT_BLOCK} (bitsandbytes' CPU block); this model has {narrow[:4]}: use "
                          "method lora (or a GPU)")


def _load(auto_cls, name_or_path: str, *, device: str | None, dtype: str | None, load_in_4bit: bool,
          **kwargs: Any):
    name_or_path = resolve_model_path(name_or_path)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    qcfg = quantization_config(load_in_4bit, torch_dtype)
    load_kwargs: dict[str, Any] = {"dtype": torch_dtype, **kwargs}
    if qcfg is not None:
        load_kwargs["quantization_config"] = qcfg
        load_kwargs["device_map"] = {"": device}
    try:
        model = auto_cls.from_pretrained(name_or_path, **load_kwargs)
    except (OSError, ValueError) as e:
        raise _friendly_load_error(name_or_path, e) from e
    if qcfg is None:
        model = model.to(device)
    elif device == "cpu":
        check_cpu_4bit(model, name_or_path)
    logger.info("loaded %s on %s (%s%s)", name_or_path, device, str(torch_dtype).replace("torch.", ""),
                ", 4-bit NF4" if qcfg is not None else "")
    return model


def load_causal_lm(name_or_path: str, *, device: str | None = "auto", dtype: str | None = "auto",
                   load_in_4bit: bool = False, **kwargs: Any):
    """Load a causal LM (hub id or local directory) on ``device`` with ``dtype``, optionally 4-bit NF4."""
    from transformers import AutoModelForCausalLM

    return _load(AutoModelForCausalLM, name_or_path, device=device, dtype=dtype, load_in_4bit=load_in_4bit,
                 **kwargs)


def load_sequence_classifier(name_or_path: str, *, num_labels: int = 3, device: str | None = "auto",
                             dtype: str | None = "auto", load_in_4bit: bool = False,
                             pad_token_id: int | None = None, **kwargs: Any):
    """Load a model with a sequence-classification head (decoder LLMs and encoders alike)."""
    from transformers import AutoModelForSequenceClassification

    if pad_token_id is not None:
        kwargs["pad_token_id"] = pad_token_id
    return _load(AutoModelForSequenceClassification, name_or_path, device=device, dtype=dtype,
                 load_in_4bit=load_in_4bit, num_labels=num_labels, **kwargs)


def minilm_path() -> str:
    """Local path of the all-MiniLM-L6-v2 encoder (:func:`prefpred.sources.minilm_path`)."""
    from prefpred.sources import minilm_path as _minilm_path

    return _minilm_path()


def resolve_model_path(name_or_path: str) -> str:
    """A loadable folder (or, online, a hub id) for any model name: :func:`prefpred.sources.resolve_model`."""
    from prefpred.sources import resolve_model

    return resolve_model(name_or_path)
