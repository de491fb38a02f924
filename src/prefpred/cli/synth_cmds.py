"""prefpred CLI: synth commands."""

from __future__ import annotations

from prefpred.cli.app import synth_app  # noqa: F401
