"""The :class:`Production` stack object: the cache, metrics, logs, breaker and cost tracker around LM calls, how a
finished call is reported to them (:meth:`Production.record_call`), and which stack is installed in this process.

:mod:`dspyo3_production.settings` builds one from the ``[production]`` config table and
:mod:`dspyo3_production.stack` runs the installed one around every LM call; both import this module, never each
other's callers.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback

from dspyo3_core.lm import LMCall
from dspyo3_production import logs
from dspyo3_production.breaker import CircuitBreaker
from dspyo3_production.cache import TieredCache, install_cache
from dspyo3_production.cost import ATTRIBUTION, Budget, CostTracker
from dspyo3_production.metrics import CIRCUIT_STATES, Metrics, default_metrics
from dspyo3_production.routing import ARM

__all__ = ["INSTALL_LOCK", "Production", "ProductionCallback", "installed"]

logger = logging.getLogger("dspyo3.production")

_installed: Production | None = None
INSTALL_LOCK = threading.RLock()
"""Held while a stack is installed or uninstalled (:mod:`dspyo3_production.stack` holds it while it builds the
stack the config describes)."""


CALLS: contextvars.ContextVar[list[LMCall] | None] = contextvars.ContextVar("dspyo3_calls", default=None)
"""A list the stack appends every finished :class:`LMCall` of the current context to (set it to a fresh list to
collect one request's calls, as ``dspyo3 serve`` does for per-request usage and cost); None: nothing collected."""


def installed() -> Production | None:
    """The stack installed in this process (:meth:`Production.install`), if any."""
    return _installed


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
    def record_call(self, call: LMCall, model: str, status: str, started: float, usage: Mapping[str, Any] | None,
                    cost: float | None, exc: BaseException | None, fallback_from: str | None = None) -> None:
        """Report one finished LM call to the stack's metrics and its ``lm_call`` log event.

        ``status``: ``ok``, ``cache_hit``, ``circuit_open``, ``budget_exceeded`` or the exception's class name;
        ``started``: :func:`time.perf_counter` when the wrapper began; ``usage``/``cost``: what was billed (None on
        a cache hit or a refusal); ``fallback_from``: the model whose open circuit sent the call to ``model``.
        The duration reported is the real call's (:attr:`~dspyo3_core.call.LMCall.latency_s`), or the time since
        ``started`` for a call that never reached the LM (a refusal)."""
        collected = CALLS.get()
        if collected is not None:
            collected.append(call)
        seconds = call.latency_s
        if seconds is None:
            seconds = time.perf_counter() - started
        prompt = completion = 0
        if usage:
            prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
            completion = usage.get("completion_tokens") or usage.get("output_tokens") or 0
        metrics = self.metrics
        if metrics is not None:
            metrics.record_lm(model, status, seconds, prompt, completion, cost)
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
            arm = ARM.get()
            if arm is not None:
                fields["experiment"], fields["arm"] = arm
            who = ATTRIBUTION.get()
            if who:
                fields.update(who)
            if exc is not None:
                key = (getattr(call.lm, "kwargs", None) or {}).get("api_key")
                fields["error"] = logs.redact(str(exc), key if isinstance(key, str) else None)[:500]
            logs.emit("lm_call", level, fields, scalars=True)

    # -- installation -----------------------------------------------------------------------------------------
    def install(self) -> Production:
        """Make this the active stack: the cache becomes ``dspy.cache`` and the DSPy callback is added."""
        global _installed
        with INSTALL_LOCK:
            if _installed is not None and _installed is not self:
                _installed.uninstall()
            if self.cache is not None and dspy.cache is not self.cache:
                self._previous_cache = install_cache(self.cache)
            if self.callback is not None:
                callbacks = dspy.settings.get("callbacks")
                if isinstance(callbacks, list):  # DSPy's global list: extend it in place (any thread may)
                    if self.callback not in callbacks:
                        callbacks.append(self.callback)
                else:
                    dspy.configure(callbacks=[*(callbacks or []), self.callback])
            _installed = self
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
        global _installed
        if self._previous_cache is not None and dspy.cache is self.cache:
            install_cache(self._previous_cache)
            self._previous_cache = None
        if self.callback is not None:
            callbacks = dspy.settings.get("callbacks")
            if isinstance(callbacks, list) and self.callback in callbacks:
                callbacks.remove(self.callback)
        if _installed is self:
            _installed = None
