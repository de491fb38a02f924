"""The CPU preference model: symmetric hand-made features + LightGBM, trained in seconds.

Two layers:

* :class:`LGBMPreferenceClassifier`, a scikit-learn classifier on a numeric feature matrix. Given the
  ``antisymmetric`` mask of the features it can train on every row and its A/B mirror (``X * sign`` with the
  labels ``a`` and ``b`` exchanged) and average each prediction with the mirrored prediction of the mirrored
  row, which makes ``p(swap(x)) == mirror(p(x))`` hold exactly.
* :class:`CPUPreferenceModel` (kind ``cpu``), the :class:`~prefpred.models.base.PreferenceModel` on pairs:
  :class:`~prefpred.features.PairFeaturizer` (+ optional :class:`~prefpred.embeddings.EmbeddingFeaturizer`)
  and the classifier. Soft labels and pair weights are honoured by replicating each pair once per class with
  weight ``p_k * weight``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import lightgbm as lgb
import numpy as np
from pydantic import Field
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from prefpred.config import Device, NonNegativeInt, PositiveInt, config_dataclass, from_dict, to_dict
from prefpred.features import PairFeaturizer
from prefpred.models.base import PreferenceModel, register_model
from prefpred.types import LABELS, DataError, Pair, label_matrix
from prefpred.utils import atomic_write_text

logger = logging.getLogger(__name__)

BOOSTER_FILE = "lightgbm.txt"
_BOOSTER_HEAD = b"tree\n"  # how LightGBM's text model format starts


def _load_booster(path: Path) -> lgb.Booster:
    """Load a saved booster; a file that is not LightGBM's text format is refused here, since LightGBM itself
    writes its own ``[LightGBM] [Fatal]`` line straight to the process's stderr before raising."""
    with open(path, "rb") as f:
        if f.read(len(_BOOSTER_HEAD)) != _BOOSTER_HEAD:
            raise ValueError(f"{path.name} is not a LightGBM text model (it does not start with 'tree')")
    return lgb.Booster(model_file=str(path))
_ROWS_PER_THREAD = 20_000
STATE_FILE = "cpu_model.json"


@config_dataclass
class CPUModelConfig:
    """LightGBM and feature settings of the CPU model (defaults tuned for small, noisy data)."""

    n_estimators: PositiveInt = 200
    """Maximum number of boosting rounds (exactly this many without an eval set / early stopping). The
    default suits a few thousand pairs; raise it for more data (with ``eval_pairs`` early stopping picks the
    count)."""
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 0.02
    """Shrinkage per round."""
    num_leaves: Annotated[int, Field(ge=2)] = 8
    """Maximum leaves per tree."""
    max_depth: int = 4
    """Maximum tree depth (-1 = unlimited)."""
    min_child_samples: int = 40
    """Minimum rows in a leaf (counts swap-augmented rows too)."""
    subsample: Annotated[float, Field(gt=0, le=1)] = 0.8
    """Row fraction sampled for each tree (bagging)."""
    subsample_freq: int = 1
    """Re-sample rows every this many rounds (0 = no bagging)."""
    colsample_bytree: Annotated[float, Field(gt=0, le=1)] = 0.5
    """Feature fraction sampled for each tree."""
    reg_lambda: float = 5.0
    """L2 regularisation of leaf values."""
    reg_alpha: float = 0.0
    """L1 regularisation of leaf values."""
    min_split_gain: float = 0.0
    """Minimum loss reduction to make a split."""
    early_stopping_rounds: NonNegativeInt = 100
    """Stop when the eval loss has not improved for this many rounds (0 = off); needs ``eval_pairs``."""
    swap_augment: bool = True
    """Train on each pair and its A/B swap (label swapped)."""
    swap_average: bool = True
    """At prediction time average p(A, B) with the mirrored p(B, A)."""
    max_tfidf_features: int = 50_000
    """Vocabulary size of the TF-IDF model behind the prompt/response similarity features."""
    embeddings: bool = False
    """Add sentence-embedding features (all-MiniLM-L6-v2; needs the ``embeddings`` extra)."""
    embedding_cache_dir: str | None = None
    """Embedding cache folder; default ``$PREFPRED_CACHE/embeddings``, else
    ``~/.cache/prefpred/embeddings``."""
    embedding_dims: NonNegativeInt = 16
    """PCA components of ``emb_A - emb_B`` used as features."""
    embedding_device: Device = "auto"
    """Device of the sentence encoder: ``auto`` (GPU when available), ``cpu``, ``cuda``, ``mps``..."""
    embedding_batch_size: int = 64
    """Sentence-encoder batch size."""
    n_jobs: PositiveInt = 2
    """At most this many LightGBM threads (one per 20k training rows: on small data extra OpenMP threads only
    cost time)."""
    feature_jobs: PositiveInt = 1
    """Worker processes featurizing inputs of more than 8,192 pairs (1 = in process; worth raising only on
    machines with idle cores)."""


