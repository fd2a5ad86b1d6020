"""Per-tool policies: which tools start disabled, retries (:func:`tool_retry`), the circuit breaker
(:class:`ToolBreaker`), the concurrency limit, the agent's deadline (:data:`tool_deadline`) and the options a plugin
attaches to a tool function (:func:`tool_options`)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from dspyo3_agents.tools.errors import ToolCircuitOpenError, ToolTimeoutError
from dspyo3_async import RetryPolicy
from dspyo3_core.breaker import CLOSED, HALF_OPEN, Circuit, check_limits

__all__ = [
    "ENABLE_ENV",
    "RISKY_TAGS",
    "ConcurrencySlots",
    "ToolBreaker",
    "ToolOptions",
    "as_retry_policy",
    "tool_deadline",
    "tool_options",
    "tool_retry",
]

RISKY_TAGS = frozenset({"code", "files", "network"})
"""Tags that mark a tool as running code, touching files or reaching the network: such tools start disabled."""

ENABLE_ENV = "DSPYO3_AGENTS_ENABLE_TOOLS"

tool_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("dspyo3_tool_deadline", default=None)
"""A ``time.monotonic()`` deadline that caps every tool timeout in this context (an agent's wall-clock budget)."""

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class _RetryOn:
    """Which tool failures a :func:`tool_retry` policy retries (a ``RetryPolicy.retry_on`` predicate)."""

    types: tuple[type[BaseException], ...] = (Exception,)
    timeouts: bool = False

    def __call__(self, error: BaseException) -> bool:
        if isinstance(error, ToolTimeoutError):
            return self.timeouts
        return isinstance(error, self.types)


def tool_retry(retries: int = 0, *, backoff: float = 0.05, max_backoff: float = 2.0,
               retry_on: tuple[type[BaseException], ...] = (Exception,), retry_timeouts: bool = False,
               jitter: str = "full") -> RetryPolicy:
    """A ``dspyo3_async.RetryPolicy`` for a tool (what ``retry=`` takes; ``retry=2`` is ``tool_retry(2)``).

    ``RetryPolicy`` itself is reused for the attempt count and the (jittered, capped, exponential) backoff; only
    its default ``retry_on`` does not fit tools (it retries DSPy's retryable *LM* errors), so this builds one that
    retries the tool's own exceptions of ``retry_on`` types, and timeouts only if ``retry_timeouts``.

    Args:
        retries: extra attempts after the first (0: no retry).
        backoff: the first backoff ceiling in seconds; it doubles per attempt up to ``max_backoff``.
        max_backoff: the longest wait between attempts.
        retry_on: exception types that are retried (argument errors never are: they come before the call).
        retry_timeouts: also retry attempts that timed out.
        jitter: ``"full"`` or ``"none"`` (as for ``RetryPolicy``).
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    return RetryPolicy(attempts=retries + 1, base_delay=backoff, max_delay=max_backoff, jitter=jitter,
                       retry_on=_RetryOn(tuple(retry_on), retry_timeouts))


def as_retry_policy(retry: RetryPolicy | int | None) -> RetryPolicy:
    """What a tool's ``retry=`` option means: a policy as given, a number of retries, or (``None``) none."""
    return tool_retry(retry) if isinstance(retry, int) else retry or tool_retry()


class ToolBreaker:
    """A circuit breaker for one tool: after ``failure_threshold`` failed calls in a row the circuit opens and
    calls fail fast with :class:`ToolCircuitOpenError`; after ``reset_timeout`` seconds one trial call goes
    through (half-open) and its outcome closes or re-opens the circuit. Argument errors do not count (they are
    the caller's fault, not the tool's). Thread-safe; the state machine is :class:`dspyo3_core.breaker.Circuit`,
    the one dspyo3-production's per-model breakers run.
    """

    def __init__(self, failure_threshold: int = 5, reset_timeout: float = 30.0) -> None:
        check_limits(failure_threshold)
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._circuit = Circuit()
        self._lock = threading.Lock()

    @property
    def failures(self) -> int:
        """Failed calls in a row (0 after a success)."""
        return self._circuit.failures

    @property
    def opened_at(self) -> float | None:
        """The ``time.monotonic()`` at which the circuit last opened (``None`` while it is closed)."""
        circuit = self._circuit
        return None if circuit.state == CLOSED else circuit.opened_at

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        with self._lock:
            return self._circuit.current(time.monotonic(), self.reset_timeout).replace("_", "-")

    def before_call(self, tool: str) -> None:
        """Raise :class:`ToolCircuitOpenError` if the circuit is open (or its one trial call is in flight)."""
        with self._lock:
            circuit = self._circuit
            wait = circuit.admit(time.monotonic(), self.reset_timeout)
            if wait is None:
                return
            why = f"it failed {circuit.failures} times in a row, so its circuit is open"
            if circuit.state == HALF_OPEN:
                when = f"{why}; a trial call is in progress; retry shortly"
            else:
                when = f"{why} for {wait:.1f}s more"
            raise ToolCircuitOpenError(tool, f"tool {tool!r} is unavailable: {when}; use another tool or answer "
                                             "without it")

    def success(self) -> None:
        """Record a successful call: the circuit closes."""
        with self._lock:
            self._circuit.succeed()

    def failure(self) -> None:
        """Record a failed call: the circuit opens at the threshold (or again after a failed trial)."""
        with self._lock:
            self._circuit.fail(time.monotonic(), self.failure_threshold)

    def neutral(self) -> None:
        """Record a call that says nothing about the tool's health (cut short by the caller's own budget,
        cancelled): counts nothing, but a trial call it was is over, so the next call may be the trial."""
        with self._lock:
            self._circuit.release()


class ConcurrencySlots:
    """A per-tool concurrency limit usable from threads and from event loops alike."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {limit}")
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)

    def acquire(self, timeout: float | None) -> bool:
        return self._sem.acquire(timeout=timeout)

    async def aacquire(self, timeout: float | None) -> bool:
        pause = 0.0005
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._sem.acquire(blocking=False):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)
        return True

    def release(self) -> None:
        self._sem.release()


@dataclass(frozen=True)
class ToolOptions:
    """Registration options a plugin attaches to a tool function with :func:`tool_options` (the core
    ``ToolSpec`` carries only name, function and description)."""

    tags: tuple[str, ...] = ()
    timeout: float | None = None
    max_concurrency: int | None = None
    retry: RetryPolicy | int | None = None
    enabled: bool | None = None


def tool_options(*, tags: Iterable[str] = (), timeout: float | None = None, max_concurrency: int | None = None,
                 retry: RetryPolicy | int | None = None, enabled: bool | None = None) -> Callable[[F], F]:
    """Attach registry options to a tool function, for tools contributed through ``dspyo3_register_tools``::

        @tool_options(tags=["files"], timeout=5)
        def read_file(path: str) -> str: ...

        @hookimpl
        def dspyo3_register_tools(register):
            register(ToolSpec("read_file", read_file))
    """

    def mark(func: F) -> F:
        func.__dspyo3_tool__ = ToolOptions(tuple(tags), timeout, max_concurrency, retry, enabled)  # type: ignore[attr-defined]
        return func

    return mark
