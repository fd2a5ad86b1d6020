"""Prometheus metrics for DSPy programs: LM calls, cache tiers, modules, tools, retrieval, breakers, budgets, A/B.

Every metric lives in one :class:`Metrics` object (by default on ``prometheus_client``'s global registry, so an
existing ``/metrics`` endpoint shows them too). Scrape them with :func:`exposition`, the ASGI app from
:func:`make_asgi_app`, or ``dspyo3 metrics serve --port 9464``.

Multi-process mode (gunicorn/uvicorn workers, ``dspy.Parallel`` in processes): set ``PROMETHEUS_MULTIPROC_DIR`` to
an empty directory before the processes start; every process writes its samples there and any one of them (or
``dspyo3 metrics serve`` pointed at the same directory) serves the sum. Call :func:`mark_process_dead` when a
worker exits, as ``prometheus_client`` documents.

Exemplars: with tracing on, the LM, module, tool and HTTP latency histograms keep, per bucket, the trace and span
id of the last sampled span observed in it, so a dashboard can jump from a slow bucket to a trace. Exemplars exist
only in the OpenMetrics exposition (``Accept: application/openmetrics-text``, see :func:`exposition`), never in
the classic 0.0.4 text, and never in multi-process mode: ``prometheus_client``'s per-process files have no room for
them, so they are dropped there.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from dspyo3_core import spans

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Histogram buckets (seconds) for LM, module, tool and retrieval latency."""

CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}
"""Values of the ``dspyo3_circuit_state`` gauge."""


def multiprocess_dir() -> str | None:
    """The multi-process directory (``PROMETHEUS_MULTIPROC_DIR``), when multi-process mode is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _ensure_directory(path: str) -> None:
    """Create the multi-process directory if it is missing (prometheus_client writes its per-process files there
    and fails at the first sample otherwise); a path that cannot be a directory is a clear error."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"PROMETHEUS_MULTIPROC_DIR={path} cannot be used as the metrics directory "
                         f"({exc.strerror or exc}); point it at a writable directory") from None


def current_exemplar(multiprocess: bool | None = None) -> dict[str, str] | None:
    """``{"trace_id": ..., "span_id": ...}`` of the current span when tracing is on and that span is sampled: the
    ``exemplar=`` to pass to ``Histogram.observe`` (None otherwise, and in multi-process mode, which cannot keep
    exemplars). ``multiprocess``: the metrics' mode when the caller knows it (saves reading the environment)."""
    if spans.TRACER is None:
        return None
    ref = spans.CURRENT.get()
    if ref is None or not ref.sampled or ref.remote:
        return None
    if multiprocess is None:
        multiprocess = multiprocess_dir() is not None
    if multiprocess:
        return None
    ids = spans.current_ids()
    return None if ids is None else {"trace_id": ids[0], "span_id": ids[1]}


def _counted(counter: Counter | None, *labels: str) -> float:
    """This process's ``_total`` sample of ``counter`` for one label set (0 when it was never counted)."""
    for family in counter.collect() if counter is not None else ():
        for sample in family.samples:
            if sample.name.endswith("_total") and tuple(sample.labels.values()) == labels:
                return float(sample.value)
    return 0.0


