"""The vLLM engine through a fake ``vllm`` module at the import boundary (vLLM cannot run here): the ``LLM`` is
built once per model across calls, with the documented arguments; prompts are the transformers engine's token
ids (direct and swapped, in input order); sampling parameters ask for one label token with log-probabilities."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from prefpred.inference import InferenceConfig, VLLMEngine, score_pairs
from prefpred.inference.batching import Encoder
from prefpred.inference.vllm_engine import NUM_LOGPROBS, as_engine
from prefpred.models.judge import ZeroShotJudge
from prefpred.prompts import get_style
from prefpred.testing import planted_pairs
from prefpred.types import ConfigError, swap_proba
from vllm_fakes import Logprob, RequestOutput


def label_logits(prompt_ids) -> np.ndarray:
    """The fake model's three label logits for a prompt: a fixed function of its token ids."""
    ids = np.asarray(prompt_ids, dtype=np.float64)
    return np.array([np.sin(ids.sum()), np.cos(len(ids)), 0.3 * np.sin(ids[-3:].sum())])


def fake_vllm(tokenizer, label_ids):
    """A module with ``LLM`` and ``SamplingParams`` that records every construction and call."""
    calls = {"llm": [], "generate": [], "params": []}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            calls["params"].append(kwargs)

    class LLM:
        def __init__(self, model, **kwargs):
            calls["llm"].append(dict(model=model, **kwargs))

        def get_tokenizer(self):
            return tokenizer

        def generate(self, prompts, params, use_tqdm=True):
            calls["generate"].append((prompts, params))
            outs = []
            for p in prompts:
                logits = label_logits(p["prompt_token_ids"])
                full = logits - np.log(np.exp(logits).sum() + 4.0)  # log-softmax over a bigger vocabulary
                lps = {int(t): Logprob(float(v)) for t, v in zip(label_ids, full, strict=True)}
                lps[99999] = Logprob(-0.5)  # a non-label token in the top-k
                outs.append(RequestOutput([lps]))
            return outs

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams, __name__="vllm"), calls


def expected_probs(pairs, tokenizer, style, cfg: InferenceConfig) -> np.ndarray:
    """What the engine must return: softmax of the fake logits, direct and swapped averaged."""
    def soft(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    enc = Encoder(tokenizer, style, "label-token", cfg.seq_cap)
    direct, _ = enc.encode(pairs)
    swapped, _ = enc.encode([p.swapped() for p in pairs])
    d = np.array([soft(label_logits(x)) for x in direct])
    s = np.array([soft(label_logits(x)) for x in swapped])
    out = (d + swap_proba(s)) / 2
    return out / out.sum(axis=1, keepdims=True)


@pytest.fixture
def tok(tiny_qwen_dir):
    from prefpred.hf import load_tokenizer

    return load_tokenizer(str(tiny_qwen_dir))


@pytest.fixture
def vllm(monkeypatch, tok):
    module, calls = fake_vllm(tok, get_style("seed-digits").label_token_ids(tok))
    monkeypatch.setitem(sys.modules, "vllm", module)
    return calls


def test_judge_builds_its_llm_once_and_sends_the_engines_prompts(vllm, tok, tiny_qwen_dir):
    style = get_style("seed-digits")
    judge = ZeroShotJudge(model=str(tiny_qwen_dir), style="seed-digits", max_length=256, engine="vllm")
    pairs = planted_pairs(5, seed=1)
    first = judge.predict_proba(pairs)
    second = judge.predict_proba(pairs[::-1])
    third = judge.predict_proba(pairs[:2])

    assert len(vllm["llm"]) == 1, "one vllm.LLM per model, whatever the number of predict_proba calls"
    built = vllm["llm"][0]
    assert built["model"] == str(tiny_qwen_dir)
    assert built["enable_prefix_caching"] is True and built["max_logprobs"] == NUM_LOGPROBS
    assert built["max_model_len"] >= 256

    cfg = InferenceConfig(max_length=256)
    want = expected_probs(pairs, tok, style, cfg)
    np.testing.assert_allclose(first, want, atol=1e-9)
    np.testing.assert_allclose(second, want[::-1], atol=1e-9)  # input order kept
    np.testing.assert_allclose(third, want[:2], atol=1e-9)

    prompts, params = vllm["generate"][0]
    ids = [int(i) for i in style.label_token_ids(tok)]
    assert params.kwargs == {"max_tokens": 1, "temperature": 0.0, "logprobs": NUM_LOGPROBS,
                             "allowed_token_ids": ids}
    # 2 prompts per pair, direct then swapped, as token ids of the same encoder as the transformers engine
    enc = Encoder(tok, style, "label-token", cfg.seq_cap)
    direct, _ = enc.encode(pairs)
    swapped, _ = enc.encode([p.swapped() for p in pairs])
    assert len(prompts) == 10
    assert [p["prompt_token_ids"] for p in prompts[0::2]] == [list(map(int, x)) for x in direct]
    assert [p["prompt_token_ids"] for p in prompts[1::2]] == [list(map(int, x)) for x in swapped]
    assert all(isinstance(t, int) for t in prompts[0]["prompt_token_ids"])
    assert judge.inference_stats_["device"] == "vllm" and judge.inference_stats_["sequences"] == 4

    judge.set_params(max_length=384)  # a new setting: a new engine for the next call
    judge.predict_proba(pairs[:1])
    assert len(vllm["llm"]) == 2


def test_engine_rebuilds_only_when_a_call_needs_longer_sequences(vllm, tok):
    style = get_style("seed-digits")
    engine = VLLMEngine("some/model", InferenceConfig(max_length=256), {"gpu_memory_utilization": 0.5})
    assert vllm["llm"] == []  # nothing built before the first call
    pairs = planted_pairs(3, seed=2)
    for _ in range(3):
        engine.score(pairs, style, tokenizer=tok)
    engine.score(pairs, style, tokenizer=tok, config=InferenceConfig(max_length=200, swap_average=False))
    assert len(vllm["llm"]) == 1
    assert vllm["llm"][0]["gpu_memory_utilization"] == 0.5 and vllm["llm"][0]["max_model_len"] == 256 + 16
    assert len(vllm["generate"][-1][0]) == 3  # no swaps: one prompt per pair
    engine.score(pairs, style, tokenizer=tok, config=InferenceConfig(max_length=512))
    assert len(vllm["llm"]) == 2 and vllm["llm"][1]["max_model_len"] == 512 + 16


def test_score_pairs_reuses_a_given_llm_and_rejects_what_vllm_cannot_run(vllm, tok):
    import vllm as fake

    style = get_style("seed-digits")
    llm = fake.LLM(model="m")
    cfg = InferenceConfig(engine="vllm", max_length=256)
    pairs = planted_pairs(4, seed=3)
    out = score_pairs(pairs, llm, None, style, config=cfg)  # tokenizer from llm.get_tokenizer()
    np.testing.assert_allclose(out, expected_probs(pairs, tok, style, cfg), atol=1e-9)
    assert len(vllm["llm"]) == 1  # only the one built above
    assert as_engine(llm).get_llm() is llm

    with pytest.raises(ConfigError, match="label-token"):
        score_pairs(pairs, llm, tok, style, head="classifier", config=cfg)
    with pytest.raises(ConfigError, match="model name/path"):
        score_pairs(pairs, object(), tok, style, config=cfg)  # e.g. an in-memory torch model
    assert score_pairs([], llm, tok, style, config=cfg).shape == (0, 3)
