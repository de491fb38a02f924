"""The shared job steps: data checks (labels, ids, every class), the leak-free extra filter, and the in-place run
folder that a failed start does not block."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.data import write_arena_csv, write_pairs_jsonl
from prefpred.jobs import check_classes, check_labelled, leak_free_extra, prepare_in_place
from prefpred.runs import mark_complete
from prefpred.testing import planted_pairs
from prefpred.types import DataError, Pair, Turn, one_hot

runner = CliRunner()


def _pair(i: int, prompt: str, label: str | None = "a") -> Pair:
    return Pair(str(i), (Turn(prompt, f"ra{i}", f"rb{i}"),), label=one_hot(label) if label else None)


def test_check_labelled_refuses_empty_unlabelled_and_duplicate_ids():
    with pytest.raises(DataError, match="no pairs"):
        check_labelled([], "f.csv")
    with pytest.raises(DataError, match=r"f.csv: 1 row\(s\) have no label \(first: id '2'\)"):
        check_labelled([_pair(1, "q"), _pair(2, "q", None)], "f.csv")
    with pytest.raises(DataError, match="f.csv, row 2, column 'id': duplicate id '1'"):
        check_labelled([_pair(1, "q"), _pair(1, "r")], "f.csv")
    check_labelled([_pair(1, "q"), _pair(2, "r")], "f.csv")


def test_check_classes_refuses_a_missing_class_and_counts_soft_labels():
    pairs = [_pair(i, f"q{i}", "a" if i % 2 else "b") for i in range(10)]
    with pytest.raises(DataError, match="class.*tie never occur in the training pairs .only a, b."):
        check_classes(pairs, "f.csv")
    soft = dataclasses.replace(pairs[0], label=(0.5, 0.3, 0.2))  # a little tie mass is enough
    check_classes([*pairs, soft], "f.csv")
    with pytest.raises(DataError, match="b, tie never occur"):
        check_classes([_pair(i, "q", "a") for i in range(5)], "f.csv")


def test_leak_free_extra_drops_exactly_the_held_out_prompts():
    held = [_pair(1, "What is 2+2?"), _pair(2, "Name a colour")]
    extra = [_pair(10, "  what is 2+2 "), _pair(11, "Name a colour!"), _pair(12, "Something else"),
             _pair(13, "what is 2+3?")]
    kept = leak_free_extra(extra, held)
    assert [p.id for p in kept] == ["12", "13"]  # normalized prompts: case, spaces, edge punctuation
    assert leak_free_extra([], held) == []
    assert [p.id for p in leak_free_extra(extra, [])] == ["10", "11", "12", "13"]


def test_run_refuses_single_class_data_in_one_line(tmp_path):
    pairs = [dataclasses.replace(p, label=one_hot("a")) for p in planted_pairs(40, seed=1)]
    data = write_arena_csv(pairs, tmp_path / "a_only.csv")
    result = runner.invoke(app, ["run", "--data", str(data), "--out", str(tmp_path / "runs"), "--name", "x"])
    assert result.exit_code == 2, result.output
    assert "b, tie never occur in the data" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs" / "x").exists()


def test_extra_pairs_need_labels_and_unique_ids(tmp_path):
    from prefpred.config import DataConfig
    from prefpred.jobs import load_job_data

    data = write_arena_csv(planted_pairs(30, seed=2), tmp_path / "d.csv")
    extra = tmp_path / "extra.jsonl"
    write_pairs_jsonl(planted_pairs(5, seed=3), extra)
    loaded = load_job_data(DataConfig(path=str(data), extra_path=str(extra)), seed=0)
    assert len(loaded.pairs) == 30 and len(loaded.extra) == 5 and loaded.where == str(data)


# ------------------------------------------------------------------------------------------ in-place folders
def _leftover(run_dir, *names):
    run_dir.mkdir(parents=True)
    for name in names:
        if name.endswith("/"):
            (run_dir / name).mkdir()
        else:
            (run_dir / name).write_text("x")
    return run_dir


def test_failed_start_is_started_over_and_said_so(tmp_path, caplog):
    run = _leftover(tmp_path / "r", "config.yaml", "splits.csv", "metrics.jsonl", "checkpoints/")
    (run / "checkpoints" / "checkpoint-1").mkdir()  # a checkpoint killed while being written (no trainer state)
    with caplog.at_level(logging.WARNING, logger="prefpred.jobs"):
        assert prepare_in_place(run, overwrite=False, resume=True) is False
    assert "failed before its first checkpoint" in caplog.text
    assert not (run / "checkpoints").exists() and (run / "config.yaml").exists()


@pytest.mark.parametrize("state", ["foreign-file", "finished", "complete-marker", "checkpoint-no-resume"])
def test_other_folders_are_refused(tmp_path, state):
    run = _leftover(tmp_path / "r", "config.yaml", "splits.csv")
    if state == "foreign-file":
        (run / "notes.txt").write_text("mine")
    elif state == "finished":
        (run / "metrics.json").write_text("{}")
    elif state == "complete-marker":
        mark_complete(run)
    else:
        ckpt = run / "checkpoints" / "checkpoint-2"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--force"):
        prepare_in_place(run, overwrite=False, resume=state != "checkpoint-no-resume")
    assert (run / "config.yaml").exists()


def test_resumable_run_resumes(tmp_path):
    run = _leftover(tmp_path / "r", "config.yaml", "splits.csv")
    ckpt = run / "checkpoints" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    assert prepare_in_place(run, overwrite=False, resume=True) is True


def test_train_that_fails_before_its_first_checkpoint_does_not_block_a_rerun(tmp_path):
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny-cpu.yaml"
    data = write_arena_csv(planted_pairs(30, seed=4), tmp_path / "d.csv")
    empty = tmp_path / "empty-model"
    empty.mkdir()  # a model folder without a model: loading fails after the run folder is written
    args = ["train", "--config", str(config), "--model", str(empty), "--data", str(data), "--out",
            str(tmp_path / "runs"), "--name", "t", "--set", "split.n_folds=2"]
    first = runner.invoke(app, args)
    assert first.exit_code == 2 and "Traceback" not in first.output, first.output
    assert (tmp_path / "runs" / "t" / "config.yaml").is_file()  # the failed start left its folder
    again = runner.invoke(app, args)
    assert again.exit_code == 2

    def error(out: str) -> str:
        return " ".join(out[out.index("Error:"):].split())

    assert "exists" not in error(again.output) and error(first.output) == error(again.output)  # not a refusal
    assert "starting over" in " ".join(again.output.split())
