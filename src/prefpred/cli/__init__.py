"""Command-line interface: ``prefpred`` (also ``python -m prefpred``)."""

from __future__ import annotations

from prefpred.cli import bench_cmds, data_cmds, judge_cmds, llm_cmds, run_cmds, synth_cmds  # noqa: F401  (register)
from prefpred.cli.app import app


def main() -> None:
    app(prog_name="prefpred")


__all__ = ["app", "main"]
