"""``prefpred bench inference``: side-by-side numbers on a tiny saved model, JSON output, one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.testing import planted_pairs, tiny_causal_lm, tiny_sequence_classifier, tiny_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    tok = tiny_tokenizer()
    tok.padding_side = "right"
    for name, model in (("lm", tiny_causal_lm(tok, hidden=32)), ("clf", tiny_sequence_classifier(tok, hidden=32))):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    data = root / "pairs.jsonl"
    with data.open("w") as f:
        for p in planted_pairs(8, seed=4):
            t = p.turns[0]
            f.write(json.dumps({"id": p.id, "prompt": t.prompt, "response_a": t.response_a,
                                "response_b": t.response_b, "label": p.hard_label}) + "\n")
    return root, data


def test_bench_inference_label_token_writes_json(assets):
    root, data = assets
    out = root / "lm.json"
    res = runner.invoke(app, ["bench", "inference", "--model", str(root / "lm"), "--data", str(data), "--limit", "6",
                              "--style", "criteria-10", "--max-length", "1024", "--token-budget", "4096",
                              "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "bucketed" in res.output and "cached / uncached" in res.output and "judge / roofline" in res.output
    got = json.loads(out.read_text())
    for key in ("bucketed_pairs_per_s", "fixed_pairs_per_s", "prefix_cache_speedup", "max_abs_diff",
                "naive_pairs_per_s", "judge_vs_naive", "judge_vs_roofline"):
        assert got[key] is not None
    assert got["n_pairs"] == 6 and got["max_abs_diff"] < 1e-5
    assert set(got["paths"]) == {"bucketed", "fixed", "bucketed_uncached", "naive", "roofline"}
    assert got["paths"]["bucketed"]["prefix_tokens"] > 0 and got["paths"]["bucketed_uncached"]["prefix_tokens"] == 0
    assert all(s["max_batch_tokens"] <= 4096 for s in got["paths"].values())
    assert got["pairwise_max_abs_diff"]["bucketed~naive"] < 1e-5
    # memory is measured on prefpred's paths only; the reference loops say so instead of showing 0 MB
    assert got["paths"]["bucketed"]["peak_memory_mb"] > 0 and got["paths"]["naive"]["peak_memory_mb"] is None
    naive_row = next(line for line in res.output.splitlines() if line.startswith("naive "))
    assert naive_row.split()[6] == "–"  # the peak MB column


def test_bench_inference_classifier_head_is_inferred(assets):
    root, data = assets
    out = root / "clf.json"
    res = runner.invoke(app, ["bench", "inference", "--model", str(root / "clf"), "--data", str(data),
                              "--max-length", "256", "--json", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["head"] == "classifier" and got["style"] == "classifier" and got["n_pairs"] == 8
    assert got["prefix_cache_speedup"] is None and got["max_abs_diff"] < 1e-5


def test_bench_inference_vllm_missing_is_one_line(assets):
    pytest.importorskip("typer")
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed")
    except ImportError:
        pass
    root, data = assets
    res = runner.invoke(app, ["bench", "inference", "--model", str(root / "lm"), "--data", str(data),
                              "--engine", "vllm"])
    assert res.exit_code == 2
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert "prefpred[vllm]" in err and len(err.strip().splitlines()) == 1


def test_bench_inference_bad_head_and_missing_data(assets):
    root, data = assets
    res = runner.invoke(app, ["bench", "inference", "--model", str(root / "lm"), "--data", str(data),
                              "--head", "regression"])
    assert res.exit_code == 2 and "regression" in res.output
    res = runner.invoke(app, ["bench", "inference", "--model", str(root / "lm"), "--data", str(root / "nope.csv")])
    assert res.exit_code == 2
