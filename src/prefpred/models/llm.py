"""Fine-tuned LLM preference model: LoRA / QLoRA / full fine-tuning with a label-token or classifier head.

``fit`` trains with :mod:`prefpred.training` (transformers ``Trainer``; checkpoints and ``metrics.jsonl`` in
``output_dir``); ``predict_proba`` scores through the one engine, :func:`prefpred.inference.score_pairs`
(length buckets, swap averaging, prefix cache). ``save`` writes a directory that :meth:`LLMPreferenceModel.load`
(and :func:`prefpred.models.load_model`) rebuilds:

```
model/
  prefpred_model.json      kind "llm", configs, base model, weights ("adapter" or "full"), label token ids
  adapter_config.json      \\ LoRA/QLoRA: adapters + the trained classification head (modules_to_save);
  adapter_model.safetensors /  the base model is reloaded from `base_model` (4-bit again for qlora)
  config.json, model.safetensors   full fine-tuning (or a merged adapter): the whole network
  tokenizer files
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.config import from_dict, to_dict
from prefpred.models.base import PreferenceModel, read_model_meta, register_model
from prefpred.training.config import LLMModelConfig, TrainingConfig
from prefpred.types import ConfigError, Pair

logger = logging.getLogger(__name__)


def _is_main_process() -> bool:
    try:
        from accelerate import PartialState

        return PartialState().is_main_process
    except Exception:  # noqa: BLE001 - no distributed state: a single process is the main one
        return True


@register_model("llm")
class LLMPreferenceModel(PreferenceModel):
    """A small LLM (or encoder) fine-tuned to predict ``a``/``b``/``tie`` probabilities.

    Args:
        model: What to fine-tune (base, head, prompt style, method, LoRA settings, max length, device, dtype).
        training: The optimizer loop (learning rate, schedule, steps, evaluation, checkpoints, swaps).
        seed: Seed of every RNG (LoRA init, data order, dropout).
        inference: Batching of ``predict_proba`` and of the evaluation scoring during training
            (default: ``InferenceConfig(max_length=model.max_length)``).

    Attributes set by :meth:`fit`:
        model_: the trained network (a peft model for lora/qlora); tokenizer_: its tokenizer.
        history_: the ``metrics.jsonl`` rows (train and eval logs, see :mod:`prefpred.training.trainer`).
        training_result_: global step, best step and eval loss, resumed step, runtime, early stop flag.
    """

    def __init__(self, model: LLMModelConfig | None = None, training: TrainingConfig | None = None, seed: int = 0,
                 inference: Any = None):
        self.model = model
        self.training = training
        self.seed = seed
        self.inference = inference

    # ------------------------------------------------------------------------------------ params
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"model": self.model, "training": self.training, "seed": self.seed, "inference": self.inference}

    def set_params(self, **params: Any) -> LLMPreferenceModel:
        for k, v in params.items():
            if k not in self.get_params():
                raise ConfigError(f"LLMPreferenceModel: unknown parameter {k!r} (model, training, seed, inference)")
            setattr(self, k, v)
        return self

    @property
    def model_config(self) -> LLMModelConfig:
        if self.model is None:
            raise ConfigError("LLMPreferenceModel: no model config (model.name_or_path is required)")
        return self.model

    @property
    def training_config(self) -> TrainingConfig:
        return self.training if self.training is not None else TrainingConfig()

    def inference_config(self):
        """The scoring config: ``inference`` or the default with the model's ``max_length``."""
        from prefpred.inference import InferenceConfig

        if self.inference is not None:
            return self.inference
        return InferenceConfig(max_length=self.model_config.max_length)

    @property
    def style_(self):
        from prefpred.prompts import get_style

        return get_style(self.model_config.style_name)

    def label_token_ids(self, tokenizer=None) -> list[int] | None:
        """The answer token ids (a, b, tie) of the label-token head; ``None`` for the classifier head."""
        if self.model_config.head != "label-token":
            return None
        return self.style_.label_token_ids(tokenizer if tokenizer is not None else self.tokenizer_)

    # ------------------------------------------------------------------------------------ interface
    def fit(self, pairs: Sequence[Pair], eval_pairs: Sequence[Pair] | None = None, output_dir: str | Path | None = None,
            *, callbacks: Sequence[Any] = ()) -> LLMPreferenceModel:
        """Fine-tune on ``pairs``; evaluate, early-stop and keep the best checkpoint on ``eval_pairs``.

        ``output_dir`` receives ``checkpoints/checkpoint-N`` and ``metrics.jsonl``; training resumes from its
        last checkpoint when ``training.resume`` is on. Without ``output_dir`` a temporary folder is used.
        ``callbacks`` are extra ``transformers.TrainerCallback`` objects.
        """
        from prefpred.training.modeling import build_model, load_tokenizer, model_path
        from prefpred.training.trainer import CHECKPOINT_DIR, run_training, training_arguments
        from prefpred.utils import set_seed

        mcfg, tcfg = self.model_config, self.training_config
        pairs = list(pairs)
        if not pairs:
            raise ConfigError("no training pairs")
        set_seed(self.seed)
        with contextlib.ExitStack() as stack:
            if output_dir is None:
                output_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="prefpred-train-"))
            output_dir = Path(output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            # TrainingArguments first: under DeepSpeed ZeRO-3 it must exist before the model is loaded
            args = training_arguments(tcfg, mcfg, output_dir / CHECKPOINT_DIR, seed=self.seed,
                                      has_eval=bool(eval_pairs))
            path = model_path(mcfg)
            tokenizer = load_tokenizer(mcfg, path)
            style = self.style_
            ids = style.label_token_ids(tokenizer) if mcfg.head == "label-token" else None
            net = build_model(mcfg, tokenizer, path=path)
            net, result = run_training(
                net, tokenizer, style, pairs, eval_pairs, model_cfg=mcfg, training_cfg=tcfg, args=args,
                output_dir=output_dir, inference_cfg=self.inference, label_token_ids=ids, callbacks=callbacks,
                write_metrics=_is_main_process())
        net.eval()
        self.model_ = net
        self.tokenizer_ = tokenizer
        self.base_model_ = path
        self.history_ = result.history
        self.training_result_ = result
        return self

    def _check_fitted(self) -> None:
        if getattr(self, "model_", None) is None:
            raise ConfigError("LLMPreferenceModel is not fitted (call fit or load)")

    def predict_proba(self, pairs: Sequence[Pair]) -> np.ndarray:
        """``n x 3`` probabilities (a, b, tie) through :func:`prefpred.inference.score_pairs`."""
        from prefpred.inference import score_pairs

        self._check_fitted()
        pairs = list(pairs)
        if not pairs:
            return np.zeros((0, 3))
        cfg = self.inference_config()
        stats: dict[str, Any] = {}
        from prefpred.inference import resolve_num_processes

        if resolve_num_processes(cfg.num_processes) > 1 and hasattr(self.model_, "peft_config"):
            if getattr(self, "saved_dir_", None) is not None:
                from prefpred.inference import score_pairs_parallel

                proba = score_pairs_parallel(pairs, _SavedModelLoader(str(self.saved_dir_)), self.style_,
                                             head=self.model_config.head, label_token_ids=self.label_token_ids(),
                                             config=cfg, stats=stats)
                self.inference_stats_ = stats
                return proba
            logger.warning("data-parallel scoring needs a saved model (save() or load() first); using 1 process")
            cfg = dataclasses.replace(cfg, num_processes=1)
        proba = score_pairs(pairs, self.model_, self.tokenizer_, self.style_, head=self.model_config.head,
                            label_token_ids=self.label_token_ids(), config=cfg, stats=stats)
        self.inference_stats_ = stats
        return proba

    # ------------------------------------------------------------------------------------ persistence
    def _meta(self) -> dict[str, Any]:
        is_adapter = hasattr(self.model_, "peft_config")
        return {
            "model": to_dict(self.model_config),
            "training": to_dict(self.training_config),
            "inference": to_dict(self.inference) if self.inference is not None else None,
            "seed": self.seed,
            "base_model": getattr(self, "base_model_", None) or self.model_config.name_or_path,
            "weights": "adapter" if is_adapter else "full",
            "style": self.model_config.style_name,
            "label_token_ids": self.label_token_ids(),
        }

    def save(self, directory: str | Path) -> Path:
        """Write adapters (or full weights), the trained head, the tokenizer and the configs to ``directory``.

        Under ``accelerate launch`` only the main process writes.
        """
        self._check_fitted()
        directory = Path(directory)
        if not _is_main_process():
            return directory
        directory.mkdir(parents=True, exist_ok=True)
        self.model_.save_pretrained(str(directory))
        self.tokenizer_.save_pretrained(str(directory))
        self._write_meta(directory, self._meta())
        from prefpred.utils import follow_umask

        follow_umask(directory)  # peft writes the adapter file 0600; outputs follow the umask
        self.saved_dir_ = directory
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: str | None = None) -> LLMPreferenceModel:
        """Rebuild a model written by :meth:`save` (base model reloaded for adapters; ``device`` overrides)."""
        from prefpred import hf
        from prefpred.training.modeling import load_adapter, load_base

        directory = Path(directory)
        meta = read_model_meta(directory)
        mcfg = from_dict(LLMModelConfig, meta["model"])
        if device is not None:
            mcfg = dataclasses.replace(mcfg, device=device)
        tcfg = from_dict(TrainingConfig, meta.get("training") or {})
        inference = None
        if meta.get("inference"):
            from prefpred.inference import InferenceConfig

            inference = from_dict(InferenceConfig, meta["inference"])
        obj = cls(mcfg, tcfg, seed=int(meta.get("seed", 0)), inference=inference)
        tokenizer = hf.load_tokenizer(str(directory))
        if meta.get("weights") == "adapter":
            # the resolved folder where it still exists, else the name it came from (an alias, a GGUF file)
            saved = meta["base_model"]
            source = saved if Path(str(saved)).is_dir() or not mcfg.name_or_path else mcfg.name_or_path
            base = load_base(mcfg, tokenizer, hf.resolve_model_path(source))
            net = load_adapter(base, directory)
        else:
            net = load_base(mcfg, tokenizer, str(directory), quantize=False)
        obj.model_ = net.eval()
        obj.tokenizer_ = tokenizer
        obj.base_model_ = meta.get("base_model")
        obj.history_ = []
        obj.saved_dir_ = directory
        return obj

    def merged(self) -> LLMPreferenceModel:
        """A copy whose adapters are merged into the base weights (``merge_and_unload``): plain transformers
        model, faster inference, savable as full weights. Not for QLoRA (4-bit weights cannot absorb them)."""
        import copy

        self._check_fitted()
        if not hasattr(self.model_, "peft_config"):
            return self
        if self.model_config.method == "qlora":
            raise ConfigError("merging adapters into a 4-bit base is lossy; load the base in 16/32 bit to merge")
        out = copy.copy(self)
        out.model_ = copy.deepcopy(self.model_).merge_and_unload().eval()
        out.saved_dir_ = None
        return out


@dataclasses.dataclass(frozen=True)
class _SavedModelLoader:
    """Picklable ``device -> (model, tokenizer)`` for data-parallel scoring of a saved model directory."""

    path: str

    def __call__(self, device: str):
        m = LLMPreferenceModel.load(self.path, device=device)
        return m.model_, m.tokenizer_
