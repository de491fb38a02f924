"""Combiners of member predictions: simplex-weighted blends, a stacked logistic model, and their calibration.

Every combiner sees the members' predictions as one array ``P`` of shape ``members x n x 3`` (order a, b,
tie) and, for stacking, a few cheap pair features (:func:`pair_features`). All are fitted by minimising log loss:

* :class:`WeightedBlend` ``space="prob"``: ``p = sum_i w_i P_i``, weights on the simplex (``w_i >= 0``,
  ``sum w_i = 1``), fitted with SLSQP and an exact gradient;
* :class:`WeightedBlend` ``space="logit"``: ``p = softmax(sum_i w_i log P_i)``, a weighted geometric mean;
* :class:`Stacker`: a multinomial logistic regression on the members' log-odds against tie plus the pair
  features, trained on every row and its A/B mirror and averaged with its mirrored prediction, so it is exactly
  swap-consistent when the members are;
* :class:`BestMember`: the single member with the lowest log loss on the fitting rows (the baseline every
  ensemble must beat).

:class:`Candidate` adds an optional calibrator (:class:`prefpred.calibration.Calibrator`) fitted on the
combiner's own in-sample output and its A/B mirror, so it keeps the blend swap-consistent. Limits: the weights are fitted on the rows they are scored on unless the
caller holds rows out (:mod:`prefpred.ensemble.select` does, fold by fold); with few rows per class the
stacker's L2 penalty (``C``) matters.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize

from prefpred.calibration import Calibrator
from prefpred.metrics import log_loss, normalize_proba
from prefpred.types import Pair

logger = logging.getLogger(__name__)

PAIR_FEATURES = ("log_len_ratio", "abs_log_len_ratio", "multi_turn")
"""Cheap features the stacker may add: ``log(1+len A) - log(1+len B)`` (antisymmetric), its absolute value and
whether the conversation has more than one turn (symmetric)."""


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _stack(P: Any) -> np.ndarray:
    """``members x n x 3`` array of normalized (clipped) probabilities."""
    arr = np.asarray(P, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"member predictions must be members x n x 3, got shape {arr.shape}")
    return np.stack([normalize_proba(p) for p in arr])


def pair_features(pairs: Sequence[Pair]) -> np.ndarray:
    """``n x 3`` array of :data:`PAIR_FEATURES`."""
    la = np.array([np.log1p(len(p.text_a())) for p in pairs], dtype=np.float64)
    lb = np.array([np.log1p(len(p.text_b())) for p in pairs], dtype=np.float64)
    multi = np.array([float(len(p.turns) > 1) for p in pairs])
    d = la - lb
    return np.column_stack([d, np.abs(d), multi]) if len(pairs) else np.zeros((0, len(PAIR_FEATURES)))


def _mirror_features(X: np.ndarray) -> np.ndarray:
    """The pair features of the A/B-swapped pairs: the length ratio changes sign, the others stay."""
    out = X.copy()
    if out.shape[1]:
        out[:, 0] = -out[:, 0]
    return out


# --------------------------------------------------------------------------------------------- combiners
class BestMember:
    """The member with the lowest log loss on the fitting rows."""

    name = "best-member"

    def fit(self, P: np.ndarray, y: np.ndarray, X: np.ndarray | None = None) -> BestMember:
        P = _stack(P)
        self.losses_ = [log_loss(y, p) for p in P]
        self.index_ = int(np.argmin(self.losses_))
        return self

    def predict(self, P: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
        return _stack(P)[self.index_]

    def weights(self, m: int) -> list[float]:
        return [1.0 if i == self.index_ else 0.0 for i in range(m)]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.name, "index": self.index_}


class WeightedBlend:
    """Simplex weights over members, in probability (``prob``) or log-probability (``logit``) space."""

    def __init__(self, space: str = "prob"):
        if space not in ("prob", "logit"):
            raise ValueError(f"space must be 'prob' or 'logit', got {space!r}")
        self.space = space
        self.name = f"blend-{space}"

    def _loss_grad(self, w: np.ndarray, P: np.ndarray, L: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
        n = t.shape[0]
        if self.space == "prob":
            p = np.clip(np.einsum("m,mnk->nk", w, P), 1e-15, None)
            loss = float(-(t * np.log(p)).sum() / n)
            grad = -np.einsum("nk,mnk->m", t / p, P) / n
        else:
            s = np.einsum("m,mnk->nk", w, L)
            logp = s - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)) - s.max(1, keepdims=True)
            loss = float(-(t * logp).sum() / n)
            g_s = np.exp(logp) * t.sum(1, keepdims=True) - t
            grad = np.einsum("nk,mnk->m", g_s, L) / n
        return loss, grad

    def fit(self, P: np.ndarray, y: np.ndarray, X: np.ndarray | None = None) -> WeightedBlend:
        P = _stack(P)
        t = np.asarray(y, dtype=np.float64)
        L = np.log(P)
        m = P.shape[0]
        w0 = np.full(m, 1.0 / m)
        if m == 1:
            self.weights_ = w0
            return self
        res = minimize(self._loss_grad, w0, args=(P, L, t), jac=True, method="SLSQP",
                       bounds=[(0.0, 1.0)] * m,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
                       options={"maxiter": 500, "ftol": 1e-10})
        w = np.clip(res.x, 0.0, None) if np.all(np.isfinite(res.x)) else w0
        w = w / w.sum() if w.sum() > 0 else w0
        if self._loss_grad(w, P, L, t)[0] > self._loss_grad(w0, P, L, t)[0]:
            w = w0  # never return something worse than the equal-weight start
        self.weights_ = w
        return self

    def predict(self, P: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
        P = _stack(P)
        if self.space == "prob":
            return np.einsum("m,mnk->nk", self.weights_, P)
        return _softmax(np.einsum("m,mnk->nk", self.weights_, np.log(P)))

    def weights(self, m: int) -> list[float]:
        return [float(v) for v in self.weights_]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "blend", "space": self.space, "weights": self.weights(len(self.weights_))}


class Stacker:
    """Multinomial logistic regression on member log-odds (+ pair features), swap-augmented and swap-averaged."""

    name = "stack-logistic"

    def __init__(self, C: float = 0.5, use_pair_features: bool = True):
        self.C = C
        self.use_pair_features = use_pair_features

    @staticmethod
    def _member_features(P: np.ndarray) -> np.ndarray:
        L = np.log(P)
        return np.concatenate([L[:, :, 0] - L[:, :, 2], L[:, :, 1] - L[:, :, 2]], axis=0).T  # n x 2m

    def _features(self, P: np.ndarray, X: np.ndarray | None, mirror: bool) -> np.ndarray:
        P = P[:, :, [1, 0, 2]] if mirror else P
        parts = [self._member_features(P)]
        if self.use_pair_features and X is not None and X.shape[1]:
            parts.append(_mirror_features(X) if mirror else X)
        return np.hstack(parts)

    def fit(self, P: np.ndarray, y: np.ndarray, X: np.ndarray | None = None) -> Stacker:
        from sklearn.linear_model import LogisticRegression

        P = _stack(P)
        t = np.asarray(y, dtype=np.float64)
        self.use_pair_features = bool(self.use_pair_features and X is not None and X.shape[1])
        F = np.vstack([self._features(P, X, False), self._features(P, X, True)])
        labels = np.concatenate([t.argmax(1), t[:, [1, 0, 2]].argmax(1)])
        self.model_ = LogisticRegression(C=self.C, max_iter=1000).fit(F, labels)
        return self

    def _proba(self, F: np.ndarray) -> np.ndarray:
        out = np.zeros((len(F), 3))
        out[:, self.model_.classes_] = self.model_.predict_proba(F)
        return out

    def predict(self, P: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
        P = _stack(P)
        direct = self._proba(self._features(P, X, False))
        mirrored = self._proba(self._features(P, X, True))[:, [1, 0, 2]]
        return (direct + mirrored) / 2.0

    def weights(self, m: int) -> list[float]:
        """Share of the absolute coefficient mass on each member's features (a rough importance)."""
        coef = np.abs(self.model_.coef_)
        per = np.array([coef[:, i].sum() + coef[:, m + i].sum() for i in range(m)])
        return [float(v) for v in per / per.sum()] if per.sum() > 0 else [1.0 / m] * m

    def to_dict(self) -> dict[str, Any]:
        return {"type": "stack", "C": self.C, "use_pair_features": self.use_pair_features,
                "classes": [int(c) for c in self.model_.classes_], "coef": self.model_.coef_.tolist(),
                "intercept": self.model_.intercept_.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stacker:
        from sklearn.linear_model import LogisticRegression

        self = cls(C=float(d["C"]), use_pair_features=bool(d["use_pair_features"]))
        model = LogisticRegression(C=self.C)
        model.classes_ = np.asarray(d["classes"])
        model.coef_ = np.asarray(d["coef"], dtype=np.float64)
        model.intercept_ = np.asarray(d["intercept"], dtype=np.float64)
        self.model_ = model
        return self


def combiner_from_dict(d: dict[str, Any]) -> BestMember | WeightedBlend | Stacker:
    """Rebuild a fitted combiner from its :meth:`to_dict` form (``weights.json``)."""
    kind = d.get("type")
    if kind == "best-member":
        c = BestMember()
        c.index_ = int(d["index"])
        return c
    if kind == "blend":
        b = WeightedBlend(d["space"])
        b.weights_ = np.asarray(d["weights"], dtype=np.float64)
        return b
    if kind == "stack":
        return Stacker.from_dict(d)
    raise ValueError(f"unknown combiner type {kind!r}")


# --------------------------------------------------------------------------------------------- candidates
@dataclasses.dataclass(frozen=True)
class CandidateSpec:
    """A combiner and the calibration applied to its output (``none``, ``temperature`` or ``bias``)."""

    combiner: str
    calibration: str = "none"

    @property
    def name(self) -> str:
        return self.combiner if self.calibration == "none" else f"{self.combiner}+{self.calibration}"

    def make(self) -> BestMember | WeightedBlend | Stacker:
        if self.combiner == "best-member":
            return BestMember()
        if self.combiner.startswith("blend-"):
            return WeightedBlend(self.combiner.split("-", 1)[1])
        if self.combiner == "stack-logistic":
            return Stacker()
        raise ValueError(f"unknown combiner {self.combiner!r}")


COMBINERS = ("best-member", "blend-prob", "blend-logit", "stack-logistic")
CALIBRATIONS = ("none", "temperature", "bias")
ALL_CANDIDATES = tuple(CandidateSpec(c, k) for c in COMBINERS for k in CALIBRATIONS)
DEFAULT_CANDIDATES = tuple(c for c in ALL_CANDIDATES if c.combiner != "best-member")
"""What ``prefpred ensemble`` chooses from. The best member alone is left out: it is a vertex of the probability
blend's simplex (the blend falls back to it when that fits best), and as a separate candidate it only adds
selection noise (measured on the Arena rows: nested log loss 1.0273 with it, 1.0264 without)."""


@dataclasses.dataclass
class Candidate:
    """A fitted combiner followed by an optional fitted calibrator."""

    spec: CandidateSpec
    combiner: Any
    calibrator: Calibrator | None = None

    @classmethod
    def fit(cls, spec: CandidateSpec, P: np.ndarray, y: np.ndarray, X: np.ndarray | None = None) -> Candidate:
        combiner = spec.make().fit(P, y, X)
        calibrator = None
        if spec.calibration != "none":
            # fitted on every row and its A/B mirror: the optimum then has equal offsets for A and B, so a
            # swap-consistent blend stays swap-consistent (a plain `bias` fit would favour one position)
            out = combiner.predict(P, X)
            t = np.asarray(y, dtype=np.float64)
            calibrator = Calibrator(spec.calibration).fit(np.vstack([out, out[:, [1, 0, 2]]]),
                                                          np.vstack([t, t[:, [1, 0, 2]]]))
        return cls(spec, combiner, calibrator)

    def predict(self, P: np.ndarray, X: np.ndarray | None = None, *, calibrated: bool = True) -> np.ndarray:
        out = self.combiner.predict(P, X)
        return self.calibrator.transform(out) if calibrated and self.calibrator is not None else out
