"""The tool registry: Python callables (sync or async) as agent tools, with a JSON Schema from type hints and
docstrings, arguments validated by Pydantic before the call, per-tool timeout, concurrency limit, retries and
circuit breaker, tag allow-lists, and conversion to ``dspy.Tool`` (and from ``dspy.Tool`` / MCP tools).

>>> registry = ToolRegistry()
>>> @registry.tool(tags=["math"])
... def add(a: int, b: int) -> int:
...     '''Add two integers.
...
...     Args:
...         a: the first addend.
...         b: the second addend.
...     '''
...     return a + b
>>> registry.call("add", {"a": 2, "b": "3"})
5

Tools tagged ``code``, ``files`` or ``network`` (:data:`RISKY_TAGS`) are registered *disabled*: calling one raises
:class:`ToolDisabledError` until it is enabled by name (``registry.enable("read_file")``, or
``DSPYO3_AGENTS_ENABLE_TOOLS=read_file`` for registries built with :meth:`ToolRegistry.from_plugins`).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from dspyo3_agents.tools.errors import ToolDisabledError, ToolNotGrantedError, UnknownToolError
from dspyo3_agents.tools.execute import RegisteredTool
from dspyo3_agents.tools.mcp import list_mcp_tools, mcp_tool
from dspyo3_agents.tools.policy import (
    ENABLE_ENV,
    RISKY_TAGS,
    ToolBreaker,
    ToolOptions,
    as_retry_policy,
)
from dspyo3_agents.tools.schema import arguments_model, inline_refs, parse_docstring
from dspyo3_async import RetryPolicy

if TYPE_CHECKING:
    import dspy

    from dspyo3_agents.dspy_tool import RegistryTool

__all__ = ["ToolRegistry"]

F = TypeVar("F", bound=Callable[..., Any])


class _Dispatch:
    """The ``func`` of a :class:`RegistryTool`: calls go through the registry (validation, policies)."""

    def __init__(self, registry: ToolRegistry, name: str) -> None:
        self.registry = registry
        self.name = name

    def __call__(self, **kwargs: Any) -> Any:
        return self.registry.call(self.name, kwargs)

    async def acall(self, kwargs: Mapping[str, Any]) -> Any:
        return await self.registry.acall(self.name, kwargs)


# -- the registry ------------------------------------------------------------------------------------------------


class ToolRegistry:
    """Named tools with validated arguments and per-tool policies.

    Args:
        default_timeout: timeout for tools registered without one (``None``: no limit).
        failure_threshold: failed calls in a row that open a tool's circuit.
        reset_timeout: seconds an open circuit waits before one trial call.
    """

    def __init__(self, *, default_timeout: float | None = None, failure_threshold: int = 5,
                 reset_timeout: float = 30.0) -> None:
        self.default_timeout = default_timeout
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._tools: dict[str, RegisteredTool] = {}
        self._granted: frozenset[str] | None = None  # None: every tool (a root registry)
        self._root: ToolRegistry = self

    def __deepcopy__(self, memo: dict[int, Any]) -> ToolRegistry:
        """Copies of an agent (``module.deepcopy()``, optimizers) share the registry: its tools, breakers and
        concurrency limits are process-wide resources, not program state."""
        return self

    # -- registration

    @overload
    def register(self, func: F, *, name: str | None = ..., description: str | None = ...,
                 timeout: float | None = ..., tags: Iterable[str] = ..., max_concurrency: int | None = ...,
                 retry: RetryPolicy | int | None = ..., enabled: bool | None = ..., replace: bool = ...,
                 source: str = ...) -> RegisteredTool: ...

    @overload
    def register(self, func: None = ..., *, name: str | None = ..., description: str | None = ...,
                 timeout: float | None = ..., tags: Iterable[str] = ..., max_concurrency: int | None = ...,
                 retry: RetryPolicy | int | None = ..., enabled: bool | None = ..., replace: bool = ...,
                 source: str = ...) -> Callable[[F], F]: ...

    def register(self, func: Callable[..., Any] | None = None, *, name: str | None = None,
                 description: str | None = None, timeout: float | None = None, tags: Iterable[str] = (),
                 max_concurrency: int | None = None, retry: RetryPolicy | int | None = None,
                 enabled: bool | None = None, replace: bool = False, source: str = "in-process"
                 ) -> RegisteredTool | Callable[[F], F]:
        """Register ``func`` (sync or ``async def``) as a tool; without ``func``, return a decorator.

        Args:
            func: the callable. Its type hints give the JSON Schema and the Pydantic validation; its docstring
                gives the description (text before the sections) and argument descriptions (``Args:``).
            name: tool name (default: the function's ``__name__``).
            description: overrides the docstring's.
            timeout: seconds per attempt (default: the registry's ``default_timeout``).
            tags: labels for allow-lists; ``code`` / ``files`` / ``network`` make the tool start disabled.
            max_concurrency: calls in flight at once.
            retry: a ``dspyo3_async.RetryPolicy`` (build one with :func:`tool_retry`), or a number of retries.
            enabled: ``None`` (default): enabled unless a risky tag is present.
            replace: replace a tool of the same name instead of raising ``ValueError``.
            source: where the tool comes from (shown by ``dspyo3 agents tools list``).
        """
        if func is None:
            def decorate(f: F) -> F:
                self.register(f, name=name, description=description, timeout=timeout, tags=tags,
                              max_concurrency=max_concurrency, retry=retry, enabled=enabled, replace=replace,
                              source=source)
                return f

            return decorate
        if not callable(func):
            raise TypeError(f"register() needs a callable, got {type(func).__name__}")
        dspy_module = sys.modules.get("dspy")  # DSPy is imported only where a dspy.Tool can exist
        if dspy_module is not None and isinstance(func, dspy_module.Tool):
            return self.register_dspy_tool(func, name=name, timeout=timeout, tags=tags,
                                           max_concurrency=max_concurrency, retry=retry, enabled=enabled,
                                           replace=replace)
        tool_name = name or getattr(func, "__name__", None) or type(func).__name__
        doc_text, arg_docs = parse_docstring(inspect.getdoc(func))
        model, _ = arguments_model(func, tool_name, arg_docs)
        parameters = inline_refs(model.model_json_schema())
        parameters.pop("title", None)
        for prop in parameters.get("properties", {}).values():
            prop.pop("title", None)
        parameters.setdefault("properties", {})
        is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None))  # noqa: B004
        return self._add(RegisteredTool(
            name=tool_name, func=func, description=description or doc_text or tool_name, parameters=parameters,
            model=model, is_async=is_async, **self._policy(tool_name, timeout, tags, max_concurrency, retry,
                                                           enabled, source)), replace)

    def tool(self, *, name: str | None = None, description: str | None = None, timeout: float | None = None,
             tags: Iterable[str] = (), max_concurrency: int | None = None, retry: RetryPolicy | int | None = None,
             enabled: bool | None = None) -> Callable[[F], F]:
        """Decorator form of :meth:`register` (returns the function unchanged)."""
        return self.register(name=name, description=description, timeout=timeout, tags=tags,
                             max_concurrency=max_concurrency, retry=retry, enabled=enabled)

    def register_dspy_tool(self, tool: dspy.Tool, *, name: str | None = None, timeout: float | None = None,
                           tags: Iterable[str] = (), max_concurrency: int | None = None,
                           retry: RetryPolicy | int | None = None, enabled: bool | None = None,
                           replace: bool = False, source: str = "dspy.Tool") -> RegisteredTool:
        """Register an existing ``dspy.Tool`` (e.g. from ``dspy.Tool.from_langchain``); its JSON Schema
        ``args`` validate the arguments."""
        jsonschema = importlib.import_module("jsonschema")  # untyped (no stubs in the env)
        args = dict(tool.args or {})
        parameters: dict[str, Any] = {"type": "object", "properties": args,
                      "required": [k for k, v in args.items() if "default" not in v]}
        if not tool.has_kwargs:
            parameters["additionalProperties"] = False
        func = tool.func
        is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None))  # noqa: B004
        tool_name = name or str(tool.name)
        return self._add(RegisteredTool(
            name=tool_name, func=func, description=str(tool.desc or tool_name), parameters=parameters,
            schema_validator=jsonschema.Draft202012Validator(parameters), is_async=is_async,
            **self._policy(tool_name, timeout, tags, max_concurrency, retry, enabled, source)), replace)

    def register_mcp_tool(self, session: Any, tool: Any, *, name: str | None = None, tags: Iterable[str] = ("mcp",),
                          timeout: float | None = None, max_concurrency: int | None = None,
                          retry: RetryPolicy | int | None = None, enabled: bool = False,
                          replace: bool = False, loop: asyncio.AbstractEventLoop | None = None) -> RegisteredTool:
        """Register one MCP tool (an item of ``(await session.list_tools()).tools``) called through ``session``
        (an MCP ``ClientSession``: anything with ``async call_tool(name, arguments=...)``; ``pip install
        'dspyo3-agents[mcp]'``). The arguments are validated against the tool's ``inputSchema`` before the call.

        A ``ClientSession`` is bound to the event loop it was opened on (``loop``; default: the running one). Calls
        from coroutines on another loop, and sync calls from other threads, are submitted to that loop (which must
        keep running, e.g. in a background thread); a sync call on the loop's own thread, or when the loop is
        unknown or stopped, raises :class:`ToolError` (use ``agent.acall`` / ``registry.acall`` there). A call that
        times out is cancelled (the session stays usable).

        An MCP server can do anything, so MCP tools start disabled unless ``enabled=True``. The result is the
        structured content if the server sent some (a value the server wrapped as ``{"result": value}``, as
        ``MCPServer`` / ``FastMCP`` do for non-object return types, is unwrapped), else the content blocks as
        text (one string if there is one block; images, audio and resource links as a short placeholder). A result
        flagged ``isError`` raises :class:`ToolExecutionError` (an observation for the agent).
        """
        tool_name = name or str(tool.name)
        return self._add(mcp_tool(session, tool, tool_name, loop,
                                  **self._policy(tool_name, timeout, tags, max_concurrency, retry, enabled, "mcp")),
                         replace)

    async def register_mcp_session(self, session: Any, **options: Any) -> list[RegisteredTool]:
        """Register every tool an MCP session lists (every page of ``tools/list``; ``options`` as for
        :meth:`register_mcp_tool`); they are bound to the running loop (the session's)."""
        options.setdefault("loop", asyncio.get_running_loop())
        return [self.register_mcp_tool(session, tool, **options) for tool in await list_mcp_tools(session)]

    @classmethod
    def from_plugins(cls, manager: Any = None, *, enable: Iterable[str] = (), **options: Any) -> ToolRegistry:
        """A registry of every tool contributed through ``dspyo3_register_tools`` (options from
        :func:`tool_options` on the function), with the names in ``enable`` and in ``$DSPYO3_AGENTS_ENABLE_TOOLS``
        (comma-separated) enabled."""
        from dspyo3_core.plugins import get_plugin_manager

        pm = manager or get_plugin_manager()
        registry = cls(**options)
        specs = pm.registry("dspyo3_register_tools")
        for spec in specs:
            meta: ToolOptions = getattr(spec.func, "__dspyo3_tool__", None) or ToolOptions()
            registry.register(spec.func, name=spec.name, description=spec.description or None,
                              timeout=meta.timeout, tags=meta.tags, max_concurrency=meta.max_concurrency,
                              retry=meta.retry, enabled=meta.enabled, source=specs.distribution_of(spec.name))
        names = [*enable, *(n.strip() for n in os.environ.get(ENABLE_ENV, "").split(",") if n.strip())]
        if names:
            registry.enable(*names)
        return registry

    def _policy(self, name: str, timeout: float | None, tags: Iterable[str], max_concurrency: int | None,
                retry: RetryPolicy | int | None, enabled: bool | None, source: str) -> dict[str, Any]:
        if self._granted is not None:
            raise TypeError("register tools on the root registry, not on a granted view of it")
        tag_set = frozenset(tags)
        return {
            "tags": tag_set,
            "timeout": timeout if timeout is not None else self.default_timeout,
            "max_concurrency": max_concurrency,
            "retry": as_retry_policy(retry),
            "enabled": (not tag_set & RISKY_TAGS) if enabled is None else enabled,
            "source": source,
            "breaker": ToolBreaker(self.failure_threshold, self.reset_timeout),
        }

    def _add(self, tool: RegisteredTool, replace: bool) -> RegisteredTool:
        if not re.fullmatch(r"[A-Za-z_][\w.-]*", tool.name):
            raise ValueError(f"tool name {tool.name!r} is not usable by an LM; use letters, digits, _ . -")
        if tool.name == "finish":
            raise ValueError("'finish' is reserved by ReAct for ending a run; give the tool another name")
        if tool.name in self._tools and not replace:
            raise ValueError(f"a tool named {tool.name!r} is already registered (from {self._tools[tool.name].source});"
                             " pass replace=True or another name")
        self._tools[tool.name] = tool
        return tool

    # -- lookup and allow-lists

    def enable(self, *names: str) -> None:
        """Enable tools by name (risky and MCP tools start disabled)."""
        for name in names:
            self._lookup(name).enabled = True

    def disable(self, *names: str) -> None:
        """Disable tools by name."""
        for name in names:
            self._lookup(name).enabled = False

    def granted(self, names: Iterable[str] | None = None, tags: Iterable[str] | None = None) -> ToolRegistry:
        """A view that only sees the tools named in ``names`` plus those carrying one of ``tags`` (both ``None``:
        every tool this registry sees). Views share the tools (their breakers, limits and counters)."""
        visible = [t for t in self._root._tools.values() if self._sees(t.name)]
        if names is None and tags is None:
            chosen = {t.name for t in visible}
        else:
            wanted, tag_set = set(names or ()), set(tags or ())
            unknown = wanted - {t.name for t in visible}
            if unknown:
                raise UnknownToolError(sorted(unknown)[0], f"cannot grant unknown tool(s) {sorted(unknown)}; known: "
                                                           f"{', '.join(t.name for t in visible) or 'none'}")
            chosen = {t.name for t in visible if t.name in wanted or t.tags & tag_set}
        view = ToolRegistry.__new__(ToolRegistry)
        view.__dict__.update(self.__dict__)
        view._granted = frozenset(chosen)
        return view

    def _sees(self, name: str) -> bool:
        return self._granted is None or name in self._granted

    def _lookup(self, name: str) -> RegisteredTool:
        tool = self._root._tools.get(name)
        if tool is None:
            known = ", ".join(n for n in sorted(self._root._tools) if self._sees(n)) or "none"
            raise UnknownToolError(name, f"unknown tool {name!r}; known: {known}")
        return tool

    def get(self, name: str) -> RegisteredTool:
        """The tool called ``name``, checked usable: unknown, not granted and disabled tools raise."""
        tool = self._lookup(name)
        if not self._sees(name):
            granted = ", ".join(sorted(self._granted or ())) or "none"
            raise ToolNotGrantedError(name, f"tool {name!r} is not granted to this agent (granted: {granted}); add "
                                            "it to the agent's tools=[...] or tags=[...]")
        if not tool.enabled:
            risky = sorted(tool.tags & RISKY_TAGS)
            why = (f"it is tagged {', '.join(risky)}" if risky else f"tools from {tool.source} start disabled"
                   if tool.source == "mcp" else "it was disabled")
            raise ToolDisabledError(name, f"tool {name!r} is disabled ({why}); enable it with "
                                          f"registry.enable({name!r}) or {ENABLE_ENV}={name}")
        return tool

    def tools(self, *, include_disabled: bool = False) -> list[RegisteredTool]:
        """The tools this registry (view) sees, sorted by name."""
        return [t for n, t in sorted(self._root._tools.items())
                if self._sees(n) and (include_disabled or t.enabled)]

    def names(self, *, include_disabled: bool = False) -> list[str]:
        """Names of :meth:`tools`."""
        return [t.name for t in self.tools(include_disabled=include_disabled)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._root._tools and self._sees(name)

    def __len__(self) -> int:
        return len(self.tools())

    def __iter__(self) -> Iterator[RegisteredTool]:
        return iter(self.tools())

    # -- calling

    def call(self, name: str, args: Mapping[str, Any] | None = None) -> Any:
        """Validate ``args`` and call tool ``name`` with its timeout, concurrency limit, retries and breaker.

        Raises:
            UnknownToolError, ToolNotGrantedError, ToolDisabledError: the tool cannot be called here.
            ToolArgumentError: an argument is missing, unexpected or of the wrong type (named in the message).
            ToolTimeoutError, ToolCircuitOpenError, ToolExecutionError: the call failed.
        """
        tool = self.get(name)
        return tool.invoke(tool.validate(args))

    async def acall(self, name: str, args: Mapping[str, Any] | None = None) -> Any:
        """:meth:`call` on the event loop (async tools awaited and cancelled on timeout; sync ones in a thread)."""
        tool = self.get(name)
        return await tool.ainvoke(tool.validate(args))

    # -- DSPy

    def to_dspy_tool(self, name: str) -> RegistryTool:
        """Tool ``name`` as a ``dspy.Tool`` that calls through this registry."""
        from dspyo3_agents.dspy_tool import RegistryTool

        tool = self.get(name)
        args = {k: dict(v) for k, v in tool.parameters.get("properties", {}).items()}
        return RegistryTool(func=_Dispatch(self, name), name=name, desc=tool.description, args=args,
                            arg_types=dict.fromkeys(args, Any),
                            arg_desc={k: v["description"] for k, v in args.items() if "description" in v})

    def to_dspy_tools(self) -> list[RegistryTool]:
        """Every enabled tool this registry (view) sees, as ``dspy.Tool`` objects (for ``dspy.ReAct``)."""
        return [self.to_dspy_tool(t.name) for t in self.tools()]
