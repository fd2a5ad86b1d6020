"""Metrics by import path, built-in metrics, and the adapter that lets one metric serve every optimizer.

A metric is ``metric(example, prediction, trace=None) -> float | bool``, as DSPy expects. In config files it is
named by import path (``"my_pkg.metrics:accuracy"`` or ``"my_pkg.metrics.accuracy"``) or by a built-in name
(:data:`BUILTIN_METRICS`).
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dspyo3_core.config import ConfigError
from dspyo3_core.gsm8k import exact_number

Metric = Callable[..., Any]


def import_object(path: str, search: Sequence[str | os.PathLike[str]] = ()) -> Any:
    """Import ``"package.module:attr"`` (or ``"package.module.attr"``); errors say what was missing.

    ``search``: directories made importable first (a run config's directory, so ``metric = "mymetric:acc"``
    finds ``mymetric.py`` next to the TOML file); the current directory is always importable, as with
    ``python -m``.
    """
    from dspyo3_core.inspector import InspectError, resolve

    for directory in search:
        entry = str(Path(directory).resolve())
        if entry not in sys.path:
            sys.path.insert(0, entry)
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{path!r} is not an import path; write 'package.module:name'")
    try:
        return resolve(f"{module_name}:{attr}")  # core's resolver: the current directory is importable too
    except InspectError as exc:
        hint = ""
        if str(exc).startswith("cannot import"):
            where = "".join(f" or in {Path(d)}" for d in search)
            hint = f"; check it is installed, or put {module_name.split('.')[0]}.py in the current directory{where}"
        raise ConfigError(f"{exc} (from {path!r}){hint}") from None


def exact_match(example: Any, prediction: Any, trace: Any = None) -> bool:
    """``prediction.answer`` equals ``example.answer`` (case and surrounding space ignored)."""
    return str(getattr(prediction, "answer", "")).strip().lower() == str(example.answer).strip().lower()


numeric_match = exact_number
"""The last number in ``prediction.answer`` equals the last number in ``example.answer`` (GSM8K accuracy):
:func:`dspyo3_core.gsm8k.exact_number`, the metric ``dspyo3 demo`` uses."""


BUILTIN_METRICS: dict[str, Metric] = {"exact_match": exact_match, "numeric_match": numeric_match,
                                      "gsm8k": numeric_match}


def resolve_metric(metric: str | Metric, search: Sequence[str | os.PathLike[str]] = ()) -> Metric:
    """A metric callable from a callable, a built-in name or an import path (``search``: as in
    :func:`import_object`)."""
    if callable(metric):
        return metric
    if metric in BUILTIN_METRICS:
        return BUILTIN_METRICS[metric]
    if ":" not in metric and "." not in metric:
        raise ConfigError(f"unknown metric {metric!r}; use a built-in ({', '.join(sorted(BUILTIN_METRICS))}) or an "
                         "import path such as 'my_pkg.metrics:accuracy'")
    obj = import_object(metric, search)
    if not callable(obj):
        raise ConfigError(f"metric {metric!r} is a {type(obj).__name__}, not a function")
    return obj  # type: ignore[no-any-return]


def metric_name(metric: str | Metric) -> str:
    """How a metric is recorded in reports and the registry (its import path when known)."""
    if isinstance(metric, str):
        return metric
    module = getattr(metric, "__module__", None)
    name = getattr(metric, "__qualname__", None) or getattr(metric, "__name__", None) or type(metric).__name__
    return f"{module}:{name}" if module else str(name)


def score_of(value: Any) -> float:
    """A metric's return value as a float (``bool`` -> 0/1, ``dspy.Prediction(score=...)`` -> its score)."""
    if hasattr(value, "score") and not isinstance(value, (int, float)):
        value = value.score
    return float(value)


class UniversalMetric:
    """Wraps a ``metric(example, prediction, trace=None)`` so every DSPy optimizer can call it.

    GEPA calls ``metric(gold, pred, trace, pred_name, pred_trace)``; SIMBA passes the prediction as the second
    argument; others call ``metric(example, prediction, trace)``. Extra arguments are dropped when the wrapped
    metric does not take them.
    """

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self.__name__ = getattr(metric, "__name__", "metric")
        try:
            params = inspect.signature(metric).parameters.values()
            self._max_args = (None if any(p.kind is p.VAR_POSITIONAL for p in params)
                              else sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params))
        except (TypeError, ValueError):
            self._max_args = 3

    def __call__(self, example: Any, prediction: Any, trace: Any = None, *extra: Any) -> Any:
        args = (example, prediction, trace, *extra)
        if self._max_args is not None:
            args = args[: max(2, self._max_args)]
        return self.metric(*args)
