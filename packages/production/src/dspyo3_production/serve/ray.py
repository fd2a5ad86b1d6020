"""``dspyo3 serve`` on Ray Serve: :func:`deployment` returns a Ray Serve application whose replicas each run the
same ASGI app as ``dspyo3 serve`` (:func:`~dspyo3_production.serve.app.create_app`), so endpoints, limits,
tenants and the production stack behave the same; state shared between replicas (cache tier, shared rate limits,
budgets) goes through Redis (``[redis] url``), as it does between uvicorn workers.

    from ray import serve
    from dspyo3_production.serve.config import ServeConfig, ProgramConfig
    from dspyo3_production.serve.ray import deployment

    app = deployment(ServeConfig(programs=(ProgramConfig("registry:qa@prod"),)), num_replicas=4)
    serve.run(app, route_prefix="/")

Each response carries ``x-dspyo3-replica``: the Ray Serve replica that answered (its replica id), so a client or
a load test can see requests spread over replicas. Only Ray's public API is used (``serve.deployment``,
``serve.ingress`` with a deployment class that builds its ASGI app on the replica, ``serve.get_replica_context``).
Ray itself is imported when :func:`deployment` is called.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dspyo3_production.serve.config import ServeConfig

__all__ = ["REPLICA_HEADER", "deployment"]

REPLICA_HEADER = "x-dspyo3-replica"

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]


class ReplicaHeader:
    """ASGI wrapper adding ``x-dspyo3-replica: <replica>`` to every HTTP response of ``app`` (other attributes,
    e.g. ``add_exception_handler`` that Ray Serve calls, are the wrapped app's)."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.replica = replica.encode("ascii", "replace")

    def __getattr__(self, name: str) -> Any:
        if name == "app":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.app, name)

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_replica(message: _Message) -> None:
            if message.get("type") == "http.response.start":
                headers = [*message.get("headers", ()), (REPLICA_HEADER.encode(), self.replica)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_replica)


class DspyO3Ingress:
    """The Ray Serve deployment class: keeps the environment ``dspyo3 serve`` would pass its worker processes and
    builds the app from it on each replica (``__serve_build_asgi_app__``, called by Ray after ``__init__``)."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        self.environment = dict(environment)

    def __serve_build_asgi_app__(self) -> Any:
        """The replica's ASGI app: :func:`~dspyo3_production.serve.app.app_from_environment` on the environment
        given at bind time, wrapped to name the replica in every response."""
        from ray import serve

        from dspyo3_production.serve.app import app_from_environment

        os.environ.update(self.environment)  # the replica is a process of its own
        return ReplicaHeader(app_from_environment(), serve.get_replica_context().replica_tag)


def deployment(config: ServeConfig, *, num_replicas: int = 2, autoscaling_config: Mapping[str, Any] | None = None,
               ray_actor_options: Mapping[str, Any] | None = None, registry: str | None = None,
               trust_registry: bool = False, name: str = "dspyo3", **deployment_options: Any) -> Any:
    """A Ray Serve application (``serve.run(app, route_prefix="/")``) whose replicas serve ``config``'s programs.

    Args:
        config: what to serve, as for ``dspyo3 serve`` (``host``/``port``/``workers`` are not used: Ray Serve's
            HTTP proxy listens, on the address given to ``serve.start(http_options=...)``).
        num_replicas: fixed number of replicas (ignored when ``autoscaling_config`` is given).
        autoscaling_config: Ray Serve autoscaling settings, e.g. ``{"min_replicas": 1, "max_replicas": 8,
            "target_ongoing_requests": 32}``.
        ray_actor_options: per-replica resources and ``runtime_env`` (``{"num_cpus": 0.5}``; Ray's default is one
            CPU per replica). ``module:attr`` targets must be importable on every replica (a package installed on
            the cluster, or ``runtime_env={"working_dir": ...}``).
        registry: the registry directory or URL for ``NAME@REF`` targets (None: the configured one).
        trust_registry: let the registry import the program factory its metadata records.
        name: the deployment's name.
        **deployment_options: any other ``serve.deployment`` option (``max_queued_requests``,
            ``health_check_period_s``, ...); they win over the defaults below.

    Two Ray defaults are set from ``config`` so Ray does not throttle before the app's own backpressure does:
    ``max_ongoing_requests`` = ``max_in_flight + max_queue`` (Ray's default is 5 per replica; beyond the app's
    bounds callers get its 503 with ``Retry-After``), and ``graceful_shutdown_timeout_s`` = ``request_timeout``
    (a replica being stopped lets its requests in flight finish).

    Returns:
        a bound Ray Serve ``Application``.

    Raises:
        ImportError: Ray Serve is not installed (``pip install 'ray[serve]'``).
    """
    from ray import serve

    from dspyo3_production.serve.app import config_to_env

    if autoscaling_config is None and (not isinstance(num_replicas, int) or num_replicas < 1):
        raise ValueError(f"num_replicas must be an integer >= 1, not {num_replicas!r}")
    options: dict[str, Any] = {"name": name, "max_ongoing_requests": config.max_in_flight + config.max_queue,
                               "graceful_shutdown_timeout_s": float(config.request_timeout)}
    if autoscaling_config is not None:
        options["autoscaling_config"] = dict(autoscaling_config)
    else:
        options["num_replicas"] = num_replicas
    if ray_actor_options is not None:
        options["ray_actor_options"] = dict(ray_actor_options)
    options.update(deployment_options)
    environment = dict(config_to_env(config, registry=registry, trust_registry=trust_registry))
    ingress = serve.ingress()(DspyO3Ingress)
    make_deployment: Any = serve.deployment  # typed as a decorator overload; called with options here
    return make_deployment(ingress, **options).bind(environment)
