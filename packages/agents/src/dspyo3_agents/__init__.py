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
"""

from dspyo3_agents.agent import ReActAgent, RunState
from dspyo3_agents.parallel import Coordinator, FanOutResult, run_agents, run_agents_sync
from dspyo3_agents.state import (
    AgentState,
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
