"""Hand-made features of a pair, symmetric by construction.

:class:`PairFeaturizer` describes each response (length, markdown structure, refusals, overlap with the
prompt, TF-IDF similarity to the prompt, ...) and combines the two descriptions into two blocks:

* **antisymmetric** features (``A - B`` differences, log ratios): they change sign, exactly, when A and B are
  swapped;
* **symmetric** features (sums, ``|A - B|``, similarity between A and B, prompt features, number of turns):
  unchanged by a swap.

So ``transform([p.swapped() for p in pairs]) == transform(pairs) * np.where(antisymmetric_, -1, 1)`` holds
exactly, which lets a model train on mirrored pairs without featurizing twice and lets swap averaging at
prediction time be computed from one feature matrix. Only the TF-IDF vocabulary is learned in :meth:`fit`.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import re
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import chain, repeat
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from tqdm.auto import tqdm

from prefpred.types import Pair

logger = logging.getLogger(__name__)

# --- per-text statistics -----------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_HEADER = re.compile(r"^\s{0,3}#{1,6}\s", re.M)
_LIST_ITEM = re.compile(r"^\s*(?:[-*+\u2022]|\d{1,3}[.)])\s", re.M)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$", re.M)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"[.!?\u3002](?:\s|$)")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_REFUSAL = re.compile(  # matched against the lower-cased start of a response
    r"\b(?:i\s+(?:can(?:no|')?t|cannot|am\s+(?:not\s+able|unable)|'m\s+(?:not\s+able|unable)|won't|will\s+not)"
    r"\s+(?:help|assist|provide|fulfil|comply|do\s+that|create|generate|write|answer|engage|support)"
    r"|as\s+an?\s+(?:ai|artificial\s+intelligence|language\s+model)"
    r"|i\s+(?:do\s+not|don't)\s+have\s+(?:access|the\s+ability|personal|real-time)"
    r"|not\s+(?:appropriate|able\s+to\s+(?:help|assist|provide))|against\s+my\s+(?:programming|guidelines))"
)
_REFUSAL_HINTS = ("i ", "as a", "not ", "against")
_APOLOGY = re.compile(r"\b(?:sorry|apologi[sz]e|apologies|unfortunately)\b")
_APOLOGY_HINTS = ("sorry", "apolog", "unfortunately")
_AS_AN_AI = re.compile(r"\bas\s+an?\s+(?:ai|artificial\s+intelligence|language\s+model|llm)\b")

COUNT_STATS = (
    "chars",
    "words",
    "tokens",
    "lines",
    "paragraphs",
    "sentences",
    "headers",
    "list_items",
    "bold",
    "code_blocks",
    "inline_code",
    "table_rows",
    "numbers",
    "urls",
    "questions",
    "exclamations",
    "unique_words",
)
"""Non-negative counts: antisymmetric ``log1p`` ratio (and raw difference for lengths); symmetric log sum and
absolute log ratio."""
RATE_STATS = ("unique_word_ratio", "mean_word_len", "words_per_sentence", "newline_density")
"""Scale-free rates: antisymmetric difference; symmetric mean and absolute difference."""
FLAG_STATS = ("empty", "refusal", "apology", "as_an_ai", "ends_cleanly")
"""0/1 flags: antisymmetric difference; symmetric sum (0, 1 or 2 responses have it)."""
_LENGTH_STATS = ("chars", "words", "tokens")
_PER_TEXT = COUNT_STATS + RATE_STATS + FLAG_STATS
PROMPT_STATS = ("chars", "words", "lines", "questions", "code_blocks", "list_items", "numbers")
"""Prompt statistics kept as (symmetric) features, ``log1p``-scaled."""


def text_stats(text: str) -> tuple[list[float], list[str]]:
    """Statistics of one text in the order of ``_PER_TEXT``, and its lower-cased words (``\\w+`` runs)."""
    text = text or ""
    stripped = text.strip()
    n_chars = len(text)
    pieces = text.split()  # whitespace-separated words
    n_words = len(pieces)
    lower = text.lower()
    tokens = _WORD.findall(lower)
    n_w = len(tokens)
    word_chars = sum(map(len, tokens))
    nonspace = sum(map(len, pieces))
    # rough word-piece count (~ BPE tokens): one per word, one more per 4 characters beyond an average of 4,
    # plus one per punctuation/symbol character
    n_pieces = n_w + max(word_chars - 4 * n_w, 0) // 4 + max(nonspace - word_chars, 0)
    n_unique = len(set(tokens))
    n_newlines = text.count("\n")
    sentences = len(_SENTENCE_END.findall(text)) + (1 if stripped and stripped[-1] not in ".!?\u3002" else 0)
    counts = [
        n_chars,
        n_words,
        n_pieces,
        n_newlines + 1 if stripped else 0,
        len(_PARAGRAPH_BREAK.findall(stripped)) + 1 if stripped else 0,
        sentences,
        len(_HEADER.findall(text)) if "#" in text else 0,
        len(_LIST_ITEM.findall(text)),
        len(_BOLD.findall(text)) if "**" in text or "__" in text else 0,
        text.count("```") // 2,
        len(_INLINE_CODE.findall(text)) if "`" in text else 0,
        len(_TABLE_ROW.findall(text)) if "|" in text else 0,
        len(_NUMBER.findall(text)),
        lower.count("http://") + lower.count("https://") + lower.count("www."),
        text.count("?"),
        text.count("!"),
        n_unique,
    ]
    rates = [
        n_unique / n_w if n_w else 0.0,
        word_chars / n_w if n_w else 0.0,
        n_words / sentences if sentences else 0.0,
        n_newlines / n_chars * 100.0 if n_chars else 0.0,
    ]
    head = lower[:400]
    flags = [
        0 if stripped else 1,
        1 if any(h in head for h in _REFUSAL_HINTS) and _REFUSAL.search(head) else 0,
        1 if any(h in head for h in _APOLOGY_HINTS) and _APOLOGY.search(head) else 0,
        1 if "as a" in lower and _AS_AN_AI.search(lower, 0, 2000) else 0,
        1 if stripped and stripped[-1] in ".!?)]}\"'`*\u3002" else 0,
    ]
    return [float(v) for v in counts + rates + flags], tokens


class Tfidf:
    """A small, fast TF-IDF model over pre-tokenized documents (lists of lower-cased words).

    Same weighting as scikit-learn's ``TfidfVectorizer(sublinear_tf=True)`` (smoothed idf, L2-normalized
    rows), but the per-token work is done by C-level ``map``/``numpy`` calls, and the state is a plain word
    list plus idf weights (JSON-friendly).
    """

    def __init__(self, max_features: int = 50_000, min_df: int = 2):
        self.max_features = max_features
        self.min_df = min_df

    def fit(self, docs: Sequence[list[str]]) -> Tfidf:
        df: Counter[str] = Counter()
        total: Counter[str] = Counter()
        for words in docs:
            total.update(words)
            df.update(set(words))
        min_df = self.min_df if len(docs) >= 3 * self.min_df else 1
        terms = [t for t, c in df.items() if c >= min_df]
        terms.sort(key=lambda t: (-total[t], t))
        terms = sorted(terms[: self.max_features])
        n = len(docs)
        idf = np.log((1.0 + n) / (1.0 + np.asarray([df[t] for t in terms], dtype=np.float64))) + 1.0
        self.set_vocabulary(terms, idf)
        return self

    def set_vocabulary(self, terms: Sequence[str], idf: Sequence[float]) -> Tfidf:
        self.terms_ = list(terms)
        self.idf_ = np.asarray(idf, dtype=np.float64)
        self.index_ = {t: i for i, t in enumerate(self.terms_)}
        return self

    def transform(self, docs: Sequence[list[str]]) -> sparse.csr_matrix:
        """L2-normalized sublinear TF-IDF rows with sorted column indices."""
        get = self.index_.get
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        cols = np.fromiter(
            chain.from_iterable(map(get, d, repeat(-1, len(d))) for d in docs),
            dtype=np.int64,
            count=int(lengths.sum()),
        )
        rows = np.repeat(np.arange(len(docs), dtype=np.int64), lengths)
        keep = cols >= 0
        x = sparse.coo_matrix(
            (np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(len(docs), max(len(self.terms_), 1))
        ).tocsr()
        x.sum_duplicates()
        x.sort_indices()
        x.data = (1.0 + np.log(x.data)) * self.idf_[x.indices]
        per_row = np.diff(x.indptr)
        # bincount, not add.reduceat: reduceat fails when the last rows have no known term
        row_norm = np.sqrt(np.bincount(np.repeat(np.arange(len(docs)), per_row), weights=x.data**2,
                                       minlength=len(docs)))
        x.data /= np.repeat(np.where(row_norm > 0, row_norm, 1.0), per_row)
        return x


def _overlap(a: frozenset[str], b: frozenset[str]) -> float:
    """Share of ``b``'s words that also occur in ``a`` (0 when ``b`` is empty)."""
    return len(a & b) / len(b) if b else 0.0


