"""Command-line interface: ``prefpred`` (also ``python -m prefpred``)."""

from __future__ import annotations

from prefpred.cli import data_cmds, llm_cmds, run_cmds, synth_cmds, bench_cmds  # noqa: F401,I001  (register)
from prefpred.cli.app import app


def main() -> None:
    app(prog_name="prefpred")


__all__ = ["app", "main"]
