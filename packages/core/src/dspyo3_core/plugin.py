"""dspyo3-core's own plugin, loaded through the ``dspyo3`` entry-point group like every other plugin.

It registers the built-in LM providers, the core CLI commands, and the innermost ``dspyo3_lm_call`` impl
(the real ``dspy.LM`` call) that every wrapper ends up calling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dspyo3_core.call import innermost
from dspyo3_core.config import BUILTIN_PROVIDERS
from dspyo3_core.hookspecs import hookimpl
from dspyo3_core.registry import LMProviderSpec

if TYPE_CHECKING:
    import click

    from dspyo3_core.call import LMCall


@hookimpl
def dspyo3_register_lm_providers(register: Callable[[LMProviderSpec], None]) -> None:
    """Register openai, anthropic, cohere, ollama, together, azure and openai-compatible."""
    for spec in BUILTIN_PROVIDERS:
        register(spec)


@hookimpl
def dspyo3_register_commands(cli: click.Group) -> None:
    """Add ``plugins``, ``lm``, ``doctor``, ``inspect`` and ``demo``."""
    from dspyo3_core import commands

    for command in commands.CORE_COMMANDS:
        cli.add_command(command)


_invoke_call: Callable[[LMCall], Any] | None = None


@hookimpl(trylast=True)
@innermost
def dspyo3_lm_call(call: LMCall) -> Any:
    """The innermost LM call: DSPy's own ``LM.__call__`` (engine, cache and retries included), or NativeLM's.

    :mod:`dspyo3_core.lm` (and so DSPy) is imported on the first call, not when the plugin loads, so
    ``dspyo3 --help`` never imports DSPy."""
    global _invoke_call
    invoke = _invoke_call
    if invoke is None:
        from dspyo3_core.lm import invoke_call

        invoke = _invoke_call = invoke_call
    return invoke(call)
