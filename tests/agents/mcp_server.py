"""A tiny MCP server for tests/agents/test_mcp.py, run over stdio (``python mcp_server.py``) with the official
``mcp`` SDK: ``add`` (structured integer result), ``divide`` (fails with an MCP tool error on a zero divisor) and
``wait`` (sleeps; for timeouts)."""

from __future__ import annotations

import asyncio

from mcp.server.mcpserver import MCPServer  # mcp 2.x, what dspyo3-agents[mcp] requires
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("dspyo3-test", log_level="WARNING")  # no INFO lines per tool error on stderr


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first addend.
        b: the second addend.
    """
    return a + b


@server.tool()
def divide(a: float, b: float) -> float:
    """Divide a by b."""
    if b == 0:
        raise ToolError("division by zero")
    return a / b


@server.tool()
async def wait(seconds: float) -> str:
    """Sleep, then say so."""
    await asyncio.sleep(seconds)
    return f"waited {seconds}s"


if __name__ == "__main__":
    server.run("stdio")
