"""The ``[production]`` table of ``dspyo3.toml`` (or the user config) -> a :class:`Production` stack.

    [redis]
    url = "redis://127.0.0.1:6379/0"          # shared by the cache, breaker and cost totals when they say shared

    [production]
    metrics = true                            # Prometheus metrics (default true)
    log_events = true                         # JSON lm_call / module_call events on the "dspyo3.events" logger
    single_flight = true

    [production.cache]                        # install TieredCache as dspy.cache
    redis = true                              # use [redis].url as the shared tier
    redis_ttl = 86400
    namespace = "myapp"
    memory_max_entries = 100000
    disk = false                              # DSPy's disk tier (dir: [cache].dir / "dspy")

    [production.breaker]
    failure_threshold = 5
    reset_timeout = 30
    shared = true                             # state in Redis
    fallback = "backup"                       # an LM profile to use while a circuit is open

    [[production.budgets]]
    per = "day"                               # total, run, user, model or day
    limit_usd = 20.0

    [production.costs]
    shared = true                             # totals and budgets in Redis
    reservation_ttl = 600                     # seconds a crashed process's reservation is held at most
    default_price = {input_per_mtok = 1.0, output_per_mtok = 4.0}   # for models priced nowhere

    [production.pricing."openai/my-finetune"]
    input_per_mtok = 0.30
    output_per_mtok = 1.20

    [production.tracing]                      # OpenTelemetry traces (keys win over the OTEL_* variables)
    endpoint = "http://127.0.0.1:6006/v1/traces"
    protocol = "http/protobuf"                # or "grpc"
    headers = {authorization = "Bearer ..."}  # registered as secrets
    sample_ratio = 1.0
    service_name = "qa-api"
    capture_content = false
    modules = "inferred"                      # or "callbacks" (exact spans, costs DSPy's callback dispatch)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dspyo3_core.config import ConfigError, Settings, check_keys, load_settings

if TYPE_CHECKING:  # imported where a stack is built (they import DSPy): a config without [production] needs none
    from dspyo3_production.cache import TieredCache
    from dspyo3_production.pipeline import Production

_TOP = {"metrics", "log_events", "single_flight", "module_callbacks", "cache", "breaker", "budgets", "costs",
        "pricing", "namespace", "tracing"}
_CACHE = {"redis", "redis_ttl", "namespace", "memory_max_entries", "memory_max_bytes", "memory_ttl", "disk",
          "disk_size_limit_bytes", "redis_timeout", "redis_max_backoff", "single_flight_timeout", "enabled"}
_COSTS = {"shared", "reservation_ttl", "default_price"}
_BREAKER = {"failure_threshold", "reset_timeout", "half_open_max_calls", "shared", "fallback", "namespace"}


def _check(table: dict[str, Any], allowed: set[str], where: str) -> None:
    check_keys(table, allowed, f"[{where}]")


def _redis_url(settings: Settings, where: str) -> str:
    if not settings.redis_url:
        raise ConfigError(f"[{where}] asks for Redis but no Redis URL is configured: add [redis] url = "
                          "\"redis://127.0.0.1:6379/0\" or set DSPYO3_REDIS_URL")
    return settings.redis_url


def cache_from_table(table: dict[str, Any] | bool, settings: Settings, namespace: str = "dspyo3") -> TieredCache:
    """A :class:`TieredCache` from ``[production.cache]`` (``true`` means memory only)."""
    from dspyo3_production.cache import TieredCache

    table = {} if table is True else dict(table)  # type: ignore[arg-type]
    _check(table, _CACHE, "production.cache")
    disk = bool(table.get("disk", False))
    return TieredCache(
        enable_disk_cache=disk,
        disk_cache_dir=str(settings.cache_dir / "dspy") if disk else None,
        disk_size_limit_bytes=int(table.get("disk_size_limit_bytes", 1024**3)),
        memory_max_entries=int(table.get("memory_max_entries", 1_000_000)),
        memory_max_bytes=table.get("memory_max_bytes"),
        memory_ttl=table.get("memory_ttl"),
        redis_url=_redis_url(settings, "production.cache") if table.get("redis") else None,
        redis_ttl=table.get("redis_ttl"),
        namespace=str(table.get("namespace", namespace)),
        redis_timeout=float(table.get("redis_timeout", 0.25)),
        redis_max_backoff=float(table.get("redis_max_backoff", 5.0)),
        single_flight_timeout=float(table.get("single_flight_timeout", 30.0)),
    )


def from_settings(settings: Settings | None = None, *, apply_pricing: bool = True,
                  module_callbacks: bool = True) -> Production | None:
    """The stack ``[production]`` describes, or None when the config has no ``[production]`` table.

    ``[production.pricing]`` entries are set on :data:`~dspyo3_core.pricing.PRICING` (``apply_pricing=False``
    only checks them); ``module_callbacks`` is the default when the table does not set ``module_callbacks``."""
    settings = settings if settings is not None else load_settings()
    table = settings.tables.get("production")
    if table is None:
        return None
    _check(table, _TOP, "production")
    from dspyo3_production.breaker import CircuitBreaker
    from dspyo3_production.cost import Budget, CostTracker
    from dspyo3_production.pipeline import Production

    namespace = str(table.get("namespace", "dspyo3"))
    cache_table = table.get("cache", False)
    cache = None
    if cache_table and (cache_table is True or cache_table.get("enabled", True)):
        cache = cache_from_table(cache_table, settings, namespace)
    breaker = None
    if table.get("breaker"):
        b = dict(table["breaker"]) if isinstance(table["breaker"], dict) else {}
        _check(b, _BREAKER, "production.breaker")
        breaker = CircuitBreaker(
            int(b.get("failure_threshold", 5)), float(b.get("reset_timeout", 30.0)),
            int(b.get("half_open_max_calls", 1)),
            redis_url=_redis_url(settings, "production.breaker") if b.get("shared") else None,
            namespace=str(b.get("namespace", namespace)),
        )
        fallback = b.get("fallback")
        if fallback is not None and fallback not in settings.profiles:
            known = ", ".join(sorted(settings.profiles)) or "none"
            raise ConfigError(f"[production.breaker] fallback = {fallback!r} is not an LM profile (known: {known})")
    else:
        fallback = None
    budgets = []
    for i, entry in enumerate(table.get("budgets") or []):
        if not isinstance(entry, dict) or "limit_usd" not in entry:
            raise ConfigError(f"[[production.budgets]] #{i + 1} needs limit_usd (and per = total|run|user|model|day)")
        try:
            budgets.append(Budget(float(entry["limit_usd"]), entry.get("per", "total"), entry.get("name")))
        except ValueError as exc:
            raise ConfigError(f"[[production.budgets]] #{i + 1}: {exc}") from None
    pricing = table.get("pricing") or {}
    if pricing:
        from dspyo3_core.pricing import PRICING

        for model, price in pricing.items():
            try:
                prices = float(price["input_per_mtok"]), float(price["output_per_mtok"])
                if apply_pricing:
                    PRICING.set(model, input_per_mtok=prices[0], output_per_mtok=prices[1])
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"[production.pricing.{model!r}] needs input_per_mtok and output_per_mtok "
                                  f"(USD per million tokens): {exc}") from None
    costs_table = table.get("costs") or {}
    _check(costs_table, _COSTS, "production.costs")
    default = costs_table.get("default_price")
    default_price = None
    if default is not None:
        try:
            default_price = float(default["input_per_mtok"]), float(default["output_per_mtok"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError("[production.costs] default_price needs input_per_mtok and output_per_mtok (USD per "
                              f"million tokens), e.g. default_price = {{input_per_mtok = 1.0, output_per_mtok = 4.0}}: "
                              f"{exc}") from None
    try:
        costs = CostTracker(budgets, redis_url=_redis_url(settings, "production.costs") if costs_table.get("shared")
                            else None, namespace=namespace,
                            reservation_ttl=float(costs_table.get("reservation_ttl", 600.0)),
                            default_price=default_price)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[production.costs]: {exc}") from None
    tracing_table = table.get("tracing")
    tracing: Any = None  # no table: the OTEL_* variables decide
    if tracing_table is not None:
        if not isinstance(tracing_table, (dict, bool)):
            raise ConfigError("[production] tracing must be a table ([production.tracing]) or true/false")
        from dspyo3_production.tracing import TracingConfig

        tracing = TracingConfig.from_table(tracing_table) or False
    return Production(
        tracing=tracing,
        cache=cache,
        metrics=bool(table.get("metrics", True)),
        log_events=bool(table.get("log_events", True)),
        breaker=breaker,
        fallback=fallback,
        costs=costs,
        single_flight=bool(table.get("single_flight", True)),
        module_callbacks=bool(table.get("module_callbacks", module_callbacks)),
    )
