"""The ``dspyo3 serve`` ASGI app (Starlette): DSPy programs behind a JSON/SSE HTTP API.

    from dspyo3_production.serve import ServeConfig, create_app
    app = create_app(ServeConfig(programs=(ProgramConfig("myapp.programs:qa"),)))   # run it with uvicorn

Routes: ``POST /v1/programs/{name}`` (predict), ``/stream`` (server-sent events), ``/batch``; ``GET /v1/programs``,
``/openapi.json``, ``/docs``, ``/healthz``, ``/readyz``, ``/metrics``. Programs run with ``await module.acall()``
on the event loop under the production stack (:mod:`dspyo3_production.stack`): cache, metrics, logs carrying the
request id, costs attributed to the tenant. A request's usage and cost are the sum over the LM calls it made,
collected through :data:`dspyo3_production.pipeline.CALLS` (a context variable, so concurrent requests never mix).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
import re
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dspyo3_core import spans
from dspyo3_core.sources import ProgramSource
from dspyo3_production import logs
from dspyo3_production import stack as production_stack
from dspyo3_production.cost import attribute
from dspyo3_production.metrics import Metrics, default_metrics, exposition, exposition_content_type, multiprocess_dir
from dspyo3_production.pipeline import CALLS
from dspyo3_production.serve.config import ABSplit, ProgramConfig, ServeConfig, TenantConfig
from dspyo3_production.serve.errors import ServeError
from dspyo3_production.serve.schema import openapi_document
from dspyo3_production.serve.slots import Arm, ProgramSlot

__all__ = ["ENV_VAR", "app_from_environment", "config_from_env", "config_to_env", "create_app",
           "target_options_from_env"]

ENV_VAR = "DSPYO3_SERVE_CONFIG"
"""The environment variable :func:`app_from_environment` reads the serve configuration (JSON) from."""

logger = logging.getLogger("dspyo3.serve")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_JSON = "application/json"
_PROGRAM_ROUTES = {"predict": "/v1/programs/{name}", "stream": "/v1/programs/{name}/stream",
                   "batch": "/v1/programs/{name}/batch"}
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
"""HTTP methods kept as metric labels; any other (a client can send arbitrary ones) is counted as ``other``."""
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# -- configuration through the environment (worker processes, Ray replicas) ---------------------------------------
def config_to_env(config: ServeConfig, *, registry: str | None = None,
                  trust_registry: bool = False) -> dict[str, str]:
    """The environment variables that carry ``config`` (and the registry options of its targets) to
    :func:`app_from_environment` in worker processes: ``{"DSPYO3_SERVE_CONFIG": "<json>"}``."""
    data = {
        "config": {
            "programs": [{"target": p.target, "name": p.name, "smoke": p.smoke,
                          "ab": {"target": p.ab.target, "weight": p.ab.weight} if p.ab is not None else None}
                         for p in config.programs],
            "host": config.host, "port": config.port, "workers": config.workers,
            "max_in_flight": config.max_in_flight, "max_queue": config.max_queue,
            "request_timeout": config.request_timeout, "max_body_bytes": config.max_body_bytes,
            "batch_max_items": config.batch_max_items, "batch_concurrency": config.batch_concurrency,
            "watch_interval": config.watch_interval, "redis_url": config.redis_url,
            "tenants": [{"name": t.name, "key_sha256": list(t.key_sha256),
                         "requests_per_second": t.requests_per_second, "tokens_per_minute": t.tokens_per_minute,
                         "usd_per_day": t.usd_per_day, "usd_per_month": t.usd_per_month} for t in config.tenants],
        },
        "registry": registry,
        "trust_registry": bool(trust_registry),
    }
    return {ENV_VAR: orjson.dumps(data).decode()}


def _env_data(value: str | None) -> dict[str, Any]:
    text = value if value is not None else os.environ.get(ENV_VAR)
    if not text:
        raise ServeError(500, f"{ENV_VAR} is not set; start workers with `dspyo3 serve` (it sets it)")
    data = orjson.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError(f"{ENV_VAR} is not a serve configuration written by config_to_env")
    return data


def config_from_env(value: str | None = None) -> ServeConfig:
    """The :class:`ServeConfig` that :func:`config_to_env` wrote (``value``: the JSON text; default: the
    ``DSPYO3_SERVE_CONFIG`` environment variable).

    Raises:
        ValueError: the text is not such a configuration (ConfigError for a wrong value).
    """
    table = dict(_env_data(value)["config"])
    programs = tuple(
        ProgramConfig(p["target"], p.get("name"), p.get("smoke"),
                      ABSplit(p["ab"]["target"], float(p["ab"]["weight"])) if p.get("ab") else None)
        for p in table.pop("programs", []))
    tenants = tuple(
        TenantConfig(t["name"], tuple(t["key_sha256"]), t.get("requests_per_second"), t.get("tokens_per_minute"),
                     t.get("usd_per_day"), t.get("usd_per_month"))
        for t in table.pop("tenants", []))
    return ServeConfig(programs=programs, tenants=tenants, **table)


def target_options_from_env(value: str | None = None) -> dict[str, Any]:
    """The target-resolution options (``registry``, ``trust_registry``) :func:`config_to_env` wrote."""
    data = _env_data(value)
    return {"registry": data.get("registry"), "trust_registry": bool(data.get("trust_registry"))}


def app_from_environment() -> Starlette:
    """The app factory worker processes run (``uvicorn --factory
    dspyo3_production.serve.app:app_from_environment``): :func:`create_app` on the configuration in
    ``DSPYO3_SERVE_CONFIG``. The LM is the configured one (``dspy.configure``), else the default profile of
    ``dspyo3.toml``."""
    import dspy

    config = config_from_env()
    options = target_options_from_env()
    if dspy.settings.lm is None:
        from dspyo3_core import configure
        from dspyo3_core.config import ConfigError

        try:
            configure()
        except ConfigError as exc:  # programs with their own LM still work; readiness reports the others
            app = create_app(config, **options)
            if _lm_missing(app.state.slots.values()):
                logger.warning("no LM configured for dspyo3 serve: %s", exc)
            return app
    return create_app(config, **options)


# -- HTTP metrics --------------------------------------------------------------------------------------------------
class _HttpMetrics:
    """``dspyo3_http_requests_total{route,method,status}`` and ``dspyo3_http_request_seconds{route}`` on the
    production metrics' registry (registered once per registry)."""

    def __init__(self, metrics: Metrics) -> None:
        from prometheus_client import Counter, Histogram

        self.requests = Counter("dspyo3_http_requests", "HTTP requests by route, method, status and tenant "
                                "(empty without tenants or before authentication)",
                                ["route", "method", "status", "tenant"], registry=metrics.registry)
        self.seconds = Histogram("dspyo3_http_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=_BUCKETS, registry=metrics.registry)
        self._counters: dict[tuple[str, str, int, str], Any] = {}
        self._histograms: dict[str, Any] = {}

    def record(self, route: str, method: str, status: int, seconds: float, tenant: str = "",
               exemplar: dict[str, str] | None = None) -> None:
        key = (route, method, status, tenant)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(route, method, str(status), tenant)
        counter.inc()
        histogram = self._histograms.get(route)
        if histogram is None:
            histogram = self._histograms[route] = self.seconds.labels(route)
        histogram.observe(seconds, exemplar)

    @classmethod
    def of(cls, metrics: Metrics) -> _HttpMetrics:
        existing = _HTTP_METRICS.get(metrics.registry)
        if existing is None:
            existing = _HTTP_METRICS[metrics.registry] = cls(metrics)
        return existing


_HTTP_METRICS: weakref.WeakKeyDictionary[Any, _HttpMetrics] = weakref.WeakKeyDictionary()


_UNTRACED = frozenset(("/healthz", "/readyz", "/metrics"))
"""Probe and scrape routes: no SERVER span (they would drown the traces that matter)."""


def _route_of(path: str) -> str:
    """The route template a request path will match (the SERVER span's name is fixed when it starts, before
    routing); ``other`` for a path no route serves."""
    if path.startswith("/v1/programs/"):
        rest = path[len("/v1/programs/"):]
        name, _, tail = rest.partition("/")
        if name and tail in ("", "stream", "batch"):
            return "/v1/programs/{name}" + (f"/{tail}" if tail else "")
        return "other"
    if path in ("/v1/programs", "/openapi.json", "/docs", "/healthz", "/readyz", "/metrics"):
        return path
    return "other"


def _trusts_incoming(tracer: Any) -> bool:
    """Whether the tracer continues traces named by incoming requests (its ``trust_incoming``, else its
    config's; default true)."""
    trust = getattr(tracer, "trust_incoming", None)
    if trust is None:
        trust = getattr(getattr(tracer, "config", None), "trust_incoming", True)
    return bool(trust)


class _Envelope:
    """Pure ASGI middleware: the request id (``x-request-id`` kept when sane, else generated) on every response,
    and the HTTP metrics.

    With tracing on (:data:`dspyo3_core.spans.TRACER`), each request but probes and scrapes gets a SERVER span
    ``{method} {route}``. It continues the caller's trace when the request carries a valid W3C ``traceparent`` and
    the tracer trusts incoming context (its ``trust_incoming``, default true); a malformed one is ignored. The
    span is ERROR only for a 5xx answer (HTTP server conventions). ``tracestate`` is not carried on."""

    def __init__(self, app: ASGIApp, http: _HttpMetrics) -> None:
        self.app = app
        self.http = http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        tracer = spans.TRACER
        incoming: bytes | None = None
        seen_id = False
        for key, value in scope["headers"]:
            if key == b"x-request-id" and not seen_id:
                seen_id = True
                text = value.decode("latin-1")
                if _REQUEST_ID.match(text):
                    request_id = text
                if tracer is None:
                    break
            elif key == b"traceparent" and tracer is not None and incoming is None:
                incoming = value
        if request_id is None:
            request_id = uuid.uuid4().hex
        scope["dspyo3.request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        status = 500
        started = time.perf_counter()
        span = None
        if tracer is not None:
            span = self._start_span(tracer, scope, incoming, request_id)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            method = scope["method"]
            exemplar = None
            if span is not None:
                exemplar = self._end_span(span, scope, status)
            self.http.record(scope.get("dspyo3.route", "other"), method if method in _METHODS else "other", status,
                             time.perf_counter() - started, scope.get("dspyo3.tenant", ""), exemplar)

    @staticmethod
    def _start_span(tracer: spans.Tracer, scope: Scope, incoming: bytes | None, request_id: str) -> Any:
        route = _route_of(scope.get("path") or "")
        if route in _UNTRACED:
            return None
        parent = None
        if incoming is not None and _trusts_incoming(tracer):
            parent = spans.parse_traceparent(incoming)  # None for anything malformed: a new trace then
        method = scope["method"] if scope["method"] in _METHODS else "_OTHER"
        name = method if route == "other" else f"{method} {route}"
        attrs: dict[str, spans.AttrValue] = {"http.request.method": method, "dspyo3.request_id": request_id}
        if route != "other":
            attrs["http.route"] = route
        return tracer.start(name, spans.SERVER, attrs, parent=parent)

    @staticmethod
    def _end_span(span: Any, scope: Scope, status: int) -> dict[str, str] | None:
        """End the request's SERVER span; the HTTP latency exemplar for it (None unless sampled)."""
        try:
            route = scope.get("dspyo3.route")
            if route is not None:
                span.set("http.route", route)
            span.set("http.response.status_code", status)
            tenant = scope.get("dspyo3.tenant")
            if tenant:
                span.set("dspyo3.tenant", tenant)
            if status >= 500:
                span.fail(str(status))  # error.type is the status code (HTTP server conventions)
        finally:
            span.end()
        ref = span.ref
        if not ref.sampled or multiprocess_dir():
            return None
        return {"trace_id": f"{ref.trace_id:032x}", "span_id": f"{ref.span_id:016x}"}


# -- the app --------------------------------------------------------------------------------------------------------
def _json(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status, headers=headers, media_type=_JSON)


def _error_response(error: ServeError, request_id: str | None) -> Response:
    headers = {}
    retry = error.retry_after_header
    if retry is not None:
        headers["Retry-After"] = retry
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="dspyo3"'
    return _json(error.to_json(request_id), error.status, headers)


def _cache_hit(call: Any) -> bool:
    """A call a cache answered: marked so by a dspyo3 cache tier, or answered by DSPy's own cache (which reports
    empty usage for a hit, and the first call's cost)."""
    return bool(call.cache_hit) or (call.error is None and call.usage is not None and not call.usage)


def _usage(calls: list[Any]) -> tuple[dict[str, int], float | None, bool]:
    """Usage, cost and cache mark of one request from the LM calls it made."""
    prompt = completion = 0
    cost = 0.0
    priced = True
    hits = [_cache_hit(call) for call in calls]
    for call, hit in zip(calls, hits, strict=True):
        if hit:
            continue
        usage = call.usage or {}
        prompt += int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        completion += int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
        if call.cost is None:
            if call.error is None and usage:
                priced = False
        else:
            cost += call.cost
    cache_hit = bool(calls) and all(hits)
    usage_out = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return usage_out, (cost if priced else None), cache_hit


def _program_failure(exc: Exception, request_id: str) -> ServeError:
    """The ServeError for an exception a program raised (budget, open circuit; else a logged generic 500)."""
    from dspyo3_production.breaker import CircuitOpenError
    from dspyo3_production.cost import BudgetExceededError

    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, BudgetExceededError):
        return ServeError(429, "the LM budget is used up; retry later", "over_budget", retry_after=60)
    if isinstance(exc, CircuitOpenError):
        return ServeError(503, "the LM provider is failing (circuit open); retry later", "overloaded",
                          retry_after=5)
    logger.error("request %s failed: %s: %s", request_id, type(exc).__name__, exc, exc_info=exc)
    return ServeError(500, f"internal error; quote request id {request_id} to the operator", "internal_error")


class _Service:
    """What the endpoints share: the slots, the sources, the tenant gate, the metrics, the limits."""

    def __init__(self, config: ServeConfig, slots: dict[str, ProgramSlot], sources: dict[str, ProgramSource],
                 tenants: Any, metrics: Metrics) -> None:
        self.config = config
        self.slots = slots
        self.sources = sources
        self.tenants = tenants
        self.metrics = metrics
        self.timeout = float(config.request_timeout)
        self.max_body = config.max_body_bytes
        self.smoke = {p.name or "": p.smoke for p in config.programs}
        self._openapi: tuple[tuple[Any, ...], bytes] | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.closing = False

    # -- request pieces ---------------------------------------------------------------------------------------
    def slot(self, request: Request, route: str) -> ProgramSlot:
        request.scope["dspyo3.route"] = _PROGRAM_ROUTES[route]
        name = request.path_params["name"]
        slot = self.slots.get(name)
        if slot is None:
            served = ", ".join(sorted(self.slots)) or "none"
            raise ServeError(404, f"no program named {name!r}; served: {served}", "not_found")
        return slot

    def authenticate(self, request: Request) -> Any:
        if self.tenants is None:
            return None
        tenant = self.tenants.authenticate(request.headers)
        request.scope["dspyo3.tenant"] = tenant.name  # the HTTP metrics' tenant label
        return tenant

    async def body(self, request: Request) -> Any:
        """The decoded JSON body, read up to ``max_body_bytes`` (413 beyond, with or without Content-Length)."""
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise ServeError(400, "Content-Length is not a number", "bad_request") from None
            if size > self.max_body:
                raise ServeError(413, f"request body over {self.max_body} bytes", "payload_too_large")
        chunks: list[bytes] = []
        total = 0
        try:
            async for chunk in request.stream():
                total += len(chunk)
                if total > self.max_body:
                    raise ServeError(413, f"request body over {self.max_body} bytes", "payload_too_large")
                if chunk:
                    chunks.append(chunk)
        except ClientDisconnect:  # the caller went away mid-body: its doing, not a server failure
            raise ServeError(400, "the client disconnected before sending the whole body", "bad_request") \
                from None
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if not raw:
            raise ServeError(400, "the request body is empty; send a JSON object of the input fields",
                             "bad_request")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ServeError(400, f"malformed JSON: {exc}", "bad_request") from None

    def caller(self, request: Request, tenant: Any) -> str | None:
        return request.headers.get("x-dspyo3-user") or (tenant.name if tenant is not None else None)

    async def admit_tenant(self, tenant: Any, estimated_tokens: int) -> None:
        if tenant is not None and self.tenants is not None:
            await self.tenants.admit(tenant, estimated_tokens)

    def settle(self, tenant: Any, calls: list[Any], estimated: int) -> None:
        """Count what a request's LM ``calls`` used against its tenant's limits and budgets: also for a request
        that failed, timed out or was cancelled (the provider billed whatever calls it answered)."""
        if tenant is not None and self.tenants is not None:
            usage, cost, _ = _usage(calls)
            self.tenants.settle(tenant, int(usage.get("total_tokens", 0)), float(cost or 0.0),
                                estimated_tokens=estimated)

    async def run(self, slot: ProgramSlot, arm: Arm, inputs: dict[str, Any], tenant: Any, request_id: str,
                  calls: list[Any]) -> Any:
        """Run ``arm``'s module on ``inputs`` inside the slot's bounds; each finished LM call is appended to
        ``calls`` (kept by the caller, so a failed request's calls are still counted). With tracing on, the run is
        a ``dspyo3.program {name}`` span (admission wait included) and the logs carry its trace id."""
        tracer = spans.TRACER
        token = CALLS.set(calls)
        try:
            if tracer is None:
                with logs.trace(request_id=request_id, program=slot.name), \
                        (attribute(user=tenant.name) if tenant is not None else contextlib.nullcontext()):
                    async with slot.admit():
                        return await arm.module.acall(**inputs)
            with _program_span(tracer, slot, arm, tenant, request_id) as span, \
                    logs.trace(trace_id=f"{span.ref.trace_id:032x}", request_id=request_id, program=slot.name), \
                    (attribute(user=tenant.name) if tenant is not None else contextlib.nullcontext()):
                async with slot.admit():
                    return await arm.module.acall(**inputs)
        finally:
            CALLS.reset(token)

    def body_of(self, slot: ProgramSlot, arm: Arm, prediction: Any, calls: list[Any],
                request_id: str) -> dict[str, Any]:
        usage, cost, cache_hit = _usage(calls)
        return {"outputs": arm.schema.outputs(prediction), "program": slot.name, "version": arm.version,
                "arm": arm.arm, "usage": usage, "cost": cost, "cache_hit": cache_hit, "request_id": request_id}

    # -- endpoints --------------------------------------------------------------------------------------------
    async def begin(self, request: Request, route: str) -> tuple[str, Any, ProgramSlot, Any]:
        """What every program endpoint does first: the request id, the tenant (401 before anything else, counted
        under the route), the program's slot (404) and the decoded body (400, 413)."""
        request.scope["dspyo3.route"] = _PROGRAM_ROUTES[route]
        tenant = self.authenticate(request)
        return request.scope["dspyo3.request_id"], tenant, self.slot(request, route), await self.body(request)

    async def predict(self, request: Request) -> Response:
        request_id, tenant, slot, data = await self.begin(request, "predict")
        arm = slot.pick(self.caller(request, tenant))
        inputs = arm.schema.validate(data)
        estimated = _estimate(request) if tenant is not None else 0
        await self.admit_tenant(tenant, estimated)
        calls: list[Any] = []
        try:
            async with asyncio.timeout(self.timeout):
                prediction = await self.run(slot, arm, inputs, tenant, request_id, calls)
        except TimeoutError:
            raise ServeError(504, f"the program did not answer within {self.timeout:g} s", "timeout") from None
        except Exception as exc:
            raise _program_failure(exc, request_id) from exc
        finally:
            self.settle(tenant, calls, estimated)
        body = self.body_of(slot, arm, prediction, calls, request_id)
        return _json(body, headers={"x-dspyo3-program-version": arm.version, "x-dspyo3-arm": arm.arm})

    async def stream(self, request: Request) -> Response:
        request_id, tenant, slot, data = await self.begin(request, "stream")
        arm = slot.pick(self.caller(request, tenant))
        inputs = arm.schema.validate(data)
        if slot.waiting >= slot.max_queue and slot.running >= slot.max_in_flight:  # before the tenant is charged
            slot.refused += 1
            raise ServeError(503, f"{slot.name} is overloaded; retry after the Retry-After seconds", "overloaded",
                             retry_after=slot.retry_after())
        estimated = _estimate(request) if tenant is not None else 0
        await self.admit_tenant(tenant, estimated)
        events = self._events(slot, arm, inputs, tenant, request_id, estimated)
        return _EventStream(events, media_type="text/event-stream", headers={
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
            "x-dspyo3-program-version": arm.version, "x-dspyo3-arm": arm.arm})

    async def _events(self, slot: ProgramSlot, arm: Arm, inputs: dict[str, Any], tenant: Any, request_id: str,
                      estimated: int) -> AsyncIterator[bytes]:
        from dspyo3_async.streaming import Chunk, Final, Status, stream

        calls: list[Any] = []
        token = CALLS.set(calls)
        tracer = spans.TRACER
        span = None if tracer is None else _program_span(tracer, slot, arm, tenant, request_id)
        try:
            with logs.trace(trace_id=None if span is None else f"{span.ref.trace_id:032x}", request_id=request_id,
                            program=slot.name), \
                    (attribute(user=tenant.name) if tenant is not None else contextlib.nullcontext()):
                try:
                    async with asyncio.timeout(self.timeout), slot.admit():
                        events = stream(arm.module, fields=arm.schema.string_outputs, retries=0, status=True,
                                        **inputs)
                        async with contextlib.aclosing(events):  # type: ignore[type-var]
                            async for event in events:
                                if isinstance(event, Chunk):
                                    yield _sse("chunk", {"field": event.field, "text": event.text,
                                                         "predictor": event.predictor})
                                elif isinstance(event, Status):
                                    yield _sse("status", {"message": event.message})
                                elif isinstance(event, Final):
                                    body = self.body_of(slot, arm, event.prediction, calls, request_id)
                                    yield _sse("prediction", body)
                except TimeoutError:
                    error = ServeError(504, f"the program did not answer within {self.timeout:g} s", "timeout")
                    if span is not None:
                        span.fail(error)
                    yield _sse("error", error.to_json(request_id))
                except Exception as exc:
                    if span is not None:
                        span.fail(exc)
                    yield _sse("error", _program_failure(exc, request_id).to_json(request_id))
        finally:
            if span is not None:
                span.end()
            CALLS.reset(token)
            self.settle(tenant, calls, estimated)

    async def batch(self, request: Request) -> Response:
        request_id, tenant, slot, data = await self.begin(request, "batch")
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list) or set(data) != {"items"}:
            raise ServeError(422, 'the batch body must be {"items": [{...input fields...}, ...]}',
                             "validation_error", fields=[{"field": "items", "problem": "missing or not a list",
                                                          "expected": "array of object"}])
        if len(items) > self.config.batch_max_items:
            raise ServeError(422, f"a batch holds at most {self.config.batch_max_items} items, not {len(items)}",
                             "validation_error", fields=[{"field": "items", "problem": "too many items",
                                                          "expected": f"at most {self.config.batch_max_items}"}])
        arm = slot.pick(self.caller(request, tenant))
        estimated = _estimate(request) if tenant is not None else 0
        await self.admit_tenant(tenant, estimated)
        limit = asyncio.Semaphore(self.config.batch_concurrency)
        all_calls: list[Any] = []

        async def one(index: int, item: Any) -> dict[str, Any]:
            item_id = f"{request_id}.{index}"
            calls: list[Any] = []
            try:
                inputs = arm.schema.validate(item)
                async with limit:
                    prediction = await self.run(slot, arm, inputs, tenant, item_id, calls)
                return {"ok": True, **self.body_of(slot, arm, prediction, calls, item_id)}
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                return {"ok": False, "error": _program_failure(exc, item_id).to_json(item_id)["error"]}
            finally:
                all_calls.extend(calls)

        try:
            async with asyncio.timeout(self.timeout):
                results = await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        except TimeoutError:
            raise ServeError(504, f"the batch did not finish within {self.timeout:g} s", "timeout") from None
        finally:
            self.settle(tenant, all_calls, estimated)
        return _json({"results": results, "program": slot.name, "version": arm.version, "request_id": request_id},
                     headers={"x-dspyo3-program-version": arm.version, "x-dspyo3-arm": arm.arm})

    async def programs(self, request: Request) -> Response:
        request.scope["dspyo3.route"] = "/v1/programs"
        self.authenticate(request)
        listing = []
        for slot in self.slots.values():
            listing.append({"name": slot.name, "version": slot.version, "stage": slot.stage,
                            "versions": {"a": slot.a.version, "b": slot.b.version if slot.b else None},
                            "input_schema": slot.a.schema.input_schema,
                            "output_schema": slot.a.schema.output_schema, "status": slot.status})
        return _json({"programs": listing})

    def openapi_bytes(self) -> bytes:
        key = tuple((slot.name, id(slot.a.schema), id(slot.b.schema) if slot.b else None)
                    for slot in self.slots.values())
        if self._openapi is None or self._openapi[0] != key:
            document = openapi_document([slot.a.schema for slot in self.slots.values()],
                                        auth=self.tenants is not None,
                                        batch_max_items=self.config.batch_max_items)
            self._openapi = (key, orjson.dumps(document))
        return self._openapi[1]

    async def openapi(self, request: Request) -> Response:
        request.scope["dspyo3.route"] = "/openapi.json"
        return Response(self.openapi_bytes(), media_type=_JSON)

    async def docs(self, request: Request) -> Response:
        request.scope["dspyo3.route"] = "/docs"
        return Response(_docs_page(self.slots), media_type="text/html")

    async def healthz(self, request: Request) -> Response:
        request.scope["dspyo3.route"] = "/healthz"
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        request.scope["dspyo3.route"] = "/readyz"
        reasons: list[str] = []
        programs: dict[str, Any] = {}
        for slot in self.slots.values():
            status = slot.status
            programs[slot.name] = status
            if not slot.ready:
                reasons.append(f"{slot.name}: not loaded")
        if not self.slots:
            reasons.append("no program is served")
        if self.closing:
            reasons.append("shutting down")
        if _lm_missing(self.slots.values()):
            reasons.append("no LM configured (dspy.configure(lm=...) or an [lm] profile in dspyo3.toml)")
        degraded = []
        if self.tenants is not None and getattr(self.tenants, "redis_available", True) is False:
            degraded.append("Redis unreachable: rate limits and budgets are per process until it is back")
        body = {"status": "ready" if not reasons else "not_ready", "programs": programs, "reasons": reasons,
                "degraded": degraded}
        return _json(body, 200 if not reasons else 503, None if not reasons else {"Retry-After": "5"})

    async def metrics_endpoint(self, request: Request) -> Response:
        """The metrics in the format ``Accept`` asks for: Prometheus 0.0.4 text by default, OpenMetrics (with
        exemplars) for ``application/openmetrics-text``."""
        request.scope["dspyo3.route"] = "/metrics"
        accept = request.headers.get("accept")
        return Response(exposition(self.metrics, accept), media_type=exposition_content_type(accept))

    # -- lifespan ---------------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.watcher = _start_watcher(self)
        try:
            yield
        finally:
            self.closing = True
            if self.watcher is not None:
                self.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self.watcher
            deadline = time.monotonic() + self.timeout
            while any(slot.running or slot.waiting for slot in self.slots.values()) \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            closer = getattr(self.tenants, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()


def _program_span(tracer: spans.Tracer, slot: ProgramSlot, arm: Arm, tenant: Any, request_id: str) -> spans.Span:
    """The started ``dspyo3.program {name}`` span of one program run (current until it ends)."""
    attrs: dict[str, spans.AttrValue] = {"dspyo3.program.name": slot.name, "dspyo3.program.version": arm.version,
                                         "dspyo3.ab.arm": arm.arm, "dspyo3.request_id": request_id,
                                         "openinference.span.kind": "CHAIN"}
    if tenant is not None:
        attrs["dspyo3.tenant"] = tenant.name
    return tracer.start(f"dspyo3.program {slot.name}", attrs=attrs)


def _start_watcher(service: _Service) -> asyncio.Task[None] | None:
    """Start the registry-stage watcher (``serve.watch``, when installed) for slots serving a stage."""
    try:
        from dspyo3_production.serve import watch as watch_module
    except ImportError:
        return None
    watch = getattr(watch_module, "watch", None)
    if watch is None or not service.sources:
        return None
    sources = {name: source for name, source in service.sources.items() if name in service.slots}
    b_sources = {name[:-2]: source for name, source in service.sources.items() if name.endswith(":b")}
    return asyncio.get_running_loop().create_task(
        watch(service.slots, sources, service.config.watch_interval, service.smoke, b_sources=b_sources,
              smoke_timeout=service.timeout))


def _lm_missing(slots: Any) -> bool:
    import dspy

    if dspy.settings.lm is not None:
        return False
    for slot in slots:
        for arm in (slot.a, slot.b):
            if arm is None:
                continue
            predictors = arm.module.predictors() if hasattr(arm.module, "predictors") else []
            if not predictors or any(getattr(p, "lm", None) is None for p in predictors):
                return True
    return False


def _estimate(request: Request) -> int:
    """Tokens a request is estimated to use before it runs (about 4 bytes a token, plus an answer's worth)."""
    try:
        size = int(request.headers.get("content-length") or 0)
    except ValueError:
        size = 0
    return max(1, size // 4) + 256


class _EventStream(StreamingResponse):
    """A streaming response that stops (and so cancels the program) as soon as the client disconnects, whatever
    ASGI spec version the server speaks."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def body() -> None:
                try:
                    with contextlib.suppress(OSError):
                        await self.stream_response(send)
                finally:
                    # Close the events here, in this task and its context, also when sending failed or was
                    # cancelled between two events: the program is cancelled and the request settled now, not
                    # when the garbage collector finalizes the generator in another context (where resetting its
                    # context variables fails and the settlement is lost).
                    closer = getattr(self.body_iterator, "aclose", None)
                    if closer is not None:
                        with anyio.CancelScope(shield=True):
                            await closer()
                group.cancel_scope.cancel()

            group.start_soon(body)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _docs_page(slots: Mapping[str, ProgramSlot]) -> str:
    sections = []
    for slot in slots.values():
        name = html.escape(slot.name)
        rows = []
        for field in slot.a.schema.input_fields:
            kind = html.escape(str(slot.a.schema.expected_type(field) or "any"))
            rows.append(f'<label>{html.escape(field)} <small>({kind})</small>'
                        f'<textarea name="{html.escape(field)}" data-kind="{kind}" rows="2"></textarea></label>')
        outputs = ", ".join(html.escape(f) for f in slot.a.schema.output_fields)
        sections.append(
            f'<section><h2>{name} <small>version {html.escape(slot.version)}</small></h2>'
            f'<p>POST <code>/v1/programs/{name}</code> &rarr; outputs: {outputs}</p>'
            f'<form data-program="{name}">{"".join(rows)}<button type="submit">Run</button></form>'
            f'<pre class="out"></pre></section>')
    return _DOCS_TEMPLATE.replace("{sections}", "".join(sections) or "<p>No program is served.</p>")


_DOCS_TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>dspyo3 serve</title>
<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
label{display:block;margin:.5rem 0}textarea{display:block;width:100%}pre{background:#f4f4f4;padding:.5rem;
white-space:pre-wrap}section{border-top:1px solid #ccc;margin-top:1.5rem}</style></head>
<body><h1>dspyo3 serve</h1><p>Programs served here; the machine-readable API is at
<a href="openapi.json">/openapi.json</a>. An API key, if the server needs one:
<input id="key" type="password" autocomplete="off"></p>{sections}
<script>
for (const form of document.querySelectorAll('form[data-program]')) {
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = {};
    for (const area of form.querySelectorAll('textarea')) {
      const kind = area.dataset.kind;
      let value = area.value;
      if (kind !== 'string') { try { value = JSON.parse(value); } catch (e) {} }
      body[area.name] = value;
    }
    const headers = {'content-type': 'application/json'};
    const key = document.getElementById('key').value;
    if (key) headers['authorization'] = 'Bearer ' + key;
    const out = form.parentElement.querySelector('.out');
    out.textContent = '...';
    const response = await fetch('v1/programs/' + form.dataset.program,
                                 {method: 'POST', headers, body: JSON.stringify(body)});
    out.textContent = response.status + '\\n' + JSON.stringify(await response.json(), null, 2);
  });
}
</script></body></html>
"""


def _endpoint(service: _Service, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request],
                                                                                                   Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ServeError as error:
            return _error_response(error, request.scope.get("dspyo3.request_id"))
        except Exception as exc:
            request_id = request.scope.get("dspyo3.request_id") or "-"
            return _error_response(_program_failure(exc, request_id), request_id)

    return endpoint


async def _http_exception(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    messages = {404: "no such route; see /openapi.json", 405: "method not allowed on this route"}
    error = ServeError(status, messages.get(status, "request failed"))
    response = _error_response(error, request.scope.get("dspyo3.request_id"))
    if isinstance(exc, HTTPException) and exc.headers:
        response.headers.update(exc.headers)
    return response


def _load_slots(config: ServeConfig, sources: Mapping[str, ProgramSource] | None, registry: str | None,
                trust_registry: bool) -> tuple[dict[str, ProgramSlot], dict[str, ProgramSource]]:
    resolved: dict[str, ProgramSource] = {}
    entries: list[tuple[str, ProgramSource, ProgramConfig | None]] = []
    if sources is not None and not config.programs:
        entries = [(name, source, None) for name, source in sources.items() if not name.endswith(":b")]
    else:
        for program in config.programs:
            source = sources.get(program.name) if sources is not None and program.name is not None else None
            if source is None:
                from dspyo3_production.serve.targets import resolve_target

                source = resolve_target(program.target, registry=registry, trust_registry=trust_registry)
            entries.append((program.name or str(source.name), source, program))
    slots: dict[str, ProgramSlot] = {}
    for name, source, entry in entries:
        if name in slots:
            raise ValueError(f"two programs are served as {name!r}; give one another name (NAME=target)")
        version = source.current()
        module = source.load(version)
        b_kwargs: dict[str, Any] = {}
        if entry is not None and entry.ab is not None:
            b_source = sources.get(f"{name}:b") if sources is not None else None
            if b_source is None:
                from dspyo3_production.serve.targets import resolve_target

                b_source = resolve_target(entry.ab.target, registry=registry, trust_registry=trust_registry)
            b_version = b_source.current()
            b_kwargs = {"b_version": b_version, "b_module": b_source.load(b_version), "b_weight": entry.ab.weight}
            resolved[f"{name}:b"] = b_source
        slots[name] = ProgramSlot(name, version, module, stage=getattr(source, "stage", None),
                                  max_in_flight=config.max_in_flight, max_queue=config.max_queue, **b_kwargs)
        resolved[name] = source
    return slots, resolved


def create_app(config: ServeConfig, *, sources: Mapping[str, ProgramSource] | None = None, tenants: Any = None,
               metrics: Metrics | None = None, registry: str | None = None,
               trust_registry: bool = False) -> Starlette:
    """The ASGI app serving ``config.programs``.

    Args:
        config: limits, programs, tenants (:class:`ServeConfig`).
        sources: program sources by URL name, instead of resolving each ``config.programs`` target
            (:func:`~dspyo3_production.serve.targets.resolve_target`); with no ``config.programs``, every source is
            served with default settings. A program's B arm may be given as ``"NAME:b"``.
        tenants: the tenant gate (API keys, rate limits, budgets); default: ``TenantGate.from_config(config)``
            (None when no tenant is configured: requests need no key).
        metrics: where the production and HTTP metrics go (default: the active production stack's, else the
            process-wide ones).
        registry, trust_registry: how registry targets are resolved (see ``resolve_target``).

    Every program version is loaded now; a target that cannot be loaded raises here
    (:class:`~dspyo3_core.sources.ProgramSourceError`). If no production stack is active, the one the
    ``[production]`` config describes (or metrics and logs only) is enabled, without the per-module DSPy
    callback unless ``[production] module_callbacks = true``: any global DSPy callback makes DSPy inspect every
    module call's arguments, about a third of a served request's CPU, and the service already measures and logs
    each request and each LM call.
    """
    from dspyo3_production.pipeline import installed

    production = installed()  # a stack the caller enabled is used as it is
    if production is None:
        from dspyo3_production.pipeline import Production
        from dspyo3_production.settings import from_settings

        production = production_stack.enable(from_settings(module_callbacks=False)
                                             or Production(metrics=metrics or True, module_callbacks=False))
    if metrics is None:
        metrics = production.metrics if isinstance(production.metrics, Metrics) else default_metrics()
    if tenants is None and config.tenants:
        from dspyo3_production.serve.tenants import TenantGate

        tenants = TenantGate.from_config(config)
    slots, resolved = _load_slots(config, sources, registry, trust_registry)
    service = _Service(config, slots, resolved, tenants, metrics)
    for program in config.programs:  # smoke inputs by URL name (names derived from targets too)
        if program.name is None and program.smoke is not None:
            for name, source in resolved.items():
                if getattr(source, "reference", None) == program.target or name == program.target:
                    service.smoke[name] = program.smoke
    wrap = _endpoint
    routes = [
        Route("/v1/programs", wrap(service, service.programs), methods=["GET"]),
        Route("/v1/programs/{name}", wrap(service, service.predict), methods=["POST"]),
        Route("/v1/programs/{name}/stream", wrap(service, service.stream), methods=["POST"]),
        Route("/v1/programs/{name}/batch", wrap(service, service.batch), methods=["POST"]),
        Route("/openapi.json", wrap(service, service.openapi), methods=["GET"]),
        Route("/docs", wrap(service, service.docs), methods=["GET"]),
        Route("/healthz", wrap(service, service.healthz), methods=["GET"]),
        Route("/readyz", wrap(service, service.readyz), methods=["GET"]),
        Route("/metrics", wrap(service, service.metrics_endpoint), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=service.lifespan,
                    exception_handlers={HTTPException: _http_exception})
    app.add_middleware(_Envelope, http=_HttpMetrics.of(metrics))
    app.state.service = service
    app.state.slots = slots
    app.state.sources = resolved
    app.state.config = config
    app.state.tenants = tenants
    return app
