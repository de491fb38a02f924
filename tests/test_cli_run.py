from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.data import write_arena_csv
from prefpred.testing import planted_pairs

runner = CliRunner()


def _ok(result) -> None:
    assert result.exit_code == 0, result.output + str(result.exception)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    train = write_arena_csv(planted_pairs(120, seed=21), d / "train.csv")
    test_pairs = [p for p in planted_pairs(25, seed=99)]
    test = write_arena_csv([p.__class__(id=f"t{p.id}", turns=p.turns) for p in test_pairs], d / "test.csv",
                            labels=False)
    return d, train, test


@pytest.fixture(scope="module")
def run_dir(files):
    d, train, _ = files
    yml = d / "run.yaml"
    yml.write_text("seed: 1\nsplit:\n  n_folds: 4\nmodel:\n  n_estimators: 60\n  n_jobs: 1\n")
    result = runner.invoke(app, ["run", "--data", str(train), "--config", str(yml), "--out", str(d / "runs"),
                                 "--name", "r1", "--folds", "3", "--holdout", "0.2", "--seed", "5",
                                 "--no-embeddings", "--set", "model.num_leaves=5"])
    _ok(result)
    assert "log loss" in result.output and "run directory" in result.output
    return d / "runs" / "r1"


def test_version():
    from importlib.metadata import version

    import prefpred

    result = runner.invoke(app, ["--version"])
    _ok(result)
    assert result.output.strip() == f"prefpred {prefpred.__version__}" == f"prefpred {version('prefpred')}"


