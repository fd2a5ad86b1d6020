"""The :class:`Production` stack object: the cache, metrics, logs, breaker and cost tracker around LM calls, how a
finished call is reported to them (:meth:`Production.record_call`), and which stack is installed in this process.

:mod:`dspyo3_production.settings` builds one from the ``[production]`` config table and
:mod:`dspyo3_production.stack` runs the installed one around every LM call; both import this module, never each
other's callers.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import dspy
from dspy.utils.callback import BaseCallback

from dspyo3_core import spans
from dspyo3_core.lm import LMCall
from dspyo3_production import logs
from dspyo3_production.breaker import CircuitBreaker
from dspyo3_production.cache import TieredCache, install_cache
from dspyo3_production.cost import ATTRIBUTION, Budget, CostTracker
from dspyo3_production.metrics import CIRCUIT_STATES, Metrics, current_exemplar, default_metrics
from dspyo3_production.routing import ARM

if TYPE_CHECKING:  # tracing imports OpenTelemetry: only when it is enabled
    from dspyo3_production.tracing import Recorder, TracingConfig

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
        self.spans = False  # exact module/predictor/adapter/tool spans ([production.tracing] modules="callbacks")
        self._spans: dict[str, Any] = {}

    def _span_start(self, call_id: str, name: str, attrs: dict[str, Any]) -> None:
        tracer = spans.TRACER
        if tracer is not None and self.spans:
            self._spans[call_id] = tracer.start(name, attrs=attrs)

    def _span_end(self, call_id: str, exception: BaseException | None) -> None:
        span = self._spans.pop(call_id, None) if self._spans else None
        if span is not None:
            if exception is not None:
                span.fail(exception)
            span.end()

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        kind = "retrieval" if isinstance(instance, dspy.Retrieve) else "module"
        name = type(instance).__name__
        if self.spans:
            self._span_start(call_id, f"dspyo3.module {name}", {
                "dspyo3.module.class": name,
                "openinference.span.kind": "RETRIEVER" if kind == "retrieval" else "CHAIN"})
        self._open[call_id] = (time.perf_counter(), kind, name, logs.open_trace())

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
        # the module's span while it is still current (callbacks mode)
        exemplar = current_exemplar(getattr(m, "multiprocess", None)) if m is not None else None
        if self._spans:
            self._span_end(call_id, exception)
        if m is not None:
            if kind == "retrieval":
                m.child(m.retrieval_requests, name, status).inc()
                m.child(m.retrieval_duration, name).observe(seconds, exemplar)
                passages = getattr(outputs, "passages", None)
                if passages:
                    m.child(m.retrieval_passages, name).inc(len(passages))
            else:
                m.child(m.module_calls, name, status).inc()
                m.child(m.module_duration, name).observe(seconds, exemplar)
        if self.log_events:
            logs.event("retrieval_call" if kind == "retrieval" else "module_call", module=name, status=status,
                       duration_ms=round(seconds * 1000, 3))
        logs.close_trace(token)

    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        name = str(getattr(instance, "name", type(instance).__name__))
        if self.spans:
            self._span_start(call_id, f"execute_tool {name}", {
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                "openinference.span.kind": "TOOL"})
        self._open[call_id] = (time.perf_counter(), "tool", name, None)

    def on_tool_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        ended = self._ended(call_id, exception)
        if ended is None:
            return
        _kind, name, _token, seconds, status = ended
        exemplar = current_exemplar(getattr(self.metrics, "multiprocess", None)) if self.metrics is not None else None
        if self._spans:
            self._span_end(call_id, exception)
        if self.metrics is not None:
            self.metrics.child(self.metrics.tool_calls, name, status).inc()
            self.metrics.child(self.metrics.tool_duration, name).observe(seconds, exemplar)
        if self.log_events:
            logs.event("tool_call", tool=name, status=status, duration_ms=round(seconds * 1000, 3))

    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if self.spans:
            self._span_start(call_id, "dspyo3.adapter.format", {"dspyo3.adapter": type(instance).__name__})

    def on_adapter_format_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        self._span_end(call_id, exception)

    def on_adapter_parse_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if self.spans:
            self._span_start(call_id, "dspyo3.adapter.parse", {"dspyo3.adapter": type(instance).__name__})

    def on_adapter_parse_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        self._span_end(call_id, exception)


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
        tracing: OpenTelemetry traces: a :class:`~dspyo3_production.tracing.TracingConfig` (or a ready
            :class:`~dspyo3_production.tracing.Recorder`); None: from the ``OTEL_*`` variables
            (:meth:`TracingConfig.from_env`, off when they name no endpoint); False: off.
    """

    def __init__(self, *, cache: TieredCache | None = None, metrics: Metrics | bool = True,
                 log_events: bool = True, breaker: CircuitBreaker | None = None,
                 fallback: dspy.BaseLM | str | None = None, budgets: Iterable[Budget] = (),
                 costs: CostTracker | None = None, single_flight: bool = True,
                 module_callbacks: bool = True, tracing: TracingConfig | Recorder | bool | None = None) -> None:
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
        self.tracer: Recorder | None = None
        self.tracing_config: TracingConfig | None = None
        if tracing is None:
            import os

            if any(k.startswith("OTEL_") for k in os.environ):  # no OpenTelemetry import without OTEL_* settings
                from dspyo3_production.tracing import TracingConfig

                tracing = TracingConfig.from_env()
        if tracing is not None and tracing is not False and tracing is not True:
            from dspyo3_production.tracing import Recorder, TracingConfig

            if isinstance(tracing, TracingConfig):
                self.tracing_config = tracing
                if tracing.enabled:
                    self.tracer = Recorder(tracing)
            elif isinstance(tracing, Recorder):
                self.tracer, self.tracing_config = tracing, tracing.config
            else:
                raise TypeError(f"tracing= takes a TracingConfig, a Recorder, None or False, not {tracing!r}")
        elif tracing is True:
            from dspyo3_production.tracing import Recorder, TracingConfig

            self.tracing_config = TracingConfig()
            self.tracer = Recorder(self.tracing_config)
        callback_spans = self.tracer is not None and self.tracer.modules == "callbacks"
        self.callback = (ProductionCallback(self.metrics, log_events) if module_callbacks or callback_spans
                         else None)
        if self.callback is not None and callback_spans:
            self.callback.spans = True
        # Metrics.record_lm takes the LM span's ids as an exemplar (when this version of metrics has the parameter)
        self._exemplars = (self.metrics is not None and self.tracer is not None
                           and "exemplar" in inspect.signature(self.metrics.record_lm).parameters)
        self._previous_cache: Any = None
        if breaker is not None and self.metrics is not None and breaker.on_change is None:
            metrics_ = self.metrics

            def on_change(key: str, state: str) -> None:
                metrics_.child(metrics_.circuit_state, key).set(CIRCUIT_STATES[state])
                metrics_.child(metrics_.circuit_transitions, key, state).inc()
                if log_events:
                    logs.event("circuit_" + state, level=logging.WARNING, model=key)
                tracer = spans.TRACER
                current = getattr(tracer, "current_span", None) if tracer is not None else None
                span = current() if current is not None else None
                if span is not None:
                    span.event("circuit_" + state, {"dspyo3.breaker.model": key})

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
                    cost: float | None, exc: BaseException | None, fallback_from: str | None = None,
                    span: Any = None, outputs: Any = None) -> None:
        """Report one finished LM call to the stack's metrics and its ``lm_call`` log event.

        ``status``: ``ok``, ``cache_hit``, ``circuit_open``, ``budget_exceeded`` or the exception's class name;
        ``started``: :func:`time.perf_counter` when the wrapper began; ``usage``/``cost``: what was billed (None on
        a cache hit or a refusal); ``fallback_from``: the model whose open circuit sent the call to ``model``.
        The duration reported is the real call's (:attr:`~dspyo3_core.call.LMCall.latency_s`), or the time since
        ``started`` for a call that never reached the LM (a refusal).

        ``span``: the call's LM span (tracing on), which gets the call's ``gen_ai.*`` and ``dspyo3.*`` attributes
        here and is still current while the ``lm_call`` event is written; ``outputs``: the LM's outputs, recorded
        on it only when content capture is on."""
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
        if span is not None:
            _span_attributes(span, call, model, status, usage, prompt, completion, cost, exc, fallback_from, outputs)
        metrics = self.metrics
        if metrics is not None:
            if self._exemplars and span is not None and span.ref.sampled:
                metrics.record_lm(model, status, seconds, prompt, completion, cost,
                                  exemplar=spans.current_ids())
            else:
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
            if self.tracer is not None:
                spans.install(self.tracer)
        return self

    def close(self) -> None:
        """Release what the stack holds open: the cache's Redis tier (queued writes are flushed first) and the
        Redis connections of the breaker and the cost tracker, and flushes and stops the trace exporter. Uninstall
        it first (:func:`disable` does both)."""
        if self.tracer is not None:
            self.tracer.shutdown()
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
        if self.tracer is not None and spans.TRACER is self.tracer:
            spans.install(None)
        if _installed is self:
            _installed = None


