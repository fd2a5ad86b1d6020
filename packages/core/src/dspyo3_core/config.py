"""LM profiles and settings: ``dspyo3.toml`` (project), the user config file, and ``DSPYO3_*`` variables.

Precedence, lowest first: the user config (``<user config dir>/dspyo3/config.toml``, or ``$DSPYO3_CONFIG_DIR``),
the project file (``./dspyo3.toml``, or ``$DSPYO3_CONFIG``), then the environment. A file looks like::

    [lm]
    default = "local"

    [lm.profiles.local]
    provider = "openai-compatible"     # openai, anthropic, cohere, ollama, together, azure, openai-compatible
    model = "qwen2.5-7b-instruct"
    api_base = "http://127.0.0.1:8000/v1"
    temperature = 0.0
    max_tokens = 512

    [redis]
    url = "redis://127.0.0.1:6379/0"

    [cache]
    dir = "~/.cache/dspyo3"

Environment: ``DSPYO3_LM`` picks the default profile by name, or defines one inline as ``provider/model``
(``DSPYO3_LM=openai/gpt-4o-mini``; ``DSPYO3_LM_API_BASE`` and ``DSPYO3_LM_API_KEY`` complete it). Provider keys
(``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ...) override keys written in files. Keys are never printed or
logged: :func:`mask_secret` is what ``dspyo3 lm show`` displays.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspyo3_core.errors import ConfigError
from dspyo3_core.registry import LMProviderSpec
from dspyo3_core.secrets import mask_secret, register_secret

__all__ = ["ConfigError", "mask_secret"]  # re-exported: where they have always been importable from

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from dspyo3_core.lm import HookedLM
    from dspyo3_core.native_lm import NativeLM
    from dspyo3_core.offline import OfflineLM
    from dspyo3_core.plugins import PluginManager

PROJECT_FILE = "dspyo3.toml"
# Keys a profile may carry besides provider/model/api_base/api_key/api_key_env; passed to dspy.LM as given.
LM_PARAMS = {
    "temperature", "max_tokens", "num_retries", "cache", "engine", "model_type", "api_version", "timeout",
    "top_p", "stop", "seed", "use_developer_role", "transport",
}




def check_keys(table: Mapping[str, Any], known: Iterable[str], where: str, source: str | None = None) -> None:
    """Raise :class:`ConfigError` when ``table`` has keys outside ``known``.

    The message names each unknown key (with a did-you-mean from ``known`` when one is close), the table
    (``where``, e.g. ``"[optimize]"``), the file (``source``, if given) and the known keys::

        dspyo3.toml: unknown key 'registri' in [optimize] (did you mean 'registry'?); known keys: concurrency, ...
    """
    import difflib

    allowed = sorted(set(known))
    unknown = sorted(str(key) for key in table if key not in allowed)
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.75)
        parts.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    noun = "key" if len(unknown) == 1 else "keys"
    prefix = f"{source}: " if source else ""
    raise ConfigError(f"{prefix}unknown {noun} {', '.join(parts)} in {where}; known keys: "
                      f"{', '.join(allowed) or '(none)'}")


BUILTIN_PROVIDERS: tuple[LMProviderSpec, ...] = (
    LMProviderSpec("openai", "openai", ("OPENAI_API_KEY",), description="OpenAI API (gpt-4o, o3, ...)"),
    LMProviderSpec("anthropic", "anthropic", ("ANTHROPIC_API_KEY",), description="Anthropic Messages API (Claude)"),
    LMProviderSpec("cohere", "cohere", ("COHERE_API_KEY", "CO_API_KEY"), description="Cohere chat models"),
    LMProviderSpec(
        "ollama", "ollama_chat", (), default_api_base="http://localhost:11434", description="Ollama server (local)"
    ),
    LMProviderSpec(
        "together", "together_ai", ("TOGETHERAI_API_KEY", "TOGETHER_API_KEY"), description="Together AI"
    ),
    LMProviderSpec(
        "azure",
        "azure",
        ("AZURE_API_KEY", "AZURE_OPENAI_API_KEY"),
        requires_api_base=True,
        extra_env={"api_version": "AZURE_API_VERSION"},
        description="Azure OpenAI (model = deployment name; needs api_base and api_version)",
    ),
    LMProviderSpec(
        "openai-compatible",
        "openai",
        ("DSPYO3_LM_API_KEY",),
        requires_api_base=True,
        key_required=False,
        description="any OpenAI-compatible server (vLLM, llama.cpp, LM Studio, TGI, ...) at api_base",
    ),
    LMProviderSpec(
        "native-openai",
        "openai",
        ("OPENAI_API_KEY", "DSPYO3_LM_API_KEY"),
        key_required=False,
        transport="native",
        description="OpenAI or any OpenAI-compatible api_base through the Rust transport (no LiteLLM on the call path)",
    ),
    LMProviderSpec(
        "native-anthropic",
        "anthropic",
        ("ANTHROPIC_API_KEY",),
        transport="native",
        description="Anthropic Messages API through the Rust transport",
    ),
    LMProviderSpec(
        "offline",
        "offline",
        (),
        key_required=False,
        transport="offline",
        description="NOT A MODEL: answers every field from the prompt itself, no network (model = extractive)",
    ),
)


@dataclass(frozen=True)
class LMProfile:
    """A named LM configuration.

    Attributes:
        name: profile name.
        provider: provider name (see ``dspyo3 lm providers``).
        model: model id as the provider names it (no route prefix).
        api_base: base URL, if any.
        api_key_env: environment variable holding the key, if the profile names one.
        params: extra ``dspy.LM`` keyword arguments (temperature, max_tokens, engine, ...).
        source: where the profile came from (a file path or ``"environment"``).
    """

    name: str
    provider: str
    model: str
    api_base: str | None = None
    api_key_env: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    api_key_in_file: str | None = field(default=None, repr=False)

    def resolve_key(self, spec: LMProviderSpec) -> tuple[str | None, str]:
        """The API key and where it came from (a variable name, ``"config file"`` or ``"none"``)."""
        names = ([self.api_key_env] if self.api_key_env else []) + list(spec.key_env)
        for name in names:
            value = os.environ.get(name)
            if value:
                register_secret(value)  # whatever variable holds it, it is masked wherever it is printed
                return value, name
        if self.api_key_in_file:
            return self.api_key_in_file, "config file"
        return None, "none"

    def litellm_model(self, spec: LMProviderSpec) -> str:
        """The model string handed to ``dspy.LM`` (``<route prefix>/<model>``)."""
        if not spec.model_prefix or self.model.startswith(spec.model_prefix + "/"):
            return self.model
        return f"{spec.model_prefix}/{self.model}"

    def effective_api_base(self, spec: LMProviderSpec) -> str | None:
        """``api_base`` from the profile, else the provider's default."""
        return self.api_base or spec.default_api_base

    def describe(self, spec: LMProviderSpec) -> dict[str, Any]:
        """A JSON-ready description with the key masked: safe to print."""
        key, key_source = self.resolve_key(spec)
        return {
            "name": self.name,
            "provider": self.provider,
            "model": self.model,
            "litellm_model": self.litellm_model(spec),
            "api_base": self.effective_api_base(spec),
            "api_key": mask_secret(key),
            "api_key_source": key_source,
            "params": dict(self.params),
            "source": self.source,
        }


