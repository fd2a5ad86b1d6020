"""Full ReAct runs: DummyLM (scripted answers) and a real ``dspy.LM`` on the loopback server (HTTP through LiteLLM):
tool selection, bad arguments fed back, unparseable answers fed back, tool timeouts, circuit breaking, step and
wall-clock budgets, async runs, and a run resumed in a new process after the first one was killed."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from dspy.utils.exceptions import ContextWindowExceededError

from dspyo3_agents import (
    AgentState,
    MemoryStateStore,
    ReActAgent,
    SQLiteStateStore,
    StaleStateError,
    ToolRegistry,
    open_store,
    read_trajectory,
)
from dspyo3_core.testing.server import LMServer

from .conftest import lm_on, observations, react_responder


def step(tool: str, args: dict[str, Any] | None = None, thought: str = "thinking") -> dict[str, Any]:
    return {"next_thought": thought, "next_tool_name": tool, "next_tool_args": args or {}}


def final(answer: str) -> dict[str, Any]:
    return {"reasoning": "done", "answer": answer}


# -- DummyLM -------------------------------------------------------------------------------------------------------


def test_dummy_lm_run_feeds_bad_arguments_back(registry: ToolRegistry, tmp_path: Path) -> None:
    lm = DummyLM([step("add", {"a": "two", "b": 2}), step("add", {"a": 2, "b": 2}, "fixed"), step("finish"),
                  final("4")])
    agent = ReActAgent("question -> answer", registry, trajectory=tmp_path / "t.jsonl")
    with dspy.context(lm=lm):
        result = agent(question="2+2?")
    assert result.answer == "4" and result.stopped == "finish"
    first, second, last = result.steps
    assert first.error and first.tool == "add"
    assert first.observation.startswith("Error: tool 'add': argument 'a': Input should be a valid integer")
    assert (second.observation, second.error) == (4, False)
    assert (last.tool, last.observation) == ("finish", "Completed.")
    assert result.trajectory["observation_1"] == 4  # dspy.ReAct's trajectory form
    events = list(read_trajectory(tmp_path / "t.jsonl"))
    assert [e["event"] for e in events] == ["start", "step", "step", "step", "finish"]
    assert events[1]["args"] == {"a": "two", "b": 2} and events[1]["error"] is True
    assert events[-1]["outputs"] == {"answer": "4"}
    assert all(e["duration"] >= e["tool_seconds"] >= 0 for e in events if e["event"] == "step")


def test_agent_only_sees_granted_tools(registry: ToolRegistry) -> None:
    agent = ReActAgent("question -> answer", registry, tags=["text"])
    assert sorted(agent.tools) == ["finish", "shout"]
    instructions = agent.react.signature.instructions
    assert "shout" in instructions and "multiply" not in instructions


def test_step_budget_stops_and_still_answers(registry: ToolRegistry) -> None:
    lm = DummyLM([step("add", {"a": 1, "b": 1})] * 3 + [final("2")])
    agent = ReActAgent("question -> answer", registry, max_steps=3)
    with dspy.context(lm=lm):
        result = agent(question="loop")
    assert (result.stopped, len(result.steps), result.answer) == ("max_steps", 3, "2")


def test_wall_clock_budget_caps_tool_time_and_stops(tmp_path: Path) -> None:
    reg = ToolRegistry()
    release = threading.Event()
    finished: list[int] = []

    @reg.tool()
    def slow(x: int) -> int:
        """Think for a while."""
        if x == 0:
            time.sleep(0.3)  # spends part of the budget
        else:
            release.wait(60)  # outlasts any budget: only the budget can end this call
        finished.append(x)
        return x

    # 0.3 s for the first call, what is left of the 1 s for the second (which times out), then the budget is spent
    lm = DummyLM([step("slow", {"x": 0}), step("slow", {"x": 1}), final("partial")])
    agent = ReActAgent("question -> answer", reg, max_seconds=1.0)
    try:
        with dspy.context(lm=lm):
            result = agent(question="slow things")
        assert finished == [0]  # the agent returned without waiting for the second call
    finally:
        release.set()
    assert result.stopped == "max_seconds" and result.answer == "partial"
    assert result.steps[0].observation == 0
    # the second call gets only what is left of the budget as its timeout: at most 1 s minus the first call's 0.3 s
    assert result.steps[1].error
    left = re.search(r"did not finish within ([0-9.e+-]+)s \(what was left of the agent's wall-clock budget\)",
                     str(result.steps[1].observation))
    assert left is not None, result.steps[1].observation
    assert float(left.group(1)) <= 0.7


def test_failing_tool_trips_its_circuit_and_the_agent_is_told(tmp_path: Path) -> None:
    reg = ToolRegistry(failure_threshold=2, reset_timeout=60)
    calls = {"n": 0}

    @reg.tool()
    def weather(city: str) -> str:
        """Current weather."""
        calls["n"] += 1
        raise ConnectionError("weather service unreachable")

    lm = DummyLM([step("weather", {"city": "Oslo"})] * 3 + [step("finish"), final("unknown")])
    agent = ReActAgent("question -> answer", reg)
    with dspy.context(lm=lm):
        result = agent(question="weather in Oslo?")
    assert calls["n"] == 2
    assert "ConnectionError: weather service unreachable" in result.steps[0].observation
    assert "circuit is open" in result.steps[2].observation
    assert result.answer == "unknown"


def test_async_run_with_dummy_lm(registry: ToolRegistry) -> None:
    lm = DummyLM([step("shout", {"text": "hi"}), step("finish"), final("HI")])
    agent = ReActAgent("question -> answer", registry)

    async def go() -> Any:
        with dspy.context(lm=lm):
            return await agent.acall(question="shout hi")

    result = asyncio.run(go())
    assert result.answer == "HI" and result.steps[0].observation == "HI"


# -- the loopback LM server (a real dspy.LM over HTTP) -------------------------------------------------------------


def numeric(seen: list[str]) -> list[str]:
    return [o for o in seen if o.strip().lstrip("-").isdigit()]


def arithmetic(fields: dict[str, str]) -> dict[str, Any]:
    """Pick the tool from the question; bad arguments first if the question says so (then the right ones after
    the error comes back); finish once a tool returned a number."""
    seen = observations(fields)
    question = fields.get("question", "")
    numbers = [int(w) for w in question.replace("?", " ").split() if w.isdigit()]
    tool = "multiply" if "times" in question else "add"
    if numeric(seen):
        return {"thought": "I have it", "tool": "finish", "args": {}}
    bad = "bad args" in question and not any(o.startswith("Error") for o in seen)
    return {"thought": f"use {tool}", "tool": tool, "args": {"a": "six" if bad else numbers[0], "b": numbers[1]}}


def last_observation(fields: dict[str, str]) -> str:
    seen = numeric(observations(fields))
    return seen[-1] if seen else "none"


def test_loopback_lm_selects_the_right_tool(registry: ToolRegistry, lm_server: LMServer) -> None:
    lm_server.responder = react_responder(arithmetic, last_observation)
    agent = ReActAgent("question -> answer", registry)
    with dspy.context(lm=lm_on(lm_server)):
        times = agent(question="what is 6 times 7?")
        plus = agent(question="what is 6 plus 7?")
    assert [s.tool for s in times.steps] == ["multiply", "finish"] and times.answer == "42"
    assert [s.tool for s in plus.steps] == ["add", "finish"] and plus.answer == "13"
    assert times.steps[0].tokens["total_tokens"] > 0 and times.tokens["total_tokens"] > times.steps[0].tokens[
        "total_tokens"]


def test_loopback_lm_bad_arguments_are_fed_back_not_raised(registry: ToolRegistry, lm_server: LMServer) -> None:
    lm_server.responder = react_responder(arithmetic, last_observation)
    agent = ReActAgent("question -> answer", registry)
    with dspy.context(lm=lm_on(lm_server)):
        result = agent(question="bad args: 6 times 7?")
    assert [s.tool for s in result.steps] == ["multiply", "multiply", "finish"]
    assert "argument 'a': Input should be a valid integer" in result.steps[0].observation
    assert result.answer == "42"


def test_loopback_lm_unparseable_answer_is_fed_back(registry: ToolRegistry, lm_server: LMServer) -> None:
    answers = iter(["I refuse to use the format.", "still no format"])

    def respond(request: dict[str, Any]) -> str:
        nxt = next(answers, None)
        if nxt is not None:
            return nxt
        return react_responder(arithmetic, last_observation)(request)

    lm_server.responder = respond
    agent = ReActAgent("question -> answer", registry)
    with dspy.context(lm=lm_on(lm_server)):
        result = agent(question="what is 2 plus 3?")
    assert result.steps[0].tool is None and result.steps[0].error
    assert "could not be used" in result.steps[0].observation
    assert result.answer == "5" and result.steps[-1].tool == "finish"


def test_loopback_lm_tool_timeout_is_an_observation(lm_server: LMServer) -> None:
    reg = ToolRegistry()
    release = threading.Event()

    finished = threading.Event()

    @reg.tool(timeout=0.3)
    def lookup(term: str) -> str:
        """Look a term up in a slow index."""
        release.wait(60)
        finished.set()
        return "found"

    def decide(fields: dict[str, str]) -> dict[str, Any]:
        if not observations(fields):
            return {"tool": "lookup", "args": {"term": "dspy"}}
        return {"tool": "finish"}

    lm_server.responder = react_responder(decide, lambda f: "timed out" if "did not finish" in str(f) else "?")
    agent = ReActAgent("question -> answer", reg)
    try:
        with dspy.context(lm=lm_on(lm_server)):
            result = agent(question="what is dspy?")
        assert not finished.is_set()  # the run went on without waiting for the stuck call
    finally:
        release.set()
    assert result.steps[0].observation == ("Error: tool 'lookup' did not finish within 0.3s (its timeout); try "
                                           "simpler arguments or another tool")
    assert result.answer == "timed out"


def test_loopback_lm_async_run(registry: ToolRegistry, lm_server: LMServer) -> None:
    lm_server.responder = react_responder(arithmetic, last_observation)
    agent = ReActAgent("question -> answer", registry)

    async def go() -> Any:
        with dspy.context(lm=lm_on(lm_server)):
            return await agent.acall(question="what is 3 times 5?")

    result = asyncio.run(go())
    assert result.answer == "15" and [s.tool for s in result.steps] == ["multiply", "finish"]
    assert result.steps[0].tokens["total_tokens"] > 0 and result.tokens["total_tokens"] > 0


# -- resume after a crash, in another process ----------------------------------------------------------------------

WORKER = r"""
import sys, time, dspy
from dspyo3_agents import ReActAgent, ToolRegistry, open_store

