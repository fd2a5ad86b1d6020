"""MCP tools against a real MCP server (``tests/agents/mcp_server.py``, the official ``mcp`` SDK) over stdio: the
registry lists its tools, validates arguments against their ``inputSchema``, and calls them through a
``ClientSession`` from its own loop, from other threads and from a ReAct agent."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import dspy
import psutil
import pytest

from dspyo3_agents import ReActAgent, ToolRegistry
from dspyo3_agents.tools import (
    ToolArgumentError,
    ToolDisabledError,
    ToolError,
    ToolExecutionError,
    ToolTimeoutError,
)
from dspyo3_core.testing.server import LMServer
from dspyo3_core.testing.services import in_ci

from .conftest import lm_on, observations, react_responder

try:
    import mcp
except ImportError:
    if in_ci():
        raise ImportError("the mcp SDK is not installed; CI must install dspyo3-agents[mcp] (mcp>=2.3,<3)") from None
    pytest.skip("the mcp SDK is not installed: pip install 'dspyo3-agents[mcp]'", allow_module_level=True)

SERVER = Path(__file__).with_name("mcp_server.py")


def server_processes() -> list[psutil.Process]:
    """Our MCP server subprocesses still alive."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE and str(SERVER) in child.cmdline():
                found.append(child)
    return found


@contextlib.asynccontextmanager
async def mcp_session() -> AsyncIterator[Any]:
    """An initialized ``ClientSession`` on the test server (a subprocess, closed and reaped on exit)."""
    params = mcp.StdioServerParameters(command=sys.executable, args=[str(SERVER)])
    async with mcp.stdio_client(params) as (read, write), mcp.ClientSession(read, write) as session:
        await session.initialize()
        yield session


class LoopThread:
    """An MCP session kept open on an event loop running in a background thread (how a sync program uses one)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mcp-loop", daemon=True)
        self.thread.start()
        self.stop = asyncio.Event()
        self.session: Any = None
        self.opened = self.run(self._open(), 20)  # the server's start-up (seconds on a cold machine)

    def run(self, coroutine: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the session's loop, from this (another) thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _open(self) -> None:
        ready = asyncio.Event()

        async def hold() -> None:
            async with mcp_session() as session:  # entered and exited in one task (anyio's cancel scopes)
                self.session = session
                ready.set()
                await self.stop.wait()

        self.holder = self.loop.create_task(hold())
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait([waiter, self.holder], return_when=asyncio.FIRST_COMPLETED)
        if self.holder.done():
            waiter.cancel()
            self.holder.result()  # the server did not start: raise why

    def close(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.stop.set)
            self.run(asyncio.wait_for(asyncio.shield(self.holder), 10), 15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture(scope="module")
def served() -> Iterator[LoopThread]:
    """One server for the module's sync tests (starting one takes about a second)."""
    running = LoopThread()
    try:
        yield running
    finally:
        running.close()
    assert not server_processes(), "the MCP server subprocess outlived its session"


@pytest.fixture
def mcp_registry(served: LoopThread) -> ToolRegistry:
    """A fresh registry with the server's tools (registered on the session's loop, so bound to it)."""
    reg = ToolRegistry()
    served.run(reg.register_mcp_session(served.session, timeout=5))
    return reg


def test_mcp_tools_are_listed_with_the_servers_schema_and_start_disabled(mcp_registry: ToolRegistry,
                                                                           served: LoopThread) -> None:
    assert mcp_registry.names(include_disabled=True) == ["add", "divide", "wait"]
    assert mcp_registry.names() == []
    add = mcp_registry.tools(include_disabled=True)[0]  # get() refuses disabled tools
    assert (add.source, add.enabled, add.tags, add.loop) == ("mcp", False, frozenset({"mcp"}), served.loop)
    assert add.description.startswith("Add two integers.")
    assert add.parameters["properties"] == {"a": {"title": "A", "type": "integer"},
                                            "b": {"title": "B", "type": "integer"}}
    assert add.parameters["required"] == ["a", "b"] and add.parameters["type"] == "object"
    with pytest.raises(ToolDisabledError, match=r"tool 'add' is disabled \(tools from mcp start disabled\); enable "
                                                r"it with registry.enable\('add'\) or DSPYO3_AGENTS_ENABLE_TOOLS=add"):
        mcp_registry.call("add", {"a": 1, "b": 2})
    with pytest.raises(ToolDisabledError):
        asyncio.run(mcp_registry.acall("add", {"a": 1, "b": 2}))
    mcp_registry.enable("add")
    assert mcp_registry.names() == ["add"]
    assert [t.name for t in mcp_registry.to_dspy_tools()] == ["add"]


