"""Tenants of ``dspyo3 serve``: who may call (API keys, checked against their SHA-256), how fast (requests per
second, tokens per minute) and how much (USD per UTC day and month).

:class:`TenantGate` is what the app asks on every program request::

    tenant = gate.authenticate(request.headers)        # 401 without a valid key
    await gate.admit(tenant, estimated_tokens)         # 429 "rate_limited" / "over_budget" with retry_after
    ...                                                # run the program
    gate.settle(tenant, tokens=used, cost_usd=cost)    # charge what the request really used

Keys are never stored: the config lists their SHA-256 hex digests (``dspyo3 serve hash-key``, :func:`hash_key`).
A presented key is hashed and compared with every configured digest in constant time; no error text or log line
ever contains it, nor says which keys exist.

Limits are GCRA buckets. ``requests_per_second`` allows bursts of up to one second's worth. ``tokens_per_minute``
is checked on :meth:`~TenantGate.admit` with the caller's estimate (taken from the bucket) and corrected on
:meth:`~TenantGate.settle` with the tokens really used (the difference is charged or given back). Budgets are
checked on admit against what was spent so far in the current UTC day / month and charged on settle, so requests
already admitted when a budget runs out may overshoot it by what they spend (check, then spend).

With a Redis URL (``[redis] url``) every worker process shares the limits (one server-side Lua script per check,
on Redis's clock) and the budgets (counters ``dspyo3:serve:tenant:<name>:usd:day:<YYYY-MM-DD>`` and
``...:usd:month:<YYYY-MM>``, incremented atomically, expiring after their period). Without Redis they are per
process. If Redis stops answering, requests keep being served: limits fall back to per-process buckets at this
process's share (``1 / workers``) of each rate, budgets to the last shared totals this process saw plus what it
spends meanwhile (so workers together may overshoot a budget during an outage); one warning is logged per outage
(the URL's password masked), Redis is probed again with back-off, and spend counted during the outage is added to
the shared counters once it answers.
"""

from __future__ import annotations

import asyncio
import calendar
import contextvars
import datetime
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dspyo3_core import spans
from dspyo3_production.serve.config import ServeConfig, TenantConfig
from dspyo3_production.serve.errors import ServeError

__all__ = ["Tenant", "TenantGate", "hash_key"]

logger = logging.getLogger("dspyo3.production.serve.tenants")

_KEY_HELP = "send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
_MISSING = f"an API key is required (WWW-Authenticate: Bearer): {_KEY_HELP}"
_INVALID = f"the API key is not valid (WWW-Authenticate: Bearer): {_KEY_HELP}, with a key issued for this service"
_FIRST_BACKOFF = 0.25  # seconds before Redis is probed again after a failure; doubles up to _MAX_BACKOFF
_MAX_BACKOFF = 2.0

# GCRA over one key, on the server's clock. ARGV: interval_us per unit, tolerance_us (burst * interval), cost
# (negative gives units back), mode: "try" (take cost only if it fits now, else return the wait in microseconds) or
# "force" (take it regardless: tokens already used). Returns the wait in microseconds as text ("0": taken).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local new_tat = tat + tonumber(ARGV[1]) * tonumber(ARGV[3])
if new_tat < now then new_tat = now end
local wait = new_tat - tonumber(ARGV[2]) - now
if ARGV[4] == 'try' and wait > 0 then return string.format('%.0f', wait) end
if new_tat > now then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
else
  redis.call('DEL', KEYS[1])
