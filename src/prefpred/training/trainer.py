"""The fine-tuning loop: a transformers ``Trainer`` with prefpred's loss, metrics and evaluation.

* loss: soft-label cross-entropy, weighted by ``Pair.weight`` (``sum(w * loss) / sum(w)`` per micro-batch):
  over the 3 classifier logits (``classifier``), or at the answer position of a causal LM (``label-token``):
  ``vocab`` = over the whole vocabulary with the target mass on the three label tokens (for one-hot labels this
  is the usual next-token loss on the answer token), ``restricted`` = over the three label-token logits;
* logged every ``logging_steps``: train loss, learning rate, grad norm, train accuracy (argmax over the three
  classes) and, for ``label-token``, token accuracy (argmax over the whole vocabulary is the label token);
* every ``eval_steps``: eval loss (the training loss on the validation pairs, no swaps), eval token accuracy,
  and eval log loss / accuracy of the probabilities :func:`prefpred.inference.score_pairs` gives (the one
  scoring engine, swap-averaged as configured);
* AdamW with weight decay, warm-up, linear/cosine decay, gradient accumulation, clipping; checkpoints every
  ``save_steps`` (the best one by eval loss is kept and loaded at the end), early stopping on eval loss,
  resume from the last checkpoint of the output folder;
* works under ``torchrun`` and ``accelerate launch`` (DDP: NCCL on GPUs, gloo on CPU): only the main process
  writes ``metrics.jsonl``; counters are summed across processes before they are logged. Each process takes
  ``batch_size`` pairs per micro-batch, so the effective batch is ``batch_size x gradient_accumulation_steps x
  world_size``. ``accelerate launch --cpu --num_processes N`` (N > 1) starts a single process unless run under
  mpirun, so training stops with a :class:`~prefpred.types.ConfigError` saying what to run instead.

Limits: DeepSpeed (``training.deepspeed``) has never run here (no GPU, no deepspeed package); its JSON files
are checked against the Trainer's ``"auto"`` filling in the tests only. Multi-process training is tested on
CPU (2 processes, gloo), never on several GPUs or machines.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from prefpred.training.config import LLMModelConfig, TrainingConfig
from prefpred.types import ConfigError, Pair

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"

TRAIN_KEYS = ("train_loss", "lr", "grad_norm", "train_accuracy", "token_accuracy")
EVAL_KEYS = ("eval_loss", "eval_log_loss", "eval_accuracy", "eval_token_accuracy")
"""Keys of ``metrics.jsonl`` rows besides ``step``, ``epoch`` and ``kind`` (``train`` or ``eval``)."""


def soft_cross_entropy(log_probs, targets):
    """Per-row ``-sum_k y_k log p_k``."""
    return -(targets * log_probs).sum(dim=-1)


class PreferenceTrainer(Trainer):
    """``Trainer`` with the preference loss, accuracy counters and score_pairs evaluation."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(self, *args: Any, head: str, label_token_ids: Sequence[int] | None = None,
                 label_token_loss: str = "vocab", score_eval=None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.head = head
        self.label_token_ids = list(label_token_ids) if label_token_ids is not None else None
        self.label_token_loss = label_token_loss
        self.score_eval = score_eval
        self._counts: dict[str, Any] = {}  # mode -> tensor [rows, correct (3 classes), correct (token)]
        self._pending_eval: dict[str, float] = {}

    # ------------------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch

        inputs = dict(inputs)
        targets = inputs.pop("targets").float()
        weights = inputs.pop("sample_weight").float()
        if self.head == "label-token":
            outputs = model(**inputs, use_cache=False, logits_to_keep=1)
            logits = outputs.logits[:, -1, :].float()
            ids = torch.as_tensor(self.label_token_ids, device=logits.device)
            label_logits = logits[:, ids]
            if self.label_token_loss == "vocab":
                label_logp = torch.log_softmax(logits, dim=-1)[:, ids]
            else:
                label_logp = torch.log_softmax(label_logits, dim=-1)
            token_correct = (logits.argmax(dim=-1) == ids[targets.argmax(dim=-1)]).float().sum()
        else:
            outputs = model(**inputs)
            label_logits = outputs.logits.float()
            label_logp = torch.log_softmax(label_logits, dim=-1)
            token_correct = None
        per_row = soft_cross_entropy(label_logp, targets)
        loss = (per_row * weights).sum() / weights.sum().clamp_min(1e-12)
        with torch.no_grad():  # counters stay on the device: no sync per micro-batch
            mode = "train" if model.training else "eval"
            correct = (label_logits.argmax(dim=-1) == targets.argmax(dim=-1)).float().sum()
            step = torch.stack([correct.new_tensor(float(targets.shape[0])), correct,
                                token_correct if token_correct is not None else torch.zeros_like(correct)])
            prev = self._counts.get(mode)
            self._counts[mode] = step if prev is None else prev + step  # float32: MPS has no float64
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------------------------- logging
    def _drain(self, mode: str) -> dict[str, float]:
        import torch

        totals = self._counts.pop(mode, None)
        if totals is None:
            totals = torch.zeros(3)
        if self.accelerator.num_processes > 1:  # every process logs at the same steps: a safe collective
            totals = self.accelerator.reduce(totals.to(self.args.device), reduction="sum")
        n, correct, token = (float(x) for x in totals.tolist())
        if n <= 0:
            return {}
        prefix = "" if mode == "train" else "eval_"
        out = {f"{prefix}{'train_' if mode == 'train' else ''}accuracy": correct / n}
        if self.head == "label-token":
            out[f"{prefix}token_accuracy"] = token / n
        return out

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self._drain("train"))
        elif "eval_loss" in logs:
            extra = self._drain("eval")
            # the score_pairs accuracy (swap-averaged) is the headline eval accuracy
            extra.pop("eval_accuracy", None)
            logs.update(extra)
            logs.update(self._pending_eval)
            self._pending_eval = {}
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        self._counts.pop("eval", None)
        if self.score_eval is not None and metric_key_prefix == "eval":
            self._pending_eval = self.score_eval(self.model)
        return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys,
                                metric_key_prefix=metric_key_prefix)


