"""Rate limits for LM calls: requests per second and tokens per minute, in this process (the native GCRA limiter
of ``dspyo3-native``) or shared by every process that uses the same Redis key (GCRA in one server-side Lua script,
so concurrent clients never race).

A :class:`RateLimit` paces *requests* exactly (each waits for its slot, in order) and budgets *tokens* after the
fact: a call may start while the token budget is not overdrawn, and its actual usage is then charged, so over a
run the token rate converges on the budget (in-flight calls can overshoot it by at most what they use).

A shared limit keeps working while Redis is unreachable: by default (``on_redis_error="local"``) each budget falls
back to a native limiter at this process's share of the rate, and probes Redis again with exponential back-off
(one call at a time, never every call) to rejoin the shared budget once it answers; ``on_redis_error="fail"``
raises :class:`RateLimitUnavailable` instead (fail closed). The share is learnt while Redis is up: every shared
limit in use announces itself in a sorted set next to its budget's key (inside the same script call, at most about
once a second), and the share is one over the number of limits that announced themselves recently.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import threading
import time
from typing import Any, Literal

from dspyo3_core import spans

__all__ = ["OnRedisError", "RateLimit", "RateLimitUnavailable", "throttle"]

logger = logging.getLogger(__name__)

OnRedisError = Literal["local", "fail"]
"""What a shared :class:`RateLimit` does while Redis is unreachable: pace locally, or raise."""

_FIRST_BACKOFF = 0.25  # seconds before the first probe of a Redis that just failed; doubles up to max_backoff


class RateLimitUnavailable(RuntimeError):
    """A shared rate limit made with ``on_redis_error="fail"`` could not reach its Redis: no request was granted.
    Retry later, or use ``on_redis_error="local"`` to keep going at this process's share of the rate."""

# GCRA over one Redis key, and the roll of the limits sharing it. KEYS[1]: the budget's key; KEYS[2]: a sorted set
# of the limits using that budget (member: a limit's id, score: when its announcement lapses, server microseconds).
# ARGV: interval_us per unit, tolerance_us (burst * interval), cost, mode ("reserve": take cost and return the wait;
# "peek": return the wait, take nothing), member ("" = no announcement in this call), window_us (how long the
# announcement lasts). Returns {wait_us, live members (-1 when not announced)}. Time is the server's.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local raw = redis.pcall('GET', KEYS[1])
if type(raw) == 'table' and raw.err then
  return redis.error_reply('dspyo3 rate limit: Redis key ' .. KEYS[1] .. ' is not a rate-limit budget (' ..
    raw.err .. '); delete that key or give the RateLimit another key')
end
local tat = tonumber(raw or '0')
if tat == nil then
  return redis.error_reply('dspyo3 rate limit: Redis key ' .. KEYS[1] .. ' holds a value that is not a number, ' ..
    'not a rate-limit budget; delete that key or give the RateLimit another key')
end
if tat < now then tat = now end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local new_tat = tat + interval * tonumber(ARGV[3])
local wait = new_tat - tolerance - now
if wait < 0 then wait = 0 end
if ARGV[4] == 'reserve' then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
end
local members = -1
if ARGV[5] ~= '' then
  local kind = redis.call('TYPE', KEYS[2])['ok']
  if kind ~= 'zset' and kind ~= 'none' then
    return redis.error_reply('dspyo3 rate limit: Redis key ' .. KEYS[2] .. ' holds a ' .. kind ..
      ', not the sorted set of the limits sharing this budget; delete that key or give the RateLimit another key')
  end
  local window = tonumber(ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now))
  redis.call('ZADD', KEYS[2], string.format('%.0f', now + window), ARGV[5])
  local keep = math.ceil(window / 1000) + 1000
  if redis.call('PTTL', KEYS[2]) < keep then redis.call('PEXPIRE', KEYS[2], keep) end
  members = redis.call('ZCARD', KEYS[2])
