"""Rate limits for LM calls: requests per second and tokens per minute, in this process (the native GCRA limiter
of ``dspyo3-native``) or shared by every process that uses the same Redis key (GCRA in one server-side Lua script,
so concurrent clients never race).

A :class:`RateLimit` paces *requests* exactly (each waits for its slot, in order) and budgets *tokens* after the
fact: a call may start while the token budget is not overdrawn, and its actual usage is then charged, so over a
run the token rate converges on the budget (in-flight calls can overshoot it by at most what they use).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

__all__ = ["RateLimit", "throttle"]

# GCRA over one Redis key. KEYS[1]: the key. ARGV: interval_us per unit, tolerance_us (burst * interval), cost,
# mode ("reserve": take cost and return the wait; "peek": return the wait, take nothing). Time is the server's.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local new_tat = tat + interval * tonumber(ARGV[3])
local wait = new_tat - tolerance - now
if wait < 0 then wait = 0 end
if ARGV[4] == 'reserve' then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
end
return string.format('%.0f', wait)
"""


class _Bucket:
    """One GCRA budget: ``rate`` units per ``per`` seconds, bursts up to ``burst``; local or in Redis."""

    def __init__(self, rate: float, per: float, burst: float, redis_url: str | None, key: str) -> None:
        from dspyo3_native import RateLimiter

        self.rate, self.per, self.burst = rate, per, burst
        self.local = RateLimiter(rate, per=per, burst=burst) if redis_url is None else None
        self.redis_url, self.key = redis_url, key
        self.interval_us = per / rate * 1e6
        self._sync: Any = None
        self._async: dict[int, Any] = {}  # event loop id -> (client, script)

    def _args(self, cost: float, mode: str) -> list[Any]:
        return [f"{self.interval_us:.3f}", f"{self.interval_us * self.burst:.3f}", repr(float(cost)), mode]

    def _sync_script(self) -> Any:
        if self._sync is None:
            import redis

            client = redis.Redis.from_url(str(self.redis_url), socket_timeout=5)
            self._sync = client.register_script(_GCRA)
        return self._sync

    def _async_script(self) -> Any:
        loop = asyncio.get_running_loop()
        entry = self._async.get(id(loop))
        if entry is None or entry[0] is not loop:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(str(self.redis_url), socket_timeout=5)
            entry = self._async[id(loop)] = (loop, client.register_script(_GCRA))
        return entry[1]

    def _local_op(self, cost: float, mode: str) -> float:
        assert self.local is not None
        return float(self.local.reserve(cost) if mode == "reserve" else self.local.time_to_ready(cost))

    def _op(self, cost: float, mode: str) -> float:
        if self.local is not None:
            return self._local_op(cost, mode)
        return int(self._sync_script()(keys=[self.key], args=self._args(cost, mode))) / 1e6

    async def _aop(self, cost: float, mode: str) -> float:
        if self.local is not None:
            return self._local_op(cost, mode)
        return int(await self._async_script()(keys=[self.key], args=self._args(cost, mode))) / 1e6

    def _parts(self, cost: float) -> list[float]:
        """``cost`` in parts of at most ``burst`` (the native limiter refuses a single larger cost)."""
        parts = []
        while cost > 0:
            parts.append(min(cost, self.burst))
            cost -= parts[-1]
        return parts

    def reserve(self, cost: float) -> float:
        """Take ``cost`` now (all of it, even beyond ``burst``); seconds to wait before using it."""
        wait = 0.0
        for part in self._parts(cost):
            wait = self._op(part, "reserve")
        return wait

    def time_to_ready(self, cost: float) -> float:
        """Seconds until ``cost`` (at most ``burst``) could be taken; takes nothing."""
        return self._op(min(cost, self.burst), "peek")

    async def areserve(self, cost: float) -> float:
        wait = 0.0
        for part in self._parts(cost):
            wait = await self._aop(part, "reserve")
        return wait

    async def atime_to_ready(self, cost: float) -> float:
        return await self._aop(min(cost, self.burst), "peek")


