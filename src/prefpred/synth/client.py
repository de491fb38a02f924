"""Reliable requests to an OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp server, hosted APIs).

:func:`run_jobs` sends many requests with bounded concurrency and an optional requests-per-minute limit, retries
429, 5xx, timeouts, connection errors and unreadable 200 answers (a body that is not JSON or lacks
``choices[0].message``) with exponential backoff and full jitter (honouring ``Retry-After``), re-asks when the
output is malformed, and appends every finished request to an :class:`AnswerCache` so a restart sends no request
twice. The official ``openai`` client is used with its own retries off (every retry is counted here) and its raw
response, which is parsed here so that a broken body is a counted failure, never a traceback.

Limits that keep a run from hanging:

* ``timeout`` is an overall deadline per attempt (connect, wait and the whole body): a server that trickles a
  byte a second is cut at the deadline, not kept alive by each read;
* a circuit breaker stops the run (:class:`CircuitOpen`, one line) after ``max_consecutive_failures`` attempts
  in a row got no usable answer (timeouts, connection errors, 429/5xx, unreadable bodies); any good answer
  resets it. Rejected requests (HTTP 400/422) and malformed model output do not count: the server is alive.

Structured output comes in dialects (:data:`~prefpred.synth.schema.JSON_MODES`): ``json_mode="auto"`` starts
with OpenAI's ``json_schema``; when the server refuses it with HTTP 400/422 the same request is sent again in
llama.cpp's ``json_object`` dialect, then with no ``response_format`` at all, and the first dialect the server
accepts is kept for the rest of the run (a refusal in every dialect is an ordinary rejected request).
llama-cpp-python's server answers HTTP 500 naming ``response_format`` instead of a 4xx: that counts too.

The API key is read from an environment variable (:func:`resolve_api_key`) and is never logged or written: every
text that comes from the server (answers, error messages, broken bodies) is scrubbed of it on arrival.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from prefpred.synth.cache import AnswerCache
from prefpred.synth.schema import JSON_MODES, SCHEMA_NAME, MalformedAnswer, response_format
from prefpred.types import ConfigError, UserError

logger = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
DUMMY_KEY = "EMPTY"


@dataclass
class ClientConfig:
    """How to reach the server and how hard to try."""

    base_url: str
    """Server base URL including ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (a local server accepts ``EMPTY``)."""
    concurrency: int = 8
    """Requests in flight at once."""
    rpm: float | None = None
    """Requests per minute (every attempt counts); ``None`` for no limit."""
    timeout: float = 120.0
    """Overall deadline of one attempt in seconds (connect, wait and the whole answer)."""
    max_retries: int = 6
    """Retries of one request after a 429, 5xx, timeout or connection error."""
    format_retries: int = 2
    """Extra attempts when the answer is malformed, before it is recorded as failed."""
    backoff_base: float = 1.0
    """First backoff in seconds; doubles each retry (full jitter)."""
    backoff_max: float = 60.0
    """Longest single wait between retries, in seconds."""
    temperature: float = 0.0
    """Sampling temperature of the first attempt."""
    retry_temperature: float = 0.7
    """Temperature of re-asks after malformed output (a greedy re-ask would repeat the same text)."""
    max_tokens: int | None = 1024
    """Most tokens per answer."""
    price_in: float | None = None
    """Price of one million prompt tokens (for the cost estimate)."""
    price_out: float | None = None
    """Price of one million completion tokens."""
    json_mode: str = "auto"
    """Structured-output dialect: ``auto`` (detected from the server's 4xx), ``json_schema``, ``json_object``
    (llama.cpp) or ``none``."""
    max_consecutive_failures: int = 10
    """Stop the run after this many attempts in a row got no usable answer (0: never)."""

    def validate(self) -> None:
        if not self.base_url or not urlparse(self.base_url).scheme.startswith("http"):
            raise ConfigError(f"--base-url must be an http(s) URL, got {self.base_url!r}")
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.rpm is not None and self.rpm <= 0:
            raise ConfigError("--rpm must be positive")
        if self.timeout <= 0:
            raise ConfigError("--timeout must be positive")
        if self.max_retries < 0 or self.format_retries < 0:
            raise ConfigError("retry counts must be >= 0")
        if self.json_mode not in ("auto", *JSON_MODES):
            raise ConfigError(f"--json-mode must be auto or one of {', '.join(JSON_MODES)}, got {self.json_mode!r}")
        if self.max_consecutive_failures < 0:
            raise ConfigError("--max-consecutive-failures must be >= 0 (0: no limit)")


@dataclass
class RunStats:
    """Counts of one run (requests, not pairs)."""

    done: int = 0
    """Requests answered validly in this run."""
    from_cache: int = 0
    """Requests found finished in the cache (not sent)."""
    failed: int = 0
    """Requests recorded as failed in this run (malformed output or no answer)."""
    retried: int = 0
    """Retries sent (after 429/5xx/timeouts and after malformed output)."""
    format_retries: int = 0
    """Of :attr:`retried`, the re-asks after malformed output."""
    sent: int = 0
    """HTTP requests sent, retries included."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    prices: tuple[float | None, float | None] = (None, None)

    @property
    def cost(self) -> float | None:
        """Estimated cost of this run's tokens, when prices were given."""
        p_in, p_out = self.prices
        if p_in is None and p_out is None:
            return None
        return (self.prompt_tokens * (p_in or 0.0) + self.completion_tokens * (p_out or 0.0)) / 1e6

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("done", "from_cache", "failed", "retried", "format_retries", "sent",
                                             "prompt_tokens", "completion_tokens")}
        out["seconds"] = round(self.seconds, 3)
        out["cost"] = None if self.cost is None else round(self.cost, 6)
        return out

    def add(self, other: RunStats) -> None:
        for k in ("done", "from_cache", "failed", "retried", "format_retries", "sent", "prompt_tokens",
                  "completion_tokens", "seconds"):
            setattr(self, k, getattr(self, k) + getattr(other, k))


