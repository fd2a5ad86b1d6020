"""Registry programs as :class:`~dspyo3_core.sources.ProgramSource`: what ``dspyo3 serve registry:qa@prod`` serves.

The optimize plugin's ``dspyo3_resolve_program`` hook calls :func:`resolve_reference` for ``registry:NAME@REF`` and
``NAME@REF`` references. A :class:`RegistrySource` follows a stage: :meth:`RegistrySource.current` is the version
the stage points at now (so ``dspyo3 registry promote`` / ``rollback`` are noticed), :meth:`RegistrySource.load`
builds a version with :meth:`ProgramRegistry.load` and its trust rules (checksums and signatures verified, a factory
recorded in the registry's metadata imported only when trusted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dspyo3_core.config import ConfigError
from dspyo3_core.sources import ProgramSourceError
from dspyo3_optimize.programs.errors import RegistryError
from dspyo3_optimize.programs.metadata import STAGES
from dspyo3_optimize.programs.registry import ProgramRegistry, open_registry

__all__ = ["RegistrySource", "parse_reference", "resolve_reference"]

PREFIX = "registry:"


def parse_reference(reference: str) -> tuple[str, str] | None:
    """``(name, ref)`` of ``registry:NAME@REF`` or ``NAME@REF``; None for a reference that is not a registry one
    (``module:attr``, or no ``@``).

    Raises:
        ProgramSourceError: it starts with ``registry:`` but names no program or no version/stage.
    """
    body = reference.strip()
    prefixed = body.startswith(PREFIX)
    if prefixed:
        body = body[len(PREFIX):]
    elif ":" in body or "=" in body:
        return None
    name, at, ref = body.partition("@")
    name, ref = name.strip(), ref.strip()
    if not at or not name or not ref:
        if prefixed:
            raise ProgramSourceError(f"registry reference {reference!r} needs NAME@STAGE or NAME@VERSION, e.g. "
                                     f"registry:{name or 'qa'}@prod")
        return None
    return name, ref


@dataclass
class RegistrySource:
    """One program of a :class:`ProgramRegistry`, at a stage (followed) or a version (pinned).

    Attributes:
        name: the URL name it is served under (the registry name unless the caller renamed it).
        reference: the reference as written (``registry:qa@prod``).
        stage: the stage followed (``dev``, ``staging``, ``prod``), or None for a pinned version or ``latest``.
        registry_name: the program's name in the registry.
        ref: the stage, version or ``latest`` resolved on every :meth:`current`.
        registry: the registry read.
        program: what to load versions into (a module, a factory or its import path); None: the factory
            recorded at registration, if trusted.
        trust_registry: call the recorded factory even when it is not in the trusted list.
    """

    name: str
    reference: str
    stage: str | None
    registry_name: str
    ref: str
    registry: ProgramRegistry
    program: Any = None
    trust_registry: bool = False

    def current(self) -> str:
        """The version the stage (or version) resolves to now.

        Raises:
            ProgramSourceError: the program, stage or version is gone, or the registry cannot be read.
        """
        try:
            return self.registry.resolve(self.registry_name, self.ref)
        except RegistryError as exc:
            raise ProgramSourceError(str(exc)) from None
        except OSError as exc:  # a directory registry on a disk or mount that went away
            raise ProgramSourceError(f"cannot read the registry at {self.registry.url} ({exc}); check it is "
                                     "reachable") from None

    def load(self, version: str) -> Any:
        """A ``dspy.Module`` holding ``version``: :meth:`ProgramRegistry.load` with its checks and trust rules.

        Raises:
            ProgramSourceError: the version fails its checksum or signature, records an untrusted factory, does not
                fit the program, or the program's import path cannot be imported; the message is the registry's.
        """
        program = self.program
        if hasattr(program, "load_state") and hasattr(program, "deepcopy"):
            program = program.deepcopy()  # each version gets its own module: the one being served stays as it is
        try:
            return self.registry.load(self.registry_name, version, program, trust_registry=self.trust_registry)
        except (RegistryError, ConfigError) as exc:
            raise ProgramSourceError(str(exc)) from None


def resolve_reference(reference: str, options: dict[str, Any]) -> RegistrySource | None:
    """The :class:`RegistrySource` for ``reference``, or None when it is not a registry reference.

    ``options``: ``registry`` (a URL or directory; None: ``$DSPYO3_REGISTRY`` or ``[optimize] registry``),
    ``program`` (what to load versions into), ``trust_registry`` (bool).

    Raises:
        ProgramSourceError: the registry has no such program, stage or version (checked now, so a typo fails at
            start-up), or the registry cannot be opened.
    """
    parsed = parse_reference(reference)
    if parsed is None:
        return None
    name, ref = parsed
    trust = bool(options.get("trust_registry", False))
    try:
        registry = open_registry(options.get("registry"), trust_registry=trust)
    except (RegistryError, ConfigError) as exc:
        raise ProgramSourceError(str(exc)) from None
    source = RegistrySource(name=name, reference=reference, stage=ref if ref in STAGES else None,
                            registry_name=name, ref=ref, registry=registry, program=options.get("program"),
                            trust_registry=trust)
    source.current()  # an unknown name, stage or version is an error now
    return source
