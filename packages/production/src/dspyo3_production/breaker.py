"""Circuit breakers per provider/model, fed by DSPy's typed LM errors.

A breaker is *closed* (calls pass) until ``failure_threshold`` consecutive calls fail with a provider-side error
(rate limit, server error, timeout, connection failure, billing by default); it then *opens* (calls are refused
at once, or sent to a fallback LM) for ``reset_timeout`` seconds, then lets ``half_open_max_calls`` trial calls
through (*half-open*): a success closes it, a failure opens it again. Errors that are the caller's fault (bad
request, context window, auth) do not count.

The local state machine is :class:`dspyo3_core.breaker.Circuit`, the one dspyo3-agents' per-tool breakers run;
the Redis scripts below keep the same rules for shared state.

With ``redis_url`` the state is shared by every process using the same Redis and ``namespace``; if Redis fails,
each process falls back to its own local state until Redis answers again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from dspy.utils.exceptions import (
    LMBillingError,
    LMError,
    LMRateLimitError,
    LMServerError,
    LMTimeoutError,
    LMTransportError,
)

from dspyo3_core.breaker import CLOSED, HALF_OPEN, Circuit, check_limits
from dspyo3_core.globs import delete_prefix

logger = logging.getLogger("dspyo3.production.breaker")

TRIP_ON: tuple[type[BaseException], ...] = (LMRateLimitError, LMServerError, LMTimeoutError, LMTransportError,
                                             LMBillingError)
"""The DSPy error classes that count as failures by default."""


class CircuitOpenError(LMError):
    """The circuit for this model is open: the call was refused without reaching the provider.

    Attributes:
        key: the breaker key (the model).
        retry_after: seconds until the breaker lets a trial call through.
    """

    def __init__(self, key: str, retry_after: float) -> None:
        super().__init__(
            f"circuit open for {key}: too many consecutive provider failures; next trial call in "
            f"{retry_after:.1f}s (configure a fallback profile to keep answering meanwhile)"
        )
        self.key = key
        self.retry_after = retry_after


# Redis state: <ns>:breaker:<key>:fails (consecutive failures), :open (set while open, expires after the reset
# timeout), :trial (trial calls let through while half-open). One script decides, so processes agree.
_ALLOW = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {0, redis.call('PTTL', KEYS[2])} end
local fails = tonumber(redis.call('GET', KEYS[1]) or '0')
if fails < tonumber(ARGV[1]) then return {1, 0} end
local trials = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
if trials <= tonumber(ARGV[2]) then return {2, 0} end
return {0, tonumber(ARGV[3])}
"""
_FAIL = """
local fails = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if fails >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  redis.call('DEL', KEYS[3])
  return 1
end
return 0
"""


_RELEASE = """
if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(redis.call('GET', KEYS[1])) > 0 then
  return redis.call('DECR', KEYS[1])
end
return 0
"""


