"""Tracing in dspyo3-async (with a recording fake tracer installed through ``dspyo3_core.spans``): one
``dspyo3.run_many.item`` span per item, rate-limit waits recorded only when a call waited, and the current span
carried across asyncio tasks, ``asyncio.to_thread`` and ``dspy.asyncify``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import dspy
import pytest

from dspyo3_async import RateLimit, RetryPolicy, run_many
from dspyo3_core import spans
from dspyo3_core.testing import RecordedSpan, RecordingTracer


@pytest.fixture
def tracer() -> Iterator[RecordingTracer]:
    with RecordingTracer().installed() as recording:
        yield recording


# -- run_many --------------------------------------------------------------------------------------------------------
def test_each_run_many_item_gets_a_span_and_its_program_nests_under_it(tracer: RecordingTracer) -> None:
    seen: dict[int, spans.SpanRef | None] = {}

    async def program(question: int) -> int:
        await asyncio.sleep(0.001 * (8 - question))  # finish out of order
        seen[question] = spans.CURRENT.get()
        with tracer.start("inner"):
            pass
        return question * 2

    async def main() -> list[Any]:
        with tracer.start("root") as root:
            results = await run_many(program, [{"question": i} for i in range(8)], concurrency=4)
        return [results, root]

    results, root = asyncio.run(main())
    assert [r.prediction for r in results] == [i * 2 for i in range(8)]
    items = tracer.named("dspyo3.run_many.item")
    assert sorted(s.attrs["dspyo3.run_many.index"] for s in items) == list(range(8))
    by_index = {s.attrs["dspyo3.run_many.index"]: s for s in items}
    for index, item in by_index.items():
        assert item.attrs["dspyo3.run_many.attempts"] == 1
        assert item.parent_id == root.ref.span_id and item.ref.trace_id == root.ref.trace_id
        assert seen[index] == item.ref, "the program runs with its item's span current"
    inner = tracer.named("inner")
    assert len(inner) == 8 and {s.parent_id for s in inner} == {s.ref.span_id for s in items}
    assert spans.CURRENT.get() is None


def test_a_sync_program_in_a_worker_thread_sees_its_item_span(tracer: RecordingTracer) -> None:
    threads: dict[int, tuple[int, spans.SpanRef | None]] = {}

    def program(question: int) -> int:  # not async: run_many calls it through asyncio.to_thread
        threads[question] = (threading.get_ident(), spans.CURRENT.get())
        return question

    results = asyncio.run(run_many(program, [{"question": i} for i in range(3)], concurrency=3))
    assert all(r.ok for r in results)
    by_index = {s.attrs["dspyo3.run_many.index"]: s for s in tracer.named("dspyo3.run_many.item")}
    for index, (thread, ref) in threads.items():
        assert thread != threading.get_ident()
        assert ref == by_index[index].ref


def test_retried_item_counts_attempts_and_a_failed_item_is_an_error_span(tracer: RecordingTracer) -> None:
    calls: dict[int, int] = {}

    async def program(question: int) -> int:
        calls[question] = calls.get(question, 0) + 1
        if question == 0 and calls[question] == 1:
            raise ConnectionError("flaky")
        if question == 1:
            raise ValueError("always wrong")
        return question

    policy = RetryPolicy(attempts=2, base_delay=0.0, retry_on=lambda exc: isinstance(exc, ConnectionError))
    results = asyncio.run(run_many(program, [{"question": 0}, {"question": 1}], retries=policy))
    assert results[0].ok and results[0].attempts == 2 and not results[1].ok
    by_index = {s.attrs["dspyo3.run_many.index"]: s for s in tracer.named("dspyo3.run_many.item")}
    assert by_index[0].attrs["dspyo3.run_many.attempts"] == 2 and by_index[0].error is None
    assert by_index[1].attrs["dspyo3.run_many.attempts"] == 1
    assert isinstance(by_index[1].error, ValueError) and by_index[1].attrs["error.type"] == "ValueError"


def test_no_tracer_no_spans_and_results_unchanged() -> None:
    assert spans.TRACER is None

    async def program(question: int) -> int:
        assert spans.CURRENT.get() is None
        return question

    results = asyncio.run(run_many(program, [{"question": i} for i in range(3)]))
    assert [r.prediction for r in results] == [0, 1, 2]


# -- rate limits -----------------------------------------------------------------------------------------------------
def test_rate_limit_waits_are_recorded_only_when_a_call_was_held_back(tracer: RecordingTracer) -> None:
    limit = RateLimit(requests_per_second=5, burst=1)  # the first call passes, the next two wait ~0.2 s each

    async def main() -> list[float]:
        with tracer.start("root"):
            return [await limit.acquire() for _ in range(3)]

    asyncio.run(main())
    root = tracer.one("root")
    recorded = tracer.named("dspyo3.rate_limit.wait")
    assert len(recorded) == 2, "the first call went straight through: no span for it"
    for span in recorded:
        assert span.parent_id == root.ref.span_id
        assert span.attrs["dspyo3.rate_limit.waited_s"] > 0
        assert span.attrs["dspyo3.rate_limit.local"] is False
        assert span.end_ns is not None and span.end_ns > span.start_ns

    tracer.spans.clear()
    limit.acquire_sync()  # held back too (the bucket is still empty)
    assert len(tracer.named("dspyo3.rate_limit.wait")) == 1


def test_an_unpaced_acquire_records_nothing(tracer: RecordingTracer) -> None:
    limit = RateLimit(requests_per_second=1000, burst=10)
    asyncio.run(limit.acquire())
    for _ in range(3):
        limit.acquire_sync()
    assert tracer.named("dspyo3.rate_limit.wait") == []


# -- propagation -----------------------------------------------------------------------------------------------------
def test_asyncio_gather_tasks_nest_under_the_span_that_created_them(tracer: RecordingTracer) -> None:
    async def child(i: int) -> spans.SpanRef | None:
        await asyncio.sleep(0)
        with tracer.start(f"child {i}") as span:
            await asyncio.sleep(0)
            assert spans.CURRENT.get() == span.ref
        return spans.CURRENT.get()

    async def main() -> tuple[list[Any], RecordedSpan]:
        with tracer.start("parent") as parent:
            return list(await asyncio.gather(*(child(i) for i in range(4)))), parent

    after, parent = asyncio.run(main())
    assert after == [parent.ref] * 4, "each task's span was reset in its own context"
    children = tracer.named("child ")
    assert len(children) == 4 and {c.parent_id for c in children} == {parent.ref.span_id}


def test_dspy_asyncify_carries_the_current_span_into_its_worker_thread(tracer: RecordingTracer) -> None:
    def work() -> tuple[int, spans.SpanRef | None]:
        return threading.get_ident(), spans.CURRENT.get()

    async def main() -> tuple[tuple[int, spans.SpanRef | None], RecordedSpan]:
        with tracer.start("parent") as parent:
            return await dspy.asyncify(work)(), parent

    (thread, ref), parent = asyncio.run(main())
    assert thread != threading.get_ident() and ref == parent.ref
