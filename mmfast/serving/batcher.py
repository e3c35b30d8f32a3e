"""Dynamic batching: concurrent requests to one model become one batched pipeline call.

A :class:`Batcher` owns a bounded queue and one worker thread. Its loop takes the oldest
request, waits at most ``max_wait_ms`` (counted from that request's arrival, as Triton's
``max_queue_delay``) for up to ``max_batch`` requests with the same *key* (requests that can
share a call: the same beam size, top_k, ...), runs ``run_batch`` on them in the worker thread
and hands each caller its own result. While the worker is busy, requests pile up and the next
batch leaves at once: under load batches fill by themselves, idle requests wait at most
``max_wait_ms``.

Why one thread per model: ONNX Runtime already spreads one call over the cores (intra-op
threads), and a single thread also serialises everything that touches the model, so index
mutations (:meth:`Batcher.run_exclusive`) never race a search.

Guarantees: a request is answered exactly once (its future is resolved by whoever gets to it
first: the worker with a result or an error, or the caller's timeout, which also takes it off
the queue if it has not started); a batch whose call fails is retried one request at a time,
so one request's error is never another's; :meth:`stop` refuses new requests and drains the
queued ones before returning.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["BatchObserver", "Batcher", "QueueFull", "RequestTimeout", "ShuttingDown"]

T = TypeVar("T")
R = TypeVar("R")
U = TypeVar("U")


class QueueFull(Exception):
    """The queue holds max_queue requests: the server sheds this one (503 + Retry-After)."""

    def __init__(self, name: str, retry_after_s: int) -> None:
        super().__init__(f"{name}: the queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class ShuttingDown(Exception):
    """The batcher is draining for shutdown and takes no new requests."""


class RequestTimeout(Exception):
    """The request waited and ran longer than its timeout; its result, if any, is dropped."""


class BatchObserver(Protocol):
    """Where a batcher reports what it does (mmfast.serving.metrics.Metrics)."""

    def batch_done(self, model: str, size: int, seconds: float) -> None: ...
    def queue_depth(self, model: str, depth: int) -> None: ...
    def shed(self, model: str, reason: str) -> None: ...


@dataclass
class _Item(Generic[T, R]):
    payload: T
    key: Hashable
    future: asyncio.Future[R]
    enqueued: float  # loop.time()


@dataclass
class _Stats:
    """Exponential moving average of a batch's duration, for Retry-After."""

    batch_s: float = 0.0
    batches: int = 0
    history: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=64))

    def add(self, size: int, seconds: float) -> None:
        self.batch_s = seconds if self.batches == 0 else 0.8 * self.batch_s + 0.2 * seconds
        self.batches += 1
        self.history.append(size)


