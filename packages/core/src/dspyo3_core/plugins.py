"""The plugin manager: a typed facade over pluggy that loads ``dspyo3`` entry points once, lazily.

Behaviour (modelled on simonw/llm, conda and tox):

* every plugin, first-party or third-party, comes from the ``dspyo3`` entry-point group;
* ``DSPYO3_PLUGINS=a,b`` loads only those entry points (core is always loaded), ``DSPYO3_DISABLE_PLUGINS=x``
  skips some, ``DSPYO3_TRACE_PLUGINS=1`` traces every hook call to stderr;
* a plugin that fails to import, or implements a hook that does not exist (a typo), is reported with a
  :class:`PluginLoadWarning` naming it and its distribution, and the rest of the app keeps working
  (``DSPYO3_STRICT_PLUGINS=1`` turns those warnings into errors);
* ``pm.check_pending()`` runs after loading, so no unknown hook stays registered;
* the same name registered twice in a registry is a :class:`~dspyo3_core.registry.DuplicateNameError`
  naming both distributions.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import pluggy

from dspyo3_core import hookspecs
from dspyo3_core.hookspecs import PROJECT
from dspyo3_core.registry import (
    CacheBackendSpec,
    EmbedderSpec,
    LMProviderSpec,
    OptimizerSpec,
    Registry,
    RerankerSpec,
    ToolSpec,
    VectorStoreSpec,
)

S = TypeVar("S")

PluginStatus = Literal["loaded", "failed", "disabled"]

ENTRY_POINT_GROUP = PROJECT
ALWAYS_LOADED = ("core",)

# hook name -> (registry kind shown in messages, spec type)
REGISTRY_HOOKS: dict[str, tuple[str, type]] = {
    "dspyo3_register_lm_providers": ("LM provider", LMProviderSpec),
    "dspyo3_register_embedders": ("embedder", EmbedderSpec),
    "dspyo3_register_vector_stores": ("vector store", VectorStoreSpec),
    "dspyo3_register_rerankers": ("reranker", RerankerSpec),
    "dspyo3_register_tools": ("tool", ToolSpec),
    "dspyo3_register_cache_backends": ("cache backend", CacheBackendSpec),
    "dspyo3_register_optimizers": ("optimizer", OptimizerSpec),
}


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded or registered; the app goes on without it."""


class PluginError(RuntimeError):
    """A plugin problem that cannot be skipped (or any problem, with ``DSPYO3_STRICT_PLUGINS=1``)."""


@dataclass(frozen=True)
class PluginInfo:
    """What ``dspyo3 plugins`` reports about one plugin."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]
    status: PluginStatus
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``name``, ``version``, ``hooks``, ``status`` plus ``distribution`` and ``error``."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": list(self.hooks),
            "status": self.status,
            "error": self.error,
        }


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    return [item.strip() for item in raw.split(",") if item.strip()]


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class _EntryPoint:
    """One entry point of the ``dspyo3`` group: its name, value, distribution (name, version) and how to load it."""

    __slots__ = ("dist", "load", "name", "value", "version")

    def __init__(self, name: str, value: str, dist: str | None, version: str | None, load: Any) -> None:
        self.name, self.value, self.dist, self.version, self.load = name, value, dist, version, load


def _load_value(value: str) -> Any:
    """What ``importlib.metadata.EntryPoint.load`` returns for ``module[:attr.attr]``."""
    import importlib

    module, _, attrs = value.partition(":")
    module = module.strip()
    attrs = attrs.split("[", 1)[0].strip()  # extras (``module:attr [extra]``) do not change what is loaded
    if not module:
        raise ValueError(f"malformed entry point {value!r}")
    target = importlib.import_module(module)
    for attr in filter(None, attrs.split(".")):
        target = getattr(target, attr)
    return target


def _headers(text: str) -> dict[str, str]:
    """The first ``Name`` and ``Version`` headers of a ``METADATA`` / ``PKG-INFO`` file (what ``dist.name`` and
    ``dist.version`` read)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        key = key.lower()
        if sep and key in ("name", "version") and key not in found:
            found[key] = value.strip()
    return found


