"""Retries for LM-backed calls: only DSPy's retryable LM errors, jittered exponential backoff, ``Retry-After``
honoured."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["DEFAULT_RETRY", "RetryPolicy", "is_retryable", "retry_after"]


def is_retryable(error: BaseException) -> bool:
    """DSPy's own classification (``dspy.is_retryable_lm_error``: rate limits, timeouts, transient provider and
    network errors); anything else (auth, context window, parse errors, bugs) is not retried."""
    import dspy

    return isinstance(error, Exception) and bool(dspy.is_retryable_lm_error(error))


def retry_after(error: BaseException) -> float | None:
    """The server's ``Retry-After`` hint carried by the error (``dspy.LMRateLimitError.retry_after``), if finite."""
    value = getattr(error, "retry_after", None)
    try:
        seconds = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before retrying a failed call.

    Args:
        attempts: total attempts per item (1 = no retry).
        base_delay: the first backoff ceiling in seconds; it doubles per attempt up to ``max_delay``.
        max_delay: the largest wait, also the cap on a server's ``Retry-After``.
        jitter: ``"full"`` (uniform in [0, ceiling], AWS's "full jitter") or ``"none"``.
        retry_on: which errors are retried; default :func:`is_retryable`.

    A ``Retry-After`` hint replaces the backoff for that attempt (plus up to 10 % jitter so a storm of clients does
    not come back in lockstep).
    """

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: str = "full"
    retry_on: Callable[[BaseException], bool] = field(default=is_retryable)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must be >= 0")
        if self.jitter not in {"full", "none"}:
            raise ValueError(f"RetryPolicy.jitter must be 'full' or 'none', got {self.jitter!r}")

    @classmethod
    def of(cls, retries: RetryPolicy | int) -> RetryPolicy:
        """``retries`` itself if it is a policy, else the default policy with that many retries."""
        return retries if isinstance(retries, RetryPolicy) else cls(attempts=int(retries) + 1)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether ``error`` on attempt ``attempt`` (1-based) is retried."""
        return attempt < self.attempts and self.retry_on(error)

    def delay(self, error: BaseException, attempt: int) -> float:
        """Seconds to wait after ``error`` on attempt ``attempt`` (1-based)."""
        hinted = retry_after(error)
        if hinted is not None:
            hinted = min(hinted, self.max_delay)
            return hinted + (random.uniform(0, 0.1 * hinted) if self.jitter == "full" else 0.0)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(0, ceiling) if self.jitter == "full" else ceiling


DEFAULT_RETRY = RetryPolicy()
"""The default policy: 3 attempts, full-jitter backoff from 0.5 s, DSPy's retryable errors only."""
