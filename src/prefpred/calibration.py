"""Post-hoc calibration of ``n x 3`` probabilities, fitted on out-of-fold predictions.

The calibrator works on log-probabilities ``z = log p`` (which are logits up to a per-row constant) and
re-applies a softmax:

* ``temperature``: ``softmax(z / T)``, one parameter; it never changes the predicted class;
* ``bias``: ``softmax(z / T + b)``, temperature plus a per-class offset (``b_tie = 0``), which can also correct
  the base rate of a class (ties are the usual culprit);
* ``vector``: ``softmax(w * z + b)``, a scale and an offset per class.

All are fitted by minimising log loss (L-BFGS) on held-out predictions, usually the out-of-fold predictions of a
cross-validated run. Fit on the same rows you evaluate on and the number will be optimistic; prefpred fits on OOF
and reports the holdout raw and calibrated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

from prefpred.metrics import EPS, label_targets, normalize_proba
from prefpred.types import ConfigError
from prefpred.utils import atomic_write_text

METHODS = ("temperature", "bias", "vector")


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Calibrator:
    """Temperature / bias / vector scaling for 3-class probabilities (scikit-learn style).

    Args:
        method: ``"temperature"``, ``"bias"`` or ``"vector"``.
        l2: L2 penalty pulling the parameters towards the identity map (``T = 1``, ``w = 1``, ``b = 0``),
            scaled by the number of rows; a little keeps ``vector`` from overfitting small sets.

    Attributes (after :meth:`fit`): ``temperature_`` (for ``temperature``/``bias``), ``weights_`` and
    ``bias_`` (length-3 arrays; the effective map is ``softmax(weights_ * log p + bias_)``), ``n_`` rows seen,
    ``log_loss_before_`` and ``log_loss_after_`` on the fitting rows.
    """

    def __init__(self, method: str = "temperature", l2: float = 1e-4):
        self.method = method
        self.l2 = l2

    # parameters <-> (w, b) ---------------------------------------------------------------------------
    def _unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.method == "temperature":
            return np.full(3, np.exp(-theta[0])), np.zeros(3)
        if self.method == "bias":
            return np.full(3, np.exp(-theta[0])), np.array([theta[1], theta[2], 0.0])
        return theta[:3], np.array([theta[3], theta[4], 0.0])

    def _theta0(self) -> np.ndarray:
        return {"temperature": np.zeros(1), "bias": np.zeros(3),
                "vector": np.array([1.0, 1.0, 1.0, 0.0, 0.0])}[self.method]

    def fit(self, proba: Any, y: Any, sample_weight: Any = None) -> Calibrator:
        """Fit on predictions ``proba`` (``n x 3``) and labels ``y`` (indices, names or soft matrix)."""
        if self.method not in METHODS:
            raise ConfigError(f"unknown calibration method {self.method!r} (choose from {', '.join(METHODS)})")
        z = np.log(normalize_proba(proba))
        t = label_targets(y, len(z))
        if len(z) == 0:
            raise ValueError("cannot fit a calibrator on zero rows")
        w = np.ones(len(z)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        w = w / w.sum()
        theta0 = self._theta0()

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            scale, bias = self._unpack(theta)
            s = z * scale + bias
            s = s - s.max(axis=1, keepdims=True)
            logsum = np.log(np.exp(s).sum(axis=1, keepdims=True))
            logp = s - logsum
            loss = float(-(w[:, None] * t * logp).sum())
            # gradient of the loss wrt s: w * (softmax(s) * sum(t) - t)
            g_s = w[:, None] * (np.exp(logp) * t.sum(axis=1, keepdims=True) - t)
            g_scale = (g_s * z).sum(axis=0)  # d loss / d scale_k
            g_bias = g_s.sum(axis=0)
            reg = self.l2 * float(((theta - theta0) ** 2).sum())
            g_reg = 2 * self.l2 * (theta - theta0)
            if self.method == "temperature":
                grad = np.array([g_scale.sum() * -scale[0]])
            elif self.method == "bias":
                grad = np.array([g_scale.sum() * -scale[0], g_bias[0], g_bias[1]])
            else:
                grad = np.concatenate([g_scale, g_bias[:2]])
            return loss + reg, grad + g_reg

        res = minimize(objective, theta0, jac=True, method="L-BFGS-B")
        theta = res.x if np.all(np.isfinite(res.x)) else theta0
        self.theta_ = theta
        self.weights_, self.bias_ = self._unpack(theta)
        if self.method in ("temperature", "bias"):
            self.temperature_ = float(np.exp(theta[0]))
        self.n_ = int(len(z))
        before = float(-(w[:, None] * t * z).sum())
        after = float(-(w[:, None] * t * np.log(np.clip(self.transform(np.exp(z)), EPS, 1))).sum())
        if after > before:  # the optimiser never should, but never make things worse than the identity
            self.theta_ = theta0
            self.weights_, self.bias_ = self._unpack(theta0)
            if self.method in ("temperature", "bias"):
                self.temperature_ = 1.0
            after = before
        self.log_loss_before_ = before
        self.log_loss_after_ = after
        return self

    def transform(self, proba: Any) -> np.ndarray:
        """Calibrated ``n x 3`` probabilities (rows sum to 1)."""
        if not hasattr(self, "weights_"):
            raise RuntimeError("Calibrator is not fitted; call fit() first")
        z = np.log(normalize_proba(proba))
        return _softmax(z * self.weights_ + self.bias_)

    def fit_transform(self, proba: Any, y: Any) -> np.ndarray:
        return self.fit(proba, y).transform(proba)

    # persistence -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "l2": self.l2}
        if hasattr(self, "weights_"):
            out.update({
                "weights": [float(v) for v in self.weights_], "bias": [float(v) for v in self.bias_],
                "n": self.n_, "log_loss_before": self.log_loss_before_, "log_loss_after": self.log_loss_after_,
            })
            if hasattr(self, "temperature_"):
                out["temperature"] = self.temperature_
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        cal = cls(method=data.get("method", "temperature"), l2=float(data.get("l2", 1e-4)))
        if "weights" in data:
            cal.weights_ = np.asarray(data["weights"], dtype=np.float64)
            cal.bias_ = np.asarray(data["bias"], dtype=np.float64)
            cal.n_ = int(data.get("n", 0))
            cal.log_loss_before_ = data.get("log_loss_before")
            cal.log_loss_after_ = data.get("log_loss_after")
            if "temperature" in data:
                cal.temperature_ = float(data["temperature"])
        return cal

    def save(self, path: str | Path) -> Path:
        """Write the fitted parameters as JSON (atomically)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Calibrator:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: calibration file not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e.msg})") from e
        return cls.from_dict(data)

    def __repr__(self) -> str:
        extra = f", T={self.temperature_:.3f}" if hasattr(self, "temperature_") else ""
        return f"Calibrator(method={self.method!r}{extra})"


def fit_calibrator(proba: Any, y: Any, method: str = "temperature") -> Calibrator:
    """Shortcut: ``Calibrator(method).fit(proba, y)``."""
    return Calibrator(method=method).fit(proba, y)
