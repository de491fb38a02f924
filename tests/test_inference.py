"""The batched inference engine: order, padding, truncation, swap averaging, prefix cache, stats, vLLM boundary."""

from __future__ import annotations

import random

import numpy as np
import pytest

from prefpred.inference import (
    InferenceConfig,
    Scorer,
    fit_length,
    label_probs_from_logprobs,
    pack_batches,
    score_pairs,
)
from prefpred.inference.vllm_engine import probs_from_request_outputs
from prefpred.prompts import get_style
from prefpred.testing import planted_pairs, tiny_causal_lm, tiny_sequence_classifier
from prefpred.types import MissingDependencyError, Pair, Turn, swap_proba
from vllm_fakes import Logprob, RequestOutput

TOL = 1e-5



@pytest.fixture(scope="module")
def clf(tok):
    return tiny_sequence_classifier(tok, hidden=32)


def varied_pairs(n: int, seed: int = 0) -> list[Pair]:
    """Pairs whose lengths range from a few words to a few hundred, in shuffled order."""
    rng = random.Random(seed)
    words = "the model answer explains data python code list table result value system user".split()
    pairs = []
    for i in range(n):
        la, lb = rng.choice([1, 3, 10, 40, 120]), rng.choice([1, 5, 20, 80])
        pairs.append(Pair(id=str(i), turns=(Turn(f"question {i} about " + rng.choice(words),
                                                 " ".join(rng.choice(words) for _ in range(la)),
                                                 " ".join(rng.choice(words) for _ in range(lb))),)))
    rng.shuffle(pairs)
    return pairs


CASES = [("criteria-10", "label-token"), ("seed-digits", "label-token"), ("classifier", "classifier")]


def _model(head, lm, clf):
    return clf if head == "classifier" else lm


