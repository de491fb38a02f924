"""prefpred CLI: bench commands (``prefpred bench ...``): benchmarks that print numbers."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prefpred.cli.app import bench_app
from prefpred.types import ConfigError


def _default_head(model: str, style: str | None) -> str:
    """classifier for the classifier style or a model that is not a causal LM; else label-token."""
    if style is not None:
        return "classifier" if style == "classifier" else "label-token"
    from prefpred import hf

    try:
        from transformers import AutoConfig

        archs = AutoConfig.from_pretrained(hf.resolve_model_path(model)).architectures or []
    except (OSError, ValueError):
        return "label-token"
    return "label-token" if any(a.endswith("ForCausalLM") for a in archs) else "classifier"


def _load_model(model: str, head: str, *, device: str, dtype: str, seed: int):
    from prefpred import hf
    from prefpred.utils import set_seed

    path = hf.resolve_model_path(model)
    tok = hf.load_tokenizer(path)
    set_seed(seed)  # a fresh classification head is initialised reproducibly
    if head == "classifier":
        m = hf.load_sequence_classifier(path, num_labels=3, device=device, dtype=dtype, pad_token_id=tok.pad_token_id)
    else:
        m = hf.load_causal_lm(path, device=device, dtype=dtype)
    return m.eval(), tok


@bench_app.command("inference")
def bench_inference(
    model: str = typer.Option(..., "--model", help="Hub id, model folder, .gguf file, or an alias: smollm2, minilm, "
                              "tiny:qwen2."),
    data: Path = typer.Option(..., "--data", help="Pairs file (Kaggle/HF Arena CSV/parquet, prefpred JSONL, ...)."),
    limit: int | None = typer.Option(200, "--limit", min=0, help="Score the first N pairs (0 = all)."),
    style: str | None = typer.Option(None, "--style", help="Prompt style (default: criteria-10; "
                                     "classifier with --head classifier)."),
    head: str | None = typer.Option(None, "--head", help="label-token (causal LM judge) or classifier "
                                    "(default: classifier with --style classifier, else label-token)."),
    max_length: int = typer.Option(512, "--max-length", help="Per-sequence token cap."),
    token_budget: int = typer.Option(8192, "--token-budget", help="Max padded tokens per batch."),
    max_batch_size: int = typer.Option(64, "--max-batch-size", help="Max sequences per batch."),
    swap: bool = typer.Option(True, "--swap/--no-swap", help="Swap averaging."),
    processes: int = typer.Option(1, "--processes", help="Also time N data-parallel processes (N > 1)."),
    repeats: int = typer.Option(1, "--repeats", help="Keep the fastest of N runs of each path."),
    engine: str = typer.Option("hf", "--engine", help="hf (transformers) or vllm (needs the extra: pip install prefpred\\[vllm])."),
    device: str = typer.Option("auto", "--device", help="Device (auto, cpu, cuda:0, ...)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16."),
    seed: int = typer.Option(0, "--seed", help="Seed (initialisation of a fresh classification head)."),
    reference: bool = typer.Option(True, "--reference/--no-reference",
                                   help="Also time the naive loop (one sequence at a time, full logits) and the "
                                        "body-only roofline (label-token heads)."),
    threads: int = typer.Option(0, "--threads", help="torch threads (0 = torch's default); 1 makes CPU time a "
                                "clean measure of work on a shared machine."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the numbers to this JSON file."),
) -> None:
    """Compare prefpred's judge with a naive loop and the body-only roofline, bucketed vs fixed batches, prefix
    cache vs none (and N processes) side by side in one run, on the same pairs."""
    from prefpred.data import load_pairs
    from prefpred.inference import InferenceConfig
    from prefpred.inference.bench import compare_paths, format_report
    from prefpred.prompts import get_style
    from prefpred.utils import atomic_write_text

    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    if engine not in ("hf", "vllm"):
        raise ConfigError(f"unknown --engine {engine!r} (use hf or vllm)")
    if head is None:
        head = _default_head(model, style)
    if head not in ("label-token", "classifier"):
        raise ConfigError(f"unknown --head {head!r} (use label-token or classifier)")
    style_obj = get_style(style or ("classifier" if head == "classifier" else "criteria-10"))
    pairs = load_pairs(data, limit=limit or None)
    if not pairs:
        raise ConfigError(f"{data}: no pairs to score")
    cfg = InferenceConfig(max_length=max_length, token_budget=token_budget, max_batch_size=max_batch_size,
                          swap_average=swap, engine=engine)
    if engine == "vllm":
        from prefpred import hf
        from prefpred.inference.vllm_engine import make_llm

        m, tok = make_llm(hf.resolve_model_path(model), cfg), None
    else:
        m, tok = _load_model(model, head, device=device, dtype=dtype, seed=seed)
    result = compare_paths(pairs, m, tok, style_obj, head=head, config=cfg, processes=processes, repeats=repeats,
                           reference=reference)
    result.update(model=model, data=str(data), device=str(next(iter(result["paths"].values()))["device"]))
    typer.echo(format_report(result))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result, indent=2, default=str) + "\n")
        typer.echo(f"wrote {json_out}")