@dataclass
class Settings:
    """Everything read from config files and the environment."""

    profiles: dict[str, LMProfile] = field(default_factory=dict)
    default_profile: str | None = None
    redis_url: str | None = None
    cache_dir: Path = field(default_factory=lambda: Path(_user_dir("cache")))
    files: list[Path] = field(default_factory=list)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Other top-level tables (``[production]``, ...) for the plugins that own them; a later file's keys win."""

    def profile(self, name: str | None = None) -> LMProfile:
        """The profile called ``name`` (or the default one); the error lists what exists and how to add one."""
        chosen = name or self.default_profile
        if chosen is None and self.profiles:
            raise ConfigError(
                f"no default LM profile; name one of {', '.join(sorted(self.profiles))} in [lm] default in "
                f"{PROJECT_FILE} (or pass --profile NAME, or set DSPYO3_LM)"
            )
        if chosen is None:
            raise ConfigError(
                "no LM profile is configured; set DSPYO3_LM=provider/model (e.g. openai/gpt-4o-mini, or "
                f"offline/extractive to try things without a model) or add [lm.profiles.NAME] to {PROJECT_FILE} and "
                "name it in [lm] default"
            )
        try:
            return self.profiles[chosen]
        except KeyError:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise ConfigError(f"unknown LM profile {chosen!r}; known profiles: {known}") from None


def _user_dir(kind: str) -> str:
    """platformdirs' ``user_config_dir("dspyo3")`` / ``user_cache_dir("dspyo3")``. On Linux that is the XDG rule
    (``$XDG_CONFIG_HOME`` or ``~/.config``, ``$XDG_CACHE_HOME`` or ``~/.cache``), computed here because importing
    platformdirs' Unix backend (which pulls in tempfile, shutil and random) is a tenth of the CLI's start-up;
    elsewhere platformdirs decides."""
    if sys.platform.startswith("linux"):
        variable, fallback = ("XDG_CONFIG_HOME", "~/.config") if kind == "config" else ("XDG_CACHE_HOME", "~/.cache")
        base = os.environ.get(variable, "").strip() or os.path.expanduser(fallback)
        return os.path.join(base, "dspyo3")
    import platformdirs

    return str(platformdirs.user_config_dir("dspyo3") if kind == "config" else platformdirs.user_cache_dir("dspyo3"))