end
return {string.format('%.0f', wait), members}
"""


class _Bucket:
    """One GCRA budget: ``rate`` units per ``per`` seconds, bursts up to ``burst``; local or in Redis.

    A Redis bucket that cannot reach Redis (connection refused, timeout, a server still loading its data or
    read-only) either raises :class:`RateLimitUnavailable` (``on_error="fail"``) or paces this process with a
    native limiter at its share of the rate. Either way it stays off Redis for a back-off (0.25 s doubling up to
    ``max_backoff``), then lets one call probe it; the first probe that succeeds rejoins the shared budget.

    The share is ``share`` when given; else it is learnt from Redis: while Redis answers, the bucket announces
    itself (about once a second, inside the GCRA script call it makes anyway) in the sorted set ``{key}:members``
    with an announcement lasting ``window`` seconds, and reads back how many announcements are live; an outage
    paces at one over that number (the full rate if Redis was never reached).
    """

    def __init__(self, rate: float, per: float, burst: float, redis_url: str | None, key: str, *,
                 share: float | None = None, on_error: OnRedisError = "local", timeout: float = 0.5,
                 max_backoff: float = 5.0, window: float = 5.0) -> None:
        from dspyo3_native import RateLimiter

        self.rate, self.per, self.burst = rate, per, burst
        self.local = RateLimiter(rate, per=per, burst=burst) if redis_url is None else None
        self.redis_url, self.key, self.members_key = redis_url, key, f"{key}:members"
        self.interval_us = per / rate * 1e6
        self.fixed_share, self.on_error, self.timeout, self.max_backoff = share, on_error, timeout, max_backoff
        self.window_us = f"{window * 1e6:.0f}"
        self._beat_every = min(1.0, window / 3)  # an announcement is renewed well before it lapses
        self._next_beat = 0.0  # monotonic time of the next announcement (0: the next Redis call announces)
        self._member, self._member_pid = "", -1
        self.members_seen: int | None = None  # live limits on this budget at the last announcement
        self.share = self.current_share()  # the share the fallback paces at (fixed at the start of an outage)
        self._sync: Any = None
        self._async: dict[int, Any] = {}  # event loop id -> (client, script)
        self._fallback: Any = None  # the native limiter at ``share`` of the rate, made at the first outage
        self._lock = threading.Lock()
        self._backoff = 0.0  # 0: Redis is healthy; else the current pause between probes
        self._down_until = 0.0  # monotonic time of the next probe
        self._probing = False
        self.outages = 0  # times this budget lost Redis and went local (or failed)
        self.rejoined = 0  # times it found Redis again
        self.last_error = ""
        if redis_url is not None:
            import redis.exceptions

            self._errors: tuple[type[BaseException], ...] = (
                redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError,
                OSError)
            self._auth_errors: tuple[type[BaseException], ...] = (redis.exceptions.AuthenticationError,)

    @property
    def redis_available(self) -> bool:
        """False from a failed Redis call until a probe succeeds again."""
        return self._backoff == 0.0

    def current_share(self) -> float:
        """The fraction of the rate this process would pace at if Redis failed now."""
        if self.fixed_share is not None:
            return self.fixed_share
        return 1.0 / self.members_seen if self.members_seen else 1.0

    def _announcing(self) -> str:
        """This limit's member id if this call should renew its announcement (at most every ``_beat_every`` s),
        else ``""``. The id is per limit and per process (a forked child gets an id of its own)."""
        now = time.monotonic()
        if now < self._next_beat:
            return ""
        self._next_beat = now + self._beat_every
        pid = os.getpid()
        if pid != self._member_pid:
            self._member, self._member_pid = f"{pid}-{secrets.token_hex(6)}", pid
        return self._member

    def _call(self, cost: float, mode: str) -> tuple[list[str], list[Any]]:
        """Keys and arguments of one script call."""
        return [self.key, self.members_key], [f"{self.interval_us:.3f}", f"{self.interval_us * self.burst:.3f}",
                                              repr(float(cost)), mode, self._announcing(), self.window_us]

    def _reply(self, reply: Any) -> float:
        """The wait in seconds from the script's reply; notes how many limits share the budget."""
        wait, members = reply
        members = int(members)
        if members > 0:
            self.members_seen = members
        return int(wait) / 1e6

    def _client_options(self) -> dict[str, Any]:
        # no client-side retries: the bucket's own back-off decides when Redis is tried again
        return {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout, "health_check_interval": 0,
                "retry_on_timeout": False}

    def _sync_script(self) -> Any:
        if self._sync is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = redis.Redis.from_url(str(self.redis_url), retry=Retry(NoBackoff(), 0),
                                          **self._client_options())
            self._sync = client.register_script(_GCRA)
        return self._sync

    def _async_script(self) -> Any:
        loop = asyncio.get_running_loop()
        entry = self._async.get(id(loop))
        if entry is None or entry[0] is not loop:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            client = redis.asyncio.Redis.from_url(str(self.redis_url), retry=Retry(NoBackoff(), 0),
                                                  **self._client_options())
            entry = self._async[id(loop)] = (loop, client.register_script(_GCRA))
        return entry[1]

    # -- health: when to use Redis, when to probe it, when to pace locally ---------------------------------------
    def _route(self) -> str:
        """``"redis"`` (healthy), ``"probe"`` (this call tries a Redis that failed) or ``"local"``."""
        if self._backoff == 0.0:
            return "redis"
        with self._lock:
            if self._backoff == 0.0:
                return "redis"
            if not self._probing and time.monotonic() >= self._down_until:
                self._probing = True
                return "probe"
        return "local"

    def _failed(self, exc: BaseException, probe: bool) -> None:
        with self._lock:
            first = self._backoff == 0.0
            if probe:
                self._probing = False
            if first or probe:  # calls already in flight when Redis went away do not stretch the back-off
                self._backoff = _FIRST_BACKOFF if first else min(self.max_backoff, self._backoff * 2)
                self._down_until = time.monotonic() + self._backoff
            self._next_beat = 0.0  # the first call that reaches Redis again announces this limit
            if first:
                self.outages += 1
                share = self.current_share()
                if share != self.share:
                    self.share, self._fallback = share, None
            self.last_error = f"{type(exc).__name__}: {exc}"
        if first:
            if self.on_error == "fail":
                logger.warning("rate limit %s: Redis at %s is unreachable (%s); refusing requests until it answers "
                               "(on_redis_error='fail')", self.key, _shown(self.redis_url), self.last_error)
            else:
                if self.fixed_share is not None:
                    why = "the share it was given"
                elif self.members_seen:
                    why = f"{self.members_seen} limit(s) shared it when Redis last answered"
                else:
                    why = "Redis never answered, so the sharers are unknown"
                logger.warning("rate limit %s: Redis at %s is unreachable (%s); pacing this process locally at "
                               "%.4g per %gs (%.0f%% of the shared budget: %s) until it answers", self.key,
                               _shown(self.redis_url), self.last_error, self.rate * self.share, self.per,
                               self.share * 100, why)

    def _ok(self, probe: bool) -> None:
        if probe:
            with self._lock:
                self._probing = False
                self._backoff = 0.0
                self._down_until = 0.0
                self.rejoined += 1
            logger.info("rate limit %s: Redis at %s answers again; back on the shared budget", self.key,
                        _shown(self.redis_url))

    def _abandoned(self, probe: bool) -> None:
        """A probe cancelled before Redis answered: let the next call probe instead."""
        if probe:
            with self._lock:
                self._probing = False

    def _unavailable(self) -> RateLimitUnavailable:
        return RateLimitUnavailable(
            f"the shared rate limit {self.key!r} cannot reach Redis at {_shown(self.redis_url)} "
            f"({self.last_error or 'unreachable'}); no request was granted. Retry once Redis is back, or pass "
            "on_redis_error='local' to keep going at this process's share of the rate")

    def _fallback_limiter(self) -> Any:
        if self._fallback is None:
            from dspyo3_native import RateLimiter

            with self._lock:
                if self._fallback is None:
                    self._fallback = RateLimiter(self.rate * self.share, per=self.per,
                                                 burst=max(1.0, self.burst * self.share))
        return self._fallback

    @staticmethod
    def _native_op(limiter: Any, cost: float, mode: str) -> float:
        """``reserve`` / ``time_to_ready`` on a native limiter, in parts of at most its burst."""
        if mode != "reserve":
            return float(limiter.time_to_ready(min(cost, limiter.burst)))
        wait = 0.0
        while cost > 0:
            part = min(cost, limiter.burst)
            wait = float(limiter.reserve(part))
            cost -= part
        return wait

    def _check(self, exc: BaseException, probe: bool, may_fail: bool) -> None:
        if isinstance(exc, self._auth_errors):  # a wrong password is a configuration error, not an outage
            self._abandoned(probe)
            raise exc
        self._failed(exc, probe)
        if self.on_error == "fail" and may_fail:
            raise self._unavailable() from exc

    def _op(self, cost: float, mode: str, may_fail: bool = True) -> tuple[float, bool]:
        """(seconds to wait, whether the local fallback decided it)."""
        if self.local is not None:
            return self._native_op(self.local, cost, mode), False
        route = self._route()
        if route != "local":
            probe = route == "probe"
            try:
                keys, args = self._call(cost, mode)
                wait = self._reply(self._sync_script()(keys=keys, args=args))
            except self._errors as exc:
                self._check(exc, probe, may_fail)
            except BaseException:
                self._abandoned(probe)
                raise
            else:
                self._ok(probe)
                return wait, False
        elif self.on_error == "fail" and may_fail:
            raise self._unavailable()
        return self._native_op(self._fallback_limiter(), cost, mode), True

    async def _aop(self, cost: float, mode: str, may_fail: bool = True) -> tuple[float, bool]:
        if self.local is not None:
            return self._native_op(self.local, cost, mode), False
        route = self._route()
        if route != "local":
            probe = route == "probe"
            try:
                keys, args = self._call(cost, mode)
                wait = self._reply(await self._async_script()(keys=keys, args=args))
            except self._errors as exc:
                self._check(exc, probe, may_fail)
            except BaseException:  # cancelled while probing
                self._abandoned(probe)
                raise
            else:
                self._ok(probe)
                return wait, False
        elif self.on_error == "fail" and may_fail:
            raise self._unavailable()
        return self._native_op(self._fallback_limiter(), cost, mode), True

    def _parts(self, cost: float) -> list[float]:
        """``cost`` in parts of at most ``burst`` (the native limiter refuses a single larger cost)."""
        parts = []
        while cost > 0:
            parts.append(min(cost, self.burst))
            cost -= parts[-1]
        return parts

    def reserve(self, cost: float, may_fail: bool = True) -> tuple[float, bool]:
        """Take ``cost`` now (all of it, even beyond ``burst``): (seconds to wait before using it, decided
        locally while Redis was unreachable)."""
        wait, local = 0.0, False
        for part in self._parts(cost):
            wait, was_local = self._op(part, "reserve", may_fail)
            local = local or was_local
        return wait, local

    def time_to_ready(self, cost: float) -> float:
        """Seconds until ``cost`` (at most ``burst``) could be taken; takes nothing."""
        return self._op(min(cost, self.burst), "peek")[0]

    async def areserve(self, cost: float, may_fail: bool = True) -> tuple[float, bool]:
        wait, local = 0.0, False
        for part in self._parts(cost):
            wait, was_local = await self._aop(part, "reserve", may_fail)
            local = local or was_local
        return wait, local

    async def atime_to_ready(self, cost: float) -> float:
        return (await self._aop(min(cost, self.burst), "peek"))[0]


