"""Many agents at once under one concurrency limit (dspyo3_async.run_many), and the fan-out coordinator, on the
loopback LM server."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import dspy
import pytest

from dspyo3_agents import Coordinator, ReActAgent, ToolRegistry, run_agents, run_agents_sync
from dspyo3_async import ItemResult
from dspyo3_core.testing.server import LMServer

from .conftest import lm_on, observations, react_responder


class Gauge:
    """Counts calls in flight and remembers the peak. With ``meet=n`` the first calls wait (up to 30 s) until n
    are in flight together, so a limit that lets n run at once shows it whatever the machine's load; a limit
    that runs them one after the other leaves the peak below n."""

    def __init__(self, meet: int = 1) -> None:
        self.now = self.peak = 0
        self.meet = meet
        self.changed = threading.Condition()

    def __enter__(self) -> None:
        with self.changed:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.peak >= self.meet, timeout=30)

    def __exit__(self, *exc: object) -> None:
        with self.changed:
            self.now -= 1


def square_agent(server: LMServer, gauge: Gauge) -> ReActAgent:
    registry = ToolRegistry()

    @registry.tool()
    def square(n: int) -> int:
        """Square a number (slowly)."""
        with gauge:
            time.sleep(0.15)
        return n * n

    def decide(fields: dict[str, str]) -> dict[str, Any]:
        if observations(fields):
            return {"tool": "finish"}
        return {"tool": "square", "args": {"n": int(fields["question"].split()[-1])}}

    server.responder = react_responder(decide, lambda f: observations(f)[0])
    return ReActAgent("question -> answer", registry)


def test_run_agents_shares_one_concurrency_limit(lm_server: LMServer) -> None:
    gauge = Gauge(meet=3)
    agent = square_agent(lm_server, gauge)

    async def go() -> list[ItemResult]:
        with dspy.context(lm=lm_on(lm_server)):
            return await run_agents(agent, [{"question": f"square {n}"} for n in range(8)], concurrency=3)

    results = asyncio.run(go())
    assert [r.unwrap().answer for r in results] == [str(n * n) for n in range(8)]
    assert gauge.peak == 3  # agents ran concurrently, as many as the limit allows and never more


def test_concurrent_run_agents_calls_share_one_semaphore(lm_server: LMServer) -> None:
    gauge = Gauge(meet=2)
    agent = square_agent(lm_server, gauge)

    async def go() -> list[list[ItemResult]]:
        shared = asyncio.Semaphore(2)
        coordinator = Coordinator(agent, split=lambda t: [{"question": f"square {n}"} for n in t["numbers"]],
                                  concurrency=shared)
        with dspy.context(lm=lm_on(lm_server)):
            first, second, fanned = await asyncio.gather(
                run_agents(agent, [{"question": f"square {n}"} for n in range(4)], concurrency=shared),
                run_agents(agent, [{"question": f"square {n}"} for n in range(4, 8)], concurrency=shared,
                           timeout=30),
                coordinator.run({"numbers": [8, 9]}))
        return [first, second, fanned.results]

    batches = asyncio.run(go())
    answers = [r.unwrap().answer for batch in batches for r in batch]
    assert answers == [str(n * n) for n in range(10)]
    assert gauge.peak == 2  # three callers, one limit: never more than 2 agents in flight together


def test_run_agents_reports_per_run_errors(lm_server: LMServer) -> None:
    agent = square_agent(lm_server, Gauge())
    with dspy.context(lm=lm_on(lm_server)):
        results = run_agents_sync(agent, [{"question": "square 3"}, {"wrong_field": "x"}], concurrency=2)
    assert results[0].ok and results[0].prediction.answer == "9"
    assert not results[1].ok and "missing input field 'question'" in str(results[1].error)


def test_coordinator_fans_out_and_merges(lm_server: LMServer) -> None:
    gauge = Gauge(meet=2)
    agent = square_agent(lm_server, gauge)

    def merge(task: Any, results: list[ItemResult]) -> int:
        return sum(int(r.prediction.answer) for r in results if r.ok)

    coordinator = Coordinator(agent, split=lambda task: [{"question": f"square {n}"} for n in task["numbers"]],
                              merge=merge, concurrency=4)
    with dspy.context(lm=lm_on(lm_server)):
        out = coordinator.run_sync({"numbers": [1, 2, 3, 4]})
    assert out.merged == 30 and out.failed == [] and len(out.subtasks) == 4
    assert gauge.peak >= 2

    default = Coordinator(agent)
    with dspy.context(lm=lm_on(lm_server)):
        listed = default.run_sync({"subtasks": [{"question": "square 5"}]})
    assert listed.merged == [{"answer": "25"}]
    with pytest.raises(ValueError, match="no 'subtasks' list"):
        default.run_sync({"numbers": [1]})


def test_with_a_shared_semaphore_a_run_takes_its_slot_before_a_rate_token() -> None:
    class Recorder:  # a RateLimit stand-in that remembers when tokens were taken
        def __init__(self) -> None:
            self.times: list[float] = []

        async def acquire(self) -> None:
            self.times.append(time.monotonic())

    async def slow_agent(question: str) -> str:
        await asyncio.sleep(0.1)
        return question.upper()

    rate = Recorder()

    async def go() -> tuple[list[ItemResult], float]:
        shared = asyncio.Semaphore(1)
        await shared.acquire()  # another caller holds the only slot
        run = asyncio.ensure_future(run_agents(slow_agent, [{"question": f"q{i}"} for i in range(3)],
                                               concurrency=shared, rate=rate, timeout=0.5))  # type: ignore[arg-type]
        await asyncio.sleep(0.6)  # longer than the timeout: only a wait counted against it could fail the runs
        assert rate.times == []  # queued runs hold no token, so they cannot start in a burst later
        freed = time.monotonic()
        shared.release()
        return await run, freed

    results, freed = asyncio.run(go())
    assert [r.unwrap() for r in results] == ["Q0", "Q1", "Q2"]  # the 0.6 s wait did not count against timeout
    assert all(t >= freed for t in rate.times) and rate.times[2] - rate.times[0] >= 0.18  # one slot, in turn


def test_coordinator_run_sync_inside_a_running_loop_is_a_clear_error() -> None:
    coordinator = Coordinator(lambda **fields: fields)

    async def inside() -> None:
        coordinator.run_sync({"subtasks": [{"question": "x"}]})

    with pytest.raises(RuntimeError, match=r"Coordinator\.run_sync was called from a running event loop; use "
                                           r"`await coordinator\.run\(\.\.\.\)` there"):
        asyncio.run(inside())
    assert coordinator.run_sync({"subtasks": [{"question": "x"}]}).merged == [{"result": {"question": "x"}}]
