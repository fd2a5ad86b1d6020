"""DSPy's optimizers behind one interface, registered through ``dspyo3_register_optimizers``.

Built in (this package's plugin registers them): ``bootstrap_fewshot`` (``BootstrapFewShot``),
``bootstrap_random_search`` (``BootstrapFewShotWithRandomSearch``), ``mipro_v2`` (``MIPROv2``), ``copro``
(``COPRO``), ``simba`` (``SIMBA``) and ``gepa`` (``GEPA``). DSPy's class names work as aliases.

A plugin adds its own with an :class:`~dspyo3_core.registry.OptimizerSpec` whose ``factory(metric=..., **options)``
returns a teleprompter (an object with ``compile(student, *, trainset, ...)``)::

    @hookimpl
    def dspyo3_register_optimizers(register):
        register(OptimizerSpec("my_opt", MyTeleprompter, "what it does"))

:func:`compile_program` calls ``compile`` with the arguments its signature takes (``trainset`` always; ``valset``,
``seed`` and extra compile options when accepted) and collects the candidate scores optimizers attach to the result.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dspyo3_core.config import ConfigError
from dspyo3_core.plugins import PluginManager, get_plugin_manager
from dspyo3_core.registry import OptimizerSpec, Registry
from dspyo3_optimize.metrics import Metric, UniversalMetric

HOOK = "dspyo3_register_optimizers"
LM_OPTIONS = ("prompt_model", "task_model", "reflection_lm")
"""Optimizer options that take an LM: a string there names an LM profile."""


def _dspy_factory(class_name: str, module: str = "dspy") -> Callable[..., Any]:
    def factory(**options: Any) -> Any:
        import importlib

        cls = getattr(importlib.import_module(module), class_name)
        return cls(**options)

    factory.__name__ = class_name
    factory.__doc__ = f"Build ``{module}.{class_name}(**options)``."
    return factory


def _gepa_factory(**options: Any) -> Any:
    """``dspy.GEPA``: ``reflection_lm`` defaults to the configured LM, the budget to ``auto="light"``, and
    ``track_stats`` to True (its candidates' scores go into the run report)."""
    import dspy

    options.setdefault("track_stats", True)
    if options.get("reflection_lm") is None:
        options["reflection_lm"] = dspy.settings.lm
    if not any(options.get(k) is not None for k in ("auto", "max_full_evals", "max_metric_calls")):
        options["auto"] = "light"
    return dspy.GEPA(**options)


BUILTIN: tuple[OptimizerSpec, ...] = (
    OptimizerSpec("bootstrap_fewshot", _dspy_factory("BootstrapFewShot"),
                  "BootstrapFewShot: demos bootstrapped from the program's own successful traces"),
    OptimizerSpec("bootstrap_random_search", _dspy_factory("BootstrapFewShotWithRandomSearch"),
                  "BootstrapFewShotWithRandomSearch: several demo sets, the best on the dev set wins"),
    OptimizerSpec("mipro_v2", _dspy_factory("MIPROv2"),
                  "MIPROv2: proposed instructions and demo sets searched with Bayesian optimization (auto=light|...)"),
    OptimizerSpec("copro", _dspy_factory("COPRO"), "COPRO: coordinate ascent over proposed instructions"),
    OptimizerSpec("simba", _dspy_factory("SIMBA"), "SIMBA: stochastic introspective mini-batch ascent"),
    OptimizerSpec("gepa", _gepa_factory, "GEPA: reflective prompt evolution with a Pareto frontier"),
)

ALIASES: dict[str, str] = {
    "BootstrapFewShot": "bootstrap_fewshot",
    "BootstrapFewShotWithRandomSearch": "bootstrap_random_search",
    "MIPROv2": "mipro_v2",
    "COPRO": "copro",
    "SIMBA": "simba",
    "GEPA": "gepa",
}


class UnknownOptimizerError(ConfigError, KeyError):
    """No optimizer is registered under that name (a :class:`~dspyo3_core.config.ConfigError`; also a ``KeyError``
    for code that looks optimizers up like a mapping)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def optimizer_registry(plugin_manager: PluginManager | None = None) -> Registry[OptimizerSpec]:
    """Every optimizer the installed plugins registered."""
    return (plugin_manager or get_plugin_manager()).registry(HOOK)


def get_optimizer(name: str, plugin_manager: PluginManager | None = None) -> OptimizerSpec:
    """The optimizer registered as ``name`` (or a DSPy class-name alias); the error lists the known names."""
    optimizers = optimizer_registry(plugin_manager)
    key = ALIASES.get(name, name)
    if key not in optimizers:
        known = ", ".join(optimizers.names()) or "none (is dspyo3-optimize's plugin disabled?)"
        raise UnknownOptimizerError(f"unknown optimizer {name!r}; known: {known}")
    return optimizers.get(key)


def resolve_lm_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Turn LM profile names in :data:`LM_OPTIONS` into LMs."""
    out = dict(options)
    for key in LM_OPTIONS:
        if isinstance(out.get(key), str):
            from dspyo3_core.config import build_lm, load_settings

            out[key] = build_lm(load_settings().profile(out[key]))
    return out


def build_optimizer(name: str, metric: Metric, options: Mapping[str, Any] | None = None,
                    plugin_manager: PluginManager | None = None) -> Any:
    """Instantiate optimizer ``name`` with ``metric`` (wrapped so every optimizer can call it) and ``options``."""
    spec = get_optimizer(name, plugin_manager)
    try:
        return spec.factory(metric=UniversalMetric(metric), **resolve_lm_options(options or {}))
    except TypeError as exc:
        raise ConfigError(f"optimizer {name!r} rejected its options {sorted(options or {})}: {exc}; see the "
                         "optimizer's constructor for the options it takes") from None


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def compile_program(optimizer: Any, program: Any, trainset: Sequence[Any], valset: Sequence[Any] | None = None,
                    *, seed: int | None = None, compile_options: Mapping[str, Any] | None = None) -> Any:
    """``optimizer.compile(program, trainset=..., [valset=...], [seed=...], **compile_options)``.

    ``valset`` and ``seed`` are passed only to optimizers whose ``compile`` takes them; a ``compile_options`` key
    the optimizer does not take is an error naming it.
    """
    compile_fn = optimizer.compile
    kwargs: dict[str, Any] = {"trainset": list(trainset)}
    if valset is not None and _accepts(compile_fn, "valset"):
        kwargs["valset"] = list(valset)
    if seed is not None and _accepts(compile_fn, "seed"):
        kwargs["seed"] = seed
    for key, value in (compile_options or {}).items():
        if not _accepts(compile_fn, key):
            params = ", ".join(p for p in inspect.signature(compile_fn).parameters if p not in ("self", "student"))
            raise ConfigError(f"{type(optimizer).__name__}.compile takes no option {key!r}; it takes: {params}")
        kwargs[key] = value
    return compile_fn(program, **kwargs)


PERCENT_SCORES = {"MIPROv2", "BootstrapFewShotWithRandomSearch", "COPRO"}
"""Optimizers whose recorded candidate scores come from ``dspy.Evaluate`` (percentages)."""


def candidate_scores(compiled: Any, optimizer: Any = None) -> list[float]:
    """Scores of the candidates an optimizer evaluated, when it records them, on the metric's scale: ``trial_logs``
    of MIPROv2 (in trial order), ``detailed_results`` of GEPA, ``candidate_programs`` of random search (by seed),
    COPRO and SIMBA. ``dspy.Evaluate`` reports percentages; those are divided by 100 here."""
    kind = type(optimizer).__name__ if optimizer is not None else ""

    def scale(values: list[float]) -> list[float]:
        if kind in PERCENT_SCORES or (kind not in ("SIMBA", "GEPA") and values and max(values) > 1):
            return [v / 100 for v in values]
        return values

    logs = getattr(compiled, "trial_logs", None)
    if isinstance(logs, dict) and logs:
        scores = [float(v["full_eval_score"]) for _, v in sorted(logs.items())
                  if isinstance(v, dict) and v.get("full_eval_score") is not None]
        if scores:
            return scale(scores)
    details = getattr(compiled, "detailed_results", None)
    if details is not None and getattr(details, "val_aggregate_scores", None):
        return [float(s) for s in details.val_aggregate_scores]
    candidates = getattr(compiled, "candidate_programs", None)
    if isinstance(candidates, list) and candidates:
        found = [c for c in candidates if isinstance(c, dict) and "score" in c]
        if found and all("seed" in c for c in found):
            found.sort(key=lambda c: c["seed"])
        return scale([float(c["score"]) for c in found])
    return []