class Batcher(Generic[T, R]):
    """Gathers requests for one model into batched calls of ``run_batch``.

    run_batch(payloads) -> one result per payload, in order; it runs in the batcher's worker
    thread and is only ever given payloads of one key. An exception from it fails the batch,
    which is then run one payload at a time (each caller gets its own result or exception).
    """

    def __init__(
        self,
        name: str,
        run_batch: Callable[[Sequence[T]], Sequence[R]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        observer: BatchObserver | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or not max_wait_ms >= 0:
            raise ValueError(
                f"batcher {name}: max_batch and max_queue must be >= 1 and max_wait_ms >= 0, "
                f"got {max_batch}, {max_queue}, {max_wait_ms}"
            )
        self.name = name
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._run_batch = run_batch
        self._observer = observer
        self._queue: collections.deque[_Item[T, R]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"mmfast-{name}")
        self.stats = _Stats()

    # ------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        """Refuse new requests, finish every queued one, then stop the worker thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return len(self._queue)

    # ------------------------------------------------------------------------ requests

    async def submit(self, payload: T, key: Hashable = None, timeout: float | None = None) -> R:
        """Queue one request and wait for its result.

        QueueFull if max_queue requests are waiting, ShuttingDown while draining,
        RequestTimeout after `timeout` seconds (queueing included); otherwise the result, or
        the exception run_batch raised for this payload.
        """
        if self._closing:
            raise ShuttingDown(f"{self.name}: the server is shutting down")
        if len(self._queue) >= self.max_queue:
            if self._observer:
                self._observer.shed(self.name, "queue_full")
            raise QueueFull(self.name, self.retry_after())
        loop = asyncio.get_running_loop()
        item: _Item[T, R] = _Item(payload, key, loop.create_future(), loop.time())
        self._queue.append(item)
        self._report_depth()
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout)
        except TimeoutError:
            self._abandon(item)
            if self._observer:
                self._observer.shed(self.name, "timeout")
            raise RequestTimeout(f"{self.name}: no result within {timeout:g} s") from None
        except asyncio.CancelledError:  # the caller went away (e.g. the client disconnected)
            self._abandon(item)
            raise

    def _abandon(self, item: _Item[T, R]) -> None:
        """Nobody waits for `item` any more: off the queue if it has not started; if it has,
        its result is dropped (its future is cancelled, so it is never resolved)."""
        if not item.future.done():
            item.future.cancel()
        try:
            self._queue.remove(item)
            self._report_depth()
        except ValueError:
            pass  # already taken into a batch

    async def run_exclusive(self, fn: Callable[[], U]) -> U:
        """Run fn in the worker thread, between batches (index mutations: never concurrent
        with a search on the same model)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by a batch: what 503s advise."""
        batches = math.ceil(max(len(self._queue), 1) / self.max_batch)
        return max(1, math.ceil(batches * self.stats.batch_s))

    # ------------------------------------------------------------------------ the loop

    def _report_depth(self) -> None:
        if self._observer:
            self._observer.queue_depth(self.name, len(self._queue))

    def _same_key(self, key: Hashable) -> int:
        n = 0
        for item in self._queue:
            if item.key == key and not item.future.done():
                n += 1
                if n >= self.max_batch:
                    break
        return n

    def _take(self, key: Hashable) -> list[_Item[T, R]]:
        """Up to max_batch live items of `key`, in arrival order, off the queue."""
        batch: list[_Item[T, R]] = []
        rest: collections.deque[_Item[T, R]] = collections.deque()
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():
                continue  # timed out while queued
            if item.key == key and len(batch) < self.max_batch:
                batch.append(item)
            else:
                rest.append(item)
        self._queue = rest
        self._report_depth()
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._queue and self._queue[0].future.done():
                self._queue.popleft()
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            first = self._queue[0]
            deadline = first.enqueued + self.max_wait_s
            while not self._closing and self._same_key(first.key) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take(first.key)
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Item[T, R]]) -> None:
        loop = asyncio.get_running_loop()
        payloads = [item.payload for item in batch]
        t0 = time.perf_counter()
        try:
            results: Sequence[R] | None = await loop.run_in_executor(
                self._executor, self._call, payloads
            )
        except Exception as e:
            if len(batch) == 1:
                _resolve(batch[0].future, error=e)
            results = None
        seconds = time.perf_counter() - t0
        self.stats.add(len(batch), seconds)
        if self._observer:
            self._observer.batch_done(self.name, len(batch), seconds)
        if results is not None:
            for item, r in zip(batch, results, strict=True):
                _resolve(item.future, result=r)
        elif len(batch) > 1:
            # one payload broke the batch: find out whose, one at a time
            for item in batch:
                if item.future.done():
                    continue
                try:
                    one = await loop.run_in_executor(self._executor, self._call, [item.payload])
                    _resolve(item.future, result=one[0])
                except Exception as e:
                    _resolve(item.future, error=e)

    def _call(self, payloads: list[T]) -> Sequence[R]:
        results = self._run_batch(payloads)
        if len(results) != len(payloads):  # a bug in run_batch: never hand out wrong slices
            raise RuntimeError(
                f"{self.name}: run_batch gave {len(results)} results for {len(payloads)} requests"
            )
        return results


def _resolve(
    future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None
) -> None:
    """Resolve once: a future cancelled by its caller's timeout stays cancelled."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
