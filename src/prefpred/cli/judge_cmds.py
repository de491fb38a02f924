"""prefpred CLI: zero-shot judging commands."""

from __future__ import annotations

from prefpred.cli.app import app  # noqa: F401
