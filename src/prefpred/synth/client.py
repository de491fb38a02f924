"""Reliable requests to an OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp server, hosted APIs).

:func:`run_jobs` sends many requests with bounded concurrency and an optional requests-per-minute limit, retries
429, 5xx, timeouts and connection errors with exponential backoff and full jitter (honouring ``Retry-After``),
re-asks when the output is malformed, and appends every finished request to an :class:`AnswerCache` so a restart
sends no request twice. The official ``openai`` client is used with its own retries off, so that every retry is
counted here.

The API key is read from an environment variable (:func:`resolve_api_key`) and is never logged or written: error
texts from the server are scrubbed of it before they are logged or stored.
"""

from __future__ import annotations

import asyncio
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
from prefpred.synth.schema import MalformedAnswer
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
    """Per-request timeout in seconds."""
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


class RequestFailed(Exception):
    """One request got no answer: retries exhausted (``rejected=False``: worth asking again on a later run) or
    refused by the server as invalid (``rejected=True``, e.g. HTTP 400 for a pair longer than the context)."""

    def __init__(self, message: str, *, rejected: bool = False):
        super().__init__(message)
        self.rejected = rejected


@dataclass
class Reply:
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


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
    """An ``openai.AsyncOpenAI`` client with counted retries, a rate limit and key scrubbing."""

    def __init__(self, cfg: ClientConfig, api_key: str, stats: RunStats | None = None, *,
                 rng: random.Random | None = None):
        from openai import AsyncOpenAI

        cfg.validate()
        self.cfg = cfg
        self._key = api_key
        self.stats = stats if stats is not None else RunStats(prices=(cfg.price_in, cfg.price_out))
        self.limiter = RateLimiter(cfg.rpm)
        self.rng = rng or random.Random()
        self._client = AsyncOpenAI(base_url=cfg.base_url, api_key=api_key, max_retries=0, timeout=cfg.timeout)

    async def close(self) -> None:
        await self._client.close()

    def scrub(self, text: str) -> str:
        return scrub(text, self._key)

    async def chat(self, model: str, messages: Sequence[dict[str, str]], *, response_format: dict | None = None,
                   temperature: float | None = None, max_tokens: int | None = None) -> Reply:
        """One chat completion, retried on 429/5xx/timeouts; :class:`RequestFailed` or :class:`FatalAPIError`."""
        import openai

        kwargs: dict[str, Any] = {"model": model, "messages": list(messages),
                                  "temperature": self.cfg.temperature if temperature is None else temperature}
        if (max_tokens or self.cfg.max_tokens) is not None:
            kwargs["max_tokens"] = max_tokens or self.cfg.max_tokens
        if response_format is not None:
            kwargs["response_format"] = response_format
        for attempt in range(self.cfg.max_retries + 1):
            await self.limiter.wait()
            self.stats.sent += 1
            try:
                resp = await self._client.chat.completions.create(**kwargs)
            except openai.APIStatusError as e:
                code = e.status_code
                if code in (401, 403, 404):
                    raise FatalAPIError(f"the server refused the request (HTTP {code}): "
                                        f"{self.scrub(_short(e))}") from None
                if code not in (408, 409, 429) and code < 500:
                    raise RequestFailed(f"HTTP {code}: {self.scrub(_short(e))}", rejected=True) from None
                reason, retry_after = f"HTTP {code}", _retry_after(e)
            except openai.APITimeoutError:
                reason, retry_after = f"timeout after {self.cfg.timeout:g} s", None
            except openai.APIConnectionError as e:
                reason, retry_after = f"connection error ({self.scrub(str(e))})", None
            else:
                return _reply(resp)
            if attempt == self.cfg.max_retries:
                raise RequestFailed(f"{reason}; gave up after {attempt + 1} attempt(s)")
            delay = backoff_delay(attempt, self.cfg.backoff_base, self.cfg.backoff_max, retry_after, self.rng)
            self.stats.retried += 1
            logger.debug("%s; retry %d in %.2f s", reason, attempt + 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def _short(e: Exception, n: int = 300) -> str:
    text = str(getattr(e, "message", None) or e)
    return text if len(text) <= n else text[:n] + "..."


def _reply(resp: Any) -> Reply:
    choice = resp.choices[0] if getattr(resp, "choices", None) else None
    text = choice.message.content if choice is not None and choice.message is not None else None
    usage = getattr(resp, "usage", None)
    return Reply(text=text, prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                 completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                 finish_reason=getattr(choice, "finish_reason", None))


# ------------------------------------------------------------------------------------------------ job runner
@dataclass
class Job:
    """One request to make unless the cache already holds its finished answer."""

    key: str
    model: str
    messages: list[dict[str, str]]
    kind: str = "judge"
    response_format: dict | None = None
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
            reply = await client.chat(job.model, job.messages, response_format=job.response_format,
                                      temperature=temperature, max_tokens=job.max_tokens)
        except RequestFailed as e:
            stats.failed += 1
            logger.warning("%s failed: %s", _what(job), e)
            cache.append(_record(job, "rejected" if e.rejected else "error", error=str(e), raw=raws or None,
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
