"""dspyo3-agents: agents for DSPy.

- :class:`ToolRegistry`: Python callables (sync or async) as tools, JSON Schema from type hints and docstrings,
  Pydantic-validated arguments (errors name the tool, the argument and the problem), per-tool timeout,
  concurrency limit, retries and circuit breaker, tag allow-lists, plugin tools (``dspyo3_register_tools``),
  ``dspy.Tool`` and MCP conversion. Tools that run code, touch files or the network start disabled.
- :class:`ReActAgent`: ``dspy.ReAct`` over registry tools with step and wall-clock budgets, tool errors fed back
  as observations, state saved after every step (resumable in another process) and a JSONL trajectory.
- :class:`SQLiteStateStore` / :class:`RedisStateStore`: versioned state with optimistic concurrency.
- :func:`run_agents`, :class:`Coordinator`: many agents under one concurrency limit (``dspyo3_async``), fan-out
  and merge.
- ``dspyo3 agents tools list|call``, ``dspyo3 agents run``, ``dspyo3 agents trace FILE``.

Importing the package is cheap (the ``dspyo3`` CLI imports every plugin at start-up): each public name is imported
from its module on first use (PEP 562 ``__getattr__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dspyo3_core.lazy import lazy_exports

if TYPE_CHECKING:
    from dspyo3_agents.agent import ReActAgent, RunState
    from dspyo3_agents.parallel import Coordinator, FanOutResult, run_agents, run_agents_sync
    from dspyo3_agents.state import (
        AgentState,
        CorruptStateError,
        MemoryStateStore,
        RedisStateStore,
        SQLiteStateStore,
        StaleStateError,
        StateStore,
        open_store,
    )
    from dspyo3_agents.tools import (
        RISKY_TAGS,
        ArgumentProblem,
        RegisteredTool,
        RegistryTool,
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
        tool_options,
        tool_retry,
    )
    from dspyo3_agents.trajectory import Step, TrajectoryLog, read_trajectory

__version__ = "0.1.0"

__all__ = [
    "RISKY_TAGS",
    "AgentState",
    "ArgumentProblem",
    "Coordinator",
    "FanOutResult",
    "MemoryStateStore",
    "ReActAgent",
    "CorruptStateError",
    "RedisStateStore",
    "RegisteredTool",
    "RegistryTool",
    "RunState",
    "SQLiteStateStore",
    "StaleStateError",
    "StateStore",
    "Step",
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
    "TrajectoryLog",
    "UnknownToolError",
    "__version__",
    "open_store",
    "read_trajectory",
    "run_agents",
    "run_agents_sync",
    "tool_options",
    "tool_retry",
]

_WHERE = {
    "ReActAgent": "dspyo3_agents.agent",
    "RunState": "dspyo3_agents.agent",
    "Coordinator": "dspyo3_agents.parallel",
    "FanOutResult": "dspyo3_agents.parallel",
    "run_agents": "dspyo3_agents.parallel",
    "run_agents_sync": "dspyo3_agents.parallel",
    "AgentState": "dspyo3_agents.state",
    "CorruptStateError": "dspyo3_agents.state",
    "MemoryStateStore": "dspyo3_agents.state",
    "RedisStateStore": "dspyo3_agents.state",
    "SQLiteStateStore": "dspyo3_agents.state",
    "StaleStateError": "dspyo3_agents.state",
    "StateStore": "dspyo3_agents.state",
    "open_store": "dspyo3_agents.state",
    "ArgumentProblem": "dspyo3_agents.tools",
    "RISKY_TAGS": "dspyo3_agents.tools",
    "RegisteredTool": "dspyo3_agents.tools",
    "RegistryTool": "dspyo3_agents.tools",
    "ToolArgumentError": "dspyo3_agents.tools",
    "ToolBreaker": "dspyo3_agents.tools",
    "ToolCircuitOpenError": "dspyo3_agents.tools",
    "ToolDisabledError": "dspyo3_agents.tools",
    "ToolError": "dspyo3_agents.tools",
    "ToolExecutionError": "dspyo3_agents.tools",
    "ToolNotGrantedError": "dspyo3_agents.tools",
    "ToolOptions": "dspyo3_agents.tools",
    "ToolRegistry": "dspyo3_agents.tools",
    "ToolTimeoutError": "dspyo3_agents.tools",
    "UnknownToolError": "dspyo3_agents.tools",
    "tool_options": "dspyo3_agents.tools",
    "tool_retry": "dspyo3_agents.tools",
    "Step": "dspyo3_agents.trajectory",
    "TrajectoryLog": "dspyo3_agents.trajectory",
    "read_trajectory": "dspyo3_agents.trajectory",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, __all__)
