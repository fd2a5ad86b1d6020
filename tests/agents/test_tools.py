"""The tool registry: schemas, validation errors, policies (timeout, concurrency, retries, breaker), allow-lists,
risky tools disabled by default, plugin tools, dspy.Tool and MCP conversion."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from types import SimpleNamespace
from typing import Any, Literal

import dspy
import pydantic
import pytest

from dspyo3_agents import (
    RegistryTool,
    ToolArgumentError,
    ToolBreaker,
    ToolCircuitOpenError,
    ToolDisabledError,
    ToolError,
    ToolExecutionError,
    ToolNotGrantedError,
    ToolRegistry,
    ToolTimeoutError,
    UnknownToolError,
    tool_options,
    tool_retry,
)
from dspyo3_agents.tools import execute as execute_module
from dspyo3_agents.tools import policy as policy_module
from dspyo3_agents.tools import tool_deadline
from dspyo3_core import hookimpl
from dspyo3_core.plugins import PluginManager, core_only_manager
from dspyo3_core.registry import ToolSpec


class Address(pydantic.BaseModel):
    city: str
    zip: str


def test_schema_comes_from_type_hints_and_docstring() -> None:
    reg = ToolRegistry()

    @reg.tool()
    def ship(address: Address, mode: Literal["air", "sea"] = "sea", notes: list[str] | None = None) -> str:
        """Ship a parcel.

        A longer paragraph about shipping.

        Args:
            address: where it goes.
            mode: how it travels;
                air is faster.
            notes: extra notes.

        Returns:
            a tracking id.
        """
        return f"{address.city}-{mode}"

    tool = reg.get("ship")
    assert tool.description == "Ship a parcel.\n\nA longer paragraph about shipping."
    props = tool.parameters["properties"]
    assert props["address"]["properties"]["city"]["type"] == "string"  # $ref inlined
    assert props["address"]["description"] == "where it goes."
    assert props["mode"] == {"enum": ["air", "sea"], "type": "string", "default": "sea",
                             "description": "how it travels; air is faster."}
    assert tool.parameters["required"] == ["address"]
    assert tool.parameters["additionalProperties"] is False
    assert reg.call("ship", {"address": {"city": "Oslo", "zip": "0150"}, "mode": "air"}) == "Oslo-air"


def test_argument_errors_name_tool_argument_and_problem(registry: ToolRegistry) -> None:
    with pytest.raises(ToolArgumentError) as bad_type:
        registry.call("add", {"a": "two", "b": 2})
    assert (bad_type.value.tool, bad_type.value.argument) == ("add", "a")
    assert "valid integer" in bad_type.value.problem and "'two'" in bad_type.value.problem
    assert str(bad_type.value).startswith("tool 'add': argument 'a': ")
    assert "Expected arguments: a (integer), b (integer)" in str(bad_type.value)

    with pytest.raises(ToolArgumentError, match=r"argument 'b': missing \(required\)"):
        registry.call("add", {"a": 1})
    with pytest.raises(ToolArgumentError, match=r"argument 'c': unexpected argument; 'add' takes only a, b"):
        registry.call("add", {"a": 1, "b": 2, "c": 3})
    with pytest.raises(ToolArgumentError, match=r"argument '\*': arguments must be a JSON object"):
        registry.call("add", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ToolArgumentError) as two:
        registry.call("add", {"a": "x", "b": "y"})
    assert [p.argument for p in two.value.problems] == ["a", "b"]
    assert registry.call("add", {"a": "2", "b": 3}) == 5  # lax coercion, as Pydantic does
    with pytest.raises(UnknownToolError, match="unknown tool 'sub'; known: add, multiply, shout"):
        registry.call("sub", {})


def test_async_tools_work_from_sync_and_async_callers(registry: ToolRegistry) -> None:
    assert registry.call("shout", {"text": "hi"}) == "HI"
    assert asyncio.run(registry.acall("shout", {"text": "hey"})) == "HEY"
    assert asyncio.run(registry.acall("add", {"a": 1, "b": 1})) == 2


def test_timeouts_sync_and_async() -> None:
    reg = ToolRegistry()
    release = threading.Event()
    finished: list[str] = []

    @reg.tool(timeout=0.2)
    def stuck(x: int) -> int:
        release.wait(60)
        finished.append("stuck")
        return x

    @reg.tool(timeout=0.2)
    async def stuck_async(x: int) -> int:
        await asyncio.sleep(60)
        finished.append("stuck_async")
        return x

    try:
        with pytest.raises(ToolTimeoutError, match=r"tool 'stuck' did not finish within 0.2s"):
            reg.call("stuck", {"x": 1})
        with pytest.raises(ToolTimeoutError, match="stuck_async"):
            reg.call("stuck_async", {"x": 1})
        with pytest.raises(ToolTimeoutError):
            asyncio.run(reg.acall("stuck_async", {"x": 1}))
        with pytest.raises(ToolTimeoutError):
            asyncio.run(reg.acall("stuck", {"x": 1}))  # asyncio.run does not wait for the abandoned thread
        assert finished == []  # every call returned while its tool was still stuck
        assert reg.get("stuck").hung == 2
    finally:
        release.set()


def test_concurrency_limit_holds_for_threads_and_tasks() -> None:
    reg = ToolRegistry()
    changed = threading.Condition()
    state = {"now": 0, "peak": 0}

    @reg.tool(max_concurrency=2)
    def busy(i: int) -> int:
        with changed:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            changed.notify_all()
            # the first call waits for a second one to join it, so the limit's 2 show on a busy machine too
            changed.wait_for(lambda: state["peak"] >= 2, timeout=30)
        time.sleep(0.05)  # time for a third call to slip in if the limit let it
        with changed:
            state["now"] -= 1
        return i

    threads = [threading.Thread(target=reg.call, args=("busy", {"i": i})) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state["peak"] == 2

    async def many() -> list[Any]:
        return await asyncio.gather(*(reg.acall("busy", {"i": i}) for i in range(6)))

    state["peak"] = 0
    assert asyncio.run(many()) == list(range(6))
    assert state["peak"] == 2


def test_retries_then_execution_error_naming_the_tool() -> None:
    reg = ToolRegistry()
    calls = {"flaky": 0, "broken": 0}

    @reg.tool(retry=tool_retry(2, backoff=0.001))
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError("try again")
        return "ok"

    @reg.tool(retry=tool_retry(1, backoff=0.001, retry_on=(ConnectionError,)))
    def broken() -> str:
        calls["broken"] += 1
        raise KeyError("nope")

    assert reg.call("flaky") == "ok" and calls["flaky"] == 3
    with pytest.raises(ToolExecutionError, match=r"tool 'broken' failed: KeyError: 'nope'") as info:
        reg.call("broken")
    assert calls["broken"] == 1  # KeyError is not in retry_on
    assert isinstance(info.value.__cause__, KeyError)


class Clock:
    """The tools modules' ``time`` with a monotonic clock moved by hand (``sleep`` and the rest are the real ones):
    a breaker's reset timeout passes exactly when the test says, however long the machine takes between steps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(policy_module, "time", fake)
    monkeypatch.setattr(execute_module, "time", fake)
    return fake