class FatalAPIError(UserError):
    """The server refuses every request (bad key, unknown model, wrong URL): the run stops."""


class CircuitOpen(FatalAPIError):
    """Too many attempts in a row got no usable answer: the server looks down, the run stops."""


class RequestFailed(Exception):
    """One request got no answer: retries exhausted (``rejected=False``: worth asking again on a later run) or
    refused by the server as invalid (``rejected=True``, e.g. HTTP 400 for a pair longer than the context).
    ``raw`` holds the (scrubbed, shortened) bodies of unreadable answers, if any."""

    def __init__(self, message: str, *, rejected: bool = False, raw: list[str] | None = None):
        super().__init__(message)
        self.rejected = rejected
        self.raw = raw or []


class BadResponse(Exception):
    """An HTTP 200 whose body is not a chat completion (not JSON, or no ``choices[0].message``)."""

    def __init__(self, message: str, body: str):
        super().__init__(message)
        self.body = body


@dataclass
class Reply:
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    top_logprobs: dict[str, float] | None = None
    """The first generated token's ``top_logprobs`` (token text -> log-probability), when the server sent them."""


def resolve_api_key(env_name: str, base_url: str) -> str:
    """The API key from ``$env_name``; a local server without the variable gets the dummy key ``EMPTY``."""
    key = os.environ.get(env_name)
    if key:
        return key
    host = urlparse(base_url).hostname or ""
    if host in LOCAL_HOSTS:
        logger.info("$%s is not set; using a dummy key for the local server", env_name)
        return DUMMY_KEY
    raise UserError(f"set the API key in ${env_name} (or name another variable with --api-key-env; "
                    f"local servers accept {DUMMY_KEY})")