def _scan_entry_points(group: str) -> list[_EntryPoint] | None:
    """The ``group`` entry points of the distributions on ``sys.path``, found as ``importlib.metadata`` finds them
    (``*.dist-info`` / ``*.egg-info`` folders of each path entry in order, the first distribution of a normalized
    name wins) but without importing it or parsing every distribution: only ``entry_points.txt`` files that mention
    ``group`` are parsed. ``None`` when the environment holds something only ``importlib.metadata`` reads (a zip or
    an egg on ``sys.path``, another distribution finder), so the caller asks it instead."""
    import importlib.machinery
    import re

    if any(getattr(finder, "find_distributions", None) is not None and finder is not importlib.machinery.PathFinder
           for finder in sys.meta_path):
        return None
    seen: set[str] = set()
    found: list[_EntryPoint] = []
    for root in sys.path:
        if not isinstance(root, str) or root.lower().endswith(".egg"):
            return None  # an egg on sys.path (its EGG-INFO is read by importlib.metadata only)
        try:
            children = os.listdir(root or ".")
        except NotADirectoryError:
            return None  # a zip file on sys.path
        except OSError:
            continue  # a path entry that does not exist
        for child in children:
            low = child.lower()
            if not low.endswith((".dist-info", ".egg-info")):
                continue
            name = re.sub(r"[-_.]+", "-", low.rpartition(".")[0].partition("-")[0]).replace("-", "_")
            if name in seen:
                continue
            seen.add(name)
            folder = os.path.join(root, child)
            try:
                with open(os.path.join(folder, "entry_points.txt"), encoding="utf-8") as file:
                    text = file.read()
            except OSError:
                continue
            if group not in text:
                continue
            section: str | None = None
            entries: list[tuple[str, str]] = []
            for raw in text.splitlines():  # importlib.metadata's ``Sectioned`` rules
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                if line.startswith("[") and line.endswith("]"):
                    section = line.strip("[]")
                elif section == group:
                    ep_name, _, value = line.partition("=")
                    entries.append((ep_name.strip(), value.strip()))
            if not entries:
                continue
            meta: dict[str, str] = {}
            for metadata_file in ("METADATA", "PKG-INFO"):  # the first that is not missing or empty, as importlib's
                try:
                    with open(os.path.join(folder, metadata_file), encoding="utf-8") as file:
                        text = file.read()
                except OSError:
                    continue
                if text:
                    meta = _headers(text)
                    break
            for ep_name, value in entries:
                found.append(_EntryPoint(ep_name, value, meta.get("name"), meta.get("version"),
                                         lambda _value=value: _load_value(_value)))
    return found


def _entry_points(group: str) -> list[_EntryPoint]:
    """Every installed entry point of ``group`` (a cheap scan of ``sys.path``; ``importlib.metadata`` where the
    environment needs it)."""
    scanned = _scan_entry_points(group)
    if scanned is not None:
        return scanned
    from importlib import metadata

    return [_EntryPoint(ep.name, ep.value, ep.dist.name if ep.dist is not None else None,
                        ep.dist.version if ep.dist is not None else None, ep.load)
            for ep in metadata.entry_points(group=group)]


