"""The production stack: one object that holds the cache, metrics, logs, breaker and cost tracker, and the code
the plugin's ``dspyo3_lm_call`` wrapper runs around every LM call.

    import dspyo3_production as prod
    prod.enable()                                   # from [production] in dspyo3.toml (see the README)
    prod.enable(prod.Production(cache=prod.TieredCache(redis_url=...), budgets=[prod.Budget(5.0, per="day")]))

Per call, in order: a circuit-breaker check (an open circuit refuses the call, or swaps in the fallback LM),
a budget reservation (refuses with :class:`~dspyo3_production.cost.BudgetExceededError` before any request), a
single-flight scope on the tiered cache, the call itself (the rest of the hook chain), then the breaker, cost,
metrics and one ``lm_call`` log event. Module, tool and retrieval calls are seen through a DSPy callback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Iterable, Mapping
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback

from dspyo3_core.lm import LMCall
from dspyo3_production import logs
from dspyo3_production.breaker import CircuitBreaker, CircuitOpenError
from dspyo3_production.cache import _SCOPE, TieredCache, _Scope, install_cache
from dspyo3_production.cost import _CONTEXT as _ATTRIBUTION
from dspyo3_production.cost import Budget, BudgetExceededError, CostTracker
from dspyo3_production.metrics import CIRCUIT_STATES, Metrics, default_metrics
from dspyo3_production.routing import _ARM

logger = logging.getLogger("dspyo3.production")


class ProductionCallback(BaseCallback):  # type: ignore[misc]
    """DSPy callback: metrics and ``module_call`` / ``tool_call`` events for modules, retrievers and tools, and a
    trace id opened by the outermost module call. LM calls are measured by the LM-call wrapper instead, so this
    callback declines LM events (``dspyo3_lm_events = False``) and LM calls skip DSPy's callback dispatch."""

    dspyo3_lm_events = False

    def __init__(self, metrics: Metrics | None, log_events: bool) -> None:
        self.metrics = metrics
        self.log_events = log_events
        self._open: dict[str, tuple[float, str, str, Any]] = {}

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        kind = "retrieval" if isinstance(instance, dspy.Retrieve) else "module"
        self._open[call_id] = (time.perf_counter(), kind, type(instance).__name__, logs.open_trace())

    def _ended(self, call_id: str, exception: Exception | None) -> tuple[str, str, Any, float, str] | None:
        """``(kind, name, trace token, seconds, status)`` of the call ``call_id`` started, or None if unknown."""
        started, kind, name, token = self._open.pop(call_id, (None, "", "", None))
        if started is None:
            return None
        return kind, name, token, time.perf_counter() - started, "ok" if exception is None else type(exception).__name__

    def on_module_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        ended = self._ended(call_id, exception)
        if ended is None:
            return
        kind, name, token, seconds, status = ended
        m = self.metrics
        if m is not None:
            if kind == "retrieval":
                m.child(m.retrieval_requests, name, status).inc()
                m.child(m.retrieval_duration, name).observe(seconds)
                passages = getattr(outputs, "passages", None)
                if passages:
                    m.child(m.retrieval_passages, name).inc(len(passages))
            else:
                m.child(m.module_calls, name, status).inc()
                m.child(m.module_duration, name).observe(seconds)
        if self.log_events:
            logs.event("retrieval_call" if kind == "retrieval" else "module_call", module=name, status=status,
                       duration_ms=round(seconds * 1000, 3))
        logs.close_trace(token)

    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._open[call_id] = (time.perf_counter(), "tool", str(getattr(instance, "name", type(instance).__name__)),
                               None)

    def on_tool_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        ended = self._ended(call_id, exception)
        if ended is None:
            return
        _kind, name, _token, seconds, status = ended
        if self.metrics is not None:
            self.metrics.child(self.metrics.tool_calls, name, status).inc()
            self.metrics.child(self.metrics.tool_duration, name).observe(seconds)
        if self.log_events:
            logs.event("tool_call", tool=name, status=status, duration_ms=round(seconds * 1000, 3))


