"""The ``production`` plugin of dspyo3: the ``dspyo3_lm_call`` wrapper and the ``cache`` / ``metrics`` commands."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import click

from dspyo3_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from dspyo3_core.lm import LMCall


_wrapper: Callable[[LMCall], Generator[None, Any, Any]] | None = None


@hookimpl(wrapper=True)
def dspyo3_lm_call(call: LMCall) -> Generator[None, Any, Any]:
    """The ``dspyo3_lm_call`` wrapper: runs the active production stack (cache scope, breaker, budgets, metrics,
    logs) around the LM call; it declares itself inactive (``dspyo3_active``) while no stack is configured.

    The stack (and DSPy) is imported on the first LM call, not when the plugin loads, so CLI start-up stays fast."""
    global _wrapper
    wrapper = _wrapper
    if wrapper is None:
        from dspyo3_production.stack import lm_call_wrapper

        wrapper = _wrapper = lm_call_wrapper
    return (yield from wrapper(call))


def _active() -> bool:
    from dspyo3_production.stack import active

    return active() is not None


dspyo3_lm_call.dspyo3_active = _active  # type: ignore[attr-defined]
dspyo3_lm_call.dspyo3_async_aware = True  # type: ignore[attr-defined]  # deferred (on-loop) async calls: see stack


def _redis_tier(redis_url: str | None, namespace: str | None) -> Any:
    from dspyo3_core.config import load_settings
    from dspyo3_production.redis_tier import RedisTier

    settings = load_settings()
    url = redis_url or settings.redis_url
    if not url:  # nothing is wrong with the command line: the setup lacks a Redis (exit 1)
        raise click.ClickException("no Redis configured: pass --redis-url, set DSPYO3_REDIS_URL, or add [redis] url "
                                   "to dspyo3.toml")
    table = settings.tables.get("production") or {}
    cache_table: dict[str, Any] = table["cache"] if isinstance(table.get("cache"), dict) else {}
    ns = namespace or cache_table.get("namespace") or table.get("namespace") or "dspyo3"
    try:
        return RedisTier(url, namespace=str(ns), timeout=2.0)
    except ValueError as exc:  # redis-py's "URL must specify one of the following schemes", a bad port ...
        fix = "use redis://HOST:PORT/DB, rediss://... or unix:///path/to/redis.sock"
        if redis_url:  # typed on the command line: a malformed option value (exit 2)
            raise click.BadParameter(f"{exc}; {fix}", param_hint="--redis-url") from None
        raise click.ClickException(f"the configured Redis URL is not valid ({exc}); {fix} in DSPYO3_REDIS_URL or "
                                   "[redis] url") from None


@click.group("cache")
def cache_group() -> None:
    """The shared (Redis) tier of dspyo3's tiered DSPy cache."""


