"""A shared RateLimit while its redis-server dies (SIGKILL) or hangs (SIGSTOP) mid-run: items keep being served at
this process's share of the rate (learnt from Redis while it was up: one over the limits using the key), the limit
rejoins the shared budget once Redis is back; or, with ``on_redis_error="fail"``, requests are refused with a clean
error that never shows the password."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
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
    # ... and it announced itself again among the limits sharing the key
    assert redis.Redis.from_url(server.url).zcard(f"dspyo3:ratelimit:{key}:requests:members") == 1
    assert limit.sharing == 1


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


SHARER = """
import sys
from dspyo3_async import RateLimit
RateLimit(30, redis_url=sys.argv[1], key=sys.argv[2], share_window=300).acquire_sync()
"""


def fallback_rate(limit: RateLimit) -> float:
    """The configured rate of the native limiter the request budget paces with while Redis is down."""
    assert limit._requests is not None and limit._requests._fallback is not None
    return float(limit._requests._fallback.rate)


def test_limits_in_three_processes_each_fall_back_to_a_third_of_the_rate(server: RedisProcess) -> None:
    key = "outage-learn3"
    others = [subprocess.Popen([sys.executable, "-c", SHARER, server.url, key]) for _ in range(2)]
    assert [p.wait(timeout=300) for p in others] == [0, 0]  # two other processes used the key (announced 300 s)
    limit = RateLimit(30, redis_url=server.url, key=key, share_window=300)
    assert limit.local_share == 1.0 and limit.sharing is None  # nothing learnt before Redis answered
    limit.acquire_sync()
    assert limit.sharing == 3 and limit.local_share == pytest.approx(1 / 3)
    server.kill()
    limit.acquire_sync()
    assert limit.granted_locally == 1 and not limit.redis_available
    assert limit.local_share == pytest.approx(1 / 3)
    assert fallback_rate(limit) == pytest.approx(10.0)  # 30/s shared by 3 processes: 10/s here


def test_each_of_three_limits_sharing_a_key_takes_a_third_of_both_budgets(server: RedisProcess) -> None:
    limits = [RateLimit(30, tokens_per_minute=90_000, redis_url=server.url, key="outage-learn-inproc",
                        share_window=300) for _ in range(3)]
    for limit in limits:
        limit.acquire_sync()
    time.sleep(1.1)  # a limit renews its announcement (and reads the roll) at most once a second
    for limit in limits:
        limit.acquire_sync()  # the first two had announced before the last one: now they have all seen 3
    assert [limit.sharing for limit in limits] == [3, 3, 3]
    fixed = RateLimit(30, redis_url=server.url, key="outage-learn-inproc", local_share=0.5)
    fixed.acquire_sync()  # an explicit share overrides the learnt one (it still counts for the others)
    server.kill()
    for limit in [*limits, fixed]:
        limit.acquire_sync()
        limit.charge_sync(10)
    for limit in limits:
        assert limit.granted_locally == 1 and limit.local_share == pytest.approx(1 / 3)
        assert fallback_rate(limit) == pytest.approx(10.0)
        assert limit._tokens is not None and limit._tokens._fallback is not None
        assert limit._tokens._fallback.rate == pytest.approx(30_000.0)  # a third of the token budget too
    assert fixed.sharing == 4 and fixed.local_share == 0.5 and fallback_rate(fixed) == pytest.approx(15.0)


def test_a_limit_alone_on_its_key_falls_back_to_the_full_rate(server: RedisProcess) -> None:
    limit = RateLimit(30, redis_url=server.url, key="outage-alone")
    limit.acquire_sync()
    server.kill()
    limit.acquire_sync()
    assert limit.sharing == 1 and limit.local_share == 1.0 and fallback_rate(limit) == pytest.approx(30.0)


def test_limits_that_stopped_using_the_key_no_longer_count(server: RedisProcess) -> None:
    key = "outage-stale"
    members = f"dspyo3:ratelimit:{key}:requests:members"
    client = redis.Redis.from_url(server.url)
    staying = RateLimit(30, redis_url=server.url, key=key, share_window=300)
    staying.acquire_sync()
    gone = RateLimit(30, redis_url=server.url, key=key, share_window=0.3)  # its announcement lasts 0.3 s
    gone.acquire_sync()
    assert gone.sharing == 2 and client.zcard(members) == 2
    assert 0 < client.pttl(members) <= 301_000  # the roll itself expires when nobody renews it
    time.sleep(0.6)  # longer than the lapsed limit's window: only the staying one is still live
    newcomer = RateLimit(30, redis_url=server.url, key=key, share_window=300)
    newcomer.acquire_sync()
    assert newcomer.sharing == 2 and client.zcard(members) == 2  # the lapsed entry was trimmed, not counted
    assert gone._requests is not None and client.zscore(members, gone._requests._member) is None
    server.kill()
    newcomer.acquire_sync()
    assert newcomer.local_share == pytest.approx(1 / 2) and fallback_rate(newcomer) == pytest.approx(15.0)


def test_a_key_holding_foreign_data_is_a_clear_error(server: RedisProcess) -> None:
    client = redis.Redis.from_url(server.url)
    client.set("dspyo3:ratelimit:foreign:requests:members", "not a sorted set")
    with pytest.raises(redis.exceptions.ResponseError,
                       match=r"foreign:requests:members holds a string, not the sorted set.*delete that key"):
        RateLimit(30, redis_url=server.url, key="foreign").acquire_sync()
    client.set("dspyo3:ratelimit:garbage:requests", "abc")
    with pytest.raises(redis.exceptions.ResponseError,
                       match=r"garbage:requests holds a value that is not a number.*delete that key"):
        RateLimit(30, redis_url=server.url, key="garbage").acquire_sync()


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
    with pytest.raises(ValueError, match="share_window must be > 0 seconds"):
        RateLimit(1, redis_url=url, share_window=0)
    assert RateLimit(8, redis_url=url, processes=4).local_share == 0.25
    assert RateLimit(8, redis_url=url).local_share == 1.0  # until Redis says how many share the key
    assert RateLimit(8, redis_url=url).sharing is None
