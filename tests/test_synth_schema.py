"""Teacher answer schema, soft-label aggregation, the answer cache and small client helpers (no server)."""

from __future__ import annotations

import json
import random

import pytest

from prefpred.synth.cache import AnswerCache, cache_key
from prefpred.synth.client import backoff_delay, resolve_api_key, scrub
from prefpred.synth.pairs import read_prompts
from prefpred.synth.schema import (
    CRITERION_KEYS,
    MalformedAnswer,
    aggregate,
    answer_schema,
    build_messages,
    pair_hash,
    parse_answer,
    response_format,
    verdict_distribution,
)
from prefpred.testing import planted_pairs
from prefpred.types import DataError, UserError


def answer(verdict: str, confidence: float, a: int = 7, b: int = 4) -> dict:
    return {"scores": {k: {"A": a, "B": b} for k in CRITERION_KEYS}, "verdict": verdict, "confidence": confidence}


def test_schema_names_every_criterion_and_is_sent_as_json_schema():
    schema = answer_schema()
    assert schema["properties"]["scores"]["required"] == list(CRITERION_KEYS)
    assert "instruction_following" in CRITERION_KEYS and len(CRITERION_KEYS) == 10
    fmt = response_format()
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == schema
    assert fmt["json_schema"]["strict"] is True


def test_parse_answer_accepts_valid_and_fenced_json():
    ok = answer("A", 0.8)
    assert parse_answer(json.dumps(ok)) == ok
    assert parse_answer("```json\n" + json.dumps(ok) + "\n```") == ok


@pytest.mark.parametrize("text, reason", [
    ('{"scores": {', "not valid JSON"),
    ("", "empty"),
    (None, "empty"),
    (json.dumps(answer("maybe", 0.5)), "verdict"),
    (json.dumps(answer("A", 1.5)), "confidence"),
    (json.dumps(answer("A", 0.5, a=11)), "scores"),
    (json.dumps({**answer("A", 0.5), "extra": 1}), "answer"),
    (json.dumps({"verdict": "A", "confidence": 0.5}), "answer"),
])
def test_parse_answer_rejects_malformed(text, reason):
    with pytest.raises(MalformedAnswer, match=reason):
        parse_answer(text)


def test_missing_criterion_is_malformed():
    bad = answer("A", 0.5)
    del bad["scores"]["depth"]
    with pytest.raises(MalformedAnswer, match="depth"):
        parse_answer(json.dumps(bad))


def test_verdict_distribution_uses_confidence():
    assert verdict_distribution("A", 1.0) == pytest.approx((1.0, 0.0, 0.0))
    assert verdict_distribution("tie", 0.0) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    p = verdict_distribution("B", 0.5)
    assert p[1] == pytest.approx(2 / 3) and p[0] == p[2] and sum(p) == pytest.approx(1.0)


def test_aggregate_mirrors_the_swapped_order():
    # the pair as shown prefers A; the swapped pair (A and B exchanged) prefers its B = the same response
    agg = aggregate(answer("A", 1.0, a=9, b=2), answer("B", 1.0, a=3, b=8))
    assert agg["label"] == pytest.approx([1.0, 0.0, 0.0])
    assert agg["verdicts"] == ["A", "A"] and agg["flip"] is False
    assert agg["criteria"]["depth"] == [8.5, 2.5]
    assert agg["score_a"] == pytest.approx(8.5) and agg["score_b"] == pytest.approx(2.5)


def test_aggregate_flags_position_flips_with_an_uncertain_label():
    # both orders say "A": the teacher follows the position, not the response
    agg = aggregate(answer("A", 0.9), answer("A", 0.9))
    assert agg["flip"] is True and agg["verdicts"] == ["A", "B"]
    assert agg["label"][0] == pytest.approx(agg["label"][1])
    assert sum(agg["label"]) == pytest.approx(1.0) and max(agg["label"]) < 0.5