class MetricsJsonl(TrainerCallback):
    """Write one JSON row per train/eval log to ``metrics.jsonl`` (main process only) and keep them in memory.

    On resume, rows logged after the checkpoint's step (by the interrupted run) are dropped, so the file
    holds each step once.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.resumed_from_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        start = int(state.global_step)
        self.resumed_from_step = start if start > 0 else None
        old = read_metrics(self.path) if self.path is not None and self.path.is_file() else []
        self.rows = [r for r in old if int(r.get("step", 0)) <= start] if start > 0 else []
        if self.path is not None and state.is_world_process_zero:
            self._rewrite()

    def on_log(self, args, state, control, logs=None, **kwargs):
        row = normalize_log(logs or {}, state.global_step)
        if row is None:
            return
        self.rows.append(row)
        if self.path is not None and state.is_world_process_zero:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def _rewrite(self) -> None:
        from prefpred.utils import atomic_write_text

        assert self.path is not None
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))


class LogProgress(TrainerCallback):
    """Training progress as log lines (``step 20/100: loss 1.0712, learning_rate 2e-05``) instead of the
    Trainer's tqdm bars with its log dicts printed between them (``disable_tqdm`` is set)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items() if k != "epoch"]
        logger.info("step %d/%s: %s", state.global_step, state.max_steps or "?", ", ".join(parts))


def normalize_log(logs: dict[str, Any], step: int) -> dict[str, Any] | None:
    """A ``metrics.jsonl`` row from a Trainer log dict (``None`` for the end-of-training summary)."""
    if "loss" in logs:
        row: dict[str, Any] = {"kind": "train", "step": int(step), "epoch": logs.get("epoch"),
                               "train_loss": logs["loss"], "lr": logs.get("learning_rate"),
                               "grad_norm": logs.get("grad_norm")}
        for k in ("train_accuracy", "token_accuracy"):
            if k in logs:
                row[k] = logs[k]
        return _clean(row)
    if "eval_loss" in logs:
        row = {"kind": "eval", "step": int(step), "epoch": logs.get("epoch")}
        for k in (*EVAL_KEYS, "eval_runtime", "eval_scoring_s"):
            if k in logs:
                row[k] = logs[k]
        return _clean(row)
    return None


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` file (blank or truncated trailing lines are skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s: skipping a malformed line", path)
    return rows


# ------------------------------------------------------------------------------------------------ setup
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
"""Where torchrun / accelerate (``RANK``, ``WORLD_SIZE``) and MPI launchers put a process's rank and count."""


def _env_int(names: Sequence[str], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return default


def process_rank() -> int:
    """This process's global rank as its launcher set it (0 for a lone process); known before any process group
    exists, unlike ``PartialState().process_index`` on CPU, which needs ``cpu=True`` to see the other ranks."""
    return _env_int(RANK_VARS, 0)


def world_size() -> int:
    """Number of training processes as the launcher set it (1 for a lone process)."""
    return _env_int(SIZE_VARS, 1)


def check_launch() -> None:
    """Refuse ``accelerate launch --cpu --num_processes N`` (N > 1), which starts one process, not N.

    accelerate's ``--cpu`` launcher runs a single ``python`` unless given an MPI hostfile; it still sets
    ``MASTER_ADDR`` for the N processes it did not start. A lone process would train on everything and look
    like it worked, so this stops with the commands that do start N CPU processes.
    """
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes")
    if use_cpu and os.environ.get("MASTER_ADDR") and not any(os.environ.get(v) for v in RANK_VARS):
        raise ConfigError("accelerate launch --cpu started 1 process, not --num_processes (accelerate needs "
                          "mpirun for several CPU processes): drop --cpu and run `accelerate launch --config_file "
                          "configs/accelerate/ddp.yaml --num_processes N -m prefpred train ... --device cpu`, or "
                          "`torchrun --nproc_per_node N -m prefpred train ...`")


