"""The root ``prefpred`` Typer app and its sub-command groups.

Command modules (``prefpred.cli.*_cmds``) attach commands to these apps; :mod:`prefpred.cli` imports them all.
User errors (:class:`~prefpred.types.UserError`), usage errors (an unknown option, a value out of range) and every
:class:`OSError` (missing or existing files, a read-only folder, a full disk, a path under a file) become one line
on stderr and exit code 2, never a traceback: the line names the path (or option) and the reason. ``--verbose``
also logs the traceback at debug level.
"""

from __future__ import annotations

import errno
import logging
import re

import click
import typer
from typer.core import TyperGroup

from prefpred.types import UserError

EXIT_USER_ERROR = 2
logger = logging.getLogger("prefpred.cli")
# the hidden temporary names of atomic writes (``.NAME.<random>.tmp``) are shown as the NAME being written
_TMP_NAME = re.compile(r"(^|/)\.([^/]+)\.[A-Za-z0-9_]{6,12}\.tmp(?=/|$)")

_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "write elsewhere, e.g. --out",
    errno.EACCES: "check the permissions or write elsewhere",
}


def os_error_line(e: OSError) -> str:
    """One line for an :class:`OSError`: ``path: reason`` (both paths of a failed rename), plus a hint."""
    reason = e.strerror or (str(e.args[0]) if e.args else "") or type(e).__name__
    if e.filename is None and e.strerror is None and e.args:  # OSError("already a full sentence")
        return " ".join(str(e).split())[:300]
    where = ""
    if e.filename is not None:
        where = _TMP_NAME.sub(r"\1\2", str(e.filename))
        if getattr(e, "filename2", None) and str(e.filename2) != where:
            where += f" -> {e.filename2}"
    hint = _HINTS.get(e.errno or -1)
    line = f"{where}: {reason}" if where else reason
    return f"{line} ({hint})" if hint else line


WORKFLOW_ORDER = ("data", "split", "run", "predict", "evaluate", "ensemble", "leaderboard", "serve", "judge",
                  "train", "experiment", "synth", "bench")
"""How ``prefpred --help`` lists the commands: a new user's path (check the data, train, score, use), then the
LLM commands and tools. Commands missing here follow in the order they were registered."""


def _usage_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """click's usage errors and "no arguments: show help", in click itself and in the copy typer may vendor
    (typer 0.29 raises ``typer._click.exceptions.UsageError``, which is not ``click.UsageError``)."""
    modules = [click.exceptions]
    try:
        from typer._click import exceptions as vendored

        modules.append(vendored)
    except ImportError:  # a typer that uses click itself
        pass
    usage = tuple({m.UsageError for m in modules})
    no_args = tuple({m.NoArgsIsHelpError for m in modules if hasattr(m, "NoArgsIsHelpError")})
    return usage, no_args


_USAGE_ERRORS, _NO_ARGS = _usage_exceptions()


class _PrefpredGroup(TyperGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(WORKFLOW_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))

    def invoke(self, ctx: click.Context):  # noqa: D401 - click API
        try:
            return super().invoke(ctx)
        except _NO_ARGS:  # a command with nothing given shows its help
            raise
        except _USAGE_ERRORS as e:  # a bad option, value or command: one line naming it, not a boxed usage
            logger.debug("usage error", exc_info=True)
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            _fail(f"{where}: {e.format_message()} (see {where} --help)")
        except UserError as e:
            logger.debug("user error", exc_info=True)
            _fail(e.one_line())
        except BrokenPipeError:  # `prefpred ... | head` closed the pipe: stop quietly, as other tools do
            _silence_stdout()
            raise typer.Exit(1) from None
        except OSError as e:  # read-only folder, full disk, missing file, path under a file, ...
            logger.debug("OS error", exc_info=True)
            _fail(os_error_line(e))


def _tidy_help() -> None:
    """Help text as users expect it: typer 0.29 prints ``<bool>`` beside every flag (``--force <bool>``, which
    reads as if it took a value) and wraps required arguments in braces in usage lines (``{PATH}``). Flags show
    no type and arguments their plain name. Only display methods are replaced; a typer without them is left
    as it is (tests/test_cli_errors.py checks the help text)."""
    try:
        from typer.core import TyperArgument, TyperOption
    except ImportError:  # pragma: no cover - other typer versions
        return
    show_type = getattr(TyperOption, "display_type_rich", None)
    if show_type is not None and not getattr(show_type, "_prefpred", False):
        def display_type_rich(self, ctx):
            return None if self.is_flag and self.metavar is None else show_type(self, ctx)

        display_type_rich._prefpred = True  # type: ignore[attr-defined]
        TyperOption.display_type_rich = display_type_rich
    if hasattr(TyperArgument, "_usage_display_name"):
        def usage_name(self) -> str:
            name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
            return name + ("..." if self.nargs != 1 else "")

        TyperArgument._usage_display_name = usage_name


_tidy_help()


MAX_ERROR_CHARS = 600


def printable_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` as one terminal-safe line: whitespace runs become one space, other control characters, lone
    surrogates (undecodable bytes) and the like are escaped, and the line is trimmed to ``limit`` characters."""
    text = " ".join(text.split())
    text = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so Python's own flush at exit does not fail on the closed pipe again."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (captured): nothing to silence
        pass


def _fail(message: str) -> None:
    click.echo(f"Error: {printable_line(message)}", err=True)
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


def _print_version(value: bool) -> None:
    if value:
        from prefpred import __version__

        typer.echo(f"prefpred {__version__}")
        raise typer.Exit()


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
          version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    from prefpred.utils import setup_logging

    setup_logging(verbose)
