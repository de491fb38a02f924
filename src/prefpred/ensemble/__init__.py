"""Ensembles of finished runs: simplex-weighted blends and stacking, chosen by nested validation over the
members' folds, calibrated, and written as a run directory of kind ``ensemble`` (``prefpred ensemble``).

* :mod:`~prefpred.ensemble.members` reads member runs and refuses those whose rows or folds do not line up;
* :mod:`~prefpred.ensemble.blend` holds the combiners (blends in probability or logit space, a stacker);
* :mod:`~prefpred.ensemble.select` chooses among them by validation and scores the choice with nested folds;
* :mod:`~prefpred.ensemble.job` writes the run; :mod:`~prefpred.ensemble.predictor` loads it for ``predict``.
"""

from prefpred.ensemble.blend import Candidate, CandidateSpec, Stacker, WeightedBlend
from prefpred.ensemble.job import EnsembleConfig, build_ensemble
from prefpred.ensemble.members import EnsembleError, load_members
from prefpred.ensemble.predictor import EnsemblePredictor

__all__ = ["Candidate", "CandidateSpec", "EnsembleConfig", "EnsembleError", "EnsemblePredictor", "Stacker",
           "WeightedBlend", "build_ensemble", "load_members"]