class RateLimit:
    """A request rate and/or token budget for one model (or any key).

    Args:
        requests_per_second: requests allowed per second (paced evenly; ``burst`` at once at most).
        tokens_per_minute: LM tokens (prompt + completion) per minute; usage is charged after each call.
        burst: requests that may start back to back before pacing applies (1 = perfectly even).
        redis_url: share the budget through Redis (``redis://127.0.0.1:6379/0``): every process using the same
            ``key`` draws from one budget; the arithmetic runs server-side in one Lua script on the server's clock.
        key: the budget's name (the model, usually); Redis keys are ``dspyo3:ratelimit:{key}:requests|tokens``.

    ``await limit.acquire()`` before a request, ``await limit.charge(tokens)`` after it; or let :func:`throttle`
    and :func:`dspyo3_async.run_many` do both.
    """

    def __init__(self, requests_per_second: float | None = None, tokens_per_minute: float | None = None, *,
                 burst: float = 1.0, redis_url: str | None = None, key: str = "default") -> None:
        if requests_per_second is None and tokens_per_minute is None:
            raise ValueError("RateLimit needs requests_per_second and/or tokens_per_minute")
        for name, value in (("requests_per_second", requests_per_second), ("tokens_per_minute", tokens_per_minute)):
            if value is not None and not value > 0:
                raise ValueError(f"RateLimit.{name} must be > 0, got {value!r}")
        if burst < 1:
            raise ValueError(f"RateLimit.burst must be >= 1, got {burst!r}")
        if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must be a redis://, rediss:// or unix:// URL, got {redis_url!r}")
        self.requests_per_second, self.tokens_per_minute, self.key = requests_per_second, tokens_per_minute, key
        prefix = f"dspyo3:ratelimit:{key}"
        self._requests = (_Bucket(requests_per_second, 1.0, burst, redis_url, f"{prefix}:requests")
                          if requests_per_second else None)
        self._tokens = (_Bucket(tokens_per_minute, 60.0, tokens_per_minute, redis_url, f"{prefix}:tokens")
                        if tokens_per_minute else None)
        self.shared = redis_url is not None
        self.granted = 0
        self.waited = 0.0
        self.tokens_charged = 0

    def __repr__(self) -> str:
        where = "redis" if self.shared else "local"
        return (f"RateLimit(requests_per_second={self.requests_per_second}, "
                f"tokens_per_minute={self.tokens_per_minute}, key={self.key!r}, {where})")

    async def acquire(self) -> float:
        """Wait for a request slot (and for the token budget not to be overdrawn); returns the seconds waited.
        A task cancelled while waiting gives up its slot unused (the limit is never exceeded)."""
        start = time.monotonic()
        if self._tokens is not None:
            while (wait := await self._tokens.atime_to_ready(1)) > 0:
                await asyncio.sleep(wait)
        if self._requests is not None:
            wait = await self._requests.areserve(1)
            if wait > 0:
                await asyncio.sleep(wait)
        waited = time.monotonic() - start
        self.granted += 1
        self.waited += waited
        return waited

    def acquire_sync(self) -> float:
        """:meth:`acquire` for threads (blocks the calling thread)."""
        start = time.monotonic()
        if self._tokens is not None:
            while (wait := self._tokens.time_to_ready(1)) > 0:
                time.sleep(wait)
        if self._requests is not None:
            wait = self._requests.reserve(1)
            if wait > 0:
                time.sleep(wait)
        waited = time.monotonic() - start
        self.granted += 1
        self.waited += waited
        return waited

    async def charge(self, tokens: int) -> None:
        """Charge ``tokens`` used by a finished call to the token budget (more than a minute's budget is charged
        in full: later calls wait until it is paid off)."""
        if self._tokens is not None and tokens > 0:
            self.tokens_charged += tokens
            await self._tokens.areserve(tokens)

    def charge_sync(self, tokens: int) -> None:
        """:meth:`charge` for threads."""
        if self._tokens is not None and tokens > 0:
            self.tokens_charged += tokens
            self._tokens.reserve(tokens)


# -- throttle: an LM whose calls wait on a RateLimit ---------------------------------------------------------------
_LIMITS: dict[str, RateLimit] = {}  # token -> limit (an LM is deep-copied by DSPy; the limit must be shared)
_TOKENS = itertools.count()
_CLASSES: dict[type, type] = {}


_COUNTING: list[type] = []


def _counting_tracker(outer: Any) -> Any:
    """A DSPy usage tracker that counts total tokens and forwards every entry to ``outer`` (the caller's own
    ``dspy.track_usage``, if any), so charging the budget never hides usage from the caller."""
    if not _COUNTING:
        from dspy.utils.usage_tracker import UsageTracker

        class Counting(UsageTracker):  # type: ignore[misc]
            tokens = 0
            outer: Any = None

            def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
                usage = dict(usage_entry or {})
                total = usage.get("total_tokens")
                if total is None:
                    total = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
                self.tokens += int(total or 0)
                if self.outer is not None:
                    self.outer.add_usage(lm, usage_entry)

        _COUNTING.append(Counting)
    tracker = _COUNTING[0]()
    tracker.outer = outer
    return tracker


class _Throttled:
    """Mixed in before the LM's own class: every call waits on the limit, then charges the tokens it used."""

    _dspyo3_limit_token: str

    @property
    def rate_limit(self) -> RateLimit:
        """The :class:`RateLimit` this LM's calls wait on."""
        return _LIMITS[self._dspyo3_limit_token]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import dspy

        limit = self.rate_limit
        limit.acquire_sync()
        tracker = _counting_tracker(dspy.settings.usage_tracker)
        try:
            with dspy.context(usage_tracker=tracker):
                return super().__call__(*args, **kwargs)  # type: ignore[misc]
        finally:
            limit.charge_sync(tracker.tokens)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        import dspy

        limit = self.rate_limit
        await limit.acquire()
        tracker = _counting_tracker(dspy.settings.usage_tracker)
        try:
            with dspy.context(usage_tracker=tracker):
                return await super().acall(*args, **kwargs)  # type: ignore[misc]
        finally:
            await limit.charge(tracker.tokens)


def throttle(lm: Any, limit: RateLimit) -> Any:
    """A copy of ``lm`` (any ``dspy.BaseLM``) whose every call, sync or async, first waits on ``limit`` and then
    charges the tokens it used. DSPy's retries inside one call are not paced separately: give the LM
    ``num_retries=0`` and retry with :class:`dspyo3_async.RetryPolicy` to pace every attempt.

    One limit per model: ``throttle(dspy.LM("openai/gpt-4o-mini"), RateLimit(10, 200_000, key="gpt-4o-mini"))``.
    """
    base = type(lm)
    if issubclass(base, _Throttled):
        raise ValueError("this LM is already throttled; throttle the original LM instead")
    cls = _CLASSES.get(base)
    if cls is None:
        cls = _CLASSES[base] = type(f"Throttled{base.__name__}", (_Throttled, base), {"__module__": __name__})
    throttled = lm.copy()  # DSPy's own copy: history, kwargs and callbacks are not shared with ``lm``
    throttled.__class__ = cls
    token = f"limit-{next(_TOKENS)}"
    _LIMITS[token] = limit
    throttled._dspyo3_limit_token = token
    return throttled
