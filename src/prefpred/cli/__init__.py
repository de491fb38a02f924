"""Command-line interface: ``prefpred`` (also ``python -m prefpred``)."""

from __future__ import annotations

import importlib

from prefpred.cli.app import app

# Importing a command module registers its commands; this order is the order `prefpred --help` lists them.
COMMAND_MODULES = ("run_cmds", "ensemble_cmds", "judge_cmds", "llm_cmds", "data_cmds", "synth_cmds", "bench_cmds",
                   "leaderboard_cmds", "serve_cmds")
for _name in COMMAND_MODULES:
    importlib.import_module(f"prefpred.cli.{_name}")


def main() -> None:
    app(prog_name="prefpred")


__all__ = ["app", "main"]
