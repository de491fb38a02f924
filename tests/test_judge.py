"""Zero-shot judge: label-token probabilities equal a hand computation; swap averaging; parse-generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefpred.models import load_model
from prefpred.models.base import MODEL_META_FILE
from prefpred.models.judge import ZeroShotJudge, answers_to_proba, generate_answers
from prefpred.prompts import get_style
from prefpred.testing import planted_pairs, tiny_causal_lm, tiny_tokenizer
from prefpred.types import ConfigError, UserError


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Qwen2 causal LM and its tokenizer saved as a local model directory."""
    path = tmp_path_factory.mktemp("tiny-lm")
    tok = tiny_tokenizer()
    tiny_causal_lm(tok, hidden=32).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pairs():
    return planted_pairs(10, seed=4, multi_turn_rate=0.3)


def hand_proba(judge: ZeroShotJudge, pairs, style_name: str, max_length: int) -> np.ndarray:
    """Run the model on each rendered text alone; softmax of the last position's logits at the label ids."""
    lm, tok = judge.load_lm(), judge.load_tokenizer()
    style = get_style(style_name)
    ids = [tok.convert_tokens_to_ids(w) for w in style.label_words]
    rows = []
    for p in pairs:
        enc = tok(style.render(p, tok, max_tokens=max_length), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            logits = lm(**enc).logits[0, -1].double()
        z = logits[ids]
        rows.append((torch.exp(z - z.max()) / torch.exp(z - z.max()).sum()).numpy())
    return np.asarray(rows)


@pytest.mark.parametrize("style,max_length", [("seed-digits", 1024), ("seed-digits", 380), ("criteria-10", 1024)])
def test_probabilities_sum_to_one_and_equal_a_hand_computation(tiny_dir, pairs, style, max_length):
    judge = ZeroShotJudge(model=str(tiny_dir), style=style, max_length=max_length, swap_average=False,
                          max_batch_size=4)
    assert judge.fit(pairs) is judge  # no training
    tok = judge.load_tokenizer()
    truncated = [len(tok(get_style(style).render(p, tok))["input_ids"]) > max_length for p in pairs]
    assert any(truncated) == (max_length < 1024)  # the short budget really cuts pairs
    proba = judge.predict_proba(pairs)
    assert proba.shape == (len(pairs), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(proba, hand_proba(judge, pairs, style, max_length), atol=1e-5)
    assert judge.unparseable_rate_ is None
    assert judge.inference_stats_["pairs"] == len(pairs)


def test_swap_averaging_is_symmetric_and_averages_both_orders(tiny_dir, pairs):
    swapped = [p.swapped() for p in pairs]
    judge = ZeroShotJudge(model=str(tiny_dir), max_length=1024, swap_average=True)
    avg = judge.predict_proba(pairs)
    np.testing.assert_allclose(judge.predict_proba(swapped), avg[:, [1, 0, 2]], atol=1e-6)
    one_way = ZeroShotJudge(model=str(tiny_dir), max_length=1024, swap_average=False)
    direct, reverse = one_way.predict_proba(pairs), one_way.predict_proba(swapped)
    np.testing.assert_allclose(avg, (direct + reverse[:, [1, 0, 2]]) / 2, atol=1e-6)
    assert not np.allclose(direct, reverse[:, [1, 0, 2]], atol=1e-6)  # the tiny model has a position bias


def test_parse_generation_reports_the_unparseable_rate(tiny_dir, pairs):
    judge = ZeroShotJudge(model=str(tiny_dir), max_length=1024, parse_generation=True, max_new_tokens=3)
    proba = judge.predict_proba(pairs[:4])
    style = get_style("seed-digits")
    assert len(judge.generations_) == 8  # both orders
    assert 0.0 <= judge.unparseable_rate_ <= 1.0
    assert judge.unparseable_rate_ == np.mean([style.parse_answer(g) is None for g in judge.generations_])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    direct = answers_to_proba(judge.generations_[:4], style)
    reverse = answers_to_proba(judge.generations_[4:], style)
    np.testing.assert_allclose(proba, (direct + reverse[:, [1, 0, 2]]) / 2)


def test_generated_label_digits_are_parsed_one_hot(tiny_dir, pairs):
    """A tiny model whose output layer always favours "1" answers B; the parse is one-hot on B."""
    judge = ZeroShotJudge(model=str(tiny_dir))
    lm, tok = judge.load_lm(), judge.load_tokenizer()
    b_id = get_style("seed-digits").label_token_ids(tok)[1]
    head = torch.nn.Linear(lm.config.hidden_size, lm.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    head.bias.data[b_id] = 10.0
    lm.lm_head = head
    texts = generate_answers(pairs[:5], lm, tok, get_style("seed-digits"), max_length=1024, max_new_tokens=2,
                             max_batch_size=2)
    assert len(texts) == 5 and all(t.startswith("1") for t in texts)
    np.testing.assert_array_equal(answers_to_proba(texts, get_style("seed-digits")), [[0.0, 1.0, 0.0]] * 5)
    np.testing.assert_allclose(answers_to_proba(["no idea"], get_style("seed-digits")), [[1 / 3] * 3])


def test_save_and_load_reference_the_model_without_copying_weights(tiny_dir, pairs, tmp_path):
    judge = ZeroShotJudge(model=str(tiny_dir), style="criteria-10", max_length=900, swap_average=False)
    out = judge.save(tmp_path / "judge")
    assert sorted(x.name for x in out.iterdir()) == [MODEL_META_FILE]
    loaded = load_model(out)
    assert isinstance(loaded, ZeroShotJudge)
    assert loaded.get_params() == {**judge.get_params(), "model": str(tiny_dir.resolve())}
    np.testing.assert_allclose(loaded.predict_proba(pairs[:3]), judge.predict_proba(pairs[:3]), atol=1e-6)
    hub = ZeroShotJudge(model="some-org/some-judge").save(tmp_path / "hub")
    assert load_model(hub).model == "some-org/some-judge"


def test_errors_are_one_line_user_errors(tiny_dir, pairs):
    with pytest.raises(ConfigError, match="unknown prompt style"):
        ZeroShotJudge(model=str(tiny_dir), style="nope").fit(pairs)
    with pytest.raises(UserError, match="offline"):  # hub id with the hub unreachable (tests run offline)
        ZeroShotJudge(model="prefpred-test/does-not-exist").predict_proba(pairs[:1])
    with pytest.raises(ConfigError, match="no model"):
        ZeroShotJudge().predict_proba(pairs[:1])
    assert ZeroShotJudge(model=str(tiny_dir)).predict_proba([]).shape == (0, 3)
