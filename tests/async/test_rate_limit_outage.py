"""A shared RateLimit while its redis-server dies (SIGKILL) or hangs (SIGSTOP) mid-run: items keep being served at
this process's share of the rate, the limit rejoins the shared budget once Redis is back; or, with
``on_redis_error="fail"``, requests are refused with a clean error that never shows the password."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis

from dspyo3_async import RateLimit, RateLimitUnavailable, run_many
from dspyo3_core.testing.services import RedisProcess, ServiceUnavailable, in_ci


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    """A redis-server of this test's own, which it may kill, stop and restart on the same port."""
    try:
        process = RedisProcess()
    except ServiceUnavailable as exc:
        if in_ci():
            pytest.fail(f"{exc} (CI must install it: see .ci/run)")
        pytest.skip(str(exc))
    with process:
        yield process


async def echo(question: str) -> str:
    return question


async def phases(limit: RateLimit, outage: Callable[[], None], recover: Callable[[], None],
                 log: list[str]) -> AsyncIterator[dict[str, str]]:
    """Inputs for run_many that drive the fault by what the limit did, never by the clock: 20 items on Redis,
    then the outage until 20 requests were granted locally, then Redis back until the limit rejoined it and
    20 more were granted. Bounded: at most 5,000 items."""
    count = 0

    def item() -> dict[str, str]:
        nonlocal count
        count += 1
        return {"question": f"q{count}"}

    while count < 20:
        yield item()
    outage()
    log.append("down")
    while limit.granted_locally < 20 and count < 5_000:
        yield item()
    recover()
    log.append("up")
    while limit.rejoined < 1 and count < 5_000:
        yield item()
    rejoined_at = limit.granted
    log.append("rejoined" if limit.rejoined else "never rejoined")
    while limit.granted < rejoined_at + 20 and count < 5_000:
        yield item()


def run_through_outage(server: RedisProcess, limit: RateLimit, outage: Callable[[], None],
                       recover: Callable[[], None]) -> tuple[list[Any], list[str]]:
    log: list[str] = []

    async def main() -> list[Any]:
        return await run_many(echo, phases(limit, outage, recover, log), concurrency=8, rate=limit)

    return asyncio.run(main()), log


def test_items_keep_being_served_while_redis_is_killed_and_the_limit_rejoins_it(server: RedisProcess) -> None:
    key = "outage-kill"
    limit = RateLimit(200, redis_url=server.url, key=key)  # the defaults: pace locally, probe with back-off
    results, log = run_through_outage(server, limit, server.kill, server.start)
    failed = [r.error for r in results if not r.ok]
    assert failed == [], f"{len(failed)} of {len(results)} items failed: {failed[:3]}"
    assert log == ["down", "up", "rejoined"]
    assert limit.outages == 1 and limit.rejoined == 1 and limit.redis_available
    assert limit.granted == len(results) and limit.granted_locally >= 20
    # the restarted (empty) server holds the shared budget's state again: the limit is back on Redis
    assert redis.Redis.from_url(server.url).exists(f"dspyo3:ratelimit:{key}:requests")


def test_items_keep_being_served_while_redis_hangs(server: RedisProcess) -> None:
    assert server.process is not None
    pid = server.process.pid
    limit = RateLimit(200, redis_url=server.url, key="outage-stop", redis_timeout=0.2, redis_max_backoff=0.2)
    results, log = run_through_outage(server, limit, lambda: os.kill(pid, signal.SIGSTOP),
                                      lambda: os.kill(pid, signal.SIGCONT))
    assert all(r.ok for r in results)
    assert log == ["down", "up", "rejoined"]
    assert limit.outages == 1 and limit.rejoined == 1 and limit.redis_available


def test_threads_are_paced_locally_while_redis_is_down(server: RedisProcess) -> None:
    limit = RateLimit(1000, tokens_per_minute=1_000_000, redis_url=server.url, key="outage-sync",
                      redis_max_backoff=0.2)
    limit.acquire_sync()
    limit.charge_sync(100)
    server.kill()
    for _ in range(5):
        limit.acquire_sync()
        limit.charge_sync(100)
    assert limit.granted == 6 and limit.granted_locally == 5 and not limit.redis_available
    server.start()
    for _ in range(200):  # bounded: the back-off is at most 0.2 s, so a probe comes after a few grants
        limit.acquire_sync()
        if limit.redis_available:
            break
        time.sleep(0.01)
    assert limit.redis_available and limit.rejoined == 2  # both budgets (requests and tokens) rejoined


def test_while_redis_is_down_this_process_takes_only_its_share(server: RedisProcess) -> None:
    limit = RateLimit(40, redis_url=server.url, key="outage-share", processes=4, redis_max_backoff=5.0)
    server.kill()

    async def main() -> float:
        await limit.acquire()  # finds Redis down: from now on 10/s (40/s shared by 4 processes)
        started = time.monotonic()
        for _ in range(4):
            await limit.acquire()
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    assert limit.granted_locally == 5
    assert elapsed >= 3 / 10 * 0.98, "4 local grants at 10/s (the first may be due at once) take >= 0.3 s"


def test_fail_closed_refuses_requests_without_showing_the_password(server: RedisProcess) -> None:
    url = server.url.replace("redis://", "redis://:s3cret-pw@")
    limit = RateLimit(100, redis_url=url, key="outage-fail", on_redis_error="fail", redis_max_backoff=0.2)
    server.kill()

    async def attempt() -> Exception | None:
        try:
            await limit.acquire()
        except RateLimitUnavailable as exc:
            return exc
        return None

    first, second = asyncio.run(attempt()), asyncio.run(attempt())  # the second one refused without a try
    assert isinstance(first, RateLimitUnavailable) and isinstance(second, RateLimitUnavailable)
    message = str(first)
    assert "outage-fail" in message and "on_redis_error='local'" in message and "Connection" in message
    assert "s3cret-pw" not in message
    assert limit.granted == 0 and limit.outages == 1


def test_outage_options_are_checked() -> None:
    url = "redis://127.0.0.1:1/0"
    with pytest.raises(ValueError, match="on_redis_error must be 'local' or 'fail'"):
        RateLimit(1, redis_url=url, on_redis_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="either processes or local_share"):
        RateLimit(1, redis_url=url, processes=2, local_share=0.5)
    with pytest.raises(ValueError, match="processes must be a whole number >= 1"):
        RateLimit(1, redis_url=url, processes=0)
    with pytest.raises(ValueError, match="local_share must be > 0 and <= 1"):
        RateLimit(1, redis_url=url, local_share=1.5)
    assert RateLimit(8, redis_url=url, processes=4).local_share == 0.25
    assert RateLimit(8, redis_url=url).local_share == 1.0
