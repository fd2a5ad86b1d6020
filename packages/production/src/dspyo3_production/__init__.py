"""dspyo3-production: production DSPy: memory + Redis cache under DSPy's cache, Prometheus metrics, structured logs,
circuit breakers, cost and budgets, A/B routing.

This package is a skeleton: it installs, imports and registers its plugin (the ``dspyo3 production`` command
group) through the ``dspyo3`` entry-point group. It claims no features yet.
"""

__version__ = "0.1.0"