def _shown(url: str | None) -> str:
    """The Redis URL without its password (safe for logs and errors)."""
    from dspyo3_core.doctor import redact_url

    return redact_url(str(url))


class RateLimit:
    """A request rate and/or token budget for one model (or any key).

    Args:
        requests_per_second: requests allowed per second (paced evenly; ``burst`` at once at most).
        tokens_per_minute: LM tokens (prompt + completion) per minute; usage is charged after each call.
        burst: requests that may start back to back before pacing applies (1 = perfectly even).
        redis_url: share the budget through Redis (``redis://127.0.0.1:6379/0``): every process using the same
            ``key`` draws from one budget; the arithmetic runs server-side in one Lua script on the server's clock.
        key: the budget's name (the model, usually); Redis keys are ``dspyo3:ratelimit:{key}:requests|tokens``.
        on_redis_error: what a shared limit does while Redis is unreachable. ``"local"`` (the default): pace this
            process with a local limiter at its share of the rate (:attr:`local_share`) and rejoin the shared
            budget when Redis answers again; ``"fail"``: refuse requests with :class:`RateLimitUnavailable` (fail
            closed). Token charges for calls already made are never refused: they go to the local budget meanwhile.
        processes: how many processes share the budget; while Redis is down each one paces itself at
            ``1 / processes`` of the rate, so together they stay within it. Not given (the default): learnt from
            Redis while it is up: every shared limit in use announces itself next to the budget's key (in the
            script call it makes anyway, at most about once a second), and an outage paces each one at one over
            the number of limits that used the key within the last ``share_window`` seconds (the full rate if
            Redis was never reached).
        local_share: this process's fraction of the rate while Redis is down (``0 < local_share <= 1``), instead
            of ``1 / processes`` or the learnt share.
        redis_timeout: seconds a Redis call may take (connect or reply) before Redis counts as unreachable.
        redis_max_backoff: longest pause, in seconds, between two probes of an unreachable Redis (the first is
            after 0.25 s, doubling up to this).
        share_window: seconds a limit that stopped using the key still counts among those sharing it (for the
            learnt share); raise it when processes call less often than every few seconds.

    ``await limit.acquire()`` before a request, ``await limit.charge(tokens)`` after it; or let :func:`throttle`
    and :func:`dspyo3_async.run_many` do both.
    """

    def __init__(self, requests_per_second: float | None = None, tokens_per_minute: float | None = None, *,
                 burst: float = 1.0, redis_url: str | None = None, key: str = "default",
                 on_redis_error: OnRedisError = "local", processes: int | None = None,
                 local_share: float | None = None, redis_timeout: float = 0.5,
                 redis_max_backoff: float = 2.0, share_window: float = 5.0) -> None:
        if requests_per_second is None and tokens_per_minute is None:
            raise ValueError("RateLimit needs requests_per_second and/or tokens_per_minute")
        for name, value in (("requests_per_second", requests_per_second), ("tokens_per_minute", tokens_per_minute)):
            if value is not None and not value > 0:
                raise ValueError(f"RateLimit.{name} must be > 0, got {value!r}")
        if burst < 1:
            raise ValueError(f"RateLimit.burst must be >= 1, got {burst!r}")
        if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must be a redis://, rediss:// or unix:// URL, got {redis_url!r}")
        if on_redis_error not in ("local", "fail"):
            raise ValueError(f"RateLimit.on_redis_error must be 'local' or 'fail', got {on_redis_error!r}")
        if processes is not None and local_share is not None:
            raise ValueError("give RateLimit either processes or local_share, not both (local_share = 1 / processes)")
        if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int)
                                      or processes < 1):
            raise ValueError(f"RateLimit.processes must be a whole number >= 1, got {processes!r}")
        if local_share is not None and not 0 < local_share <= 1:
            raise ValueError(f"RateLimit.local_share must be > 0 and <= 1, got {local_share!r}")
        if not redis_timeout > 0 or not redis_max_backoff > 0:
            raise ValueError(f"RateLimit.redis_timeout and redis_max_backoff must be > 0 seconds, got "
                             f"{redis_timeout!r} and {redis_max_backoff!r}")
        if not share_window > 0:
            raise ValueError(f"RateLimit.share_window must be > 0 seconds, got {share_window!r}")
        self.requests_per_second, self.tokens_per_minute, self.key = requests_per_second, tokens_per_minute, key
        self.on_redis_error: OnRedisError = on_redis_error
        fixed = local_share if local_share is not None else 1.0 / processes if processes is not None else None
        prefix = f"dspyo3:ratelimit:{key}"
        options: dict[str, Any] = {"share": fixed, "on_error": on_redis_error, "timeout": redis_timeout,
                                   "max_backoff": redis_max_backoff, "window": share_window}
        self._requests = (_Bucket(requests_per_second, 1.0, burst, redis_url, f"{prefix}:requests", **options)
                          if requests_per_second else None)
        self._tokens = (_Bucket(tokens_per_minute, 60.0, tokens_per_minute, redis_url, f"{prefix}:tokens", **options)
                        if tokens_per_minute else None)
        self.shared = redis_url is not None
        self.granted = 0
        self.granted_locally = 0
        self.waited = 0.0
        self.tokens_charged = 0

    def __repr__(self) -> str:
        where = "redis" if self.shared else "local"
        return (f"RateLimit(requests_per_second={self.requests_per_second}, "
                f"tokens_per_minute={self.tokens_per_minute}, key={self.key!r}, {where})")

    def _buckets(self) -> list[_Bucket]:
        return [b for b in (self._requests, self._tokens) if b is not None]

    @property
    def local_share(self) -> float:
        """The fraction of the rate this process paces at while Redis is down: during an outage, the share in
        force; otherwise the share an outage starting now would use (``local_share``, ``1 / processes``, or one
        over :attr:`sharing`; 1.0 while unknown). Of the request budget, or of the token budget if there is none."""
        bucket = self._buckets()[0]
        return bucket.share if not bucket.redis_available else bucket.current_share()

    @property
    def sharing(self) -> int | None:
        """For a shared limit: how many limits (this one included) used its key within ``share_window`` seconds,
        as Redis last told it (request budget, else token budget); None before Redis answered once, or for a
        local limit."""
        return self._buckets()[0].members_seen

    @property
    def redis_available(self) -> bool:
        """For a shared limit: False while it paces locally (or refuses) because Redis did not answer, True once
        a probe found it again. Always True for a local limit."""
        return all(b.redis_available for b in self._buckets())

    @property
    def outages(self) -> int:
        """Times a budget of this limit lost Redis (and went local, or refused requests)."""
        return sum(b.outages for b in self._buckets())

    @property
    def rejoined(self) -> int:
        """Times a budget of this limit found Redis again after an outage."""
        return sum(b.rejoined for b in self._buckets())

    async def acquire(self) -> float:
        """Wait for a request slot (and for the token budget not to be overdrawn); returns the seconds waited.
        A task cancelled while waiting gives up its slot unused (the limit is never exceeded).

        Raises:
            RateLimitUnavailable: a shared limit with ``on_redis_error="fail"`` cannot reach Redis.
        """
        start = time.monotonic()
        local = False
        paced = False
        if self._tokens is not None:
            while (wait := await self._tokens.atime_to_ready(1)) > 0:
                paced = True
                await asyncio.sleep(wait)
        if self._requests is not None:
            wait, local = await self._requests.areserve(1)
            if wait > 0:
                paced = True
                await asyncio.sleep(wait)
        waited = time.monotonic() - start
        self.granted += 1
        self.granted_locally += local
        self.waited += waited
        if paced and (tracer := spans.TRACER) is not None:  # a span only for a call the limit held back
            _record_wait(tracer, waited, local)
        return waited

    def acquire_sync(self) -> float:
        """:meth:`acquire` for threads (blocks the calling thread)."""
        start = time.monotonic()
        local = False
        paced = False
        if self._tokens is not None:
            while (wait := self._tokens.time_to_ready(1)) > 0:
                paced = True
                time.sleep(wait)
        if self._requests is not None:
            wait, local = self._requests.reserve(1)
            if wait > 0:
                paced = True
                time.sleep(wait)
        waited = time.monotonic() - start
        self.granted += 1
        self.granted_locally += local
        self.waited += waited
        if paced and (tracer := spans.TRACER) is not None:
            _record_wait(tracer, waited, local)
        return waited

    async def charge(self, tokens: int) -> None:
        """Charge ``tokens`` used by a finished call to the token budget (more than a minute's budget is charged
        in full: later calls wait until it is paid off). Never raises for an unreachable Redis: the tokens are
        spent already, so they are charged to the local budget meanwhile."""
        if self._tokens is not None and tokens > 0:
            self.tokens_charged += tokens
            await self._tokens.areserve(tokens, may_fail=False)

    def charge_sync(self, tokens: int) -> None:
        """:meth:`charge` for threads."""
        if self._tokens is not None and tokens > 0:
            self.tokens_charged += tokens
            self._tokens.reserve(tokens, may_fail=False)


def _record_wait(tracer: spans.Tracer, waited: float, local: bool) -> None:
    """A ``dspyo3.rate_limit.wait`` span for a wait that just ended (under the current span)."""
    end = time.time_ns()
    tracer.record("dspyo3.rate_limit.wait", end - int(waited * 1e9), end,
                  {"dspyo3.rate_limit.waited_s": waited, "dspyo3.rate_limit.local": bool(local)})


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