class Metrics:
    """The dspyo3 metric families, registered once on ``registry``.

    Args:
        registry: where to register (default: ``prometheus_client``'s global ``REGISTRY``). Tests pass a fresh
            ``CollectorRegistry()`` so each gets its own counters.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else REGISTRY
        r = self.registry
        self.multiprocess = multiprocess_dir() is not None
        if self.multiprocess:  # every sample goes to prometheus_client's per-process files
            _ensure_directory(multiprocess_dir() or "")
            self.lm_requests = Counter("dspyo3_lm_requests", _LM_DOCS["requests"], ["model", "status"], registry=r)
            self.lm_duration = Histogram("dspyo3_lm_request_duration_seconds", _LM_DOCS["duration"], ["model"],
                                         buckets=LATENCY_BUCKETS, registry=r)
            self.lm_tokens = Counter("dspyo3_lm_tokens", _LM_DOCS["tokens"], ["model", "kind"], registry=r)
            self.lm_cost = Counter("dspyo3_lm_cost_usd", _LM_DOCS["cost"], ["model"], registry=r)
            self._lm: LMCallCollector | None = None
        else:  # the per-call hot path: one lock, plain Python numbers, turned into samples at scrape time
            self._lm = LMCallCollector()
            r.register(self._lm)
        self.cache_lock = threading.Lock()  # guards cache_counts (held for one dict update at a time)
        if self.multiprocess:
            self.cache_requests: Counter | None = Counter("dspyo3_cache_requests", _CACHE_DOC, ["tier", "result"],
                                                          registry=r)
            self.cache_counts: dict[tuple[str, str], int] | None = None
        else:  # plain numbers under one lock, turned into samples at scrape time (a lookup is a hot path)
            self.cache_requests = None
            self.cache_counts = {}
            r.register(_CacheCollector(self.cache_counts, self.cache_lock))
        self.module_calls = Counter("dspyo3_module_calls", "DSPy module calls by module class and outcome",
                                    ["module", "status"], registry=r)
        self.module_duration = Histogram("dspyo3_module_duration_seconds", "DSPy module call latency",
                                         ["module"], buckets=LATENCY_BUCKETS, registry=r)
        self.tool_calls = Counter("dspyo3_tool_calls", "Tool calls by tool and outcome", ["tool", "status"],
                                  registry=r)
        self.tool_duration = Histogram("dspyo3_tool_duration_seconds", "Tool call latency", ["tool"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.retrieval_requests = Counter("dspyo3_retrieval_requests", "Retrieval calls by retriever and outcome",
                                          ["retriever", "status"], registry=r)
        self.retrieval_duration = Histogram("dspyo3_retrieval_duration_seconds", "Retrieval latency",
                                            ["retriever"], buckets=LATENCY_BUCKETS, registry=r)
        self.retrieval_passages = Counter("dspyo3_retrieval_passages", "Passages returned by retrievers",
                                          ["retriever"], registry=r)
        self.circuit_state = Gauge("dspyo3_circuit_state", "Circuit breaker state (0 closed, 1 half-open, 2 open)",
                                   ["key"], registry=r, multiprocess_mode="max")
        self.circuit_transitions = Counter("dspyo3_circuit_transitions", "Circuit breaker state changes",
                                           ["key", "state"], registry=r)
        self.fallbacks = Counter("dspyo3_lm_fallbacks", "Calls sent to a fallback LM because a circuit was open",
                                 ["model", "fallback"], registry=r)
        self.budget_rejections = Counter("dspyo3_budget_rejections", "Calls refused by a budget before they ran",
                                         ["budget"], registry=r)
        self.ab_requests = Counter("dspyo3_ab_requests", "A/B routed requests by experiment, arm and outcome",
                                   ["experiment", "arm", "status"], registry=r)
        self.ab_duration = Histogram("dspyo3_ab_duration_seconds", "A/B routed request latency by arm",
                                     ["experiment", "arm"], buckets=LATENCY_BUCKETS, registry=r)
        self.ab_score = Histogram("dspyo3_ab_score", "Scores recorded for A/B arms (router.record_score)",
                                  ["experiment", "arm"], buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                                                                  1.0), registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}

    def count_cache(self, tier: str, result: str, n: int = 1) -> None:
        """Count ``n`` cache lookups of ``tier`` with ``result`` (``hit``, ``miss``, ``error``, or ``rejected``: an
        entry was there but not served); ``n=0`` makes the sample exist at 0."""
        counts = self.cache_counts
        if counts is None:
            self.child(self.cache_requests, tier, result).inc(n)
            return
        key = (tier, result)
        with self.cache_lock:
            counts[key] = counts.get(key, 0) + n

    def cache_requests_total(self, tier: str, result: str) -> float:
        """``dspyo3_cache_requests_total{tier, result}`` as this process counted it."""
        if self.cache_counts is None:
            return _counted(self.cache_requests, tier, result)
        return float(self.cache_counts.get((tier, result), 0))

    def child(self, family: Any, *labels: str) -> Any:
        """``family.labels(*labels)``, memoised (the per-call hot path skips prometheus_client's label lookup)."""
        key = (id(family), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*labels)
        return found

    def observe_lm(self, model: str, status: str, seconds: float, usage: dict[str, Any] | None,
                   cost: float | None) -> None:
        """Record one LM call: outcome, latency, billed tokens and cost (``usage``/``cost`` empty on cache hits)."""
        prompt = completion = 0
        if usage:
            prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
            completion = usage.get("completion_tokens") or usage.get("output_tokens") or 0
        self.record_lm(model, status, seconds, prompt, completion, cost)

    def record_lm(self, model: str, status: str, seconds: float, prompt_tokens: int, completion_tokens: int,
                  cost: float | None, exemplar: tuple[str, str] | None = None) -> None:
        """:meth:`observe_lm` with the token counts already read from the usage.

        ``exemplar``: ``(trace id, span id)`` (hex) of the call's sampled span, kept on its latency bucket and shown
        in the OpenMetrics exposition; ignored in multi-process mode (``prometheus_client`` cannot store
        exemplars in its per-process files)."""
        prompt, completion = prompt_tokens, completion_tokens
        if self._lm is not None:  # the collector (outside multi-process mode): one call, one lock
            self._lm.record(model, status, seconds, prompt, completion, cost or 0.0, exemplar)
            return
        self.child(self.lm_requests, model, status).inc()
        self.child(self.lm_duration, model).observe(seconds)
        if prompt:
            self.child(self.lm_tokens, model, "prompt").inc(prompt)
        if completion:
            self.child(self.lm_tokens, model, "completion").inc(completion)
        if cost:
            self.child(self.lm_cost, model).inc(cost)

    def lm_requests_total(self, model: str, status: str) -> float:
        """``dspyo3_lm_requests_total{model, status}`` as this process counted it."""
        if self._lm is not None:
            return float(self._lm.requests.get((model, status), 0))
        return _counted(self.lm_requests, model, status)


_LM_DOCS = {
    "requests": "LM calls by model and outcome (ok, cache_hit, or the error class)",
    "duration": "LM call latency (cache hits included)",
    "tokens": "Billed tokens by model and kind (prompt, completion)",
    "cost": "Billed USD by model",
}


_CACHE_DOC = "Cache lookups by tier (memory, redis, disk) and result (hit, miss, error, rejected)"


class _CacheCollector(Collector):
    """``dspyo3_cache_requests_total`` from a :class:`Metrics`' plain ``cache_counts``."""

    def __init__(self, counts: dict[tuple[str, str], int], lock: threading.Lock) -> None:
        self.counts = counts
        self.lock = lock

    def describe(self) -> list[Metric]:
        """The family (no samples)."""
        return [CounterMetricFamily("dspyo3_cache_requests", _CACHE_DOC, labels=["tier", "result"])]

    def collect(self) -> list[Metric]:
        """The current samples."""
        (family,) = self.describe()
        with self.lock:
            counts = dict(self.counts)
        for (tier, result), n in sorted(counts.items()):
            family.add_metric([tier, result], n)  # type: ignore[attr-defined]
        return [family]


class LMCallCollector(Collector):
    """The four LM-call families, accumulated in plain Python numbers under one lock and turned into Prometheus
    samples when scraped (a call costs one dict lookup and a few additions instead of six metric updates)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self._models: dict[str, list[Any]] = {}  # model -> [bucket counts, sum s, count, prompt, completion, usd]
        self._exemplars: dict[tuple[str, int], Exemplar] = {}  # (model, bucket index) -> the last one observed
        self._lock = threading.Lock()

    def record(self, model: str, status: str, seconds: float, prompt: int, completion: int, cost: float,
               exemplar: tuple[str, str] | None = None) -> None:
        """Add one call (``exemplar``: its span's ``(trace id, span id)``, kept as its bucket's exemplar)."""
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        found = None if exemplar is None else Exemplar({"trace_id": exemplar[0], "span_id": exemplar[1]}, seconds,
                                                       time.time())
        with self._lock:
            if found is not None:
                self._exemplars[(model, index)] = found
            key = (model, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            row = self._models.get(model)
            if row is None:
                row = self._models[model] = [[0] * (len(LATENCY_BUCKETS) + 1), 0.0, 0, 0, 0, 0.0]
            row[0][index] += 1
            row[1] += seconds
            row[2] += 1
            row[3] += prompt
            row[4] += completion
            row[5] += cost

    def describe(self) -> list[Metric]:
        """The families (no samples), for the registry's duplicate-name check."""
        return [CounterMetricFamily("dspyo3_lm_requests", _LM_DOCS["requests"], labels=["model", "status"]),
                HistogramMetricFamily("dspyo3_lm_request_duration_seconds", _LM_DOCS["duration"], labels=["model"]),
                CounterMetricFamily("dspyo3_lm_tokens", _LM_DOCS["tokens"], labels=["model", "kind"]),
                CounterMetricFamily("dspyo3_lm_cost_usd", _LM_DOCS["cost"], labels=["model"])]

    def collect(self) -> list[Metric]:
        """The current samples."""
        requests, duration, tokens, cost = self.describe()
        with self._lock:
            counts = dict(self.requests)
            rows = {model: [list(row[0]), *row[1:]] for model, row in self._models.items()}
            exemplars = dict(self._exemplars)
        for (model, status), n in sorted(counts.items()):
            requests.add_metric([model, status], n)  # type: ignore[attr-defined]
        for model, (buckets, total, _count, prompt, completion, usd) in sorted(rows.items()):
            cumulative: list[Any] = []
            acc = 0
            for index, (bound, count) in enumerate(zip((*LATENCY_BUCKETS, math.inf), buckets, strict=True)):
                acc += count
                found = exemplars.get((model, index))
                bucket = floatToGoString(bound)  # type: ignore[no-untyped-call]
                cumulative.append((bucket, acc) if found is None else (bucket, acc, found))
            duration.add_metric([model], cumulative, sum_value=total)  # type: ignore[attr-defined]
            tokens.add_metric([model, "prompt"], prompt)  # type: ignore[attr-defined]
            tokens.add_metric([model, "completion"], completion)  # type: ignore[attr-defined]
            cost.add_metric([model], usd)  # type: ignore[attr-defined]
        return [requests, duration, tokens, cost]


_default: Metrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> Metrics:
    """The process-wide :class:`Metrics` on the global registry (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Metrics()
        return _default


def scrape_registry(metrics: Metrics | None = None) -> CollectorRegistry:
    """The registry a scrape should read: in multi-process mode a fresh one that sums every process's files,
    else ``metrics.registry`` (default: the global one)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return (metrics or default_metrics()).registry


def exposition(metrics: Metrics | None = None, accept: str | None = None) -> bytes:
    """The exposition of every metric (what ``/metrics`` returns) in the format an HTTP ``Accept`` header asks
    for: the Prometheus 0.0.4 text by default, OpenMetrics (the only one that carries exemplars) for
    ``application/openmetrics-text``. :func:`exposition_content_type` is the matching ``Content-Type``."""
    if not accept:
        return generate_latest(scrape_registry(metrics))
    encoder, _content_type = choose_encoder(accept)
    return encoder(scrape_registry(metrics))


def exposition_content_type(accept: str | None = None) -> str:
    """The ``Content-Type`` of :func:`exposition`'s answer to ``accept``."""
    return choose_encoder(accept or "")[1]


def make_asgi_app(metrics: Metrics | None = None) -> Callable[..., Any]:
    """An ASGI app serving :func:`exposition` (mount it at ``/metrics`` in Starlette/FastAPI)."""
    from prometheus_client import make_asgi_app as _make

    return _make(registry=scrape_registry(metrics))


def serve(port: int, addr: str = "127.0.0.1", metrics: Metrics | None = None) -> Any:
    """Serve ``/metrics`` on ``addr:port`` in a daemon thread; returns the server (``.shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=addr, registry=scrape_registry(metrics))
    return server


def mark_process_dead(pid: int | None = None) -> None:
    """Multi-process mode: drop a finished worker's live gauges (call from the server's child-exit hook)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid if pid is not None else os.getpid())  # type: ignore[no-untyped-call]


__all__ = [
    "CIRCUIT_STATES",
    "CONTENT_TYPE_LATEST",
    "LATENCY_BUCKETS",
    "Metrics",
    "current_exemplar",
    "default_metrics",
    "exposition",
    "exposition_content_type",
    "make_asgi_app",
    "mark_process_dead",
    "multiprocess_dir",
    "scrape_registry",
    "serve",
]
