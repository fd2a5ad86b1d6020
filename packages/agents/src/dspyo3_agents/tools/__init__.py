"""The tool registry: Python callables (sync or async) and MCP / ``dspy.Tool`` tools as agent tools, with
validated arguments and per-tool policies (see :class:`ToolRegistry`).

The modules, each importing only the ones before it: :mod:`.errors` (what a call raises), :mod:`.schema` (JSON
Schema and argument model from a function) and :mod:`.policy` (retries, breaker, concurrency, deadline, options),
:mod:`.execute` (one registered tool and how a call of it runs), :mod:`.mcp` (MCP tools), :mod:`.registry` (the
registry: registration, allow-lists, calls, ``dspy.Tool`` conversion).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dspyo3_agents.tools.errors import (
    ArgumentProblem,
    ToolArgumentError,
    ToolCircuitOpenError,
    ToolDisabledError,
    ToolError,
    ToolExecutionError,
    ToolNotGrantedError,
    ToolTimeoutError,
    UnknownToolError,
)
from dspyo3_agents.tools.execute import MAX_HUNG_CALLS, RegisteredTool
from dspyo3_agents.tools.policy import (
    ENABLE_ENV,
    RISKY_TAGS,
    ToolBreaker,
    ToolOptions,
    tool_deadline,
    tool_options,
    tool_retry,
)
from dspyo3_agents.tools.registry import ToolRegistry
from dspyo3_agents.tools.schema import parse_docstring

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
