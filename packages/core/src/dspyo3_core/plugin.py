"""dspyo3-core's own plugin, loaded through the ``dspyo3`` entry-point group like every other plugin.

It registers the built-in LM providers, the core CLI commands, and the innermost ``dspyo3_lm_call`` impl
(the real ``dspy.LM`` call) that every wrapper ends up calling.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from dspyo3_core import lm as _lm
from dspyo3_core.config import BUILTIN_PROVIDERS
from dspyo3_core.hookspecs import hookimpl, impl_of
from dspyo3_core.registry import LMProviderSpec


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


dspyo3_lm_call = hookimpl(trylast=True)(impl_of(_lm.invoke_call, "dspyo3_lm_call"))
"""The innermost LM call: DSPy's own ``LM.__call__`` (engine, cache and retries included), or NativeLM's."""
