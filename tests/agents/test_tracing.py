"""Tracing in dspyo3-agents (with a recording fake tracer installed through ``dspyo3_core.spans``): an
``execute_tool {name}`` span per tool call (attempts, timeout, retry events, ERROR on a timeout or a failure), the
span current inside a sync tool's own thread, and ``invoke_agent {name}`` around a ReAct run."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import dspy
import pytest
from dspy.utils.dummies import DummyLM

from dspyo3_agents import ReActAgent, ToolExecutionError, ToolRegistry, ToolTimeoutError
from dspyo3_agents.tools import tool_retry
from dspyo3_core import spans
from dspyo3_core.testing import RecordingTracer


@pytest.fixture
def tracer() -> Iterator[RecordingTracer]:
    with RecordingTracer().installed() as recording:
        yield recording


# -- tools -----------------------------------------------------------------------------------------------------------
def test_a_tool_call_is_an_execute_tool_span(tracer: RecordingTracer, registry: ToolRegistry) -> None:
    assert registry.call("add", {"a": 2, "b": 3}) == 5
    span = tracer.one("execute_tool add")
    assert span.attrs["gen_ai.operation.name"] == "execute_tool"
    assert span.attrs["gen_ai.tool.name"] == "add"
    assert span.attrs["dspyo3.tool.attempts"] == 1
    assert span.error is None and span.events == []
    assert "gen_ai.tool.call.arguments" not in span.attrs, "arguments are content: off unless captured"
    assert spans.CURRENT.get() is None


def test_arguments_are_recorded_only_when_the_tracer_captures_content(tracer: RecordingTracer,
                                                                      registry: ToolRegistry) -> None:
    tracer.capture_content = True
    registry.call("add", {"a": 2, "b": 3})
    assert tracer.one("execute_tool add").attrs["gen_ai.tool.call.arguments"] == '{"a": 2, "b": 3}'


def test_a_sync_tool_runs_in_its_thread_with_the_tool_span_current(tracer: RecordingTracer) -> None:
    reg = ToolRegistry()
    seen: list[tuple[int, spans.SpanRef | None]] = []

    @reg.tool(timeout=10)
    def where() -> str:
        seen.append((threading.get_ident(), spans.CURRENT.get()))
        return "here"

    with tracer.start("root") as root:
        assert reg.call("where") == "here"
        assert asyncio.run(reg.acall("where")) == "here"
    calls = tracer.named("execute_tool where")
    assert len(calls) == 2
    for (thread, ref), span in zip(seen, calls, strict=True):
        assert thread != threading.get_ident(), "a timed sync tool runs in a thread of its own"
        assert ref == span.ref
        assert span.parent_id == root.ref.span_id and span.attrs["dspyo3.tool.timeout_s"] == 10.0


def test_a_timeout_fails_the_span_with_its_error_type(tracer: RecordingTracer) -> None:
    reg = ToolRegistry()
    release = threading.Event()

    @reg.tool(timeout=0.05)
    def stuck() -> str:
        release.wait(30)
        return "late"

    @reg.tool(timeout=0.05)
    async def stuck_async() -> str:
        await asyncio.sleep(30)
        return "late"

    try:
        with pytest.raises(ToolTimeoutError):
            reg.call("stuck")
        with pytest.raises(ToolTimeoutError):
            asyncio.run(reg.acall("stuck_async"))
    finally:
        release.set()
    for name in ("execute_tool stuck", "execute_tool stuck_async"):
        (span,) = [s for s in tracer.spans if s.name == name]
        assert isinstance(span.error, ToolTimeoutError) and span.attrs["error.type"] == "ToolTimeoutError"
        assert span.attrs["dspyo3.tool.timeout_s"] == 0.05


def test_retries_are_events_and_a_final_failure_is_an_error(tracer: RecordingTracer) -> None:
    reg = ToolRegistry()
    calls = {"flaky": 0}

    @reg.tool(retry=tool_retry(3, backoff=0.001))
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError("down")
        return "up"

    @reg.tool(retry=tool_retry(1, backoff=0.001))
    def broken() -> str:
        raise ConnectionError("down for good")

    assert reg.call("flaky") == "up"
    span = tracer.one("execute_tool flaky")
    assert span.error is None and span.attrs["dspyo3.tool.attempts"] == 3
    assert [name for name, _ in span.events] == ["retry", "retry"]
    assert [attrs["dspyo3.tool.attempt"] for _, attrs in span.events] == [1, 2]
    assert all(attrs["error.type"] == "ConnectionError" and attrs["delay_s"] >= 0 for _, attrs in span.events)

    with pytest.raises(ToolExecutionError):
        asyncio.run(reg.acall("broken"))
    failed = tracer.one("execute_tool broken")
    assert failed.attrs["dspyo3.tool.attempts"] == 2 and len(failed.events) == 1
    assert failed.attrs["error.type"] == "ToolExecutionError"


def test_no_tracer_no_spans(registry: ToolRegistry) -> None:
    assert spans.TRACER is None
    assert registry.call("add", {"a": 1, "b": 1}) == 2
    assert spans.CURRENT.get() is None


# -- agent runs ------------------------------------------------------------------------------------------------------
def step(tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"next_thought": "thinking", "next_tool_name": tool, "next_tool_args": args or {}}


def test_an_agent_run_is_an_invoke_agent_span_over_its_tool_spans(tracer: RecordingTracer,
                                                                   registry: ToolRegistry) -> None:
    lm = DummyLM([step("add", {"a": 2, "b": 2}), step("finish"), {"reasoning": "done", "answer": "4"}])
    agent = ReActAgent("question -> answer", registry, name="calc")
    with dspy.context(lm=lm):
        result = agent(question="2+2?")
    assert result.answer == "4"
    run = tracer.one("invoke_agent calc")
    assert run.attrs["gen_ai.operation.name"] == "invoke_agent" and run.attrs["gen_ai.agent.name"] == "calc"
    assert run.attrs["dspyo3.agent.run_id"] == result.run_id and run.attrs["dspyo3.agent.steps"] == 2
    assert run.attrs["dspyo3.agent.stopped"] == "finish" and run.error is None
    tool = tracer.one("execute_tool add")
    assert tool.parent_id == run.ref.span_id and tool.ref.trace_id == run.ref.trace_id


def test_an_async_agent_run_nests_its_tool_spans_too(tracer: RecordingTracer, registry: ToolRegistry) -> None:
    lm = DummyLM([step("shout", {"text": "hi"}), step("finish"), {"reasoning": "done", "answer": "HI"}])
    agent = ReActAgent("question -> answer", registry, name="loud")

    async def go() -> Any:
        with dspy.context(lm=lm):
            return await agent.acall(question="shout hi")

    result = asyncio.run(go())
    assert result.answer == "HI"
    run = tracer.one("invoke_agent loud")
    assert tracer.one("execute_tool shout").parent_id == run.ref.span_id
    assert run.attrs["dspyo3.agent.steps"] == 2


def test_a_failing_agent_run_fails_its_span(tracer: RecordingTracer, registry: ToolRegistry) -> None:
    agent = ReActAgent("question -> answer", registry, name="broken")
    with dspy.context(lm=DummyLM([])), pytest.raises(Exception) as info:  # no answers scripted: the LM fails
        agent(question="anything")
    run = tracer.one("invoke_agent broken")
    assert run.error is info.value and run.end_ns is not None
