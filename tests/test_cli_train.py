"""``prefpred train`` end to end on a tiny local model and a small Arena-format CSV written here; the shipped
LLM configs load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.data import write_arena_csv
from prefpred.testing import planted_pairs

torch = pytest.importorskip("torch")

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LLM_CONFIGS = ("qwen2.5-0.5b-label-token-qlora.yaml", "qwen2.5-0.5b-classifier.yaml", "phi-3-mini.yaml",
               "llama-3.1-8b.yaml", "gemma-2-9b-classifier.yaml", "minilm-classifier.yaml", "tiny-cpu.yaml")


@pytest.fixture
def arena_csv(tmp_path):
    """Kaggle-style train.csv rows (JSON-list text cells, one-hot winner columns) from planted pairs."""
    return write_arena_csv(planted_pairs(40, seed=3, multi_turn_rate=0.2), tmp_path / "train.csv")


def test_train_help():
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for option in ("--config", "--model", "--data", "--out", "--max-steps", "--method", "--seed", "--extra-data",
                   "--extra-weight", "--set", "--force"):
        assert option in result.output


def _train_spy(monkeypatch) -> list[list[str]]:
    """Record the ids of the pairs each LLMPreferenceModel.fit trains on (the real fit still runs)."""
    from prefpred.models.llm import LLMPreferenceModel

    seen: list[list[str]] = []
    real_fit = LLMPreferenceModel.fit

    def fit(self, pairs, *args, **kwargs):
        seen.append([p.id for p in pairs])
        return real_fit(self, pairs, *args, **kwargs)

    monkeypatch.setattr(LLMPreferenceModel, "fit", fit)
    return seen


def test_train_end_to_end_writes_a_run_directory(tiny_qwen_dir, arena_csv, tmp_path, monkeypatch):
    import dataclasses

    import pandas as pd

    from prefpred.data import load_pairs, write_pairs_jsonl
    from prefpred.splits import HOLDOUT_FOLD

    # extra pairs: 6 with new prompts, and teacher copies of 16 data rows (prompts of every part of the split)
    copies = [dataclasses.replace(p, id=f"x{p.id}", label=(0.5, 0.3, 0.2)) for p in load_pairs(arena_csv)[:16]]
    extra = tmp_path / "extra.jsonl"
    write_pairs_jsonl(planted_pairs(6, seed=77, source="teacher") + copies, extra)
    trained = _train_spy(monkeypatch)
    args = ["train", "--config", str(CONFIGS / "tiny-cpu.yaml"), "--model", str(tiny_qwen_dir), "--data", str(arena_csv),
            "--out", str(tmp_path / "runs"), "--name", "t", "--max-steps", "4", "--extra-data", str(extra),
            "--extra-weight", "0.5", "--set", "training.eval_steps=2", "--set", "training.save_steps=2",
            "--set", "model.max_length=256"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "t"
    for name in ("config.yaml", "splits.csv", "metrics.jsonl", "metrics.json", "training_curves.png", "report.md",
                 "holdout.csv", "validation.csv", "model/prefpred_model.json", "model/adapter_model.safetensors"):
        assert (run / name).exists(), name
    assert not (run / "checkpoints").exists()  # the best weights are in model/
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model_kind"] == "llm" and metrics["training"]["global_step"] == 4
    # copies of validation (fold 0) or holdout prompts never reach training; copies of training prompts do
    fold = dict(pd.read_csv(run / "splits.csv", dtype={"id": str}).set_index("id")["fold"])
    leaky = {c.id for c in copies if fold[c.id[1:]] in (HOLDOUT_FOLD, 0)}
    assert 0 < len(leaky) < len(copies)
    assert metrics["counts"]["extra"] == 22
    assert metrics["counts"]["extra_used"] == 22 - len(leaky) and metrics["counts"]["train"] > 0
    assert len(trained) == 1 and not leaky & set(trained[0])
    assert {c.id for c in copies} - leaky <= set(trained[0])
    assert 0.0 <= metrics["holdout"]["model"]["accuracy"] <= 1.0
    assert metrics["training"]["analysis"]["loss_reduction_pct"] is not None
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"train", "eval"}
    assert "holdout" in result.output and "run directory" in result.output
    # the run's model predicts through the generic loader (what `prefpred predict --run` uses)
    from prefpred.pipeline import predict_run

    proba = predict_run(run, planted_pairs(3, seed=5))
    assert proba.shape == (3, 3)
    again = runner.invoke(app, args)  # a finished run is not overwritten without --force
    assert again.exit_code == 2 and "exists" in again.output


@pytest.mark.parametrize("args, message", [
    (["--config", "nope.yaml"], "not found"),
    (["--set", "training.lr_scheduler=exponential"], "lr_scheduler"),
    (["--set", "model.bogus=1"], "unknown config key"),
])
def test_train_user_errors_are_one_line(args, message, tmp_path):
    base = ["train", "--config", str(CONFIGS / "tiny-cpu.yaml"), "--out", str(tmp_path)]
    if args[0] == "--config":
        base = ["train", "--out", str(tmp_path)]
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name", LLM_CONFIGS)
def test_shipped_llm_configs_load(name):
    from prefpred.config import load_config
    from prefpred.training.job import TrainConfig

    cfg = load_config(TrainConfig, CONFIGS / name)
    assert cfg.model.name_or_path
    if name.startswith("gemma"):
        assert cfg.model.lora.r == 64 and cfg.model.lora.target_modules == "all-linear"
        assert cfg.model.head == "classifier"
    if name.startswith("qwen2.5-0.5b-label"):
        assert (cfg.model.head, cfg.model.style_name, cfg.model.method) == ("label-token", "seed-digits", "qlora")


def test_accelerate_and_deepspeed_configs_are_valid():
    import yaml

    ddp = yaml.safe_load((CONFIGS / "accelerate" / "ddp.yaml").read_text())
    assert ddp["distributed_type"] == "MULTI_GPU"
    for stage in (2, 3):
        ds = json.loads((CONFIGS / "deepspeed" / f"zero{stage}.json").read_text())
        assert ds["zero_optimization"]["stage"] == stage
        assert ds["train_micro_batch_size_per_gpu"] == "auto"