def user_config_path() -> Path:
    """The user config file (``$DSPYO3_CONFIG_DIR/config.toml`` or the platform's config dir)."""
    base = os.environ.get("DSPYO3_CONFIG_DIR") or _user_dir("config")
    return Path(base) / "config.toml"


def project_config_path() -> Path:
    """The project file (``$DSPYO3_CONFIG`` or ``./dspyo3.toml``)."""
    return Path(os.environ.get("DSPYO3_CONFIG") or PROJECT_FILE)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}; fix the line it names") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _profile_from_table(name: str, table: Any, source: str) -> LMProfile:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [lm.profiles.{name}] must be a table of settings")
    data = dict(table)
    provider = data.pop("provider", None)
    model = data.pop("model", None)
    if not isinstance(provider, str) or not provider:
        raise ConfigError(f"{source}: profile {name!r} has no provider; add provider = \"openai\" (or another)")
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{source}: profile {name!r} has no model; add model = \"...\"")
    api_base = data.pop("api_base", None)
    api_key_env = data.pop("api_key_env", None)
    api_key = data.pop("api_key", None)
    unknown = sorted(set(data) - LM_PARAMS)
    if unknown:
        raise ConfigError(
            f"{source}: profile {name!r} has unknown settings {unknown}; allowed: provider, model, api_base, "
            f"api_key_env, api_key, {', '.join(sorted(LM_PARAMS))}"
        )
    return LMProfile(name, provider, model, api_base, api_key_env, data, source, api_key)


def _merge_file(settings: Settings, path: Path) -> None:
    data = _read_toml(path)
    settings.files.append(path)
    lm = data.get("lm", {})
    if not isinstance(lm, dict):
        raise ConfigError(f"{path}: [lm] must be a table")
    for name, table in (lm.get("profiles") or {}).items():
        settings.profiles[name] = _profile_from_table(name, table, str(path))
    if lm.get("default"):
        settings.default_profile = str(lm["default"])
    redis = data.get("redis") or {}
    if redis.get("url"):
        settings.redis_url = str(redis["url"])
    cache = data.get("cache") or {}
    if cache.get("dir"):
        settings.cache_dir = Path(str(cache["dir"])).expanduser()
    for name, table in data.items():
        if name not in ("lm", "redis", "cache") and isinstance(table, dict):
            settings.tables[name] = _deep_merge(settings.tables.get(name, {}), table)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def load_settings() -> Settings:
    """Read the user file, the project file and the environment, in that order of precedence."""
    settings = Settings()
    for path in (user_config_path(), project_config_path()):
        if path.is_file():
            _merge_file(settings, path)
    env_lm = os.environ.get("DSPYO3_LM", "").strip()
    if env_lm:
        if env_lm in settings.profiles:
            settings.default_profile = env_lm
        elif "/" in env_lm:
            provider, _, model = env_lm.partition("/")
            settings.profiles["env"] = LMProfile(
                "env",
                provider,
                model,
                api_base=os.environ.get("DSPYO3_LM_API_BASE") or None,
                api_key_env="DSPYO3_LM_API_KEY" if os.environ.get("DSPYO3_LM_API_KEY") else None,
                source="DSPYO3_LM",
            )
            settings.default_profile = "env"
        else:
            known = ", ".join(sorted(settings.profiles)) or "none"
            raise ConfigError(
                f"DSPYO3_LM={env_lm!r} is neither a profile name (known: {known}) nor provider/model "
                "(e.g. openai/gpt-4o-mini)"
            )
    register_secret(*(profile.api_key_in_file for profile in settings.profiles.values()))
    if os.environ.get("DSPYO3_REDIS_URL"):
        settings.redis_url = os.environ["DSPYO3_REDIS_URL"]
    if os.environ.get("DSPYO3_CACHE_DIR"):
        settings.cache_dir = Path(os.environ["DSPYO3_CACHE_DIR"]).expanduser()
    return settings


def build_lm(
    profile: LMProfile, *, plugin_manager: PluginManager | None = None, **overrides: Any
) -> HookedLM | NativeLM | OfflineLM:
    """Turn a profile into an LM whose calls go through the ``dspyo3_lm_call`` hook: the LM layer's factory,
    :func:`dspyo3_core.lm_factory.build_lm` (see there).

    Raises:
        ConfigError: unknown provider or transport, or a setting the provider needs is missing.
    """
    from dspyo3_core.lm_factory import build_lm as factory

    return factory(profile, plugin_manager=plugin_manager, **overrides)
