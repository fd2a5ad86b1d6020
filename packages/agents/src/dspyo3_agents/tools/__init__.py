"""The tool registry (see :mod:`dspyo3_agents.tools.registry`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dspyo3_agents.tools.registry import (
    ENABLE_ENV,
    MAX_HUNG_CALLS,
    RISKY_TAGS,
    ArgumentProblem,
    RegisteredTool,
    ToolArgumentError,
    ToolBreaker,
    ToolCircuitOpenError,
    ToolDisabledError,
    ToolError,
    ToolExecutionError,
    ToolNotGrantedError,
    ToolOptions,
    ToolRegistry,
    ToolTimeoutError,
    UnknownToolError,
    parse_docstring,
    tool_deadline,
    tool_options,
    tool_retry,
)

if TYPE_CHECKING:
    from dspyo3_agents.dspy_tool import RegistryTool

__all__ = [
    "ENABLE_ENV",
    "MAX_HUNG_CALLS",
    "RISKY_TAGS",
    "ArgumentProblem",
    "RegisteredTool",
    "RegistryTool",
    "ToolArgumentError",
    "ToolBreaker",
    "ToolCircuitOpenError",
    "ToolDisabledError",
    "ToolError",
    "ToolExecutionError",
    "ToolNotGrantedError",
    "ToolOptions",
    "ToolRegistry",
    "ToolTimeoutError",
    "UnknownToolError",
    "parse_docstring",
    "tool_deadline",
    "tool_options",
    "tool_retry",
]


def __getattr__(name: str) -> Any:
    """``RegistryTool`` lives with DSPy in :mod:`dspyo3_agents.dspy_tool` (imported on first use, so listing and
    calling tools does not import DSPy)."""
    if name == "RegistryTool":
        from dspyo3_agents.dspy_tool import RegistryTool

        return RegistryTool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