end
return '0'
"""

# Add ARGV[1] USD to every key, each expiring ARGV[1 + i] seconds from now; returns the new totals as text.
_SPEND = """
local totals = {}
for i = 1, #KEYS do
  totals[i] = redis.call('INCRBYFLOAT', KEYS[i], ARGV[1])
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[i + 1]))
end
return totals
"""


_ADMITTED: contextvars.ContextVar[tuple[int, str, float] | None] = contextvars.ContextVar(
    "dspyo3_serve_admitted", default=None)
"""(gate id, tenant, tokens taken from its bucket) of the request admitted last in this context, so
:meth:`TenantGate.settle` corrects that estimate."""


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of an API key, as ``key_sha256`` in ``[[serve.tenants]]`` expects it (surrounding
    whitespace is ignored, as it is for a presented key)."""
    return hashlib.sha256(key.strip().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Tenant:
    """An authenticated caller: its ``name`` (what costs and budgets are attributed to) and its configuration."""

    name: str
    config: TenantConfig


def _period_end(now: float, period: str) -> float:
    """Unix time at which the UTC day (``"day"``) or month (``"month"``) containing ``now`` ends."""
    moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    if period == "day":
        start = datetime.datetime(moment.year, moment.month, moment.day, tzinfo=datetime.timezone.utc)
        return start.timestamp() + 86400
    days = calendar.monthrange(moment.year, moment.month)[1]
    start = datetime.datetime(moment.year, moment.month, 1, tzinfo=datetime.timezone.utc)
    return start.timestamp() + days * 86400


def _period_label(now: float, period: str) -> str:
    moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


class _Limiter:
    """One GCRA bucket of a tenant: ``rate`` units per ``per`` seconds, bursts up to ``burst``; in Redis under
    ``key`` when the gate has Redis (else, and while Redis is down, a native limiter in this process)."""

    def __init__(self, rate: float, per: float, burst: float, key: str, share: float) -> None:
        from dspyo3_native import RateLimiter

        self.rate, self.per, self.burst, self.key = rate, per, burst, key
        self.interval_us = per / rate * 1e6
        self.local = RateLimiter(rate, per=per, burst=burst)
        self.fallback = RateLimiter(rate * share, per=per, burst=max(1.0, burst * share))
        self.credit = {id(self.local): 0.0, id(self.fallback): 0.0}  # units given back to a native limiter
        self._lock = threading.Lock()

    def args(self, cost: float, mode: str) -> list[str]:
        return [f"{self.interval_us:.3f}", f"{self.interval_us * self.burst:.3f}", repr(float(cost)), mode]

    def native(self, limiter: Any, cost: float, mode: str) -> float:
        """``try`` / ``force`` on a native limiter (which cannot give units back: a negative cost is kept as credit
        that later costs use first). Returns the seconds to wait (0.0: taken)."""
        with self._lock:
            credit = self.credit[id(limiter)]
            if cost <= 0:
                self.credit[id(limiter)] = credit - cost
                return 0.0
            used = min(credit, cost)
            rest = cost - used
            if mode == "try":
                wait = float(limiter.try_acquire_or_wait(min(rest, self.burst))) if rest > 0 else 0.0
                if wait > 0:
                    return wait
                self.credit[id(limiter)] = credit - used
                return 0.0
            self.credit[id(limiter)] = credit - used
            while rest > 0:
                part = min(rest, self.burst)
                limiter.reserve(part)
                rest -= part
            return 0.0


class _TenantState:
    """A tenant's buckets (None: that limit is not configured) and its Redis key prefix."""

    def __init__(self, config: TenantConfig, share: float) -> None:
        self.config = config
        self.prefix = f"dspyo3:serve:tenant:{config.name}"
        rps, tpm = config.requests_per_second, config.tokens_per_minute
        self.requests = (_Limiter(rps, 1.0, max(1.0, rps), f"{self.prefix}:requests", share)
                         if rps is not None and rps > 0 else None)
        self.tokens = (_Limiter(tpm, 60.0, max(1.0, tpm), f"{self.prefix}:tokens", share)
                       if tpm is not None and tpm > 0 else None)

    def budgets(self) -> list[tuple[str, float]]:
        """The configured budgets as (period, limit USD)."""
        pairs = (("day", self.config.usd_per_day), ("month", self.config.usd_per_month))
        return [(period, limit) for period, limit in pairs if limit is not None]

    def budget_key(self, period: str, now: float) -> str:
        return f"{self.prefix}:usd:{period}:{_period_label(now, period)}"


def _refused(tenant: Tenant, began_ns: int, limit: str, error: ServeError) -> ServeError:
    """``error`` (a refusal of ``tenant`` by ``limit``), recorded as a failed ``dspyo3.tenant.admit`` span when
    tracing is on."""
    tracer = spans.TRACER
    if tracer is not None:
        tracer.record("dspyo3.tenant.admit", began_ns, time.time_ns(),
                      {"dspyo3.tenant": tenant.name, "dspyo3.tenant.limit": limit,
                       "dspyo3.tenant.outcome": error.type or "refused"}, error=error)
    return error


class TenantGate:
    """Authenticates callers by API key and admits their requests within each tenant's rate limits and budgets.

    Args:
        tenants: the tenants (at least one).
        redis_url: share limits and budgets through this Redis (None: per process).
        workers: processes sharing the limits; while Redis is unreachable each paces at ``1 / workers`` of each
            rate, so together they stay within it.
        clock: the wall clock (Unix seconds) that decides the UTC day / month of a budget; tests inject one.
        redis_timeout: seconds a Redis call may take before Redis counts as unreachable.

    Use :meth:`from_config` to build one from a :class:`~dspyo3_production.serve.ServeConfig`.
    """

    def __init__(self, tenants: Sequence[TenantConfig], *, redis_url: str | None = None, workers: int = 1,
                 clock: Callable[[], float] = time.time, redis_timeout: float = 0.5) -> None:
        if not tenants:
            raise ValueError("TenantGate needs at least one tenant")
        if workers < 1:
            raise ValueError(f"TenantGate workers must be >= 1, got {workers!r}")
        share = 1.0 / workers
        self._states = {tenant.name: _TenantState(tenant, share) for tenant in tenants}
        self._digests = [(bytes.fromhex(digest), tenant.name) for tenant in tenants for digest in tenant.key_sha256]
        self.redis_url = redis_url
        self.clock = clock
        self.redis_timeout = redis_timeout
        self.outages = 0  # times Redis stopped answering
        self._down_until = 0.0  # monotonic time after which Redis is tried again
        self._backoff = 0.0  # 0: Redis healthy
        self._health = threading.Lock()
        self._shared: dict[str, float] = {}  # budget key -> last total read from / written to Redis
        self._unsynced: dict[str, tuple[float, float]] = {}  # budget key -> (USD not yet in Redis, expiry seconds)
        self._local: dict[str, float] = {}  # budget key -> USD spent (no Redis)
        self._clients: dict[int, tuple[Any, Any, Any, Any]] = {}  # loop id -> (loop, client, gcra, spend)
        self._sync: tuple[Any, Any, Any] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._closed = False
        if redis_url is not None:
            import redis.exceptions

            self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)

    @classmethod
    def from_config(cls, config: ServeConfig, *, clock: Callable[[], float] = time.time) -> TenantGate | None:
        """The gate for ``config.tenants`` (limits and budgets shared through ``config.redis_url`` when set), or
        None when no tenant is configured (then requests need no key)."""
        if not config.tenants:
            return None
        return cls(config.tenants, redis_url=config.redis_url, workers=config.workers, clock=clock)

    @property
    def tenants(self) -> list[str]:
        """The configured tenants' names."""
        return list(self._states)

    @property
    def redis_available(self) -> bool:
        """False from a failed Redis call until Redis answers again (always True without Redis)."""
        return self._backoff == 0.0

    # -- authentication -----------------------------------------------------------------------------------------
    def authenticate(self, headers: Mapping[str, str]) -> Tenant:
        """The tenant whose key the request carries (``Authorization: Bearer <key>`` or ``x-api-key: <key>``).

        Raises:
            ServeError: 401 ``"unauthorized"`` when no key is sent or the key is not one of the configured ones
                (the message never contains the key nor hints at which keys exist).
        """
        key = _presented_key(headers)
        if not key:
            raise ServeError(401, _MISSING, "unauthorized")
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        found: str | None = None
        for expected, name in self._digests:  # every digest is compared: the time taken says nothing of a match
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        if found is None:
            logger.info("request refused: the API key presented matches no tenant")
            raise ServeError(401, _INVALID, "unauthorized")
        return Tenant(found, self._states[found].config)

    # -- admission ----------------------------------------------------------------------------------------------
    async def admit(self, tenant: Tenant, estimated_tokens: int) -> None:
        """Let one request of ``tenant`` through, estimated to use ``estimated_tokens`` LM tokens, or refuse it.

        Checks the tenant's budgets (USD spent this UTC day / month), then takes a request from its
        requests-per-second bucket and the estimate from its tokens-per-minute bucket (an estimate above a whole
        minute's budget counts as one minute's budget).

        Raises:
            ServeError: 429 ``"over_budget"`` with ``retry_after`` = seconds until the UTC day (month) rolls over,
                or 429 ``"rate_limited"`` with ``retry_after`` = seconds until the request would fit.
        """
        state = self._states[tenant.name]
        _ADMITTED.set(None)
        began = time.time_ns() if spans.TRACER is not None else 0  # a refusal span's start (tracing on)
        now = self.clock()
        budgets = state.budgets()
        if budgets:
            keys = [state.budget_key(period, now) for period, _ in budgets]
            spent = await self._spent(keys)
            over = [(period, limit) for (period, limit), total in zip(budgets, spent, strict=True) if total >= limit]
            if over:
                retry = max(_period_end(now, period) - now for period, _ in over)
                what = " and ".join(f"{limit:g} USD per {period}" for period, limit in over)
                raise _refused(tenant, began, "usd_per_" + over[0][0], ServeError(
                    429, f"tenant {tenant.name!r} has spent its budget ({what}); it renews at 00:00 UTC",
                    "over_budget", retry_after=max(1.0, retry)))
        if state.requests is not None:
            wait = await self._take(state.requests, 1.0, "try")
            if wait > 0:
                raise _refused(tenant, began, "requests_per_second", ServeError(
                    429, f"tenant {tenant.name!r} is over its rate limit of {state.requests.rate:g} requests per "
                         "second; retry after the Retry-After seconds", "rate_limited", retry_after=wait))
        if state.tokens is not None and estimated_tokens > 0:
            wait = await self._take(state.tokens, float(min(estimated_tokens, state.tokens.burst)), "try")
            if wait > 0:
                raise _refused(tenant, began, "tokens_per_minute", ServeError(
                    429, f"tenant {tenant.name!r} is over its limit of {state.tokens.rate:g} tokens per minute; "
                         "retry after the Retry-After seconds", "rate_limited", retry_after=wait))
            _ADMITTED.set((id(self), tenant.name, float(min(estimated_tokens, state.tokens.burst))))

    def settle(self, tenant: Tenant, tokens: int, cost_usd: float, *, estimated_tokens: int | None = None) -> None:
        """Charge a finished request of ``tenant``: ``tokens`` LM tokens really used (the estimate given to
        :meth:`admit` is corrected: the difference is charged or given back) and ``cost_usd`` against the
        budgets. Never raises for Redis trouble; inside an event loop the shared counters are updated by a
        background task (:meth:`flush` waits for them).

        Args:
            estimated_tokens: the estimate passed to :meth:`admit` for this request (None: the one :meth:`admit`
                took last in this context, i.e. in the same request task; if none, all ``tokens`` are charged).
        """
        state = self._states[tenant.name]
        taken = 0.0
        admitted = _ADMITTED.get()
        if estimated_tokens is not None:
            taken = float(min(estimated_tokens, state.tokens.burst)) if state.tokens and estimated_tokens > 0 else 0.0
        elif admitted is not None and admitted[0] == id(self) and admitted[1] == tenant.name:
            taken = admitted[2]
        if admitted is not None:
            _ADMITTED.set(None)
        delta = float(max(0, tokens)) - taken if state.tokens is not None else 0.0
        cost = float(cost_usd) if cost_usd and cost_usd > 0 else 0.0
        if delta == 0.0 and (cost == 0.0 or not state.budgets()):
            return
        if self.redis_url is None:  # per-process state only: no I/O, so settled before the next request is admitted
            self._settle_sync(state, delta, cost)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._settle_sync(state, delta, cost)
            return
        task = loop.create_task(self._settle(state, delta, cost))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        """Wait until every settlement started in this event loop reached Redis (or the local fallback)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def close(self) -> None:
        """Drop the Redis connections (pending settlements still finish on their loop's client)."""
        self._closed = True
        sync, self._sync = self._sync, None
        if sync is not None:
            sync[0].close()
        clients, self._clients = self._clients, {}
        for loop, client, _gcra, _spend in clients.values():
            if loop.is_closed():
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not None and running is loop:
                task = running.create_task(client.aclose())
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
            elif not loop.is_running():
                loop.run_until_complete(client.aclose())

    async def aclose(self) -> None:
        """:meth:`flush`, then :meth:`close` and wait for the connections to close."""
        await self.flush()
        self.close()
        await self.flush()

    # -- Redis and the local fallback ---------------------------------------------------------------------------
    def _use_redis(self) -> bool:
        if self.redis_url is None or self._closed:
            return False
        return self._backoff == 0.0 or time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        from dspyo3_core.doctor import redact_url

        with self._health:
            first = self._backoff == 0.0
            self._backoff = _FIRST_BACKOFF if first else min(_MAX_BACKOFF, self._backoff * 2)
            self._down_until = time.monotonic() + self._backoff
            if first:
                self.outages += 1
        if first:
            logger.warning("tenant limits and budgets: Redis at %s is unreachable (%s: %s); each worker enforces "
                           "them on its own until Redis answers again", redact_url(str(self.redis_url)),
                           type(exc).__name__, redact_url(str(exc)))

    def _ok(self) -> bool:
        """Mark Redis healthy; True if it had failed before (time to add the spend counted meanwhile)."""
        if self._backoff == 0.0:
            return False
        from dspyo3_core.doctor import redact_url

        with self._health:
            if self._backoff == 0.0:
                return False
            self._backoff = 0.0
            self._down_until = 0.0
        logger.info("tenant limits and budgets: Redis at %s answers again; back on the shared limits",
                    redact_url(str(self.redis_url)))
        return True

    def _options(self) -> dict[str, Any]:
        return {"socket_timeout": self.redis_timeout, "socket_connect_timeout": self.redis_timeout,
                "health_check_interval": 0, "retry_on_timeout": False}

    def _async_client(self) -> tuple[Any, Any, Any]:
        loop = asyncio.get_running_loop()
        entry = self._clients.get(id(loop))
        if entry is None or entry[0] is not loop:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            client = redis.asyncio.Redis.from_url(str(self.redis_url), retry=Retry(NoBackoff(), 0), **self._options())
            entry = (loop, client, client.register_script(_GCRA), client.register_script(_SPEND))
            self._clients[id(loop)] = entry
        return entry[1], entry[2], entry[3]

    def _sync_client(self) -> tuple[Any, Any, Any]:
        if self._sync is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = redis.Redis.from_url(str(self.redis_url), retry=Retry(NoBackoff(), 0), **self._options())
            self._sync = (client, client.register_script(_GCRA), client.register_script(_SPEND))
        return self._sync

    async def _take(self, limiter: _Limiter, cost: float, mode: str) -> float:
        """Seconds to wait for ``cost`` (0.0: taken) from the shared bucket, else the local one."""
        if self._use_redis():
            try:
                _client, gcra, _spend = self._async_client()
                reply = await gcra(keys=[limiter.key], args=limiter.args(cost, mode))
            except self._errors as exc:
                self._failed(exc)
            else:
                if self._ok():
                    await self._resync()
                return int(reply) / 1e6
            return limiter.native(limiter.fallback, cost, mode)
        return limiter.native(limiter.local if self.redis_url is None else limiter.fallback, cost, mode)

    async def _spent(self, keys: list[str]) -> list[float]:
        """USD spent so far under each budget key."""
        if self.redis_url is None:
            return [self._local.get(key, 0.0) for key in keys]
        if self._use_redis():
            try:
                client, _gcra, _spend = self._async_client()
                values = await client.mget(keys)
            except self._errors as exc:
                self._failed(exc)
            else:
                for key, value in zip(keys, values, strict=True):
                    self._shared[key] = float(value) if value is not None else 0.0
                if self._ok():
                    await self._resync()
        return [self._shared.get(key, 0.0) + self._unsynced.get(key, (0.0, 0))[0] for key in keys]

    def _budget_keys(self, state: _TenantState) -> tuple[list[str], list[str]]:
        """The budget keys of ``state`` for now and their expiry (seconds: the rest of the period plus a day)."""
        now = self.clock()
        keys, ttls = [], []
        for period, _limit in state.budgets():
            keys.append(state.budget_key(period, now))
            ttls.append(str(int(_period_end(now, period) - now) + 86400))
        return keys, ttls

    def _spend_locally(self, keys: list[str], ttls: list[str], cost: float) -> None:
        if self.redis_url is None:
            for key in keys:
                self._local[key] = self._local.get(key, 0.0) + cost
            return
        for key, ttl in zip(keys, ttls, strict=True):
            pending, _ = self._unsynced.get(key, (0.0, 0))
            self._unsynced[key] = (pending + cost, float(ttl))

    def _spent_shared(self, keys: list[str], totals: Sequence[Any]) -> None:
        for key, total in zip(keys, totals, strict=True):
            self._shared[key] = float(total)

    async def _settle(self, state: _TenantState, delta: float, cost: float) -> None:
        if state.tokens is not None and delta != 0.0:
            await self._take(state.tokens, delta, "force")
        if cost > 0 and state.budgets():
            keys, ttls = self._budget_keys(state)
            if self._use_redis():
                try:
                    _client, _gcra, spend = self._async_client()
                    totals = await spend(keys=keys, args=[repr(cost), *ttls])
                except self._errors as exc:
                    self._failed(exc)
                else:
                    self._spent_shared(keys, totals)
                    if self._ok():
                        await self._resync()
                    return
            self._spend_locally(keys, ttls, cost)

    def _settle_sync(self, state: _TenantState, delta: float, cost: float) -> None:
        """:meth:`_settle` outside an event loop (a synchronous Redis client)."""
        if state.tokens is not None and delta != 0.0:
            done = False
            if self._use_redis():
                try:
                    _client, gcra, _spend = self._sync_client()
                    gcra(keys=[state.tokens.key], args=state.tokens.args(delta, "force"))
                    done = True
                except self._errors as exc:
                    self._failed(exc)
            if not done:
                limiter = state.tokens.local if self.redis_url is None else state.tokens.fallback
                state.tokens.native(limiter, delta, "force")
        if cost > 0 and state.budgets():
            keys, ttls = self._budget_keys(state)
            if self._use_redis():
                try:
                    _client, _gcra, spend = self._sync_client()
                    self._spent_shared(keys, spend(keys=keys, args=[repr(cost), *ttls]))
                    return
                except self._errors as exc:
                    self._failed(exc)
            self._spend_locally(keys, ttls, cost)

    async def _resync(self) -> None:
        """Add the spend counted during an outage to the shared counters (Redis answers again)."""
        unsynced, self._unsynced = self._unsynced, {}
        for key, (cost, ttl) in unsynced.items():
            try:
                _client, _gcra, spend = self._async_client()
                self._spent_shared([key], await spend(keys=[key], args=[repr(cost), str(int(ttl))]))
            except self._errors as exc:
                pending, _ = self._unsynced.get(key, (0.0, 0))
                self._unsynced[key] = (pending + cost, ttl)
                self._failed(exc)


def _presented_key(headers: Mapping[str, str]) -> str:
    """The API key in ``headers`` (``Authorization: Bearer`` first, then ``x-api-key``); "" when none."""
    authorization = headers.get("authorization") or headers.get("Authorization")
    api_key = headers.get("x-api-key") or headers.get("X-Api-Key") or headers.get("X-API-Key")
    if authorization is None and api_key is None and not hasattr(headers, "getlist"):
        for name, value in headers.items():  # a plain dict with other capitalisation
            lowered = name.lower()
            if lowered == "authorization":
                authorization = value
            elif lowered == "x-api-key":
                api_key = value
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return (api_key or "").strip()