api_base, store_url, calls, trace, mode = sys.argv[1:6]
registry = ToolRegistry()

@registry.tool()
def fetch_page(n: int) -> str:
    '''Fetch page n of the report.'''
    with open(calls, "a") as f:
        f.write(f"{n}\n")
    if mode == "hang" and n == 1:
        time.sleep(120)  # the test kills this process here
    return f"page {n} says {10 * (n + 1)}"

lm = dspy.LM("openai/test-model", api_base=api_base, api_key="test", cache=False, num_retries=0)
agent = ReActAgent("question -> answer", registry, store=open_store(store_url), trajectory=trace, name="reader")
with dspy.context(lm=lm):
    if mode == "hang":
        result = agent(question="sum the pages", run_id="run-1")
    else:
        result = agent.resume("run-1")
print(result.answer, result.stopped, len(result.steps))
"""


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_killed_run_resumes_in_a_new_process(backend: str, lm_server: LMServer, tmp_path: Path,
                                               request: pytest.FixtureRequest) -> None:
    def decide(fields: dict[str, str]) -> dict[str, Any]:
        seen = observations(fields)
        if len(seen) < 2:
            return {"tool": "fetch_page", "args": {"n": len(seen)}}
        return {"tool": "finish"}

    lm_server.responder = react_responder(decide, lambda f: str(sum(int(o.split()[-1]) for o in observations(f)
                                                                    if o.startswith("page"))))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    calls, trace = tmp_path / "calls.txt", tmp_path / "trace.jsonl"
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/state.db"
    else:
        url = request.getfixturevalue("redis_url")
        open_store(url).delete("reader:run:run-1")
    args = [sys.executable, str(script), lm_server.api_base, url, str(calls), str(trace)]
    first = subprocess.Popen([*args, "hang"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not (calls.exists() and calls.read_text().split() == ["0", "1"]):  # a hang is pytest-timeout's
            assert first.poll() is None, first.communicate()[1][-2000:]
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL

    saved = open_store(url).load("reader:run:run-1")
    assert saved.data["status"] == "running" and [s["tool"] for s in saved.data["steps"]] == ["fetch_page"]
    assert saved.data["pending"]["tool"] == "fetch_page" and saved.data["pending"]["step"] == 1

    second = subprocess.run([*args, "resume"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.split() == ["30", "finish", "3"]  # 10 + 20, steps: page 0, page 1, finish
    assert calls.read_text().split() == ["0", "1", "1"]  # page 0 was not fetched again
    logged = list(read_trajectory(trace))
    events = [e["event"] for e in logged]
    assert events == ["start", "step", "resume", "step", "step", "finish"]
    # the tool that was running at the crash is re-run (at-least-once); the resume event says which
    assert (logged[2]["pending_tool"], logged[2]["pending_args"]) == ("fetch_page", {"n": 1})
    assert open_store(url).load("reader:run:run-1").data["status"] == "done"


def test_resuming_a_finished_run_returns_its_outputs_without_the_lm(registry: ToolRegistry, tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "s.db")
    agent = ReActAgent("question -> answer", registry, store=store)
    with dspy.context(lm=DummyLM([step("finish"), final("done")])):
        agent(question="q", run_id="r")
    with dspy.context(lm=DummyLM([])):  # any LM call would fail
        again = agent.resume("r")
    assert again.answer == "done" and again.stopped == "finish"
    with pytest.raises(ValueError, match="was started with inputs"):
        agent(question="another", run_id="r")
    with pytest.raises(KeyError, match="no saved run 'nope' for agent 'agent'; saved runs: r"):
        agent.resume("nope")
    assert json.loads(json.dumps(store.load("agent:run:r").data))["outputs"] == {"answer": "done"}


def test_two_workers_cannot_both_advance_one_run(tmp_path: Path) -> None:
    store = MemoryStateStore()
    reg = ToolRegistry()

    @reg.tool()
    def interfere() -> str:
        """Meanwhile, another worker saves the same run."""
        store.update("w:run:r", lambda data: data.update(note="other worker"))
        return "ok"

    agent = ReActAgent("question -> answer", reg, store=store, name="w", trajectory=tmp_path / "t.jsonl")
    with dspy.context(lm=DummyLM([step("interfere"), step("finish"), final("x")])), \
            pytest.raises(StaleStateError, match="state 'w:run:r' changed underneath this write"):
        agent(question="q", run_id="r")
    # the step whose save failed was never logged: the log holds only what the store holds
    assert [e["event"] for e in read_trajectory(tmp_path / "t.jsonl")] == ["start"]


def test_setup_errors_are_raised_not_fed_back_as_steps(registry: ToolRegistry, tmp_path: Path) -> None:
    store = MemoryStateStore()
    agent = ReActAgent("question -> answer", registry, store=store, trajectory=tmp_path / "t.jsonl", max_steps=5)
    with dspy.context(lm=None), pytest.raises(ValueError, match="No LM is loaded"):
        agent(question="q", run_id="r")
    assert store.load("agent:run:r").data["steps"] == []
    assert [e["event"] for e in read_trajectory(tmp_path / "t.jsonl")] == ["start"]

    async def go() -> Any:
        with dspy.context(lm=None):
            return await agent.acall(question="q", run_id="r2")

    with pytest.raises(ValueError, match="No LM is loaded"):
        asyncio.run(go())
    assert store.load("agent:run:r2").data["steps"] == []


class ContextWindowLM(DummyLM):  # type: ignore[misc]
    """Answers ReAct steps until the trajectory has two steps, then says the prompt is too long (also after
    DSPy's truncation, which keeps the later step); the extract call always fits."""

    def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        if "next_tool_name" in str(messages) and "observation_1" in str(messages):
            raise ContextWindowExceededError(model="dummy", message="prompt too long")
        return super().forward(prompt=prompt, messages=messages, **kwargs)

    async def aforward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        return self.forward(prompt=prompt, messages=messages, **kwargs)


@pytest.mark.filterwarnings("ignore:Implementing custom LMs:DeprecationWarning")
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_context_window_ends_the_run_and_still_answers(registry: ToolRegistry, mode: str) -> None:
    lm = ContextWindowLM([step("add", {"a": 1, "b": 1}), step("add", {"a": 2, "b": 2}), final("4")])
    agent = ReActAgent("question -> answer", registry, store=MemoryStateStore())

    async def go() -> Any:
        with dspy.context(lm=lm):
            return await agent.acall(question="q")

    if mode == "sync":
        with dspy.context(lm=lm):
            result = agent(question="q")
    else:
        result = asyncio.run(go())
    assert (result.stopped, len(result.steps), result.answer) == ("context_window", 2, "4")


class WindowLM(DummyLM):  # type: ignore[misc]
    """A context window that holds two steps: a step prompt showing more is refused; every step prompt is kept."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        super().__init__(answers)
        self.step_prompts: list[set[str]] = []
        self.overflows = 0

    def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        text = str(messages)
        if "next_tool_name" in text:
            shown = set(re.findall(r"observation_\d+", text))
            if len(shown) > 2:
                self.overflows += 1
                raise ContextWindowExceededError(model="dummy", message="prompt too long")
            self.step_prompts.append(shown)
        return super().forward(prompt=prompt, messages=messages, **kwargs)

    async def aforward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        return self.forward(prompt=prompt, messages=messages, **kwargs)


@pytest.mark.filterwarnings("ignore:Implementing custom LMs:DeprecationWarning")
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_truncation_lasts_so_a_long_run_finishes(registry: ToolRegistry, mode: str) -> None:
    lm = WindowLM([step("add", {"a": i, "b": 1}) for i in range(6)] + [step("finish"), final("done")])
    store = MemoryStateStore()
    agent = ReActAgent("question -> answer", registry, store=store, max_steps=10)

    async def go() -> Any:
        with dspy.context(lm=lm):
            return await agent.acall(question="q", run_id="long")

    if mode == "sync":
        with dspy.context(lm=lm):
            result = agent(question="q", run_id="long")
    else:
        result = asyncio.run(go())
    assert (result.stopped, len(result.steps), result.answer) == ("finish", 7, "done")
    # each overflow dropped one step for good: one overflow per step past the window, never a step re-sent
    assert lm.overflows == 4  # steps 3, 4, 5 and 6 would have shown three
    assert lm.step_prompts[-1] == {"observation_4", "observation_5"}
    for earlier, later in itertools.pairwise(lm.step_prompts):
        assert min((int(o.split("_")[1]) for o in later), default=0) >= min(
            (int(o.split("_")[1]) for o in earlier), default=0)
    assert store.load("agent:run:long").data["dropped"] == 4
    assert list(result.trajectory) == [f"{k}_{i}" for i in (4, 5, 6)
                                       for k in ("thought", "tool_name", "tool_args", "observation")]


class ThreadNotingStore(MemoryStateStore):
    """A store that notes the thread each of its reads and writes runs on (blocking I/O: a SQLite file, Redis)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def load(self, key: str) -> AgentState:
        self.threads.append(threading.get_ident())
        return super().load(key)

    def _write(self, key: str, data: str, expected: int) -> int:
        self.threads.append(threading.get_ident())
        return super()._write(key, data, expected)


def test_async_runs_do_state_io_off_the_event_loop(registry: ToolRegistry) -> None:
    lm = DummyLM([step("add", {"a": 1, "b": 1}), step("add", {"a": 2, "b": 2}), step("finish"), final("4")])
    store = ThreadNotingStore()
    agent = ReActAgent("question -> answer", registry, store=store)

    async def go() -> tuple[Any, int]:
        with dspy.context(lm=lm):
            return await agent.acall(question="q"), threading.get_ident()

    result, loop_thread = asyncio.run(go())
    assert result.answer == "4"
    assert len(store.threads) >= 4  # the run's start, each step and its end were loaded or saved
    assert loop_thread not in store.threads  # a blocking store call on the loop would stall every other task


def test_copies_of_an_agent_share_registry_store_and_log(registry: ToolRegistry, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    agent = ReActAgent("question -> answer", registry, store=SQLiteStateStore(tmp_path / "s.db"),
                       trajectory=tmp_path / "t.jsonl")
    copy = agent.deepcopy()
    assert "Failed to deep copy" not in caplog.text
    assert copy.registry is agent.registry and copy.store is agent.store and copy.log is agent.log
    assert copy.react is not agent.react and len(agent.reset_copy().named_predictors()) == 2
    with dspy.context(lm=DummyLM([step("add", {"a": 1, "b": 2}), step("finish"), final("3")])):
        assert copy(question="1+2").answer == "3"
