"""What data readers accept but change, what they refuse, and how ``prefpred data validate`` reports it."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import zipfile

import pytest
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.config import DataConfig
from prefpred.data import (
    NOTE_BOTH_BAD,
    NOTE_RAGGED,
    load_data,
    load_pairs,
    read_pairs,
    show,
    write_arena_csv,
)
from prefpred.testing import planted_pairs
from prefpred.types import DataError, UserError

runner = CliRunner()


def _arena_csv(tmp_path, n=12, name="train.csv"):
    return write_arena_csv(planted_pairs(n, seed=2, multi_turn_rate=0.0), tmp_path / name)


def _error_line(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, res.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------- ragged turns
def _ragged_jsonl(tmp_path, n_ragged: int):
    path = tmp_path / "ragged.jsonl"
    rows = []
    for i in range(6):
        ragged = i < n_ragged
        rows.append({"id": str(i), "prompt": ["q1", "q2"] if ragged else ["q"], "response_a": ["a1"],
                     "response_b": ["b1", "b2"] if ragged else ["b"], "label": "a"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_ragged_turns_are_padded_and_warned_once_per_file_with_a_count(tmp_path, caplog):
    path = _ragged_jsonl(tmp_path, 3)
    with caplog.at_level(logging.WARNING, logger="prefpred"):
        res = read_pairs(path)
    assert res.notes == {NOTE_RAGGED: 3}
    assert len(res.pairs) == 6 and res.pairs[0].turns[1].response_a == ""
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3 rows whose prompt and responses have different numbers of turns" in warnings[0]
    out = runner.invoke(app, ["data", "validate", str(path)])
    assert out.exit_code == 0 and "note: 3 rows whose prompt" in out.stdout


def test_even_turns_give_no_note(tmp_path):
    assert read_pairs(_ragged_jsonl(tmp_path, 0)).notes == {}


# ------------------------------------------------------------------------------------------- --limit
@pytest.mark.parametrize("limit", ["0", "-5"])
@pytest.mark.parametrize("cmd", ["run", "train", "experiment", "judge"])
def test_limit_below_one_is_refused_by_the_cli(tmp_path, cmd, limit):
    data = _arena_csv(tmp_path)
    res = runner.invoke(app, [cmd, "--data", str(data), "--limit", limit, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert "--limit" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("limit", [0, -5])
def test_limit_below_one_is_refused_by_the_loader(tmp_path, limit):
    data = _arena_csv(tmp_path)
    with pytest.raises(UserError, match="--limit must be"):
        read_pairs(data, limit=limit)
    with pytest.raises(UserError, match="limit"):  # the typed config refuses it before the loader sees it
        load_data(DataConfig(path=str(data), limit=limit))
    assert len(load_pairs(data, limit=5)) == 5


# ------------------------------------------------------------------------------------------- votes without text
def _votes_csv(tmp_path):
    path = tmp_path / "votes.csv"
    winners = ["model_a", "model_b", "tie", "both_bad", "both_bad", "model_a"]
    path.write_text("id,model_a,model_b,winner\n"
                    + "".join(f"v{i},m{i % 3},m{(i + 1) % 3},{w}\n" for i, w in enumerate(winners)))
    return path


def test_votes_without_text_fail_validate_and_training(tmp_path):
    path = _votes_csv(tmp_path)
    res = read_pairs(path)
    assert res.format == "arena-votes" and res.notes == {NOTE_BOTH_BAD: 2}
    line = _error_line(runner.invoke(app, ["data", "validate", str(path)]))
    assert str(path) in line and "no prompt/response text" in line and "prefpred leaderboard" in line
    out = runner.invoke(app, ["data", "validate", str(path)])
    assert "note: 2 'both_bad' votes counted as ties" in out.stdout
    with pytest.raises(DataError, match="no prompt/response text"):
        load_data(DataConfig(path=str(path)))
    line = _error_line(runner.invoke(app, ["run", "--data", str(path), "--out", str(tmp_path / "runs")]))
    assert "no prompt/response text" in line


def test_votes_without_text_are_refused_by_every_text_command(tmp_path):
    """Only files with text can be split by prompt or scored by a text model (predict, judge, synth share
    load_pairs); predictions made elsewhere are still scored against the votes' labels by id."""
    path = _votes_csv(tmp_path)
    with pytest.raises(DataError, match="no prompt/response text"):
        load_pairs(path)
    assert len(load_pairs(path, require_text=False)) == 6
    line = _error_line(runner.invoke(app, ["split", "--data", str(path), "--out", str(tmp_path / "s.csv")]))
    assert "no prompt/response text" in line and not (tmp_path / "s.csv").exists()
    pred = tmp_path / "pred.csv"
    pred.write_text("id,p_a,p_b,p_tie\n" + "".join(f"v{i},0.4,0.4,0.2\n" for i in range(6)))
    out = runner.invoke(app, ["evaluate", "--pred", str(pred), "--data", str(path)])
    assert out.exit_code == 0, out.output


