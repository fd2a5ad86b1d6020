"""Backpressure: a bounded work queue with block / reject / drop-oldest policies and depth metrics, and a pool of
workers that runs a DSPy program on what is submitted to it."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping
from typing import Any, Generic, Literal, TypeVar

from dspyo3_async.limits import RateLimit
from dspyo3_async.retry import DEFAULT_RETRY, RetryPolicy
from dspyo3_async.runner import ItemResult, ItemRunner

__all__ = ["Dropped", "ProgramPool", "QueueFull", "WorkQueue"]

T = TypeVar("T")
Policy = Literal["block", "reject", "drop_oldest"]


class QueueFull(RuntimeError):
    """The queue is full and its policy is ``reject``: shed this request (e.g. answer HTTP 503 / 429)."""


class Dropped(RuntimeError):
    """The item was evicted from a full ``drop_oldest`` queue by a newer one before it ran."""


class WorkQueue(Generic[T]):
    """A bounded FIFO for asyncio with a policy for when it is full.

    Args:
        maxsize: most items waiting (>= 1).
        policy: ``block`` (``put`` waits for room), ``reject`` (``put`` raises :class:`QueueFull`) or
            ``drop_oldest`` (``put`` evicts the oldest waiting item and returns it, so the caller can fail it).
    """

    def __init__(self, maxsize: int, policy: Policy = "block") -> None:
        if not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize must be a positive integer, got {maxsize!r}")
        if policy not in ("block", "reject", "drop_oldest"):
            raise ValueError(f"policy must be 'block', 'reject' or 'drop_oldest', got {policy!r}")
        self.maxsize, self.policy = maxsize, policy
        self._items: collections.deque[T] = collections.deque()
        self._changed = asyncio.Condition()
        self.enqueued = self.dequeued = self.rejected = self.dropped = 0
        self.max_depth = 0

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> T | None:
        """Add ``item`` under the queue's policy; returns the item evicted by ``drop_oldest``, if any."""
        evicted: T | None = None
        async with self._changed:
            if len(self._items) >= self.maxsize:
                if self.policy == "reject":
                    self.rejected += 1
                    raise QueueFull(f"the work queue is full ({self.maxsize} waiting); retry later or raise maxsize")
                if self.policy == "drop_oldest":
                    evicted = self._items.popleft()
                    self.dropped += 1
                else:
                    await self._changed.wait_for(lambda: len(self._items) < self.maxsize)
            self._items.append(item)
            self.enqueued += 1
            self.max_depth = max(self.max_depth, len(self._items))
            self._changed.notify_all()
        return evicted

    async def get(self) -> T:
        """The oldest item, waiting for one."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items))
            item = self._items.popleft()
            self.dequeued += 1
            self._changed.notify_all()
            return item

    def stats(self) -> dict[str, int]:
        """``depth``, ``max_depth``, ``enqueued``, ``dequeued``, ``rejected``, ``dropped``."""
        return {"depth": len(self._items), "max_depth": self.max_depth, "enqueued": self.enqueued,
                "dequeued": self.dequeued, "rejected": self.rejected, "dropped": self.dropped}


class ProgramPool:
    """``concurrency`` workers running ``program`` on inputs submitted through a bounded :class:`WorkQueue`.

    ::

        async with ProgramPool(qa, concurrency=32, maxsize=256, policy="reject") as pool:
            future = await pool.submit(question="...")      # QueueFull when 256 are already waiting
            result = await future                            # an ItemResult

    ``rate``, ``timeout`` and ``retries`` mean what they mean for :func:`dspyo3_async.run_many`. Leaving the
    ``async with`` block waits for the submitted work; an exception inside it cancels the work instead.
    """

    def __init__(self, program: Any, *, concurrency: int = 16, maxsize: int = 1024, policy: Policy = "block",
                 rate: RateLimit | float | None = None, timeout: float | None = None,
                 retries: RetryPolicy | int = DEFAULT_RETRY) -> None:
        self._runner = ItemRunner(program, concurrency=concurrency, rate=rate, timeout=timeout, retries=retries,
                               progress=False, total=None)
        self._concurrency = concurrency
        self.queue: WorkQueue[tuple[int, Mapping[str, Any], asyncio.Future[ItemResult]]] = WorkQueue(maxsize, policy)
        self._workers: list[asyncio.Task[None]] = []
        self._submitted = 0
        self.in_flight = 0
        self.completed = 0

    async def __aenter__(self) -> ProgramPool:
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(self._concurrency)]
        return self

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None:
                await self.join()
        finally:
            await self.close()

    async def _work(self) -> None:
        while True:
            index, inputs, future = await self.queue.get()
            if future.cancelled():
                continue
            self.in_flight += 1
            try:
                result = await self._runner.one(index, inputs)
            except asyncio.CancelledError:
                future.cancel()  # the pool is closing: whoever awaits this item learns it will not run
                raise
            finally:
                self.in_flight -= 1
            self.completed += 1
            if not future.done():
                future.set_result(result)

    async def submit(self, **inputs: Any) -> asyncio.Future[ItemResult]:
        """Queue one call; returns a future of its :class:`ItemResult`. Under ``block`` this waits for room, under
        ``reject`` it raises :class:`QueueFull`; under ``drop_oldest`` the evicted item's future fails with
        :class:`Dropped`."""
        if not self._workers:
            raise RuntimeError("use the pool as `async with ProgramPool(...) as pool:` before submitting")
        future: asyncio.Future[ItemResult] = asyncio.get_running_loop().create_future()
        index = self._submitted
        self._submitted += 1
        evicted = await self.queue.put((index, inputs, future))
        if evicted is not None and not evicted[2].done():
            evicted[2].set_exception(Dropped(f"item {evicted[0]} was dropped from the full queue "
                                             f"(policy drop_oldest, maxsize {self.queue.maxsize})"))
        return future

    async def join(self) -> None:
        """Wait until everything submitted so far has run."""
        while len(self.queue) or self.in_flight:
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        """Cancel the workers (and any call in flight); futures still queued are cancelled."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while len(self.queue):
            _, _, future = await self.queue.get()
            future.cancel()

    def stats(self) -> dict[str, int]:
        """Queue metrics plus ``in_flight``, ``submitted`` and ``completed``."""
        return {**self.queue.stats(), "in_flight": self.in_flight, "submitted": self._submitted,
                "completed": self.completed}
