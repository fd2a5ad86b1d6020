"""The LM layer's factory: turn an LM profile into a hooked LM (:class:`~dspyo3_core.lm.HookedLM`, on DSPy's
engines or on the native ones of :mod:`dspyo3_core.native_engine`, or :class:`~dspyo3_core.offline.OfflineLM`).

Profiles are parsed by :mod:`dspyo3_core.config` (the app layer), which re-exports :func:`build_lm`; this module
does not import the config module: it takes any object shaped like a profile (:class:`LMProfileLike`). The LM
classes are imported when an LM is built, so importing this module does not import DSPy.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

from dspyo3_core.errors import ConfigError
from dspyo3_core.plugins import get_plugin_manager
from dspyo3_core.secrets import register_secret, secret_values

if TYPE_CHECKING:
    from dspyo3_core.lm import HookedLM
    from dspyo3_core.native_lm import NativeLM
    from dspyo3_core.offline import OfflineLM
    from dspyo3_core.plugins import PluginManager
    from dspyo3_core.registry import LMProviderSpec

__all__ = ["ENGINE_PARAMS", "NATIVE_PREFIXES", "TRANSPORTS", "LMProfileLike", "build_lm"]

TRANSPORTS = ("litellm", "native")
"""The values a profile's ``transport`` may take."""
NATIVE_PREFIXES = ("openai", "anthropic", "together_ai", "ollama_chat", "ollama", "hosted_vllm")
"""LiteLLM route prefixes the native transport can serve (OpenAI chat completions or Anthropic messages)."""
ENGINE_PARAMS = frozenset({
    # dspy.LM's own settings
    "cache", "num_retries", "model_type", "use_developer_role", "rollout_id", "callbacks", "transport",
    # request options DSPy's canonical request carries
    "temperature", "max_tokens", "max_completion_tokens", "top_p", "stop", "seed", "n", "num_generations",
    "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs", "response_format", "user",
    "service_tier", "store", "metadata", "reasoning_effort",
})
"""Profile params a ``transport = "native"`` profile may set, besides the engines' connection settings
(:data:`dspyo3_core.native_engine.CONNECTION_SETTINGS`), and still get a ``dspy.LM`` on the native engines; with
any other (provider-specific options such as ``repetition_penalty`` or ``extra_body``, or ``pricing=``) it gets
:class:`~dspyo3_core.native_lm.NativeLM`, which sends them as written."""


class LMProfileLike(Protocol):
    """What :func:`build_lm` reads from a profile (:class:`dspyo3_core.config.LMProfile` has all of it)."""

    @property
    def name(self) -> str:
        """Profile name."""

    @property
    def provider(self) -> str:
        """Provider name (a registered :class:`~dspyo3_core.registry.LMProviderSpec`)."""

    @property
    def model(self) -> str:
        """Model id as the provider names it."""

    @property
    def params(self) -> dict[str, Any]:
        """Extra ``dspy.LM`` keyword arguments."""

    @property
    def source(self) -> str:
        """Where the profile came from (for messages)."""

    def resolve_key(self, spec: LMProviderSpec) -> tuple[str | None, str]:
        """The API key for ``spec`` and where it came from."""

    def litellm_model(self, spec: LMProviderSpec) -> str:
        """The LiteLLM model string (route prefix included)."""

    def effective_api_base(self, spec: LMProviderSpec) -> str | None:
        """The base URL to call, if any."""