def mixed_precision(model_cfg: LLMModelConfig) -> tuple[bool, bool]:
    """``(bf16, fp16)`` autocast flags: on CUDA per the model dtype (bf16 where supported); none on CPU/MPS."""
    import torch

    from prefpred.hf import resolve_device, resolve_dtype

    device = resolve_device(model_cfg.device)
    if not device.startswith("cuda"):
        return False, False
    dtype = resolve_dtype(model_cfg.dtype, device)
    return dtype == torch.bfloat16, dtype == torch.float16


def training_arguments(tcfg: TrainingConfig, model_cfg: LLMModelConfig, output_dir: str | Path, *, seed: int,
                       has_eval: bool) -> TrainingArguments:
    """``TrainingArguments`` for a prefpred config (build it before loading the model for DeepSpeed ZeRO-3)."""
    from prefpred.hf import resolve_device

    check_launch()
    device = resolve_device(model_cfg.device)
    single_process = world_size() == 1
    if single_process and device.startswith("cuda") and device not in ("cuda", "cuda:0"):
        raise ConfigError(f"model.device={model_cfg.device!r}: a single training process uses the first visible "
                          f"GPU; pick one with CUDA_VISIBLE_DEVICES={device.split(':')[-1]} (several GPUs: "
                          "accelerate launch)")
    if tcfg.deepspeed:
        _check_deepspeed(tcfg.deepspeed, model_cfg)
    bf16, fp16 = mixed_precision(model_cfg)
    early = has_eval and bool(tcfg.early_stopping_patience)
    save_steps = tcfg.save_steps
    if has_eval and save_steps % tcfg.eval_steps:
        save_steps = math.ceil(save_steps / tcfg.eval_steps) * tcfg.eval_steps
        logger.info("save_steps rounded up to %d (a multiple of eval_steps=%d, to keep the best checkpoint)",
                    save_steps, tcfg.eval_steps)
    scheduler = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[tcfg.lr_scheduler]
    args = TrainingArguments(
        output_dir=str(output_dir),
        seed=seed,
        data_seed=seed,
        learning_rate=tcfg.learning_rate,
        weight_decay=tcfg.weight_decay,
        warmup_steps=tcfg.warmup_steps,
        lr_scheduler_type=scheduler,
        max_steps=tcfg.max_steps,
        num_train_epochs=tcfg.num_epochs,
        per_device_train_batch_size=tcfg.batch_size,
        per_device_eval_batch_size=tcfg.eval_batch_size or tcfg.batch_size,
        gradient_accumulation_steps=tcfg.gradient_accumulation_steps,
        max_grad_norm=tcfg.max_grad_norm,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=tcfg.eval_steps if has_eval else None,
        eval_on_start=has_eval and tcfg.eval_on_start,
        logging_strategy="steps",
        logging_steps=tcfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=tcfg.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        restore_callback_states_from_checkpoint=early,
        prediction_loss_only=True,
        label_names=["targets"],
        remove_unused_columns=False,
        average_tokens_across_devices=False,
        dataloader_num_workers=tcfg.dataloader_num_workers,
        dataloader_pin_memory=device.startswith("cuda"),
        use_cpu=device == "cpu",
        bf16=bf16,
        fp16=fp16,
        ddp_find_unused_parameters=False if model_cfg.method != "full" else None,
        deepspeed=tcfg.deepspeed,
        report_to="none",
        disable_tqdm=True,  # LogProgress logs each logging step instead of bars interleaved with log dicts
    )
    if single_process and device.startswith("cuda"):
        _ = args.device  # set up devices first, then keep the Trainer off nn.DataParallel: one process, one GPU
        args._n_gpu = 1
    return args


