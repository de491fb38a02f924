"""The FastAPI app of ``prefpred serve``: a preference model (anything with ``predict_proba``) over HTTP.

Endpoints: ``POST /v1/preference`` (one pair or a batch -> p_a, p_b, p_tie), ``POST /v1/rank`` (N candidates ->
Bradley-Terry scores and ranks), ``GET /health`` (liveness, never needs the token), ``GET /v1/model`` (run kind,
config, headline metrics), ``GET /metrics`` (Prometheus text), ``GET /openapi.json`` and ``/docs`` (FastAPI's).

Safety: an optional bearer token (compared in constant time, never logged or shown) guards every endpoint but
``/health`` and the API description (``/openapi.json``, ``/docs``, ``/redoc``); bodies over
``Limits.max_body_bytes`` are refused (413) before they are parsed; every refusal is a JSON :class:`~prefpred.serve.schemas.ErrorBody` naming the field; a model that fails or returns non-finite
probabilities for one request fails only that request (422 for a user error or a non-finite row, 500 for a
model bug) and the worker keeps serving. Request texts are logged only with ``log_texts``. Shutdown waits for the
queued work (uvicorn first lets in-flight requests finish).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from prefpred.runs import Predictor
from prefpred.serve.batcher import BatcherClosed, MicroBatcher
from prefpred.serve.metrics import CONTENT_TYPE, Metrics
from prefpred.serve.models import ModelInfo
from prefpred.serve.ranking import bradley_terry, ranks, win_matrix
from prefpred.serve.schemas import (
    ApiError,
    ErrorBody,
    InvalidRequest,
    Limits,
    PreferenceBatchOut,
    PreferenceOut,
    PreferenceRequest,
    RankOut,
    RankRequest,
    check_preference,
    check_rank,
    format_loc,
    preference_pairs,
    rank_pairs,
)
from prefpred.types import LABELS, Pair, UserError

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
"""Paths that never need the bearer token: liveness, and the API's own description (a browser opening ``/docs``
cannot send the token with the spec request it makes); scores, the model's config and metrics stay guarded."""
SCORING_PATHS = frozenset({"/v1/preference", "/v1/rank"})
"""Paths whose requests go to the batcher (announced to it as they arrive)."""
ARRIVING = "prefpred.arriving"
"""ASGI scope key: set while an announced request has not reached the batcher yet."""


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """How the server batches, what it accepts, and who may call it."""

    max_batch_size: int = 64
    """Most pairs scored in one model call (a larger request is scored alone, whole)."""
    max_wait_ms: float = 5.0
    """Longest a request waits for others (already arriving) to join its batch; a lone request never waits."""
    batching: bool = True
    """Dynamic micro-batching; off scores every request on its own."""
    limits: Limits = dataclasses.field(default_factory=Limits)
    token: str | None = dataclasses.field(default=None, repr=False)
    """Bearer token every request but ``/health`` must send; ``None`` = no authentication."""
    log_texts: bool = False
    """Log the texts of every request (off: only counts, ids and timings are logged)."""
    shutdown_timeout_s: float = 30.0
    """How long shutdown waits for queued work."""


# ------------------------------------------------------------------------------------------ middleware
def _json_bytes(status: int, code: str, message: str, field: str | None = None) -> bytes:
    return json.dumps(ErrorBody(error=code, message=message, field=field).model_dump(exclude_none=True)).encode()


