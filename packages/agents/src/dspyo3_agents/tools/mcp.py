"""MCP tools in a :class:`~dspyo3_agents.tools.registry.ToolRegistry`: a tool an MCP session lists as a
:class:`RegisteredTool` (its ``inputSchema`` validates the arguments), the session's tool listing page by page, and
a ``CallToolResult`` as the tool's return value."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from dspyo3_agents.tools.execute import RegisteredTool, current_loop

__all__ = ["list_mcp_tools", "mcp_result", "mcp_tool", "sdk_field"]

def sdk_field(obj: Any, snake: str, camel: str) -> Any:
    """``obj``'s field by its snake_case or camelCase name (an SDK object's attribute or a dict's key)."""
    for attr in (snake, camel):
        if hasattr(obj, attr):
            return getattr(obj, attr)
    if isinstance(obj, Mapping):
        return obj.get(snake, obj.get(camel))
    return None


async def list_mcp_tools(session: Any) -> list[Any]:
    """Every tool of every page of ``session.list_tools()`` (the mcp SDK's takes
    ``params=PaginatedRequestParams(cursor=...)``; a session object whose ``list_tools`` takes ``cursor=`` is paged
    that way)."""
    tools: list[Any] = []
    listing = await session.list_tools()
    seen: set[str] = set()
    while True:
        tools.extend(listing.tools)
        cursor = sdk_field(listing, "next_cursor", "nextCursor")
        if not cursor or cursor in seen:  # a server repeating a cursor would loop forever
            return tools
        seen.add(cursor)
        if "params" in inspect.signature(session.list_tools).parameters:
            types = importlib.import_module("mcp.types")
            listing = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor))
        else:
            listing = await session.list_tools(cursor=cursor)


def _block(block: Any) -> str:
    """One content block of an MCP result as text for the agent."""
    kind = str(sdk_field(block, "type", "type") or "")
    text = sdk_field(block, "text", "text")
    if text is not None:
        return str(text)
    if kind == "resource":  # embedded: the text of a text resource, else a placeholder
        resource = sdk_field(block, "resource", "resource")
        inner = sdk_field(resource, "text", "text")
        if inner is not None:
            return str(inner)
        return f"[embedded resource {sdk_field(resource, 'uri', 'uri')}]"
    if kind == "resource_link":
        return f"[resource {sdk_field(block, 'uri', 'uri')}]"
    data = sdk_field(block, "data", "data")
    mime = sdk_field(block, "mime_type", "mimeType") or "?"
    size = f", {len(data) * 3 // 4} bytes" if isinstance(data, str) else ""
    return f"[{kind or 'binary'} content ({mime}{size})]"


def _is_result_wrapper(output_schema: Any) -> bool:
    """The output schema ``MCPServer`` / ``FastMCP`` make for a non-object return: ``{"result": ...}`` only."""
    if not isinstance(output_schema, Mapping):
        return False
    return set(output_schema.get("properties") or {}) == {"result"} and list(output_schema.get("required") or []) \
        == ["result"]


def mcp_result(tool: str, result: Any, output_schema: Any = None) -> Any:
    """A ``CallToolResult`` as the tool's return value (see :meth:`ToolRegistry.register_mcp_tool`)."""
    blocks = [_block(c) for c in sdk_field(result, "content", "content") or []]
    text: Any = blocks[0] if len(blocks) == 1 else blocks
    if sdk_field(result, "is_error", "isError"):
        raise RuntimeError(f"MCP tool {tool!r} reported an error: {'; '.join(blocks) or 'no details'}")
    structured = sdk_field(result, "structured_content", "structuredContent")
    if structured is None:
        return text
    if _is_result_wrapper(output_schema) and isinstance(structured, Mapping) and set(structured) == {"result"}:
        return structured["result"]
    return structured


def mcp_tool(session: Any, tool: Any, name: str, loop: asyncio.AbstractEventLoop | None,
             **policy: Any) -> RegisteredTool:
    """MCP tool ``tool`` (an item of ``(await session.list_tools()).tools``) as a :class:`RegisteredTool` named
    ``name`` that calls it through ``session`` on ``loop`` (default: the running one), its arguments validated
    against the tool's ``inputSchema``; ``policy``: the rest of the :class:`RegisteredTool` fields (tags, timeout,
    breaker, ...). See :meth:`ToolRegistry.register_mcp_tool`."""
    jsonschema = importlib.import_module("jsonschema")
    schema = dict(sdk_field(tool, "input_schema", "inputSchema") or {"type": "object", "properties": {}})
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    output_schema = sdk_field(tool, "output_schema", "outputSchema")
    remote = str(tool.name)

    async def call_mcp(**arguments: Any) -> Any:
        result = await session.call_tool(remote, arguments=arguments)
        return mcp_result(name, result, output_schema)

    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return RegisteredTool(
        name=name, func=call_mcp, description=str(getattr(tool, "description", None) or name),
        parameters=schema, schema_validator=validator(schema), is_async=True,
        loop_bound=True, loop=loop or current_loop(), **policy)
