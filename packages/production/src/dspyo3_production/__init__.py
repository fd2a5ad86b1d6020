"""dspyo3-production: DSPy in production — a tiered cache under ``dspy.cache`` (native memory, Redis, disk),
Prometheus metrics, structured JSON logs with trace ids and secret redaction, circuit breakers with fallback,
cost tracking with budgets, and A/B routing. Everything that happens around an LM call is one pluggy wrapper on
dspyo3-core's ``dspyo3_lm_call`` hook, so installing the package and enabling it (``enable()`` or a
``[production]`` config table) turns it on for every LM built by dspyo3 (``build_lm``, ``HookedLM``, ``NativeLM``).
"""

from importlib import resources

from dspyo3_production.breaker import CircuitBreaker, CircuitOpenError
from dspyo3_production.cache import RedisTier, TieredCache, install_cache
from dspyo3_production.codec import Codec, UnsafeValueError
from dspyo3_production.cost import Budget, BudgetExceededError, CostTracker, attribute
from dspyo3_production.logs import JsonFormatter, RedactingFilter, Redactor, configure_logging, trace
from dspyo3_production.metrics import Metrics, default_metrics, exposition, make_asgi_app, serve
from dspyo3_production.routing import ABRouter
from dspyo3_production.stack import Production, active, disable, enable

__version__ = "0.1.0"


def dashboard_json() -> str:
    """The Grafana dashboard (JSON text) for the ``dspyo3_*`` metrics."""
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
    "RedisTier",
    "TieredCache",
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
    "trace",
]