async def _send_error(send: Callable, status: int, code: str, message: str, field: str | None = None,
                      headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = _json_bytes(status, code, message, field)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class _Guard:
    """Pure ASGI middleware: metrics for every request, the bearer token, and the body size limit."""

    def __init__(self, app, *, token: str | None, max_body_bytes: int, metrics: Metrics, endpoints: set[str],
                 batcher: MicroBatcher):
        self.app = app
        self.batcher = batcher
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.endpoints = endpoints

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                return hmac.compare_digest(value, self.expected)
        return False

    async def _read_body(self, scope, receive, send) -> bytes | None:
        """The whole body, or ``None`` after answering 400/413 (or when the client went away)."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "bad_request", "Content-Length is not a number", "body")
                    return None
                if declared > self.max_body_bytes:
                    await _send_error(send, 413, "limit_exceeded", f"body of {declared} bytes, more than the limit "
                                      f"of {self.max_body_bytes}", "body")
                    return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _send_error(send, 413, "limit_exceeded", f"body larger than the limit of "
                                  f"{self.max_body_bytes} bytes", "body")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope.get("path", "")
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.request_started()
        try:
            if self.expected is not None and path not in OPEN_PATHS and not self._authorized(scope):
                await _send_error(send_status, 401, "unauthorized", "missing or wrong bearer token "
                                  "(send Authorization: Bearer <token>)", field="authorization",
                                  headers=[(b"www-authenticate", b"Bearer")])
                return
            if scope.get("method") in {"POST", "PUT", "PATCH"}:
                if path in SCORING_PATHS and scope.get("method") == "POST":
                    self.batcher.announce()  # the batcher may wait for this one
                    scope[ARRIVING] = True
                body = await self._read_body(scope, receive, send_status)
                if body is None:
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_status)
        finally:
            if scope.pop(ARRIVING, False):  # refused before it reached the batcher
                self.batcher.withdraw()
            endpoint = path if path in self.endpoints else "other"
            self.metrics.request_finished(endpoint, scope.get("method", ""), status, time.perf_counter() - start)


def _replay(body: bytes, receive: Callable[[], Awaitable[dict]]) -> Callable[[], Awaitable[dict]]:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# ------------------------------------------------------------------------------------------ errors
def _error(status: int, code: str, message: str, field: str | None = None,
           errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = ErrorBody(error=code, message=message, field=field, errors=errors).model_dump(exclude_none=True)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    """422 naming the first bad field; the two failed branches of ``str | list[str]`` are merged into one."""
    merged: dict[str, list[str]] = {}
    errs = exc.errors()
    # a list given for a str | list[str] text: its item errors say more than "not a string"
    item_errors = {tuple(e["loc"][:-2]) for e in errs if len(e.get("loc", ())) > 2 and e["loc"][-2] == "list[str]"}
    for err in errs:
        loc, kind = tuple(err.get("loc", ())), err.get("type", "")
        if loc and loc[-1] == "str" and loc[:-1] in item_errors:
            continue
        if kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "JSON decode error")
            pos = loc[1] if len(loc) > 1 else "?"
            merged.setdefault("body", []).append(f"not valid JSON ({detail} at char {pos})")
            continue
        field = format_loc(loc)
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if kind in {"string_type", "list_type"} and loc and loc[-1] in {"str", "list[str]"}:
            msg = "expected a text or a list of texts (one per turn)"  # both branches of str | list[str]
        if field == "body" and kind in {"model_attributes_type", "dict_type", "model_type"}:
            msg = "expected a JSON object (send Content-Type: application/json)"
        if msg not in merged.setdefault(field, []):
            merged[field].append(msg)
    errors = [{"field": f, "message": " or ".join(msgs)} for f, msgs in merged.items()]
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    return _error(422, "invalid_request", f"{first['field']}: {first['message']}", first["field"], errors)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "limit_exceeded"}


# ------------------------------------------------------------------------------------------ the app
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody, "description": d} for s, d in (
        (401, "Missing or wrong bearer token"), (413, "A limit of this server exceeded"),
        (422, "Invalid request (the field is named)"), (503, "Shutting down"))}


def create_app(predictor: Predictor, *, info: ModelInfo, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``predictor`` (its batcher starts and stops with the app's lifespan)."""
    settings = settings or ServeSettings()
    limits = settings.limits
    metrics = Metrics(kind=info.kind, source=Path(info.source).name or info.source)
    batcher = MicroBatcher(predictor.predict_proba, max_batch_size=settings.max_batch_size,
                           max_wait_ms=settings.max_wait_ms, enabled=settings.batching, metrics=metrics)
    metrics.queue_depth = lambda: batcher.queue_depth

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        await batcher.start()
        logger.info("serving %s model %s (batching %s, max batch %d, max wait %.1f ms, auth %s)", info.kind,
                    info.source, "on" if settings.batching else "off", settings.max_batch_size,
                    settings.max_wait_ms, "on" if settings.token else "off")
        try:
            yield
        finally:
            await batcher.stop(settings.shutdown_timeout_s)
            logger.info("batcher stopped")

    app = FastAPI(title="prefpred", version=_version(), lifespan=lifespan,
                  description="Which of two chatbot responses would a person prefer? (a, b or tie)")
    app.state.batcher = batcher
    app.state.metrics = metrics

    async def score(request: Request, pairs: list[Pair], fields: Sequence[str]) -> np.ndarray:
        """Score through the batcher; map failures to one request's 4xx/5xx; ``fields[i]`` names pair i."""
        announced = bool(request.scope.pop(ARRIVING, False))
        if settings.log_texts:
            for p in pairs:
                logger.info("pair %s: prompt=%r a=%r b=%r", p.id, p.text_prompt()[:500], p.text_a()[:500],
                            p.text_b()[:500])
        try:
            proba = await batcher.submit(pairs, announced=announced)
        except BatcherClosed as e:
            raise ApiError(None, str(e), status=503, code="unavailable") from None
        except UserError as e:
            raise InvalidRequest(None, e.one_line()) from None
        except Exception as e:
            logger.exception("model failed on a request of %d pairs", len(pairs))
            raise ApiError(None, f"the model failed on this request ({type(e).__name__})", status=500,
                           code="model_error") from e
        bad = ~np.isfinite(proba).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidRequest(fields[i], "the model produced non-finite probabilities for this input")
        return proba

    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, f"{exc.field}: {exc.message}" if exc.field else exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, _HTTP_CODES.get(exc.status_code, "error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_request, exc: Exception) -> JSONResponse:
        logger.error("unexpected %s while handling a request", type(exc).__name__, exc_info=exc)
        return _error(500, "internal_error", f"internal error ({type(exc).__name__})")

    @app.get("/health", summary="Liveness: the model is loaded and the batcher runs")
    async def health() -> dict[str, Any]:
        ok = batcher.running
        body = {"status": "ok" if ok else "unavailable", "queue_depth": batcher.queue_depth}
        return body if ok else JSONResponse(body, status_code=503)

    @app.get("/v1/model", summary="The model being served: run kind, config, headline metrics")
    async def model() -> dict[str, Any]:
        return {**dataclasses.asdict(info), "batching": {"enabled": settings.batching,
                "max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms},
                "limits": dataclasses.asdict(limits), "labels": list(LABELS)}

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/preference", response_model=PreferenceOut | PreferenceBatchOut, responses=_ERROR_RESPONSES,
              summary="P(a), P(b), P(tie) for one pair or a batch")
    async def preference(body: PreferenceRequest, request: Request) -> Response:
        check_preference(body, limits)
        pairs = preference_pairs(body)
        fields = [f"pairs[{i}]" for i in range(len(pairs))] if body.is_batch else ["body"]
        proba = await score(request, pairs, fields)
        results = [{"id": item.id, "p_a": float(p[0]), "p_b": float(p[1]), "p_tie": float(p[2]),
                    "winner": LABELS[int(np.argmax(p))]} for item, p in zip(body.items(), proba, strict=True)]
        # written here (exact float repr) rather than re-validated against the response model: less per request
        return _json({"results": results} if body.is_batch else results[0])

    @app.post("/v1/rank", response_model=RankOut, responses=_ERROR_RESPONSES,
              summary="Score and rank N candidate responses to one prompt (Bradley-Terry)")
    async def rank(body: RankRequest, request: Request) -> dict[str, Any]:
        check_rank(body, limits)
        pairs, order = rank_pairs(body)
        proba = await score(request, pairs, [f"responses[{i}]" for i, _ in order])
        n = len(body.responses)
        wins = win_matrix(n, order, proba)
        scores = bradley_terry(wins)
        rank_of = ranks(scores)
        win_rate = wins.sum(axis=1) / (2 * (n - 1))
        ids = body.ids if body.ids is not None else [str(i) for i in range(n)]
        results = [{"index": i, "id": ids[i], "score": float(scores[i]), "rank": int(rank_of[i]),
                    "win_rate": float(win_rate[i])} for i in range(n)]
        best_first = [int(i) for i in np.argsort(rank_of, kind="stable")]
        return {"results": results, "best": best_first[0], "order": best_first}

    endpoints = {route.path for route in app.routes if hasattr(route, "path")}
    app.add_middleware(_Guard, token=settings.token, max_body_bytes=limits.max_body_bytes, metrics=metrics,
                       endpoints=endpoints, batcher=batcher)
    return app


def _json(body: Any) -> Response:
    return Response(json.dumps(body, separators=(",", ":")).encode(), media_type="application/json")


def _version() -> str:
    from prefpred import __version__

    return __version__