def test_stats_say_both_bad_and_no_text(tmp_path):
    path = _votes_csv(tmp_path)
    out = runner.invoke(app, ["data", "stats", str(path)])
    assert out.exit_code == 0, out.output
    assert "2 'both_bad' votes counted as ties" in out.stdout and "no prompt/response text" in out.stdout
    assert "Labels" in out.stdout
    # no text: no table of zero lengths, no 'every pair identical' duplicate counts
    assert "Length" not in out.stdout and "identical pairs" not in out.stdout and "single-turn" not in out.stdout
    js = json.loads(runner.invoke(app, ["data", "stats", str(path), "--json"]).stdout)
    assert js["notes"] == {NOTE_BOTH_BAD: 2} and js["has_text"] is False


def test_arena_conversations_both_bad_is_counted(tmp_path):
    path = tmp_path / "conv.json"
    ex = [{"input": "q", "context": {"model_a": "x", "model_b": "y", "winner": w, "response_a": "a",
                                     "response_b": "b"}} for w in ("model_a", "tie (bothbad)", "tie")]
    path.write_text(json.dumps({"examples": ex}))
    assert read_pairs(path).notes == {NOTE_BOTH_BAD: 1}


# ------------------------------------------------------------------------------------------- binary input
def test_gzip_named_csv_is_read_transparently(tmp_path):
    plain = _arena_csv(tmp_path, name="plain.csv")
    disguised = tmp_path / "train.csv"
    disguised.write_bytes(gzip.compress(plain.read_bytes()))
    assert [p.id for p in load_pairs(disguised)] == [p.id for p in load_pairs(plain)]
    out = runner.invoke(app, ["data", "validate", str(disguised)])
    assert out.exit_code == 0 and "12 valid pairs" in out.stdout


def test_parquet_named_csv_is_read_as_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    plain = _arena_csv(tmp_path, name="plain.csv")
    disguised = tmp_path / "train.csv"
    pd.read_csv(plain).to_parquet(disguised)
    assert [p.id for p in load_pairs(disguised)] == [p.id for p in load_pairs(plain)]


def _zip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("train.csv", data)
    return buf.getvalue()


@pytest.mark.parametrize("kind,what", [
    ("zip", "zip archive"), ("bz2", "bzip2"), ("gzip2", "gzip-compressed twice"), ("nul", "binary file"),
    ("png", "PNG image"), ("bad-gzip", "not a valid gzip file"),
])
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_binary_input_is_one_clean_line(tmp_path, kind, what, suffix):
    text = _arena_csv(tmp_path, name="plain.csv").read_bytes()
    content = {
        "zip": _zip(text), "bz2": bz2.compress(text), "gzip2": gzip.compress(gzip.compress(text)),
        "nul": b"id,prompt\x00\x01\x02\xff\xfe" * 20, "png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
        "bad-gzip": b"\x1f\x8b\x08\x00" + bytes(range(200)),
    }[kind]
    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    with pytest.raises(DataError, match=what):
        load_pairs(path)
    line = _error_line(runner.invoke(app, ["data", "validate", str(path)]))
    assert what in line and str(path) in line
    assert line.isprintable() and len(line) < 400, line


def test_values_in_error_lines_are_escaped_and_trimmed(tmp_path):
    assert show("x" * 500).endswith("…'") and len(show("x" * 500)) == 60
    assert show("bell\x07\x1b[31mred").isprintable()
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "1", "prompt": "p", "response_a": "a", "response_b": "b",
                                "label": "\x1b[2J" + "z" * 5000}) + "\n")
    line = _error_line(runner.invoke(app, ["data", "validate", str(path)]))
    assert "\x1b" not in line and len(line) < 400


def test_binary_header_does_not_dump_bytes(tmp_path):
    path = tmp_path / "weird.csv"
    path.write_bytes(b"\xff\xfe\x8b\xa0garbage header," + bytes(range(128, 256)) + b"\nx,y\n")
    line = _error_line(runner.invoke(app, ["data", "validate", str(path)]))
    assert "missing required column" in line and line.isprintable() and len(line) < 400


# ------------------------------------------------------------------------------------------- validate lists all
def _many_bad(tmp_path, n_bad: int, n_good: int = 5):
    pairs = planted_pairs(n_good + n_bad, seed=5, multi_turn_rate=0.0)
    path = write_arena_csv(pairs, tmp_path / "many.csv")
    lines = path.read_text().splitlines(keepends=True)
    for i in range(1 + n_good, 1 + n_good + n_bad):  # break the label of every row after the good ones
        lines[i] = lines[i].rstrip("\r\n")[:-5] + "1,1,0\n"
    path.write_text("".join(lines))
    return path


