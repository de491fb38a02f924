from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from prefpred.config import DataConfig, load_config, to_dict
from prefpred.data import load_pairs, write_pairs_jsonl
from prefpred.pipeline import RunConfig, evaluate_predictions, predict_run, run_job
from prefpred.splits import HOLDOUT_FOLD, SplitConfig
from prefpred.submission import read_predictions
from prefpred.testing import planted_pairs
from prefpred.types import DataError, Pair, Turn

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ("config.yaml", "splits.csv", "metrics.json", "oof.csv", "holdout.csv", "calibration.json",
             "model", "model_comparison.png", "reliability.png", "confusion.png", "report.md")


def _cfg(tmp_path: Path, data: Path, **kw) -> RunConfig:
    model = RunConfig().model
    # one LightGBM thread: small data, and far faster than 2 threads on a busy 2-core machine
    model = dataclasses.replace(model, n_estimators=60, embeddings=False, n_jobs=1)
    base = dict(name="t", out_dir=str(tmp_path / "runs"), seed=3, data=DataConfig(path=str(data)),
                split=SplitConfig(n_folds=3, holdout_fraction=0.25), model=model)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def planted_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    write_pairs_jsonl(planted_pairs(160, seed=11), path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, planted_file) -> Path:
    return run_job(_cfg(tmp_path_factory.mktemp("run"), planted_file))


def test_run_writes_every_artifact(run_dir):
    for name in ARTIFACTS:
        assert (run_dir / name).exists(), name
    assert not list(run_dir.parent.glob(".*tmp"))  # temporary work folder renamed away
    m = json.loads((run_dir / "metrics.json").read_text())
    assert {"headline", "cv", "holdout", "prior", "calibration", "refit", "swap_consistency", "segments",
            "top_features", "data", "timing", "counts"} <= set(m)
    assert m["counts"]["pairs"] == 160 and m["counts"]["extra"] == 0
    assert m["counts"]["cv"] + m["counts"]["holdout"] == 160 and m["counts"]["holdout"] > 0
    assert len(m["cv"]["per_fold"]) == 3
    assert m["cv"]["summary"]["log_loss"]["std"] >= 0
    for part in (m["cv"]["oof"], m["holdout"]["raw"], m["holdout"]["calibrated"]):
        assert 0 < part["log_loss"] < 3 and 0 <= part["accuracy"] <= 1
    # the planted signal is learnable: the model beats the class prior out of fold
    assert m["cv"]["oof"]["log_loss"] < m["prior"]["oof"]["log_loss"]
    assert m["cv"]["oof"]["accuracy"] > m["prior"]["oof"]["accuracy"]
    assert 1 <= m["refit"]["n_estimators"] <= 60
    assert m["top_features"] and m["top_features"][0]["importance"] >= m["top_features"][-1]["importance"]
    report = (run_dir / "report.md").read_text()
    assert "## Results" in report and "![reliability.png](reliability.png)" in report


def test_run_predictions_and_splits_are_consistent(run_dir, planted_file):
    splits = pd.read_csv(run_dir / "splits.csv", dtype={"id": str})
    oof_ids, oof = read_predictions(run_dir / "oof.csv")
    hold_ids, hold = read_predictions(run_dir / "holdout.csv")
    assert set(oof_ids) == set(splits.loc[splits.fold != HOLDOUT_FOLD, "id"])
    assert set(hold_ids) == set(splits.loc[splits.fold == HOLDOUT_FOLD, "id"])
    assert not set(oof_ids) & set(hold_ids)
    # no prompt group on both sides of the holdout cut
    groups = splits.groupby("group")["fold"].apply(lambda f: (f == HOLDOUT_FOLD).nunique())
    assert (groups == 1).all()
    np.testing.assert_allclose(oof.sum(axis=1), 1.0, atol=1e-6)
    # predict_run reproduces holdout.csv (calibrated) and evaluate_predictions its metrics
    pairs = {p.id: p for p in load_pairs(planted_file)}
    hold_pairs = [pairs[i] for i in hold_ids]
    np.testing.assert_allclose(predict_run(run_dir, hold_pairs), hold, atol=1e-8)
    m = json.loads((run_dir / "metrics.json").read_text())
    ev = evaluate_predictions(run_dir / "holdout.csv", hold_pairs)
    assert ev["log_loss"] == pytest.approx(m["holdout"]["calibrated"]["log_loss"], rel=1e-6)
    assert sum(map(sum, ev["confusion"])) == len(hold_pairs)
    # raw = the saved model's own output; holdout.csv = the saved calibrator applied to it, and it differs
    from prefpred.calibration import Calibrator
    from prefpred.metrics import log_loss
    from prefpred.models.base import load_model
    from prefpred.types import label_matrix

    raw = predict_run(run_dir, hold_pairs, calibrated=False)
    np.testing.assert_allclose(raw, load_model(run_dir / "model").predict_proba(hold_pairs), atol=1e-12)
    np.testing.assert_allclose(Calibrator.load(run_dir / "calibration.json").transform(raw), hold, atol=1e-8)
    assert np.abs(raw - hold).max() > 1e-4
    assert log_loss(label_matrix(hold_pairs), raw) == pytest.approx(m["holdout"]["raw"]["log_loss"], rel=1e-9)