def test_circuit_breaker_opens_and_recovers(clock: Clock) -> None:
    reg = ToolRegistry(failure_threshold=2, reset_timeout=0.2)
    healthy = {"now": False}
    calls = {"n": 0}

    @reg.tool()
    def service() -> str:
        calls["n"] += 1
        if not healthy["now"]:
            raise RuntimeError("down")
        return "up"

    for _ in range(2):
        with pytest.raises(ToolExecutionError):
            reg.call("service")
    with pytest.raises(ToolCircuitOpenError, match=r"failed 2 times in a row, so its circuit is open"):
        reg.call("service")
    assert calls["n"] == 2 and reg.get("service").breaker.state == "open"
    clock.advance(0.25)
    healthy["now"] = True
    assert reg.call("service") == "up"  # the half-open trial call closes it
    assert reg.get("service").breaker.state == "closed"


def test_allow_lists_by_name_and_tag(registry: ToolRegistry) -> None:
    math = registry.granted(tags=["math"])
    assert math.names() == ["add", "multiply"]
    assert math.call("add", {"a": 1, "b": 2}) == 3
    with pytest.raises(ToolNotGrantedError, match=r"tool 'shout' is not granted to this agent \(granted: add, "
                                                   r"multiply\)"):
        math.call("shout", {"text": "x"})
    only = registry.granted(names=["shout"], tags=["nothing"])
    assert only.names() == ["shout"] and "add" not in only
    assert [t.name for t in math.granted(names=["add"]).to_dspy_tools()] == ["add"]
    with pytest.raises(UnknownToolError, match="cannot grant unknown tool"):
        registry.granted(names=["rm_rf"])
    with pytest.raises(TypeError, match="root registry"):
        math.register(lambda: 1, name="late")


