"""``RegistryTool``: a :class:`~dspyo3_agents.tools.ToolRegistry` tool as a ``dspy.Tool``.

Kept apart from :mod:`dspyo3_agents.tools` because it subclasses ``dspy.Tool``: the registry itself (and
``dspyo3 agents tools list|call``) works without importing DSPy.
"""

from __future__ import annotations

from typing import Any

import dspy
from dspy.utils.callback import with_callbacks

__all__ = ["RegistryTool"]


class RegistryTool(dspy.Tool):  # type: ignore[misc]  # dspy is untyped (Any)
    """A ``dspy.Tool`` whose calls go through a :class:`ToolRegistry`: arguments are validated by the registry
    (whose errors name the tool, argument and problem) and the tool's timeout, concurrency limit, retries and
    circuit breaker apply. Works anywhere DSPy takes a tool (``dspy.ReAct``, native function calling)."""

    def _validate_and_parse_args(self, **kwargs: Any) -> dict[str, Any]:
        return kwargs  # the registry validates (with better messages) inside the call

    @with_callbacks  # type: ignore[untyped-decorator]
    async def acall(self, **kwargs: Any) -> Any:
        dispatch: Any = self.func  # tools._Dispatch: the call goes through the registry
        return await dispatch.acall(kwargs)
