"""Command-line interface: ``prefpred`` (also ``python -m prefpred``)."""

from __future__ import annotations

import importlib

from prefpred.cli.app import app

# Importing a command module registers its commands; this order is the order `prefpred --help` lists them.
COMMAND_MODULES = ("run_cmds", "ensemble_cmds", "judge_cmds", "llm_cmds", "data_cmds", "synth_cmds", "bench_cmds",
                   "leaderboard_cmds", "serve_cmds")
for _name in COMMAND_MODULES:
    importlib.import_module(f"prefpred.cli.{_name}")


def _exit_on_sigterm() -> None:
    """SIGTERM (``kill``, a job scheduler's stop) unwinds like Ctrl+C, so ``finally`` blocks run: a half-written
    run's temporary folder is removed and an old output stays as it was. Exit code 143 (128 + 15), as the shell
    reports a process ended by SIGTERM. ``prefpred serve`` replaces it with uvicorn's graceful shutdown."""
    import signal
    import threading

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def main() -> None:
    _exit_on_sigterm()
    app(prog_name="prefpred")


__all__ = ["app", "main"]
