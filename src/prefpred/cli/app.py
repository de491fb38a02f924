"""The root ``prefpred`` Typer app and its sub-command groups.

Command modules (``prefpred.cli.*_cmds``) attach commands to these apps; :mod:`prefpred.cli` imports them all.
User errors (:class:`~prefpred.types.UserError`, missing or existing files) become one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import click
import typer
from typer.core import TyperGroup

from prefpred.types import UserError

EXIT_USER_ERROR = 2


class _PrefpredGroup(TyperGroup):
    def invoke(self, ctx: click.Context):  # noqa: D401 - click API
        try:
            return super().invoke(ctx)
        except UserError as e:
            _fail(e.one_line())
        except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                PermissionError) as e:
            msg = f"{e.filename}: {e.strerror}" if getattr(e, "filename", None) and e.strerror else str(e)
            _fail(msg)


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    raise typer.Exit(EXIT_USER_ERROR)


app = typer.Typer(
    cls=_PrefpredGroup,
    help="prefpred: predict which of two chatbot responses a person prefers (A, B or tie).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect and validate pairwise preference data.", no_args_is_help=True)
synth_app = typer.Typer(help="Teacher labels and synthetic pairs over an OpenAI-compatible API.",
                        no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print numbers.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(synth_app, name="synth")
app.add_typer(bench_app, name="bench")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    from prefpred.utils import setup_logging

    setup_logging(verbose)