@pytest.mark.parametrize("cmd", [["run"], ["split"], ["predict"], ["evaluate"]])
def test_help(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    _ok(result)
    assert "Usage" in result.output


def test_run_artifacts_and_config_override(run_dir):
    for name in ("config.yaml", "splits.csv", "metrics.json", "oof.csv", "holdout.csv", "model",
                 "model_comparison.png", "reliability.png", "confusion.png", "report.md"):
        assert (run_dir / name).exists(), name
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["seed"] == 5 and m["cv"]["n_folds"] == 3 and m["counts"]["pairs"] == 120
    h = m["headline"]
    assert 0 < h["oof_log_loss"] < 2 and 0 <= h["oof_accuracy"] <= 1 and h["oof_log_loss_std"] >= 0
    assert 0 < h["holdout_log_loss"] < 2 and 0 < h["holdout_log_loss_calibrated"] < 2
    cfg = (run_dir / "config.yaml").read_text()
    # flags win over the YAML file (folds, seed); YAML values without a flag are kept (n_estimators); --set
    # reaches any key
    assert "n_folds: 3" in cfg and "embeddings: false" in cfg and "n_estimators: 60" in cfg
    assert "num_leaves: 5" in cfg
    report = (run_dir / "report.md").read_text()
    assert "**Log loss by segment" in report and "![errors_by_segment.png]" in report  # every plot has a caption


def test_yaml_config_and_flags(files, tmp_path):
    _, train, _ = files
    yml = tmp_path / "c.yaml"
    yml.write_text("split:\n  n_folds: 4\nbogus_key: 1\n")
    result = runner.invoke(app, ["run", "--data", str(train), "--config", str(yml), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "bogus_key" in result.output
    result = runner.invoke(app, ["run", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "missing.csv" in result.output


def test_predict_writes_submission_for_unlabelled_test(files, run_dir):
    d, _, test = files
    out = d / "submission.csv"
    _ok(runner.invoke(app, ["predict", "--run", str(run_dir), "--data", str(test), "--out", str(out)]))
    with out.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    assert [r[0] for r in rows[1:]] == [f"t{p.id}" for p in planted_pairs(25, seed=99)]
    before = out.read_text()
    result = runner.invoke(app, ["predict", "--run", str(run_dir), "--data", str(test), "--out", str(out)])
    assert result.exit_code == 2 and "exists" in result.output
    assert out.read_text() == before
    _ok(runner.invoke(app, ["predict", "--run", str(run_dir), "--data", str(test), "--out", str(out), "--force"]))
    result = runner.invoke(app, ["predict", "--run", str(d), "--data", str(test), "--out", str(d / "x.csv")])
    assert result.exit_code == 2 and "not a prefpred run" in result.output


def test_predict_raw_skips_calibration(files, run_dir):
    import numpy as np

    from prefpred.calibration import Calibrator
    from prefpred.data import load_pairs
    from prefpred.models.base import load_model
    from prefpred.submission import read_predictions

    d, _, test = files
    pairs = load_pairs(test)
    model_out = load_model(run_dir / "model").predict_proba(pairs)
    for flag, expected in (([], Calibrator.load(run_dir / "calibration.json").transform(model_out)),
                           (["--raw"], model_out)):
        out = d / f"sub{'-raw' if flag else ''}.csv"
        _ok(runner.invoke(app, ["predict", "--run", str(run_dir), "--data", str(test), "--out", str(out), *flag]))
        ids, proba = read_predictions(out)
        assert ids == [p.id for p in pairs]
        np.testing.assert_allclose(proba, expected, atol=1e-6)
    assert np.abs(read_predictions(d / "sub.csv")[1] - read_predictions(d / "sub-raw.csv")[1]).max() > 1e-4


def test_evaluate_holdout_predictions(files, run_dir):
    d, train, _ = files
    out, plots = d / "eval.json", d / "plots"
    result = runner.invoke(app, ["evaluate", "--pred", str(run_dir / "holdout.csv"), "--data", str(train),
                                 "--out", str(out), "--plots", str(plots)])
    # holdout.csv only covers the holdout rows: they are scored, and the output says how many of the data's
    _ok(result)
    n_hold = json.loads((run_dir / "metrics.json").read_text())["counts"]["holdout"]
    assert json.loads(out.read_text())["n"] == n_hold and f"{n_hold} of 120 data pairs scored" in result.output
    errors = json.loads(out.read_text())["confident_errors"]  # the worst of them printed too, most confident first
    assert errors and "most confidently wrong" in result.output
    table = result.output.split("most confidently wrong")[1]
    printed = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]
    assert printed == [e["id"] for e in errors[:5]]
    oof_sub = d / "oof_sub.csv"
    _ok(runner.invoke(app, ["predict", "--run", str(run_dir), "--data", str(train), "--out", str(oof_sub)]))
    result = runner.invoke(app, ["evaluate", "--pred", str(oof_sub), "--data", str(train), "--out", str(out),
                                 "--plots", str(plots), "--force"])
    _ok(result)
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 120 and 0 < metrics["log_loss"] < 2
    assert (plots / "reliability.png").stat().st_size > 1000 and (plots / "confusion.png").exists()


def test_evaluate_plots_are_not_overwritten_without_force(files, run_dir):
    """``--plots`` pointed at a folder that has them (e.g. the run directory itself) refuses, before scoring."""
    d, train, _ = files
    plots = d / "plots-kept"
    args = ["evaluate", "--pred", str(run_dir / "holdout.csv"), "--data", str(train), "--plots", str(plots)]
    result = runner.invoke(app, args)
    _ok(result)
    assert str(run_dir / "holdout.csv") in result.stdout.splitlines()  # what was scored, on a line of its own
    before = (plots / "reliability.png").read_bytes()
    (plots / "reliability.png").write_bytes(b"mine")
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "reliability.png exists" in result.stderr and "--force" in result.stderr
    assert (plots / "reliability.png").read_bytes() == b"mine"
    _ok(runner.invoke(app, [*args, "--force"]))
    assert (plots / "reliability.png").read_bytes()[:4] == before[:4]  # a PNG again


def test_split_command(files):
    d, train, _ = files
    out = d / "splits.csv"
    _ok(runner.invoke(app, ["split", "--data", str(train), "--out", str(out), "--folds", "4", "--holdout", "0.1"]))
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 120 and {r["fold"] for r in rows} == {"-1", "0", "1", "2", "3"}
    result = runner.invoke(app, ["split", "--data", str(train), "--out", str(out)])
    assert result.exit_code == 2 and "exists" in result.output


def test_evaluate_says_when_pairs_are_the_runs_own_training_data(files, run_dir):
    """`evaluate --run R --data <its training file>` reported 0.95 log loss for a 1.02 model without a word."""
    d, train, _ = files
    splits = list(csv.DictReader((run_dir / "splits.csv").open()))
    trained = sum(1 for r in splits if r["fold"] != "-1")
    out = d / "own.json"
    result = runner.invoke(app, ["evaluate", "--run", str(run_dir), "--data", str(train), "--out", str(out),
                                 "--force"])
    _ok(result)
    assert json.loads(out.read_text())["in_sample_pairs"] == trained < 120  # the holdout rows are not counted
    assert f"{trained} of the 120 scored pairs are in" in " ".join(result.output.split())
    suite = runner.invoke(app, ["evaluate", "--run", str(run_dir), "--suite", str(train), "--no-swap"])
    _ok(suite)
    assert f"{train.stem} {trained} of 120" in " ".join(suite.output.split())  # the suite row is flagged too
    other = d / "other.csv"
    write_arena_csv([p.__class__(id=f"o{p.id}", turns=p.turns, label=p.label) for p in planted_pairs(30, seed=77)],
                    other)
    clean = runner.invoke(app, ["evaluate", "--run", str(run_dir), "--data", str(other)])
    _ok(clean)
    assert "own data" not in clean.output
