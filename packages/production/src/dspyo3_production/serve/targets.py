"""Where a served program comes from: ``dspyo3 serve TARGET`` and ``[[serve.programs]] target = ...``.

A target is one of::

    registry:qa@prod                 the registry stage (or version) qa@prod; followed while served
    qa@prod / qa@1.2.0               the same, without the prefix
    my_app.programs:qa               a dspy.Module instance, or a zero-argument factory (class or function)
    my_app.programs:build_qa=qa.json a factory, then the state saved with program.save("qa.json") (JSON only)

optionally prefixed by ``NAME=`` to choose the URL name (``/v1/programs/NAME``): ``support=registry:qa@prod``.

Registry references are resolved by whichever installed plugin implements ``dspyo3_resolve_program``
(dspyo3-optimize's program registry), so this module never imports the registry itself. Each target becomes a
:class:`~dspyo3_core.sources.ProgramSource`: ``current()`` names the version to serve now (a registry stage moves
with ``dspyo3 registry promote`` / ``rollback``; a saved file's version is the sha256 of its bytes, so a replaced
file is noticed too), ``load(version)`` builds that version.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspyo3_core.sources import ProgramSource, ProgramSourceError

__all__ = ["LocalSource", "SavedSource", "default_name", "default_name_of", "resolve_target", "split_name"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ATTR = _MODULE
_FORMS = ("registry:NAME@STAGE|VERSION, NAME@STAGE|VERSION, package.module:attr or "
          "package.module:factory=saved.json")


def split_name(target: str) -> tuple[str | None, str]:
    """``("support", "registry:qa@prod")`` for ``"support=registry:qa@prod"``; ``(None, target)`` without a
    ``NAME=`` prefix (the part before the first ``=`` must be a plain name: no ``:``, ``@`` or ``/``)."""
    head, sep, rest = target.partition("=")
    if sep and _NAME.match(head.strip()) and "@" not in head:
        return head.strip(), rest.strip()
    return None, target


def _import(module_name: str, attr: str, target: str) -> Any:
    """``module_name.attr`` (attr may be dotted); the current directory is importable, as with ``python -m``."""
    import importlib

    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProgramSourceError(
            f"cannot import {module_name!r} for target {target!r} ({exc}); install the package that provides it, "
            f"or run from the directory holding {module_name.split('.')[0]}.py") from None
    except Exception as exc:  # the module itself raised while importing
        raise ProgramSourceError(f"importing {module_name!r} for target {target!r} raised {type(exc).__name__}: "
                                 f"{exc}; fix the module") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ProgramSourceError(f"module {module_name!r} has no attribute {attr!r} (target {target!r}); "
                                     f"name a dspy.Module or a factory defined in {module_name}") from None
    return obj


def _build(obj: Any, target: str) -> Any:
    """A ``dspy.Module`` from ``obj``: the instance itself, or what a zero-argument factory returns."""
    import dspy

    if isinstance(obj, dspy.Module):
        return obj
    if callable(obj):
        try:
            made = obj()
        except TypeError as exc:
            raise ProgramSourceError(f"{target} must be a dspy.Module or a factory callable without arguments; "
                                     f"calling it failed ({exc})") from None
        except Exception as exc:
            raise ProgramSourceError(f"building {target} raised {type(exc).__name__}: {exc}; fix the factory") \
                from None
        if not isinstance(made, dspy.Module):
            raise ProgramSourceError(f"{target} returned a {type(made).__name__}, not a dspy.Module; make the "
                                     "factory return the program")
        return made
    raise ProgramSourceError(f"{target} is a {type(obj).__name__}, not a dspy.Module or a factory that builds one")


@dataclass
class LocalSource:
    """A program from code (``package.module:attr``): one version, ``"local"``, that never changes.

    ``load`` returns the module instance itself, or a new one from the factory."""

    name: str
    reference: str
    module_name: str
    attr: str
    stage: str | None = None
    _obj: Any = field(default=None, repr=False)

    def current(self) -> str:
        """Always ``"local"``."""
        return "local"

    def load(self, version: str) -> Any:
        """The module (``version`` must be ``"local"``)."""
        if version != "local":
            raise ProgramSourceError(f"{self.reference} has only the version 'local', not {version!r}")
        if self._obj is None:
            self._obj = _import(self.module_name, self.attr, self.reference)
        return _build(self._obj, self.reference)


@dataclass
class SavedSource:
    """A factory plus a program saved as JSON (``package.module:factory=saved.json``).

    The version is ``sha256:`` and the first 12 hex digits of the file's sha256, read each time :meth:`current`
    is called: replacing the file is a new version. Only learned state is applied (demos, instructions; see
    :mod:`dspyo3_core.program_state`), never LM settings or code; pickles are refused."""

    name: str
    reference: str
    module_name: str
    attr: str
    path: Path
    stage: str | None = None

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise ProgramSourceError(f"cannot read the saved program {self.path} ({exc.strerror or exc}); check "
                                     "the path in the target") from None

    def current(self) -> str:
        """``sha256:<first 12 hex digits>`` of the file now."""
        return "sha256:" + hashlib.sha256(self._read()).hexdigest()[:12]

    def load(self, version: str) -> Any:
        """A new module from the factory with the file's state applied; the file must still be ``version``."""
        from dspyo3_core.files import loads_json
        from dspyo3_core.program_state import UnsafeStateError, apply_state

        data = self._read()
        found = "sha256:" + hashlib.sha256(data).hexdigest()[:12]
        if found != version:
            raise ProgramSourceError(f"{self.path} changed while loading (now {found}, not {version}); it is "
                                     "loaded on the next check")
        try:
            state = loads_json(data, source=str(self.path))
        except ValueError as exc:  # also UnicodeDecodeError
            raise ProgramSourceError(f"{self.path} is not a program saved as JSON ({exc}); save it with "
                                     "program.save('x.json')") from None
        module = _build(_import(self.module_name, self.attr, self.reference), self.reference)
        try:
            return apply_state(module, state, source=str(self.path))
        except UnsafeStateError as exc:
            raise ProgramSourceError(str(exc)) from None
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise ProgramSourceError(f"{self.path} does not fit the program {self.module_name}:{self.attr} builds "
                                     f"({type(exc).__name__}: {exc}); use the factory it was saved from") from None


