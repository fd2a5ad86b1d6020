"""Per-call cost, totals per run / user / model / day, and budgets that refuse a call before it overspends.

Cost of a call = its billed tokens times the model's price: :data:`dspyo3_core.pricing.PRICING` (LiteLLM's
bundled price map, overridable with ``PRICING.set(model, input_per_mtok=..., output_per_mtok=...)`` or
``CostTracker(pricing=...)``); when the model has no price there, the cost the LM itself reported. A cost the LM
layer already priced from that same place (:attr:`~dspyo3_core.call.LMCall.cost_source`) is taken as is. Cache
hits cost nothing.

Budgets are checked *before* a call: the tracker reserves the call's worst case (prompt tokens estimated from its
text, completion tokens = ``max_tokens``) against every budget that applies, and raises
:class:`BudgetExceededError` if any would go over; after the call the reservation is replaced by the real cost.
With ``redis_url`` the totals and reservations live in Redis (one Lua script checks and reserves atomically), so
budgets hold across processes and restarts.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from dspyo3_core.lm import LMCall
from dspyo3_core.pricing import PRICING, PricingTable

logger = logging.getLogger("dspyo3.production.cost")

Dimension = Literal["total", "run", "user", "model", "day"]
DIMENSIONS: tuple[Dimension, ...] = ("total", "run", "user", "model", "day")
_NOBODY: Mapping[str, str] = {}
_UNKNOWN: Any = object()
ATTRIBUTION: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("dspyo3_cost_context", default=_NOBODY)
"""The run/user the current context charges to (set by :func:`attribute`); read it with :func:`attribution` (or
``ATTRIBUTION.get()`` on a hot path)."""
DEFAULT_MAX_TOKENS = 4096
"""Completion tokens assumed for the worst case when a call sets no ``max_tokens``."""


_day_cache: tuple[int, str] = (-1, "")
_scopes_memo: dict[tuple[str, str, str | None, str | None], dict[Dimension, str]] = {}  # read-only once made


def _utc_day() -> str:
    """Today's UTC date as ISO text (recomputed once per day number)."""
    global _day_cache
    number = int(time.time() // 86400)
    if _day_cache[0] != number:
        _day_cache = (number, datetime.datetime.fromtimestamp(number * 86400, datetime.timezone.utc).date().isoformat())
    return _day_cache[1]


def _own_price(pricing: Any) -> tuple[float, float] | None:
    """An LM's own ``pricing`` (``NativeLM(pricing={"input_per_mtok": .., "output_per_mtok": ..})``) as a price."""
    if isinstance(pricing, Mapping) and "input_per_mtok" in pricing and "output_per_mtok" in pricing:
        return float(pricing["input_per_mtok"]), float(pricing["output_per_mtok"])
    return None


@contextmanager
def attribute(*, run: str | None = None, user: str | None = None) -> Iterator[None]:
    """Charge LM calls made inside this block to ``run`` and/or ``user`` (nested blocks override)."""
    current = dict(ATTRIBUTION.get())
    if run is not None:
        current["run"] = run
    if user is not None:
        current["user"] = user
    token = ATTRIBUTION.set(current)
    try:
        yield
    finally:
        ATTRIBUTION.reset(token)


def attribution() -> Mapping[str, str]:
    """The run/user the current context charges to."""
    return ATTRIBUTION.get()


class _Refusals:
    """A thread-safe count of the calls one :class:`Budget` refused."""

    __slots__ = ("count", "lock")

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()


@dataclass(frozen=True)
class Budget:
    """A spending limit in USD.

    Attributes:
        limit_usd: the most that may be spent.
        per: what the limit applies to: ``"total"`` (everything), or each ``"run"``, ``"user"``, ``"model"`` or
            UTC ``"day"`` separately. Calls with no run (user) are not limited by a per-run (per-user) budget.
        name: label for errors and metrics (default ``"<per>:<limit>"``).
        on_refuse: called with the :class:`BudgetExceededError` each time *this* budget refuses a call (in the
            calling thread, before the error is raised); it must not raise.

    :attr:`refusals` counts the calls this budget refused (thread-safe); refusals by other budgets of the same
    tracker are not counted.
    """

    limit_usd: float
    per: Dimension = "total"
    name: str | None = None
    on_refuse: Callable[[BudgetExceededError], None] | None = dataclasses.field(default=None, compare=False, repr=False)
    _refused: _Refusals = dataclasses.field(default_factory=_Refusals, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.per not in DIMENSIONS:
            raise ValueError(f"Budget per={self.per!r}: choose one of {', '.join(DIMENSIONS)}")
        if not self.limit_usd >= 0:
            raise ValueError(f"Budget limit_usd must be >= 0, got {self.limit_usd!r}")

    @property
    def label(self) -> str:
        """Name used in errors and the ``budget`` metric label."""
        return self.name or f"{self.per}:{self.limit_usd:g}"

    @property
    def refusals(self) -> int:
        """How many calls this budget has refused."""
        return self._refused.count

    def refuse(self, scope: str, spent_usd: float, estimate_usd: float) -> BudgetExceededError:
        """Count a refusal by this budget, tell :attr:`on_refuse`, and return the error to raise."""
        error = BudgetExceededError(self, scope, spent_usd, estimate_usd)
        with self._refused.lock:
            self._refused.count += 1
        if self.on_refuse is not None:
            try:
                self.on_refuse(error)
            except Exception:  # a broken observer must not turn a refusal into another error
                logger.exception("on_refuse callback of budget %s failed", self.label)
        return error


class BudgetExceededError(RuntimeError):
    """An LM call was refused before it ran because it could take a budget over its limit.

    Attributes:
        budget: the :class:`Budget` that refused it.
        scope: what was being limited (``"user=alice"``, ``"day=2026-11-25"``, ``"total"``).
        spent_usd: spent (plus reserved by calls in flight) so far.
        estimate_usd: the worst-case cost of the refused call.
    """

    def __init__(self, budget: Budget, scope: str, spent_usd: float, estimate_usd: float) -> None:
        super().__init__(
            f"budget {budget.label} for {scope} would be exceeded: ${spent_usd:.6f} spent or reserved + "
            f"${estimate_usd:.6f} worst case for this call > ${budget.limit_usd:g} limit "
            "(raise the limit, lower max_tokens, or wait for the next period)"
        )
        self.budget = budget
        self.scope = scope
        self.spent_usd = spent_usd
        self.estimate_usd = estimate_usd


@dataclass
class Reservation:
    """What :meth:`CostTracker.reserve` held for one call (settled by :meth:`CostTracker.settle`).

    Attributes:
        fields: the scope fields charged (``"total"``, ``"model=..."``, ``"day=..."``, ...).
        estimate: USD held against each of them until the call settles.
        shared: held in Redis (else in this process).
        hold: the Redis hold's id (None when nothing was held there).
    """

    fields: list[str]
    estimate: float
    shared: bool = False
    hold: str | None = None


# Redis layout: KEYS[1] <ns>:cost:spent and KEYS[2] <ns>:cost:reserved (hashes: scope field -> USD); KEYS[3]
# <ns>:cost:holds (sorted set: hold id -> expiry, ms) and KEYS[4] <ns>:cost:hold (hash: hold id -> JSON of its
# estimate and fields). A hold that outlives its expiry (its process died between reserve and settle) is given
# back by the next reservation, so a crash cannot shrink budgets for good; a late settle of such a hold only adds
# its cost.
_SWEEP = """
pcall(redis.replicate_commands)  -- writes after TIME: needed before Redis 5, a no-op since
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms)
for _, id in ipairs(expired) do
  local held = redis.call('HGET', KEYS[4], id)
  if held then
    local hold = cjson.decode(held)
    for _, field in ipairs(hold.f) do redis.call('HINCRBYFLOAT', KEYS[2], field, -hold.e) end
    redis.call('HDEL', KEYS[4], id)
  end
  redis.call('ZREM', KEYS[3], id)
end
"""
_RESERVE = _SWEEP + """
local estimate = tonumber(ARGV[1])
local fields = {}
for i = 4, #ARGV, 2 do
  local field = ARGV[i]
  local limit = tonumber(ARGV[i + 1])
  fields[#fields + 1] = field
  if limit >= 0 then
    local spent = tonumber(redis.call('HGET', KEYS[1], field) or '0')
    spent = spent + tonumber(redis.call('HGET', KEYS[2], field) or '0')
    if spent + estimate > limit then return {field, tostring(spent)} end
  end
end
if estimate > 0 then
  for _, field in ipairs(fields) do redis.call('HINCRBYFLOAT', KEYS[2], field, estimate) end
  redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[3]), ARGV[2])
  redis.call('HSET', KEYS[4], ARGV[2], cjson.encode({e = estimate, f = fields}))
end
return 0
"""
_SETTLE = """
local held = redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
local estimate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
for i = 4, #ARGV do
  if held == 1 and estimate ~= 0 then redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], -estimate) end
  if cost ~= 0 then redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], cost) end
end
return held
"""


class CostTracker:
    """Prices calls, keeps totals per dimension and enforces budgets.

    Args:
        budgets: limits checked before every call.
        pricing: price table (default: the process-wide :data:`~dspyo3_core.pricing.PRICING`).
        redis_url: keep totals and reservations in Redis (shared by processes, kept across restarts).
        namespace: Redis key prefix.
        reservation_ttl: seconds a Redis reservation is held at most; one whose process died before settling is
            given back after this (longer-running calls lose their hold early, never their cost).
        default_price: ``(input, output)`` USD per million tokens for models priced nowhere (not by the LM, not
            in ``pricing``): their worst case is reserved at it, and their calls cost it when the LM reports no
            cost. None: such calls reserve nothing ahead (a budget then only stops them once it is spent, which
            concurrent calls can overshoot; a warning says so once per model) and cost what the LM reports.
    """

    def __init__(self, budgets: Iterable[Budget] = (), *, pricing: PricingTable | None = None,
                 redis_url: str | None = None, namespace: str = "dspyo3", reservation_ttl: float = 600.0,
                 default_price: tuple[float, float] | None = None) -> None:
        if not reservation_ttl > 0:
            raise ValueError(f"reservation_ttl must be > 0 seconds, got {reservation_ttl!r}")
        if default_price is not None:
            if len(default_price) != 2 or min(default_price) < 0:
                raise ValueError("default_price must be (input, output) USD per million tokens, both >= 0, got "
                                 f"{default_price!r}")
            default_price = (float(default_price[0]), float(default_price[1]))
        self.default_price = default_price
        self._warned_unpriced: set[str] = set()
        self.budgets = list(budgets)
        self.reservation_ttl = reservation_ttl
        self.pricing = pricing if pricing is not None else PRICING
        self._spent: dict[str, float] = {}
        self._reserved: dict[str, float] = {}
        self._lock = threading.Lock()
        self._redis: Any = None
        self._keys = [f"{namespace}:cost:spent", f"{namespace}:cost:reserved", f"{namespace}:cost:holds",
                      f"{namespace}:cost:hold"]
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            self._reserve_script = self._redis.register_script(_RESERVE)
            self._settle_script = self._redis.register_script(_SETTLE)
            self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

    # -- pricing ----------------------------------------------------------------------------------------------
    def price(self, model: str, lm: Any = None) -> tuple[float, float] | None:
        """``(input, output)`` USD per million tokens for ``model``: the LM's own price when it has one
        (``NativeLM(pricing=...)``), else the tracker's table; None when unknown."""
        own = _own_price(getattr(lm, "pricing", None)) if lm is not None else None
        return own if own is not None else self.pricing.price(model)

    def cost(self, model: str, usage: Mapping[str, Any] | None, reported: float | None = None,
             lm: Any = None) -> float:
        """USD for one call's ``usage`` (0 for a cache hit's empty usage) at :meth:`price`; ``reported`` (the
        LM's own figure) if the model has no price."""
        if not usage:
            return 0.0
        prompt = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        completion = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
        price = self.price(model, lm) if lm is not None else self.pricing.price(model)
        if price is None and reported is None:
            price = self.default_price
        if price is not None:
            return (prompt * price[0] + completion * price[1]) / 1e6
        return float(reported or 0.0)

    def estimate(self, call: LMCall, model: str | None = None) -> float:
        """Worst-case USD for ``call`` (on ``model``, default ``call.model``) before it runs (0 when the model has
        no price)."""
        own = getattr(call.lm, "pricing", None)  # self.price(), inlined: this runs before every budgeted call
        price = _own_price(own) if own is not None else None
        if price is None:
            model = model if model is not None else call.model
            price = self.pricing.looked_up.get(model, _UNKNOWN)
            if price is _UNKNOWN:
                price = self.pricing.price(model)
        if price is None:
            price = self.default_price
            if price is None:
                self._unpriced(model if model is not None else call.model)
                return 0.0
        text = call.messages if call.messages is not None else call.prompt
        try:
            chars = len(orjson.dumps(text, default=str))
        except TypeError:
            chars = len(str(text))
        prompt_tokens = chars // 3 + 1  # ~4 chars per token in English; 3 keeps the estimate on the high side
        lm_kwargs = getattr(call.lm, "kwargs", {}) or {}
        max_tokens = (call.kwargs.get("max_tokens") or call.kwargs.get("max_completion_tokens")
                      or lm_kwargs.get("max_tokens") or lm_kwargs.get("max_completion_tokens") or DEFAULT_MAX_TOKENS)
        n = int(call.kwargs.get("n") or lm_kwargs.get("n") or 1)
        return (prompt_tokens * price[0] + int(max_tokens) * n * price[1]) / 1e6

    def _unpriced(self, model: str) -> None:
        if model not in self._warned_unpriced and len(self._warned_unpriced) < 1000:
            self._warned_unpriced.add(model)
            logger.warning(
                "budgets cannot bound calls to %s ahead: it has no price, so nothing is reserved for them and "
                "concurrent calls can overshoot a limit; price it (PRICING.set(...) or [production.pricing]) or "
                "give the tracker a default_price", model)

    # -- scopes -----------------------------------------------------------------------------------------------
    @staticmethod
    def scopes(model: str, now: datetime.datetime | None = None) -> dict[Dimension, str]:
        """The scope field of each dimension for a call on ``model`` now (``"user=alice"``, ...)."""
        who = ATTRIBUTION.get()
        if now is not None:
            day = now.date().isoformat()
        elif _day_cache[0] == int(time.time() // 86400):  # inline: this runs on every call
            day = _day_cache[1]
        else:
            day = _utc_day()
        key = (model, day, who.get("run"), who.get("user"))
        found = _scopes_memo.get(key)
        if found is None:
            found = {"total": "total", "model": f"model={model}", "day": f"day={day}"}
            if key[2] is not None:
                found["run"] = f"run={key[2]}"
            if key[3] is not None:
                found["user"] = f"user={key[3]}"
            if len(_scopes_memo) > 4096:
                _scopes_memo.clear()
            _scopes_memo[key] = found
        return found

    # -- the protocol -----------------------------------------------------------------------------------------
    def reserve(self, call: LMCall, *, model: str | None = None) -> Reservation:
        """Hold ``call``'s worst case against every applicable budget, or raise :class:`BudgetExceededError`.
        ``model``: the model the call goes to (default ``call.model``)."""
        if model is None:
            model = call.model
        who = ATTRIBUTION.get()  # self.scopes(model), inlined for the memoised case: this runs before every call
        number = int(time.time() // 86400)
        scopes = (_scopes_memo.get((model, _day_cache[1], who.get("run"), who.get("user")))
                  if _day_cache[0] == number else None)
        if scopes is None:
            scopes = self.scopes(model)
        fields = list(scopes.values())  # a copy: the memoised mapping is shared
        if not self.budgets:  # nothing to check: totals are kept when the call settles
            return Reservation(fields, 0.0, self._redis is not None)
        applicable = []
        for b in self.budgets:
            if b.per in scopes:
                applicable.append((b, scopes[b.per]))
        estimate = self.estimate(call, model) if applicable else 0.0
        if self._redis is not None:
            hold = uuid.uuid4().hex
            args: list[Any] = [estimate, hold, int(self.reservation_ttl * 1000)]
            for field in fields:
                limits = [b.limit_usd for b, scope in applicable if scope == field]
                args += [field, min(limits) if limits else -1]
            try:
                refused = self._reserve_script(keys=self._keys, args=args)
            except self._redis_errors as exc:  # Redis down: this process's own totals keep budgets enforced
                logger.warning("cost totals in redis unavailable (%s); reserving locally", exc)
            else:
                if refused != 0:
                    field, spent = refused[0].decode(), float(refused[1])
                    budget = min((b for b, scope in applicable if scope == field), key=lambda b: b.limit_usd)
                    raise budget.refuse(field, spent, estimate)
                return Reservation(fields, estimate, True, hold if estimate > 0 else None)
        with self._lock:
            for budget, scope in applicable:
                spent = self._spent.get(scope, 0.0) + self._reserved.get(scope, 0.0)
                if spent + estimate > budget.limit_usd:
                    break
            else:
                for field in fields:
                    self._reserved[field] = self._reserved.get(field, 0.0) + estimate
                return Reservation(fields, estimate)
        raise budget.refuse(scope, spent, estimate)  # outside the lock: on_refuse may read the tracker

    def settle(self, reservation: Reservation, cost: float) -> None:
        """Replace ``reservation`` by the call's real ``cost`` (0 if it failed or was a cache hit)."""
        if reservation.shared and self._redis is not None:
            try:
                self._settle_script(keys=self._keys, args=[reservation.hold or "", reservation.estimate, cost,
                                                           *reservation.fields])
                return
            except self._redis_errors as exc:
                logger.warning("cost totals in redis unavailable (%s); %.6f USD counted locally", exc, cost)
        held = 0.0 if reservation.shared else reservation.estimate  # a shared hold is Redis's to give back
        with self._lock:
            for field in reservation.fields:
                if held:
                    self._reserved[field] = self._reserved.get(field, 0.0) - held
                if cost:
                    self._spent[field] = self._spent.get(field, 0.0) + cost

    def settle_call(self, reservation: Reservation | None, model: str, usage: Mapping[str, Any] | None,
                    reported: float | None = None, lm: Any = None, source: str | None = None) -> float:
        """Price one finished call (:meth:`cost`), count it and release its reservation (:meth:`settle`); the
        cost. ``usage`` is None or empty for a cache hit or a failed call (cost 0).

        ``source`` says where ``reported`` comes from (:attr:`~dspyo3_core.call.LMCall.cost_source`): a figure
        the LM priced from the LM's own price (``"lm"``) or from the table this tracker prices from
        (``"pricing"``, when the tracker uses the process-wide table) is taken as is, not worked out again."""
        if usage and reported is not None and (source == "lm" or (source == "pricing" and self.pricing is PRICING)):
            cost = reported
        elif usage:  # self.cost(), inlined: this runs after every call
            prompt = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
            completion = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
            own = getattr(lm, "pricing", None)
            price = _own_price(own) if own is not None else None
            if price is None:
                price = self.pricing.looked_up.get(model, _UNKNOWN)
                if price is _UNKNOWN:
                    price = self.pricing.price(model)
            if price is None and reported is None:
                price = self.default_price
            cost = ((prompt * price[0] + completion * price[1]) / 1e6 if price is not None
                    else float(reported or 0.0))
        else:
            cost = 0.0
        if reservation is None:
            if not cost:
                return 0.0
            reservation = Reservation(list(self.scopes(model).values()), 0.0, self._redis is not None)
        if reservation.shared or reservation.estimate or cost:
            self.settle(reservation, cost)
        return cost

    # -- reading ----------------------------------------------------------------------------------------------
    def spent(self) -> dict[str, float]:
        """USD spent per scope field (``"total"``, ``"model=..."``, ``"user=..."``, ``"run=..."``, ``"day=..."``)."""
        client = self._redis  # read once: close() may clear it meanwhile
        if client is not None:
            raw = client.hgetall(self._keys[0])
            return {k.decode(): float(v) for k, v in raw.items()}
        with self._lock:
            return dict(self._spent)

    def totals(self, per: Dimension) -> dict[str, float]:
        """USD spent by each run / user / model / day (or ``{"total": x}``)."""
        if per not in DIMENSIONS:
            raise ValueError(f"per={per!r}: choose one of {', '.join(DIMENSIONS)}")
        if per == "total":
            return {"total": self.spent().get("total", 0.0)}
        prefix = per + "="
        return {k[len(prefix):]: v for k, v in self.spent().items() if k.startswith(prefix)}

    def close(self) -> None:
        """Close the Redis connections; totals and budgets go on in this process only (a reservation still held
        in Redis is settled here, and Redis gives it back after ``reservation_ttl``)."""
        client, self._redis = self._redis, None
        if client is not None:
            client.close()

    def reset(self) -> None:
        """Forget all totals and reservations (in Redis too)."""
        with self._lock:
            self._spent.clear()
            self._reserved.clear()
        client = self._redis
        if client is not None:
            client.delete(*self._keys)
