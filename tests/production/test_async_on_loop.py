"""With the production stack active, async LM calls run the hook chain on the event loop: no worker thread, and
the stack still counts, caches, prices and refuses them as it does sync calls."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio.to_thread
import dspy
import pytest

import dspyo3_production as prod
from dspyo3_core.lm import HookedLM
from dspyo3_core.testing.server import LMServer, Reply
from dspyo3_production.cache import TieredCache
from dspyo3_production.cost import Budget, BudgetExceededError
from dspyo3_production.metrics import Metrics
from dspyo3_production.pipeline import Production


def _no_worker_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make any use of a worker thread fail, and collect the threads the stack reports calls from."""
    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an async LM call went to a worker thread")

    monkeypatch.setattr(anyio.to_thread, "run_sync", refuse)
    threads: list[int] = []
    record = Production.record_call

    def recording(self: Production, *args: Any, **kwargs: Any) -> None:
        threads.append(threading.get_ident())
        record(self, *args, **kwargs)

    monkeypatch.setattr(Production, "record_call", recording)
    return threads


def test_async_calls_stay_on_the_event_loop(qa_lm: HookedLM, metrics: Metrics,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    prod.enable(prod.Production(cache=TieredCache(metrics=metrics), metrics=metrics, log_events=False))
    threads = _no_worker_threads(monkeypatch)
    qa = dspy.Predict("question -> answer")

    async def main() -> tuple[list[str], int]:
        with dspy.context(lm=qa_lm):
            first = await qa.acall(question="a")
            again = await qa.acall(question="a")
            other = await qa.acall(question="b")
        return [first.answer, again.answer, other.answer], threading.get_ident()

    answers, loop_thread = asyncio.run(main())
    assert answers == ["answer to a", "answer to a", "answer to b"]
    assert threads == [loop_thread] * 3  # every call was reported from the loop's own thread
    model = "openai/gpt-4o-mini"
    assert metrics.lm_requests_total(model, "ok") == 2
    assert metrics.lm_requests_total(model, "cache_hit") == 1
    stack = prod.stack.active()
    assert stack is not None and stack.costs is not None
    assert stack.costs.totals("total")["total"] > 0  # usage and cost came back from the call to the stack


def test_an_async_call_refused_by_a_budget_is_refused_on_the_loop(qa_lm: HookedLM, metrics: Metrics,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    prod.enable(prod.Production(metrics=metrics, log_events=False, budgets=[Budget(0.0)]))
    threads = _no_worker_threads(monkeypatch)

    async def main() -> None:
        with dspy.context(lm=qa_lm):
            await dspy.Predict("question -> answer").acall(question="a")

    with pytest.raises(BudgetExceededError):
        asyncio.run(main())
    assert len(threads) == 1
    assert metrics.lm_requests_total("openai/gpt-4o-mini", "budget_exceeded") == 1


def test_an_async_provider_error_is_counted_and_raised(qa_lm: HookedLM, qa_server: LMServer, metrics: Metrics,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    prod.enable(prod.Production(metrics=metrics, log_events=False))
    threads = _no_worker_threads(monkeypatch)
    qa_server.script(Reply.server_error(500, "broken"))

    async def main() -> None:
        with dspy.context(lm=qa_lm):
            await dspy.Predict("question -> answer").acall(question="a")

    with pytest.raises(Exception, match="broken") as raised:
        asyncio.run(main())
    assert len(threads) == 1
    assert metrics.lm_requests_total("openai/gpt-4o-mini", "ok") == 0
    assert metrics.lm_requests_total("openai/gpt-4o-mini", type(raised.value).__name__) == 1


def test_offline_lm_async_calls_stay_on_the_event_loop(manager: Any, metrics: Metrics,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from dspyo3_core.offline import OfflineLM

    prod.enable(prod.Production(metrics=metrics, log_events=False))
    threads = _no_worker_threads(monkeypatch)
    lm = OfflineLM(plugin_manager=manager)

    async def main() -> tuple[str, int]:
        with dspy.context(lm=lm):
            result = await dspy.Predict("question -> answer").acall(question="What is 2 + 2?")
        return result.answer, threading.get_ident()

    answer, loop_thread = asyncio.run(main())
    assert answer
    assert threads == [loop_thread]
    assert metrics.lm_requests_total("offline/extractive", "ok") == 1
