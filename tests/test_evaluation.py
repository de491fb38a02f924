"""`prefpred evaluate`: partial prediction files, a run's own oof/holdout, Kaggle submissions, --run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.data import load_pairs, write_arena_csv
from prefpred.evaluation import match_arrays, score
from prefpred.metrics import compute_metrics
from prefpred.submission import write_submission
from prefpred.testing import planted_pairs
from prefpred.types import DataError

runner = CliRunner()


def _ok(result) -> None:
    assert result.exit_code == 0, result.output + str(result.exception)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalrun")
    data = write_arena_csv(planted_pairs(100, seed=31), d / "train.csv")
    (d / "run.yaml").write_text("seed: 2\nmodel:\n  n_estimators: 20\n  n_jobs: 1\n")
    _ok(runner.invoke(app, ["run", "--data", str(data), "--config", str(d / "run.yaml"), "--out", str(d / "runs"),
                            "--name", "r", "--folds", "3", "--holdout", "0.25", "--no-embeddings"]))
    return d, data, d / "runs" / "r"


def test_match_scores_covered_ids_and_counts_coverage():
    pairs = planted_pairs(20, seed=1)
    ids = [p.id for p in pairs[5:15]] + ["not-in-data"]
    proba = np.tile([0.5, 0.3, 0.2], (len(ids), 1))
    m = match_arrays(ids, proba, pairs)
    assert [p.id for p in m.pairs] == [p.id for p in pairs[5:15]]
    assert (m.coverage.n_data, m.coverage.n_scored, m.coverage.n_unused) == (20, 10, 1)
    assert "10 of 20 data pairs scored" in m.coverage.describe()
    with pytest.raises(DataError, match="none of the 2 prediction"):
        match_arrays(["x", "y"], proba[:2], pairs)
    out = score(m.pairs, m.proba)
    assert out["n"] == 10 and {"segments", "confident_errors", "confusion"} <= set(out)


@pytest.mark.slow
@pytest.mark.parametrize("part", ["holdout", "oof"])
def test_evaluate_on_runs_own_file_gives_the_runs_metrics(run, part, tmp_path):
    _, _, run_dir = run
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["evaluate", "--pred", str(run_dir / f"{part}.csv"), "--out", str(out)])
    _ok(result)
    got = json.loads(out.read_text())
    m = json.loads((run_dir / "metrics.json").read_text())
    want = m["holdout"]["calibrated"] if part == "holdout" else m["cv"]["oof"]
    for key in ("n", "log_loss", "accuracy", "brier"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert got["coverage"]["n_data"] == 100 and got["coverage"]["n_scored"] == want["n"]
    assert "data pairs scored" in result.output and "per segment" in result.output


@pytest.mark.slow
def test_evaluate_reads_kaggle_submissions_and_predicts_with_run(run, tmp_path):
    d, data, run_dir = run
    pairs = load_pairs(data)
    sub = tmp_path / "sub.csv"
    _ok(runner.invoke(app, ["predict", "--run", str(run_dir), "--data", str(data), "--out", str(sub)]))
    out1, out2 = tmp_path / "a.json", tmp_path / "b.json"
    _ok(runner.invoke(app, ["evaluate", "--pred", str(sub), "--data", str(data), "--out", str(out1)]))
    _ok(runner.invoke(app, ["evaluate", "--run", str(run_dir), "--data", str(data), "--out", str(out2)]))
    a, b = json.loads(out1.read_text()), json.loads(out2.read_text())
    assert a["n"] == b["n"] == len(pairs)
    assert a["log_loss"] == pytest.approx(b["log_loss"], abs=1e-5)  # submission rounds to 6 decimals
    assert b["swap_consistency"]["consistency"] == pytest.approx(1.0)  # the CPU model swap-averages
    sub_df = pd.read_csv(sub)
    y = [p.hard_label for p in pairs]
    assert a["log_loss"] == pytest.approx(compute_metrics(y, sub_df.iloc[:, 1:].to_numpy())["log_loss"])
    report = (run_dir / "report.md").read_text()
    assert "## Error analysis" in report and (run_dir / "errors_by_segment.png").is_file()


def test_evaluate_refuses_foreign_predictions_in_one_line(tmp_path):
    data = write_arena_csv(planted_pairs(10, seed=4), tmp_path / "d.csv")
    sub = write_submission(["a1", "a2"], np.full((2, 3), 1 / 3), tmp_path / "s.csv")
    result = runner.invoke(app, ["evaluate", "--pred", str(sub), "--data", str(data)])
    assert result.exit_code == 2 and "none of the 2 prediction" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["evaluate", "--pred", str(sub)])
    assert result.exit_code == 2 and "--data is needed" in result.output
