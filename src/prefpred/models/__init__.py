"""Preference models behind one interface (:class:`~prefpred.models.base.PreferenceModel`)."""

import prefpred.models.cpu  # noqa: F401  (registers "cpu")
from prefpred.models import judge  # noqa: F401  (registers "zero-shot")
from prefpred.models import llm  # noqa: F401  (registers "llm")
from prefpred.models.base import PreferenceModel, load_model, register_model

__all__ = ["PreferenceModel", "load_model", "register_model"]
