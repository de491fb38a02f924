"""prefpred CLI: ``prefpred judge``: zero-shot judging with any causal LM (hub id, folder, GGUF file, alias).

The model name goes through :func:`prefpred.sources.resolve_model`; a name that cannot load (missing file, hub id
while offline) is one line on stderr and exit code 2 before the model is loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from prefpred.cli.app import app


@app.command("judge")
def judge(
    model: str = typer.Option(..., "--model", "-m", help="Causal LM: hub id, local folder, .gguf file "
                              "(or folder:file.gguf), or an alias: smollm2, tiny:qwen2."),
    data: Path = typer.Option(..., "--data", "-d", help="Pairs to judge (any format prefpred reads)."),
    style: str = typer.Option("seed-digits", "--style",
                              help="Prompt style: seed-digits (the study's prompt), criteria-10, classifier."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write predictions (id,p_a,p_b,p_tie[,label]) here."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Judge only the first N pairs."),
    max_length: int = typer.Option(2048, "--max-length", help="Token cap per prompt (pairs are truncated, "
                                   "never dropped)."),
    parse_generation: bool = typer.Option(False, "--parse-generation",
                                          help="Generate and parse the digit (the study's method) instead of "
                                               "label-token probabilities; reports the unparseable rate."),
    no_swap: bool = typer.Option(False, "--no-swap", help="Judge only the A/B order (no swap averaging)."),
    batch_tokens: int = typer.Option(16384, "--batch-tokens", help="Maximum padded tokens per batch."),
    batch_size: int = typer.Option(32, "--batch-size", help="Maximum sequences per batch."),
    max_new_tokens: int = typer.Option(8, "--max-new-tokens", help="Tokens generated in --parse-generation."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps..."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    load_in_4bit: bool = typer.Option(False, "--load-in-4bit", help="Load the LLM in 4-bit NF4 (bitsandbytes)."),
    data_format: str = typer.Option("auto", "--format", help="Data reader name, or auto."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    base_url: str | None = typer.Option(None, "--base-url", help="Judge with --model behind this OpenAI-compatible "
                                        "server (e.g. http://127.0.0.1:8000/v1) from its top_logprobs."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env",
                                    help="Environment variable with the server's API key (local servers need none)."),
) -> None:
    """Judge pairs zero-shot with an instruct LLM: probabilities from the next-token logits of the 3 labels."""
    from prefpred.data import load_pairs
    from prefpred.models.judge import ZeroShotJudge
    from prefpred.prompts import get_style
    from prefpred.types import UserError

    get_style(style)  # unknown style: one line, exit 2, before anything is loaded
    if limit is not None and limit < 1:
        raise UserError("--limit must be >= 1")
    if out is not None:
        from prefpred.utils import check_output

        check_output(out, force=force, inputs=[data])
    pairs = load_pairs(data, format=data_format, limit=limit)
    if not pairs:
        raise UserError(f"{data}: no pairs to judge")
    if base_url is not None:  # a server-side model name: never resolved locally
        from prefpred.models.remote_judge import RemoteJudge

        judge_model = RemoteJudge(base_url=base_url, model=model, style=style, swap_average=not no_swap,
                                  parse_generation=parse_generation, max_new_tokens=max_new_tokens,
                                  api_key_env=api_key_env)
    else:
        from prefpred.sources import resolve_model

        resolve_model(model)  # fail fast (one line) on a model that cannot load; GGUF files are converted once
        judge_model = ZeroShotJudge(model=model, style=style, max_length=max_length, device=device, dtype=dtype,
                                    load_in_4bit=load_in_4bit, swap_average=not no_swap,
                                    parse_generation=parse_generation, max_new_tokens=max_new_tokens,
                                    token_budget=batch_tokens, max_batch_size=batch_size)
    proba = judge_model.fit([]).predict_proba(pairs)
    ids = [p.id for p in pairs]
    labelled = [i for i, p in enumerate(pairs) if p.label is not None]
    labels = np.asarray([pairs[i].label for i in labelled], dtype=np.float64).reshape(-1, 3)

    mode = "parse-generation" if parse_generation else "label-token"
    typer.echo(f"judged {len(pairs)} pairs with {model} (style {style}, {mode}"
               f"{', swap-averaged' if not no_swap else ''})")
    if getattr(judge_model, "failed_", 0):
        typer.echo(f"{judge_model.failed_} request(s) got no answer (those orders count as uniform)")
    if labelled:
        from prefpred.metrics import accuracy, log_loss

        sub = proba[labelled]
        typer.echo(f"log loss {log_loss(labels, sub):.4f}  accuracy {accuracy(labels, sub):.4f}  "
                   f"({len(labelled)} labelled pairs)")
    if parse_generation:
        rate = judge_model.unparseable_rate_ or 0.0
        n_answers = len(judge_model.generations_ or [])
        typer.echo(f"unparseable rate {rate:.4f} ({round(rate * n_answers)} of {n_answers} answers)")
    if out is not None:
        from prefpred.submission import write_predictions

        full_labels = labels if len(labelled) == len(pairs) else None
        write_predictions(ids, proba, out, labels=full_labels, force=True)
        typer.echo(f"wrote {out}")
    else:
        typer.echo("predictions not written (pass --out PATH)")
