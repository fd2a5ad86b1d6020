"""dspyo3-production: DSPy in production — a tiered cache under ``dspy.cache`` (native memory, Redis, disk),
Prometheus metrics, structured JSON logs with trace ids and secret redaction, circuit breakers with fallback,
cost tracking with budgets, and A/B routing. Everything that happens around an LM call is one pluggy wrapper on
dspyo3-core's ``dspyo3_lm_call`` hook, so installing the package and enabling it (``enable()`` or a
``[production]`` config table) turns it on for every LM built by dspyo3 (``build_lm``, ``HookedLM``, ``NativeLM``).
"""

from typing import TYPE_CHECKING

from dspyo3_core.lazy import lazy_exports

if TYPE_CHECKING:
    from dspyo3_production.breaker import CircuitBreaker, CircuitOpenError
    from dspyo3_production.cache import TieredCache, install_cache
    from dspyo3_production.codec import Codec, UnsafeValueError
    from dspyo3_production.cost import Budget, BudgetExceededError, CostTracker, attribute
    from dspyo3_production.logs import JsonFormatter, RedactingFilter, Redactor, configure_logging, trace
    from dspyo3_production.metrics import Metrics, default_metrics, exposition, make_asgi_app, serve
    from dspyo3_production.redis_tier import RedisTier
    from dspyo3_production.routing import ABRouter
    from dspyo3_production.stack import Production, active, disable, enable
    from dspyo3_production.tracing import Recorder, TracingConfig, span

__version__ = "0.1.0"


def dashboard_json() -> str:
    """The Grafana dashboard (JSON text) for the ``dspyo3_*`` metrics."""
    from importlib import resources

    return resources.files("dspyo3_production").joinpath("grafana/dashboard.json").read_text()


__all__ = [
    "ABRouter",
    "Budget",
    "BudgetExceededError",
    "CircuitBreaker",
    "CircuitOpenError",
    "Codec",
    "CostTracker",
    "JsonFormatter",
    "Metrics",
    "Production",
    "RedactingFilter",
    "Redactor",
    "Recorder",
    "RedisTier",
    "TieredCache",
    "TracingConfig",
    "UnsafeValueError",
    "active",
    "attribute",
    "configure_logging",
    "dashboard_json",
    "default_metrics",
    "disable",
    "enable",
    "exposition",
    "install_cache",
    "make_asgi_app",
    "serve",
    "span",
    "trace",
]

_WHERE = {
    "CircuitBreaker": "dspyo3_production.breaker",
    "CircuitOpenError": "dspyo3_production.breaker",
    "RedisTier": "dspyo3_production.redis_tier",
    "TieredCache": "dspyo3_production.cache",
    "install_cache": "dspyo3_production.cache",
    "Codec": "dspyo3_production.codec",
    "UnsafeValueError": "dspyo3_production.codec",
    "Budget": "dspyo3_production.cost",
    "BudgetExceededError": "dspyo3_production.cost",
    "CostTracker": "dspyo3_production.cost",
    "attribute": "dspyo3_production.cost",
    "JsonFormatter": "dspyo3_production.logs",
    "RedactingFilter": "dspyo3_production.logs",
    "Redactor": "dspyo3_production.logs",
    "configure_logging": "dspyo3_production.logs",
    "trace": "dspyo3_production.logs",
    "Metrics": "dspyo3_production.metrics",
    "default_metrics": "dspyo3_production.metrics",
    "exposition": "dspyo3_production.metrics",
    "make_asgi_app": "dspyo3_production.metrics",
    "serve": "dspyo3_production.metrics",
    "ABRouter": "dspyo3_production.routing",
    "Production": "dspyo3_production.stack",
    "active": "dspyo3_production.stack",
    "disable": "dspyo3_production.stack",
    "enable": "dspyo3_production.stack",
    "Recorder": "dspyo3_production.tracing",
    "TracingConfig": "dspyo3_production.tracing",
    "span": "dspyo3_production.tracing",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, __all__)
