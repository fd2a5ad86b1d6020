"""Per-call cost, totals per run / user / model / day, and budgets that refuse a call before it overspends.

Cost of a call = its billed tokens times the model's price: :data:`dspyo3_core.native_lm.PRICING` (LiteLLM's
bundled price map, overridable with ``PRICING.set(model, input_per_mtok=..., output_per_mtok=...)`` or
``CostTracker(pricing=...)``); when the model has no price there, the cost the LM itself reported. Cache hits cost
nothing.

Budgets are checked *before* a call: the tracker reserves the call's worst case (prompt tokens estimated from its
text, completion tokens = ``max_tokens``) against every budget that applies, and raises
:class:`BudgetExceededError` if any would go over; after the call the reservation is replaced by the real cost.
With ``redis_url`` the totals and reservations live in Redis (one Lua script checks and reserves atomically), so
budgets hold across processes and restarts.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from dspyo3_core.lm import LMCall
from dspyo3_core.native_lm import PRICING, PricingTable

logger = logging.getLogger("dspyo3.production.cost")

Dimension = Literal["total", "run", "user", "model", "day"]
DIMENSIONS: tuple[Dimension, ...] = ("total", "run", "user", "model", "day")
_NOBODY: Mapping[str, str] = {}
_CONTEXT: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("dspyo3_cost_context", default=_NOBODY)
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


@contextmanager
def attribute(*, run: str | None = None, user: str | None = None) -> Iterator[None]:
    """Charge LM calls made inside this block to ``run`` and/or ``user`` (nested blocks override)."""
    current = dict(_CONTEXT.get())
    if run is not None:
        current["run"] = run
    if user is not None:
        current["user"] = user
    token = _CONTEXT.set(current)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def attribution() -> Mapping[str, str]:
    """The run/user the current context charges to."""
    return _CONTEXT.get()


@dataclass(frozen=True)
class Budget:
    """A spending limit in USD.

    Attributes:
        limit_usd: the most that may be spent.
        per: what the limit applies to: ``"total"`` (everything), or each ``"run"``, ``"user"``, ``"model"`` or
            UTC ``"day"`` separately. Calls with no run (user) are not limited by a per-run (per-user) budget.
        name: label for errors and metrics (default ``"<per>:<limit>"``).
    """

    limit_usd: float
    per: Dimension = "total"
    name: str | None = None

    def __post_init__(self) -> None:
        if self.per not in DIMENSIONS:
            raise ValueError(f"Budget per={self.per!r}: choose one of {', '.join(DIMENSIONS)}")
        if not self.limit_usd >= 0:
            raise ValueError(f"Budget limit_usd must be >= 0, got {self.limit_usd!r}")

    @property
    def label(self) -> str:
        """Name used in errors and the ``budget`` metric label."""
        return self.name or f"{self.per}:{self.limit_usd:g}"


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
    """What :meth:`CostTracker.reserve` held for one call (settled by :meth:`CostTracker.settle`)."""

    fields: list[str]
    estimate: float
    shared: bool = False


_RESERVE = """
local estimate = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local field = ARGV[i]
  local limit = tonumber(ARGV[i + 1])
  if limit >= 0 then
    local spent = tonumber(redis.call('HGET', KEYS[1], field) or '0')
    spent = spent + tonumber(redis.call('HGET', KEYS[2], field) or '0')
    if spent + estimate > limit then return {field, tostring(spent)} end
  end
