"""The hook specifications every dspyo3 plugin implements.

Plugins register through the ``dspyo3`` entry-point group and implement any of the hooks below with
``@dspyo3_core.hookimpl``. Registries are filled by ``dspyo3_register_<thing>(register)`` hooks: the plugin
calls ``register(Spec(...))`` once per item, with a typed dataclass from :mod:`dspyo3_core.registry`.

Cross-cutting behaviour around LM calls (cache, metrics, cost, rate limits, circuit breakers) wraps the single
:func:`dspyo3_lm_call` hook with ``@hookimpl(wrapper=True)``::

    @hookimpl(wrapper=True)
    def dspyo3_lm_call(call):
        started = time.perf_counter()
        outputs = yield          # the next wrapper, and finally the real dspy.LM call
        metrics.observe(time.perf_counter() - started)
        return outputs
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from dspyo3_core.call import LMCall
    from dspyo3_core.registry import (
        CacheBackendSpec,
        EmbedderSpec,
        LMProviderSpec,
        OptimizerSpec,
        RerankerSpec,
        ToolSpec,
        VectorStoreSpec,
    )
    from dspyo3_core.sources import ProgramSource

PROJECT = "dspyo3"
"""Pluggy project name; also the entry-point group plugins register under."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


def impl_of(func: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A copy of ``func`` under ``name`` (same code, globals, defaults and attributes), to mark as a hookimpl in a
    plugin module (``dspyo3_lm_call = hookimpl(...)(impl_of(fast_function, "dspyo3_lm_call"))``) without marking
    ``func`` itself: a module that imports ``func`` by its own name is then not taken for a second impl. Costs no
    extra call frame, unlike a wrapper function."""
    copy = types.FunctionType(func.__code__, func.__globals__, name, func.__defaults__,
                              func.__closure__)
    copy.__kwdefaults__ = func.__kwdefaults__
    copy.__doc__, copy.__module__, copy.__qualname__ = func.__doc__, func.__module__, name
    copy.__annotations__ = dict(func.__annotations__)
    copy.__dict__.update(func.__dict__)
    return copy


@hookspec
def dspyo3_register_commands(cli: click.Group) -> None:
    """Add commands or command groups to the root ``dspyo3`` click group (``cli.add_command(...)``)."""


@hookspec
def dspyo3_register_lm_providers(register: Callable[[LMProviderSpec], None]) -> None:
    """Register LM providers (how a profile maps to ``dspy.LM`` arguments)."""


@hookspec
def dspyo3_register_embedders(register: Callable[[EmbedderSpec], None]) -> None:
    """Register embedders (text -> vector) by name."""


@hookspec
def dspyo3_register_vector_stores(register: Callable[[VectorStoreSpec], None]) -> None:
    """Register vector-store backends by name."""


@hookspec
def dspyo3_register_rerankers(register: Callable[[RerankerSpec], None]) -> None:
    """Register rerankers by name."""


@hookspec
def dspyo3_register_tools(register: Callable[[ToolSpec], None]) -> None:
    """Register agent tools by name."""


@hookspec
def dspyo3_register_cache_backends(register: Callable[[CacheBackendSpec], None]) -> None:
    """Register cache backends (memory, Redis, ...) by name."""


@hookspec
def dspyo3_register_optimizers(register: Callable[[OptimizerSpec], None]) -> None:
    """Register optimizers (BootstrapFewShot, MIPROv2, ...) by name."""


@hookspec(firstresult=True)
def dspyo3_resolve_program(reference: str, options: dict[str, Any]) -> ProgramSource | None:
    """Resolve a program reference (``registry:qa@prod``, ``qa@1.2.0``, ...) to a
    :class:`~dspyo3_core.sources.ProgramSource`, or return None when the reference is not this plugin's.

    ``options`` carries what the caller was told: ``registry`` (a registry URL or directory, or None for the
    configured one), ``program`` (a ``module:attr`` factory the user named to load the state into, or None),
    ``trust_registry`` (bool). Raise :class:`~dspyo3_core.sources.ProgramSourceError` for a reference that is this
    plugin's but cannot be resolved (an unknown name or stage).
    """


@hookspec(firstresult=True)
def dspyo3_lm_call(call: LMCall) -> Any:
    """Perform one LM call and return DSPy's outputs for it.

    Core implements the innermost call (the real ``dspy.LM.__call__``). Other plugins wrap it with
    ``@hookimpl(wrapper=True)``: code before ``yield`` sees the request (``call.messages``, ``call.kwargs``,
    ``call.lm``), ``outputs = yield`` runs the rest of the chain, and the wrapper returns the outputs it
    wants the caller to see. A wrapper must yield exactly once; to answer without calling the LM (a cache
    hit), implement a plain ``@hookimpl(tryfirst=True)`` that returns a non-``None`` value: the first
    non-``None`` result wins and core's innermost impl (``trylast``) is then skipped.

    A wrapper that is only sometimes active (installed, not configured) sets ``dspyo3_active`` on its function to
    a callable that returns False while it would just ``return (yield)``: LMs then skip the hook machinery, and
    async calls stay on the event loop instead of a worker thread (see ``dspyo3_core.lm.wrappers_active``).
    """
