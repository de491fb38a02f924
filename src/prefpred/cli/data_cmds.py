"""prefpred CLI: data commands."""

from __future__ import annotations

from prefpred.cli.app import data_app  # noqa: F401