@cache_group.command("stats")
@click.option("--redis-url", default=None, help="Redis URL (default: [redis] url / DSPYO3_REDIS_URL).")
@click.option("--namespace", default=None, help="Key namespace (default: [production.cache] namespace or dspyo3).")
@click.option("--prefix", default="", help="Only count cache keys starting with this.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cache_stats(redis_url: str | None, namespace: str | None, prefix: str, as_json: bool) -> None:
    """Entries and memory of the Redis cache tier."""
    import redis

    tier = _redis_tier(redis_url, namespace)
    try:
        started = time.perf_counter()
        entries = sum(1 for _ in tier.scan(prefix))
        info = tier.client.info("memory")
        out = {
            "redis": tier.client.connection_pool.connection_kwargs.get("host", "?") + ":" + str(
                tier.client.connection_pool.connection_kwargs.get("port", "?")),
            "key_prefix": tier.prefix + prefix,
            "entries": entries,
            "redis_used_memory_bytes": int(info.get("used_memory", 0)),
            "scan_seconds": round(time.perf_counter() - started, 4),
        }
    except (redis.RedisError, OSError) as exc:
        raise click.ClickException(f"cannot reach Redis: {exc}; start it, or check --redis-url / DSPYO3_REDIS_URL / "
                                   "[redis] url") from None
    finally:
        tier.client.close()
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        for key, value in out.items():
            click.echo(f"{key:>24}: {value}")


@cache_group.command("clear")
@click.option("--redis-url", default=None, help="Redis URL (default: [redis] url / DSPYO3_REDIS_URL).")
@click.option("--namespace", default=None, help="Key namespace (default: [production.cache] namespace or dspyo3).")
@click.option("--prefix", default="", help="Only delete cache keys starting with this (default: all of them).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(redis_url: str | None, namespace: str | None, prefix: str, yes: bool) -> None:
    """Delete cached answers from the Redis tier (only keys under the namespace's cache prefix)."""
    import redis

    tier = _redis_tier(redis_url, namespace)
    try:
        if not yes:
            click.confirm(f"delete every key matching {tier.prefix + prefix}* ?", abort=True)
        removed = tier.clear(prefix)
    except (redis.RedisError, OSError) as exc:
        raise click.ClickException(f"cannot reach Redis: {exc}; start it, or check --redis-url / DSPYO3_REDIS_URL / "
                                   "[redis] url") from None
    finally:
        tier.client.close()
    click.echo(f"deleted {removed} cache entr{'y' if removed == 1 else 'ies'} under {tier.prefix + prefix}")


@click.group("metrics")
def metrics_group() -> None:
    """Prometheus metrics of DSPy programs run with dspyo3-production."""


@metrics_group.command("serve")
@click.option("--port", type=int, default=9464, show_default=True, help="Port for /metrics.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--multiprocess-dir", type=click.Path(file_okay=False), default=None,
              help="Serve the sum of every process writing to this PROMETHEUS_MULTIPROC_DIR.")
def metrics_serve(port: int, host: str, multiprocess_dir: str | None) -> None:
    """Serve the Prometheus scrape endpoint until interrupted."""
    import os

    if multiprocess_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir
    from dspyo3_production.metrics import multiprocess_dir as mp_dir
    from dspyo3_production.metrics import serve

    server = serve(port, host)
    mode = f"multi-process ({mp_dir()})" if mp_dir() else "this process"
    click.echo(f"serving metrics of {mode} on http://{host}:{port}/metrics (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


@metrics_group.command("show")
@click.option("--multiprocess-dir", type=click.Path(file_okay=False), default=None,
              help="Print the sum of every process writing to this PROMETHEUS_MULTIPROC_DIR.")
def metrics_show(multiprocess_dir: str | None) -> None:
    """Print the metrics exposition once (this process's, or a multi-process directory's)."""
    import os

    if multiprocess_dir and not os.path.isdir(multiprocess_dir):
        raise click.ClickException(f"no metrics directory {multiprocess_dir}: no program has written metrics there; "
                                   f"run one with PROMETHEUS_MULTIPROC_DIR={multiprocess_dir} and "
                                   "[production] metrics = true first")
    if multiprocess_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir
    from dspyo3_production.metrics import exposition

    click.echo(exposition().decode(), nl=False)


@metrics_group.command("dashboard")
def metrics_dashboard() -> None:
    """Print the Grafana dashboard JSON (import it in Grafana, pick your Prometheus data source)."""
    from dspyo3_production import dashboard_json

    click.echo(dashboard_json())


@click.group("production")
def production_group() -> None:
    """The production stack around LM calls (cache, metrics, logs, breakers, budgets)."""


def _env_tracing() -> dict[str, Any] | None:
    """The tracing the OTEL_* variables turn on without a [production] table (None: off)."""
    import os

    if not any(k.startswith("OTEL_") for k in os.environ):
        return None
    from dspyo3_production.tracing import TracingConfig

    config = TracingConfig.from_env()
    return config.status() if config is not None else None


@production_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def production_status(as_json: bool) -> None:
    """What the [production] config turns on (nothing is changed)."""
    from dspyo3_production.settings import from_settings

    production = from_settings(apply_pricing=False)
    if production is None:
        out: dict[str, Any] = {"configured": False,
                               "hint": "add a [production] table to dspyo3.toml, or call dspyo3_production.enable()",
                               "tracing": _env_tracing()}
    else:
        cache = production.cache
        out = {
            "configured": True,
            "cache": None if cache is None else {
                "memory": cache.enable_memory_cache, "disk": cache.enable_disk_cache,
                "redis": cache.redis.prefix if cache.redis is not None else None},
            "metrics": production.metrics is not None,
            "log_events": production.log_events,
            "breaker": None if production.breaker is None else {
                "failure_threshold": production.breaker.failure_threshold,
                "reset_timeout": production.breaker.reset_timeout},
            "budgets": [b.label for b in production.costs.budgets] if production.costs is not None else [],
            "single_flight": production.single_flight,
            "tracing": (production.tracing_config.status()
                        if production.tracing_config is not None and production.tracer is not None else None),
        }
        if cache is not None:
            cache.close()
        if production.tracer is not None:
            production.tracer.shutdown()
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        for key, value in out.items():
            click.echo(f"{key:>14}: {value}")


@hookimpl
def dspyo3_register_commands(cli: click.Group) -> None:
    """Add the ``cache``, ``metrics``, ``production`` and ``serve`` command groups."""
    from dspyo3_production.serve.cli import serve_group

    cli.add_command(cache_group)
    cli.add_command(metrics_group)
    cli.add_command(production_group)
    cli.add_command(serve_group)
