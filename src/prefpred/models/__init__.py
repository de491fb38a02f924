"""Preference models behind one interface (:class:`~prefpred.models.base.PreferenceModel`)."""

# importing the concrete modules registers their kinds ("cpu", "zero-shot", "llm", "remote-judge") with load_model
from prefpred.models import cpu, judge, llm, remote_judge  # noqa: F401
from prefpred.models.base import PreferenceModel, load_model, register_model

__all__ = ["PreferenceModel", "load_model", "register_model"]
