"""run_many / iter_many on DSPy's async path against the loopback LM server: order, per-item errors, retries
through a 429 storm, timeouts that cancel the HTTP request, no leaked tasks or connections."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import dspy
import psutil
import pytest
from async_support import QA, lm_for

from dspyo3_async import ItemError, ItemTimeout, RateLimit, RetryPolicy, iter_many, run_many, run_many_sync, throttle
from dspyo3_core.testing.server import LMServer, Reply, chat_reply


def questions(n: int) -> list[dict[str, str]]:
    return [{"question": f"question {i}"} for i in range(n)]


def test_results_come_back_in_input_order_with_per_item_errors(server: LMServer) -> None:
    # the third request fails for good (HTTP 400 is not retryable); the rest answer
    server.script("[[ ## answer ## ]]\nA0", "[[ ## answer ## ]]\nA1", Reply(status=400, error_message="bad"))
    program = dspy.Predict(QA)

    async def main() -> list[Any]:
        with dspy.context(lm=lm_for(server)):
            return await run_many(program, questions(3) + questions(5)[3:], concurrency=1)

    results = asyncio.run(main())
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert results[0].prediction.answer == "A0" and results[1].prediction.answer == "A1"
    assert results[2].attempts == 1, "a 400 is not retried"
    with pytest.raises(ItemError, match="item 2 failed after 1 attempt"):
        results[2].unwrap()
    assert results[3].prediction.answer.startswith("answer-")


def test_a_429_storm_is_ridden_out_and_the_results_are_complete(server: LMServer) -> None:
    server.script(*[Reply.rate_limited(retry_after=0.05) for _ in range(30)])
    program = dspy.Predict(QA)

    async def main() -> list[Any]:
        with dspy.context(lm=lm_for(server)):
            return await run_many(program, questions(20), concurrency=10,
                                  retries=RetryPolicy(attempts=8, base_delay=0.01, max_delay=0.2))

    results = asyncio.run(main())
    assert all(r.ok for r in results), [str(r.error) for r in results if not r.ok]
    assert sum(r.attempts for r in results) == 20 + 30, "every 429 was retried, nothing more"
    assert len(server.requests) == 50
    with dspy.context(lm=lm_for(server)):
        expected = run_many_sync(program, questions(20), concurrency=4)  # same prompts, same digests
    assert [r.prediction.answer for r in results] == [r.prediction.answer for r in expected]


def test_retry_after_is_honoured(server: LMServer) -> None:
    server.script(Reply.rate_limited(retry_after=0.4))
    program = dspy.Predict(QA)

    async def main() -> Any:
        with dspy.context(lm=lm_for(server)):
            return (await run_many(program, questions(1), retries=RetryPolicy(attempts=2, base_delay=0.0)))[0]

    result = asyncio.run(main())
    assert result.ok and result.attempts == 2
    assert result.elapsed >= 0.4, "the retry waited for the server's Retry-After"


def _connections_to(port: int) -> int:
    return sum(1 for c in psutil.Process().net_connections(kind="tcp")
               if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def test_timeouts_cancel_the_request_and_leave_no_tasks_or_connections() -> None:
    with LMServer() as hanging:
        hanging.script(*[Reply.hang_up(seconds=30) for _ in range(4)])
        port = int(hanging.api_base.rsplit(":", 1)[1].split("/")[0])
        program = dspy.Predict(QA)

        async def main() -> tuple[list[Any], set[asyncio.Task[Any]]]:
            with dspy.context(lm=lm_for(hanging)):
                results = await run_many(program, questions(4), concurrency=4, timeout=0.5)
            await asyncio.sleep(0.2)  # let closed transports finish
            return results, asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

        results, leftover = asyncio.run(main())
        assert all(isinstance(r.error, ItemTimeout) for r in results)
        assert results[0].attempts == 1, "a timeout is not retried by the default policy"
        assert not leftover, f"tasks left running: {leftover}"
        assert _connections_to(port) == 0, "the cancelled requests' connections were closed"


def test_cancelling_run_many_cancels_everything_in_flight() -> None:
    with LMServer() as hanging:
        hanging.script(*[Reply.hang_up(seconds=30) for _ in range(8)])
        port = int(hanging.api_base.rsplit(":", 1)[1].split("/")[0])
        program = dspy.Predict(QA)

        async def main() -> set[asyncio.Task[Any]]:
            with dspy.context(lm=lm_for(hanging)):
                # the async executor's guarantee (auto would pick threads for a dspy.LM on DSPy's engine)
                task = asyncio.ensure_future(run_many(program, questions(8), concurrency=8, executor="async"))
                await asyncio.sleep(0.5)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            await asyncio.sleep(0.2)
            return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

        assert not asyncio.run(main())
        assert _connections_to(port) == 0


def test_the_executor_follows_the_lm(server: LMServer, caplog: pytest.LogCaptureFixture) -> None:
    """dspy.LM on DSPy's engines: worker threads (cheaper per call than its async path); the native engine,
    NativeLM, a timeout or a shared semaphore: the event loop."""
    import threading

    from dspyo3_async import choose_executor
    from dspyo3_core.native_engine import native_lm
    from dspyo3_core.native_lm import NativeLM

    program = dspy.Predict(QA)
    engine_lm = native_lm("openai/m", api_base=server.api_base, api_key="sk-test", cache=False)
    native = NativeLM("openai/m", api_base=server.api_base, api_key="sk-test", cache=False)
    with dspy.context(lm=lm_for(server)):
        assert choose_executor(program) == "threads"
        assert choose_executor(program, timeout=5.0) == "async"
        assert choose_executor(program, concurrency=asyncio.Semaphore(4)) == "async"
        assert choose_executor(program, "async") == "async"
        assert choose_executor(lambda question: question) == "threads"

        async def coroutine(question: str) -> str:
            return question

        assert choose_executor(coroutine) == "async"
        program.lm = engine_lm  # a predictor's own LM counts too: the default one is still DSPy's engine
        assert choose_executor(program) == "threads"
        program.lm = None
    for lm in (engine_lm, native):
        with dspy.context(lm=lm):
            assert choose_executor(program) == "async"
    with pytest.raises(ValueError, match="executor"):
        choose_executor(program, "processes")
    # choosing never reads an instance's forward (DSPy warns when it is)
    with dspy.context(lm=lm_for(server)), caplog.at_level(logging.WARNING, logger="dspy.primitives.module"):
        assert choose_executor(dspy.ChainOfThought(QA)) == "threads"
    assert not caplog.records

    seen: list[str] = []

    class Where(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qa = dspy.Predict(QA)

        def forward(self, question: str) -> Any:
            seen.append(threading.current_thread().name)
            return self.qa(question=question)

    server.responder = lambda request: chat_reply(answer="ok")
    with dspy.context(lm=lm_for(server)):
        results = run_many_sync(Where(), questions(6), concurrency=3)
    assert [r.unwrap().answer for r in results] == ["ok"] * 6
    assert all(name.startswith("dspyo3-run_many") for name in seen), seen


def test_threads_time_only_the_call_and_async_only_modules_stay_on_the_loop(server: LMServer) -> None:
    def program(question: str) -> str:
        time.sleep(2.0 if question == "slow" else 0.05)
        return question

    inputs = [{"question": "slow"}, {"question": "slow"}, *questions(4)]
    results = run_many_sync(program, inputs, concurrency=2, timeout=0.5, retries=0)  # a callable: threads
    assert [r.ok for r in results] == [False, False, True, True, True, True], \
        "the items queued behind the abandoned calls waited for a worker; their time started with their call"
    assert "abandoned on its worker thread" in str(results[0].error)

    class AsyncOnly(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qa = dspy.Predict(QA)

        async def aforward(self, question: str) -> Any:
            return await self.qa.acall(question=question)

    server.responder = lambda request: chat_reply(answer="ok")
    with dspy.context(lm=lm_for(server)):  # DSPy's own engine, but the module has no sync call to thread
        assert [r.unwrap().answer for r in run_many_sync(AsyncOnly(), questions(3), concurrency=3)] == ["ok"] * 3


def test_iter_many_yields_as_completed_and_stops_cleanly(server: LMServer) -> None:
    server.script(Reply.text(chat_reply(answer="slow"), latency=0.5))
    program = dspy.Predict(QA)

    async def main() -> tuple[list[Any], set[asyncio.Task[Any]]]:
        order = []
        with dspy.context(lm=lm_for(server)):
            async for result in iter_many(program, questions(4), concurrency=4):
                assert result.ok
                order.append(result)
        return order, asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

    order, leftover = asyncio.run(main())
    assert sorted(r.index for r in order) == [0, 1, 2, 3]
    assert order[-1].prediction.answer == "slow", "the item that got the slow reply comes last"
    assert not leftover


def test_iter_many_break_cancels_the_rest() -> None:
    with LMServer() as hanging:
        hanging.script(Reply.text(chat_reply(answer="fast")), *[Reply.hang_up(seconds=30) for _ in range(5)])
        program = dspy.Predict(QA)

        async def main() -> set[asyncio.Task[Any]]:
            with dspy.context(lm=lm_for(hanging)):
                async for result in iter_many(program, questions(6), concurrency=6):
                    assert result.prediction.answer == "fast"
                    break
            await asyncio.sleep(0.1)
            return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

        assert not asyncio.run(main())


def test_sync_modules_and_plain_callables_are_bridged(server: LMServer) -> None:
    class TwoStep(dspy.Module):  # forward only: runs in a worker thread with dspy.context carried over
        def __init__(self) -> None:
            super().__init__()
            self.qa = dspy.Predict(QA)

        def forward(self, question: str) -> Any:
            return self.qa(question=question)

    async def coroutine(question: str) -> str:
        return question.upper()

    async def main() -> tuple[list[Any], list[Any]]:
        with dspy.context(lm=lm_for(server)):
            return (await run_many(TwoStep(), questions(3)), await run_many(coroutine, questions(2)))

    modules, coroutines = asyncio.run(main())
    assert all(r.ok and r.prediction.answer.startswith("answer-") for r in modules)
    assert [r.prediction for r in coroutines] == ["QUESTION 0", "QUESTION 1"]


def test_bad_arguments_are_clear_errors() -> None:
    program = dspy.Predict(QA)
    with pytest.raises(ValueError, match="concurrency must be a positive integer"):
        run_many_sync(program, questions(1), concurrency=0)
    with pytest.raises(ValueError, match="timeout must be > 0"):
        run_many_sync(program, questions(1), timeout=-1)
    result = run_many_sync(program, ["not a mapping"])[0]  # type: ignore[list-item]
    assert isinstance(result.error, TypeError) and "must be a mapping of input fields" in str(result.error)


def test_rate_limited_run_paces_requests_and_throttle_charges_tokens(server: LMServer) -> None:
    program = dspy.Predict(QA)
    limit = RateLimit(20, tokens_per_minute=1_000_000)

    async def main() -> list[Any]:
        with dspy.context(lm=throttle(lm_for(server), limit)):
            return await run_many(program, questions(11), concurrency=11)

    started = time.monotonic()
    results = asyncio.run(main())
    elapsed = time.monotonic() - started
    assert all(r.ok for r in results)
    assert elapsed >= 0.45, "11 requests at 20/s need at least 0.5 s (10 intervals)"
    assert limit.granted == 11 and limit.tokens_charged > 0


def test_iter_many_closed_early_with_a_full_buffer_does_not_hang(server: LMServer) -> None:
    program = dspy.Predict(QA)

    async def main() -> set[asyncio.Task[Any]]:
        with dspy.context(lm=lm_for(server)):
            results = iter_many(program, questions(30), concurrency=8, buffer=1)
            first = await results.__anext__()
            assert first.ok
            await asyncio.sleep(0.5)  # the workers fill the one-slot buffer and wait
            await asyncio.wait_for(results.aclose(), 60)  # a hang guard
        await asyncio.sleep(0.1)
        return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

    assert not asyncio.run(main())


def test_a_throttled_lm_is_a_separate_copy(server: LMServer) -> None:
    lm = lm_for(server)
    throttled = throttle(lm, RateLimit(100))
    assert throttled.history is not lm.history and throttled.kwargs is not lm.kwargs
    assert isinstance(throttled, dspy.LM) and throttled.model == lm.model


# -- a shared semaphore ---------------------------------------------------------------------------------------------


class InFlight:
    """A coroutine program that counts the calls in flight (across every run that uses it)."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds, self.now, self.most, self.calls = seconds, 0, 0, 0

    async def __call__(self, question: str) -> str:
        self.now += 1
        self.calls += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.now -= 1
        return question


