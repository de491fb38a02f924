"""Dynamic micro-batching: concurrent requests are queued and scored by the model together.

One asyncio task takes requests off a queue and hands them to the model in one worker thread (the event loop
never runs the model, and the model never runs twice at once). A batch closes when it holds ``max_batch_size``
pairs, when its oldest request has waited ``max_wait_ms``, or when no other request is on its way: the app
calls :meth:`MicroBatcher.announce` when a scoring request starts arriving (its body still being read and
validated) and ``submit(..., announced=True)`` or :meth:`MicroBatcher.withdraw` when it gets here or gives up.
A batch also waits while the server is under load (the last batch merged several requests, or requests came
while it was scored): under load, requests still in the socket buffers are not visible yet. So a lone request
is scored at once (batching adds no latency at low load), and under load a batch waits at most ``max_wait_ms``
for company. Requests that arrive while the model is busy form
the next batch. A request is never split: one larger than ``max_batch_size`` is scored alone. Each request
gets back exactly its own rows, in its own order.

Failures stay with the request that caused them: when a batch of several requests fails, each request is
scored again alone, so only the culprit sees the exception; the worker keeps running. A request whose client
went away (its future cancelled) is skipped if it has not been scored yet.

With ``enabled=False`` every request is scored on its own (no waiting, no merging): the baseline of
``bench/bench_serve.py``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from prefpred.serve.metrics import Metrics
from prefpred.types import Pair

logger = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """The batcher is not running (not started yet, or shutting down)."""


@dataclasses.dataclass
class _Job:
    pairs: Sequence[Pair]
    future: asyncio.Future
    enqueued: float


class MicroBatcher:
    """Queue of scoring requests in front of ``predict(pairs) -> n x 3`` (see the module docstring)."""

    def __init__(self, predict: Callable[[Sequence[Pair]], np.ndarray], *, max_batch_size: int = 64,
                 max_wait_ms: float = 5.0, enabled: bool = True, metrics: Metrics | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.enabled = enabled
        self.metrics = metrics or Metrics()
        self._pending: collections.deque[_Job] = collections.deque()
        self._pending_pairs = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._busy = False
        self._arriving = 0
        self._under_load = False  # the last batch merged requests, or more came while it was scored

    @property
    def queue_depth(self) -> int:
        """Pairs waiting to be scored (not counting the batch the model is scoring now)."""
        return self._pending_pairs

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    async def start(self) -> None:
        """Start the queue task and the model thread (call from the event loop that will submit)."""
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefpred-model")
        self._closing = False
        self._task = asyncio.create_task(self._loop(), name="prefpred-batcher")

    async def stop(self, timeout: float = 30.0) -> None:
        """Score what is queued (up to ``timeout`` seconds), then stop the task and the model thread."""
        self._closing = True
        if self._task is not None:
            deadline = time.monotonic() + timeout
            while (self._pending or self._busy) and time.monotonic() < deadline and not self._task.done():
                await asyncio.sleep(0.01)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(BatcherClosed("server is shutting down"))
        self._pending.clear()
        self._pending_pairs = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def announce(self) -> None:
        """A scoring request is on its way (call from the event loop); batches wait for it, up to max wait."""
        self._arriving += 1

    def withdraw(self) -> None:
        """An announced request will not be submitted after all (refused, or the client went away)."""
        self._arriving = max(0, self._arriving - 1)
        if self._wake is not None:
            self._wake.set()

    async def submit(self, pairs: Sequence[Pair], *, announced: bool = False) -> np.ndarray:
        """Queue ``pairs``; return their ``n x 3`` probabilities once the model has scored them.

        ``announced``: this request was announced with :meth:`announce` (it no longer counts as on its way).
        """
        if announced:
            self._arriving = max(0, self._arriving - 1)
        if not self.running or self._wake is None:
            raise BatcherClosed("server is not accepting work (starting or shutting down)")
        if not pairs:
            return np.zeros((0, 3))
        loop = asyncio.get_running_loop()
        job = _Job(pairs, loop.create_future(), loop.time())
        self._pending.append(job)
        self._pending_pairs += len(pairs)
        self._wake.set()
        return await job.future

    # ----------------------------------------------------------------------------------------- internals
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            if (self.enabled and self._pending_pairs < self.max_batch_size
                    and (self._arriving > 0 or self._under_load)):
                remaining = self._pending[0].enqueued + self.max_wait - loop.time()
                if remaining > 0:  # wait for the requests on their way, at most until the oldest one's deadline
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), remaining)
                    except TimeoutError:
                        pass
                    continue
            batch = self._take()
            if batch:
                self._busy = True
                try:
                    await self._score(batch)
                    self._under_load = len(batch) > 1 or bool(self._pending)
                except Exception as e:  # a bug here must not leave requests waiting forever
                    logger.exception("batcher failed on a batch of %d requests", len(batch))
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(e)
                finally:
                    self._busy = False

    def _take(self) -> list[_Job]:
        """The next batch: whole jobs, oldest first, up to ``max_batch_size`` pairs (at least one job)."""
        batch: list[_Job] = []
        n = 0
        while self._pending:
            job = self._pending[0]
            if batch and (not self.enabled or n + len(job.pairs) > self.max_batch_size):
                break
            self._pending.popleft()
            self._pending_pairs -= len(job.pairs)
            if job.future.done():  # the client went away
                continue
            batch.append(job)
            n += len(job.pairs)
        return batch

    def _predict(self, pairs: list[Pair]) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        proba = np.asarray(self.predict(pairs), dtype=np.float64)
        if proba.shape != (len(pairs), 3):
            raise RuntimeError(f"model returned shape {proba.shape} for {len(pairs)} pairs (expected n x 3)")
        return proba, time.perf_counter() - start

    async def _score(self, batch: list[_Job]) -> None:
        pairs = [p for job in batch for p in job.pairs]
        loop = asyncio.get_running_loop()
        try:
            proba, seconds = await loop.run_in_executor(self._executor, self._predict, pairs)
        except Exception as e:
            if len(batch) > 1:  # find the culprit: score each request alone
                logger.warning("a batch of %d requests failed (%s); scoring them one by one", len(batch),
                               type(e).__name__)
                for job in batch:
                    await self._score([job])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(e)
            return
        self.metrics.batch_scored(len(pairs), len(batch), seconds)
        offset = 0
        for job in batch:
            part = proba[offset:offset + len(job.pairs)]
            offset += len(job.pairs)
            if not job.future.done():
                job.future.set_result(part)
