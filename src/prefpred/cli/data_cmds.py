"""prefpred CLI: ``prefpred data validate`` and ``prefpred data stats``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from prefpred.cli.app import data_app

FORMAT_HELP = "Reader name (arena, autoj, pandalm, llmbar, hh-rlhf, arena-conversations, arena-votes, " \
              "prefpred-jsonl) or auto."


@data_app.command("validate")
def validate(
    path: Path = typer.Argument(..., help="Data file or directory."),
    format: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Drop bad rows and report them."),
) -> None:
    """Check a data file: every row parses, labels are one-hot, ids are unique, text is UTF-8."""
    from prefpred.data import read_pairs

    res = read_pairs(path, format=format, skip_invalid=skip_invalid)
    console = Console(soft_wrap=True)
    console.print(f"[green]OK[/green] {path}: {len(res.pairs)} valid pairs (format: {res.format})")
    if res.dropped:
        console.print(f"dropped {len(res.dropped)} invalid row(s):")
        for reason, count in sorted(res.drop_summary().items(), key=lambda kv: -kv[1]):
            console.print(f"  {count:>6}  {reason}")
        for err in res.dropped[:5]:
            console.print(f"  e.g. {err.one_line()}", highlight=False)


@data_app.command("stats")
def stats(
    path: Path = typer.Argument(..., help="Data file or directory."),
    format: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Drop bad rows and report them."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Rows, label mix, turns, length percentiles and duplicates of a data file."""
    from prefpred.data import pairs_summary, read_pairs

    res = read_pairs(path, format=format, skip_invalid=skip_invalid)
    summary = pairs_summary(res.pairs)
    summary["dropped"] = len(res.dropped)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console = Console(soft_wrap=True)
    n = max(summary["rows"], 1)
    console.print(f"[bold]{path}[/bold] ({res.format}): {summary['rows']} pairs"
                  + (f", {len(res.dropped)} dropped" if res.dropped else ""))
    labels = Table(title="Labels")
    for col in ("label", "rows", "share"):
        labels.add_column(col, justify="right" if col != "label" else "left")
    for name, count in summary["labels"].items():
        labels.add_row(name, str(count), f"{count / n:.1%}")
    console.print(labels)
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
