"""dspyo3-core: the hook core of dspyo3, the production toolkit for DSPy.

Public API:

* :data:`hookimpl` / :data:`hookspec` — pluggy markers for the ``dspyo3`` project;
* :class:`PluginManager`, :func:`get_plugin_manager` — plugin loading and registries;
* :class:`HookedLM`, :class:`LMCall` — a ``dspy.LM`` whose calls go through the ``dspyo3_lm_call`` hook;
* :func:`load_settings`, :func:`build_lm`, :func:`configure` — LM profiles from ``dspyo3.toml`` and env;
* registry specs (:class:`LMProviderSpec`, :class:`EmbedderSpec`, ...) that plugins register.

Importing the package is cheap (it does not import DSPy, so ``dspyo3 --help`` starts fast): each public name is
imported from its module on first use (PEP 562 ``__getattr__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dspyo3_core.lazy import lazy_exports

if TYPE_CHECKING:
    from dspyo3_core.config import ConfigError, LMProfile, Settings, build_lm, load_settings, mask_secret
    from dspyo3_core.hookspecs import hookimpl, hookspec
    from dspyo3_core.lm import HookedLM, LMCall
    from dspyo3_core.plugins import (
        PluginError,
        PluginInfo,
        PluginLoadWarning,
        PluginManager,
        get_plugin_manager,
        reset_plugin_manager,
    )
    from dspyo3_core.registry import (
        CacheBackendSpec,
        DuplicateNameError,
        EmbedderSpec,
        LMProviderSpec,
        OptimizerSpec,
        Registry,
        RerankerSpec,
        ToolSpec,
        VectorStoreSpec,
    )

__version__ = "0.1.0"


def configure(profile: str | None = None, **lm_overrides: Any) -> HookedLM:
    """Build the LM of ``profile`` (default profile if ``None``) and ``dspy.configure(lm=...)`` with it.

    Call it from the thread that configures DSPy (usually the main thread); use ``dspy.context(lm=...)`` with
    :func:`build_lm` for per-request LMs. Returns the LM.
    """
    import dspy

    from dspyo3_core.config import build_lm, load_settings

    lm = build_lm(load_settings().profile(profile), **lm_overrides)
    dspy.configure(lm=lm)
    return lm


__all__ = [
    "CacheBackendSpec",
    "ConfigError",
    "DuplicateNameError",
    "EmbedderSpec",
    "HookedLM",
    "LMCall",
    "LMProfile",
    "LMProviderSpec",
    "OptimizerSpec",
    "PluginError",
    "PluginInfo",
    "PluginLoadWarning",
    "PluginManager",
    "Registry",
    "RerankerSpec",
    "Settings",
    "ToolSpec",
    "VectorStoreSpec",
    "__version__",
    "build_lm",
    "configure",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "load_settings",
    "mask_secret",
    "reset_plugin_manager",
]

_WHERE = {
    "ConfigError": "dspyo3_core.config",
    "LMProfile": "dspyo3_core.config",
    "Settings": "dspyo3_core.config",
    "build_lm": "dspyo3_core.config",
    "load_settings": "dspyo3_core.config",
    "mask_secret": "dspyo3_core.config",
    "hookimpl": "dspyo3_core.hookspecs",
    "hookspec": "dspyo3_core.hookspecs",
    "HookedLM": "dspyo3_core.lm",
    "LMCall": "dspyo3_core.lm",
    "PluginError": "dspyo3_core.plugins",
    "PluginInfo": "dspyo3_core.plugins",
    "PluginLoadWarning": "dspyo3_core.plugins",
    "PluginManager": "dspyo3_core.plugins",
    "get_plugin_manager": "dspyo3_core.plugins",
    "reset_plugin_manager": "dspyo3_core.plugins",
    "CacheBackendSpec": "dspyo3_core.registry",
    "DuplicateNameError": "dspyo3_core.registry",
    "EmbedderSpec": "dspyo3_core.registry",
    "LMProviderSpec": "dspyo3_core.registry",
    "OptimizerSpec": "dspyo3_core.registry",
    "Registry": "dspyo3_core.registry",
    "RerankerSpec": "dspyo3_core.registry",
    "ToolSpec": "dspyo3_core.registry",
    "VectorStoreSpec": "dspyo3_core.registry",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, __all__)
