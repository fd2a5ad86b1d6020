"""Backpressure policies, streaming events (in order, final last, retries visible), the SSE / WebSocket
helpers, and rate limits shared through a real redis-server."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import dspy
import pytest
from async_support import QA, lm_for

from dspyo3_async import (
    Chunk,
    Dropped,
    Final,
    ProgramPool,
    QueueFull,
    RateLimit,
    Retry,
    RetryPolicy,
    WorkQueue,
    sse_response,
    stream,
    websocket_send,
)
from dspyo3_core.testing.server import LMServer, Reply, chat_reply, digest_responder


# -- backpressure ----------------------------------------------------------------------------------------------------
def test_work_queue_policies_and_metrics() -> None:
    async def main() -> None:
        reject: WorkQueue[int] = WorkQueue(2, "reject")
        await reject.put(1)
        await reject.put(2)
        with pytest.raises(QueueFull, match="full \\(2 waiting\\)"):
            await reject.put(3)
        assert reject.stats() == {"depth": 2, "max_depth": 2, "enqueued": 2, "dequeued": 0, "rejected": 1,
                                  "dropped": 0}

        drop: WorkQueue[int] = WorkQueue(2, "drop_oldest")
        for i in range(4):
            await drop.put(i)
        assert [await drop.get(), await drop.get()] == [2, 3] and drop.dropped == 2

        block: WorkQueue[int] = WorkQueue(1, "block")
        await block.put(1)
        waiter = asyncio.ensure_future(block.put(2))
        await asyncio.sleep(0.05)
        assert not waiter.done(), "put waits while the queue is full"
        assert await block.get() == 1
        await asyncio.wait_for(waiter, 60)  # a hang guard
        assert await block.get() == 2

    asyncio.run(main())
    with pytest.raises(ValueError, match="policy must be"):
        WorkQueue(1, "spill")  # type: ignore[arg-type]


def test_program_pool_sheds_load_under_reject_and_drop_oldest(server: LMServer) -> None:
    server.responder = digest_responder(latency=0.2)
    program = dspy.Predict(QA)

    async def main(policy: Any) -> tuple[list[Any], dict[str, int]]:
        outcomes: list[Any] = []
        with dspy.context(lm=lm_for(server)):
            async with ProgramPool(program, concurrency=2, maxsize=2, policy=policy) as pool:
                futures = []
                for i in range(8):
                    try:
                        futures.append(await pool.submit(question=f"q{i}"))
                    except QueueFull as exc:
                        outcomes.append(exc)
                for future in futures:
                    try:
                        outcomes.append(await future)
                    except Dropped as exc:
                        outcomes.append(exc)
            return outcomes, pool.stats()

    outcomes, stats = asyncio.run(main("reject"))
    assert sum(isinstance(o, QueueFull) for o in outcomes) == stats["rejected"] >= 3
    assert sum(getattr(o, "ok", False) for o in outcomes) == stats["completed"] == 8 - stats["rejected"]
    assert stats["max_depth"] == 2 and stats["depth"] == 0

    outcomes, stats = asyncio.run(main("drop_oldest"))
    assert sum(isinstance(o, Dropped) for o in outcomes) == stats["dropped"] >= 3
    assert stats["completed"] == 8 - stats["dropped"]


# -- streaming -------------------------------------------------------------------------------------------------------
def _collect(program: Any, lm: dspy.LM, **kwargs: Any) -> list[Any]:
    async def main() -> list[Any]:
        with dspy.context(lm=lm):
            return [event async for event in stream(program, **kwargs)]

    return asyncio.run(main())


def test_stream_delivers_chunks_in_order_and_the_prediction_last(server: LMServer) -> None:
    answer = "The quick brown fox jumps over the lazy dog " * 3
    server.script(Reply(content=chat_reply(answer=answer), chunk_size=7))
    events = _collect(dspy.Predict(QA), lm_for(server), question="q")
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert len(chunks) > 3 and all(c.field == "answer" for c in chunks)
    assert "".join(c.text for c in chunks).strip() == answer.strip()
    assert isinstance(events[-1], Final) and events[-1].prediction.answer.strip() == answer.strip()
    assert sum(isinstance(e, Final) for e in events) == 1


def test_stream_retries_are_visible_not_silent(server: LMServer) -> None:
    server.script(Reply.rate_limited(retry_after=0.05), Reply(content=chat_reply(answer="after retry"),
                                                              chunk_size=4))
    events = _collect(dspy.Predict(QA), lm_for(server), question="q", retries=RetryPolicy(attempts=3))
    retries = [e for e in events if isinstance(e, Retry)]
    assert len(retries) == 1 and "RateLimit" in retries[0].error and retries[0].discard == 0
    assert isinstance(events[-1], Final) and events[-1].prediction.answer == "after retry"
    assert len(server.requests) == 2


def test_stream_raises_a_non_retryable_error(server: LMServer) -> None:
    server.script(Reply(status=401, error_message="bad key"))
    with pytest.raises(dspy.LMError, match=r"bad key|401|Authentication"):
        _collect(dspy.Predict(QA), lm_for(server), question="q")


def test_sse_and_websocket_helpers_in_a_starlette_app(server: LMServer) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route, WebSocketRoute
    from starlette.testclient import TestClient

    program = dspy.Predict(QA)
    lm = lm_for(server)

    async def sse(request: Any) -> Any:
        with dspy.context(lm=lm):
            return sse_response(stream(program, question=request.query_params["q"]))

    async def ws(websocket: Any) -> None:
        await websocket.accept()
        question = await websocket.receive_text()
        with dspy.context(lm=lm):
            await websocket_send(websocket, stream(program, question=question))
        await websocket.close()

    app = Starlette(routes=[Route("/ask", sse), WebSocketRoute("/ws", ws)])
    server.script(Reply(content=chat_reply(answer="streamed over sse"), chunk_size=5),
                  Reply(content=chat_reply(answer="streamed over ws"), chunk_size=5))
    with TestClient(app) as client:
        response = client.get("/ask", params={"q": "hi"})
        assert response.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in response.text.split("\n\n") if b.strip()]
        kinds = [b.splitlines()[0].removeprefix("event: ") for b in blocks]
        assert kinds[-1] == "final" and "chunk" in kinds
        final = json.loads(blocks[-1].splitlines()[1].removeprefix("data: "))
        assert final["prediction"]["answer"] == "streamed over sse"

        with client.websocket_connect("/ws") as socket:
            socket.send_text("hello")
            messages = []
            while True:
                message = socket.receive_json()
                messages.append(message)
                if message["type"] in {"final", "error"}:
                    break
        assert messages[-1]["type"] == "final" and messages[-1]["prediction"]["answer"] == "streamed over ws"
        assert "".join(m["text"] for m in messages if m["type"] == "chunk").strip() == "streamed over ws"


# -- rate limits ------------------------------------------------------------------------------------------------------
def test_rate_limit_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="needs requests_per_second and/or tokens_per_minute"):
        RateLimit()
    with pytest.raises(ValueError, match="requests_per_second must be > 0"):
        RateLimit(0)
    with pytest.raises(ValueError, match="redis_url must be"):
        RateLimit(1, redis_url="localhost:6379")


def test_token_budget_holds_calls_once_overdrawn() -> None:
    async def main() -> float:
        limit = RateLimit(tokens_per_minute=600)  # 10 tokens/s, a bucket of 600
        await limit.acquire()
        await limit.charge(600 + 5)  # the whole bucket and 5 tokens more: overdrawn by ~0.5 s
        started = time.monotonic()
        await limit.acquire()
        return time.monotonic() - started

    assert asyncio.run(main()) >= 0.3


SHARED_WORKER = """
import asyncio, json, sys, time
import redis
from dspyo3_async import RateLimit