end
for i = 2, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], estimate) end
return 0
"""


class CostTracker:
    """Prices calls, keeps totals per dimension and enforces budgets.

    Args:
        budgets: limits checked before every call.
        pricing: price table (default: the process-wide :data:`~dspyo3_core.native_lm.PRICING`).
        redis_url: keep totals and reservations in Redis (shared by processes, kept across restarts).
        namespace: Redis key prefix.
    """

    def __init__(self, budgets: Iterable[Budget] = (), *, pricing: PricingTable | None = None,
                 redis_url: str | None = None, namespace: str = "dspyo3") -> None:
        self.budgets = list(budgets)
        self.pricing = pricing if pricing is not None else PRICING
        self._spent: dict[str, float] = {}
        self._reserved: dict[str, float] = {}
        self._lock = threading.Lock()
        self._redis: Any = None
        self._keys = [f"{namespace}:cost:spent", f"{namespace}:cost:reserved"]
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            self._reserve_script = self._redis.register_script(_RESERVE)
            self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

    # -- pricing ----------------------------------------------------------------------------------------------
    def cost(self, model: str, usage: Mapping[str, Any] | None, reported: float | None = None) -> float:
        """USD for one call's ``usage`` (0 for a cache hit's empty usage); ``reported`` if the model has no price."""
        if not usage:
            return 0.0
        prompt = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        completion = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
        priced = self.pricing.cost(model, prompt, completion)
        if priced is not None:
            return priced
        return float(reported or 0.0)

    def estimate(self, call: LMCall) -> float:
        """Worst-case USD for ``call`` before it runs (0 when the model has no price)."""
        price = self.pricing.price(call.model)
        if price is None:
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

    # -- scopes -----------------------------------------------------------------------------------------------
    @staticmethod
    def scopes(model: str, now: datetime.datetime | None = None) -> dict[Dimension, str]:
        """The scope field of each dimension for a call on ``model`` now (``"user=alice"``, ...)."""
        who = _CONTEXT.get()
        day = now.date().isoformat() if now is not None else _utc_day()
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
    def reserve(self, call: LMCall) -> Reservation:
        """Hold ``call``'s worst case against every applicable budget, or raise :class:`BudgetExceededError`."""
        scopes = self.scopes(call.model)
        fields = list(scopes.values())  # a copy: the memoised mapping is shared
        if not self.budgets:  # nothing to check: totals are kept when the call settles
            return Reservation(fields, 0.0, shared=self._redis is not None)
        applicable = [(b, scopes[b.per]) for b in self.budgets if b.per in scopes]
        estimate = self.estimate(call) if applicable else 0.0
        if self._redis is not None:
            args: list[Any] = [estimate]
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
                    raise BudgetExceededError(budget, field, spent, estimate)
                return Reservation(fields, estimate, shared=True)
        with self._lock:
            for budget, scope in applicable:
                spent = self._spent.get(scope, 0.0) + self._reserved.get(scope, 0.0)
                if spent + estimate > budget.limit_usd:
                    raise BudgetExceededError(budget, scope, spent, estimate)
            for field in fields:
                self._reserved[field] = self._reserved.get(field, 0.0) + estimate
        return Reservation(fields, estimate)

    def settle(self, reservation: Reservation, cost: float) -> None:
        """Replace ``reservation`` by the call's real ``cost`` (0 if it failed or was a cache hit)."""
        if reservation.shared and self._redis is not None:
            pipe = self._redis.pipeline(transaction=True)
            for field in reservation.fields:
                if reservation.estimate:
                    pipe.hincrbyfloat(self._keys[1], field, -reservation.estimate)
                if cost:
                    pipe.hincrbyfloat(self._keys[0], field, cost)
            try:
                pipe.execute()
                return
            except self._redis_errors as exc:
                logger.warning("cost totals in redis unavailable (%s); %.6f USD counted locally", exc, cost)
                reservation = Reservation(reservation.fields, 0.0)
        with self._lock:
            for field in reservation.fields:
                if reservation.estimate:
                    self._reserved[field] = self._reserved.get(field, 0.0) - reservation.estimate
                if cost:
                    self._spent[field] = self._spent.get(field, 0.0) + cost

    # -- reading ----------------------------------------------------------------------------------------------
    def spent(self) -> dict[str, float]:
        """USD spent per scope field (``"total"``, ``"model=..."``, ``"user=..."``, ``"run=..."``, ``"day=..."``)."""
        if self._redis is not None:
            raw = self._redis.hgetall(self._keys[0])
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

    def reset(self) -> None:
        """Forget all totals and reservations (in Redis too)."""
        with self._lock:
            self._spent.clear()
            self._reserved.clear()
        if self._redis is not None:
            self._redis.delete(*self._keys)
