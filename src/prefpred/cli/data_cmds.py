"""prefpred CLI: ``prefpred data validate`` and ``prefpred data stats``.

``validate`` reads the whole file and lists every invalid row (the first :data:`MAX_LISTED`, then a count),
what was accepted but changed (notes such as padded ragged turns or ``both_bad`` votes counted as ties), and
exits 2 when rows are invalid (unless ``--skip-invalid``) or when the file has no prompt/response text.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from prefpred.cli.app import data_app
from prefpred.types import DataError

FORMAT_HELP = "Reader name (arena, autoj, pandalm, llmbar, hh-rlhf, arena-conversations, arena-votes, " \
              "prefpred-jsonl) or auto."
MAX_LISTED = 20
"""``data validate`` lists at most this many invalid rows one by one."""


def _print_notes(console: Console, notes: dict[str, int]) -> None:
    for note, count in notes.items():
        console.print(f"note: {count} {escape(note)}", highlight=False)


@data_app.command("validate")
def validate(
    path: Path = typer.Argument(..., help="Data file or directory."),
    format: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Invalid rows are reported but do not fail."),
) -> None:
    """Check a data file: every row parses, labels are one-hot, ids are unique, text is UTF-8. Lists every
    problem (the first 20 one by one) with a count; exit code 2 when any row is invalid."""
    from prefpred.data import no_text_message, read_pairs
    from prefpred.data_stats import has_text

    res = read_pairs(path, format=format, skip_invalid=True, log=False)
    console = Console(soft_wrap=True)
    bad = len(res.dropped)
    total = len(res.pairs) + bad
    if bad:
        console.print(f"[red]{bad} invalid row(s)[/red] of {total} in {escape(str(path))}:", highlight=False)
        for err in res.dropped[:MAX_LISTED]:
            console.print(f"  {escape(err.one_line())}", highlight=False)
        if bad > MAX_LISTED:
            console.print(f"  ... and {bad - MAX_LISTED} more", highlight=False)
        console.print("by reason:")
        for reason, count in sorted(res.drop_summary().items(), key=lambda kv: -kv[1]):
            console.print(f"  {count:>6}  {escape(reason)}", highlight=False)
    _print_notes(console, res.notes)
    if res.pairs and not has_text(res.pairs):
        raise DataError(no_text_message(res), path=str(path))
    if bad and not skip_invalid:
        first = res.dropped[0].one_line()
        raise DataError(f"{bad} invalid row(s) of {total} (use --skip-invalid to drop them); first: {first}"
                        if bad > 1 else f"{first} (use --skip-invalid to drop it)")
    state = "[green]OK[/green]" if not bad else "[yellow]OK with --skip-invalid[/yellow]"
    console.print(f"{state} {escape(str(path))}: {len(res.pairs)} valid pairs (format: {res.format})"
                  + (f", {bad} invalid row(s) dropped" if bad else ""), highlight=False)


@data_app.command("stats")
def stats(
    path: Path = typer.Argument(..., help="Data file or directory."),
    format: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Drop bad rows and report them."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Rows, label mix, turns, length percentiles and duplicates of a data file."""
    from prefpred.data import no_text_message, read_pairs
    from prefpred.data_stats import pairs_summary

    res = read_pairs(path, format=format, skip_invalid=skip_invalid, log=False)
    summary = pairs_summary(res.pairs)
    summary["dropped"] = len(res.dropped)
    summary["notes"] = res.notes
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console = Console(soft_wrap=True)
    n = max(summary["rows"], 1)
    console.print(f"[bold]{escape(str(path))}[/bold] ({res.format}): {summary['rows']} pairs"
                  + (f", {len(res.dropped)} dropped" if res.dropped else ""))
    _print_notes(console, res.notes)
    if res.pairs and not summary["has_text"]:
        console.print(f"note: {escape(no_text_message(res))}", highlight=False)
    labels = Table(title="Labels")
    for col in ("label", "rows", "share"):
        labels.add_column(col, justify="right" if col != "label" else "left")
    for name, count in summary["labels"].items():
        labels.add_row(name, str(count), f"{count / n:.1%}")
    console.print(labels)
    if not summary["has_text"]:  # turns, lengths and duplicates describe texts: all empty here
        return
    t = summary["turns"]
    console.print(f"Turns: {t['single']} single-turn, {t['multi']} multi-turn (max {t['max']}); "
                  f"soft labels: {summary['soft_labels']}")
    lengths = Table(title="Length (characters)")
    lengths.add_column("part")
    for q in ("p5", "p25", "p50", "p75", "p95", "max"):
        lengths.add_column(q, justify="right")
    for part, pct in summary["length_chars"].items():
        lengths.add_row(part, *(f"{pct.get(q, 0):.0f}" for q in ("p5", "p25", "p50", "p75", "p95", "max")))
    console.print(lengths)
    d = summary["duplicates"]
    console.print(f"Duplicates: {d['identical_pairs']} identical pairs, {d['repeated_prompts']} repeated prompts, "
                  f"{d['identical_responses']} pairs with identical responses")