def _rowwise_dot(x: sparse.csr_matrix, y: sparse.csr_matrix) -> np.ndarray:
    """Row-wise dot products of two L2-normalized CSR matrices (cosine similarities)."""
    return np.asarray(x.multiply(y).sum(axis=1), dtype=np.float64).ravel()


class PairFeaturizer(TransformerMixin, BaseEstimator):
    """Scikit-learn style transformer from :class:`~prefpred.types.Pair` lists to a feature matrix.

    Args:
        max_tfidf_features: Vocabulary size of the TF-IDF model used for prompt/response similarities.
        min_df: Minimum document frequency of a TF-IDF term.
        n_jobs: Worker processes for :meth:`transform` on more than two chunks of pairs (1 = in process).
        chunk_size: Pairs per chunk (rows are independent, so chunking never changes the result).

    After :meth:`fit`: ``feature_names_`` (list of str) and ``antisymmetric_`` (bool array, True for features
    that change sign when A and B are swapped).
    """

    def __init__(
        self, max_tfidf_features: int = 50_000, min_df: int = 2, n_jobs: int = 1, chunk_size: int = 4096
    ):
        self.max_tfidf_features = max_tfidf_features
        self.min_df = min_df
        self.n_jobs = n_jobs
        self.chunk_size = chunk_size

    # --- fitting --------------------------------------------------------------------------------------------
    def fit(self, pairs: Sequence[Pair], y: Any = None) -> PairFeaturizer:
        """Learn the TF-IDF vocabulary from the pairs' prompts and both responses."""
        docs = [_WORD.findall(t.lower()) for p in pairs for t in (p.text_prompt(), p.text_a(), p.text_b())]
        self.tfidf_ = Tfidf(self.max_tfidf_features, self.min_df).fit(docs)
        self.feature_names_, self.antisymmetric_ = self._layout()
        return self

    def fit_transform(self, pairs: Sequence[Pair], y: Any = None) -> np.ndarray:
        return self.fit(pairs).transform(pairs)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(self.feature_names_, dtype=object)

    @staticmethod
    def _layout() -> tuple[list[str], np.ndarray]:
        names: list[str] = []
        anti: list[bool] = []

        def add(name: str, antisymmetric: bool) -> None:
            names.append(name)
            anti.append(antisymmetric)

        for s in COUNT_STATS:
            add(f"logratio_{s}", True)
            if s in _LENGTH_STATS:
                add(f"diff_{s}", True)
                add(f"reldiff_{s}", True)
        for s in RATE_STATS:
            add(f"diff_{s}", True)
        for s in FLAG_STATS:
            add(f"diff_{s}", True)
        for s in ("prompt_cos", "prompt_recall", "prompt_precision"):
            add(f"diff_{s}", True)
        for s in COUNT_STATS:
            add(f"logsum_{s}", False)
            add(f"abslogratio_{s}", False)
        for s in RATE_STATS:
            add(f"mean_{s}", False)
            add(f"absdiff_{s}", False)
        for s in FLAG_STATS:
            add(f"sum_{s}", False)
        for s in ("prompt_cos", "prompt_recall", "prompt_precision"):
            add(f"mean_{s}", False)
            add(f"absdiff_{s}", False)
        for s in PROMPT_STATS:
            add(f"prompt_{s}", False)
        for s in (
            "n_turns",
            "cos_ab",
            "jaccard_ab",
            "identical",
            "near_identical",
            "identical_turns_frac",
            "min_max_chars_ratio",
        ):
            add(s, False)
        return names, np.asarray(anti, dtype=bool)

    # --- transforming ---------------------------------------------------------------------------------------
    def transform(self, pairs: Sequence[Pair]) -> np.ndarray:
        """``n x len(feature_names_)`` float64 matrix (rows are computed independently of each other)."""
        if not hasattr(self, "tfidf_"):
            raise RuntimeError("PairFeaturizer is not fitted: call fit(pairs) first")
        t0 = time.perf_counter()
        pairs = list(pairs)
        size = max(int(self.chunk_size), 1)
        chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
        if not chunks:
            return np.zeros((0, len(self.feature_names_)))
        if self.n_jobs > 1 and len(chunks) > 2:
            ctx = multiprocessing.get_context("spawn")  # safe next to torch/threads, unlike fork
            with ProcessPoolExecutor(max_workers=min(self.n_jobs, len(chunks)), mp_context=ctx) as pool:
                parts = list(pool.map(self._transform_chunk, chunks))
        else:
            parts = [
                self._transform_chunk(c)
                for c in tqdm(
                    chunks, desc="features", unit="chunk", disable=len(chunks) < 4 or None, leave=False
                )
            ]
        X = np.vstack(parts)
        logger.debug("featurized %d pairs in %.2fs", len(pairs), time.perf_counter() - t0)
        return X

    def _transform_chunk(self, pairs: list[Pair]) -> np.ndarray:
        gc_was_enabled = gc.isenabled()
        gc.disable()  # millions of short-lived containers: the cyclic GC would dominate the run time
        try:
            return self._features(pairs)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _features(self, pairs: list[Pair]) -> np.ndarray:
        n = len(pairs)
        prompts = [p.text_prompt() for p in pairs]
        texts_a = [p.text_a() for p in pairs]
        texts_b = [p.text_b() for p in pairs]

        sa, wa = zip(*(text_stats(t) for t in texts_a), strict=True)
        sb, wb = zip(*(text_stats(t) for t in texts_b), strict=True)
        sp, wp = zip(*(text_stats(t) for t in prompts), strict=True)
        set_a, set_b, set_p = ([frozenset(w) for w in ws] for ws in (wa, wb, wp))
        A = np.asarray(sa, dtype=np.float64)
        B = np.asarray(sb, dtype=np.float64)
        P = np.asarray(sp, dtype=np.float64)

        tf = self.tfidf_.transform(list(wp) + list(wa) + list(wb)).tocsr()
        tf.sort_indices()
        xp, xa, xb = tf[:n], tf[n : 2 * n], tf[2 * n :]
        sim_a = np.column_stack(
            [
                _rowwise_dot(xp, xa),
                [_overlap(r, q) for r, q in zip(set_a, set_p, strict=True)],
                [_overlap(q, r) for r, q in zip(set_a, set_p, strict=True)],
            ]
        )
        sim_b = np.column_stack(
            [
                _rowwise_dot(xp, xb),
                [_overlap(r, q) for r, q in zip(set_b, set_p, strict=True)],
                [_overlap(q, r) for r, q in zip(set_b, set_p, strict=True)],
            ]
        )
        cos_ab = _rowwise_dot(xa, xb)

        idx = {s: i for i, s in enumerate(_PER_TEXT)}
        cols: list[np.ndarray] = []
        # antisymmetric block
        for s in COUNT_STATS:
            a, b = A[:, idx[s]], B[:, idx[s]]
            cols.append(np.log1p(a) - np.log1p(b))
            if s in _LENGTH_STATS:
                cols.append(a - b)
                cols.append((a - b) / (a + b + 1.0))
        for s in RATE_STATS + FLAG_STATS:
            cols.append(A[:, idx[s]] - B[:, idx[s]])
        for k in range(3):
            cols.append(sim_a[:, k] - sim_b[:, k])
        # symmetric block
        for s in COUNT_STATS:
            a, b = A[:, idx[s]], B[:, idx[s]]
            cols.append(np.log1p(a + b))
            cols.append(np.abs(np.log1p(a) - np.log1p(b)))
        for s in RATE_STATS:
            a, b = A[:, idx[s]], B[:, idx[s]]
            cols.append((a + b) / 2.0)
            cols.append(np.abs(a - b))
        for s in FLAG_STATS:
            cols.append(A[:, idx[s]] + B[:, idx[s]])
        for k in range(3):
            cols.append((sim_a[:, k] + sim_b[:, k]) / 2.0)
            cols.append(np.abs(sim_a[:, k] - sim_b[:, k]))
        for s in PROMPT_STATS:
            cols.append(np.log1p(P[:, idx[s]]))
        chars_a, chars_b = A[:, idx["chars"]], B[:, idx["chars"]]
        identical = np.asarray(
            [a.strip() == b.strip() for a, b in zip(texts_a, texts_b, strict=True)], dtype=np.float64
        )
        ratio = np.minimum(chars_a, chars_b) / np.maximum(np.maximum(chars_a, chars_b), 1.0)
        cols.append(np.asarray([len(p.turns) for p in pairs], dtype=np.float64))
        cols.append(cos_ab)
        cols.append(
            np.asarray(
                [len(a & b) / len(a | b) if (a or b) else 1.0 for a, b in zip(set_a, set_b, strict=True)]
            )
        )
        cols.append(identical)
        cols.append(np.maximum(identical, ((cos_ab >= 0.9) & (ratio >= 0.9)).astype(np.float64)))
        cols.append(
            np.asarray(
                [
                    sum(t.response_a.strip() == t.response_b.strip() for t in p.turns) / max(len(p.turns), 1)
                    for p in pairs
                ]
            )
        )
        cols.append(ratio)
        X = np.column_stack(cols)
        if X.shape[1] != len(self.feature_names_):  # pragma: no cover - guards the layout above
            raise AssertionError(f"feature layout mismatch: {X.shape[1]} != {len(self.feature_names_)}")
        return X

    # --- persistence ----------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """JSON-serializable state (parameters, TF-IDF vocabulary and idf weights)."""
        return {
            "max_tfidf_features": self.max_tfidf_features,
            "min_df": self.min_df,
            "terms": self.tfidf_.terms_,
            "idf": self.tfidf_.idf_.tolist(),
            "feature_names": self.feature_names_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PairFeaturizer:
        """Rebuild a fitted featurizer from :meth:`get_state` output."""
        self = cls(max_tfidf_features=state["max_tfidf_features"], min_df=state["min_df"])
        self.tfidf_ = Tfidf(self.max_tfidf_features, self.min_df).set_vocabulary(state["terms"], state["idf"])
        self.feature_names_, self.antisymmetric_ = self._layout()
        if state.get("feature_names") and list(state["feature_names"]) != self.feature_names_:
            raise ValueError("saved featurizer has a different feature layout than this version of prefpred")
        return self
