"""Leaderboard fits on simulated battles: recovery, symmetry, seeding, interval widths, style control, checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from prefpred.leaderboard.battles import (
    Battles,
    apply_min_battles,
    battles_from_pairs,
    check_connected,
    make_battles,
    read_battles,
    style_counts,
)
from prefpred.leaderboard.predicted import compare_leaderboards
from prefpred.leaderboard.ratings import fit_bt, online_elo, pairwise_win_prob, rank_by_intervals, win_rates
from prefpred.leaderboard.style import fit_style
from prefpred.types import DataError, Pair, Turn, UserError

ELO = 400 / math.log(10)  # Elo points per unit of log-odds


def simulate(n: int, strengths: np.ndarray, seed: int, *, tie_rate: float = 0.0, style_coef: float = 0.0,
             verbose: np.ndarray | None = None) -> Battles:
    """``n`` battles between random pairs; A wins with BT probability (Elo strengths) plus a length effect.

    ``verbose[m]`` scales model m's response lengths; ``style_coef`` is the log-odds effect per RMS unit of the
    normalised length difference. A tie happens with ``tie_rate`` regardless of strength.
    """
    rng = np.random.default_rng(seed)
    m = len(strengths)
    a = rng.integers(0, m, n)
    b = (a + rng.integers(1, m, n)) % m  # never a self-battle
    verbose = np.ones(m) if verbose is None else verbose
    len_a = rng.lognormal(6.0, 0.5, n) * verbose[a]
    len_b = rng.lognormal(6.0, 0.5, n) * verbose[b]
    s = (len_a - len_b) / (len_a + len_b)
    logit = (strengths[a] - strengths[b]) / ELO + style_coef * s / np.sqrt(np.mean(s ** 2))
    win_a = rng.random(n) < 1 / (1 + np.exp(-logit))
    tie = rng.random(n) < tie_rate
    outcome = np.zeros((n, 3))
    outcome[tie, 2] = 1
    outcome[~tie & win_a, 0] = 1
    outcome[~tie & ~win_a, 1] = 1
    names = np.array([f"m{i:02d}" for i in range(m)], dtype=object)
    noise = rng.poisson(2.0, (n, 3)).astype(float)  # headers, lists, bold: no effect on the outcome
    style_a = np.column_stack([len_a, noise])
    style_b = np.column_stack([len_b, rng.poisson(2.0, (n, 3)).astype(float)])
    return make_battles(names[a], names[b], outcome, style_a=style_a, style_b=style_b,
                        style_names=("length", "headers", "lists", "bold"))


STRENGTHS = np.linspace(0, 400, 12)


def _centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean()


def test_ratings_recover_planted_strengths():
    battles = simulate(20_000, STRENGTHS, seed=1)
    fit = fit_bt(battles, rounds=0)
    planted = STRENGTHS[[int(name[1:]) for name in fit.models]]
    assert spearmanr(fit.rating, planted).statistic >= 0.95
    assert np.abs(_centred(fit.rating) - _centred(planted)).max() < 30
    assert abs(fit.rating.mean() - 1000) < 1e-6  # mean anchored at 1000


def test_ties_count_half_a_win():
    # ties never depend on strength: with ties everywhere, the win share is diluted toward 1/2
    battles = simulate(20_000, STRENGTHS, seed=2, tie_rate=0.5)
    fit = fit_bt(battles, rounds=0)
    spread = np.ptp(fit.rating)
    # P(win share) = 1/4 + p/2: the fitted spread is smaller than planted but the order is kept
    assert spread < 0.8 * np.ptp(STRENGTHS)
    assert spearmanr(fit.rating, STRENGTHS).statistic >= 0.95
    all_ties = make_battles(["x", "y", "z"], ["y", "z", "x"], np.tile([0.0, 0.0, 1.0], (3, 1)))
    assert np.allclose(fit_bt(all_ties, rounds=0).rating, 1000)


def test_swapping_sides_leaves_ratings_unchanged():
    battles = simulate(3_000, STRENGTHS, seed=3, tie_rate=0.2, style_coef=0.4)
    fit, fit_swapped = fit_bt(battles, rounds=5, seed=7), fit_bt(battles.swapped(), rounds=5, seed=7)
    assert np.allclose(fit.rating, fit_swapped.rating, atol=1e-6)
    assert np.allclose(fit.ci[0], fit_swapped.ci[0], atol=1e-6)
    style, style_swapped = fit_style(battles, rounds=0), fit_style(battles.swapped(), rounds=0)
    assert np.allclose(style.fit.rating, style_swapped.fit.rating, atol=1e-3)
    assert np.allclose(style.coef, style_swapped.coef, atol=1e-4)


def test_same_seed_same_intervals_other_seed_differs():
    battles = simulate(2_000, STRENGTHS, seed=4)
    one, two, other = (fit_bt(battles, rounds=10, seed=s) for s in (5, 5, 6))
    assert np.array_equal(one.replicates, two.replicates) and np.array_equal(one.rating, two.rating)
    assert not np.array_equal(one.replicates, other.replicates)


def test_intervals_shrink_as_battles_grow():
    widths = []
    for n in (1_000, 10_000):
        low, high = fit_bt(simulate(n, STRENGTHS, seed=5), rounds=30, seed=0).ci
        widths.append(float(np.mean(high - low)))
    # width ~ 1/sqrt(n): ten times the battles should be about a third as wide
    assert widths[1] < 0.5 * widths[0]
    assert widths[1] > 0


def test_rank_counts_models_clearly_above():
    low = np.array([100.0, 95.0, 50.0, 10.0])
    high = np.array([120.0, 110.0, 90.0, 60.0])
    # model 0 and 1 overlap: both rank 1; model 2 is below both; model 3 overlaps model 2 only
    assert rank_by_intervals(low, high).tolist() == [1, 1, 3, 3]


def test_anchor_model_sits_at_anchor_rating_and_differences_are_kept():
    battles = simulate(3_000, STRENGTHS, seed=6)
    plain = fit_bt(battles, rounds=3, seed=1)
    anchored = fit_bt(battles, rounds=3, seed=1, anchor="m03", anchor_rating=1200)
    i = anchored.models.index("m03")
    assert anchored.rating[i] == pytest.approx(1200)
    assert np.allclose(np.diff(anchored.rating), np.diff(plain.rating))
    assert np.allclose(anchored.replicates[:, i], 1200)
    with pytest.raises(UserError, match="anchor"):
        fit_bt(battles, rounds=0, anchor="nobody")


def test_undefeated_model_gets_a_finite_top_rating():
    # champ never loses; x beats y twice, y beats x once
    names_a = ["champ"] * 5 + ["x", "x", "y"]
    names_b = ["x", "y", "x", "y", "x", "y", "y", "x"]
    outcome = np.array([[1, 0, 0]] * 8, dtype=float)
    fit = fit_bt(make_battles(names_a, names_b, outcome), rounds=5)
    assert np.all(np.isfinite(fit.rating)) and np.all(np.isfinite(fit.replicates))
    rating = dict(zip(fit.models, fit.rating, strict=True))
    assert rating["champ"] > rating["x"] > rating["y"]


def test_soft_outcomes_equal_the_matching_hard_frequencies():
    hard = make_battles(["a"] * 10, ["b"] * 10, np.array([[1, 0, 0]] * 7 + [[0, 1, 0]] * 3, dtype=float))
    soft = make_battles(["a"] * 10, ["b"] * 10, np.tile([0.7, 0.3, 0.0], (10, 1)))
    half = make_battles(["a"] * 10, ["b"] * 10, np.tile([0.4, 0.0, 0.6], (10, 1)))  # 0.4 + 0.6/2 = 0.7
    ratings = [fit_bt(b, rounds=0).rating for b in (hard, soft, half)]
    assert np.allclose(ratings[0], ratings[1]) and np.allclose(ratings[0], ratings[2])
    assert ratings[0][0] > ratings[0][1]


def test_style_control_recovers_a_planted_length_effect():
    verbose = np.ones(len(STRENGTHS))
    verbose[:4] = 3.0  # the four weakest models write three times longer answers
    battles = simulate(12_000, STRENGTHS, seed=8, style_coef=0.5, verbose=verbose)
    style = fit_style(battles, rounds=10, seed=0)
    coefs = {c["feature"]: c for c in style.coefficients()}
    assert coefs["length"]["coef"] == pytest.approx(0.5, abs=0.1)
    assert coefs["length"]["ci_low"] > 0.2  # clearly positive
    for name in ("headers", "lists", "bold"):  # planted without effect
        assert abs(coefs[name]["coef"]) < 0.1
    planted = STRENGTHS[[int(n[1:]) for n in style.fit.models]]
    plain = fit_bt(battles, rounds=0)
    err_style = np.abs(_centred(style.fit.rating) - _centred(planted)).mean()
    err_plain = np.abs(_centred(plain.rating) - _centred(planted)).mean()
    assert err_style < 0.5 * err_plain  # plain BT credits the verbose models with their length


def test_style_counts_markdown():
    text = "# Title\n\nSome **bold** and __more__.\n\n- one\n- two\n1. three\n## Sub\nplain"
    length, headers, lists, bold = style_counts(text)
    assert (length, headers, lists, bold) == (len(text), 2, 3, 2)


def test_online_elo_and_win_rates():
    battles = simulate(5_000, STRENGTHS, seed=9, tie_rate=0.1)
    elo = online_elo(battles, k=4)
    assert spearmanr(elo, STRENGTHS).statistic > 0.9
    rates = win_rates(battles)
    assert rates["battles"].sum() == 2 * len(battles)
    assert np.allclose(rates["wins"] + rates["losses"] + rates["ties"], rates["battles"])
    assert rates["win_rate"].iloc[-1] > rates["win_rate"].iloc[0]
    prob = pairwise_win_prob(np.array([1000.0, 1400.0]))
    assert prob[1, 0] == pytest.approx(10 / 11) and prob[0, 1] == pytest.approx(1 / 11)


def test_compare_leaderboards():
    import pandas as pd

    ours = pd.DataFrame({"model": ["a", "b", "c", "d"], "rating": [1100.0, 1050.0, 1000.0, 900.0]})
    theirs = pd.DataFrame({"model": ["a", "b", "c", "e"], "rating": [1300.0, 1200.0, 1250.0, 1000.0]})
    comp = compare_leaderboards(ours, theirs)
    assert comp["n_common"] == 3 and comp["only_here"] == ["d"] and comp["only_other"] == ["e"]
    assert comp["spearman"] == pytest.approx(0.5)
    diffs = {m["model"]: m["diff"] for m in comp["models"]}
    assert sum(diffs.values()) == pytest.approx(0)  # both re-centred on the common models
    assert diffs["a"] == pytest.approx((1100 - 1050) - (1300 - 1250))


# ------------------------------------------------------------------------------------------------ checks
def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_votes_reader_outcomes_and_both_bad(tmp_path):
    p = _write(tmp_path / "v.csv", "id,model_a,model_b,winner\n1,x,y,model_a\n2,y,x,tie\n3,x,y,both_bad\n"
                                   "4,y,x,model_b\n")
    tie = read_battles(p)
    assert len(tie) == 4 and tie.models == ["x", "y"] and tie.outcome[2].tolist() == [0, 0, 1]
    drop = read_battles(p, both_bad="drop")
    assert len(drop) == 3 and drop.dropped == {"both_bad": 1} and drop.ids == ["1", "2", "4"]


@pytest.mark.parametrize(("body", "match"), [
    ("id,model_a,model_b,winner\n1,x,y,model_a\n2,x,y,left\n", r"v\.csv, row 2, column 'winner': unknown winner 'left'"),
    ("id,model_a,model_b,winner\n1,x,y,model_a\n2,x,x,tie\n", r"row 2, column 'model_b': self-battle: 'x'"),
    ("id,model_a,model_b,winner\n1,,y,model_a\n", r"row 1, column 'model_a': empty model name"),
    ("id,model_b,winner\n1,y,model_a\n", r"column 'model_a': missing column\(s\) model_a:"),
    ("id,model_a,model_b\n1,x,y\n", r"column 'winner': no outcome column"),
    ("id,model_a,model_b,winner\n", r"header but no rows"),
])
def test_votes_reader_errors_name_file_row_column(tmp_path, body, match):
    with pytest.raises(DataError, match=match):
        read_battles(_write(tmp_path / "v.csv", body))


def test_skip_invalid_drops_and_counts(tmp_path):
    p = _write(tmp_path / "v.csv", "model_a,model_b,winner\nx,y,model_a\nx,x,tie\nx,y,??\ny,x,model_b\n")
    battles = read_battles(p, skip_invalid=True)
    assert len(battles) == 2 and battles.dropped == {"self-battle": 1, "unknown winner": 1}


def test_rare_models_kept_flagged_dropped_or_refused():
    names_a = ["x"] * 30 + ["rare"]
    names_b = ["y"] * 30 + ["x"]
    outcome = np.tile([1.0, 0.0, 0.0], (31, 1))
    outcome[::2] = [0.0, 1.0, 0.0]
    kept = apply_min_battles(make_battles(names_a, names_b, outcome), 5, "keep")
    assert kept.n_models == 3 and "rare" in kept.flags and "x" not in kept.flags
    dropped = apply_min_battles(make_battles(names_a, names_b, outcome), 5, "drop")
    assert dropped.models == ["x", "y"] and dropped.dropped == {"rare model": 1} and len(dropped) == 30
    with pytest.raises(DataError, match=r"model 'rare' has only 1 battle\(s\)"):
        apply_min_battles(make_battles(names_a, names_b, outcome), 5, "error")


def test_disconnected_groups_are_refused():
    battles = make_battles(["a", "c", "a"], ["b", "d", "b"], np.tile([1.0, 0.0, 0.0], (3, 1)))
    with pytest.raises(DataError, match="2 groups that never meet"):
        check_connected(battles)
    check_connected(make_battles(["a", "b"], ["b", "c"], np.tile([1.0, 0.0, 0.0], (2, 1))))


def test_battles_from_pairs_need_model_names_and_compute_style():
    turns = (Turn("q", "## A\n- one\n- two", "short"),)
    pairs = [Pair(id="1", turns=turns, label=(1.0, 0.0, 0.0), model_a="x", model_b="y"),
             Pair(id="2", turns=turns, label=(0.0, 0.0, 1.0), model_a="y", model_b="x")]
    battles = battles_from_pairs(pairs, path="p.jsonl")
    assert battles.has_style and battles.style_a[0].tolist() == style_counts("## A\n- one\n- two")
    with pytest.raises(DataError, match=r"p\.jsonl, column 'model_a': no model_a/model_b columns"):
        battles_from_pairs([Pair(id="1", turns=turns, label=(1.0, 0.0, 0.0))], path="p.jsonl")


@pytest.mark.parametrize("method", ["bt", "style"])
def test_a_model_missing_from_a_resample_does_not_pin_its_interval(method):
    """A model with 2 battles is absent from ~13% of bootstrap resamples; there its refit rating is only the
    fit's default (the mean: exactly 1000), which pinned the style interval's lower end at 1000.0. Those
    replicates are left out of its interval, and nobody else's changes."""
    from prefpred.leaderboard.ratings import absent_in, bootstrap_counts

    many = simulate(1500, STRENGTHS, seed=11, style_coef=0.3)
    rare_a, rare_b = np.array(["rare", "m00"], dtype=object), np.array(["m05", "rare"], dtype=object)
    names_a = np.concatenate([np.asarray(many.models, dtype=object)[many.a], rare_a])
    names_b = np.concatenate([np.asarray(many.models, dtype=object)[many.b], rare_b])
    outcome = np.vstack([many.outcome, [[1, 0, 0], [0, 1, 0]]])  # "rare" won both
    style_a = np.vstack([many.style_a, [[500, 1, 1, 1], [400, 0, 2, 1]]])
    style_b = np.vstack([many.style_b, [[450, 2, 1, 0], [700, 1, 1, 1]]])
    battles = make_battles(names_a, names_b, outcome, style_a=style_a, style_b=style_b,
                           style_names=many.style_names)
    rare = battles.models.index("rare")
    fit = (fit_bt(battles, rounds=60, seed=4) if method == "bt" else fit_style(battles, rounds=60, seed=4).fit)
    absent = np.array([absent_in(battles, c)[rare] for c in bootstrap_counts(len(battles), 60, 4)])
    assert 0 < absent.sum() < 60  # the situation: missing from some resamples
    assert np.isnan(fit.replicates[absent, rare]).all() and not np.isnan(fit.replicates[~absent, rare]).any()
    low, high = fit.ci
    assert np.isfinite(low).all() and np.isfinite(high).all()
    assert low[rare] == pytest.approx(np.percentile(fit.replicates[~absent, rare], 2.5))
    assert not np.isclose(low[rare], 1000.0)  # not the mean anchor it used to sit on
    assert not np.isnan(np.delete(fit.replicates, rare, axis=1)).any()  # the others always had battles
