"""asyncio helper for :class:`dspyo3_native.RateLimiter`: wait for capacity without blocking the event loop."""

from __future__ import annotations

import asyncio
import time

from dspyo3_native._native import RateLimiter


async def acquire_async(limiter: RateLimiter, cost: float = 1.0, timeout: float | None = None) -> bool:
    """Wait until ``cost`` is granted by ``limiter``; ``False`` if ``timeout`` seconds pass first.

    The limiter is asked without taking anything until capacity is due, then the coroutine sleeps exactly that
    long (``asyncio.sleep``), so thousands of waiters cost no threads. Cancelling the task takes nothing.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = limiter.try_acquire_or_wait(cost)
        if wait == 0.0:
            return True
        if deadline is not None and time.monotonic() + wait > deadline:
            return False
        await asyncio.sleep(wait)