def build_lm(
    profile: LMProfileLike, *, plugin_manager: PluginManager | None = None, **overrides: Any
) -> HookedLM | NativeLM | OfflineLM:
    """Turn a profile into an LM whose calls go through the ``dspyo3_lm_call`` hook: a
    :class:`~dspyo3_core.lm.HookedLM` (``dspy.LM``; with ``transport = "native"`` or a native provider, its engines
    are the Rust client of :mod:`dspyo3_core.native_engine`); the ``offline`` provider gives an
    :class:`~dspyo3_core.offline.OfflineLM` (not a model: answers from the prompt).

    ``profile`` is a :class:`dspyo3_core.config.LMProfile` (or any object with the same fields and methods).

    Raises:
        ConfigError: unknown provider or transport, or a setting the provider needs is missing.
    """
    from dspyo3_core.lm import HookedLM

    manager = plugin_manager or get_plugin_manager()
    providers = manager.lm_providers()
    if profile.provider not in providers:
        raise ConfigError(
            f"profile {profile.name!r} ({profile.source}) names unknown provider {profile.provider!r}; "
            f"known providers: {', '.join(providers.names())}"
        )
    spec = providers.get(profile.provider)
    api_base = profile.effective_api_base(spec)
    if spec.requires_api_base and not api_base:
        where = "set DSPYO3_LM_API_BASE" if profile.source == "DSPYO3_LM" else 'add api_base = "http://..." to it'
        raise ConfigError(f"profile {profile.name!r}: provider {spec.name!r} needs api_base; {where}")
    kwargs: dict[str, Any] = dict(profile.params)
    for kwarg, env_name in spec.extra_env.items():
        if kwarg not in kwargs and os.environ.get(env_name):
            kwargs[kwarg] = os.environ[env_name]
    key, _ = profile.resolve_key(spec)
    if key is None and spec.requires_api_base and spec.model_prefix == "openai":
        key = "EMPTY"  # OpenAI-compatible servers without auth still need a non-empty key in the client
    if key is not None:
        kwargs["api_key"] = key
    register_secret(*secret_values(kwargs))
    if api_base:
        kwargs["api_base"] = api_base
    kwargs.update(overrides)
    if spec.transport == "offline":
        from dspyo3_core.offline import MODES, OfflineLM

        if profile.model.removeprefix("offline/") not in MODES:
            raise ConfigError(f"profile {profile.name!r}: offline model {profile.model!r} is unknown; use "
                              f"{', '.join(MODES)} (DSPYO3_LM=offline/extractive)")
        for unused in ("api_key", "api_base", "cache", "num_retries", "timeout", "transport"):
            kwargs.pop(unused, None)
        return OfflineLM(profile.model, plugin_manager=manager, **kwargs)
    transport = kwargs.pop("transport", spec.transport)
    if transport not in TRANSPORTS:
        raise ConfigError(f"profile {profile.name!r}: transport = {transport!r}; use one of {', '.join(TRANSPORTS)}")
    model = profile.litellm_model(spec)
    if transport == "native":
        from dspyo3_core.native_engine import CONNECTION_SETTINGS, native_lm

        prefix = model.split("/", 1)[0]
        if prefix not in NATIVE_PREFIXES or "api_version" in kwargs:
            raise ConfigError(
                f"profile {profile.name!r}: provider {spec.name!r} cannot use transport = \"native\" (it speaks "
                "OpenAI chat completions and Anthropic messages); remove transport or use an OpenAI-compatible api_base"
            )
        for unsupported in ("engine", "async_engine"):
            if unsupported in kwargs:
                raise ConfigError(f"profile {profile.name!r}: transport = \"native\" is the engine; remove "
                                  f"{unsupported} (or remove transport to choose DSPy's engine yourself)")
        if kwargs.get("model_type", "chat") != "chat":
            raise ConfigError(f"profile {profile.name!r}: the native transport speaks chat APIs; remove "
                              f"model_type = {kwargs['model_type']!r} or transport = \"native\"")
        base = str(kwargs.get("api_base") or "").rstrip("/")
        if prefix.startswith("ollama") and base and not base.endswith("/v1"):
            kwargs["api_base"] = base + "/v1"  # Ollama's OpenAI-compatible route
        if set(kwargs) <= ENGINE_PARAMS | CONNECTION_SETTINGS:
            # a HookedLM (a dspy.LM: DSPy's cache, retries, history, streaming) whose engines are the Rust client
            return native_lm(model, lm_class=HookedLM, plugin_manager=manager, **kwargs)  # type: ignore[no-any-return]
        from dspyo3_core.native_lm import NativeLM  # options DSPy's request model cannot carry: sent as written

        return NativeLM(model, plugin_manager=manager, **kwargs)
    return HookedLM(model, plugin_manager=manager, **kwargs)