def test_validate_lists_every_problem_capped_with_a_count(tmp_path):
    path = _many_bad(tmp_path, 27)
    out = runner.invoke(app, ["data", "validate", str(path)])
    line = _error_line(out)
    assert "27 invalid row(s) of 32" in line and "row 6" in line
    listed = [ln for ln in out.stdout.splitlines() if "label is not one-hot" in ln and ", row " in ln]
    assert len(listed) == 20 and "row 6," in listed[0] and "row 25," in listed[-1]
    assert "... and 7 more" in out.stdout
    assert "27  winner_model_a: label is not one-hot" in out.stdout
    ok = runner.invoke(app, ["data", "validate", str(path), "--skip-invalid"])
    assert ok.exit_code == 0 and "5 valid pairs" in ok.stdout and "27 invalid row(s) dropped" in ok.stdout


def test_validate_few_problems_lists_them_all(tmp_path):
    out = runner.invoke(app, ["data", "validate", str(_many_bad(tmp_path, 3))])
    _error_line(out)
    assert len([ln for ln in out.stdout.splitlines() if ", row " in ln]) == 3 and "more" not in out.stdout


def test_run_without_data_offline_fails_at_once_in_one_line(tmp_path, monkeypatch, caplog):
    """No --data and no network: the hub default is looked up in the local cache only, no retry warnings."""
    pytest.importorskip("datasets")
    import socket

    def no_network(*_args, **_kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")  # empty caches
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    # the test session runs with HF_HUB_OFFLINE=1 (conftest); a user's shell does not
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    res = runner.invoke(app, ["run", "--out", str(tmp_path / "runs"), "--name", "x"])
    line = _error_line(res)
    assert "could not load the hub dataset" in line and "--data" in line
    said = res.output + caplog.text  # the Hub client's retry warnings go through logging
    assert "Retrying" not in said and "thrown while requesting" not in said, said


def test_a_bad_row_in_a_training_file_says_how_to_see_them_all_and_skip_them(tmp_path):
    import pandas as pd

    path = _arena_csv(tmp_path, n=40)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[[3, 9], "prompt"] = "not json"
    table.to_csv(path, index=False)
    line = _error_line(runner.invoke(app, ["run", "--data", str(path), "--out", str(tmp_path / "runs")]))
    assert "row 4, column 'prompt'" in line  # the first bad row...
    assert f"prefpred data validate {path}` lists every bad row" in line and "--skip-invalid" in line  # ...and more
    listed = runner.invoke(app, ["data", "validate", str(path)])
    assert listed.exit_code == 2 and "row 4" in listed.output and "row 10" in listed.output
    assert "lists every bad row" not in listed.output  # validate lists them itself
    with pytest.raises(DataError, match="row 4") as err:  # the library raises the same DataError
        load_pairs(path)
    assert err.value.row == 4 and err.value.column == "prompt"


@pytest.mark.parametrize("weight", ["NaN", "Infinity", "-1", '"heavy"'])
def test_bad_pair_weights_are_row_errors(tmp_path, weight):
    """NaN, infinite or negative weights passed `data validate` and failed later in training without a row."""
    path = tmp_path / "w.jsonl"
    path.write_text('{"id": "1", "prompt": ["q"], "response_a": ["a"], "response_b": ["b"], "label": "a", '
                    f'"weight": {weight}}}\n', encoding="utf-8")
    line = _error_line(runner.invoke(app, ["data", "validate", str(path)]))
    assert "row 1, column 'weight'" in line and "finite number >= 0" in line


@pytest.mark.parametrize("value", ["nan", "-1", "inf"])
def test_extra_weight_must_be_finite_and_not_negative(tmp_path, value):
    data = _arena_csv(tmp_path, n=40)
    line = _error_line(runner.invoke(app, ["run", "--data", str(data), "--extra-data", str(data), "--extra-weight",
                                           value, "--out", str(tmp_path / "runs")]))
    assert "extra_weight" in line
    assert not (tmp_path / "runs").exists()


def test_extra_data_without_text_is_refused_like_data(tmp_path):
    """A votes file as --extra-data trained every fold on 135k pairs of empty text."""
    data = _arena_csv(tmp_path, n=40)
    votes = tmp_path / "votes.csv"
    votes.write_text("id,model_a,model_b,winner\n" + "".join(f"v{i},x,y,model_a\n" for i in range(30)))
    line = _error_line(runner.invoke(app, ["run", "--data", str(data), "--extra-data", str(votes), "--out",
                                           str(tmp_path / "runs")]))
    assert str(votes) in line and "no prompt/response text" in line
