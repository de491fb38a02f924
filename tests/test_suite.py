"""Evaluation suites: file format, ${shared} paths, skipped sets, one row per set, the CLI table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.data import write_arena_csv, write_pairs_jsonl
from prefpred.suite import DEFAULT_SUITE, bootstrap_ci, load_suite, nontie_correct, run_suite, score_set
from prefpred.testing import planted_pairs
from prefpred.types import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


class LengthJudge:
    """Prefers the longer response (a stand-in model at the predictor boundary)."""

    def predict_proba(self, pairs):
        d = np.array([len(p.text_a()) - len(p.text_b()) for p in pairs], dtype=float)
        pa = 1 / (1 + np.exp(-d / 50))
        return np.column_stack([0.8 * pa, 0.8 * (1 - pa), np.full(len(pairs), 0.2)])


def test_default_suite_matches_the_shipped_yaml():
    doc = yaml.safe_load((ROOT / "configs" / "suites" / "default.yaml").read_text())
    assert [(d["name"], d["path"], d["format"]) for d in doc["datasets"]] == list(DEFAULT_SUITE)


def test_suite_file_paths_relative_and_shared(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    write_pairs_jsonl(planted_pairs(30, seed=1), shared / "sub" / "x.jsonl")
    write_pairs_jsonl(planted_pairs(20, seed=2), tmp_path / "suites" / "local.jsonl")
    monkeypatch.setenv("PREFPRED_SHARED_DATA", str(shared))
    (tmp_path / "suites" / "s.yaml").write_text(yaml.safe_dump({"datasets": [
        {"name": "x", "path": "${shared}/sub/x.jsonl", "format": "prefpred-jsonl"},
        {"name": "local", "path": "local.jsonl"},
        {"name": "gone", "path": "missing.jsonl"}]}))
    entries = load_suite(tmp_path / "suites" / "s.yaml")
    assert [e.name for e in entries] == ["x", "local", "gone"]
    assert entries[0].path == shared / "sub" / "x.jsonl" and entries[1].path == tmp_path / "suites" / "local.jsonl"
    assert entries[2].path is None and "not found" in entries[2].note
    rows, notes = run_suite(LengthJudge(), entries, swap=True, n_boot=200)
    assert [r["dataset"] for r in rows] == ["x", "local"] and len(notes) == 1 and "gone" in notes[0]
    assert rows[0]["n"] == 30 and rows[1]["n"] == 20
    (tmp_path / "bad.yaml").write_text("datasets:\n  - {name: a}\n")
    with pytest.raises(ConfigError, match="needs at least a 'path'"):
        load_suite(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match="suite file not found"):
        load_suite(tmp_path / "nope.yaml")
    # a format typo is an error, not a set quietly skipped with exit 0
    (tmp_path / "typo.yaml").write_text("datasets:\n  - {name: a, path: local.jsonl, format: llmbarr}\n")
    with pytest.raises(ConfigError, match=r"dataset 1 has unknown format 'llmbarr' \(auto, .*llmbar"):
        load_suite(tmp_path / "typo.yaml")


def test_nontie_accuracy_and_ci():
    y = np.eye(3)[[0, 1, 2, 0]]
    p = np.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.4, 0.4, 0.2]])
    np.testing.assert_array_equal(nontie_correct(y, p), [1.0, 0.0, 0.5])
    lo, hi = bootstrap_ci(np.r_[np.ones(80), np.zeros(20)], n_boot=500)
    assert lo < 0.8 < hi and hi - lo < 0.25
    pairs = planted_pairs(40, seed=3)
    no_ties = [p for p in pairs if p.hard_label != "tie"]
    row = score_set("t", no_ties, LengthJudge().predict_proba(no_ties))
    assert row["log_loss"] is None and row["n_nontie"] == len(no_ties)  # no ties: no log loss


@pytest.mark.slow
def test_cli_suite_one_row_per_dataset(tmp_path):
    data = write_arena_csv(planted_pairs(90, seed=8), tmp_path / "train.csv")
    (tmp_path / "run.yaml").write_text("model:\n  n_estimators: 10\n  n_jobs: 1\n")
    r = runner.invoke(app, ["run", "--data", str(data), "--config", str(tmp_path / "run.yaml"), "--out",
                            str(tmp_path / "runs"), "--name", "r", "--folds", "2", "--no-embeddings"])
    assert r.exit_code == 0, r.output
    a = write_pairs_jsonl(planted_pairs(25, seed=9), tmp_path / "a.jsonl")
    b = write_pairs_jsonl(planted_pairs(15, seed=10), tmp_path / "b.jsonl")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"datasets": [{"name": "A", "path": str(a)},
                                                                  {"name": "none", "path": "nope.json"}]}))
    out = tmp_path / "suite.json"
    r = runner.invoke(app, ["evaluate", "--run", str(tmp_path / "runs" / "r"), "--suite", str(tmp_path / "s.yaml"),
                            "--suite", str(b), "--out", str(out), "--plots", str(tmp_path / "plots")])
    assert r.exit_code == 0, r.output + str(r.exception)
    rows = json.loads(out.read_text())["suite"]
    assert [x["dataset"] for x in rows] == ["run-holdout", "A", "b"]
    assert [x["n"] for x in rows][1:] == [25, 15]
    assert (tmp_path / "plots" / "suite.png").is_file() and "none: skipped" in r.output
    r = runner.invoke(app, ["evaluate", "--suite", "default"])
    assert r.exit_code == 2 and "--suite needs --run" in r.output
