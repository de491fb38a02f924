"""``prefpred experiment``: the study end to end on a tiny local model and a small Kaggle-format CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.data import write_arena_csv
from prefpred.experiment import (
    TRAIN_FOLD,
    VALIDATION_FOLD,
    ExperimentConfig,
    grouped_bootstrap,
    parse_set_options,
    validation_split,
)
from prefpred.testing import planted_pairs
from prefpred.types import ConfigError, Pair

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "experiment-tiny.yaml"
STUDY_CONFIG = REPO / "configs" / "experiment-qwen2.5-0.5b.yaml"

runner = CliRunner()


def _pairs_with_repeated_prompts(n: int, seed: int = 0) -> list[Pair]:
    """Planted pairs where every third pair reuses the previous pair's prompt (so grouping matters)."""
    from dataclasses import replace

    from prefpred.types import Turn

    pairs = planted_pairs(n, seed=seed, multi_turn_rate=0.0)
    out = []
    for i, p in enumerate(pairs):
        if i % 3 == 2:
            prev = out[-1]
            p = replace(p, turns=(Turn(prev.turns[0].prompt, p.turns[0].response_a, p.turns[0].response_b),))
        out.append(p)
    return out


@pytest.fixture
def one_torch_thread():
    """Tiny models run far faster single-threaded on a busy CPU; restore the setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from prefpred.testing import tiny_causal_lm, tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny-qwen2")
    tok = tiny_tokenizer()
    tiny_causal_lm(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


# ------------------------------------------------------------------------------------------------ pieces
def test_validation_split_is_grouped_and_stratified():
    pairs = _pairs_with_repeated_prompts(120, seed=1)
    table = validation_split(pairs, 0.2, seed=3)
    assert list(table["id"]) == [p.id for p in pairs]
    assert set(table["fold"]) == {VALIDATION_FOLD, TRAIN_FOLD}
    val = table["fold"] == VALIDATION_FOLD
    assert 0.12 <= val.mean() <= 0.28
    # no prompt group on both sides
    assert not set(table.loc[val, "group"]) & set(table.loc[~val, "group"])
    # every class is represented in the validation part
    labels = np.asarray([np.argmax(p.label) for p in pairs])
    assert set(labels[val.to_numpy()]) == {0, 1, 2}
    # same seed, same split; another seed, another split
    assert validation_split(pairs, 0.2, seed=3).equals(table)
    assert not validation_split(pairs, 0.2, seed=4)["fold"].equals(table["fold"])


def test_grouped_bootstrap_tells_noise_from_a_real_gain():
    rng = np.random.default_rng(0)
    n = 300
    y = np.eye(3)[rng.integers(0, 3, n)]
    groups = [str(i // 2) for i in range(n)]
    uniform = np.full((n, 3), 1 / 3)
    good = 0.7 * y + 0.1  # right most of the time, confident
    noise = rng.dirichlet([5, 5, 5], size=n)
    out = grouped_bootstrap(y, {"good": good, "uniform": uniform, "noise": noise}, groups,
                            comparisons=[("good", "uniform"), ("noise", "uniform")], n_boot=500, seed=1)
    assert out["n_groups"] == 150
    gain, tie = out["comparisons"]
    assert gain["accuracy_gain"] > 0.5 and gain["accuracy_within_noise"] is False
    assert gain["log_loss_reduction"] > 0 and gain["log_loss_within_noise"] is False
    lo, hi = gain["log_loss_reduction_ci95"]
    assert lo <= gain["log_loss_reduction"] <= hi
    assert tie["accuracy_within_noise"] is True
    se = out["models"]["noise"]["accuracy_se"]
    assert 0.01 < se < 0.06  # about sqrt(p(1-p)/n) ~ 0.027, a bit wider for pairs of rows
    # identical predictions: no difference at all
    same = grouped_bootstrap(y, {"a": noise, "b": noise.copy()}, groups, comparisons=[("a", "b")], n_boot=50)
    assert same["comparisons"][0]["accuracy_gain"] == 0.0
    assert same["comparisons"][0]["log_loss_within_noise"] is True


def test_config_validation_and_set_options():
    with pytest.raises(ConfigError, match="validation_fraction"):
        ExperimentConfig(validation_fraction=1.0)
    with pytest.raises(ConfigError, match="group_by"):
        ExperimentConfig(group_by="model")
    from prefpred.config import load_config

    sets = parse_set_options(["training.learning_rate=1e-4", "model.lora.r=8", "zero_shot.enabled=false",
                              "model.lora.target_modules=[q_proj, v_proj]"])
    cfg = load_config(ExperimentConfig, None, sets)
    assert cfg.training.learning_rate == 1e-4 and cfg.model.lora.r == 8 and cfg.zero_shot.enabled is False
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(ExperimentConfig, None, parse_set_options(["training.learning_rat=1"]))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_options(["training.learning_rate"])


def test_shipped_configs_load():
    from prefpred.config import load_config

    study = load_config(ExperimentConfig, STUDY_CONFIG)
    assert study.model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert (study.model.method, study.model.head, study.model.style_name) == ("qlora", "label-token", "seed-digits")
    assert study.validation_fraction == 0.2
    tiny = load_config(ExperimentConfig, TINY_CONFIG, {"model.name_or_path": "x"})
    assert tiny.model.device == "cpu" and tiny.training.max_steps > 0


# ------------------------------------------------------------------------------------------------ CLI
def test_experiment_help():
    result = runner.invoke(app, ["experiment", "--help"])
    assert result.exit_code == 0
    for flag in ("--config", "--model", "--data", "--out", "--max-steps", "--name", "--seed", "--limit", "--set"):
        assert flag in result.output


def test_experiment_without_model_is_one_line_error(tmp_path):
    data = write_arena_csv(planted_pairs(20, seed=0), tmp_path / "train.csv")
    result = runner.invoke(app, ["experiment", "--data", str(data), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "model.name_or_path" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_experiment_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir, one_torch_thread, monkeypatch):
    import dataclasses

    from prefpred.data import load_pairs, write_pairs_jsonl
    from prefpred.models.cpu import CPUPreferenceModel
    from prefpred.models.judge import ZeroShotJudge
    from prefpred.models.llm import LLMPreferenceModel
    from prefpred.submission import read_predictions

    data = write_arena_csv(_pairs_with_repeated_prompts(48, seed=2), tmp_path / "train.csv")
    # extra pairs: teacher copies of 20 data rows, so some carry validation prompts (they must not train)
    copies = [dataclasses.replace(p, id=f"x{p.id}", label=(0.4, 0.4, 0.2)) for p in load_pairs(data)[:20]]
    write_pairs_jsonl(copies, tmp_path / "extra.jsonl")
    trained: dict[str, list[str]] = {}
    for cls, key in ((LLMPreferenceModel, "fine_tuned"), (CPUPreferenceModel, "cpu")):
        def spy(self, pairs, *a, _real=cls.fit, _key=key, **kw):
            trained[_key] = [p.id for p in pairs]
            return _real(self, pairs, *a, **kw)

        monkeypatch.setattr(cls, "fit", spy)
    out = tmp_path / "runs"
    args = ["experiment", "--config", str(TINY_CONFIG), "--model", str(tiny_model_dir), "--data", str(data),
            "--out", str(out), "--name", "tiny", "--max-steps", "2", "--seed", "7",
            "--set", f"data.extra_path={tmp_path / 'extra.jsonl'}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = out / "tiny"
    for name in ("config.yaml", "splits.csv", "metrics.json", "metrics.jsonl", "training_curves.png",
                 "model_comparison.png", "report.md", "predictions/base.csv", "predictions/fine_tuned.csv",
                 "predictions/cpu.csv", "model/adapter_model.safetensors", "model/prefpred_model.json"):
        assert (run / name).is_file(), name
    assert not (run / "checkpoints").exists()
    assert "fine-tuned" in result.output and "CPU model" in result.output and "base model" in result.output

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["kind"] == "experiment" and metrics["seed"] == 7
    for key in ("base", "fine_tuned", "cpu", "prior"):
        r = metrics["validation"][key]
        assert 0.0 <= r["accuracy"] <= 1.0 and r["log_loss"] > 0, key
        assert r["accuracy_ci95"][0] <= r["accuracy"] <= r["accuracy_ci95"][1]
    imp = metrics["improvement"]
    assert imp["a"] == "fine_tuned" and imp["b"] == "base"
    assert imp["accuracy_gain"] == pytest.approx(metrics["validation"]["fine_tuned"]["accuracy"]
                                                 - metrics["validation"]["base"]["accuracy"])
    analysis = metrics["training"]["analysis"]
    for key in ("loss_reduction_pct", "min_loss", "max_token_accuracy", "still_falling"):
        assert key in analysis
    assert metrics["training"]["global_step"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"train", "eval"}

    report = (run / "report.md").read_text()
    for text in ("base model, zero-shot", "fine-tuned", "CPU model", "Improvement", "loss reduction",
                 "maximum token accuracy", "still falling", "model_comparison.png"):
        assert text in report, text

    # the report re-renders from metrics.json alone
    from prefpred.experiment import build_experiment_report

    (run / "report.md").unlink()
    build_experiment_report(run)
    assert (run / "report.md").read_text() == report

    # the split: grouped by prompt, and the prediction files cover exactly the validation rows
    splits = pd.read_csv(run / "splits.csv", dtype={"id": str, "group": str})
    val = splits["fold"] == VALIDATION_FOLD
    assert not set(splits.loc[val, "group"]) & set(splits.loc[~val, "group"])
    val_ids = splits.loc[val, "id"].tolist()
    assert metrics["counts"]["validation"] == len(val_ids)
    # extra copies of validation prompts train neither the fine-tuned nor the CPU model; the others train both
    val_groups = set(splits.loc[val, "group"])
    group = dict(zip(splits["id"], splits["group"], strict=True))
    leaky = {c.id for c in copies if group[c.id[1:]] in val_groups}
    assert 0 < len(leaky) < len(copies)
    assert metrics["counts"]["extra"] == 20 and metrics["counts"]["extra_used"] == 20 - len(leaky)
    for key in ("fine_tuned", "cpu"):
        assert not leaky & set(trained[key]), key
        assert {c.id for c in copies} - leaky <= set(trained[key]), key
    for name in ("base", "fine_tuned", "cpu"):
        ids, proba = read_predictions(run / "predictions" / f"{name}.csv")
        assert ids == val_ids
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)

    # the base model's numbers are exactly what the zero-shot judge gives on those pairs directly
    by_id = {p.id: p for p in load_pairs(data)}
    val_pairs = [by_id[i] for i in val_ids]
    judge = ZeroShotJudge(model=str(tiny_model_dir), style="seed-digits", max_length=768, device="cpu",
                          dtype="float32", token_budget=8192, max_batch_size=16)
    direct = judge.predict_proba(val_pairs)
    _, base = read_predictions(run / "predictions" / "base.csv")
    np.testing.assert_allclose(base, direct, atol=1e-6)

    # the saved adapter reloads and reproduces the fine-tuned predictions
    from prefpred.models import load_model

    reloaded = load_model(run / "model").predict_proba(val_pairs)
    _, tuned = read_predictions(run / "predictions" / "fine_tuned.csv")
    np.testing.assert_allclose(reloaded, tuned, atol=1e-5)

    # an existing finished run is not overwritten without --force
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "exists" in again.output