def test_risky_tools_start_disabled_including_the_builtin_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ToolRegistry()

    @reg.tool(tags=["code"])
    def run_python(source: str) -> str:
        """Runs code."""
        return "ran"

    with pytest.raises(ToolDisabledError, match=r"tool 'run_python' is disabled \(it is tagged code\); enable it "
                                                r"with registry.enable\('run_python'\)"):
        reg.call("run_python", {"source": "1"})
    assert reg.names() == [] and reg.names(include_disabled=True) == ["run_python"]
    reg.enable("run_python")
    assert reg.call("run_python", {"source": "1"}) == "ran"

    plugin_tools = ToolRegistry.from_plugins()
    assert plugin_tools.names() == ["calculator", "current_time"]
    assert set(plugin_tools.names(include_disabled=True)) == {"calculator", "current_time", "http_get", "read_file"}
    for name, tag in (("read_file", "files"), ("http_get", "network")):
        with pytest.raises(ToolDisabledError, match=f"tagged {tag}"):
            plugin_tools.call(name, {"path": "x"} if name == "read_file" else {"url": "http://127.0.0.1:9"})
    assert plugin_tools.call("calculator", {"expression": "(3 + 4) * 12.5"}) == 87.5
    with pytest.raises(ToolExecutionError, match="unsupported expression element"):
        plugin_tools.call("calculator", {"expression": "__import__('os')"})

    monkeypatch.setenv("DSPYO3_AGENTS_ENABLE_TOOLS", "read_file")
    enabled = ToolRegistry.from_plugins()
    assert "read_file" in enabled.names() and "http_get" not in enabled.names()


def test_plugin_tools_come_with_their_options_and_distribution() -> None:
    class Plugin:
        @staticmethod
        @hookimpl
        def dspyo3_register_tools(register: Any) -> None:
            @tool_options(tags=["weather"], timeout=3, max_concurrency=1)
            def forecast(city: str) -> str:
                """Tomorrow's weather."""
                return f"sunny in {city}"

            register(ToolSpec("forecast", forecast))

    manager: PluginManager = core_only_manager()
    manager.register(Plugin(), name="weather", distribution="acme-weather")
    reg = ToolRegistry.from_plugins(manager)
    tool = reg.get("forecast")
    assert (tool.source, tool.tags, tool.timeout, tool.max_concurrency) == ("acme-weather", {"weather"}, 3, 1)
    assert tool.description == "Tomorrow's weather."
    assert reg.call("forecast", {"city": "Oslo"}) == "sunny in Oslo"


def test_duplicate_and_reserved_names() -> None:
    reg = ToolRegistry()
    reg.register(lambda: 1, name="one")
    with pytest.raises(ValueError, match="a tool named 'one' is already registered"):
        reg.register(lambda: 2, name="one")
    reg.register(lambda: 2, name="one", replace=True)
    assert reg.call("one") == 2
    with pytest.raises(ValueError, match="'finish' is reserved"):
        reg.register(lambda: 0, name="finish")