class Production:
    """The production features around LM calls; each is optional.

    Args:
        cache: a :class:`TieredCache` to install as ``dspy.cache`` (None: leave DSPy's cache alone).
        metrics: a :class:`Metrics` (True: the process-wide one; False: none).
        log_events: emit one JSON ``lm_call`` / ``module_call`` event per call on ``dspyo3.events`` (see
            :func:`dspyo3_production.logs.configure_logging` for the output).
        breaker: a :class:`CircuitBreaker` (keyed by model).
        fallback: the LM to use while a model's circuit is open: an LM object or an LM profile name.
        budgets: limits checked before every call (creates a :class:`CostTracker` if ``costs`` is not given).
        costs: a :class:`CostTracker` (prices calls and keeps totals; budgets live on it).
        single_flight: concurrent identical calls wait for one provider request (needs the tiered cache).
        module_callbacks: add the DSPy callback that measures modules, tools and retrieval.
    """

    def __init__(self, *, cache: TieredCache | None = None, metrics: Metrics | bool = True,
                 log_events: bool = True, breaker: CircuitBreaker | None = None,
                 fallback: dspy.BaseLM | str | None = None, budgets: Iterable[Budget] = (),
                 costs: CostTracker | None = None, single_flight: bool = True,
                 module_callbacks: bool = True) -> None:
        self.cache = cache
        self.metrics: Metrics | None = (default_metrics() if metrics is True else metrics) or None
        self.log_events = log_events
        self.breaker = breaker
        self._fallback = fallback
        self._fallback_lm: dspy.BaseLM | None = fallback if isinstance(fallback, dspy.BaseLM) else None
        budgets = list(budgets)
        if costs is None and (budgets or self.metrics is not None):
            costs = CostTracker(budgets)
        elif costs is not None and budgets:
            costs.budgets.extend(budgets)
        self.costs = costs
        self.single_flight = single_flight
        self.callback = ProductionCallback(self.metrics, log_events) if module_callbacks else None
        self._previous_cache: Any = None
        if breaker is not None and self.metrics is not None and breaker.on_change is None:
            metrics_ = self.metrics

            def on_change(key: str, state: str) -> None:
                metrics_.child(metrics_.circuit_state, key).set(CIRCUIT_STATES[state])
                metrics_.child(metrics_.circuit_transitions, key, state).inc()
                if log_events:
                    logs.event("circuit_" + state, level=logging.WARNING, model=key)

            breaker.on_change = on_change

    # -- fallback ---------------------------------------------------------------------------------------------
    def fallback_lm(self) -> dspy.BaseLM | None:
        """The fallback LM (a profile is built on first use)."""
        if self._fallback_lm is None and isinstance(self._fallback, str):
            from dspyo3_core.config import build_lm, load_settings

            self._fallback_lm = build_lm(load_settings().profile(self._fallback))
        return self._fallback_lm

    # -- the wrapper ------------------------------------------------------------------------------------------
    def _finish(self, call: LMCall, model: str, status: str, started: float, usage: Mapping[str, Any] | None,
                cost: float | None, exc: BaseException | None, fallback_from: str | None = None) -> None:
        seconds = time.perf_counter() - started
        prompt = completion = 0
        if usage:
            prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
            completion = usage.get("completion_tokens") or usage.get("output_tokens") or 0
        metrics = self.metrics
        if metrics is not None:
            if metrics._lm is not None:  # the collector (outside multi-process mode): one call, one lock
                metrics._lm.record(model, status, seconds, prompt, completion, cost or 0.0)
            else:
                metrics.observe_lm(model, status, seconds, dict(usage) if usage else None, cost)
        level = logging.WARNING if exc is not None else logging.INFO
        if self.log_events and logs.EVENTS.isEnabledFor(level):
            fields: dict[str, Any] = {"model": model, "status": status, "duration_ms": round(seconds * 1000, 3)}
            if usage:
                fields["prompt_tokens"] = prompt
                fields["completion_tokens"] = completion
            if cost:
                fields["cost_usd"] = cost
            if call.cache_hit:
                fields["cache"] = call.cache_tier or "hit"
            if fallback_from:
                fields["fallback_from"] = fallback_from
            arm = _ARM.get()
            if arm is not None:
                fields["experiment"], fields["arm"] = arm
            who = _ATTRIBUTION.get()
            if who:
                fields.update(who)
            if exc is not None:
                key = (getattr(call.lm, "kwargs", None) or {}).get("api_key")
                fields["error"] = logs.redact(str(exc), key if isinstance(key, str) else None)[:500]
            logs.emit("lm_call", level, fields, scalars=True)

    # -- installation -----------------------------------------------------------------------------------------
    def install(self) -> Production:
        """Make this the active stack: the cache becomes ``dspy.cache`` and the DSPy callback is added."""
        global _active
        with _lock:
            if _active is not None and _active is not self:
                _active.uninstall()
            if self.cache is not None and dspy.cache is not self.cache:
                self._previous_cache = install_cache(self.cache)
            if self.callback is not None:
                callbacks = dspy.settings.get("callbacks")
                if isinstance(callbacks, list):  # DSPy's global list: extend it in place (any thread may)
                    if self.callback not in callbacks:
                        callbacks.append(self.callback)
                else:
                    dspy.configure(callbacks=[*(callbacks or []), self.callback])
            _active = self
        return self

    def close(self) -> None:
        """Release what the stack holds open: the cache's Redis tier (queued writes are flushed first) and the
        Redis connections of the breaker and the cost tracker. Uninstall it first (:func:`disable` does both)."""
        if self.cache is not None:
            self.cache.close()
        if self.breaker is not None:
            self.breaker.close()
        if self.costs is not None:
            self.costs.close()

    def uninstall(self) -> None:
        """Undo :meth:`install` (restores the cache it replaced, removes the callback)."""
        global _active
        if self._previous_cache is not None and dspy.cache is self.cache:
            install_cache(self._previous_cache)
            self._previous_cache = None
        if self.callback is not None:
            callbacks = dspy.settings.get("callbacks")
            if isinstance(callbacks, list) and self.callback in callbacks:
                callbacks.remove(self.callback)
        if _active is self:
            _active = None


