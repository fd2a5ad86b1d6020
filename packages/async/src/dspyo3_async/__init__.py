"""dspyo3-async: DSPy programs on asyncio with concurrency limits, rate limits, retries, backpressure,
cancellation and streaming.

- :func:`run_many` / :func:`iter_many`: a program over many inputs through DSPy's native ``acall``, under a
  concurrency limit of their own or an ``asyncio.Semaphore`` shared between runs; :func:`run_sync` for ``*_sync``
  wrappers.
- :class:`RateLimit` / :func:`throttle`: requests/s and tokens/min budgets, local or shared through Redis (paced
  locally at this process's share while Redis is down, or :class:`RateLimitUnavailable` if asked to fail).
- :class:`RetryPolicy`: DSPy's retryable LM errors only, jittered backoff, ``Retry-After`` honoured.
- :class:`WorkQueue` / :class:`ProgramPool`: bounded queues with block / reject / drop-oldest policies.
- :func:`stream`: typed events over ``dspy.streamify``; :func:`sse_response`, :func:`websocket_send` for web apps.
"""

from typing import TYPE_CHECKING

from dspyo3_core.lazy import lazy_exports

if TYPE_CHECKING:
    from dspyo3_async.limits import RateLimit, RateLimitUnavailable, throttle
    from dspyo3_async.queue import Dropped, ProgramPool, QueueFull, WorkQueue
    from dspyo3_async.retry import DEFAULT_RETRY, RetryPolicy, is_retryable
    from dspyo3_async.runner import (
        ItemError,
        ItemResult,
        ItemTimeout,
        acall,
        choose_executor,
        iter_many,
        run_many,
        run_many_sync,
        run_sync,
    )
    from dspyo3_async.streaming import Chunk, Final, Retry, Status, sse_response, stream, to_sse, websocket_send

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_RETRY",
    "Chunk",
    "Dropped",
    "Final",
    "ItemError",
    "ItemResult",
    "ItemTimeout",
    "ProgramPool",
    "QueueFull",
    "RateLimit",
    "RateLimitUnavailable",
    "Retry",
    "RetryPolicy",
    "Status",
    "WorkQueue",
    "__version__",
    "acall",
    "choose_executor",
    "is_retryable",
    "iter_many",
    "run_many",
    "run_many_sync",
    "run_sync",
    "sse_response",
    "stream",
    "throttle",
    "to_sse",
    "websocket_send",
]

_WHERE = {
    "RateLimit": "dspyo3_async.limits",
    "RateLimitUnavailable": "dspyo3_async.limits",
    "throttle": "dspyo3_async.limits",
    "Dropped": "dspyo3_async.queue",
    "ProgramPool": "dspyo3_async.queue",
    "QueueFull": "dspyo3_async.queue",
    "WorkQueue": "dspyo3_async.queue",
    "DEFAULT_RETRY": "dspyo3_async.retry",
    "RetryPolicy": "dspyo3_async.retry",
    "is_retryable": "dspyo3_async.retry",
    "ItemError": "dspyo3_async.runner",
    "ItemResult": "dspyo3_async.runner",
    "ItemTimeout": "dspyo3_async.runner",
    "acall": "dspyo3_async.runner",
    "choose_executor": "dspyo3_async.runner",
    "iter_many": "dspyo3_async.runner",
    "run_many": "dspyo3_async.runner",
    "run_many_sync": "dspyo3_async.runner",
    "run_sync": "dspyo3_async.runner",
    "Chunk": "dspyo3_async.streaming",
    "Final": "dspyo3_async.streaming",
    "Retry": "dspyo3_async.streaming",
    "Status": "dspyo3_async.streaming",
    "sse_response": "dspyo3_async.streaming",
    "stream": "dspyo3_async.streaming",
    "to_sse": "dspyo3_async.streaming",
    "websocket_send": "dspyo3_async.streaming",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, __all__)