def scrub(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` (and of its long prefixes/suffixes) replaced by ``***``."""
    if not secret or secret == DUMMY_KEY or not text:
        return text
    text = text.replace(secret, "***")
    if len(secret) >= 16:  # servers often echo a shortened key (``sk-abc...wxyz``)
        for part in (secret[:12], secret[-8:]):
            text = text.replace(part, "***")
    return text


class RateLimiter:
    """Spaces request starts at least ``60 / rpm`` seconds apart (shared by all workers)."""

    def __init__(self, rpm: float | None):
        self.interval = 0.0 if not rpm else 60.0 / rpm
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if self.interval <= 0:
            return
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)], at least ``retry_after``."""
    rng = rng or random
    delay = rng.uniform(0.0, min(cap, base * (2 ** attempt)))
    if retry_after is not None and math.isfinite(retry_after):
        delay = max(delay, min(retry_after, cap))
    return delay


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class TeacherClient:
    """An ``openai.AsyncOpenAI`` client with counted retries, a deadline per attempt, a circuit breaker, JSON
    dialect detection, a rate limit and key scrubbing (see the module docstring)."""

    def __init__(self, cfg: ClientConfig, api_key: str, stats: RunStats | None = None, *,
                 rng: random.Random | None = None):
        from openai import AsyncOpenAI

        cfg.validate()
        self.cfg = cfg
        self._key = api_key
        self.stats = stats if stats is not None else RunStats(prices=(cfg.price_in, cfg.price_out))
        self.limiter = RateLimiter(cfg.rpm)
        self.rng = rng or random.Random()
        self.json_mode: str | None = None if cfg.json_mode == "auto" else cfg.json_mode
        """The structured-output dialect in use (``None`` until ``auto`` has seen the server accept one)."""
        self.consecutive_failures = 0
        self._client = AsyncOpenAI(base_url=cfg.base_url, api_key=api_key, max_retries=0, timeout=cfg.timeout)

    async def close(self) -> None:
        await self._client.close()

    def scrub(self, text: str) -> str:
        return scrub(text, self._key)

    def _modes(self, schema: dict | None) -> list[str | None]:
        if schema is None:
            return [None]
        return [self.json_mode] if self.json_mode is not None else list(JSON_MODES)

    def _succeeded(self, mode: str | None) -> None:
        self.consecutive_failures = 0
        if mode is not None and self.json_mode is None:
            self.json_mode = mode
            logger.info("the server accepts structured output as %s; using it for the rest of the run", mode)

    def _failed(self, reason: str) -> None:
        self.consecutive_failures += 1
        limit = self.cfg.max_consecutive_failures
        if limit and self.consecutive_failures >= limit:
            raise CircuitOpen(f"stopped: {self.consecutive_failures} requests in a row to {self.cfg.base_url} got no "
                              f"usable answer (last: {reason}); finished answers are kept in the cache, rerun to "
                              "resume (--max-consecutive-failures sets the limit)")

    async def chat(self, model: str, messages: Sequence[dict[str, str]], *, schema: dict | None = None,
                   schema_name: str = SCHEMA_NAME, temperature: float | None = None, max_tokens: int | None = None,
                   extra: dict[str, Any] | None = None) -> Reply:
        """One chat completion asking for JSON that follows ``schema`` (if any), retried on 429/5xx/timeouts/
        unreadable bodies; :class:`RequestFailed`, :class:`FatalAPIError` or :class:`CircuitOpen`.

        ``extra`` holds further request fields (e.g. ``logprobs``/``top_logprobs``).
        """
        import openai

        kwargs: dict[str, Any] = {"model": model, "messages": list(messages),
                                  "temperature": self.cfg.temperature if temperature is None else temperature,
                                  **(extra or {})}
        if (max_tokens or self.cfg.max_tokens) is not None:
            kwargs["max_tokens"] = max_tokens or self.cfg.max_tokens
        modes = self._modes(schema)
        mi, attempt, bodies = 0, 0, []
        while True:
            mode = modes[mi] if schema is None or self.json_mode is None else self.json_mode
            fmt = None if mode is None else response_format(mode, schema, schema_name)
            kwargs.pop("response_format", None)
            if fmt is not None:
                kwargs["response_format"] = fmt
            await self.limiter.wait()
            self.stats.sent += 1
            try:
                return self._accepted(mode, await self._send(kwargs))
            except openai.APIStatusError as e:
                code = e.status_code
                if code in (401, 403, 404):
                    raise FatalAPIError(f"the server refused the request (HTTP {code}): "
                                        f"{self.scrub(_short(e))}") from None
                if self.json_mode is None and mi + 1 < len(modes) and _refuses_format(code, e):
                    logger.info("HTTP %d for response_format %s; asking again as %s", code, mode, modes[mi + 1])
                    mi += 1
                    continue
                if code not in (408, 409, 429) and code < 500:
                    raise RequestFailed(f"HTTP {code}: {self.scrub(_short(e))}", rejected=True) from None
                reason, retry_after = f"HTTP {code}", _retry_after(e)
            except (openai.APITimeoutError, asyncio.TimeoutError):
                reason, retry_after = f"no complete answer within the {self.cfg.timeout:g} s deadline", None
            except openai.APIConnectionError as e:
                reason, retry_after = f"connection error ({self.scrub(str(e))})", None
            except BadResponse as e:
                reason, retry_after = f"unreadable answer: {e}", None
                bodies.append(_short_text(self.scrub(e.body), 2000))
            self._failed(reason)
            if attempt == self.cfg.max_retries:
                raise RequestFailed(f"{reason}; gave up after {attempt + 1} attempt(s)", raw=bodies)
            delay = backoff_delay(attempt, self.cfg.backoff_base, self.cfg.backoff_max, retry_after, self.rng)
            attempt += 1
            self.stats.retried += 1
            logger.debug("%s; retry %d in %.2f s", reason, attempt, delay)
            await asyncio.sleep(delay)

    def _accepted(self, mode: str | None, reply: Reply) -> Reply:
        self._succeeded(mode)
        return reply

    async def _send(self, kwargs: dict[str, Any]) -> Reply:
        """One HTTP attempt under the overall deadline; the parsed, scrubbed :class:`Reply`."""
        raw = await asyncio.wait_for(self._client.chat.completions.with_raw_response.create(**kwargs),
                                     timeout=self.cfg.timeout)
        return parse_reply(self.scrub(raw.text))


def _refuses_format(code: int, e: Exception) -> bool:
    """Whether an error answer may be the server refusing the ``response_format`` dialect: any HTTP 400/422, or
    another error that names ``response_format`` (llama-cpp-python's server answers HTTP 500 with its validation
    error for ``json_schema``)."""
    if code in (400, 422):
        return True
    text = f"{getattr(e, 'message', '')} {getattr(e, 'body', '')}".lower()
    return code >= 500 and "response_format" in text


def _short(e: Exception, n: int = 300) -> str:
    return _short_text(str(getattr(e, "message", None) or e), n)


def _short_text(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def parse_reply(body: str) -> Reply:
    """The :class:`Reply` in a chat-completion body; :class:`BadResponse` when it is not one."""
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as e:
        raise BadResponse(f"the body is not JSON ({getattr(e, 'msg', e)})", body) from None
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadResponse("the body has no choices[0]", body)
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise BadResponse("choices[0] has no message", body)
    text = message.get("content")
    if text is not None and not isinstance(text, str):
        raise BadResponse("choices[0].message.content is not text", body)
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
    finish = choice.get("finish_reason")
    return Reply(text=text, prompt_tokens=_int(usage.get("prompt_tokens")),
                 completion_tokens=_int(usage.get("completion_tokens")),
                 finish_reason=finish if isinstance(finish, str) else None, top_logprobs=_top_logprobs(choice))


def _top_logprobs(choice: dict[str, Any]) -> dict[str, float] | None:
    """``choices[0].logprobs.content[0].top_logprobs`` as token -> log-probability (finite values only)."""
    lp = choice.get("logprobs")
    content = lp.get("content") if isinstance(lp, dict) else None
    first = content[0] if isinstance(content, list) and content and isinstance(content[0], dict) else None
    top = first.get("top_logprobs") if first is not None else None
    if not isinstance(top, list):
        return None
    out: dict[str, float] = {}
    for item in top:
        if not isinstance(item, dict) or not isinstance(item.get("token"), str):
            continue
        v = item.get("logprob")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[item["token"]] = max(float(v), out.get(item["token"], -math.inf))
    return out


# ------------------------------------------------------------------------------------------------ job runner
@dataclass
class Job:
    """One request to make unless the cache already holds its finished answer."""

    key: str
    model: str
    messages: list[dict[str, str]]
    kind: str = "judge"
    schema: dict | None = None
    """JSON schema the answer must follow (sent as ``response_format`` in the client's dialect)."""
    parse: Callable[[str | None], Any] | None = None
    """Validates the text (raising :class:`MalformedAnswer`) and returns what is stored as ``answer``."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Stored with the record (e.g. pair hash, order, style version)."""
    temperature: float | None = None
    """Temperature of the first attempt (``None``: the client config's)."""
    max_tokens: int | None = None
    """Most tokens of the answer (``None``: the client config's)."""


def _record(job: Job, status: str, **extra: Any) -> dict[str, Any]:
    return {"key": job.key, "kind": job.kind, "model": job.model, "status": status, **job.meta, **extra,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _what(job: Job) -> str:
    """A readable name of the request for log lines."""
    m = job.meta
    if "pair_id" in m:
        return f"pair {m['pair_id']} ({m.get('order', '?')})"
    if "prompt_id" in m:
        return f"{job.model} on prompt {m['prompt_id']}"
    return f"request {job.key[:12]}"


async def _run_one(job: Job, client: TeacherClient, cache: AnswerCache) -> None:
    stats, cfg = client.stats, client.cfg
    raws: list[str | None] = []
    usage = [0, 0]
    for attempt in range(cfg.format_retries + 1):
        first = cfg.temperature if job.temperature is None else job.temperature
        temperature = first if attempt == 0 else max(first, cfg.retry_temperature)
        try:
            reply = await client.chat(job.model, job.messages, schema=job.schema, temperature=temperature,
                                      max_tokens=job.max_tokens)
        except RequestFailed as e:
            stats.failed += 1
            logger.warning("%s failed: %s", _what(job), e)
            cache.append(_record(job, "rejected" if e.rejected else "error", error=str(e), raw=(raws + e.raw) or None,
                                 attempts=attempt + 1))
            return
        stats.prompt_tokens += reply.prompt_tokens
        stats.completion_tokens += reply.completion_tokens
        usage[0] += reply.prompt_tokens
        usage[1] += reply.completion_tokens
        try:
            answer = job.parse(reply.text) if job.parse is not None else _nonempty(reply.text)
        except MalformedAnswer as err:
            e = err
            if reply.finish_reason == "length":
                e = MalformedAnswer(f"{err} (the answer was cut at the token limit: raise --max-tokens)")
            raws.append(reply.text)
            if attempt < cfg.format_retries:
                stats.retried += 1
                stats.format_retries += 1
                logger.debug("malformed answer for %s (%s); asking again", _what(job), e)
                continue
            stats.failed += 1
            logger.warning("malformed answer for %s after %d attempt(s): %s", _what(job), attempt + 1, e)
            cache.append(_record(job, "malformed", error=str(e), raw=raws, attempts=attempt + 1,
                                 usage={"prompt_tokens": usage[0], "completion_tokens": usage[1]}))
            return
        stats.done += 1
        cache.append(_record(job, "ok", answer=answer, attempts=attempt + 1, finish_reason=reply.finish_reason,
                             usage={"prompt_tokens": usage[0], "completion_tokens": usage[1]}))
        return


def _nonempty(text: str | None) -> str:
    if text is None or not text.strip():
        raise MalformedAnswer("empty answer")
    return text


async def run_jobs_async(jobs: Sequence[Job], client: TeacherClient, cache: AnswerCache, *,
                         retry_failed: bool = False, progress: bool | None = None, desc: str = "requests") -> RunStats:
    """Run every job whose answer is not finished in ``cache``; returns the client's :class:`RunStats`."""
    from tqdm.auto import tqdm

    stats = client.stats
    start = time.monotonic()
    todo: list[Job] = []
    seen: set[str] = set()
    for job in jobs:
        if job.key in seen:
            continue
        seen.add(job.key)
        if cache.is_finished(job.key, retry_failed=retry_failed):
            stats.from_cache += 1
        else:
            todo.append(job)
    bar = tqdm(total=len(seen), initial=stats.from_cache, desc=desc, unit="req",
               disable=None if progress is None else not progress)
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in todo:
        queue.put_nowait(job)

    async def worker() -> None:
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await _run_one(job, client, cache)
            bar.update(1)
            bar.set_postfix(failed=stats.failed, retried=stats.retried, refresh=False)

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(client.cfg.concurrency, max(1, len(todo))))]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for t in done:
            if t.exception() is not None:
                raise t.exception()
    finally:
        for t in tasks:
            t.cancel()
        bar.close()
        stats.seconds += time.monotonic() - start
    return stats


def run_jobs(jobs: Sequence[Job], cfg: ClientConfig, cache: AnswerCache, *, api_key: str,
             retry_failed: bool = False, progress: bool | None = None, desc: str = "requests",
             stats: RunStats | None = None) -> RunStats:
    """Synchronous wrapper of :func:`run_jobs_async` (creates and closes the client)."""

    async def main() -> RunStats:
        client = TeacherClient(cfg, api_key, stats)
        try:
            return await run_jobs_async(jobs, client, cache, retry_failed=retry_failed, progress=progress,
                                        desc=desc)
        finally:
            await client.close()

    return asyncio.run(main())
