"""asyncio helper for :class:`dspyo3_native.RateLimiter`: wait for capacity without blocking the event loop."""

from __future__ import annotations

import asyncio

from dspyo3_native._native import RateLimiter


async def acquire_async(limiter: RateLimiter, cost: float = 1.0, timeout: float | None = None) -> bool:
    """Wait until ``cost`` is granted by ``limiter``; ``False`` (taking nothing) if that is more than ``timeout``
    seconds away.

    The permit is reserved up front and the coroutine sleeps until its slot (``asyncio.sleep``): waiters queue in
    order, thousands cost no threads, and a waiter that wakes late does not lower the rate for the others. A task
    cancelled while waiting forfeits its slot, so the limiter never exceeds its rate but may under-use it.
    """
    if timeout is not None and limiter.time_to_ready(cost) > timeout:
        return False
    wait = limiter.reserve(cost)
    if wait > 0:
        await asyncio.sleep(wait)
    return True