class PluginManager:
    """Typed facade over :class:`pluggy.PluginManager` for the ``dspyo3`` project.

    Args:
        entry_points: load plugins from the ``dspyo3`` entry-point group (default). Tests pass ``False`` and
            register plugin objects themselves with :meth:`register`.
    """

    def __init__(self, *, entry_points: bool = True) -> None:
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._use_entry_points = entry_points
        self._loaded = False
        self._lock = threading.RLock()
        self._infos: dict[str, PluginInfo] = {}
        self._dists: dict[str, tuple[str | None, str | None]] = {}
        self._registries: dict[str, Registry[Any]] = {}
        self._load_error: BaseException | None = None
        self._tracing = _truthy("DSPYO3_TRACE_PLUGINS")
        if self._tracing:
            self._pm.trace.root.setwriter(lambda message: sys.stderr.write(f"[dspyo3 trace] {message}"))
            self._pm.enable_tracing()

    # -- loading ---------------------------------------------------------------------------------------------

    @property
    def pluggy(self) -> pluggy.PluginManager:
        """The underlying pluggy manager (for advanced use; prefer the typed methods)."""
        self.load()
        return self._pm

    @property
    def hook(self) -> Any:
        """Hook callers, e.g. ``pm.hook.dspyo3_lm_call(call=...)``. Loads plugins on first use."""
        self.load()
        return self._pm.hook

    @functools.cached_property
    def lm_call_hook(self) -> Any:
        """The ``dspyo3_lm_call`` hook caller (the per-LM-call hot path: a plain attribute read once loaded)."""
        self.load()
        return self._pm.hook.dspyo3_lm_call  # pluggy keeps one caller per hook name

    def load(self) -> None:
        """Load entry-point plugins once; later calls do nothing (or raise the same error again)."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            if self._load_error is not None:
                raise self._load_error
            try:
                if self._use_entry_points:
                    self._load_entry_points()
                self._drop_plugins_with_unknown_hooks()
                self._pm.check_pending()
            except BaseException as exc:
                self._load_error = exc
                raise
            self._loaded = True

    def _load_entry_points(self) -> None:
        allow = _env_list("DSPYO3_PLUGINS")
        block = set(_env_list("DSPYO3_DISABLE_PLUGINS") or [])
        seen: dict[str, str] = {}
        entry_points = sorted(_entry_points(ENTRY_POINT_GROUP), key=lambda e: e.name)
        names = {ep.name for ep in entry_points}
        for variable, listed in (("DSPYO3_PLUGINS", allow or []), ("DSPYO3_DISABLE_PLUGINS", sorted(block))):
            unknown = [name for name in listed if name not in names]
            if unknown:
                warnings.warn(
                    f"{variable} names {', '.join(map(repr, unknown))}, which no installed plugin is called; "
                    f"installed: {', '.join(sorted(names))}",
                    PluginLoadWarning,
                    stacklevel=4,
                )
        for ep in entry_points:
            dist, version = ep.dist, ep.version
            if ep.name in seen and seen[ep.name] != dist:
                raise PluginError(
                    f"plugin name {ep.name!r} is declared by both {seen[ep.name]} and {dist}; "
                    f"uninstall one of them"
                )
            if ep.name in seen:  # the same distribution seen twice on sys.path
                continue
            seen[ep.name] = dist or "?"
            if ep.name not in ALWAYS_LOADED and (ep.name in block or (allow is not None and ep.name not in allow)):
                why = "DSPYO3_DISABLE_PLUGINS" if ep.name in block else "not in DSPYO3_PLUGINS"
                self._infos[ep.name] = PluginInfo(ep.name, dist, version, (), "disabled", why)
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not kill the app
                self._fail(ep.name, dist, version, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
                continue
            try:
                self.register(plugin, name=ep.name, distribution=dist, version=version)
            except pluggy.PluginValidationError as exc:  # e.g. a hook with the wrong argument names
                self._fail(ep.name, dist, version, f"invalid hook implementation: {exc}")

    def _fail(self, name: str, dist: str | None, version: str | None, error: str) -> None:
        self._infos[name] = PluginInfo(name, dist, version, (), "failed", error)
        message = f"dspyo3 plugin {name!r} ({dist or 'no distribution'}) was skipped: {error}"
        if _truthy("DSPYO3_STRICT_PLUGINS"):
            raise PluginError(message)
        warnings.warn(message, PluginLoadWarning, stacklevel=3)

    def _drop_plugins_with_unknown_hooks(self) -> None:
        """Unregister (with a warning) every plugin that implements a ``dspyo3_*`` hook with no spec."""
        known = [name for name in dir(hookspecs) if name.startswith("dspyo3_")]
        for hook_name in list(vars(self._pm.hook)):
            caller = getattr(self._pm.hook, hook_name)
            if caller.spec is not None:
                continue
            for impl in caller.get_hookimpls():
                name = self._pm.get_name(impl.plugin)
                if name is None:
                    continue
                import difflib

                close = difflib.get_close_matches(hook_name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                dist, version = self._dists.get(name, (None, None))
                self._pm.unregister(impl.plugin)
                self._fail(name, dist, version, f"implements unknown hook {hook_name!r}{hint}")

    def register(
        self, plugin: object, name: str | None = None, *, distribution: str | None = None, version: str | None = None
    ) -> str:
        """Register a plugin object (a module or an instance with ``@hookimpl`` methods).

        Returns the name it is registered under. ``distribution`` defaults to ``"<name> (in-process)"``.
        """
        name = self._pm.register(plugin, name=name) or name or str(id(plugin))
        dist = distribution or f"{name} (in-process)"
        self._dists[name] = (dist, version)
        self._infos[name] = PluginInfo(name, dist, version, self._hooks_of(plugin), "loaded")
        self._registries.clear()
        if self._loaded:
            self._drop_plugins_with_unknown_hooks()
        return name

    def unregister(self, name: str) -> None:
        """Unregister the plugin called ``name``."""
        plugin = self._pm.get_plugin(name)
        if plugin is not None:
            self._pm.unregister(plugin)
        self._infos.pop(name, None)
        self._registries.clear()

    def _hooks_of(self, plugin: object) -> tuple[str, ...]:
        callers = self._pm.get_hookcallers(plugin) or []
        return tuple(sorted(caller.name for caller in callers))

    def plugins(self) -> list[PluginInfo]:
        """Every plugin seen, loaded or not, sorted by name."""
        self.load()
        return [self._infos[name] for name in sorted(self._infos)]

    def distribution_of(self, plugin: object) -> str:
        """The distribution (or in-process name) a registered plugin object came from."""
        name = self._pm.get_name(plugin) or "?"
        return self._dists.get(name, (name, None))[0] or name

    # -- registries ------------------------------------------------------------------------------------------

    def registry(self, hook_name: str) -> Registry[Any]:
        """The registry filled by ``hook_name`` (e.g. ``"dspyo3_register_lm_providers"``), built on first use.

        Every implementation is called with its own ``register`` callback, so each entry records the
        distribution that registered it. A plugin whose hook raises is skipped with a warning; a duplicate
        name is an error naming both distributions.
        """
        if hook_name not in REGISTRY_HOOKS:
            raise KeyError(f"{hook_name!r} is not a registry hook; known: {', '.join(sorted(REGISTRY_HOOKS))}")
        self.load()
        with self._lock:
            if hook_name in self._registries:
                return self._registries[hook_name]
            kind, spec_type = REGISTRY_HOOKS[hook_name]
            registry: Registry[Any] = Registry(kind, spec_type)
            for impl in reversed(getattr(self._pm.hook, hook_name).get_hookimpls()):
                dist = self.distribution_of(impl.plugin)
                self._call_isolated(impl, lambda spec, _d=dist: registry.add(spec, _d))
            self._registries[hook_name] = registry
            return registry

    def _call_isolated(self, impl: Any, argument: Any) -> None:
        """Call one hook implementation; a failure warns (naming plugin and distribution) unless strict."""
        from dspyo3_core.registry import DuplicateNameError

        if self._tracing:
            name = self._pm.get_name(impl.plugin) or "?"
            sys.stderr.write(
                f"[dspyo3 trace] {impl.function.__name__} -> {name} ({self.distribution_of(impl.plugin)})\n"
            )
        try:
            impl.function(**{name: argument for name in impl.argnames})
        except DuplicateNameError:
            raise
        except Exception as exc:
            name = self._pm.get_name(impl.plugin) or "?"
            message = (
                f"dspyo3 plugin {name!r} ({self.distribution_of(impl.plugin)}) failed in "
                f"{impl.function.__name__}: {type(exc).__name__}: {exc}"
            )
            if _truthy("DSPYO3_STRICT_PLUGINS"):
                raise PluginError(message) from exc
            warnings.warn(message, PluginLoadWarning, stacklevel=4)

    def lm_providers(self) -> Registry[LMProviderSpec]:
        """Registered LM providers."""
        return self.registry("dspyo3_register_lm_providers")

    def register_commands(self, cli: Any) -> None:
        """Let every plugin add its commands to the root click group; a failing plugin only warns.

        Raises:
            DuplicateNameError: two distributions add a command of the same name (both are named).
        """
        from dspyo3_core.registry import DuplicateNameError

        self.load()
        owners: dict[str, str] = {name: "the dspyo3 CLI" for name in cli.commands}
        for impl in reversed(self._pm.hook.dspyo3_register_commands.get_hookimpls()):
            before = dict(cli.commands)
            self._call_isolated(impl, cli)
            dist = self.distribution_of(impl.plugin)
            for name, command in cli.commands.items():
                if before.get(name) is command:
                    continue
                if name in before:
                    cli.commands[name] = before[name]  # keep the first, then refuse loudly
                    raise DuplicateNameError(
                        f"command {name!r} is registered by both {owners[name]} and {dist}; uninstall one of "
                        "them or disable it with DSPYO3_DISABLE_PLUGINS"
                    )
                owners[name] = dist


CORE_PLUGIN = "dspyo3_core.plugin"
"""Core's own plugin (the ``core`` entry point of dspyo3-core): built-in providers, core commands, the innermost
``dspyo3_lm_call`` impl. It sits above this module (it builds LMs and the CLI), so it is loaded like every other
plugin, by its entry point, never imported from here."""


def _core_plugin() -> Any:
    for ep in _entry_points(PROJECT):
        if ep.name == "core" and ep.value.partition(":")[0].strip() == CORE_PLUGIN:
            return ep.load()
    return _load_value(CORE_PLUGIN)  # dspyo3-core's metadata is not on sys.path (run from a source tree)


def core_only_manager() -> PluginManager:
    """A plugin manager holding only core's own plugin (no entry points): for tests, and for ``doctor`` when the
    installed plugins cannot be loaded."""
    manager = PluginManager(entry_points=False)
    manager.register(_core_plugin(), name="core", distribution="dspyo3-core")
    manager.load()
    return manager


_default: PluginManager | None = None
_default_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, created and loaded on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                manager = PluginManager()
                manager.load()
                _default = manager
    return _default


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests; after changing ``DSPYO3_*`` plugin variables)."""
    global _default
    with _default_lock:
        _default = None
