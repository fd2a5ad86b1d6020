"""What ``dspyo3 serve`` serves and how: :class:`ServeConfig`, from the ``[serve]`` table of ``dspyo3.toml`` and
the command line.

    [serve]
    host = "127.0.0.1"
    port = 8000
    workers = 1                      # processes; shared cache, limits and budgets need [redis] url
    max_in_flight = 64               # requests running per program (per worker)
    max_queue = 256                  # requests waiting per program beyond that; more get 503 + Retry-After
    request_timeout = 30             # seconds per request; then 504 and the LM call is cancelled
    max_body_bytes = 1048576         # larger request bodies get 413
    batch_max_items = 100
    batch_concurrency = 8            # items of one batch request running at once
    watch_interval = 2.0             # seconds between checks of the registry stages served

    [[serve.programs]]
    target = "registry:qa@prod"      # or "qa@1.2.0", "module:attr", "module:factory=saved.json"
    name = "qa"                      # optional: the URL name (default: the registry name or attr)
    smoke = { question = "ping" }    # optional: inputs a new version must answer before it is switched to
    ab = { target = "qa@1.3.0", weight = 0.1 }   # optional: a second version, 10 % of callers, sticky

    [[serve.tenants]]
    name = "acme"
    key_sha256 = ["<sha256 hex of the API key>"]  # `dspyo3 serve hash-key` prints it; keys are never stored
    requests_per_second = 20
    tokens_per_minute = 200000
    usd_per_day = 5.0
    usd_per_month = 100.0

The file is configuration the user wrote, but an API key never appears in it: only its SHA-256.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dspyo3_core.config import ConfigError, Settings, check_keys

__all__ = ["ABSplit", "ProgramConfig", "ServeConfig", "TenantConfig", "serve_config"]

_TOP = {"host", "port", "workers", "max_in_flight", "max_queue", "request_timeout", "max_body_bytes",
        "batch_max_items", "batch_concurrency", "watch_interval", "programs", "tenants", "redis"}
_PROGRAM = {"target", "name", "smoke", "ab"}
_AB = {"target", "weight"}
_TENANT = {"name", "key_sha256", "requests_per_second", "tokens_per_minute", "usd_per_day", "usd_per_month"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ABSplit:
    """A second version served beside a program's main one: ``weight`` of callers (0 < weight < 1), sticky per
    caller (the same tenant or ``x-dspyo3-user`` always gets the same arm)."""

    target: str
    weight: float


@dataclass(frozen=True)
class ProgramConfig:
    """One served program: ``target`` (see :func:`~dspyo3_production.serve.targets.resolve_target`), the URL
    ``name`` (None: derived from the target), ``smoke`` inputs a new version must answer before it serves, and an
    optional :class:`ABSplit`."""

    target: str
    name: str | None = None
    smoke: dict[str, Any] | None = None
    ab: ABSplit | None = None


@dataclass(frozen=True)
class TenantConfig:
    """A tenant: its API keys (as SHA-256 hex digests), its rate limits and budgets (None: unlimited)."""

    name: str
    key_sha256: tuple[str, ...]
    requests_per_second: float | None = None
    tokens_per_minute: float | None = None
    usd_per_day: float | None = None
    usd_per_month: float | None = None


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``dspyo3 serve`` and :func:`~dspyo3_production.serve.create_app` need besides the programs'
    code. Defaults are for one box; every field can come from ``[serve]`` or the command line."""

    programs: tuple[ProgramConfig, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_in_flight: int = 64
    max_queue: int = 256
    request_timeout: float = 30.0
    max_body_bytes: int = 1_048_576
    batch_max_items: int = 100
    batch_concurrency: int = 8
    watch_interval: float = 2.0
    redis_url: str | None = None
    tenants: tuple[TenantConfig, ...] = field(default=())

    def __post_init__(self) -> None:
        _positive_int(self.port, "port", upper=65535)
        for name in ("workers", "max_in_flight", "batch_max_items", "batch_concurrency", "max_body_bytes"):
            _positive_int(getattr(self, name), name)
        if not isinstance(self.max_queue, int) or isinstance(self.max_queue, bool) or self.max_queue < 0:
            raise ConfigError(f"[serve] max_queue must be an integer >= 0, not {self.max_queue!r}")
        for name in ("request_timeout", "watch_interval"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"[serve] {name} must be a number of seconds > 0, not {value!r}")
        names = [tenant.name for tenant in self.tenants]
        if len(set(names)) != len(names):
            raise ConfigError("[[serve.tenants]] names must be unique")
        digests = [digest for tenant in self.tenants for digest in tenant.key_sha256]
        if len(set(digests)) != len(digests):
            raise ConfigError("[[serve.tenants]] the same key_sha256 is listed twice; a key belongs to one tenant")

    @property
    def auth_required(self) -> bool:
        """Requests need an API key when any tenant is configured."""
        return bool(self.tenants)


def _positive_int(value: Any, name: str, upper: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (upper is not None and value > upper):
        bound = f" and <= {upper}" if upper is not None else ""
        raise ConfigError(f"[serve] {name} must be an integer >= 1{bound}, not {value!r}")


def _number(table: Mapping[str, Any], key: str, where: str) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{where} {key} must be a number >= 0, not {value!r}")
    return float(value)


def _program(table: Any, index: int, source: str | None) -> ProgramConfig:
    where = f"[[serve.programs]] #{index + 1}"
    if isinstance(table, str):
        return ProgramConfig(table)
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table with a target (or a target string)")
    check_keys(table, _PROGRAM, where, source)
    target = table.get("target")
    if not isinstance(target, str) or not target.strip():
        raise ConfigError(f"{where} needs target = \"registry:NAME@STAGE\", \"NAME@VERSION\" or \"module:attr\"")
    name = table.get("name")
    if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
        raise ConfigError(f"{where} name must be letters, digits, '_', '.', '-' (at most 64), not {name!r}")
    smoke = table.get("smoke")
    if smoke is not None and not isinstance(smoke, Mapping):
        raise ConfigError(f"{where} smoke must be a table of input fields, e.g. smoke = {{ question = \"ping\" }}")
    ab_table = table.get("ab")
    ab = None
    if ab_table is not None:
        if not isinstance(ab_table, Mapping):
            raise ConfigError(f"{where} ab must be a table: ab = {{ target = \"NAME@VERSION\", weight = 0.1 }}")
        check_keys(ab_table, _AB, f"{where} ab", source)
        weight = ab_table.get("weight")
        if not isinstance(ab_table.get("target"), str) or not isinstance(weight, (int, float)) \
                or isinstance(weight, bool) or not 0 < weight < 1:
            raise ConfigError(f"{where} ab needs target = \"NAME@VERSION\" and 0 < weight < 1")
        ab = ABSplit(str(ab_table["target"]), float(weight))
    return ProgramConfig(target.strip(), name, dict(smoke) if smoke is not None else None, ab)


def _tenant(table: Any, index: int, source: str | None) -> TenantConfig:
    where = f"[[serve.tenants]] #{index + 1}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table with name and key_sha256")
    check_keys(table, _TENANT, where, source)
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where} needs name = \"...\" (letters, digits, '_', '.', '-')")
    keys = table.get("key_sha256")
    keys = [keys] if isinstance(keys, str) else keys
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and _SHA256.match(k) for k in keys):
        raise ConfigError(f"{where} key_sha256 must be the SHA-256 hex digest(s) of the tenant's API key(s) "
                          "(64 lowercase hex characters; `dspyo3 serve hash-key` prints one), never the key itself")
    return TenantConfig(name, tuple(keys), _number(table, "requests_per_second", where),
                        _number(table, "tokens_per_minute", where), _number(table, "usd_per_day", where),
                        _number(table, "usd_per_month", where))


