"""prefpred CLI: ``prefpred synth label`` and ``prefpred synth pairs`` (teacher labels over an OpenAI-compatible API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from prefpred.cli.app import synth_app

_CONC = "Requests in flight at once."
_RPM = "Most requests per minute (retries count); default: no limit."
_TIMEOUT = ("Overall deadline of one request attempt in seconds (connect, wait and the whole answer; a server "
            "that trickles bytes is cut at it).")
_JSON_MODE = ("Structured-output dialect: json_schema (OpenAI, vLLM), json_object (llama.cpp's "
              "{\"type\": \"json_object\", \"schema\": ...}), none (prompt only), or auto: json_schema, falling back "
              "in order when the server refuses it (HTTP 400/422, or an error naming response_format, as llama.cpp's "
              "HTTP 500), remembered for the run.")
_BREAKER = ("Stop the run after this many request attempts in a row got no usable answer (timeouts, connection "
            "errors, 429/5xx, unreadable bodies); 0: never.")
_FORCE = "Overwrite --out if it exists (never the input file)."
_RETRIES = "Retries of a request after HTTP 429, 5xx, a timeout or a connection error."
_FMT_RETRIES = "Extra attempts when the teacher's output is malformed, before the pair is recorded as failed."
_KEY_ENV = "Environment variable that holds the API key (local servers accept EMPTY)."
_CACHE = "Answer cache (append-only JSONL; default: OUT.cache.jsonl). Reruns resume from it."
_RETRY_FAILED = ("Ask again for answers recorded as malformed or rejected (HTTP 400) in the cache; answers lost "
                 "to 429/5xx/timeouts are always asked again.")
_PRICE_IN = "Price of one million prompt tokens, for the cost estimate."
_PRICE_OUT = "Price of one million completion tokens, for the cost estimate."


def _client_config(base_url: str, **kw: Any):
    from prefpred.synth.client import ClientConfig

    cfg = ClientConfig(base_url=base_url, **kw)
    cfg.validate()
    return cfg


def _print_requests(console: Console, title: str, stats: dict[str, Any]) -> None:
    cost = "" if stats["cost"] is None else f"; estimated cost {stats['cost']:.4f}"
    console.print(f"{title}: {stats['done']} done, {stats['from_cache']} from cache, {stats['failed']} failed, "
                  f"{stats['retried']} retried ({stats['sent']} sent, {stats['seconds']:.1f} s); tokens: "
                  f"{stats['prompt_tokens']} prompt + {stats['completion_tokens']} completion{cost}", highlight=False)


def _print_label_report(console: Console, rep: dict[str, Any]) -> None:
    flip = "n/a" if rep["flip_rate"] is None else f"{rep['flip_rate']:.1%}"
    console.print(f"[bold]{rep['out']}[/bold]: {rep['labelled']}/{rep['pairs']} pairs labelled by "
                  f"{rep['teacher']} ({rep['style']}), {rep['failed']} failed; position-flip rate {flip}"
                  f" ({rep['flips']} pairs)", highlight=False)
    if rep["agreement_with_input_labels"] is not None:
        console.print(f"agreement with the input labels (argmax): {rep['agreement_with_input_labels']:.1%}")
    _print_requests(console, "Judge requests", rep["requests"])
    if rep["json_mode"] is not None:
        console.print(f"structured output sent as: {rep['json_mode']}", highlight=False)
    if rep["failed"]:
        causes = ", ".join(f"{n} {cause}" for cause, n in rep["failures"].items())
        console.print(f"[yellow]{rep['failed']} pair(s) failed[/yellow] ({causes}): they are in the output with "
                      "\"failed\": true and the raw answers; rerun with --retry-failed to ask again.")


@synth_app.command("label")
def label(
    data: Path = typer.Option(..., "--data", help="Pairs to label (any format prefpred reads)."),
    base_url: str = typer.Option(..., "--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1"),
    model: str = typer.Option(..., "--model", help="Teacher model name on the server."),
    out: Path = typer.Option(..., "--out", help="Labels file to write (prefpred JSONL)."),
    concurrency: int = typer.Option(8, "--concurrency", help=_CONC),
    rpm: float = typer.Option(None, "--rpm", help=_RPM),
    timeout: float = typer.Option(120.0, "--timeout", help=_TIMEOUT),
    max_retries: int = typer.Option(6, "--max-retries", help=_RETRIES),
    format_retries: int = typer.Option(2, "--format-retries", help=_FMT_RETRIES),
    backoff_base: float = typer.Option(1.0, "--backoff-base", help="First retry wait in seconds (doubles)."),
    backoff_max: float = typer.Option(60.0, "--backoff-max", help="Longest wait between retries."),
    temperature: float = typer.Option(0.0, "--temperature", help="Teacher sampling temperature."),
    max_tokens: int = typer.Option(1024, "--max-tokens", help="Most tokens per teacher answer."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help=_KEY_ENV),
    cache: Path = typer.Option(None, "--cache", help=_CACHE),
    retry_failed: bool = typer.Option(False, "--retry-failed", help=_RETRY_FAILED),
    format: str = typer.Option("auto", "--format", help="Reader of --data (see `prefpred data validate`)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Label only the first N pairs."),
    price_in: float = typer.Option(None, "--price-in", help=_PRICE_IN),
    price_out: float = typer.Option(None, "--price-out", help=_PRICE_OUT),
    json_mode: str = typer.Option("auto", "--json-mode", help=_JSON_MODE),
    max_consecutive_failures: int = typer.Option(10, "--max-consecutive-failures", help=_BREAKER),
    force: bool = typer.Option(False, "--force", help=_FORCE),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: on a tty)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Judge every pair twice (A/B exchanged) with a teacher LLM and write soft labels, resumably."""
    from prefpred.data import load_pairs
    from prefpred.synth.label import check_outputs, label_pairs

    cfg = _client_config(base_url, api_key_env=api_key_env, concurrency=concurrency, rpm=rpm, timeout=timeout,
                         max_retries=max_retries, format_retries=format_retries, backoff_base=backoff_base,
                         backoff_max=backoff_max, temperature=temperature, max_tokens=max_tokens,
                         price_in=price_in, price_out=price_out, json_mode=json_mode,
                         max_consecutive_failures=max_consecutive_failures)
    check_outputs(out, force=force, inputs=[data], cache_path=cache)
    pairs = load_pairs(data, format=format, limit=limit)
    report = label_pairs(pairs, cfg, teacher=model, out=out, cache_path=cache, retry_failed=retry_failed,
                         progress=progress, force=force, inputs=[data])
    rep = report.to_dict()
    if as_json:
        typer.echo(json.dumps(rep, indent=2))
        return
    _print_label_report(Console(soft_wrap=True), rep)


