"""``prefpred judge`` on a tiny local model directory and a small Arena-format CSV written here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.data import write_arena_csv
from prefpred.testing import planted_pairs, tiny_causal_lm, tiny_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-judge")
    tok = tiny_tokenizer()
    tiny_causal_lm(tok, hidden=32).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def arena_csv(tmp_path):
    """Kaggle-style train.csv rows (JSON-list text cells, one-hot winner columns) from planted pairs."""
    return write_arena_csv(planted_pairs(6, seed=9, multi_turn_rate=0.3), tmp_path / "train.csv")


def test_judge_help():
    result = runner.invoke(app, ["judge", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--data", "--style", "--parse-generation", "--no-swap", "--batch-tokens"):
        assert option in result.output


def test_judge_writes_predictions_and_prints_metrics(tiny_dir, arena_csv, tmp_path):
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["judge", "--model", str(tiny_dir), "--data", str(arena_csv), "--out", str(out),
                                 "--limit", "5", "--max-length", "1024", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "log loss" in result.output and "accuracy" in result.output
    df = pd.read_csv(out, dtype={"id": str})
    assert list(df.columns[:4]) == ["id", "p_a", "p_b", "p_tie"]
    assert len(df) == 5 and df["id"].tolist() == [str(100000 + i) for i in range(5)]
    np.testing.assert_allclose(df[["p_a", "p_b", "p_tie"]].sum(axis=1), 1.0, atol=1e-6)
    again = runner.invoke(app, ["judge", "--model", str(tiny_dir), "--data", str(arena_csv), "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output


def test_judge_parse_generation_reports_unparseable_rate(tiny_dir, arena_csv):
    result = runner.invoke(app, ["judge", "--model", str(tiny_dir), "--data", str(arena_csv), "--limit", "3",
                                 "--max-length", "1024", "--parse-generation", "--no-swap",
                                 "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("unparseable rate"))
    assert 0.0 <= float(line.split()[2]) <= 1.0 and "of 3 answers" in line


@pytest.mark.parametrize("args,message", [
    (["--style", "nope"], "unknown prompt style 'nope'"),
    (["--model", "prefpred-test/not-a-real-model"], "offline"),
])
def test_judge_user_errors_are_one_line(tiny_dir, arena_csv, args, message):
    base = {"--model": str(tiny_dir), "--data": str(arena_csv)}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    result = runner.invoke(app, ["judge", *[x for kv in base.items() for x in kv]])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]