def test_to_dspy_tool_goes_through_the_registry(registry: ToolRegistry) -> None:
    tool = registry.to_dspy_tool("add")
    assert isinstance(tool, dspy.Tool) and isinstance(tool, RegistryTool)
    assert tool.name == "add" and tool.args["a"] == {"type": "integer", "description": "the first addend."}
    assert tool(a=2, b=3) == 5
    assert asyncio.run(registry.to_dspy_tool("shout").acall(text="x")) == "X"
    with pytest.raises(ToolArgumentError, match="argument 'b'"):
        tool(a=1)
    assert "add" in tool.format() and tool.format_as_litellm_function_call()["function"]["name"] == "add"


def test_register_an_existing_dspy_tool_validates_with_its_schema() -> None:
    def power(base: int, exponent: int = 2) -> int:
        return int(base**exponent)

    reg = ToolRegistry()
    reg.register(dspy.Tool(power), tags=["math"])
    assert reg.get("power").source == "dspy.Tool"
    assert reg.call("power", {"base": 3}) == 9
    with pytest.raises(ToolArgumentError, match=r"tool 'power': argument 'base': 'x' is not of type 'integer'"):
        reg.call("power", {"base": "x"})
    with pytest.raises(ToolArgumentError, match=r"argument 'base': missing \(required\)"):
        reg.call("power", {})
    with pytest.raises(ToolArgumentError, match=r"argument 'power': unexpected argument"):
        reg.call("power", {"base": 1, "power": 2})


