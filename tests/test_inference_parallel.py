"""Data-parallel scoring: 2 CPU worker processes give the same probabilities, in input order, as 1 process; through
the zero-shot judge (``score_pairs`` with an in-memory model) and a saved fine-tuned (LoRA) model's ``predict_proba``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from prefpred.inference import InferenceConfig, score_pairs_parallel
from prefpred.inference.parallel import DirLoader
from prefpred.testing import planted_pairs


def test_judge_with_two_processes_equals_one_process(tiny_qwen_dir):
    """The judge's in-memory model is saved to a temporary folder and scored by one spawned worker per device."""
    from prefpred.models.judge import ZeroShotJudge

    judge = ZeroShotJudge(model=str(tiny_qwen_dir), style="seed-digits", max_length=256, device="cpu",
                          dtype="float32", num_processes=1)
    pairs = planted_pairs(9, seed=11)  # odd: the shards differ in size
    one = judge.predict_proba(pairs)
    assert np.ptp(one[:, 0]) > 1e-4  # pairs score differently: a mix-up of rows would show
    two = judge.set_params(num_processes=2).predict_proba(pairs)
    assert two.shape == (9, 3)
    np.testing.assert_allclose(two, one, atol=1e-5)
    stats = judge.inference_stats_
    assert stats["processes"] == 2 and stats["pairs"] == 9 and stats["sequences"] == 18

    # a saved model directory loaded by a picklable loader, style given by name, in process (n=1)
    loader = DirLoader(str(tiny_qwen_dir), "label-token", "float32")
    same = score_pairs_parallel(pairs[::-1], loader, "seed-digits", num_processes=1,
                                config=InferenceConfig(max_length=256, progress=False))
    np.testing.assert_allclose(same[::-1], one, atol=1e-5)


@pytest.mark.slow
def test_saved_fine_tuned_model_predicts_alike_with_two_processes(tiny_qwen_dir, tmp_path):
    """A LoRA model (peft) is scored by workers that each reload it from its saved directory."""
    from prefpred.models.llm import LLMPreferenceModel
    from prefpred.training import LLMModelConfig, LoRAConfig, TrainingConfig

    mcfg = LLMModelConfig(name_or_path=str(tiny_qwen_dir), head="classifier", style="classifier", method="lora",
                          device="cpu", dtype="float32", max_length=160, lora=LoRAConfig(r=4, alpha=8, dropout=0.0))
    tcfg = TrainingConfig(learning_rate=1e-2, max_steps=3, batch_size=4, logging_steps=1, save_steps=1000,
                          warmup_steps=0, early_stopping_patience=None)
    inference = InferenceConfig(max_length=160, progress=False)
    model = LLMPreferenceModel(mcfg, tcfg, seed=0, inference=inference).fit(planted_pairs(8, seed=13))
    model.save(tmp_path / "model")
    loaded = LLMPreferenceModel.load(tmp_path / "model")
    pairs = planted_pairs(5, seed=14)
    one = loaded.predict_proba(pairs)
    assert np.ptp(one[:, 0]) > 1e-5
    loaded.inference = dataclasses.replace(inference, num_processes=2)
    two = loaded.predict_proba(pairs)
    np.testing.assert_allclose(two, one, atol=1e-5)
    assert loaded.inference_stats_["processes"] == 2
