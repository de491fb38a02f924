"""Pair features: exact swap (anti)symmetry, meaningful values, persistence, chunking."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import clone

from prefpred.features import PairFeaturizer, Tfidf, text_stats
from prefpred.testing import planted_pairs
from prefpred.types import Pair, Turn, one_hot


def _col(f: PairFeaturizer, X: np.ndarray, name: str) -> np.ndarray:
    return X[:, f.feature_names_.index(name)]


def _edge_pairs() -> list[Pair]:
    md = "## Title\n\n- **one** item\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```py\nprint(1)\n```\nDone."
    return [
        Pair("e1", (Turn("Say hi", "", "Hi!"),), one_hot("b")),
        Pair("e2", (Turn("Explain tables", md, "I'm sorry, but I can't help with that."),), one_hot("a")),
        Pair("e3", (Turn("same?", "Same answer.", "Same answer."),), one_hot("tie")),
        Pair(
            "e4",
            (
                Turn("Привет, как дела?", "Хорошо, спасибо! 😊", "As an AI, I do not have feelings."),
                Turn("", "second", "second turn reply"),
            ),
            one_hot("tie"),
        ),
    ]


def test_swap_gives_exact_sign_flip():
    pairs = planted_pairs(300, seed=3) + _edge_pairs()
    f = PairFeaturizer().fit(pairs)
    X = f.transform(pairs)
    Xs = f.transform([p.swapped() for p in pairs])
    sign = np.where(f.antisymmetric_, -1.0, 1.0)
    assert X.shape == (len(pairs), len(f.feature_names_)) == Xs.shape
    assert np.isfinite(X).all()
    assert np.array_equal(Xs, X * sign)  # exact, not approximately
    assert f.antisymmetric_.any() and (~f.antisymmetric_).any()
    assert len(set(f.feature_names_)) == len(f.feature_names_)
    # antisymmetric features really vary (they are not all zero), symmetric ones are not all constant
    assert (np.abs(X[:, f.antisymmetric_]).sum(axis=0) > 0).mean() > 0.8


def test_feature_values_follow_the_texts():
    pairs = _edge_pairs()
    f = PairFeaturizer(min_df=1).fit(pairs)
    X = f.transform(pairs)
    assert _col(f, X, "diff_chars")[0] < 0  # A is empty, B is not
    assert _col(f, X, "diff_empty")[0] == 1
    assert _col(f, X, "diff_refusal")[1] == -1  # B refuses
    assert _col(f, X, "diff_apology")[1] == -1
    assert _col(f, X, "logratio_headers")[1] > 0 and _col(f, X, "logratio_table_rows")[1] > 0
    assert _col(f, X, "logratio_code_blocks")[1] > 0 and _col(f, X, "logratio_bold")[1] > 0
    assert _col(f, X, "identical")[2] == 1 and _col(f, X, "near_identical")[2] == 1
    assert _col(f, X, "cos_ab")[2] == pytest.approx(1.0)
    assert _col(f, X, "identical")[1] == 0
    assert _col(f, X, "n_turns").tolist() == [1, 1, 1, 2]
    assert _col(f, X, "identical_turns_frac")[3] == 0
    assert _col(f, X, "diff_as_an_ai")[3] == -1


def test_prompt_overlap_and_similarity():
    prompt = "describe the water cycle evaporation condensation precipitation"
    on_topic = "The water cycle: evaporation, then condensation, then precipitation."
    off_topic = "Bananas are yellow and taste sweet."
    pairs = [
        Pair("1", (Turn(prompt, on_topic, off_topic),), one_hot("a")),
        Pair("2", (Turn("other text here", "more words", "words more"),), one_hot("b")),
    ]
    f = PairFeaturizer(min_df=1).fit(pairs)
    X = f.transform(pairs[:1])
    assert _col(f, X, "diff_prompt_cos")[0] > 0.3
    assert _col(f, X, "diff_prompt_recall")[0] > 0.5
    assert _col(f, X, "diff_prompt_precision")[0] > 0.3


def test_text_stats_counts():
    stats, words = text_stats("# Head\n\n1. one\n2. two\n\nSee https://x.org now? Yes!")
    from prefpred.features import _PER_TEXT

    s = dict(zip(_PER_TEXT, stats, strict=True))
    assert s["headers"] == 1 and s["list_items"] == 2 and s["urls"] == 1
    assert s["questions"] == 1 and s["exclamations"] == 1 and s["paragraphs"] == 3
    assert s["tokens"] >= s["words"]
    assert words[:2] == ["head", "1"]
    empty, _ = text_stats("")
    assert dict(zip(_PER_TEXT, empty, strict=True))["empty"] == 1


def test_state_round_trip_and_chunking_are_exact():
    pairs = planted_pairs(120, seed=5) + _edge_pairs()
    f = PairFeaturizer(max_tfidf_features=300).fit(pairs)
    X = f.transform(pairs)
    state = json.loads(json.dumps(f.get_state()))
    g = PairFeaturizer.from_state(state)
    assert np.array_equal(g.transform(pairs), X)
    g.chunk_size = 7  # rows are independent of their neighbours
    assert np.array_equal(g.transform(pairs), X)
    assert len(f.tfidf_.terms_) <= 300
    assert f.get_feature_names_out().tolist() == f.feature_names_
    assert clone(f).get_params() == f.get_params()


def test_tfidf_matches_scikit_learn():
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = [d.split() for d in ("a b b c", "b c d", "d d e a", "", "z")]
    ours = Tfidf(min_df=1).fit(docs).transform(docs).toarray()
    ref = TfidfVectorizer(analyzer=lambda d: d, sublinear_tf=True).fit(docs)
    ref_x = ref.transform(docs).toarray()
    order = [ref.vocabulary_[t] for t in Tfidf(min_df=1).fit(docs).terms_]
    np.testing.assert_allclose(ours, ref_x[:, order], atol=1e-12)


def test_tfidf_rows_without_known_terms_anywhere():
    tfidf = Tfidf(min_df=1).fit([["a", "b"], ["b", "c"]])
    x = tfidf.transform([["zz"], ["a"], ["unknown"], []]).toarray()  # empty rows in the middle and at the end
    assert x.shape[0] == 4 and not x[[0, 2, 3]].any()
    np.testing.assert_allclose(np.linalg.norm(x[1]), 1.0)
    assert not tfidf.transform([["zz"], []]).toarray().any()


def test_unfitted_and_empty():
    with pytest.raises(RuntimeError, match="not fitted"):
        PairFeaturizer().transform(planted_pairs(2))
    f = PairFeaturizer().fit(planted_pairs(20))
    assert f.transform([]).shape == (0, len(f.feature_names_))
    only_empty = [Pair("x", (Turn("", "", ""),), one_hot("tie"))]
    g = PairFeaturizer().fit(only_empty)
    assert np.isfinite(g.transform(only_empty)).all()


def test_worker_processes_give_the_same_matrix():
    pairs = planted_pairs(60, seed=9)
    f = PairFeaturizer(chunk_size=15).fit(pairs)
    X = f.transform(pairs)
    f.n_jobs = 2  # 4 chunks -> a spawned process pool
    assert np.array_equal(f.transform(pairs), X)