def test_mcp_calls_from_the_sessions_loop_other_loops_and_threads(mcp_registry: ToolRegistry,
                                                                  served: LoopThread) -> None:
    mcp_registry.enable("add", "divide", "wait")
    assert served.run(mcp_registry.acall("add", {"a": 2, "b": 3})) == 5  # its own loop; structured, unwrapped
    assert served.run(mcp_registry.acall("divide", {"a": 1, "b": 4})) == 0.25
    assert mcp_registry.call("add", {"a": 40, "b": 2}) == 42  # sync, from this thread: handed to the loop
    assert asyncio.run(mcp_registry.acall("wait", {"seconds": 0})) == "waited 0.0s"  # another loop

    results: list[Any] = []  # several threads at once share the one session
    threads = [threading.Thread(target=lambda i=i: results.append(mcp_registry.call("add", {"a": i, "b": i})))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [2 * i for i in range(8)]

    async def sync_call_on_the_loop_thread() -> Any:
        return mcp_registry.call("add", {"a": 1, "b": 1})

    with pytest.raises(ToolError, match=r"MCP tool 'add' is bound to an event loop \(a sync call on the loop's own "
                                        r"thread would block it\): call it through agent.acall / registry.acall"):
        served.run(sync_call_on_the_loop_thread())


def test_mcp_tool_errors_and_bad_arguments(mcp_registry: ToolRegistry, served: LoopThread) -> None:
    mcp_registry.enable("add", "divide")
    with pytest.raises(ToolExecutionError, match=r"tool 'divide' failed: .*MCP tool 'divide' reported an error: "
                                                 r"Error executing tool divide: division by zero") as info:
        served.run(mcp_registry.acall("divide", {"a": 1, "b": 0}))
    assert info.value.tool == "divide"
    with pytest.raises(ToolExecutionError, match="division by zero"):
        mcp_registry.call("divide", {"a": 1, "b": 0})  # the sync path too

    calls = mcp_registry.get("add").calls
    with pytest.raises(ToolArgumentError, match=r"tool 'add': argument 'a': 'x' is not of type 'integer'"):
        mcp_registry.call("add", {"a": "x", "b": 1})
    with pytest.raises(ToolArgumentError, match=r"argument 'b': missing \(required\)"):
        served.run(mcp_registry.acall("add", {"a": 1}))
    assert mcp_registry.get("add").calls == calls  # rejected before any request reached the server
    assert mcp_registry.call("add", {"a": 1, "b": 2}) == 3


class WatchedSession:
    """The served session, noting how each ``call_tool`` on it ended: ``"returned"``, ``"raised"`` or
    ``"cancelled"``."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.ended: list[str] = []
        self.changed = threading.Condition()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None, **options: Any) -> Any:
        outcome = "raised"
        try:
            result = await self.session.call_tool(name, arguments=arguments, **options)
            outcome = "returned"
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            with self.changed:
                self.ended.append(outcome)
                self.changed.notify_all()


def test_mcp_call_timeout_cancels_and_the_session_survives(served: LoopThread) -> None:
    reg = ToolRegistry()
    session = WatchedSession(served.session)
    served.run(reg.register_mcp_session(session, timeout=0.3, enabled=True))
    with pytest.raises(ToolTimeoutError, match=r"tool 'wait' did not finish within 0\.3s"):
        reg.call("wait", {"seconds": 60})  # sync: the task on the session's loop is cancelled
    with pytest.raises(ToolTimeoutError, match=r"tool 'wait' did not finish within 0\.3s"):
        served.run(reg.acall("wait", {"seconds": 60}))
    with session.changed:  # the sync call's cancellation reaches the loop right after it returned
        session.changed.wait_for(lambda: len(session.ended) == 2, timeout=30)
    assert session.ended == ["cancelled", "cancelled"]  # neither call stayed waiting on the server's 60 s
    patient = ToolRegistry()  # the same session, through tools whose timeout no busy machine runs into
    served.run(patient.register_mcp_session(session, timeout=30, enabled=True))
    assert patient.call("add", {"a": 1, "b": 1}) == 2 and patient.call("wait", {"seconds": 0.01}) == "waited 0.01s"
    assert session.ended[2:] == ["returned", "returned"]


def test_mcp_tool_in_an_async_react_run(lm_server: LMServer) -> None:
    def decide(fields: dict[str, str]) -> dict[str, Any]:
        if not observations(fields):
            return {"thought": "add them on the server", "tool": "add", "args": {"a": 19, "b": 23}}
        return {"thought": "done", "tool": "finish", "args": {}}

    lm_server.responder = react_responder(decide, lambda fields: observations(fields)[0])

    async def run() -> Any:
        async with mcp_session() as session:
            reg = ToolRegistry()
            await reg.register_mcp_session(session, timeout=5)
            reg.enable("add")
            agent = ReActAgent("question -> answer", reg, tools=["add"])
            with dspy.context(lm=lm_on(lm_server)):
                return await agent.acall(question="what is 19 plus 23?")

    before = {p.pid for p in server_processes()}  # the module's shared server may be running
    result = asyncio.run(run())
    assert [s.tool for s in result.steps] == ["add", "finish"]
    assert result.steps[0].observation == 42 and result.answer == "42"
    assert not {p.pid for p in server_processes()} - before, "the MCP server subprocess outlived its session"
