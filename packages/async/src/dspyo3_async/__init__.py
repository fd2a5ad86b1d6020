"""dspyo3-async: async DSPy: asyncio bridge, concurrency limits, rate limiting, backpressure, cancellation and token
streaming.

This package is a skeleton: it installs, imports and registers its plugin (the ``dspyo3 async`` command
group) through the ``dspyo3`` entry-point group. It claims no features yet.
"""

__version__ = "0.1.0"
