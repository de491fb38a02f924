"""prefpred CLI: ``prefpred serve``: a run's model (or a zero-shot judge) as an HTTP service."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from prefpred.cli.app import app


@app.command("serve")
def serve_cmd(
    run: Path | None = typer.Option(None, "--run", help="Run directory to serve (any kind that can predict)."),
    model: str | None = typer.Option(None, "--model", "-m",
                                     help="Serve a zero-shot judge with this causal LM instead of a run "
                                          "(hub id, local directory, .gguf or alias)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(8000, "--port", help="TCP port (0: a free one)."),
    raw: bool = typer.Option(False, "--raw", help="Skip the run's calibration."),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="Dynamic micro-batching."),
    max_batch_size: int = typer.Option(64, "--max-batch-size", help="Most pairs per model call."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms",
                                      help="Longest a request waits for requests already arriving to join its "
                                           "batch (a lone request never waits)."),
    token_env: str | None = typer.Option(None, "--token-env",
                                         help="Require 'Authorization: Bearer <token>', the token read from this "
                                              "environment variable (e.g. PREFPRED_SERVE_TOKEN)."),
    max_body_bytes: int = typer.Option(8 * 1024 * 1024, "--max-body-bytes", help="Largest request body."),
    max_pairs: int = typer.Option(256, "--max-pairs", help="Most pairs per /v1/preference request."),
    max_candidates: int = typer.Option(16, "--max-candidates", help="Most candidates per /v1/rank request."),
    max_chars: int = typer.Option(100_000, "--max-chars", help="Most characters per text (per turn)."),
    max_turns: int = typer.Option(32, "--max-turns", help="Most turns per text given as a list."),
    max_concurrency: int = typer.Option(1024, "--max-concurrency",
                                        help="Open connections + tasks before new ones get 503."),
    log_texts: bool = typer.Option(False, "--log-texts", help="Log request texts (off by default)."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="uvicorn's per-request log line."),
    graceful_timeout: int = typer.Option(30, "--graceful-timeout",
                                         help="Seconds shutdown waits for in-flight requests."),
    style: str = typer.Option("seed-digits", "--style", help="--model only: prompt style of the judge."),
    max_length: int = typer.Option(2048, "--max-length", help="--model only: token cap per prompt."),
    device: str = typer.Option("auto", "--device", help="--model only: auto, cpu, cuda, ..."),
    dtype: str = typer.Option("auto", "--dtype", help="--model only: auto, float32, bfloat16 or float16."),
) -> None:
    """Serve a preference model over HTTP: POST /v1/preference, POST /v1/rank, GET /health, /v1/model, /metrics.

    Ctrl+C or SIGTERM shuts down gracefully: requests in flight finish first (up to --graceful-timeout).
    """
    from prefpred.serve.app import ServeSettings, create_app
    from prefpred.serve.models import load_judge, load_run, warm_up
    from prefpred.serve.schemas import Limits
    from prefpred.serve.server import bind_socket, run_server
    from prefpred.types import UserError

    if (run is None) == (model is None):
        raise UserError("give exactly one of --run RUN_DIR or --model SPEC")
    token = None
    if token_env is not None:
        token = os.environ.get(token_env, "")
        if not token.strip():
            raise UserError(f"--token-env {token_env}: the environment variable is unset or empty")
    try:
        limits = Limits(max_body_bytes=max_body_bytes, max_pairs=max_pairs, max_candidates=max_candidates,
                        max_turns=max_turns, max_chars=max_chars)
    except ValueError as e:
        raise UserError(str(e)) from None
    if max_batch_size < 1 or max_wait_ms < 0:
        raise UserError("--max-batch-size must be >= 1 and --max-wait-ms >= 0")
    sock = bind_socket(host, port)  # a port in use is one line, before a model is loaded
    try:
        predictor, info = (load_run(run, calibrated=not raw) if run is not None
                           else load_judge(model, style=style, max_length=max_length, device=device, dtype=dtype))
        warm_up(predictor)
    except BaseException:
        sock.close()
        raise
    settings = ServeSettings(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, batching=batching,
                             limits=limits, token=token, log_texts=log_texts,
                             shutdown_timeout_s=float(graceful_timeout))
    name = sock.getsockname()
    typer.echo(f"serving {info.kind} model {info.source} on http://{name[0]}:{name[1]} "
               f"(docs: /docs; auth {'on' if token else 'off'}; Ctrl+C stops)", err=True)
    try:
        run_server(create_app(predictor, info=info, settings=settings), sock, access_log=access_log,
                   graceful_timeout_s=graceful_timeout, limit_concurrency=max_concurrency)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its graceful shutdown: that is a clean stop
        typer.echo("stopped", err=True)