def _check_deepspeed(path: str, model_cfg: LLMModelConfig) -> None:
    """A readable DeepSpeed JSON; ZeRO-3 shards parameters, which a 4-bit (qlora) base cannot be."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"training.deepspeed: {path}: file not found (see configs/deepspeed/)")
    try:
        ds = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"training.deepspeed: {path}: not valid JSON ({e})") from e
    stage = (ds.get("zero_optimization") or {}).get("stage")
    if stage == 3 and model_cfg.method == "qlora":
        raise ConfigError("DeepSpeed ZeRO-3 cannot shard a 4-bit (qlora) base: use configs/deepspeed/zero2.json or "
                          "model.method lora")


@dataclasses.dataclass
class TrainingResult:
    """What a training run leaves besides the trained model."""

    history: list[dict[str, Any]]
    global_step: int
    best_step: int | None
    best_eval_loss: float | None
    resumed_from_step: int | None
    train_runtime_s: float | None
    stopped_early: bool
    world_size: int = 1
    """Training processes (data parallel); each optimizer step saw ``world_size`` micro-batches."""


def last_checkpoint(directory: str | Path) -> str | None:
    """The newest ``checkpoint-N`` folder under ``directory`` with a trainer state, or ``None``."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = []
    for p in directory.iterdir():
        if p.is_dir() and p.name.startswith("checkpoint-") and p.name[len("checkpoint-"):].isdigit():
            if (p / "trainer_state.json").is_file():
                found.append((int(p.name[len("checkpoint-"):]), p))
    return str(max(found)[1]) if found else None


def run_training(model, tokenizer, style, train_pairs: Sequence[Pair], eval_pairs: Sequence[Pair] | None, *,
                 model_cfg: LLMModelConfig, training_cfg: TrainingConfig, args: TrainingArguments,
                 output_dir: str | Path, inference_cfg=None, label_token_ids: Sequence[int] | None = None,
                 callbacks: Sequence[TrainerCallback] = (), write_metrics: bool = True) -> tuple[Any, TrainingResult]:
    """Train ``model`` in place; returns the trained model (the best checkpoint's weights when evaluating)."""
    from transformers import EarlyStoppingCallback

    from prefpred.training.data import PairCollator, PairDataset

    output_dir = Path(output_dir)
    tcfg = training_cfg
    head = model_cfg.head
    train_ds = PairDataset(train_pairs, swap_augment=tcfg.swap_augment)
    eval_pairs = list(eval_pairs or [])
    eval_ds = PairDataset(eval_pairs) if eval_pairs else None
    collator = PairCollator(tokenizer, style, head, model_cfg.max_length)
    score_eval = _eval_scorer(eval_pairs, tokenizer, style, head, label_token_ids, inference_cfg,
                              model_cfg.max_length) if eval_pairs else None
    metrics_cb = MetricsJsonl(output_dir / METRICS_FILE if write_metrics else None)
    cbs: list[TrainerCallback] = [metrics_cb, LogProgress()]
    if eval_ds is not None and tcfg.early_stopping_patience:
        cbs.append(EarlyStoppingCallback(tcfg.early_stopping_patience, tcfg.early_stopping_threshold))
    cbs.extend(callbacks)
    trainer = PreferenceTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
        processing_class=tokenizer, callbacks=cbs, head=head, label_token_ids=label_token_ids,
        label_token_loss=tcfg.label_token_loss, score_eval=score_eval,
    )
    trainer.remove_callback(PrinterCallback)  # it print()s each log dict; LogProgress logs them
    resume = last_checkpoint(args.output_dir) if tcfg.resume else None
    if resume:
        logger.info("resuming from %s", resume)
    elif last_checkpoint(args.output_dir):
        logger.warning("%s holds checkpoints but resume is off: training from scratch", args.output_dir)
    out = trainer.train(resume_from_checkpoint=resume)
    state = trainer.state
    best_step = None
    if state.best_model_checkpoint:
        tail = Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1]
        best_step = int(tail) if tail.isdigit() else None
    max_steps = state.max_steps or 0
    result = TrainingResult(
        history=list(metrics_cb.rows),
        global_step=int(state.global_step),
        best_step=best_step,
        best_eval_loss=float(state.best_metric) if state.best_metric is not None else None,
        resumed_from_step=metrics_cb.resumed_from_step,
        train_runtime_s=(out.metrics or {}).get("train_runtime") if out is not None else None,
        stopped_early=bool(max_steps and state.global_step < max_steps),
        world_size=int(trainer.args.world_size),
    )
    return trainer.model, result


def _eval_scorer(eval_pairs: list[Pair], tokenizer, style, head: str, label_token_ids, inference_cfg,
                 max_length: int):
    """A function ``model -> {eval_log_loss, eval_accuracy, eval_scoring_s}`` through score_pairs."""
    import time

    from prefpred.inference import InferenceConfig, score_pairs
    from prefpred.metrics import accuracy, log_loss
    from prefpred.types import label_matrix

    base = inference_cfg or InferenceConfig(max_length=max_length)
    cfg = dataclasses.replace(base, num_processes=1, engine="hf", progress=False)
    y = label_matrix(eval_pairs)

    def score(model) -> dict[str, float]:
        start = time.perf_counter()
        proba = score_pairs(eval_pairs, model, tokenizer, style, head=head, label_token_ids=label_token_ids,
                            config=cfg)
        return {"eval_log_loss": log_loss(y, proba), "eval_accuracy": accuracy(y, proba),
                "eval_scoring_s": time.perf_counter() - start}

    return score
