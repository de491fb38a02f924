"""Running the app under uvicorn: in the foreground (the CLI) or in a background thread (tests, notebooks).

The listening socket is bound here, before uvicorn starts, so a port in use or a bad host is one
:class:`~prefpred.types.UserError` line instead of a uvicorn log and ``sys.exit``; port 0 picks a free port.
Shutdown is uvicorn's graceful one: stop accepting, let in-flight requests finish (up to
``graceful_timeout_s``), then the app's lifespan stops the batcher.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from prefpred.types import UserError

logger = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); one-line :class:`UserError` on failure."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    # proto must be IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY on accepted sockets only then, and without it
    # a response's body waits ~40 ms behind its headers (Nagle + delayed ACK)
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def make_server(app, *, log_level: str = "info", access_log: bool = True, graceful_timeout_s: int = 30,
                limit_concurrency: int | None = 1024, **config: Any) -> uvicorn.Server:
    """A uvicorn server for ``app`` (no signal handlers outside the main thread; uvicorn's own rule).

    ``config`` goes to :class:`uvicorn.Config` (e.g. ``log_config=None`` to leave logging as it is).
    """
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout_s, limit_concurrency=limit_concurrency,
                            proxy_headers=False, server_header=False, **config)
    return uvicorn.Server(config)


def run_server(app, sock: socket.socket, **kwargs) -> None:
    """Serve ``app`` on the bound socket ``sock`` until SIGINT/SIGTERM (blocking)."""
    host = sock.getsockname()[0]
    if host not in LOOPBACK:
        logger.warning("listening on %s, reachable from other machines: require a token (--token-env) and put "
                       "a TLS proxy in front", host)
    make_server(app, **kwargs).run(sockets=[sock])


class BackgroundServer:
    """``with BackgroundServer(app) as srv: httpx.get(srv.url + "/health")``: uvicorn in a daemon thread.

    Startup waits at most ``startup_timeout_s``; :meth:`stop` triggers the graceful shutdown and joins the thread.
    """

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 30.0,
                 **kwargs):
        kwargs.setdefault("log_level", "warning")
        self.sock = bind_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = make_server(app, **kwargs)
        self.startup_timeout_s = startup_timeout_s
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="prefpred-serve")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread exited during startup (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the server did not start within {self.startup_timeout_s:.0f} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
