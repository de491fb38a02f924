"""``prefpred synth pairs``: candidate answers from a local OpenAI-compatible server, paired and teacher-labelled."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from openai_server import FakeOpenAIServer
from prefpred.cli import app
from prefpred.data import load_pairs
from prefpred.synth.client import ClientConfig
from prefpred.synth.pairs import GenerationConfig, synth_pairs
from prefpred.types import ConfigError


def run_cli(args: list[str]) -> dict:
    res = CliRunner().invoke(app, ["synth", "pairs", *args, "--no-progress", "--json", "--backoff-base", "0.01"],
                             env={"OPENAI_API_KEY": "EMPTY"})
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_pairs_generates_pairs_and_labels(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Explain topic number {i}."}) + "\n"
                               for i in range(8)), encoding="utf-8")
    out = tmp_path / "pairs.jsonl"
    with FakeOpenAIServer() as srv:
        srv.control(fail_next=1, fail_status=500)
        args = ["--prompts", str(prompts), "--base-url", srv.url, "--models", "cand-0,cand-3", "--teacher", "judge",
                "--out", str(out)]
        first = run_cli([*args, "--max-retries", "0"])
        assert first["answers_missing"] == 1 and first["answers"] == 15
        assert first["labelling"]["pairs"] == 7
        second = run_cli([*args, "--force"])  # the failed answer is asked again, nothing else
        sent = sum(srv.counts.values())
        third = run_cli([*args, "--force"])
        assert sum(srv.counts.values()) == sent
    assert second["generation_requests"]["done"] == 1 and second["generation_requests"]["from_cache"] == 15
    assert third["labelling"]["requests"]["sent"] == 0 and third["generation_requests"]["sent"] == 0
    pairs = load_pairs(out)
    assert len(pairs) == 8 and {p.meta["prompt_id"] for p in pairs} == {f"q{i}" for i in range(8)}
    assert all({p.model_a, p.model_b} == {"cand-0", "cand-3"} for p in pairs)
    assert 0 < sum(p.model_a == "cand-3" for p in pairs) < 8  # A/B placement is mixed
    # the teacher prefers the better candidate wherever it is placed
    assert all(p.hard_label == ("a" if p.model_a == "cand-3" else "b") for p in pairs)
    assert all(p.source == "teacher:judge" and p.turns[0].prompt.startswith("Explain") for p in pairs)


def test_pairs_per_prompt_and_text_prompts(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is rain?\nWhy is the sky blue?\nHow do magnets work?\n", encoding="utf-8")
    with FakeOpenAIServer() as srv:
        cfg = ClientConfig(base_url=srv.url, concurrency=4)
        from prefpred.synth.pairs import read_prompts

        rep = synth_pairs(read_prompts(prompts), ["m-1", "m-2", "m-3"], cfg, teacher="judge", out=tmp_path / "o.jsonl",
                          gen=GenerationConfig(pairs_per_prompt=2, seed=3), api_key="EMPTY", progress=False)
        assert rep.generated == 9 and rep.label.pairs == 6
        with pytest.raises(ConfigError, match="two"):
            synth_pairs([("p", "x")], ["m-1"], cfg, teacher="judge", out=tmp_path / "x.jsonl", api_key="EMPTY")
    pairs = load_pairs(tmp_path / "o.jsonl")
    assert Counter(p.meta["prompt_id"] for p in pairs) == {"p1": 2, "p2": 2, "p3": 2}
    assert len({p.id for p in pairs}) == 6