class CircuitBreaker:
    """One breaker per key (model); thread-safe; optionally shared through Redis.

    Args:
        failure_threshold: consecutive counted failures that open the circuit.
        reset_timeout: seconds the circuit stays open before trial calls.
        half_open_max_calls: trial calls allowed while half-open.
        trip_on: exception classes that count as failures (default :data:`TRIP_ON`).
        redis_url: share state through this Redis (None: per process).
        namespace: Redis key prefix.
        on_change: called as ``on_change(key, state)`` on every transition (metrics, logs).
    """

    def __init__(self, failure_threshold: int = 5, reset_timeout: float = 30.0, half_open_max_calls: int = 1, *,
                 trip_on: tuple[type[BaseException], ...] = TRIP_ON, redis_url: str | None = None,
                 namespace: str = "dspyo3", on_change: Callable[[str, str], None] | None = None) -> None:
        check_limits(failure_threshold)
        if reset_timeout <= 0:
            raise ValueError(f"reset_timeout must be > 0 seconds, got {reset_timeout}")
        check_limits(failure_threshold, half_open_max_calls)
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max_calls = half_open_max_calls
        self.trip_on = trip_on
        self.namespace = namespace
        self.on_change = on_change
        self._local: dict[str, Circuit] = {}
        self._lock = threading.Lock()
        self._redis: Any = None
        self._redis_down_until = 0.0
        self._closed = False
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=0.25, socket_connect_timeout=0.25)
            self._allow_script = self._redis.register_script(_ALLOW)
            self._fail_script = self._redis.register_script(_FAIL)
            self._release_script = self._redis.register_script(_RELEASE)
            self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

    def local_circuit(self, key: str) -> Circuit | None:
        """The in-process circuit of ``key``; None when state is kept in Redis or ``key`` has no circuit yet.

        The LM-call wrapper reads it to skip :meth:`before` and :meth:`success` while a local circuit is closed
        and has no failures counted (they would change nothing)."""
        return self._local.get(key) if self._redis is None else None

    def counts(self, exc: BaseException) -> bool:
        """Whether ``exc`` counts as a provider failure."""
        return isinstance(exc, self.trip_on)

    # -- shared state -----------------------------------------------------------------------------------------
    def _keys(self, key: str) -> list[str]:
        base = f"{self.namespace}:breaker:{key}"
        return [base + ":fails", base + ":open", base + ":trial"]

    def _use_redis(self) -> bool:
        return self._redis is not None and time.monotonic() >= self._redis_down_until

    def _redis_failed(self, exc: BaseException) -> None:
        if self._closed:
            return
        self._redis_down_until = time.monotonic() + 1.0
        logger.warning("circuit breaker state in redis unavailable (%s); using local state", exc)

    # -- the protocol -----------------------------------------------------------------------------------------
    def before(self, key: str) -> None:
        """Let a call for ``key`` through, or raise :class:`CircuitOpenError`."""
        if self._redis is None:
            st = self._local.get(key)
            if st is not None and st.state == CLOSED:  # the common case: no Redis, no lock
                return
        elif self._use_redis():
            try:
                allowed, wait_ms = self._allow_script(
                    keys=self._keys(key),
                    args=[self.failure_threshold, self.half_open_max_calls, int(self.reset_timeout * 1000)])
            except self._redis_errors as exc:
                self._redis_failed(exc)
            else:
                if int(allowed) == 0:
                    raise CircuitOpenError(key, max(int(wait_ms), 0) / 1000)
                return
        st = self._local.get(key)
        if st is not None and st.state == CLOSED:  # the common case needs no lock
            return
        with self._lock:
            st = self._local.setdefault(key, Circuit())
            if st.state == CLOSED:
                return
            was = st.state
            wait = st.admit(time.monotonic(), self.reset_timeout, self.half_open_max_calls)
            if st.state != was:
                self._changed(key, st.state)
            if wait is not None:
                raise CircuitOpenError(key, wait)

    def release(self, key: str) -> None:
        """A call let through by :meth:`before` ended without telling anything about the provider (the caller's
        own error, a budget refusal, cancellation): give back its half-open trial slot."""
        if self._use_redis():
            try:
                self._release_script(keys=[self._keys(key)[2]])
                return
            except self._redis_errors as exc:
                self._redis_failed(exc)
        st = self._local.get(key)
        if st is not None and st.state == HALF_OPEN and st.trials:
            with self._lock:
                st.release()

    def success(self, key: str) -> None:
        """Record a successful call: resets the failure count and closes a half-open circuit."""
        if self._redis is None:
            st = self._local.get(key)
            if st is None or (st.state == CLOSED and st.failures == 0):  # the common case: nothing to reset
                return
        elif self._use_redis():
            try:
                fails_key, _open, trial = self._keys(key)
                pipe = self._redis.pipeline(transaction=True)
                pipe.get(fails_key)
                pipe.delete(fails_key, trial)
                fails, _deleted = pipe.execute()
            except self._redis_errors as exc:
                self._redis_failed(exc)
            else:
                if int(fails or 0) >= self.failure_threshold:
                    self._changed(key, CLOSED)
                return
        st = self._local.get(key)
        if st is None or (st.state == CLOSED and st.failures == 0):  # nothing to reset: no lock needed
            return
        with self._lock:
            if st.succeed():
                self._changed(key, CLOSED)

    def failure(self, key: str, exc: BaseException) -> None:
        """Record a failed call; only errors in :attr:`trip_on` count (others give the trial slot back)."""
        if not self.counts(exc):
            self.release(key)
            return
        if self._use_redis():
            try:
                opened = self._fail_script(
                    keys=self._keys(key),
                    args=[self.failure_threshold, int(self.reset_timeout * 1000),
                          int(max(self.reset_timeout * 10, 60) * 1000)])
            except self._redis_errors as err:
                self._redis_failed(err)
            else:
                if int(opened):
                    self._changed(key, "open")
                return
        with self._lock:
            st = self._local.setdefault(key, Circuit())
            if st.fail(time.monotonic(), self.failure_threshold):
                self._changed(key, st.state)

    def state(self, key: str) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` for ``key`` (from Redis when shared)."""
        if self._use_redis():
            try:
                fails_key, open_key, _trial = self._keys(key)
                if self._redis.exists(open_key):
                    return "open"
                fails = int(self._redis.get(fails_key) or 0)
                return "half_open" if fails >= self.failure_threshold else "closed"
            except self._redis_errors as exc:
                self._redis_failed(exc)
        with self._lock:
            st = self._local.get(key)
            return CLOSED if st is None else st.current(time.monotonic(), self.reset_timeout)

    def reset(self, key: str | None = None) -> None:
        """Close ``key``'s circuit, or every circuit: this process's, and with Redis every shared one under this
        breaker's namespace (whichever process opened it)."""
        keys = [key] if key is not None else list(self._local)
        with self._lock:
            for k in keys:
                self._local.pop(k, None)
        if self._redis is not None and not self._closed:
            try:
                if key is not None:
                    self._redis.delete(*self._keys(key))
                else:
                    delete_prefix(self._redis, f"{self.namespace}:breaker:")
            except self._redis_errors as exc:
                self._redis_failed(exc)

    def close(self) -> None:
        """Close the Redis connections; from now on the breaker works on this process's state only (calls already
        inside a Redis step finish it on a fresh connection)."""
        self._closed = True
        self._redis_down_until = math.inf
        if self._redis is not None:
            self._redis.close()

    def _changed(self, key: str, state: str) -> None:
        logger.info("circuit %s for %s", state, key)
        if self.on_change is not None:
            self.on_change(key, state)