def test_same_seed_same_run(tmp_path, planted_file, run_dir):
    again = run_job(_cfg(tmp_path, planted_file, name="again"))
    assert (again / "splits.csv").read_text() == (run_dir / "splits.csv").read_text()
    pd.testing.assert_frame_equal(pd.read_csv(again / "oof.csv"), pd.read_csv(run_dir / "oof.csv"))


def test_extra_pairs_only_train_and_never_leak(tmp_path, planted_file):
    pairs = load_pairs(planted_file)
    # teacher-labelled copies of every prompt (so half of them collide with validation/holdout prompts)
    extra = [dataclasses.replace(p, id=f"x{p.id}", label=(0.5, 0.3, 0.2), source="teacher") for p in pairs[:60]]
    extra_path = tmp_path / "extra.jsonl"
    write_pairs_jsonl(extra, extra_path)
    cfg = _cfg(tmp_path, planted_file, split=SplitConfig(n_folds=3, holdout_fraction=0.25))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, extra_path=str(extra_path), extra_weight=0.5))
    run_dir = run_job(cfg)
    m = json.loads((run_dir / "metrics.json").read_text())
    splits = pd.read_csv(run_dir / "splits.csv", dtype={"id": str})
    assert not splits["id"].str.startswith("x").any()
    assert not any(i.startswith("x") for i in read_predictions(run_dir / "oof.csv")[0])
    fold_of = dict(zip(splits["id"], splits["fold"], strict=True))
    in_holdout = sum(fold_of[p.id] == HOLDOUT_FOLD for p in pairs[:60])
    assert m["counts"]["extra"] == 60
    assert m["counts"]["extra_used_refit"] == 60 - in_holdout
    for f in m["cv"]["per_fold"]:
        blocked = sum(fold_of[p.id] in (HOLDOUT_FOLD, f["fold"]) for p in pairs[:60])
        assert f["n_extra"] == 60 - blocked
        assert f["n_train"] == f["n_extra"] + sum(v not in (HOLDOUT_FOLD, f["fold"]) for v in fold_of.values())


def test_run_refuses_existing_dir_and_bad_data(tmp_path, planted_file):
    existing = tmp_path / "runs" / "t"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        run_job(_cfg(tmp_path, planted_file))
    assert (existing / "keep.txt").read_text() == "x"
    unlabelled = tmp_path / "u.jsonl"
    write_pairs_jsonl([Pair(str(i), (Turn("q", "a", "b"),)) for i in range(30)], unlabelled)
    with pytest.raises(DataError, match="no label"):
        run_job(_cfg(tmp_path, unlabelled, name="u"))
    assert not (tmp_path / "runs" / "u").exists()
    assert not list((tmp_path / "runs").glob(".*tmp"))


def test_default_yaml_matches_run_config():
    cfg = load_config(RunConfig, ROOT / "configs" / "default.yaml")
    assert to_dict(cfg) == to_dict(RunConfig())
    documented = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert set(documented) == {f.name for f in dataclasses.fields(RunConfig)}


def test_run_without_holdout_or_calibration(tmp_path, planted_file):
    cfg = _cfg(tmp_path, planted_file, split=SplitConfig(n_folds=2, holdout_fraction=0.0), calibrate=False)
    run_dir = run_job(cfg)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["holdout"] is None and m["calibration"] is None and m["headline"]["holdout_log_loss"] is None
    assert m["counts"]["cv"] == 160 and len(read_predictions(run_dir / "oof.csv")[0]) == 160
    assert not (run_dir / "holdout.csv").exists() and not (run_dir / "calibration.json").exists()
    assert m["swap_consistency"]["on"].startswith("training")
    for name in ("reliability.png", "confusion.png", "model_comparison.png", "report.md"):
        assert (run_dir / name).exists()
    # without a calibrator, predict_run gives the model's raw probabilities
    pairs = load_pairs(planted_file)[:5]
    np.testing.assert_allclose(predict_run(run_dir, pairs), predict_run(run_dir, pairs, calibrated=False))
