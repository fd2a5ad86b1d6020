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

import time
from collections.abc import Awaitable, Generator
from typing import Any

import dspy

from dspyo3_core import spans
from dspyo3_core.lm import LMCall
from dspyo3_production.breaker import CircuitOpenError
from dspyo3_production.cost import BudgetExceededError
from dspyo3_production.pipeline import INSTALL_LOCK as _lock
from dspyo3_production.pipeline import Production, ProductionCallback, installed, logger
from dspyo3_production.settings import from_settings

# re-exported: where they have always been importable from
__all__ = ["Production", "ProductionCallback", "active", "disable", "enable", "lm_call_wrapper", "logger"]


_loaded_from_settings = False


def active() -> Production | None:
    """The stack the LM-call wrapper uses: the one :func:`enable` installed, else one built once from the
    ``[production]`` config table (None when there is none)."""
    global _loaded_from_settings
    stack = installed()
    if stack is not None or _loaded_from_settings:
        return stack
    with _lock:
        if not _loaded_from_settings:
            if installed() is None:
                stack = from_settings()  # a ConfigError propagates, on this call and the next ones
                if stack is not None:
                    stack.install()
            _loaded_from_settings = True
    return installed()


def enable(stack: Production | None = None) -> Production:
    """Install ``stack`` (default: the one the ``[production]`` config describes, or metrics + logs only)."""
    global _loaded_from_settings
    if stack is None:
        stack = from_settings() or Production()
    _loaded_from_settings = True
    return stack.install()


def disable(close: bool = False) -> None:
    """Uninstall the active stack (LM calls pass straight through again); ``close=True`` also releases its Redis
    connections (:meth:`Production.close`), for a stack that will not be installed again."""
    global _loaded_from_settings
    with _lock:
        stack = installed()
        if stack is not None:
            stack.uninstall()
        _loaded_from_settings = True
    if close and stack is not None:
        stack.close()


def lm_call_wrapper(call: LMCall) -> Generator[None, Any, Any]:
    """The production plugin's ``dspyo3_lm_call`` wrapper: runs the active stack (:func:`active`) around the call
    (``outputs = yield`` runs it), or passes the call through when there is none.

    A deferred call (:attr:`~dspyo3_core.call.LMCall.deferred`: an async call whose hook chain runs on the event
    loop) gets back an awaitable that settles the breaker, the cost and the metrics once the call is done; so the
    wrapper is async-aware (``dspyo3_async_aware``) and async calls never need a worker thread."""
    production = installed()
    if production is None:
        production = active()  # first call: maybe build the stack from the [production] config
        if production is None:
            return (yield)
    started = time.perf_counter()
    model = call.model
    fallback_from: str | None = None
    breaker = production.breaker
    tracer = production.tracer
    span = None
    if tracer is not None:  # the LM span: current until the call is settled (its lm_call event names it)
        # "{gen_ai.operation.name} {gen_ai.request.model}" (GenAI semantic conventions)
        # a prompt string to a chat model is a chat request (DSPy sends it as one user message)
        span = tracer.start(f"{'text_completion' if getattr(call.lm, 'model_type', 'chat') == 'text' else 'chat'} "
                            f"{model.partition('/')[2] or model}", spans.CLIENT)
    try:
        if breaker is not None:
            local = breaker.local_circuit(model)
            if local is None or local.state != "closed":
                checked = time.time_ns() if tracer is not None else 0
                try:
                    breaker.before(model)
                except CircuitOpenError as exc:
                    fallback = production.fallback_lm()
                    if fallback is None or fallback.model == model:
                        if tracer is not None:
                            _breaker_span(tracer, checked, model, exc, local)
                        raise
                    if tracer is not None:
                        _breaker_span(tracer, checked, model, exc, local)
                        span.event("fallback", {"from": model, "to": str(fallback.model)})  # type: ignore[union-attr]
                    fallback_from, call.lm, model = model, fallback, str(fallback.model)
                    if production.metrics is not None:
                        production.metrics.child(production.metrics.fallbacks, fallback_from, model).inc()
                    breaker.before(model)
                else:
                    if tracer is not None and local is not None:  # a trial call through a half-open circuit
                        _breaker_span(tracer, checked, model, None, local)
        reserving = time.time_ns() if tracer is not None else 0
        try:
            reservation = production.costs.reserve(call, model=model) if production.costs is not None else None
        except BudgetExceededError as exc:
            if tracer is not None:
                tracer.record("dspyo3.budget.refused", reserving, time.time_ns(), {
                    "dspyo3.budget.label": exc.budget.label, "dspyo3.budget.spent_usd": float(exc.spent_usd),
                    "dspyo3.budget.estimate_usd": float(exc.estimate_usd)}, error=exc)
            raise
    except (CircuitOpenError, BudgetExceededError) as exc:
        status = "circuit_open" if isinstance(exc, CircuitOpenError) else "budget_exceeded"
        if isinstance(exc, BudgetExceededError):
            if breaker is not None:
                breaker.release(model)  # the call never went out: it says nothing about the provider
            if production.metrics is not None:
                production.metrics.child(production.metrics.budget_rejections, exc.budget.label).inc()
        production.record_call(call, model, status, started, None, None, exc, span=span)
        if span is not None:
            span.end()
        raise
    except BaseException as exc:
        if span is not None:
            span.fail(exc)
            span.end()
        raise
    cache = production.cache
    token = None
    if cache is not None and production.single_flight and cache is dspy.cache:
        token = cache.open_scope()
    if call.deferred:  # an async call on the event loop: the chain hands back an awaitable of the outputs
        try:
            pending = yield
        except BaseException as exc:
            if token is not None:
                cache.close_scope(token)  # type: ignore[union-attr]
            _failed(production, call, model, started, reservation, fallback_from, exc, span)
            raise
        return _settle_deferred(production, call, model, started, reservation, fallback_from, pending, token, span)
    try:
        outputs = yield
    except BaseException as exc:
        _failed(production, call, model, started, reservation, fallback_from, exc, span)
        raise
    finally:
        if token is not None:
            cache.close_scope(token)  # type: ignore[union-attr]
    _succeeded(production, call, model, started, reservation, fallback_from, span, outputs)
    return outputs


