"""``dspyo3 serve``: DSPy programs as a production HTTP service (Starlette, ASGI).

:func:`create_app` builds the ASGI app for a :class:`ServeConfig`; every program is a :class:`ProgramSlot`
(current version, optional A/B arm, bounded in-flight and queue); errors are :class:`ServeError`. Names are
imported on first use, so importing this package does not import Starlette or DSPy.
"""

from typing import TYPE_CHECKING

from dspyo3_core.lazy import lazy_exports

if TYPE_CHECKING:
    from dspyo3_production.serve.app import app_from_environment, config_from_env, config_to_env, create_app
    from dspyo3_production.serve.client import (
        AsyncClient,
        Client,
        Prediction,
        ProgramInfo,
        ServeClientError,
        StreamChunk,
        StreamEvent,
        StreamStatus,
    )
    from dspyo3_production.serve.config import ABSplit, ProgramConfig, ServeConfig, TenantConfig, serve_config
    from dspyo3_production.serve.errors import ServeError
    from dspyo3_production.serve.ray import deployment
    from dspyo3_production.serve.slots import ProgramSlot
    from dspyo3_production.serve.tenants import Tenant, TenantGate, hash_key

__all__ = [
    "AsyncClient",
    "Client",
    "Prediction",
    "ProgramInfo",
    "ServeClientError",
    "StreamChunk",
    "StreamEvent",
    "StreamStatus",
    "ABSplit",
    "ProgramConfig",
    "ProgramSlot",
    "ServeConfig",
    "ServeError",
    "Tenant",
    "TenantConfig",
    "TenantGate",
    "app_from_environment",
    "config_from_env",
    "config_to_env",
    "create_app",
    "deployment",
    "hash_key",
    "serve_config",
]

_WHERE = {
    "app_from_environment": "dspyo3_production.serve.app",
    "config_from_env": "dspyo3_production.serve.app",
    "config_to_env": "dspyo3_production.serve.app",
    "create_app": "dspyo3_production.serve.app",
    "AsyncClient": "dspyo3_production.serve.client",
    "Client": "dspyo3_production.serve.client",
    "Prediction": "dspyo3_production.serve.client",
    "ProgramInfo": "dspyo3_production.serve.client",
    "ServeClientError": "dspyo3_production.serve.client",
    "StreamChunk": "dspyo3_production.serve.client",
    "StreamEvent": "dspyo3_production.serve.client",
    "StreamStatus": "dspyo3_production.serve.client",
    "ABSplit": "dspyo3_production.serve.config",
    "ProgramConfig": "dspyo3_production.serve.config",
    "ServeConfig": "dspyo3_production.serve.config",
    "TenantConfig": "dspyo3_production.serve.config",
    "serve_config": "dspyo3_production.serve.config",
    "ServeError": "dspyo3_production.serve.errors",
    "ProgramSlot": "dspyo3_production.serve.slots",
    "Tenant": "dspyo3_production.serve.tenants",
    "TenantGate": "dspyo3_production.serve.tenants",
    "hash_key": "dspyo3_production.serve.tenants",
    "deployment": "dspyo3_production.serve.ray",
}

__getattr__, __dir__ = lazy_exports(__name__, _WHERE, __all__)