class FakeMCPSession:
    """The client side of MCP that ``register_mcp_session`` uses (``list_tools`` / ``call_tool``), with the
    result shape of the mcp SDK (``content`` items with ``type``/``text``, ``isError``). Like a real
    ``ClientSession`` (anyio streams), it is bound to the event loop it is first used on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def _on_my_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is None:
            self.loop = loop
        elif loop is not self.loop:
            raise RuntimeError("<anyio.MemoryObjectStream> is attached to a different loop")

    async def list_tools(self) -> Any:
        self._on_my_loop()
        schema = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
        return SimpleNamespace(tools=[SimpleNamespace(name="search_docs", description="Search the docs.",
                                                      inputSchema=schema)])

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        self._on_my_loop()
        self.calls.append((name, dict(arguments or {})))
        query = (arguments or {}).get("query", "")
        if query == "boom":
            return SimpleNamespace(content=[SimpleNamespace(type="text", text="index offline")], isError=True)
        if query == "slow":
            await asyncio.sleep(60)  # cancelled when the call times out
        return SimpleNamespace(content=[SimpleNamespace(type="text", text=f"3 hits for {query}")], isError=False)


def test_mcp_tools_are_registered_disabled_and_called_on_the_sessions_loop() -> None:
    session = FakeMCPSession()
    reg = ToolRegistry()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(5)

    try:
        [tool] = on_loop(reg.register_mcp_session(session, timeout=30))
        assert (tool.name, tool.source, tool.enabled) == ("search_docs", "mcp", False)
        with pytest.raises(ToolDisabledError, match="tools from mcp start disabled"):
            reg.call("search_docs", {"query": "x"})
        reg.enable("search_docs")
        assert reg.call("search_docs", {"query": "react"}) == "3 hits for react"  # sync, from another thread
        assert asyncio.run(reg.acall("search_docs", {"query": "tools"})) == "3 hits for tools"  # another loop
        assert on_loop(reg.acall("search_docs", {"query": "own"})) == "3 hits for own"  # its own loop
        with pytest.raises(ToolArgumentError, match=r"argument 'query': missing"):
            reg.call("search_docs", {})
        with pytest.raises(ToolExecutionError, match="reported an error: index offline"):
            reg.call("search_docs", {"query": "boom"})
        on_loop(reg.register_mcp_session(session, timeout=0.2, enabled=True, replace=True))  # a short timeout
        with pytest.raises(ToolTimeoutError, match=r"did not finish within 0\.2s"):
            reg.call("search_docs", {"query": "slow"})

        async def sync_call_on_the_loop_thread() -> Any:
            return reg.call("search_docs", {"query": "blocked"})

        with pytest.raises(ToolError, match=r"MCP tool 'search_docs' is bound to an event loop \(a sync call on "
                                            r"the loop's own thread would block it\): call it through agent.acall"):
            on_loop(sync_call_on_the_loop_thread())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    with pytest.raises(ToolError, match=r"bound to an event loop \(its loop is not running\)"):
        reg.call("search_docs", {"query": "late"})
    loop.close()
    assert session.calls[0] == ("search_docs", {"query": "react"})
    assert [q for _, q in session.calls].count({"query": "blocked"}) == 0


class PagedMCPSession:
    """A duck-typed session (camelCase fields, ``list_tools(cursor=...)``) whose listing spans two pages and
    whose results carry non-text content blocks (what ``test_mcp.py``'s real server does not send)."""

    def __init__(self) -> None:
        self.cursors: list[str | None] = []

    async def list_tools(self, cursor: str | None = None) -> Any:
        self.cursors.append(cursor)
        schema = {"type": "object", "properties": {}}
        if cursor is None:
            return SimpleNamespace(tools=[SimpleNamespace(name="snapshot", description="", inputSchema=schema)],
                                   nextCursor="page-2")
        return SimpleNamespace(tools=[SimpleNamespace(name="report", description="A report.", inputSchema=schema,
                                                      outputSchema={"type": "object"})], nextCursor=None)

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        if name == "snapshot":
            return SimpleNamespace(isError=False, structuredContent=None, content=[
                SimpleNamespace(type="text", text="the page"),
                SimpleNamespace(type="image", data="aGVsbG8h", mimeType="image/png"),
                SimpleNamespace(type="resource", resource=SimpleNamespace(uri="file:///a.txt", text="inline text")),
                SimpleNamespace(type="resource_link", uri="file:///b.txt", name="b")])
        return SimpleNamespace(isError=False, content=[SimpleNamespace(type="text", text='{"result": 1}')],
                               structuredContent={"result": 1})  # an object tool: not unwrapped


def test_mcp_listing_pages_and_content_blocks() -> None:
    session = PagedMCPSession()
    reg = ToolRegistry()

    async def go() -> Any:
        await reg.register_mcp_session(session, enabled=True)
        return await reg.acall("snapshot"), await reg.acall("report")

    snapshot, report = asyncio.run(go())
    assert session.cursors == [None, "page-2"] and reg.names() == ["report", "snapshot"]
    assert snapshot == ["the page", "[image content (image/png, 6 bytes)]", "inline text", "[resource file:///b.txt]"]
    assert report == {"result": 1}


def timeout_of(reg: ToolRegistry, name: str) -> ToolTimeoutError:
    with pytest.raises(ToolTimeoutError) as info:
        reg.call(name)
    return info.value


def test_hung_sync_calls_never_starve_other_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ToolRegistry(failure_threshold=1000)
    release = threading.Event()

    @reg.tool(timeout=0.02)
    def stuck() -> str:
        release.wait(60)
        return "late"

    @reg.tool(timeout=1)
    def quick() -> str:
        return "ok"

    threads: list[str] = []  # the tool threads started, by tool name
    start_thread = execute_module._start_thread

    def counted(name: str, fn: Any) -> Any:
        threads.append(name)
        return start_thread(name, fn)

    monkeypatch.setattr(execute_module, "_start_thread", counted)
    monkeypatch.setattr(execute_module, "MAX_HUNG_CALLS", 100)
    try:
        with concurrent.futures.ThreadPoolExecutor(70) as pool:
            errors = list(pool.map(lambda _: timeout_of(reg, "stuck"), range(70)))
        assert all(e.started for e in errors) and reg.get("stuck").hung == 70
        assert reg.call("quick") == "ok"  # a shared 64-thread pool would be full of hung calls by now
        assert asyncio.run(reg.acall("quick")) == "ok"
        monkeypatch.setattr(execute_module, "MAX_HUNG_CALLS", 32)
        with pytest.raises(ToolTimeoutError, match="was not started: 70 hung calls of it are still running") as info:
            reg.call("stuck")
        assert not info.value.started and threads.count("stuck") == 70  # refused before a 71st thread started
    finally:
        release.set()
    deadline = time.monotonic() + 30  # the released threads end (a liveness wait, not a speed check)
    while reg.get("stuck").hung and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reg.get("stuck").hung == 0


def test_timeouts_say_whether_the_tool_never_started() -> None:
    reg = ToolRegistry()
    release = threading.Event()

    @reg.tool(timeout=0.1, max_concurrency=1)
    def single() -> str:
        release.wait(5)
        return "done"

    with pytest.raises(ToolTimeoutError, match=r"did not finish within 0.1s \(its timeout\)") as ran:
        reg.call("single")
    assert ran.value.started
    with pytest.raises(ToolTimeoutError, match=r"did not start within 0.1s \(its timeout\): all 1 of its "
                                               r"concurrency slots stayed busy; it never ran \(1 earlier call"
                       ) as waited:
        reg.call("single")
    assert not waited.value.started
    with pytest.raises(ToolTimeoutError, match=r"did not start within 0\.1s"):
        asyncio.run(reg.acall("single"))
    release.set()


def test_breaker_counts_a_retried_call_once_and_ignores_budget_timeouts() -> None:
    reg = ToolRegistry(failure_threshold=2, reset_timeout=60)
    calls = {"n": 0}
    release = threading.Event()

    @reg.tool(retry=tool_retry(3, backoff=0.001))
    def flaky() -> str:
        calls["n"] += 1
        raise ConnectionError("down")

    @reg.tool(timeout=5)
    def slow() -> str:
        release.wait(5)
        return "late"

    with pytest.raises(ToolExecutionError, match="ConnectionError: down"):
        reg.call("flaky")
    breaker = reg.get("flaky").breaker
    assert calls["n"] == 4 and breaker.failures == 1 and breaker.state == "closed"

    token = tool_deadline.set(time.monotonic() + 0.2)  # an agent with 0.2 s of budget left
    try:
        for _ in range(3):
            # cut short by what was left of the budget (or, on a machine too busy to start it in time, not started)
            with pytest.raises(ToolTimeoutError, match="agent's wall-clock budget") as info:
                reg.call("slow")
            assert info.value.budget
            tool_deadline.set(time.monotonic() + 0.2)
        with pytest.raises(ToolTimeoutError):
            asyncio.run(reg.acall("slow"))
    finally:
        tool_deadline.reset(token)
        release.set()
    assert reg.get("slow").breaker.failures == 0 and reg.get("slow").breaker.state == "closed"


def test_half_open_breaker_says_a_trial_is_in_progress(clock: Clock) -> None:
    breaker = ToolBreaker(failure_threshold=1, reset_timeout=0.05)
    breaker.failure()
    with pytest.raises(ToolCircuitOpenError, match=r"circuit is open for 0\.\ds more"):
        breaker.before_call("t")
    clock.advance(0.06)
    breaker.before_call("t")  # the trial call
    with pytest.raises(ToolCircuitOpenError, match="a trial call is in progress; retry shortly"):
        breaker.before_call("t")
    breaker.neutral()  # the trial was cut short by the caller's budget: the next call may try again
    breaker.before_call("t")
    breaker.success()
    assert breaker.state == "closed"


def test_call_counters_are_thread_safe() -> None:
    reg = ToolRegistry()

    @reg.tool()
    def noop() -> None:
        return None

    def hammer() -> None:
        for _ in range(500):
            reg.call("noop")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reg.get("noop").calls == 4000