def _registry_source(name: str | None, reference: str, registry: str | None, trust_registry: bool,
                     program: str | None, plugin_manager: Any) -> ProgramSource:
    if plugin_manager is None:
        from dspyo3_core.plugins import get_plugin_manager

        plugin_manager = get_plugin_manager()
    options = {"registry": registry, "trust_registry": trust_registry, "program": program}
    source = plugin_manager.hook.dspyo3_resolve_program(reference=reference, options=options)
    if source is None:
        raise ProgramSourceError(f"no installed plugin resolves the registry reference {reference!r}; install "
                                 "dspyo3-optimize (pip install dspyo3-optimize), which provides the program registry")
    if not isinstance(source, ProgramSource):
        raise ProgramSourceError(f"the plugin that resolved {reference!r} returned a {type(source).__name__}, "
                                 "not a ProgramSource; fix or disable that plugin")
    if name is not None:
        try:
            source.name = name
        except AttributeError:
            pass  # a read-only source keeps its registry name; the caller still has the NAME= it asked for
    return source


def resolve_target(target: str, *, registry: str | None = None, trust_registry: bool = False,
                   program: str | None = None, plugin_manager: Any = None) -> ProgramSource:
    """The :class:`~dspyo3_core.sources.ProgramSource` for one ``dspyo3 serve`` target (see the module docstring).

    Args:
        target: ``[NAME=]registry:NAME@REF``, ``[NAME=]NAME@REF``, ``[NAME=]package.module:attr`` or
            ``[NAME=]package.module:factory=saved.json``.
        registry: the registry URL or directory for registry references (None: the configured one).
        trust_registry: let the registry import the program factory its metadata records (only for a registry
            nobody else can write to).
        program: ``package.module:attr`` of the program (or factory) to load registry versions into, instead of
            the factory recorded at registration.
        plugin_manager: the plugin manager whose ``dspyo3_resolve_program`` hook resolves registry references
            (default: the process-wide one).

    Returns:
        a source whose ``name`` is the URL name: ``NAME=`` if given, else :func:`default_name`.

    Raises:
        ProgramSourceError: the target is malformed, its module cannot be imported, no plugin resolves a registry
            reference, or the registry has no such program or stage; the message says what to do.
    """
    if not isinstance(target, str) or not target.strip():
        raise ProgramSourceError(f"empty program target; write {_FORMS}")
    name, rest = split_name(target.strip())
    rest = rest.strip()
    if rest.startswith("registry:"):
        reference = rest[len("registry:"):]
        if "@" not in reference or not reference.partition("@")[0] or not reference.partition("@")[2]:
            raise ProgramSourceError(f"registry target {rest!r} needs a stage or version: registry:NAME@prod or "
                                     "registry:NAME@1.2.0")
        return _registry_source(name, rest, registry, trust_registry, program, plugin_manager)
    if ":" not in rest:
        head, at, ref = rest.partition("@")
        if not at or not head or not ref:
            raise ProgramSourceError(f"program target {rest!r} is not one of: {_FORMS}")
        return _registry_source(name, rest, registry, trust_registry, program, plugin_manager)
    module_name, _, attr = rest.partition(":")
    attr, eq, saved = attr.partition("=")
    module_name, attr, saved = module_name.strip(), attr.strip(), saved.strip()
    if not _MODULE.match(module_name) or not _ATTR.match(attr):
        raise ProgramSourceError(f"program target {rest!r} is not one of: {_FORMS}")
    if not eq:
        return LocalSource(name or default_name_of(attr), rest, module_name, attr)
    if not saved:
        raise ProgramSourceError(f"program target {rest!r} names no saved file after '='; write "
                                 f"{module_name}:{attr}=path/to/saved.json")
    path = Path(saved).expanduser()
    if path.suffix.lower() != ".json":
        raise ProgramSourceError(f"{saved}: dspyo3 serve loads programs saved as JSON (program.save('x.json')); "
                                 "pickles (.pkl) can run arbitrary code when loaded and are refused; save the "
                                 "program as .json")
    source = SavedSource(name or default_name_of(attr), rest, module_name, attr, path)
    source.current()  # a missing or unreadable file is an error now, not on the first request
    return source


def default_name_of(attr: str) -> str:
    """The URL name for a program from code: the last part of its attribute path, made URL-safe."""
    base = attr.rsplit(".", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip("_.-") or "program"
    return cleaned[:64]


def default_name(source: ProgramSource) -> str:
    """The URL name ``dspyo3 serve`` gives ``source`` when the target had no ``NAME=``: its ``name`` (the registry
    name, or the attribute of a ``module:attr`` target)."""
    return str(source.name)