def test_pack_batches_respects_budget_and_covers_every_sequence():
    rng = random.Random(1)
    lengths = [rng.randint(1, 300) for _ in range(200)] + [900]  # one longer than the budget
    batches = pack_batches(lengths, token_budget=600, max_batch_size=8)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 8
        assert len(b) * max(lengths[i] for i in b) <= 600 or len(b) == 1
    assert [200] in batches  # the over-long one alone, not dropped
    fixed = pack_batches(lengths, 600, 8, bucket=False, fixed_batch_size=5)
    assert [i for b in fixed for i in b] == list(range(len(lengths))) and all(len(b) <= 5 for b in fixed)
    padded = lambda bs: sum(len(b) * max(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert padded(batches) < padded(fixed)


def test_fit_length_keeps_prefix_and_end():
    ids = list(range(100))
    out = fit_length(ids, 20, protect=5)
    assert len(out) == 20 and out[:5] == [0, 1, 2, 3, 4] and out[-1] == 99
    assert fit_length(ids, 200) == ids


@pytest.mark.parametrize("style_name,head", CASES)
def test_order_restored_and_padding_does_not_change_probabilities(tok, lm, clf, style_name, head):
    style, model = get_style(style_name), _model(head, lm, clf)
    pairs = varied_pairs(10, seed=2)
    cfg = InferenceConfig(token_budget=3000, max_length=900, max_batch_size=6, swap_average=False, progress=False)
    scorer = Scorer(model, tok, style, head=head, config=cfg)
    batched = scorer.score(pairs)
    assert scorer.last_stats.batches > 1 and scorer.last_stats.padding_fraction > 0
    alone = np.vstack([scorer.score([p]) for p in pairs])
    assert batched.shape == (10, 3)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-9)
    assert np.abs(batched - alone).max() < TOL
    # a different length order (reversed input) gives the same per-pair rows
    rev = scorer.score(pairs[::-1])[::-1]
    assert np.abs(rev - batched).max() < TOL


@pytest.mark.parametrize("style_name,head", CASES)
def test_bucketed_and_fixed_batches_agree_and_bucketing_pads_less(tok, lm, clf, style_name, head):
    style, model = get_style(style_name), _model(head, lm, clf)
    pairs = varied_pairs(16, seed=3)
    results, stats = {}, {}
    for bucket in (True, False):
        s: dict = {}
        cfg = InferenceConfig(token_budget=4000, max_length=800, bucket=bucket, progress=False)
        results[bucket] = score_pairs(pairs, model, tok, style, head=head, config=cfg, stats=s)
        stats[bucket] = s
    assert np.abs(results[True] - results[False]).max() < TOL
    assert stats[True]["padding_fraction"] < stats[False]["padding_fraction"]
    for s in stats.values():
        assert s["max_batch_tokens"] <= 4000 and s["pairs"] == 16 and s["sequences"] == 32
        assert s["pairs_per_s"] > 0 and s["tokens_per_s"] > 0 and s["peak_memory_mb"] > 0


def test_empty_and_single_pair(tok, lm):
    style = get_style("seed-digits")
    empty = score_pairs([], lm, tok, style)
    assert empty.shape == (0, 3)
    one = score_pairs(planted_pairs(1, seed=5), lm, tok, style)
    assert one.shape == (1, 3) and abs(one.sum() - 1) < 1e-9 and (one > 0).all()


def test_pair_longer_than_budget_is_truncated_not_dropped(tok, lm):
    style = get_style("criteria-10")
    long = Pair(id="long", turns=(Turn("why? " * 50, "because " * 800, "no " * 700),))
    pairs = planted_pairs(5, seed=6)
    pairs.insert(2, long)
    cfg = InferenceConfig(max_length=4096, token_budget=700, max_batch_size=8, progress=False)
    s: dict = {}
    out = score_pairs(pairs, lm, tok, style, config=cfg, stats=s)
    assert out.shape == (6, 3) and np.isfinite(out).all()
    assert s["max_batch_tokens"] <= 700 and s["truncated"] == 0
    alone = score_pairs([long], lm, tok, style, config=cfg)
    assert np.abs(alone - out[2]).max() < TOL


@pytest.mark.parametrize("style_name,head", CASES)
def test_swap_averaging_is_mirror_symmetric(tok, lm, clf, style_name, head):
    style, model = get_style(style_name), _model(head, lm, clf)
    pairs = planted_pairs(6, seed=7)
    cfg = InferenceConfig(progress=False)
    direct = score_pairs(pairs, model, tok, style, head=head, config=cfg)
    mirrored = score_pairs([p.swapped() for p in pairs], model, tok, style, head=head, config=cfg)
    assert np.abs(mirrored - swap_proba(direct)).max() < TOL
    # without swap averaging a random model has position bias: the mirror property is not automatic
    off = InferenceConfig(swap_average=False, progress=False)
    d0 = score_pairs(pairs, model, tok, style, head=head, config=off)
    m0 = score_pairs([p.swapped() for p in pairs], model, tok, style, head=head, config=off)
    assert np.abs(m0 - swap_proba(d0)).max() > 1e-6
    np.testing.assert_allclose(direct, (d0 + swap_proba(m0)) / 2, atol=TOL)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("style_name", ["criteria-10", "seed-digits"])
def test_prefix_cache_equals_uncached(tok, arch, style_name):
    import torch

    model = tiny_causal_lm(tok, arch=arch, hidden=32).to(torch.float32)
    style = get_style(style_name)
    pairs = varied_pairs(10, seed=8)
    base = dict(token_budget=2400, max_length=800, max_batch_size=4, progress=False)
    s_on: dict = {}
    s_off: dict = {}
    on = score_pairs(pairs, model, tok, style, config=InferenceConfig(prefix_cache=True, **base), stats=s_on)
    off = score_pairs(pairs, model, tok, style, config=InferenceConfig(prefix_cache=False, **base), stats=s_off)
    assert s_on["prefix_tokens"] > 10 and s_off["prefix_tokens"] == 0
    assert s_on["computed_tokens"] < s_off["computed_tokens"]
    assert np.abs(on - off).max() < TOL


def test_prefix_and_remainder_are_tokenized_separately(tok, lm):
    style = get_style("criteria-10")
    scorer = Scorer(lm, tok, style, config=InferenceConfig(progress=False))
    prefix_ids = scorer.encoder.prefix_ids
    assert prefix_ids == tok(style.shared_prefix(tok), add_special_tokens=False)["input_ids"]
    ids, _ = scorer.encoder.encode(planted_pairs(3, seed=9))
    assert all(list(x[:len(prefix_ids)]) == prefix_ids for x in ids)


def test_workers_and_windows_do_not_change_results(tok, lm):
    style = get_style("seed-digits")
    pairs = varied_pairs(12, seed=10)
    ref = score_pairs(pairs, lm, tok, style, config=InferenceConfig(num_workers=0, progress=False))
    for cfg in (InferenceConfig(num_workers=3, progress=False),
                InferenceConfig(bucket_window=3, token_budget=3000, num_workers=2, progress=False)):
        assert np.abs(score_pairs(pairs, lm, tok, style, config=cfg) - ref).max() < TOL


def test_errors_in_background_rendering_reach_the_caller(tok, lm):
    class Broken:
        name = "broken"

        def shared_prefix(self, tokenizer=None):
            return "X"

        def render(self, pair, tokenizer=None, max_tokens=None):
            raise RuntimeError(f"cannot render {pair.id}")

        def label_token_ids(self, tokenizer):
            return [1, 2, 3]

    with pytest.raises(RuntimeError, match="cannot render"):
        score_pairs(planted_pairs(3), lm, tok, Broken(), config=InferenceConfig(progress=False))


def test_training_mode_restored(tok, lm):
    lm.train()
    try:
        score_pairs(planted_pairs(2), lm, tok, get_style("seed-digits"), config=InferenceConfig(progress=False))
        assert lm.training
    finally:
        lm.eval()


# ------------------------------------------------------------------------------------------- vLLM boundary
def test_label_probs_from_logprobs_matches_softmax_over_label_logits():
    labels = [11, 12, 13]
    logits = np.array([2.0, 0.5, -1.0])
    full = np.log(np.exp(logits) / (np.exp(logits).sum() + 5.0))  # log-softmax over a larger vocabulary
    lps = {11: Logprob(full[0]), 12: Logprob(full[1]), 13: Logprob(full[2]), 99: Logprob(-0.2)}
    expected = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(label_probs_from_logprobs(lps, labels), expected, atol=1e-12)
    # plain floats work too; a missing label gets the smallest returned logprob
    got = label_probs_from_logprobs({11: -0.1, 99: -3.0}, labels)
    np.testing.assert_allclose(got, np.exp([-0.1, -3.0, -3.0]) / np.exp([-0.1, -3.0, -3.0]).sum())
    np.testing.assert_allclose(label_probs_from_logprobs({}, labels), [1 / 3] * 3)
    out = probs_from_request_outputs([RequestOutput([lps]), RequestOutput(None)], labels)
    assert out.shape == (2, 3) and np.allclose(out[1], 1 / 3) and np.allclose(out.sum(1), 1)


def test_vllm_engine_missing_is_one_clear_error(tok):
    pytest.importorskip("pytest")
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed")
    except ImportError:
        pass
    cfg = InferenceConfig(engine="vllm")
    with pytest.raises(MissingDependencyError, match=r"prefpred\[vllm\]"):
        score_pairs(planted_pairs(2), "some/model", tok, get_style("seed-digits"), config=cfg)
