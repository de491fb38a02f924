"""The ``ensemble`` run kind's predictor: load every member run, score the pairs with each, combine.

Registered with :func:`prefpred.runs.register_predictor`, so :func:`prefpred.runs.load_predictor` (and with it
``prefpred predict``, ``evaluate`` and ``serve``) works on ensemble runs. Members are loaded raw (without their own calibration),
which is how their held-out predictions entered the fit; the ensemble's own calibrator is applied unless
``calibrated=False`` (``--raw``). A member path is looked up relative to the ensemble directory first, then as the
absolute path it had when the ensemble was built, so moving a folder of runs together keeps it working. An
ensemble may itself be a member of another ensemble (it is loaded calibrated: its ``oof.csv`` is its calibrated,
nested output).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.calibration import Calibrator
from prefpred.ensemble.blend import Candidate, CandidateSpec, combiner_from_dict, pair_features
from prefpred.ensemble.job import WEIGHTS_FILE
from prefpred.runs import Predictor, RunError, RunInfo, load_predictor, read_run, register_predictor
from prefpred.types import Pair


@dataclasses.dataclass
class EnsemblePredictor:
    """Members' predictions combined by a fitted :class:`~prefpred.ensemble.blend.Candidate`."""

    members: list[Predictor]
    candidate: Candidate
    use_pair_features: bool
    calibrated: bool = True

    def predict_proba(self, pairs: Sequence[Pair]) -> np.ndarray:
        pairs = list(pairs)
        if not pairs:
            return np.zeros((0, 3))
        P = np.stack([np.asarray(m.predict_proba(pairs), dtype=np.float64) for m in self.members])
        X = pair_features(pairs) if self.use_pair_features else None
        return self.candidate.predict(P, X, calibrated=self.calibrated)


def _member_dir(run_dir: Path, entry: dict[str, Any]) -> Path:
    rel = run_dir / entry["path"]
    if rel.is_dir():
        return rel
    absolute = Path(entry.get("abs_path") or "")
    if entry.get("abs_path") and absolute.is_dir():
        return absolute
    raise RunError(f"{run_dir}: member run {entry.get('name')!r} not found at {rel} or {absolute}")


@register_predictor("ensemble")
def load_ensemble(info: RunInfo, calibrated: bool) -> EnsemblePredictor:
    path = info.path / WEIGHTS_FILE
    if not path.is_file():
        raise RunError(f"{info.path}: ensemble run has no {WEIGHTS_FILE}")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        combiner = combiner_from_dict(spec["combiner"])
        cal = Calibrator.from_dict(spec["calibration"]) if spec.get("calibration") else None
        method = str(spec["method"]).split("+")
        cand_spec = CandidateSpec(method[0], method[1] if len(method) > 1 else "none")
        entries = list(spec["members"])
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{path}: damaged ({type(e).__name__}: {e})") from None
    members = []
    for entry in entries:
        member_dir = _member_dir(info.path, entry)
        members.append(load_predictor(member_dir, calibrated=read_run(member_dir).kind == "ensemble"))
    return EnsemblePredictor(members, Candidate(cand_spec, combiner, cal), bool(spec.get("pair_features")),
                             calibrated)
