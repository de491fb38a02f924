"""The judge's fast path: the prefix cache where it pays (current Cache API), the reference paths of
``bench inference`` (naive loop, body-only roofline) and the progress lines of long jobs."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from prefpred.inference import InferenceConfig, engine, score_pairs
from prefpred.inference.bench import compare_paths, reference_paths
from prefpred.prompts import get_style
from prefpred.testing import planted_pairs


def _cfg(**kw) -> InferenceConfig:
    return InferenceConfig(**{"max_length": 800, "token_budget": 4096, "num_workers": 0, "progress": False, **kw})


def test_cache_pays_only_when_the_prefix_is_a_real_share():
    seqs = [np.zeros(100, dtype=np.int32), np.zeros(300, dtype=np.int32)]
    assert engine.cache_pays(50, seqs)
    assert not engine.cache_pays(5, seqs)  # 5 of a mean 200 tokens: below MIN_PREFIX_SHARE
    assert not engine.cache_pays(0, seqs) and not engine.cache_pays(10, [])


def test_batches_skip_the_cache_where_it_does_not_pay(tok, lm, monkeypatch):
    pairs = planted_pairs(6, seed=1)
    style = get_style("criteria-10")
    used: dict = {}
    on = score_pairs(pairs, lm, tok, style, config=_cfg(), stats=used)
    monkeypatch.setattr(engine, "MIN_PREFIX_SHARE", 1.0)
    skipped: dict = {}
    off = score_pairs(pairs, lm, tok, style, config=_cfg(), stats=skipped)
    assert used["computed_tokens"] < skipped["computed_tokens"] == skipped["padded_tokens"]
    np.testing.assert_allclose(on, off, atol=1e-5)


def test_prefix_cache_uses_the_current_cache_argument(tok, lm):
    class Old:
        def forward(self, input_ids=None, past_key_values=None):  # pragma: no cover - never called
            return None

    assert engine.cache_kwarg(lm) == "cache"
    assert engine.cache_kwarg(Old()) == "past_key_values"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers warns on the deprecated past_key_values
        stats: dict = {}
        score_pairs(planted_pairs(4, seed=2), lm, tok, get_style("criteria-10"), config=_cfg(), stats=stats)
    assert stats["prefix_tokens"] > 0


def test_reference_paths_agree_with_the_judge(tok, lm):
    pairs = planted_pairs(5, seed=3)
    style = get_style("seed-digits")
    judge = score_pairs(pairs, lm, tok, style, config=_cfg())
    probs, stats = reference_paths(pairs, lm, tok, style, config=_cfg())
    np.testing.assert_allclose(probs["naive"], judge, atol=1e-5)
    assert set(stats) == {"naive", "roofline"} and "roofline" not in probs
    assert stats["naive"]["sequences"] == 10 and stats["roofline"]["tokens"] == stats["naive"]["tokens"] > 0


def test_compare_paths_reports_judge_vs_naive_and_roofline(tok, lm):
    res = compare_paths(planted_pairs(4, seed=5), lm, tok, get_style("seed-digits"), config=_cfg(), warmup=0,
                        paths=("bucketed", "naive", "roofline"))
    assert set(res["paths"]) == {"bucketed", "naive", "roofline"}
    for key in ("judge_vs_naive", "judge_vs_naive_cpu", "judge_vs_roofline"):
        assert res[key] is not None and res[key] > 0
    assert res["max_abs_diff"] < 1e-5
    assert all(s["tokens_per_cpu_s"] for s in res["paths"].values())


def test_progress_lines_name_pairs_rate_and_eta(caplog):
    class B:
        def __init__(self, n):
            self.index = range(n)

    with caplog.at_level(logging.INFO, logger="prefpred.inference.engine"):
        items = list(engine.ProgressLog(iter([B(4), B(4), B(2)]), 10, per_pair=2, first=0.0, every=0.0))
    assert len(items) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all("pairs/s" in x and "ETA" in x for x in lines)
    assert lines[0].startswith("scoring: 2/5 pairs") and lines[-1].startswith("scoring: 5/5 pairs")


def test_quiet_progress_for_short_jobs(caplog):
    class B:
        index = range(3)

    with caplog.at_level(logging.INFO, logger="prefpred.inference.engine"):
        list(engine.ProgressLog(iter([B(), B()]), 6))
    assert not caplog.records