def test_runs_sharing_a_semaphore_never_exceed_it_together() -> None:
    program = InFlight()

    async def main() -> tuple[list[Any], list[Any], list[Any], int]:
        shared = asyncio.Semaphore(3)
        one, two, three = await asyncio.gather(run_many(program, questions(12), concurrency=shared),
                                               run_many(program, questions(9), concurrency=shared),
                                               collect(iter_many(program, questions(5), concurrency=shared)))
        return one, two, three, shared._value  # type: ignore[attr-defined]

    async def collect(results: Any) -> list[Any]:
        return [r async for r in results]

    one, two, three, left = asyncio.run(main())
    assert all(r.ok for r in one + two + three) and len(one + two + three) == 26
    assert program.most == 3 and left == 3  # the limit held across the three runs, every slot given back


def test_a_shared_slot_comes_before_the_rate_token_and_the_timeout() -> None:
    class Recorder:  # a RateLimit stand-in: when were tokens taken?
        def __init__(self) -> None:
            self.times: list[float] = []

        async def acquire(self) -> None:
            self.times.append(time.monotonic())

    program, rate = InFlight(0.05), Recorder()

    async def main() -> tuple[list[Any], float]:
        shared = asyncio.Semaphore(1)
        await shared.acquire()  # someone else holds the only slot for a while
        run = asyncio.ensure_future(run_many(program, questions(3), concurrency=shared, rate=rate,  # type: ignore[arg-type]
                                             timeout=1.0))
        await asyncio.sleep(1.2)
        assert rate.times == [] and program.calls == 0  # queued for a slot: no token taken, nothing started
        freed = time.monotonic()
        shared.release()
        return await run, freed

    results, freed = asyncio.run(main())
    # every item queued longer (1.2 s and more) than its 1 s timeout, which starts only with its own 0.05 s call
    assert all(r.ok for r in results)
    assert len(rate.times) == 3 and all(t >= freed for t in rate.times)
    assert rate.times[2] - rate.times[0] >= 0.09  # one at a time: each token taken once the slot was free


def test_a_slow_iter_many_consumer_gives_shared_slots_back_and_cancelling_frees_them() -> None:
    program = InFlight(0.01)

    async def main() -> tuple[list[Any], int]:
        shared = asyncio.Semaphore(2)
        stalled = iter_many(program, questions(50), concurrency=shared, buffer=1)
        first = await stalled.__anext__()  # then the consumer stops reading
        assert first.ok
        others = await asyncio.wait_for(run_many(program, questions(6), concurrency=shared), 60)  # hang guard
        await stalled.aclose()  # type: ignore[attr-defined]
        slow = InFlight(10)
        task = asyncio.ensure_future(run_many(slow, questions(5), concurrency=shared))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return others, shared._value  # type: ignore[attr-defined]

    others, left = asyncio.run(main())
    assert all(r.ok for r in others) and left == 2
    assert program.calls < 20  # the stalled run stopped taking items (backpressure)
