"""What an optimizer run is configured with: :class:`RunConfig` and its parts, read from Python or a TOML file
(:meth:`RunConfig.from_toml`); unknown keys and wrong value types are errors naming the key and the file."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspyo3_core.config import ConfigError, check_keys

if TYPE_CHECKING:
    from dspyo3_optimize.evaluate import Executor
    from dspyo3_optimize.metrics import Metric

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class RunError(RuntimeError):
    """A run cannot start or go on; the message says why and what to do."""


@dataclass
class TrialSpec:
    """One trial: ``optimizer`` built with ``options``, compiled with ``compile`` options (and ``seed``)."""

    optimizer: str
    options: dict[str, Any] = field(default_factory=dict)
    compile: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        """Display name."""
        return self.name or self.optimizer


@dataclass
class DataSpec:
    """Where the train and dev examples come from (see :mod:`dspyo3_optimize.data`)."""

    path: str | None = None
    train: str | None = None
    dev: str | None = None
    inputs: list[str] | None = None
    preset: str | None = None
    limit: int | None = None
    offset: int = 0
    dev_fraction: float = 0.5
    dev_size: int | None = None
    dev_limit: int | None = None
    seed: int = 0


@dataclass
class RegisterSpec:
    """Register the best program as ``name`` in ``registry`` (default: ``[optimize] registry``) at ``stage``."""

    name: str
    registry: str | None = None
    stage: str | None = "dev"
    parent: str | None = None
    bump: str = "patch"

    def __post_init__(self) -> None:
        from dspyo3_optimize.programs.metadata import STAGES

        if self.bump not in ("major", "minor", "patch"):
            raise ConfigError(f"[register] bump = {self.bump!r}; use major, minor or patch")
        if self.stage is not None and self.stage not in STAGES:
            raise ConfigError(f"[register] stage = {self.stage!r}; use one of {', '.join(STAGES)}")


@dataclass
class RunConfig:
    """Everything a run needs. In Python, ``trainset`` / ``devset`` may replace ``data`` and ``program``, ``metric``
    and ``lm`` may be objects instead of import paths and profile names."""

    name: str
    program: Any
    metric: str | Metric
    trials: list[TrialSpec]
    out_dir: str | os.PathLike[str]
    data: DataSpec | None = None
    trainset: list[Any] | None = None
    devset: list[Any] | None = None
    lm: Any = None
    executor: str | Executor = "local"
    concurrency: int = 8
    max_seconds: float | None = None
    max_cost_usd: float | None = None
    baseline: bool = True
    register: RegisterSpec | None = None
    base_dir: Path = field(default_factory=Path.cwd)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if not self.trials:
            raise RunError("a run needs at least one trial (TrialSpec(optimizer, options))")

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> RunConfig:
        """Read a run config file; unknown or missing keys are errors naming the key and the file."""
        file = Path(path)
        try:
            with file.open("rb") as handle:
                doc = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read run config {file}: {exc.strerror}") from None
        return cls.from_dict(doc, source=str(file), base_dir=file.resolve().parent)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, source: str = "run config",
                  base_dir: Path | None = None) -> RunConfig:
        """Build from the parsed TOML structure (``[run]``, ``[data]``, ``[[trials]]``, ``[register]``)."""
        base = base_dir or Path.cwd()
        _only(doc, {"run", "data", "trials", "register"}, source, "the top level")
        run = _table(doc, "run", source, required=True)
        _only(run, {"name", "program", "metric", "lm", "out_dir", "executor", "concurrency", "max_seconds",
                    "max_cost_usd", "baseline"}, source, "[run]")
        for key in ("name", "program", "metric"):
            if not isinstance(run.get(key), str) or not run[key]:
                raise ConfigError(f"{source}: [run] needs {key} = \"...\" (a string)")
        _check_types(run, source, "[run]", {"lm": str, "out_dir": str, "baseline": bool})
        data_table = _table(doc, "data", source, required=True)
        _only(data_table, set(DataSpec.__dataclass_fields__), source, "[data]")
        _check_types(data_table, source, "[data]", {
            "path": str, "train": str, "dev": str, "preset": str, "limit": int, "offset": int, "dev_size": int,
            "dev_limit": int, "seed": int, "dev_fraction": (int, float), "inputs": list})
        data = DataSpec(**data_table)
        if not (data.path or data.train):
            raise ConfigError(f"{source}: [data] needs path = \"file.jsonl\" (split into train/dev) or train = ...")
        trials_raw = doc.get("trials")
        if not isinstance(trials_raw, list) or not trials_raw:
            raise ConfigError(f"{source}: add at least one [[trials]] table with optimizer = \"...\"")
        trials = []
        for number, item in enumerate(trials_raw, 1):
            if not isinstance(item, dict):
                raise ConfigError(f"{source}: [[trials]] #{number} must be a table")
            _only(item, {"optimizer", "options", "compile", "seed", "name"}, source, f"[[trials]] #{number}")
            if not isinstance(item.get("optimizer"), str):
                raise ConfigError(f"{source}: [[trials]] #{number} needs optimizer = \"...\"")
            _check_types(item, source, f"[[trials]] #{number}",
                         {"options": dict, "compile": dict, "seed": int, "name": str})
            trials.append(TrialSpec(item["optimizer"], dict(item.get("options") or {}),
                                    dict(item.get("compile") or {}), item.get("seed"), item.get("name")))
        register = None
        if "register" in doc:
            reg = _table(doc, "register", source)
            _only(reg, set(RegisterSpec.__dataclass_fields__), source, "[register]")
            if not isinstance(reg.get("name"), str):
                raise ConfigError(f"{source}: [register] needs name = \"program-name\"")
            _check_types(reg, source, "[register]", {"registry": str, "stage": str, "parent": str, "bump": str})
            registry_url = reg.get("registry")
            if registry_url and "://" not in registry_url:  # a directory: relative to this file, like out_dir
                path = Path(os.path.expandvars(registry_url)).expanduser()
                reg = {**reg, "registry": str(path if path.is_absolute() else base / path)}
            register = RegisterSpec(**reg)
        if run.get("executor", "local") not in ("local", "ray"):
            raise ConfigError(f"{source}: [run] executor = {run['executor']!r}; use \"local\" or \"ray\"")
        if not isinstance(run.get("concurrency", 8), int) or run.get("concurrency", 8) < 1:
            raise ConfigError(f"{source}: [run] concurrency must be a positive integer")
        for key in ("max_seconds", "max_cost_usd"):
            value = run.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ConfigError(f"{source}: [run] {key} must be a number >= 0, got {value!r}")
        out_dir = Path(str(run.get("out_dir") or f"runs/{run['name']}"))
        return cls(
            name=run["name"], program=run["program"], metric=run["metric"], trials=trials,
            out_dir=out_dir if out_dir.is_absolute() else base / out_dir, data=data, lm=run.get("lm"),
            executor=run.get("executor", "local"), concurrency=int(run.get("concurrency", 8)),
            max_seconds=run.get("max_seconds"), max_cost_usd=run.get("max_cost_usd"),
            baseline=bool(run.get("baseline", True)), register=register, base_dir=base,
        )


def _table(doc: Mapping[str, Any], key: str, source: str, required: bool = False) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{source}: missing [{key}] table")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {key} must be a table ([{key}])")
    return value


_TYPE_NAMES = {int: "an integer", float: "a number", list: "a list", str: "a string", bool: "true or false",
               dict: "a table, e.g. { key = 1 }"}


def _check_types(table: Mapping[str, Any], source: str, where: str,
                 types: Mapping[str, type | tuple[type, ...]]) -> None:
    for key, expected in types.items():
        value: Any = table.get(key)
        if value is None:
            continue
        kinds = expected if isinstance(expected, tuple) else (expected,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(_TYPE_NAMES.get(kind, kind.__name__) for kind in kinds)
            raise ConfigError(f"{source}: {where} {key} must be {names}, got {value!r}")
        if key == "inputs" and not all(isinstance(item, str) for item in table[key]):
            raise ConfigError(f"{source}: {where} inputs must be a list of field names, got {value!r}")


def _only(table: Mapping[str, Any], allowed: set[str], source: str, where: str) -> None:
    check_keys(table, allowed, where, source)