def _breaker_span(tracer: spans.Tracer, start_ns: int, model: str, exc: CircuitOpenError | None,
                  local: Any) -> None:
    """A ``dspyo3.breaker.check`` span for a call that met a circuit that was not closed (ERROR: refused)."""
    state = getattr(local, "state", None)
    attrs: dict[str, spans.AttrValue] = {
        "dspyo3.breaker.model": model,
        "dspyo3.breaker.state": state if isinstance(state, str) else ("open" if exc is not None else "unknown")}
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, (int, float)):
        attrs["dspyo3.breaker.retry_after_s"] = float(retry_after)
    tracer.record("dspyo3.breaker.check", start_ns, time.time_ns(), attrs, error=exc)


async def _settle_deferred(production: Production, call: LMCall, model: str, started: float, reservation: Any,
                           fallback_from: str | None, pending: Awaitable[Any], token: Any, span: Any = None) -> Any:
    """The part of :func:`lm_call_wrapper` after the call, for a deferred call: awaits ``pending`` (in the
    caller's task, so the cache scope ``token`` opened is still the current one) and settles it."""
    try:
        outputs = await pending
    except BaseException as exc:
        _failed(production, call, model, started, reservation, fallback_from, exc, span)
        raise
    finally:
        if token is not None:
            production.cache.close_scope(token)  # type: ignore[union-attr]
    _succeeded(production, call, model, started, reservation, fallback_from, span, outputs)
    return outputs


def _failed(production: Production, call: LMCall, model: str, started: float, reservation: Any,
            fallback_from: str | None, exc: BaseException, span: Any = None) -> None:
    try:
        if production.breaker is not None:
            production.breaker.failure(model, exc)
        if reservation is not None and production.costs is not None:
            production.costs.settle(reservation, 0.0)
        production.record_call(call, model, type(exc).__name__, started, None, None, exc, fallback_from, span)
    finally:
        if span is not None:
            span.end()


def _succeeded(production: Production, call: LMCall, model: str, started: float, reservation: Any,
               fallback_from: str | None, span: Any = None, outputs: Any = None) -> None:
    try:
        breaker = production.breaker
        if breaker is not None:
            local = breaker.local_circuit(model)
            if local is None or local.state != "closed" or local.failures:
                breaker.success(model)
        usage = None if call.cache_hit else call.usage
        costs = production.costs
        cost = (costs.settle_call(reservation, model, usage, call.cost, call.lm, call.cost_source)
                if costs is not None else 0.0)
        production.record_call(call, model, "cache_hit" if call.cache_hit else "ok", started, usage, cost, None,
                               fallback_from, span, outputs)
    finally:
        if span is not None:
            span.end()


lm_call_wrapper.dspyo3_active = lambda: active() is not None  # type: ignore[attr-defined]
