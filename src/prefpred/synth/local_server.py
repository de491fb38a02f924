"""Start a real OpenAI-compatible server on 127.0.0.1 for tests and benchmarks: llama.cpp's or ``transformers serve``.

:class:`LocalServer` runs one of two servers as a child process on a free loopback port and stops it again:

* ``llama.cpp``: ``python -m llama_cpp.server --model FILE.gguf`` (``pip install "llama-cpp-python[server]"``,
  a C++ build of several minutes); it honours ``{"type": "json_object", "schema": ...}``, refuses
  ``json_schema`` and returns ``top_logprobs``. The ``model`` field of requests is ignored;
* ``transformers``: ``transformers serve DIR:FILE.gguf`` (``pip install "transformers[serving]"``); it ignores
  ``response_format`` and ``logprobs``. Requests must name :attr:`LocalServer.model_name`.

Startup is bounded: ``GET /v1/models`` is polled until it answers or ``startup_timeout`` passes, then the process
is killed and :class:`RuntimeError` names the end of its log. The process runs in its own session and is stopped
with SIGTERM, then SIGKILL; on Linux it also gets SIGTERM when this process dies, however it dies. Offline only: the model must be a local file (``HF_HUB_OFFLINE`` is set for the child).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

KINDS = ("llama.cpp", "transformers")


def available(kind: str) -> bool:
    """Whether the server ``kind`` can be started here (its package is installed)."""
    if kind == "llama.cpp":
        return all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "uvicorn", "sse_starlette"))
    if kind == "transformers":
        return (all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn"))
                and importlib.util.find_spec("transformers.cli.serve") is not None)
    raise ValueError(f"unknown server kind {kind!r} (known: {', '.join(KINDS)})")


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, have the kernel send SIGTERM when the parent dies (a killed test run
    leaves no server behind)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """A server process serving ``model_file`` (a GGUF file) on ``127.0.0.1``; a context manager."""

    def __init__(self, kind: str, model_file: str | Path, *, n_ctx: int = 2048, threads: int = 2,
                 startup_timeout: float = 300.0):
        if kind not in KINDS:
            raise ValueError(f"unknown server kind {kind!r} (known: {', '.join(KINDS)})")
        self.kind = kind
        self.model_file = Path(model_file)
        self.n_ctx = n_ctx
        self.threads = threads
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix=f"prefpred-{kind}-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_name(self) -> str:
        """The name requests must give (``transformers serve`` routes by it; llama.cpp ignores it)."""
        if self.kind == "transformers":
            return f"{self.model_file.parent}:{self.model_file.name}"
        return str(self.model_file)

    def command(self) -> list[str]:
        if self.kind == "llama.cpp":
            return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_file), "--host", "127.0.0.1",
                    "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads),
                    "--n_threads_batch", str(self.threads), "--verbose", "False"]
        return [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve",
                self.model_name, "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
                "--log-level", "warning"]

    def start(self) -> LocalServer:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "OMP_NUM_THREADS": str(self.threads)}
        logger.info("starting %s server on port %d: %s", self.kind, self.port, " ".join(self.command()))
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"the {self.kind} server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the {self.kind} server did not answer within {self.startup_timeout:g} s: "
                           f"{self.log_tail()}")

    def log_tail(self, n: int = 800) -> str:
        text = Path(self._log.name).read_text(encoding="utf-8", errors="replace")
        return text[-n:].strip() or "(no output)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        Path(self._log.name).unlink(missing_ok=True)
