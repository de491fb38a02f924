"""Leak-free splits: grouped by normalized prompt, stratified, deterministic, round-trip through CSV."""

from __future__ import annotations

import random

import numpy as np
import pytest

from prefpred.splits import (
    HOLDOUT_FOLD,
    SplitConfig,
    holdout_mask,
    iter_folds,
    load_splits,
    make_splits,
    normalize_prompt,
    save_splits,
)
from prefpred.types import ConfigError, DataError, Pair, Turn, one_hot


def _pairs_with_repeated_prompts(n: int = 600, seed: int = 0) -> list[Pair]:
    """Pairs whose prompts repeat (with case/space/punctuation variants), labels drawn a 40/35/25."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        base = f"how do I solve problem number {rng.randint(0, 199)}"
        variant = rng.choice([base, base.upper(), f"  {base}?? ", base.replace(" ", "   "), f"{base}."])
        label = rng.choices(["a", "b", "tie"], weights=[40, 35, 25])[0]
        pairs.append(
            Pair(id=f"p{i}", turns=(Turn(variant, f"answer a {i}", f"answer b {i}"),), label=one_hot(label))
        )
    return pairs


def test_normalize_prompt_variants_collapse():
    assert normalize_prompt("  What is   2+2? ") == normalize_prompt("what is 2+2")
    assert normalize_prompt("«Hello, World!»") == "hello, world"
    assert normalize_prompt("STRASSE\n\tfoo") == "strasse foo"
    assert normalize_prompt("") == ""
    assert normalize_prompt("a b") != normalize_prompt("ab")


def test_no_group_crosses_holdout_or_folds():
    pairs = _pairs_with_repeated_prompts()
    splits = make_splits(pairs, SplitConfig(n_folds=5, holdout_fraction=0.2), seed=0)
    assert list(splits.columns[:3]) == ["id", "fold", "group"]
    assert splits["id"].tolist() == [p.id for p in pairs]
    # every group (normalized prompt) sits in exactly one fold (the holdout counts as a fold)
    norm = [normalize_prompt(p.prompt) for p in pairs]
    fold_of_prompt: dict[str, set[int]] = {}
    for prompt, fold in zip(norm, splits["fold"], strict=True):
        fold_of_prompt.setdefault(prompt, set()).add(int(fold))
    assert all(len(f) == 1 for f in fold_of_prompt.values())
    assert len(fold_of_prompt) < len(pairs)  # the data really had repeated prompts
    ids = [p.id for p in pairs]
    hold = holdout_mask(splits, ids)
    seen_val = np.zeros(len(pairs), dtype=int)
    for _, train, val in iter_folds(splits, ids):
        assert not set(train) & set(val)
        assert not hold[train].any() and not hold[val].any()
        assert not {norm[i] for i in train} & {norm[i] for i in val}
        seen_val[val] += 1
    # every non-holdout row is validated exactly once
    assert (seen_val[~hold] == 1).all() and (seen_val[hold] == 0).all()


def test_holdout_fraction_and_stratification():
    pairs = _pairs_with_repeated_prompts(n=1000, seed=3)
    labels = np.asarray([p.hard_label for p in pairs])
    for fraction in (0.1, 0.2, 0.3):
        splits = make_splits(pairs, SplitConfig(n_folds=4, holdout_fraction=fraction), seed=1)
        hold = (splits["fold"] == HOLDOUT_FOLD).to_numpy()
        assert abs(hold.mean() - fraction) < 0.03
    overall = {c: (labels == c).mean() for c in ("a", "b", "tie")}
    splits = make_splits(pairs, SplitConfig(n_folds=4, holdout_fraction=0.2), seed=1)
    for fold in range(-1, 4):
        part = labels[(splits["fold"] == fold).to_numpy()]
        assert len(part) > 100
        for c, share in overall.items():
            assert abs((part == c).mean() - share) < 0.06, (fold, c)


def test_deterministic_for_a_seed_and_different_for_another():
    pairs = _pairs_with_repeated_prompts()
    cfg = SplitConfig()
    a = make_splits(pairs, cfg, seed=7)
    b = make_splits(pairs, cfg, seed=7)
    c = make_splits(pairs, cfg, seed=8)
    assert a.equals(b)
    assert not a["fold"].equals(c["fold"])


def test_group_by_none_and_no_holdout():
    pairs = _pairs_with_repeated_prompts(n=100)
    splits = make_splits(pairs, SplitConfig(n_folds=5, holdout_fraction=0.0, group_by="none"), seed=0)
    assert (splits["fold"] != HOLDOUT_FOLD).all()
    assert splits["group"].nunique() == len(pairs)
    assert all(abs(c - 20) <= 2 for c in splits["fold"].value_counts().tolist())


def test_missing_ids_raise_clear_error(tmp_path):
    pairs = _pairs_with_repeated_prompts(n=60)
    splits = make_splits(pairs, SplitConfig(n_folds=3), seed=0)
    with pytest.raises(DataError, match="not in the split table.*'nope'"):
        list(iter_folds(splits, [p.id for p in pairs] + ["nope"]))
    with pytest.raises(DataError, match="not in the split table"):
        holdout_mask(splits, ["missing-1"])


def test_save_load_round_trip(tmp_path):
    pairs = [
        Pair(id=f"00{i}", turns=(Turn(f"q{i % 9}", "x", "y"),), label=one_hot("a" if i % 2 else "b"))
        for i in range(50)
    ]
    splits = make_splits(pairs, SplitConfig(n_folds=3, holdout_fraction=0.2), seed=0)
    path = save_splits(splits, tmp_path / "sub" / "splits.csv")
    loaded = load_splits(path)
    assert loaded["id"].tolist() == splits["id"].tolist()  # "000" stays a string, not 0
    assert loaded["fold"].tolist() == splits["fold"].tolist()
    ids = [p.id for p in pairs]
    assert [(k, t.tolist(), v.tolist()) for k, t, v in iter_folds(loaded, ids)] == [
        (k, t.tolist(), v.tolist()) for k, t, v in iter_folds(splits, ids)
    ]
    assert not list(tmp_path.joinpath("sub").glob(".*tmp"))


def test_bad_inputs():
    with pytest.raises(ConfigError):
        SplitConfig(n_folds=1)
    with pytest.raises(ConfigError):
        SplitConfig(holdout_fraction=1.0)
    with pytest.raises(ConfigError):
        SplitConfig(group_by="model")
    dup = [Pair(id="1", turns=(Turn("q", "a", "b"),), label=one_hot("a"))] * 2
    with pytest.raises(DataError, match="duplicate"):
        make_splits(dup, SplitConfig(n_folds=2, holdout_fraction=0), seed=0)
    few = [Pair(id=str(i), turns=(Turn("same prompt", "a", "b"),), label=one_hot("a")) for i in range(10)]
    with pytest.raises(DataError, match="fewer than split.n_folds"):
        make_splits(few, SplitConfig(n_folds=2, holdout_fraction=0), seed=0)
