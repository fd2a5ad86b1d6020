"""What a failure means for the user: one line, ``what went wrong; how to fix it``.

The CLI reports every error no command handled through :func:`describe`: our own errors (their messages already
name the fix), DSPy's LM and adapter errors (an unreachable endpoint, a rejected key, a rate limit, an answer that
does not follow the output format), missing packages and files. Anything else is unexpected and says how to see
the traceback. Nothing here imports DSPy: an exception can only be one of DSPy's if DSPy is already imported.
"""

from __future__ import annotations

import sys

__all__ = ["describe", "expected", "install_advice"]

_DEBUG_HINT = "set DSPYO3_DEBUG=1 to see the traceback"

# DSPy exception class name -> the fix (checked along the class's MRO, most specific first)
_LM_FIXES: dict[str, str] = {
    "LMNotConfiguredError": "set DSPYO3_LM (e.g. openai/gpt-4o-mini, or offline/extractive to try things without a "
                            "model) or add a profile to dspyo3.toml (dspyo3 lm list)",
    "LMAuthError": "check the profile's key (dspyo3 lm show PROFILE shows where it comes from), then dspyo3 lm test "
                   "PROFILE",
    "LMBillingError": "check the provider account's billing or quota",
    "LMRateLimitError": "wait and retry, lower the concurrency, or set a rate limit",
    "ContextWindowExceededError": "shorten the input (fewer passages or demos) or use a model with a longer context",
    "LMUnsupportedModelError": "check the model name in the profile (dspyo3 lm show PROFILE)",
    "LMInvalidRequestError": "check the profile's settings for this model (dspyo3 lm show PROFILE)",
    "LMTimeoutError": "check the endpoint with dspyo3 lm test PROFILE, or raise the profile's timeout",
    "LMServerError": "the provider failed; retry later, or configure a fallback profile",
    "LMTransportError": "check api_base and that the server is running (dspyo3 lm test PROFILE)",
    "LMConfigurationError": "fix the profile's settings (dspyo3 lm show PROFILE)",
    "LMCollectionLimitError": "raise the limit the message names, if the answer is legitimate",
    "LMError": "check the LM with dspyo3 lm test PROFILE",
    "AdapterParseError": "the model's answer did not follow the output format; use a model that follows "
                         "instructions better (a plain retry gets DSPy's cached answer back: set cache = false in "
                         "the LM profile, or reword the input, to ask again)",
}


def install_advice(distribution: str, extra: str | None = None) -> str:
    """The ``pip install`` command that adds ``distribution`` (with ``extra``) to this environment, the way it was
    installed: from a local directory (a checkout, editable or not) the command names that directory, otherwise the
    package index. E.g. ``install_advice("dspyo3-rag", "chroma")`` -> ``pip install 'dspyo3-rag[chroma]'`` or
    ``pip install '/src/dspyo3/packages/rag[chroma]'``."""
    import json
    from importlib import metadata
    from urllib.parse import unquote, urlparse

    suffix = f"[{extra}]" if extra else ""
    target = distribution
    try:
        direct = metadata.distribution(distribution).read_text("direct_url.json")
        info = json.loads(direct) if direct else {}
        url = urlparse(str(info.get("url", "")))
        if url.scheme == "file" and "dir_info" in info:  # pip install ./packages/rag, or -e
            target = unquote(url.path)
    except (metadata.PackageNotFoundError, ValueError, OSError, AttributeError):
        pass
    return f"pip install '{target}{suffix}'"


def _dspy_fix(exc: BaseException) -> str | None:
    if "dspy" not in sys.modules:
        return None
    for cls in type(exc).__mro__:
        if cls.__module__.startswith("dspy") and cls.__name__ in _LM_FIXES:
            return _LM_FIXES[cls.__name__]
    return None


def _first_line(text: str, limit: int = 400) -> str:
    """The first non-blank line of a message (DSPy's add paragraphs of advice below it), cut at ``limit``."""
    line = next((" ".join(part.split()) for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def expected(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure users cause or meet (a bad setup, an LM error, a missing file or package),
    as opposed to a bug."""
    from dspyo3_core.config import ConfigError
    from dspyo3_core.plugins import PluginError
    from dspyo3_core.registry import DuplicateNameError

    if isinstance(exc, (ConfigError, PluginError, DuplicateNameError)):
        return True
    if isinstance(exc, (ImportError, OSError)):
        return True
    return _dspy_fix(exc) is not None


def describe(exc: BaseException) -> str:
    """``exc`` as the one line the user sees after ``Error: ``: what went wrong; how to fix it."""
    from dspyo3_core.config import ConfigError
    from dspyo3_core.plugins import PluginError
    from dspyo3_core.registry import DuplicateNameError

    text = _first_line(str(exc)) or type(exc).__name__
    if isinstance(exc, (ConfigError, PluginError, DuplicateNameError)):
        return text  # our own messages name the fix
    fix = _dspy_fix(exc)
    if fix is not None:
        return f"{type(exc).__name__}: {text}; {fix}"
    if isinstance(exc, ImportError) and "install" in text:
        return text  # ours say what to install
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        if top == "dspyo3_native":
            return ("the dspyo3-native extension is not installed; pip install dspyo3-native (from a checkout: "
                    "pip install ./crates/dspyo3-native)")
        return f"the Python package {top!r} is not installed; pip install {top.replace('_', '-')}"
    if isinstance(exc, ImportError):
        return f"{text}; reinstall the package it names"
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot use {exc.filename}: {exc.strerror or text}; check the path and its permissions"
    if isinstance(exc, OSError):
        return f"{text}; check the file, directory or service it names"
    return f"{type(exc).__name__}: {text} (unexpected; {_DEBUG_HINT}, and report it if it persists)"
