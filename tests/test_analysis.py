"""Error analysis: segment rules, tables that partition the rows, confident errors, the report section."""

from __future__ import annotations

import numpy as np
import pytest

from prefpred.analysis import (
    analysis_section,
    analyze,
    confident_errors,
    prompt_category,
    prompt_script,
    segment_table,
)
from prefpred.plots import plot_segment_log_loss
from prefpred.testing import planted_pairs
from prefpred.types import Pair, Turn, one_hot


@pytest.mark.parametrize("text,want", [
    ("Write a python function that reverses a list", "code"),
    ("```\nprint(1)\n```", "code"),
    ("Solve the equation 3x + 2 = 11", "math"),
    ("What is 17 * 23?", "math"),
    ("Write a short poem about autumn", "writing"),
    ("What is the capital of France?", "other"),
])
def test_prompt_category(text, want):
    assert prompt_category(text) == want


@pytest.mark.parametrize("text,want", [
    ("Hello there, how are you?", "latin"), ("Привет, как дела?", "cyrillic"), ("你好，今天天气怎么样", "cjk"),
    ("こんにちは", "cjk"), ("مرحبا كيف حالك", "arabic"), ("1234 !!", "none"),
])
def test_prompt_script(text, want):
    assert prompt_script(text) == want


def test_segments_partition_the_rows():
    pairs = planted_pairs(120, seed=5)
    proba = np.random.default_rng(0).dirichlet([1, 1, 1], len(pairs))
    df = segment_table(pairs, proba, min_rows=0)
    assert df.loc[df.segment == "all", "n"].item() == 120
    for seg in ("turns", "length diff", "label", "category", "script"):
        assert df.loc[df.segment == seg, "n"].sum() == 120, seg
    assert set(df.loc[df.segment == "model", "value"]) <= {f"model-{q}" for q in range(4)}


def test_length_difference_segments_follow_the_lengths():
    long, short = "x" * 400, "y" * 100
    pairs = [Pair(id=str(i), turns=(Turn("q", long, short) if i % 2 else Turn("q", short, long),),
                  label=one_hot("a")) for i in range(10)]
    df = segment_table(pairs, np.tile([0.6, 0.2, 0.2], (10, 1)), min_rows=0)
    diff = df[df.segment == "length diff"].set_index("value")["n"]
    assert diff["A much longer (>+30%)"] == 5 and diff["B much longer (<-30%)"] == 5


def test_confident_errors_are_wrong_and_sorted():
    pairs = planted_pairs(60, seed=6)
    proba = np.random.default_rng(1).dirichlet([0.5, 0.5, 0.5], len(pairs))
    errs = confident_errors(pairs, proba, k=8)
    assert 0 < len(errs) <= 8
    assert all(e["predicted"] != e["true"] for e in errs)
    conf = [e["p_predicted"] for e in errs]
    assert conf == sorted(conf, reverse=True)
    truth = {p.id: p.hard_label for p in pairs}
    assert all(truth[e["id"]] == e["true"] for e in errs)


def test_section_and_plot(tmp_path):
    pairs = planted_pairs(50, seed=7)
    proba = np.random.default_rng(2).dirichlet([1, 1, 1], len(pairs))
    result = analyze(pairs, proba, on="test")
    lines = analysis_section(result)
    text = "\n".join(lines)
    assert "## Error analysis" in text and result["confident_errors"][0]["id"] in text
    assert analysis_section(None) == []
    path = plot_segment_log_loss(result["segments"], tmp_path / "seg.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