def _swap_label_map(classes: np.ndarray) -> dict[Any, Any]:
    """``{a: b, b: a}`` for labels named ``a``/``b``/``tie`` or numbered ``0``/``1``/``2``."""
    values = set(classes.tolist())
    if values <= {"a", "b", "tie"}:
        return {"a": "b", "b": "a"}
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values) and values <= {
        0,
        1,
        2,
    }:
        return {0: 1, 1: 0}
    raise ValueError(
        "swap augmentation / averaging needs labels 'a'/'b'/'tie' or 0/1/2 "
        f"(0 = a, 1 = b, 2 = tie); got {sorted(map(str, values))}"
    )


def _swap_labels(y: np.ndarray) -> np.ndarray:
    mapping = _swap_label_map(np.unique(y))
    return np.asarray([mapping.get(v, v) for v in y.tolist()], dtype=y.dtype)


class LGBMPreferenceClassifier(ClassifierMixin, BaseEstimator):
    """A LightGBM multiclass classifier with optional A/B swap augmentation and swap averaging.

    Args:
        n_estimators, learning_rate, num_leaves, max_depth, min_child_samples, subsample, subsample_freq,
            colsample_bytree, reg_lambda, reg_alpha, min_split_gain: LightGBM parameters
            (see :class:`CPUModelConfig`).
        early_stopping_rounds: Rounds without improvement of the ``eval_set`` loss before stopping (0 = off).
        antisymmetric: Boolean mask over features: True where a feature changes sign when A and B are swapped.
            ``None`` disables everything swap related.
        swap_augment: With ``antisymmetric``: also train on ``X * sign`` with labels a/b exchanged.
        swap_average: With ``antisymmetric``: average ``p(x)`` and ``mirror(p(x * sign))`` when predicting.
        n_jobs: LightGBM threads.
        random_state: Seed of LightGBM's bagging and feature sampling.

    Labels may be any classes; swap features need labels ``a``/``b``/``tie`` or ``0``/``1``/``2``.
    """

    def __init__(
        self,
        n_estimators: PositiveInt = 200,
        learning_rate: Annotated[float, Field(gt=0, le=1)] = 0.02,
        num_leaves: Annotated[int, Field(ge=2)] = 8,
        max_depth: int = 4,
        min_child_samples: int = 40,
        subsample: Annotated[float, Field(gt=0, le=1)] = 0.8,
        subsample_freq: int = 1,
        colsample_bytree: Annotated[float, Field(gt=0, le=1)] = 0.5,
        reg_lambda: float = 5.0,
        reg_alpha: float = 0.0,
        min_split_gain: float = 0.0,
        early_stopping_rounds: NonNegativeInt = 100,
        antisymmetric: np.ndarray | None = None,
        swap_augment: bool = True,
        swap_average: bool = True,
        n_jobs: PositiveInt = 2,
        random_state: int | None = 0,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.subsample_freq = subsample_freq
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.reg_alpha = reg_alpha
        self.min_split_gain = min_split_gain
        self.early_stopping_rounds = early_stopping_rounds
        self.antisymmetric = antisymmetric
        self.swap_augment = swap_augment
        self.swap_average = swap_average
        self.n_jobs = n_jobs
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # LightGBM routes missing values natively
        return tags

    # --- helpers --------------------------------------------------------------------------------------------
    def _sign(self, n_features: int) -> np.ndarray | None:
        if self.antisymmetric is None:
            return None
        mask = np.asarray(self.antisymmetric, dtype=bool).ravel()
        if mask.shape[0] != n_features:
            raise ValueError(f"antisymmetric has {mask.shape[0]} entries but X has {n_features} features")
        return np.where(mask, -1.0, 1.0)

    def _threads(self, n_rows: int) -> int:
        """At most ``n_jobs`` threads, one per ``_ROWS_PER_THREAD`` rows: on small data OpenMP threads only
        add overhead, and on a busy machine spinning threads can make training 10-40x slower."""
        return int(max(1, min(int(self.n_jobs or 1), n_rows // _ROWS_PER_THREAD)))

    def _params(self, n_classes: int, n_rows: int) -> dict[str, Any]:
        seed = 0 if self.random_state is None else int(self.random_state)
        return {
            "objective": "multiclass",
            "num_class": n_classes,
            "metric": "multi_logloss",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_data_in_leaf": self.min_child_samples,
            "min_sum_hessian_in_leaf": 1e-3,
            "bagging_fraction": self.subsample,
            "bagging_freq": self.subsample_freq if self.subsample < 1 else 0,
            "feature_fraction": self.colsample_bytree,
            "lambda_l2": self.reg_lambda,
            "lambda_l1": self.reg_alpha,
            "min_gain_to_split": self.min_split_gain,
            "num_threads": self._threads(n_rows),
            "seed": seed,
            "deterministic": True,
            "force_col_wise": True,
            "verbose": -1,
        }

    def _augment(
        self, X: np.ndarray, y: np.ndarray, w: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sign = self._sign(X.shape[1])
        if sign is None or not self.swap_augment:
            return X, y, w
        return np.vstack([X, X * sign]), np.concatenate([y, _swap_labels(y)]), np.concatenate([w, w])

    # --- estimator API --------------------------------------------------------------------------------------
    def fit(
        self,
        X: Any,
        y: Any,
        sample_weight: Any = None,
        eval_set: tuple[Any, Any] | None = None,
        eval_sample_weight: Any = None,
    ) -> LGBMPreferenceClassifier:
        """Train; with ``eval_set=(X_val, y_val)`` and ``early_stopping_rounds > 0``, stop early on it."""
        X, y = validate_data(self, X, y, reset=True, ensure_all_finite="allow-nan", dtype=np.float64)
        check_classification_targets(y)
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
        if w.shape[0] != len(y):
            raise ValueError(f"sample_weight has {w.shape[0]} entries for {len(y)} samples")
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError("sample_weight must be finite and non-negative, and not all zero")
        Xa, ya, wa = self._augment(X, y, w)
        self.classes_ = np.unique(ya)
        if len(self.classes_) < 2:
            raise ValueError(
                f"the training data must contain at least 2 classes; got 1 class ({self.classes_[0]!r})"
            )
        t0 = time.perf_counter()
        train = lgb.Dataset(
            Xa,
            label=np.searchsorted(self.classes_, ya),
            weight=wa,
            free_raw_data=True,
            params={"verbose": -1},
        )
        valid_sets, callbacks = [], []
        self.evals_result_: dict[str, Any] = {}
        if eval_set is not None:
            Xv, yv = eval_set
            Xv = validate_data(self, Xv, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
            yv = np.asarray(yv)
            wv = (
                np.ones(len(yv)) if eval_sample_weight is None else np.asarray(eval_sample_weight, np.float64)
            )
            Xv, yv, wv = self._augment(Xv, yv, wv)
            unknown = set(np.unique(yv).tolist()) - set(self.classes_.tolist())
            if unknown:
                raise ValueError(f"eval_set has classes not seen in training: {sorted(map(str, unknown))}")
            valid_sets.append(
                lgb.Dataset(
                    Xv,
                    label=np.searchsorted(self.classes_, yv),
                    weight=wv,
                    reference=train,
                    params={"verbose": -1},
                )
            )
            callbacks.append(lgb.record_evaluation(self.evals_result_))
            if self.early_stopping_rounds > 0:
                callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        booster = lgb.train(
            self._params(len(self.classes_), Xa.shape[0]),
            train,
            num_boost_round=self.n_estimators,
            valid_sets=valid_sets,
            valid_names=["eval"][: len(valid_sets)],
            callbacks=callbacks,
        )
        self.booster_ = booster
        best = booster.best_iteration if valid_sets and self.early_stopping_rounds > 0 else 0
        self.best_iteration_ = int(best) if best and best > 0 else int(booster.current_iteration())
        logger.debug(
            "LightGBM: %d rows, %d features, best iteration %d of %d, %.2fs",
            Xa.shape[0],
            Xa.shape[1],
            self.best_iteration_,
            booster.current_iteration(),
            time.perf_counter() - t0,
        )
        return self

    def _raw_proba(self, X: np.ndarray) -> np.ndarray:
        p = np.asarray(
            self.booster_.predict(
                X, num_iteration=self.best_iteration_, num_threads=self._threads(X.shape[0])
            ),
            dtype=np.float64,
        )
        return p.reshape(X.shape[0], len(self.classes_))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``; rows sum to 1."""
        check_is_fitted(self, "booster_")
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        proba = self._raw_proba(X)
        sign = self._sign(X.shape[1])
        if sign is not None and self.swap_average:
            mapping = _swap_label_map(self.classes_)
            index = {c: i for i, c in enumerate(self.classes_.tolist())}
            perm = [index.get(mapping.get(c, c), i) for i, c in enumerate(self.classes_.tolist())]
            proba = (proba + self._raw_proba(X * sign)[:, perm]) / 2.0
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def feature_importance(self, importance_type: str = "gain") -> np.ndarray:
        check_is_fitted(self, "booster_")
        return np.asarray(self.booster_.feature_importance(importance_type=importance_type), dtype=np.float64)


def expand_soft_labels(
    X: np.ndarray, labels: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per (pair, class) with ``p_k * w > 0``, labelled with the class name, weighted ``p_k * w``.

    Hard (one-hot) labels give back the rows unchanged, in order.
    """
    rows, cls = np.nonzero(labels * weights[:, None] > 0)
    w = labels[rows, cls] * weights[rows]
    return X[rows], np.asarray(LABELS, dtype=object)[cls].astype(str), w


@register_model("cpu")
class CPUPreferenceModel(PreferenceModel):
    """Hand-made symmetric features (+ optional embeddings) and a swap-aware LightGBM classifier."""

    def __init__(self, config: CPUModelConfig | None = None, seed: int = 0):
        self.config = config or CPUModelConfig()
        self.seed = seed

    # --- internals ------------------------------------------------------------------------------------------
    def _embedder(self):
        from prefpred.embeddings import Embedder

        c = self.config
        return Embedder(
            cache_dir=c.embedding_cache_dir, device=c.embedding_device, batch_size=c.embedding_batch_size
        )

    def _features(self, pairs: Sequence[Pair]) -> np.ndarray:
        X = self.featurizer_.transform(pairs)
        if self.embedding_featurizer_ is not None:
            X = np.hstack([X, self.embedding_featurizer_.transform(pairs)])
        return X

    def _estimator(self) -> LGBMPreferenceClassifier:
        c = self.config
        return LGBMPreferenceClassifier(
            n_estimators=c.n_estimators,
            learning_rate=c.learning_rate,
            num_leaves=c.num_leaves,
            max_depth=c.max_depth,
            min_child_samples=c.min_child_samples,
            subsample=c.subsample,
            subsample_freq=c.subsample_freq,
            colsample_bytree=c.colsample_bytree,
            reg_lambda=c.reg_lambda,
            reg_alpha=c.reg_alpha,
            min_split_gain=c.min_split_gain,
            early_stopping_rounds=c.early_stopping_rounds,
            antisymmetric=self.antisymmetric_,
            swap_augment=c.swap_augment,
            swap_average=c.swap_average,
            n_jobs=c.n_jobs,
            random_state=self.seed,
        )

    @staticmethod
    def _targets(pairs: Sequence[Pair], what: str) -> tuple[np.ndarray, np.ndarray]:
        if not pairs:
            raise DataError(f"no {what} pairs")
        missing = [p.id for p in pairs if p.label is None]
        if missing:
            raise DataError(f"{len(missing)} {what} pair(s) have no label (first id {missing[0]!r})")
        weights = np.asarray([p.weight for p in pairs], dtype=np.float64)
        if (weights < 0).any() or not np.isfinite(weights).all():
            raise DataError(f"{what} pair weights must be finite and >= 0")
        return label_matrix(pairs), weights

    # --- PreferenceModel API --------------------------------------------------------------------------------
    def fit(self, pairs: Sequence[Pair], eval_pairs: Sequence[Pair] | None = None) -> CPUPreferenceModel:
        """Featurize and train; ``eval_pairs`` enable early stopping, else exactly ``n_estimators`` rounds."""
        pairs = list(pairs)
        labels, weights = self._targets(pairs, "training")
        t0 = time.perf_counter()
        c = self.config
        featurizer = PairFeaturizer(max_tfidf_features=c.max_tfidf_features, n_jobs=c.feature_jobs)
        self.featurizer_ = featurizer.fit(pairs)
        self.embedding_featurizer_ = None
        if c.embeddings:
            from prefpred.embeddings import EmbeddingFeaturizer

            self.embedding_featurizer_ = EmbeddingFeaturizer(
                self._embedder(), dims=c.embedding_dims, seed=self.seed
            ).fit(pairs)
        self.feature_names_ = list(self.featurizer_.feature_names_)
        anti = [self.featurizer_.antisymmetric_]
        if self.embedding_featurizer_ is not None:
            self.feature_names_ += self.embedding_featurizer_.feature_names_
            anti.append(self.embedding_featurizer_.antisymmetric_)
        self.antisymmetric_ = np.concatenate(anti)
        X = self._features(pairs)
        t_feat = time.perf_counter() - t0
        Xr, yr, wr = expand_soft_labels(X, labels, weights)
        eval_set = eval_weight = None
        t_eval_feat = 0.0
        if eval_pairs:
            eval_pairs = list(eval_pairs)
            ev_labels, ev_weights = self._targets(eval_pairs, "eval")
            t1 = time.perf_counter()
            Xe, ye, we = expand_soft_labels(self._features(eval_pairs), ev_labels, ev_weights)
            t_eval_feat = time.perf_counter() - t1
            eval_set, eval_weight = (Xe, ye), we
        self.estimator_ = self._estimator().fit(
            Xr, yr, sample_weight=wr, eval_set=eval_set, eval_sample_weight=eval_weight
        )
        self.best_iteration_ = self.estimator_.best_iteration_
        missing = sorted(set(LABELS) - set(self.estimator_.classes_.tolist()))
        if missing:
            logger.warning("no training pair has weight on class(es) %s: they get probability 0", missing)
        t_train = time.perf_counter() - t0 - t_feat - t_eval_feat
        self.timings_ = {"features_s": t_feat + t_eval_feat, "train_s": t_train}
        """Seconds spent featurizing (training + eval pairs, embeddings included) and training LightGBM."""
        logger.info(
            "cpu model: %d pairs, %d features, %d trees (best iteration %d); features %.1fs, training %.1fs",
            len(pairs),
            X.shape[1],
            self.estimator_.booster_.current_iteration(),
            self.best_iteration_,
            t_feat + t_eval_feat,
            t_train,
        )
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "estimator_"):
            raise RuntimeError("CPUPreferenceModel is not fitted: call fit(pairs) or load(directory)")

    def predict_proba(self, pairs: Sequence[Pair]) -> np.ndarray:
        """``n x 3`` probabilities (a, b, tie); mirror-symmetric when ``swap_average`` is on."""
        self._check_fitted()
        pairs = list(pairs)
        if not pairs:
            return np.zeros((0, 3))
        proba = self.estimator_.predict_proba(self._features(pairs))
        out = np.zeros((len(pairs), 3))
        for j, name in enumerate(self.estimator_.classes_.tolist()):
            out[:, LABELS.index(name)] = proba[:, j]
        return out

    def feature_importance(self) -> dict[str, float]:
        """Share of the total split gain per feature, largest first."""
        self._check_fitted()
        gain = self.estimator_.feature_importance("gain")
        total = gain.sum() or 1.0
        order = np.argsort(-gain, kind="stable")
        return {self.feature_names_[i]: float(gain[i] / total) for i in order}

    # --- persistence ----------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the LightGBM model, featurizer state and config into ``directory``."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        est = self.estimator_
        atomic_write_text(directory / BOOSTER_FILE, est.booster_.model_to_string(num_iteration=-1))
        state = {
            "config": to_dict(self.config),
            "seed": self.seed,
            "classes": est.classes_.tolist(),
            "best_iteration": int(est.best_iteration_),
            "feature_names": self.feature_names_,
            "antisymmetric": self.antisymmetric_.tolist(),
            "featurizer": self.featurizer_.get_state(),
            "embedding_featurizer": (
                None if self.embedding_featurizer_ is None else self.embedding_featurizer_.get_state()
            ),
        }
        atomic_write_text(directory / STATE_FILE, json.dumps(state))
        self._write_meta(
            directory, {"n_features": len(self.feature_names_), "best_iteration": int(est.best_iteration_)}
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> CPUPreferenceModel:
        directory = Path(directory)
        state_path = directory / STATE_FILE
        if not state_path.is_file():
            raise FileNotFoundError(f"{directory}: no {STATE_FILE} (not a saved cpu model)")
        state = json.loads(state_path.read_text(encoding="utf-8"))
        self = cls(from_dict(CPUModelConfig, state["config"]), seed=int(state["seed"]))
        self.featurizer_ = PairFeaturizer.from_state(state["featurizer"])
        self.featurizer_.n_jobs = self.config.feature_jobs
        self.embedding_featurizer_ = None
        if state.get("embedding_featurizer"):
            from prefpred.embeddings import EmbeddingFeaturizer

            self.embedding_featurizer_ = EmbeddingFeaturizer.from_state(
                state["embedding_featurizer"], self._embedder()
            )
        self.feature_names_ = list(state["feature_names"])
        self.antisymmetric_ = np.asarray(state["antisymmetric"], dtype=bool)
        est = self._estimator()
        est.booster_ = _load_booster(directory / BOOSTER_FILE)
        est.classes_ = np.asarray(state["classes"])
        est.best_iteration_ = int(state["best_iteration"])
        est.n_features_in_ = len(self.feature_names_)
        self.estimator_ = est
        self.best_iteration_ = est.best_iteration_
        return self
