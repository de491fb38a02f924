"""What ``prefpred serve`` serves: a run directory or a zero-shot judge, as a predictor plus :class:`ModelInfo`.

:func:`load_run` accepts every run kind :func:`prefpred.runs.load_predictor` can load (CPU model, fine-tuned LLM,
and kinds registered later, such as ensembles) and refuses incomplete or damaged runs in one line.
:func:`load_judge` builds a :class:`~prefpred.models.judge.ZeroShotJudge` and loads its LM up front.
:func:`warm_up` scores one pair before the server starts, so lazy loading never delays the first request.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.runs import Predictor
from prefpred.serve.schemas import to_pair
from prefpred.types import UserError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What ``GET /v1/model`` shows about the model being served."""

    kind: str
    source: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    calibrated: bool = False


def run_model_info(run_dir: str | Path, *, calibrated: bool = True) -> ModelInfo:
    """:class:`ModelInfo` of a complete run directory: its kind, ``config.yaml`` and headline metrics."""
    import yaml

    from prefpred.runs import CALIBRATION_FILE, CONFIG_FILE, read_run
    from prefpred.utils import json_safe

    info = read_run(run_dir)
    config: dict[str, Any] = {}
    cfg_path = info.path / CONFIG_FILE
    if cfg_path.is_file():
        try:
            loaded = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            logger.warning("%s: unreadable (%s); /v1/model shows no config", cfg_path, type(e).__name__)
    headline = info.metrics.get("headline")
    if not isinstance(headline, dict):
        headline = {k: v for k, v in info.metrics.items() if isinstance(v, (int, float, str, bool))}
    return ModelInfo(kind=info.kind, source=str(info.path), config=json_safe(config),
                     metrics=json_safe(headline),
                     calibrated=calibrated and (info.path / CALIBRATION_FILE).is_file())


def warm_up(predictor: Predictor) -> None:
    """Score one small pair, so that lazy loading happens before the first request; raises what the model
    raises."""
    proba = np.asarray(predictor.predict_proba([to_pair("warm-up", "Hello?", "Hi!", "Hello there.")]))
    if proba.shape != (1, 3):
        raise UserError(f"model returned shape {proba.shape} for one pair (expected 1 x 3)")


def load_run(run_dir: str | Path, *, calibrated: bool = True) -> tuple[Predictor, ModelInfo]:
    """A complete run's predictor (calibrated unless ``calibrated=False``) and its :class:`ModelInfo`."""
    from prefpred.runs import load_predictor

    predictor = load_predictor(run_dir, calibrated=calibrated)
    return predictor, run_model_info(run_dir, calibrated=calibrated)


def load_judge(model: str, *, style: str = "seed-digits", max_length: int = 2048, device: str = "auto",
               dtype: str = "auto") -> tuple[Predictor, ModelInfo]:
    """A zero-shot judge over the causal LM ``model`` (hub id, local directory, .gguf or alias), LM loaded."""
    from prefpred.models.judge import ZeroShotJudge
    from prefpred.prompts import get_style

    get_style(style)  # an unknown style: one line, before the model is loaded
    judge = ZeroShotJudge(model=model, style=style, max_length=max_length, device=device, dtype=dtype).fit([])
    judge.load_lm()
    return judge, ModelInfo(kind="zero-shot", source=model, config=judge.get_params(), calibrated=False)
