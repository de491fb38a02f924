"""Preference models behind one interface (:class:`~prefpred.models.base.PreferenceModel`)."""

from prefpred.models.base import PreferenceModel, load_model, register_model

__all__ = ["PreferenceModel", "load_model", "register_model"]