_active: Production | None = None
_lock = threading.RLock()
_loaded_from_settings = False


def active() -> Production | None:
    """The stack the LM-call wrapper uses: the one :func:`enable` installed, else one built once from the
    ``[production]`` config table (None when there is none)."""
    global _loaded_from_settings
    if _active is not None or _loaded_from_settings:
        return _active
    with _lock:
        if not _loaded_from_settings:
            if _active is None:
                from dspyo3_production.settings import from_settings

                stack = from_settings()  # a ConfigError propagates, on this call and the next ones
                if stack is not None:
                    stack.install()
            _loaded_from_settings = True
    return _active


def enable(stack: Production | None = None) -> Production:
    """Install ``stack`` (default: the one the ``[production]`` config describes, or metrics + logs only)."""
    global _loaded_from_settings
    if stack is None:
        from dspyo3_production.settings import from_settings

        stack = from_settings() or Production()
    _loaded_from_settings = True
    return stack.install()


def disable(close: bool = False) -> None:
    """Uninstall the active stack (LM calls pass straight through again); ``close=True`` also releases its Redis
    connections (:meth:`Production.close`), for a stack that will not be installed again."""
    global _loaded_from_settings
    with _lock:
        stack = _active
        if stack is not None:
            stack.uninstall()
        _loaded_from_settings = True
    if close and stack is not None:
        stack.close()


def lm_call_wrapper(call: LMCall) -> Generator[None, Any, Any]:
    """The production plugin's ``dspyo3_lm_call`` wrapper: runs the active stack (:func:`active`) around the call
    (``outputs = yield`` runs it), or passes the call through when there is none.

    This runs on every LM call, so the common cases of the breaker (a closed local circuit) and of the cache's
    single-flight scope are inlined here; everything else goes through their methods."""
    production = _active
    if production is None:
        production = active()  # first call: maybe build the stack from the [production] config
        if production is None:
            return (yield)
    started = time.perf_counter()
    model = call.model
    fallback_from: str | None = None
    breaker = production.breaker
    try:
        if breaker is not None:
            local = breaker._local.get(model) if breaker._redis is None else None
            if local is None or local.state != "closed":
                try:
                    breaker.before(model)
                except CircuitOpenError:
                    fallback = production.fallback_lm()
                    if fallback is None or fallback.model == model:
                        raise
                    fallback_from, call.lm, model = model, fallback, str(fallback.model)
                    if production.metrics is not None:
                        production.metrics.child(production.metrics.fallbacks, fallback_from, model).inc()
                    breaker.before(model)
        reservation = production.costs.reserve(call, model=model) if production.costs is not None else None
    except (CircuitOpenError, BudgetExceededError) as exc:
        status = "circuit_open" if isinstance(exc, CircuitOpenError) else "budget_exceeded"
        if isinstance(exc, BudgetExceededError):
            if breaker is not None:
                breaker.release(model)  # the call never went out: it says nothing about the provider
            if production.metrics is not None:
                production.metrics.child(production.metrics.budget_rejections, exc.budget.label).inc()
        production._finish(call, model, status, started, None, None, exc)
        raise
    cache = production.cache
    scope = token = None
    if cache is not None and production.single_flight and cache is dspy.cache:
        scope = _Scope()
        token = _SCOPE.set(scope)  # cache.open_scope(), inlined
    try:
        outputs = yield
    except BaseException as exc:
        if breaker is not None:
            breaker.failure(model, exc)
        if reservation is not None and production.costs is not None:
            production.costs.settle(reservation, 0.0)
        production._finish(call, model, type(exc).__name__, started, None, None, exc, fallback_from)
        raise
    finally:
        if token is not None:
            _SCOPE.reset(token)
            if scope.led:  # type: ignore[union-attr]
                cache.release_keys(scope.led)  # type: ignore[union-attr]
    if breaker is not None:
        local = breaker._local.get(model) if breaker._redis is None else None
        if local is None or local.state != "closed" or local.failures:
            breaker.success(model)
    usage = None if call.cache_hit else call.usage
    costs = production.costs
    cost = costs.settle_call(reservation, model, usage, call.cost, call.lm) if costs is not None else 0.0
    production._finish(call, model, "cache_hit" if call.cache_hit else "ok", started, usage, cost, None,
                 fallback_from)
    return outputs


lm_call_wrapper.dspyo3_active = lambda: active() is not None  # type: ignore[attr-defined]
