"""Typed registry entries that plugins hand to ``dspyo3_register_*`` hooks, and the registry that holds them.

Each spec names a thing (a provider, an embedder, a store, ...) and a factory for it. The plugin manager fills a
:class:`Registry` per kind; two plugins registering the same name is an error that names both distributions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar


class DuplicateNameError(ValueError):
    """Two plugins registered the same name in one registry."""


@dataclass(frozen=True)
class LMProviderSpec:
    """How a named provider turns a profile into ``dspy.LM`` keyword arguments.

    Attributes:
        name: provider name used in profiles (``provider = "openai"``).
        model_prefix: LiteLLM route prefix put before the model id (``"openai"`` -> ``openai/gpt-4o-mini``);
            empty to use the model string as written.
        key_env: environment variables that may hold the API key, first match wins; empty if no key is needed.
        default_api_base: base URL used when the profile gives none (e.g. a local Ollama).
        requires_api_base: the profile must give ``api_base`` (OpenAI-compatible servers, Azure).
        extra_env: other environment variables read into LM kwargs, as ``{kwarg: ENV_NAME}``; doctor fails when
            one is neither in the profile nor in the environment.
        key_required: calls fail without a key (false for servers that usually run without auth).
        description: one line shown by ``dspyo3 lm providers``.
        transport: ``"litellm"`` (``dspy.LM`` on DSPy's engines) or ``"native"`` (``dspy.LM`` on the Rust client,
            :mod:`dspyo3_core.native_engine`); a profile's ``transport = "..."`` overrides it.
    """

    name: str
    model_prefix: str
    key_env: tuple[str, ...] = ()
    default_api_base: str | None = None
    requires_api_base: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    key_required: bool = True
    description: str = ""
    transport: str = "litellm"


@dataclass(frozen=True)
class FactorySpec:
    """A named thing built on demand: ``factory(**options)`` returns the instance.

    Attributes:
        name: registry name (unique per kind).
        factory: callable that builds the instance from keyword options.
        description: one line shown in listings.
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""


class EmbedderSpec(FactorySpec):
    """An embedder: ``factory(**options)`` returns an object that embeds a batch of texts."""


class VectorStoreSpec(FactorySpec):
    """A vector-store backend: ``factory(**options)`` returns a store instance."""


class RerankerSpec(FactorySpec):
    """A reranker: ``factory(**options)`` returns an object that reorders passages for a query."""


class CacheBackendSpec(FactorySpec):
    """A cache backend: ``factory(**options)`` returns a cache tier."""


class OptimizerSpec(FactorySpec):
    """An optimizer: ``factory(**options)`` returns a DSPy teleprompter."""


@dataclass(frozen=True)
class ToolSpec:
    """An agent tool: ``func`` is what ``dspy.Tool`` wraps."""

    name: str
    func: Callable[..., Any]
    description: str = ""


S = TypeVar("S")


@dataclass(frozen=True)
class Entry(Generic[S]):
    """A registered spec and the distribution that registered it."""

    spec: S
    distribution: str


class Registry(Generic[S]):
    """Name -> spec mapping for one kind of thing, filled by one ``dspyo3_register_*`` hook.

    Args:
        kind: human name of the kind, used in error messages (``"LM provider"``).
        spec_type: the dataclass every registered spec must be an instance of.
    """

    def __init__(self, kind: str, spec_type: type[S]) -> None:
        self.kind = kind
        self.spec_type = spec_type
        self._entries: dict[str, Entry[S]] = {}

    def add(self, spec: S, distribution: str) -> None:
        """Register ``spec`` on behalf of ``distribution``.

        Raises:
            TypeError: ``spec`` is not a ``spec_type``.
            DuplicateNameError: the name is taken; the message names both distributions.
        """
        if not isinstance(spec, self.spec_type):
            raise TypeError(
                f"{distribution} registered a {type(spec).__name__} as a {self.kind}; "
                f"pass a dspyo3_core.registry.{self.spec_type.__name__} instead"
            )
        name = getattr(spec, "name", "")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{distribution} registered a {self.kind} with an empty name; give it a name")
        if name in self._entries:
            first = self._entries[name].distribution
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered by both {first} and {distribution}; "
                f"uninstall one of them or disable it with DSPYO3_DISABLE_PLUGINS"
            )
        self._entries[name] = Entry(spec, distribution)

    def get(self, name: str) -> S:
        """Return the spec registered as ``name``; the ``KeyError`` lists the known names."""
        try:
            return self._entries[name].spec
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def distribution_of(self, name: str) -> str:
        """The distribution that registered ``name``."""
        return self._entries[name].distribution

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[S]:
        return (entry.spec for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
