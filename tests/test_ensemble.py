"""Ensembles: simplex weights, stacking symmetry, nested selection, and the `prefpred ensemble` run end to end."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.config import DataConfig
from prefpred.data import load_pairs, write_pairs_jsonl
from prefpred.ensemble import EnsembleConfig, build_ensemble
from prefpred.ensemble.blend import Candidate, CandidateSpec, Stacker, WeightedBlend, pair_features
from prefpred.ensemble.select import cross_validate, nested_oof
from prefpred.metrics import log_loss
from prefpred.pipeline import RunConfig, run_job
from prefpred.report import build_report
from prefpred.runs import load_predictor
from prefpred.splits import SplitConfig
from prefpred.submission import read_predictions
from prefpred.testing import planted_pairs

runner = CliRunner()


def _planted_members(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels, one informative member (noisy truth) and three members that are pure noise."""
    rng = np.random.default_rng(seed)
    y = np.eye(3)[rng.integers(0, 3, n)]
    good = 0.55 * y + 0.45 * rng.dirichlet([1, 1, 1], n)
    noise = [rng.dirichlet([2, 2, 2], n) for _ in range(3)]
    return y, np.stack([noise[0], good, noise[1], noise[2]])


@pytest.mark.parametrize("space", ["prob", "logit"])
def test_weights_sum_to_one_and_find_the_informative_member(space):
    y, P = _planted_members()
    blend = WeightedBlend(space).fit(P, y)
    w = np.asarray(blend.weights(4))
    assert w.sum() == pytest.approx(1.0) and np.all(w >= 0)
    assert w[1] > 0.9, w
    assert log_loss(y, blend.predict(P)) <= log_loss(y, P[1]) + 1e-9


def test_stacker_is_swap_consistent():
    y, P = _planted_members(300, seed=1)
    pairs = planted_pairs(300, seed=2)
    X = pair_features(pairs)
    st = Stacker().fit(P, y, X)
    direct = st.predict(P, X)
    mirrored = st.predict(P[:, :, [1, 0, 2]], pair_features([p.swapped() for p in pairs]))[:, [1, 0, 2]]
    np.testing.assert_allclose(direct, mirrored, atol=1e-12)
    restored = Stacker.from_dict(json.loads(json.dumps(st.to_dict())))
    np.testing.assert_allclose(restored.predict(P, X), direct, atol=1e-12)


@pytest.mark.parametrize("spec", [CandidateSpec("blend-prob", "bias"), CandidateSpec("blend-logit", "temperature"),
                                  CandidateSpec("stack-logistic", "bias")])
def test_calibrated_candidates_stay_swap_consistent(spec):
    y, P = _planted_members(300, seed=4)
    y = np.vstack([y[:200], np.eye(3)[np.zeros(100, dtype=int)]])  # far more A wins than B wins
    P = np.concatenate([P[:, :200], P[:, 200:]], axis=1)
    P = (P + P[:, :, [1, 0, 2]]) / 2  # swap-consistent members
    cand = Candidate.fit(spec, P, y)
    np.testing.assert_allclose(cand.predict(P[:, :, [1, 0, 2]])[:, [1, 0, 2]], cand.predict(P), atol=1e-9)


def test_selection_prefers_real_blend_and_nested_oof_covers_every_row():
    y, P = _planted_members(400, seed=3)
    folds = np.arange(400) % 4
    cv = cross_validate(P, y, folds)
    assert set(cv.log_loss) >= {"blend-prob", "blend-logit+bias", "stack-logistic+temperature"}
    assert "best-member" not in cv.log_loss  # a vertex of the blend, left out of the choice
    nested, chosen = nested_oof(P, y, folds)
    assert np.isfinite(nested).all() and len(chosen) == 4
    assert log_loss(y, nested) < log_loss(y, P[0])  # far better than a noise member
    cand = Candidate.fit(CandidateSpec("blend-prob", "temperature"), P, y)
    assert cand.calibrator is not None
    assert not np.allclose(cand.predict(P), cand.predict(P, calibrated=False))


# --------------------------------------------------------------------------------------------- end to end
def _run(tmp: Path, data: Path, name: str, **model_kw) -> Path:
    model = dataclasses.replace(RunConfig().model, embeddings=False, n_jobs=1, **model_kw)
    return run_job(RunConfig(name=name, out_dir=str(tmp / "runs"), seed=3, data=DataConfig(path=str(data)),
                             split=SplitConfig(n_folds=3, holdout_fraction=0.25), model=model))


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ens")
    data = write_pairs_jsonl(planted_pairs(120, seed=7), tmp / "pairs.jsonl")
    a = _run(tmp, data, "a", n_estimators=30)
    b = _run(tmp, data, "b", n_estimators=12, num_leaves=4)
    return tmp, data, a, b


