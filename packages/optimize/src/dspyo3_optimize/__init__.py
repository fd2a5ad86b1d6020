"""dspyo3-optimize: optimizer runs for DSPy with progress and checkpoints, a versioned registry of compiled programs,
evaluation, statistical comparison and quality gates.

Public API:

* :class:`RunConfig`, :func:`run` — optimizer trials with checkpoints, budgets, a report and a plot
  (``dspyo3 optimize run CONFIG.toml``);
* :class:`ProgramRegistry`, :func:`open_registry` — compiled programs as DSPy JSON state with metadata, stages,
  checksums and locks (``dspyo3 registry ...``);
* :func:`evaluate` — per-example scores, locally on asyncio or on Ray;
* :func:`compare`, :func:`parse_gates`, :func:`check_gates` — paired bootstrap, McNemar / t / Wilcoxon, quality gates
  (``dspyo3 optimize compare A B --data FILE --gate ...``);
* :func:`load_examples`, :func:`split`, :func:`dataset_hash` — datasets.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dspyo3_optimize.data import dataset_hash, load_examples, split
    from dspyo3_optimize.evaluate import EvalResult, LocalExecutor, RayExecutor, evaluate
    from dspyo3_optimize.metrics import exact_match, numeric_match, resolve_metric
    from dspyo3_optimize.optimizers import build_optimizer, compile_program, get_optimizer, optimizer_registry
    from dspyo3_optimize.registry import (
        IntegrityError,
        NotFoundError,
        ProgramRegistry,
        ProgramVersion,
        RegistryError,
        Score,
        open_registry,
    )
    from dspyo3_optimize.runner import DataSpec, RegisterSpec, RunConfig, RunError, RunReport, TrialSpec, run
    from dspyo3_optimize.stats import (
        Comparison,
        bootstrap_ci,
        check_gates,
        compare,
        mcnemar,
        paired_bootstrap,
        parse_gates,
    )

__version__ = "0.1.0"

__all__ = [
    "Comparison",
    "DataSpec",
    "EvalResult",
    "IntegrityError",
    "LocalExecutor",
    "NotFoundError",
    "ProgramRegistry",
    "ProgramVersion",
    "RayExecutor",
    "RegisterSpec",
    "RegistryError",
    "RunConfig",
    "RunError",
    "RunReport",
    "Score",
    "TrialSpec",
    "__version__",
    "bootstrap_ci",
    "build_optimizer",
    "check_gates",
    "compare",
    "compile_program",
    "dataset_hash",
    "evaluate",
    "exact_match",
    "get_optimizer",
    "load_examples",
    "mcnemar",
    "numeric_match",
    "open_registry",
    "optimizer_registry",
    "paired_bootstrap",
    "parse_gates",
    "resolve_metric",
    "run",
    "split",
]


_LAZY: dict[str, str] = {
    **dict.fromkeys(("dataset_hash", "load_examples", "split"), "data"),
    **dict.fromkeys(("EvalResult", "LocalExecutor", "RayExecutor", "evaluate"), "evaluate"),
    **dict.fromkeys(("exact_match", "numeric_match", "resolve_metric"), "metrics"),
    **dict.fromkeys(("build_optimizer", "compile_program", "get_optimizer", "optimizer_registry"), "optimizers"),
    **dict.fromkeys(("IntegrityError", "NotFoundError", "ProgramRegistry", "ProgramVersion", "RegistryError", "Score",
                     "open_registry"), "registry"),
    **dict.fromkeys(("DataSpec", "RegisterSpec", "RunConfig", "RunError", "RunReport", "TrialSpec", "run"), "runner"),
    **dict.fromkeys(("Comparison", "bootstrap_ci", "check_gates", "compare", "mcnemar", "paired_bootstrap",
                     "parse_gates"), "stats"),
}
"""Public name -> the submodule that defines it; imported on first access (PEP 562), so importing the package
(and the ``dspyo3`` CLI, which loads every plugin) does not pay for DSPy, NumPy and the rest up front."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """This package's module type. Importing a submodule binds it on the package under its own name, which would
    hide the lazily exported function of the same name (``dspyo3_optimize.evaluate`` is the function, as when these
    names were imported eagerly): keep the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if _LAZY.get(name) == name and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
