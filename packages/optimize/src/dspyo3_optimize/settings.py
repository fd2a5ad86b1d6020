"""The ``[optimize]`` table of ``dspyo3.toml``::

    [optimize]
    registry = "redis://127.0.0.1:6379/0"   # or a directory (default ./dspyo3-registry), or s3://bucket/prefix
    executor = "local"                      # or "ray"
    concurrency = 8                         # evaluation calls in flight
    trusted_programs = ["my_pkg.programs:build_qa"]   # factories meta.json may name (or "my_pkg.programs:*")

``DSPYO3_REGISTRY`` overrides ``registry``; ``DSPYO3_TRUSTED_PROGRAMS`` (comma-separated) adds to
``trusted_programs``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from dspyo3_core.config import ConfigError, check_keys, load_settings

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class OptimizeSettings:
    """What ``[optimize]`` configures."""

    registry: str = "dspyo3-registry"
    executor: str = "local"
    concurrency: int = 8
    trusted_programs: tuple[str, ...] = ()


def parse_table(table: dict[str, Any], source: str = "[optimize]") -> OptimizeSettings:
    """Validate an ``[optimize]`` table; unknown keys and wrong types name the key and the fix."""
    check_keys(table, ("registry", "executor", "concurrency", "trusted_programs"), source)
    values: dict[str, Any] = {}
    if "registry" in table:
        if not isinstance(table["registry"], str) or not table["registry"]:
            raise ConfigError(f"{source}: registry must be a directory or URL string")
        values["registry"] = table["registry"]
    if "executor" in table:
        if table["executor"] not in EXECUTORS:
            raise ConfigError(f"{source}: executor = {table['executor']!r}; use one of {', '.join(EXECUTORS)}")
        values["executor"] = table["executor"]
    if "concurrency" in table:
        if not isinstance(table["concurrency"], int) or table["concurrency"] < 1:
            raise ConfigError(f"{source}: concurrency must be a positive integer, got {table['concurrency']!r}")
        values["concurrency"] = table["concurrency"]
    if "trusted_programs" in table:
        value = table["trusted_programs"]
        if not isinstance(value, list) or not all(isinstance(v, str) and ":" in v for v in value):
            raise ConfigError(f"{source}: trusted_programs must be a list of \"module:attr\" (or \"module:*\") "
                              f"strings, got {value!r}")
        values["trusted_programs"] = tuple(value)
    return OptimizeSettings(**values)


def optimize_settings() -> OptimizeSettings:
    """``[optimize]`` from the config files, with ``DSPYO3_REGISTRY`` applied."""
    settings = parse_table(dict(load_settings().tables.get("optimize") or {}))
    registry = os.environ.get("DSPYO3_REGISTRY")
    if registry:
        settings = dataclasses.replace(settings, registry=registry)
    return settings