def test_messages_carry_both_responses_and_the_hash_depends_on_order():
    pair = planted_pairs(3, seed=1)[0]
    user = build_messages(pair)[-1]["content"]
    assert pair.turns[0].response_a in user and pair.turns[0].response_b in user
    assert user.index("<assistant_a>") < user.index("<assistant_b>")
    assert all(k in user for k in CRITERION_KEYS)
    assert pair_hash(pair) != pair_hash(pair.swapped()) and pair_hash(pair) == pair_hash(pair.swapped().swapped())


def test_cache_survives_a_partial_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    with AnswerCache(path) as c:
        c.append({"key": "k1", "status": "ok", "answer": 1})
        c.append({"key": "k2", "status": "malformed", "raw": ["x"]})
        c.append({"key": "k3", "status": "error", "error": "HTTP 500"})
        c.append({"key": "k5", "status": "rejected", "error": "HTTP 400"})
    with path.open("a", encoding="utf-8") as f:  # a kill in the middle of a write
        f.write('{"key": "k4", "status": "o')
    c = AnswerCache(path)
    assert set(c.records) == {"k1", "k2", "k3", "k5"}
    assert c.is_finished("k1") and c.is_finished("k2") and not c.is_finished("k3") and not c.is_finished("k4")
    assert c.is_finished("k5") and c.is_finished("k1", retry_failed=True)
    assert not c.is_finished("k2", retry_failed=True) and not c.is_finished("k5", retry_failed=True)
    c.append({"key": "k3", "status": "ok", "answer": 3})
    c.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert all(json.loads(ln) for ln in lines) and len(lines) == 5  # the broken tail was cut, not glued to
    again = AnswerCache(path)
    assert again.get("k3")["answer"] == 3 and again.is_finished("k3")
    with pytest.raises(UserError, match="in use by another run"):
        AnswerCache(path)
    again.close()
    AnswerCache(path).close()


def test_cache_key_separates_parts():
    assert cache_key("judge", "m", "v1", "h") != cache_key("judge", "m", "v2", "h")
    assert cache_key("a", "bc") != cache_key("ab", "c")


def test_backoff_is_exponential_capped_and_respects_retry_after():
    rng = random.Random(0)
    delays = [backoff_delay(k, 0.5, 4.0, rng=rng) for k in range(8) for _ in range(50)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert max(backoff_delay(0, 0.5, 4.0, rng=rng) for _ in range(50)) <= 0.5
    assert backoff_delay(0, 0.01, 60.0, retry_after=2.0, rng=rng) >= 2.0
    assert backoff_delay(0, 0.01, 1.0, retry_after=30.0, rng=rng) <= 1.0


def test_api_key_from_env_and_scrubbing(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-live-0123456789abcdefXYZ")
    assert resolve_api_key("MY_KEY", "https://api.example.com/v1") == "sk-live-0123456789abcdefXYZ"
    monkeypatch.delenv("MY_KEY")
    assert resolve_api_key("MY_KEY", "http://127.0.0.1:8000/v1") == "EMPTY"
    with pytest.raises(UserError, match="MY_KEY"):
        resolve_api_key("MY_KEY", "https://api.example.com/v1")
    secret = "sk-live-0123456789abcdefXYZ"
    text = f"Incorrect API key provided: {secret}; also sk-live-0123...bcdefXYZ"
    cleaned = scrub(text, secret)
    assert secret not in cleaned and "bcdefXYZ" not in cleaned and "sk-live-0123" not in cleaned
    assert cleaned.startswith("Incorrect API key provided: ***")


def test_read_prompts_text_and_jsonl(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("What is 2+2?\n\nWrite a haiku\n", encoding="utf-8")
    assert read_prompts(txt) == [("p1", "What is 2+2?"), ("p3", "Write a haiku")]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"id": "x", "prompt": "Hi"}\n{"prompt": "Bye"}\n', encoding="utf-8")
    assert read_prompts(jl) == [("x", "Hi"), ("p2", "Bye")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="row 1"):
        read_prompts(bad)