async def main():
    url, me, other = sys.argv[1], sys.argv[2], sys.argv[3]
    limit = RateLimit(20, redis_url=url, key="shared-test")
    client = redis.Redis.from_url(url)
    stamps, first_call = [], time.time()
    # take 10 grants, then keep taking them until the other process has 5 too (at most 600): the two processes
    # draw from the budget at the same time whatever the machine's load, and the loop ends by a count, not a clock
    while len(stamps) < 600 and (len(stamps) < 10 or int(client.get(other) or 0) < 5):
        await limit.acquire()
        stamps.append(time.time())
        client.set(me, len(stamps))
    print(json.dumps({"first_call": first_call, "stamps": stamps}))

asyncio.run(main())
"""


def test_two_processes_share_one_redis_budget(redis_url: str) -> None:
    import subprocess
    import sys

    import redis

    names = ["shared-test:count:a", "shared-test:count:b"]
    redis.Redis.from_url(redis_url).delete(*names)
    workers = [subprocess.Popen([sys.executable, "-c", SHARED_WORKER, redis_url, me, other], stdout=subprocess.PIPE,
                                text=True) for me, other in (names, names[::-1])]
    runs = [json.loads(w.communicate(timeout=120)[0]) for w in workers]
    stamps = sorted((s, i) for i, run in enumerate(runs) for s in run["stamps"])
    assert all(len(run["stamps"]) >= 10 for run in runs)
    # the two processes took grants at the same time: their stamps interleave
    owners = [i for _, i in stamps]
    assert sum(a != b for a, b in itertools.pairwise(owners)) >= 2
    # one budget of 20/s for both: the n-th grant of either process comes n/20 s after the first request or later
    # (a grant is stamped when its process wakes, never before its slot, so this holds however loaded the machine)
    start = min(run["first_call"] for run in runs)
    for n, (stamp, _) in enumerate(stamps):
        assert stamp >= start + n / 20 - 0.002, f"grant {n + 1} of both processes came too early"


def test_closing_a_pool_settles_every_future() -> None:
    with LMServer() as hanging:
        hanging.script(*[Reply.hang_up(seconds=30) for _ in range(4)])
        program = dspy.Predict(QA)

        async def main() -> tuple[list[Any], set[asyncio.Task[Any]]]:
            with dspy.context(lm=lm_for(hanging)):
                pool = ProgramPool(program, concurrency=2, maxsize=4)
                await pool.__aenter__()
                futures = [await pool.submit(question=f"q{i}") for i in range(4)]
                await asyncio.sleep(0.3)
                await pool.close()
            settled = [f.cancelled() for f in futures]
            await asyncio.sleep(0.1)
            return settled, asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

        settled, leftover = asyncio.run(main())
        assert all(settled), "running and queued items are cancelled, nobody waits forever"
        assert not leftover