@synth_app.command("pairs")
def pairs(
    prompts: Path = typer.Option(..., "--prompts", help="Prompts: a text file (one per line) or JSONL with 'prompt'."),
    base_url: str = typer.Option(..., "--base-url", help="OpenAI-compatible server of the candidate models."),
    models: str = typer.Option(..., "--models", help="Candidate models, comma-separated (at least two)."),
    teacher: str = typer.Option(..., "--teacher", help="Teacher model that labels the pairs."),
    out: Path = typer.Option(..., "--out", help="Labelled pairs to write (prefpred JSONL)."),
    teacher_base_url: str = typer.Option(None, "--teacher-base-url", help="Teacher's server (default: --base-url)."),
    pairs_per_prompt: int = typer.Option(None, "--pairs-per-prompt", help="Most pairs per prompt (default: all)."),
    gen_temperature: float = typer.Option(0.7, "--gen-temperature", help="Candidates' sampling temperature."),
    gen_max_tokens: int = typer.Option(1024, "--gen-max-tokens", help="Most tokens per candidate answer."),
    system: str = typer.Option(None, "--system", help="System message for the candidates."),
    seed: int = typer.Option(0, "--seed", help="Seed of pair sampling and A/B placement."),
    concurrency: int = typer.Option(8, "--concurrency", help=_CONC),
    rpm: float = typer.Option(None, "--rpm", help=_RPM),
    timeout: float = typer.Option(120.0, "--timeout", help=_TIMEOUT),
    max_retries: int = typer.Option(6, "--max-retries", help=_RETRIES),
    format_retries: int = typer.Option(2, "--format-retries", help=_FMT_RETRIES),
    backoff_base: float = typer.Option(1.0, "--backoff-base", help="First retry wait in seconds (doubles)."),
    backoff_max: float = typer.Option(60.0, "--backoff-max", help="Longest wait between retries."),
    max_tokens: int = typer.Option(1024, "--max-tokens", help="Most tokens per teacher answer."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help=_KEY_ENV),
    cache: Path = typer.Option(None, "--cache", help=_CACHE),
    retry_failed: bool = typer.Option(False, "--retry-failed", help=_RETRY_FAILED),
    price_in: float = typer.Option(None, "--price-in", help=_PRICE_IN),
    price_out: float = typer.Option(None, "--price-out", help=_PRICE_OUT),
    json_mode: str = typer.Option("auto", "--json-mode", help=_JSON_MODE),
    max_consecutive_failures: int = typer.Option(10, "--max-consecutive-failures", help=_BREAKER),
    force: bool = typer.Option(False, "--force", help=_FORCE),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: on a tty)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Have candidate models answer new prompts, pair their answers and label the pairs with a teacher."""
    from prefpred.synth.pairs import GenerationConfig, read_prompts, synth_pairs

    common = dict(api_key_env=api_key_env, concurrency=concurrency, rpm=rpm, timeout=timeout,
                  max_retries=max_retries, format_retries=format_retries, backoff_base=backoff_base,
                  backoff_max=backoff_max, max_tokens=max_tokens, price_in=price_in, price_out=price_out,
                  json_mode=json_mode, max_consecutive_failures=max_consecutive_failures)
    cfg = _client_config(base_url, **common)
    teacher_cfg = _client_config(teacher_base_url or base_url, **common)
    gen = GenerationConfig(temperature=gen_temperature, max_tokens=gen_max_tokens, system=system,
                           pairs_per_prompt=pairs_per_prompt, seed=seed)
    model_list = [m.strip() for m in models.split(",") if m.strip()]
    report = synth_pairs(read_prompts(prompts), model_list, cfg, teacher=teacher, out=out, gen=gen,
                         teacher_cfg=teacher_cfg, cache_path=cache, retry_failed=retry_failed, progress=progress,
                         force=force, inputs=[prompts])
    rep = report.to_dict()
    if as_json:
        typer.echo(json.dumps(rep, indent=2))
        return
    console = Console(soft_wrap=True)
    console.print(f"{rep['prompts']} prompts x {len(rep['models'])} models: {rep['answers']} answers"
                  + (f", {rep['answers_missing']} missing" if rep["answers_missing"] else ""), highlight=False)
    _print_requests(console, "Generation requests", rep["generation_requests"])
    _print_label_report(console, rep["labelling"])
