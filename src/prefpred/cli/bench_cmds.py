"""prefpred CLI: bench commands."""

from __future__ import annotations

from prefpred.cli.app import bench_app  # noqa: F401