@pytest.fixture(scope="module")
def ensemble_dir(members):
    tmp, _, a, b = members
    result = runner.invoke(app, ["ensemble", str(a), str(b), "--out", str(tmp / "runs"), "--name", "ens"])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "ensemble (nested OOF)" in result.output
    return tmp / "runs" / "ens"


@pytest.mark.slow
def test_ensemble_run_directory(ensemble_dir, members):
    for f in ("config.yaml", "metrics.json", "weights.json", "oof.csv", "holdout.csv", "splits.csv",
              "model_comparison.png", "reliability.png", "report.md"):
        assert (ensemble_dir / f).is_file(), f
    m = json.loads((ensemble_dir / "metrics.json").read_text())
    assert m["kind"] == "ensemble" and sum(m["member_weights"].values()) == pytest.approx(1.0)
    ids, nested = read_predictions(ensemble_dir / "oof.csv")
    a_ids, _ = read_predictions(members[2] / "oof.csv")
    assert sorted(ids) == sorted(a_ids)
    assert m["cv"]["oof"]["log_loss"] == pytest.approx(
        log_loss(pd.read_csv(ensemble_dir / "oof.csv")["label"].tolist(), nested))
    assert "## Candidates" in (ensemble_dir / "report.md").read_text()


@pytest.mark.slow
def test_ensemble_predicts_via_prefpred_predict(ensemble_dir, members):
    tmp, data, _, _ = members
    out = tmp / "sub.csv"
    result = runner.invoke(app, ["predict", "--run", str(ensemble_dir), "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output + str(result.exception)
    ids, proba = read_predictions(out)
    pairs = load_pairs(data)
    assert ids == [p.id for p in pairs]
    np.testing.assert_allclose(proba, load_predictor(ensemble_dir).predict_proba(pairs), atol=2e-6)
    # the holdout it wrote is what the loaded ensemble predicts for those rows
    h_ids, h_proba = read_predictions(ensemble_dir / "holdout.csv")
    by_id = {p.id: p for p in pairs}
    np.testing.assert_allclose(load_predictor(ensemble_dir).predict_proba([by_id[i] for i in h_ids]), h_proba,
                               atol=1e-6)


@pytest.mark.slow
def test_ensemble_survives_moving_the_folder_of_runs(ensemble_dir, members, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(ensemble_dir.parent, moved, ignore=shutil.ignore_patterns(".*tmp"))
    pairs = load_pairs(members[1])[:5]
    weights = json.loads((moved / "ens" / "weights.json").read_text())
    for entry in weights["members"]:
        entry["abs_path"] = str(tmp_path / "nowhere")  # only the relative path can find the members now
    (moved / "ens" / "weights.json").write_text(json.dumps(weights))
    np.testing.assert_allclose(load_predictor(moved / "ens").predict_proba(pairs),
                               load_predictor(ensemble_dir).predict_proba(pairs))


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


@pytest.mark.slow
def test_mismatched_folds_are_refused_in_one_line(members, tmp_path):
    _, _, a, b = members
    bad = _copy(b, tmp_path / "b-folds")
    splits = pd.read_csv(bad / "splits.csv", dtype={"id": str})
    cv = splits.index[splits["fold"] >= 0]
    splits.loc[cv[0], "fold"] = (splits.loc[cv[0], "fold"] + 1) % 3
    splits.to_csv(bad / "splits.csv", index=False)
    result = runner.invoke(app, ["ensemble", str(a), str(bad), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "folds differ" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_mismatched_ids_are_refused_in_one_line(members, tmp_path):
    _, _, a, b = members
    bad = _copy(b, tmp_path / "b-ids")
    oof = pd.read_csv(bad / "oof.csv", dtype={"id": str})
    oof.iloc[1:].to_csv(bad / "oof.csv", index=False)
    result = runner.invoke(app, ["ensemble", str(a), str(bad), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "do not line up" in result.output and len(result.output.strip().splitlines()) == 1


def test_existing_ensemble_is_refused_before_any_work(tmp_path):
    """The name is checked first: members are not even read (blending takes a while on real runs)."""
    (tmp_path / "runs" / "ens").mkdir(parents=True)
    (tmp_path / "runs" / "ens" / "weights.json").write_text("{}")
    result = runner.invoke(app, ["ensemble", str(tmp_path / "no-a"), str(tmp_path / "no-b"),
                                 "--out", str(tmp_path / "runs"), "--name", "ens"])
    assert result.exit_code == 2 and "exists (use --force" in result.output, result.output


def test_one_member_is_refused(members, tmp_path):
    result = runner.invoke(app, ["ensemble", str(members[2]), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "at least two" in result.output


@pytest.mark.slow
def test_validation_members_and_report_rerender(members, tmp_path):
    """Runs with one validation part (like `prefpred train`) blend too: folds come from their prompt groups."""
    tmp, data, a, b = members
    copies = []
    for run in (a, b):
        c = _copy(run, tmp_path / f"{run.name}-val")
        (c / "oof.csv").rename(c / "validation.csv")
        copies.append(c)
    ens = build_ensemble(EnsembleConfig(members=[str(c) for c in copies], out_dir=str(tmp_path / "runs"),
                                        name="val-ens"))
    m = json.loads((ens / "metrics.json").read_text())
    assert m["cv"]["source"] == "validation.csv" and m["cv"]["n_folds"] >= 3
    splits = pd.read_csv(ens / "splits.csv", dtype={"id": str, "group": str})
    assert set(pd.read_csv(ens / "oof.csv", dtype={"id": str})["id"]) <= set(splits["id"])
    (ens / "report.md").unlink()
    build_report(ens)
    assert "# prefpred ensemble `val-ens`" in (ens / "report.md").read_text()
    mixed = runner.invoke(app, ["ensemble", str(a), str(copies[1]), "--out", str(tmp_path / "runs")])
    assert mixed.exit_code == 2 and "same kind of held-out predictions" in mixed.output


def test_a_nested_ensemble_worse_than_its_best_member_falls_back_to_that_member():
    from prefpred.ensemble.blend import CandidateSpec
    from prefpred.ensemble.job import _never_worse_than_best_member

    rng = np.random.default_rng(0)
    y = np.eye(3)[rng.integers(0, 3, 300)]
    good = 0.6 * y + 0.4 / 3  # informative member
    noise = np.full_like(y, 1 / 3)
    P = np.stack([noise, good])
    spec = CandidateSpec("blend-prob")
    kept, nested, why = _never_worse_than_best_member(spec, 0.5 * good + 0.5 * noise, P, y, ["noise", "good"])
    assert kept.combiner == "best-member" and why["best_member"] == "good"
    np.testing.assert_array_equal(nested, good)
    kept, nested, why = _never_worse_than_best_member(spec, good * 0.9 + y * 0.1, P, y, ["noise", "good"])
    assert kept is spec and why is None


@pytest.mark.slow
def test_the_fallback_to_the_best_member_is_a_whole_run(members, tmp_path, monkeypatch):
    """When the nested ensemble loses to its best member, the run is that member alone, written and usable (the
    job used to crash logging the fallback's cross-validated score, which does not exist)."""
    import prefpred.ensemble.job as job

    tmp, data, a, b = members
    real = job.nested_oof

    def losing(P, y, folds, X=None):  # the procedure's nested predictions, made worse than any member
        _, chosen = real(P, y, folds, X)
        return np.full_like(y, 1 / 3), chosen

    monkeypatch.setattr(job, "nested_oof", losing)
    result = runner.invoke(app, ["ensemble", str(a), str(b), "--out", str(tmp_path / "runs"), "--name", "fb"])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "blending did not pay" in result.output and "not worse than its best member" not in result.output
    run = tmp_path / "runs" / "fb"
    m = json.loads((run / "metrics.json").read_text())
    best = min(m["members"], key=lambda k: m["members"][k]["oof"]["log_loss"])
    assert m["method"] == "best-member" and m["fallback"]["best_member"] == best
    assert m["member_weights"][best] == pytest.approx(1.0)
    member = a if best == "a" else b
    ids, nested = read_predictions(run / "oof.csv")
    m_ids, m_oof = read_predictions(member / "oof.csv")
    order = [m_ids.index(i) for i in ids]
    np.testing.assert_allclose(nested, m_oof[order], atol=1e-6)  # the member's raw OOF predictions
    out = tmp_path / "sub.csv"
    result = runner.invoke(app, ["predict", "--run", str(run), "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output + str(result.exception)
    _, proba = read_predictions(out)
    np.testing.assert_allclose(proba, load_predictor(member, calibrated=False).predict_proba(load_pairs(data)), atol=1e-5)
