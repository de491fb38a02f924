"""Data readers: Arena CSV/parquet, other public formats, prefpred JSONL, and every bad input."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.config import DataConfig
from prefpred.data import (
    detect_format,
    load_data,
    load_extra,
    load_pairs,
    pairs_summary,
    parse_hh_transcript,
    read_pairs,
    write_arena_csv,
    write_pairs_jsonl,
)
from prefpred.testing import planted_pairs
from prefpred.types import DataError, Pair, UserError

HEADER = ["id", "model_a", "model_b", "prompt", "response_a", "response_b", "winner_model_a", "winner_model_b",
          "winner_tie"]


def arena_row(i: int, label: str = "a", *, turns: int = 1, **overrides) -> dict:
    prompts = [f"Question {i} part {t}?" for t in range(turns)]
    row = {
        "id": str(1000 + i),
        "model_a": "model-x",
        "model_b": "model-y",
        "prompt": json.dumps(prompts),
        "response_a": json.dumps([f"Answer A{i}.{t}" for t in range(turns)]),
        "response_b": json.dumps([f"Answer B{i}.{t} with more words" for t in range(turns)]),
        "winner_model_a": int(label == "a"),
        "winner_model_b": int(label == "b"),
        "winner_tie": int(label == "tie"),
    }
    row.update(overrides)
    return row


def write_csv(path: Path, rows: list[dict], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, list(args))


# ------------------------------------------------------------------------------------------------ arena, good input
def test_arena_csv_reads_turns_labels_nulls_and_surrogates(tmp_path):
    rows = [
        arena_row(1, "a"),
        arena_row(2, "b", turns=3),
        arena_row(3, "tie", response_a=json.dumps(["first", None])),  # null item, ragged turns
        arena_row(4, "a", response_b='["bad \\ud83d escape"]'),  # lone surrogate escape as in the real data
    ]
    path = write_csv(tmp_path / "train.csv", rows)
    pairs = load_pairs(path)
    assert [p.id for p in pairs] == ["1001", "1002", "1003", "1004"]
    assert [p.hard_label for p in pairs] == ["a", "b", "tie", "a"]
    assert len(pairs[1].turns) == 3 and pairs[1].turns[2].prompt == "Question 2 part 2?"
    assert pairs[2].turns[0].response_a == "first"
    assert pairs[3].turns[0].response_b == "bad \ufffd escape"
    pairs[3].turns[0].response_b.encode("utf-8")  # no lone surrogate left to break UTF-8 output
    assert pairs[0].model_a == "model-x" and pairs[0].source == "arena"


def test_test_csv_without_labels(tmp_path):
    header = ["id", "prompt", "response_a", "response_b"]
    path = write_csv(tmp_path / "test.csv", [arena_row(i) for i in range(3)], header)
    pairs = load_pairs(path)
    assert len(pairs) == 3 and all(p.label is None for p in pairs)


def test_parquet_roundtrip(tmp_path):
    import pandas as pd

    path = tmp_path / "train.parquet"
    pd.DataFrame([arena_row(i, "ab"[i % 2]) for i in range(4)]).to_parquet(path)
    pairs = load_pairs(path)
    assert [p.hard_label for p in pairs] == ["a", "b", "a", "b"]


def test_limit_and_summary(tmp_path):
    rows = [arena_row(i, ["a", "b", "tie"][i % 3], turns=1 + (i % 2)) for i in range(9)]
    rows.append(arena_row(9, "a", response_b=rows[0]["response_a"]))
    pairs = load_pairs(write_csv(tmp_path / "t.csv", rows))
    assert len(load_pairs(tmp_path / "t.csv", limit=4)) == 4
    s = pairs_summary(pairs)
    assert s["rows"] == 10
    assert s["labels"] == {"a": 4, "b": 3, "tie": 3}
    assert s["turns"]["multi"] == 4  # odd i of 0..8
    assert s["duplicates"]["repeated_prompts"] == 0
    assert s["length_chars"]["response_a"]["max"] >= s["length_chars"]["response_a"]["p50"]


# ------------------------------------------------------------------------------------------------ bad input
BAD_CASES = {
    "missing file": (None, "file not found", None),
    "empty file": (b"", "file is empty", None),
    "missing column": ("nocol", "missing required column(s) response_b", "response_b"),
    "not json": ("notjson", "cell is not valid JSON", "response_a"),
    "not one-hot": ("twohot", "label is not one-hot", "winner_model_a"),
    "duplicate id": ("dup", "duplicate id '1001'", "id"),
    "non-utf8": ("latin1", "not valid UTF-8", "response_b"),
}


def _bad_file(tmp_path: Path, kind: str | bytes | None) -> Path:
    path = tmp_path / "bad.csv"
    if kind is None:
        return path
    if isinstance(kind, bytes):
        path.write_bytes(kind)
        return path
    rows = [arena_row(1), arena_row(2), arena_row(3)]
    header = HEADER
    if kind == "nocol":
        header = [h for h in HEADER if h != "response_b"]
    elif kind == "notjson":
        rows[1]["response_a"] = "[unquoted text"
    elif kind == "twohot":
        rows[1]["winner_model_b"] = 1
    elif kind == "dup":
        rows[2]["id"] = rows[0]["id"]
    write_csv(path, rows, header)
    if kind == "latin1":
        data = path.read_bytes().replace(b"Answer B2.0", b"Answer B2.0 caf\xe9")
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_line_exit_2(tmp_path, case):
    kind, message, column = BAD_CASES[case]
    path = _bad_file(tmp_path, kind)
    with pytest.raises(DataError) as info:
        load_pairs(path)
    err = info.value
    assert message in err.message
    assert err.path == str(path)
    if column:
        assert err.column == column
    if case in {"not json", "not one-hot", "non-utf8"}:
        assert err.row == 2
    if case == "duplicate id":
        assert err.row == 3
    for command in ("validate", "stats"):
        result = run_cli("data", command, str(path))
        assert result.exit_code == 2, result.output
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
        assert str(path) in lines[0]
        assert "Traceback" not in result.output


def test_skip_invalid_drops_and_reports(tmp_path):
    rows = [arena_row(i) for i in range(1, 6)]
    rows[1]["response_a"] = "{not json"
    rows[3]["winner_tie"] = 1
    path = write_csv(tmp_path / "mixed.csv", rows)
    res = read_pairs(path, skip_invalid=True)
    assert [p.id for p in res.pairs] == ["1001", "1003", "1005"]
    assert [e.row for e in res.dropped] == [2, 4]
    assert sum(res.drop_summary().values()) == 2
    result = run_cli("data", "validate", str(path), "--skip-invalid")
    assert result.exit_code == 0
    assert "3 valid pairs" in result.stdout and "2 invalid row(s) dropped" in result.stdout


# ------------------------------------------------------------------------------------------------ other formats
def test_other_formats(tmp_path):
    autoj = tmp_path / "autoj.jsonl"
    autoj.write_text("\n".join(json.dumps({"scenario": "s", "label": lab, "prompt": "p", "response 1": "r1",
                                           "response 2": "r2"}) for lab in (0, 1, 2)))
    assert [p.hard_label for p in load_pairs(autoj)] == ["a", "b", "tie"]

    panda = tmp_path / "panda.json"
    panda.write_text(json.dumps([
        {"idx": 0, "cmp_key": "m1_m2", "instruction": "Do it", "input": "x", "response1": "a", "response2": "b",
         "annotator1": 2, "annotator2": 2, "annotator3": 1},
        {"idx": 1, "cmp_key": "m1_m2", "instruction": "Do it", "input": "", "response1": "a", "response2": "b",
         "annotator1": 0, "annotator2": 1, "annotator3": 2},
    ]))
    pp = load_pairs(panda)
    assert [p.hard_label for p in pp] == ["b", "tie"] and pp[0].prompt == "Do it\n\nx"

    llmbar = tmp_path / "llmbar.json"
    llmbar.write_text(json.dumps([{"input": "q", "output_1": "o1", "output_2": "o2", "label": 2}]))
    assert load_pairs(llmbar)[0].hard_label == "b"

    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps({"examples": [{"input": "q", "context": {
        "model_a": "x", "model_b": "y", "winner": "tie (bothbad)", "response_a": "ra", "response_b": "rb"}}]}))
    assert load_pairs(conv)[0].hard_label == "tie"

    votes = tmp_path / "votes.csv"
    votes.write_text("id,model_a,model_b,winner\nv1,x,y,model_b\nv2,x,y,both_bad\n")
    assert detect_format(votes) == "arena-votes"
    assert [p.hard_label for p in load_pairs(votes, require_text=False)] == ["b", "tie"]


def test_hh_rlhf_places_chosen_at_random_with_fixed_seed(tmp_path):
    path = tmp_path / "hh.jsonl.gz"
    lines = []
    for i in range(40):
        hist = f"\n\nHuman: q{i}\n\nAssistant: a{i}\n\nHuman: follow-up {i}\n\nAssistant: "
        lines.append(json.dumps({"chosen": hist + "good", "rejected": hist + "bad"}))
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    pairs = load_pairs(path, seed=3)
    assert pairs == load_pairs(path, seed=3)
    labels = {p.hard_label for p in pairs}
    assert labels == {"a", "b"}
    for p in pairs:
        assert len(p.turns) == 2 and p.turns[1].prompt.startswith("follow-up")
        winner = p.turns[1].response_a if p.hard_label == "a" else p.turns[1].response_b
        assert winner == "good"
    assert [p.hard_label for p in load_pairs(path, seed=4)] != [p.hard_label for p in pairs]


def test_parse_hh_transcript():
    turns = parse_hh_transcript("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: ciao")
    assert turns == [("hi", "hello"), ("bye", "ciao")]


def test_prefpred_jsonl_roundtrip_with_soft_labels(tmp_path):
    pairs = planted_pairs(6, seed=2)
    path = write_pairs_jsonl(pairs, tmp_path / "pairs.jsonl")
    assert load_pairs(path) == pairs
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines[0]["label"] = [0.6, 0.3, 0.1]
    lines[0]["teacher_flip"] = True
    lines[1]["label"] = [0.9, 0.9, 0.1]
    path.write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.raises(DataError, match="sum to 1") as info:
        load_pairs(path)
    assert info.value.row == 2 and info.value.column == "label"
    res = read_pairs(path, skip_invalid=True)
    assert res.pairs[0].label == pytest.approx((0.6, 0.3, 0.1)) and res.pairs[0].meta["teacher_flip"] is True


def test_extra_data_weighted_and_unlabelled_left_out(tmp_path):
    pairs = planted_pairs(4, seed=5)
    path = write_pairs_jsonl(pairs, tmp_path / "extra.jsonl")
    text = path.read_text().splitlines()
    rec = json.loads(text[0])
    rec["label"] = None
    rec["failed"] = True
    text[0] = json.dumps(rec)
    path.write_text("\n".join(text))
    extra = load_extra(DataConfig(path="x", extra_path=str(path), extra_weight=0.5))
    assert len(extra) == 3 and all(p.weight == 0.5 for p in extra)


def test_hub_dataset_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="pass --data PATH"):
        load_data(DataConfig(path=None, hub_dataset="lmarena-ai/arena-human-preference-55k"))


def test_data_help():
    for args in (["data", "--help"], ["data", "validate", "--help"], ["data", "stats", "--help"]):
        result = run_cli(*args)
        assert result.exit_code == 0 and "Usage" in result.output


# ------------------------------------------------------------------------------------------------ real data
def test_shared_data_all_formats(shared_data):
    expected = {
        "arena/train.csv": (1660, {"a": 588, "b": 568, "tie": 504}),
        "autoj/testdata_pairwise.jsonl": (1392, {"a": 520, "b": 499, "tie": 373}),
        "pandalm/testset-v1.json": (999, {"a": 422, "b": 472, "tie": 105}),
        "arena-conversations/data_out.json": (200, {"a": 79, "b": 77, "tie": 44}),
        "llmbar": (885, None),
        "hh-rlhf/harmless-base_test.jsonl.gz": (2312, None),
    }
    for rel, (rows, labels) in expected.items():
        pairs = load_pairs(shared_data / rel)
        assert len(pairs) == rows, rel
        if labels:
            assert pairs_summary(pairs)["labels"] == labels, rel
    result = run_cli("data", "stats", str(shared_data / "arena" / "train.csv"), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["turns"]["multi"] > 0


def test_write_arena_csv_roundtrip_train_and_test(tmp_path):
    pairs = planted_pairs(12, seed=8, multi_turn_rate=0.5)
    train = load_pairs(write_arena_csv(pairs, tmp_path / "train.csv"))
    assert [p.id for p in train] == [p.id for p in pairs]
    assert [p.turns for p in train] == [p.turns for p in pairs]
    assert [p.hard_label for p in train] == [p.hard_label for p in pairs]
    test = load_pairs(write_arena_csv(pairs, tmp_path / "test.csv", labels=False))
    assert all(p.label is None for p in test) and [p.turns for p in test] == [p.turns for p in pairs]
    unlabelled = [Pair(id="x", turns=pairs[0].turns)]
    with pytest.raises(ValueError, match="no label"):
        write_arena_csv(unlabelled, tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()
