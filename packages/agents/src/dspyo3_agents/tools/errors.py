"""The errors a tool call can raise: every one is a :class:`ToolError` naming the tool, and its message is written
for the agent that called the tool (what went wrong, what to do instead)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ArgumentProblem",
    "ToolArgumentError",
    "ToolCircuitOpenError",
    "ToolDisabledError",
    "ToolError",
    "ToolExecutionError",
    "ToolNotGrantedError",
    "ToolTimeoutError",
    "UnknownToolError",
]


class ToolError(RuntimeError):
    """Base class of every registry error; ``tool`` is the tool's name."""

    def __init__(self, tool: str, message: str) -> None:
        super().__init__(message)
        self.tool = tool


class UnknownToolError(ToolError, KeyError):
    """No tool of that name is registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ToolNotGrantedError(ToolError):
    """The tool exists but this registry view (an agent's allow-list) was not granted it."""


class ToolDisabledError(ToolError):
    """The tool is registered disabled (it runs code, touches files or the network, or came from MCP)."""


@dataclass(frozen=True)
class ArgumentProblem:
    """One invalid argument: its name (``"*"`` for the arguments as a whole) and what is wrong with it."""

    argument: str
    problem: str


class ToolArgumentError(ToolError, ValueError):
    """The arguments do not match the tool's schema; the message names the tool, each argument and its problem.

    Attributes:
        argument: the first invalid argument's name.
        problem: what is wrong with it.
        problems: every invalid argument.
    """

    def __init__(self, tool: str, problems: Sequence[ArgumentProblem], expected: str) -> None:
        self.problems = list(problems)
        self.argument = self.problems[0].argument
        self.problem = self.problems[0].problem
        listed = "; ".join(f"argument {p.argument!r}: {p.problem}" for p in self.problems)
        super().__init__(tool, f"tool {tool!r}: {listed}. Expected arguments: {expected}")


class ToolTimeoutError(ToolError, TimeoutError):
    """The tool ran longer than its timeout, or could not start in time.

    Attributes:
        started: the tool began running (``False``: it never ran, e.g. its concurrency slots stayed busy).
        budget: the limit was what was left of the agent's wall-clock budget, not the tool's own timeout (such
            timeouts do not count against the tool's circuit breaker).
    """

    def __init__(self, tool: str, message: str, *, started: bool = True, budget: bool = False) -> None:
        super().__init__(tool, message)
        self.started, self.budget = started, budget


class ToolCircuitOpenError(ToolError):
    """The tool failed too often in a row; calls fail fast until its circuit's reset timeout has passed."""


class ToolExecutionError(ToolError):
    """The tool itself raised (after its retries); ``__cause__`` is the tool's exception."""