def serve_config(settings: Settings | None = None, **overrides: Any) -> ServeConfig:
    """The :class:`ServeConfig` of ``settings``' ``[serve]`` table (and ``[redis]`` url), with ``overrides``
    (command-line values; None means not given) on top.

    Raises:
        ConfigError: a key is unknown or a value is wrong; the message names the table, key and fix.
    """
    table: Mapping[str, Any] = settings.tables.get("serve", {}) if settings is not None else {}
    source = ", ".join(str(path) for path in settings.files) if settings is not None and settings.files else None
    if not isinstance(table, Mapping):
        raise ConfigError("[serve] must be a table")
    check_keys(table, _TOP, "[serve]", source)
    values: dict[str, Any] = {key: table[key] for key in _TOP - {"programs", "tenants", "redis"} if key in table}
    programs = table.get("programs", [])
    tenants = table.get("tenants", [])
    if not isinstance(programs, list) or not isinstance(tenants, list):
        raise ConfigError("[[serve.programs]] and [[serve.tenants]] must be arrays of tables")
    values["programs"] = tuple(_program(item, i, source) for i, item in enumerate(programs))
    values["tenants"] = tuple(_tenant(item, i, source) for i, item in enumerate(tenants))
    redis = table.get("redis", True)
    values["redis_url"] = settings.redis_url if settings is not None and redis else None
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    try:
        return ServeConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"[serve]: {exc}") from None