_PROVIDERS = {"azure": "azure.ai.openai", "azure_ai": "azure.ai.inference", "bedrock": "aws.bedrock",
              "vertex_ai": "gcp.vertex_ai", "gemini": "gcp.gemini", "mistral": "mistral_ai", "xai": "xai"}


_REQUEST_PARAMS = (("temperature", "gen_ai.request.temperature"), ("max_tokens", "gen_ai.request.max_tokens"),
                   ("max_completion_tokens", "gen_ai.request.max_tokens"), ("top_p", "gen_ai.request.top_p"))


def _server(api_base: Any) -> tuple[str, int] | None:
    """Host and port of an ``api_base`` URL (never its path, query or credentials)."""
    if not isinstance(api_base, str) or not api_base:
        return None
    found = spans.server_of(api_base)
    return None if found is None else (found[0], found[1])


def _span_attributes(span: Any, call: LMCall, model: str, status: str, usage: Mapping[str, Any] | None,
                     prompt: int, completion: int, cost: float | None, exc: BaseException | None,
                     fallback_from: str | None, outputs: Any) -> None:
    """The LM span's attributes (GenAI semantic conventions plus ``dspyo3.*``); only named scalars are copied from
    the call's arguments, never the arguments wholesale (they may hold keys)."""
    lm = call.lm
    own = getattr(lm, "__dict__", None) or {}  # instance attributes: a missing one costs no AttributeError
    provider, _, bare = model.partition("/")
    if not bare:
        provider, bare = "openai", model
    wire = own.get("wire_model")
    system = _PROVIDERS.get(provider, provider)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "text_completion" if own.get("model_type") == "text" else "chat",
        "gen_ai.system": system, "gen_ai.provider.name": system,
        "gen_ai.request.model": wire if isinstance(wire, str) and wire else bare}
    lm_kwargs = own.get("kwargs") or {}
    if lm_kwargs or call.kwargs:
        for key, attr in _REQUEST_PARAMS:
            value = call.kwargs.get(key, lm_kwargs.get(key))
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attrs[attr] = value
    server = _server(lm_kwargs.get("api_base") or lm_kwargs.get("base_url") or own.get("api_base"))
    if server is None and "kwargs" in own:  # a dspy.LM whose engine owns the connection (the native engine)
        server = _server(getattr(getattr(lm, "engine", None), "url", None))
    if server is not None:
        attrs["server.address"], attrs["server.port"] = server
    if call.response_model:
        attrs["gen_ai.response.model"] = call.response_model
    if call.response_id:
        attrs["gen_ai.response.id"] = call.response_id
    if call.finish_reasons:
        attrs["gen_ai.response.finish_reasons"] = list(call.finish_reasons)
    if usage:
        attrs["gen_ai.usage.input_tokens"] = int(prompt)
        attrs["gen_ai.usage.output_tokens"] = int(completion)
    if cost is not None:
        attrs["dspyo3.cost_usd"] = float(cost)
        if call.cost_source:
            attrs["dspyo3.cost_source"] = call.cost_source
    attrs["dspyo3.cache.hit"] = bool(call.cache_hit)
    if call.cache_tier:
        attrs["dspyo3.cache.tier"] = call.cache_tier
    if fallback_from:
        attrs["dspyo3.fallback_from"] = fallback_from
    attrs["dspyo3.lm.class"] = type(lm).__name__
    attrs["dspyo3.status"] = status
    version = own.get("dspyo3_program_version") or call.metadata.get("program_version")
    if isinstance(version, str):
        attrs["dspyo3.program.version"] = version
    arm = ARM.get()
    if arm is not None:
        attrs["dspyo3.ab.experiment"], attrs["dspyo3.ab.arm"] = str(arm[0]), str(arm[1])
    who = ATTRIBUTION.get()
    if who:
        tenant = who.get("tenant") or who.get("user")
        if tenant is not None:
            attrs["dspyo3.tenant"] = str(tenant)
    attrs["openinference.span.kind"] = "LLM"
    target = getattr(span, "attrs", None)
    if isinstance(target, dict):  # production's span: one update
        target.update(attrs)
    else:
        for key, value in attrs.items():
            span.set(key, value)
    tracer = span.recorder if hasattr(span, "recorder") else spans.TRACER
    if tracer is not None and getattr(tracer, "capture_content", False) and span.ref.sampled:
        content = getattr(tracer, "content", None)
        if content is not None:
            span.set("gen_ai.input.messages", content(call.messages if call.messages is not None else call.prompt))
            if outputs is not None:
                span.set("gen_ai.output.messages", content(outputs))
    if exc is not None:
        api_key = lm_kwargs.get("api_key")
        text = logs.redact(str(exc), api_key if isinstance(api_key, str) else None)[:1000]
        if hasattr(span, "recorder"):  # production's span: takes the masked text with the exception
            span.fail(exc, message=text)
        else:
            span.fail(f"{type(exc).__name__}: {text}")
            span.set("error.type", type(exc).__name__)
