"""The remote judge (``prefpred judge --base-url``) against the loopback OpenAI-compatible test server."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from openai_server import DIGITS, FakeOpenAIServer, digit_logprobs
from prefpred.cli import app
from prefpred.data import write_pairs_jsonl
from prefpred.models import load_model
from prefpred.models.remote_judge import RemoteJudge
from prefpred.prompts import get_style
from prefpred.testing import planted_pairs
from prefpred.types import ConfigError, swap_proba

KEY = "sk-remote-judge-0123456789abcdef"


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def expected_row(pair, k: int = 20) -> np.ndarray:
    """Softmax over the label words among the server's top ``k`` tokens, a missing one at the smallest shown."""
    lps = digit_logprobs(get_style("seed-digits").fill(pair))
    top = dict(sorted(lps.items(), key=lambda kv: -kv[1])[:k])
    floor = min(top.values())
    row = np.array([math.exp(top.get(d, floor)) for d in DIGITS])
    return row / row.sum()


def test_probabilities_are_the_label_tokens_swap_averaged(server):
    pairs = planted_pairs(6, seed=70)
    judge = RemoteJudge(base_url=server.url, model="m", concurrency=3)
    proba = judge.predict_proba(pairs)
    direct = np.array([expected_row(p) for p in pairs])
    swapped = np.array([expected_row(p.swapped()) for p in pairs])
    assert np.allclose(proba, (direct + swap_proba(swapped)) / 2, atol=1e-12)
    assert judge.failed_ == 0 and judge.no_label_ == 0
    # judging the swapped pairs mirrors the probabilities; one order alone keeps the server's position bias
    assert np.allclose(swap_proba(judge.predict_proba([p.swapped() for p in pairs])), proba, atol=1e-12)
    one = RemoteJudge(base_url=server.url, model="m", swap_average=False).predict_proba(pairs)
    assert np.allclose(one, direct, atol=1e-12) and one[:, 0].mean() > proba[:, 0].mean()
    bodies = [f for f in server.formats_seen]
    assert bodies and all(f is None for f in bodies)  # no response_format with logprobs requests


def test_a_label_missing_from_top_logprobs_gets_the_smallest_returned(server):
    server.control(top_k_cap=2)
    pairs = planted_pairs(4, seed=71)
    judge = RemoteJudge(base_url=server.url, model="m", swap_average=False)
    proba = judge.predict_proba(pairs)
    assert np.allclose(proba, [expected_row(p, k=2) for p in pairs], atol=1e-12)
    server.control(top_k_cap=0)  # no label word at all: uniform, counted
    judge.predict_proba(pairs[:1])
    assert judge.no_label_ == 1


def test_failed_requests_count_as_uniform_and_a_server_without_logprobs_is_one_line(server, tmp_path):
    pairs = planted_pairs(3, seed=72)
    server.control(fail_next=3, fail_status=400)  # both orders of the pair refused, then one of the next call's
    judge = RemoteJudge(base_url=server.url, model="m", concurrency=1)
    assert np.allclose(judge.predict_proba(pairs[:1]), 1 / 3) and judge.failed_ == 2
    proba = judge.predict_proba(pairs)
    assert judge.failed_ == 1 and not np.allclose(proba, 1 / 3)
    assert np.allclose(proba[0], (1 / 3 + swap_proba(expected_row(pairs[0].swapped())[None])[0]) / 2)
    server.control(logprobs=False)
    with pytest.raises(ConfigError, match="no top_logprobs"):
        judge.predict_proba(pairs[:1])
    # parse-generation works without log-probabilities: one-hot on the answered digit
    gen = RemoteJudge(base_url=server.url, model="m", parse_generation=True, max_new_tokens=2, swap_average=False)
    rows = gen.predict_proba(pairs)
    assert gen.unparseable_rate_ == 0.0
    assert [int(np.argmax(r)) for r in rows] == [int(np.argmax(expected_row(p))) for p in pairs]
    assert set(np.unique(rows)) <= {0.0, 1.0}


def test_cli_judge_base_url_writes_predictions_and_never_the_key(tmp_path):
    data = tmp_path / "pairs.jsonl"
    write_pairs_jsonl(planted_pairs(5, seed=73), data)
    out = tmp_path / "pred.csv"
    runner = CliRunner()
    with FakeOpenAIServer(require_key=KEY) as srv:
        args = ["judge", "--model", "remote-m", "--base-url", srv.url, "--api-key-env", "JUDGE_KEY", "--data",
                str(data), "--out", str(out)]
        res = runner.invoke(app, args, env={"JUDGE_KEY": KEY})
        assert res.exit_code == 0, res.output
        assert "judged 5 pairs with remote-m" in res.output and "log loss" in res.output
        assert srv.keys_seen == {KEY}
        bad = runner.invoke(app, [*args, "--force"], env={"JUDGE_KEY": "wrong"})
        assert bad.exit_code == 2 and "HTTP 401" in bad.output and "Traceback" not in bad.output
        srv.control(logprobs=False)
        res = runner.invoke(app, [*args, "--force"], env={"JUDGE_KEY": KEY})
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
        assert "--parse-generation" in res.output
    import pandas as pd

    pred = pd.read_csv(out)
    assert len(pred) == 5 and np.allclose(pred[["p_a", "p_b", "p_tie"]].sum(axis=1), 1)
    assert KEY not in res.output


def test_save_writes_the_server_and_model_but_never_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", KEY)
    judge = RemoteJudge(base_url="http://127.0.0.1:9/v1", model="m", style="criteria-10", api_key_env="MY_KEY",
                        top_logprobs=5)
    judge.fit([]).save(tmp_path / "model")
    text = (tmp_path / "model" / "prefpred_model.json").read_text()
    assert KEY not in text
    meta = json.loads(text)
    assert meta["kind"] == "remote-judge" and meta["params"]["base_url"] == "http://127.0.0.1:9/v1"
    again = load_model(tmp_path / "model")
    assert isinstance(again, RemoteJudge) and again.get_params() == judge.get_params()
    with pytest.raises(ConfigError, match="top_logprobs"):
        RemoteJudge(base_url="http://127.0.0.1:9/v1", model="m", top_logprobs=50).fit([])
