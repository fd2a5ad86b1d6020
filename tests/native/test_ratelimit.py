"""dspyo3_native.RateLimiter: GCRA semantics, errors, many threads, and the asyncio wait helper."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import dspyo3_native as native


def test_burst_then_paced() -> None:
    limiter = native.RateLimiter(10, per=1.0, burst=3)
    started = time.perf_counter()
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
    wait = limiter.time_to_ready()
    # the 4th permit is due 0.1 s after the first (whatever time the machine took to get here)
    assert 0 < wait <= 0.1
    assert wait >= 0.1 - (time.perf_counter() - started) - 1e-3
    again = limiter.try_acquire_or_wait()
    assert 0 < again <= wait  # still refused, and the slot did not move later
    assert limiter.acquired == 3
    assert (limiter.rate, limiter.per, limiter.burst) == (10, 1.0, 3)


def test_weighted_costs_like_tokens_per_minute() -> None:
    limiter = native.RateLimiter(6000, per=60, burst=1000)  # 6000 tokens per minute, 1000 at once
    started = time.perf_counter()
    assert limiter.try_acquire(800)
    assert not limiter.try_acquire(300)
    assert limiter.try_acquire(200)
    # 100 more tokens at 100 tokens/s: due 1 s after the bucket was emptied
    ready = limiter.time_to_ready(100)
    assert 1.0 - (time.perf_counter() - started) - 1e-3 <= ready <= 1.0 + 1e-3


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="rate must be a positive number"):
        native.RateLimiter(0)
    with pytest.raises(ValueError, match="burst must be at least 1"):
        native.RateLimiter(5, burst=0.5)
    limiter = native.RateLimiter(5, burst=2)
    with pytest.raises(ValueError, match="exceeds the burst capacity"):
        limiter.try_acquire(3)
    with pytest.raises(ValueError, match="cost must be a positive number"):
        limiter.try_acquire(0)


def test_blocking_acquire_and_timeout() -> None:
    limiter = native.RateLimiter(20, burst=1)
    assert limiter.acquire()
    started = time.perf_counter()
    assert limiter.acquire()
    assert time.perf_counter() - started >= 0.04
    slow = native.RateLimiter(1, per=10)
    assert slow.acquire()
    assert slow.acquire(timeout=0.05) is False


def test_many_threads_never_exceed_the_rate() -> None:
    rate, grants_wanted = 400.0, 60
    limiter = native.RateLimiter(rate, burst=1)
    stamps: list[list[float]] = [[] for _ in range(4)]
    started = time.perf_counter()

    def hammer(i: int) -> None:
        while limiter.acquired < grants_wanted:  # a count of grants, not a time: done whatever the machine's load
            if limiter.try_acquire():
                stamps[i].append(time.perf_counter())

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    granted = sorted(s for thread in stamps for s in thread)
    assert len(granted) == limiter.acquired >= grants_wanted
    # the safety property: however the threads race, n grants never come faster than the rate allows
    for n, stamp in enumerate(granted):
        assert n <= rate * (stamp - started) + 1, f"grant {n + 1} came {stamp - started:.4f} s after the start"


def test_acquire_async_waits_without_blocking_the_loop() -> None:
    limiter = native.RateLimiter(50, burst=1)

    async def main() -> tuple[float, list[str]]:
        events: list[str] = []

        async def ticker() -> None:
            while True:
                events.append("tick")
                await asyncio.sleep(0.001)

        async def acquire() -> bool:
            granted = await native.acquire_async(limiter)
            events.append("grant")
            return granted

        tick_task = asyncio.create_task(ticker())
        started = time.perf_counter()
        results = await asyncio.gather(*(acquire() for _ in range(10)))
        elapsed = time.perf_counter() - started
        tick_task.cancel()
        assert all(results)
        return elapsed, events

    elapsed, events = asyncio.run(main())
    assert elapsed >= 9 / 50 * 0.9  # 10 permits at 50/s: the last one after ~0.18 s
    # the loop kept running while the waiters slept: the ticker (due every 1 ms, before any waiter's 20 ms slot
    # on the loop's timer heap) ran between the first and the last grant; a blocking wait would starve it
    first, last = events.index("grant"), len(events) - 1 - events[::-1].index("grant")
    assert "tick" in events[first:last]


def test_acquire_async_timeout() -> None:
    limiter = native.RateLimiter(1, per=10)
    assert limiter.try_acquire()
    assert asyncio.run(native.acquire_async(limiter, timeout=0.05)) is False


def test_reservations_queue_and_never_exceed_the_rate() -> None:
    limiter = native.RateLimiter(100, burst=1)
    started = time.perf_counter()
    reserved = [(limiter.reserve(), time.perf_counter()) for _ in range(5)]
    waits = [wait for wait, _ in reserved]
    assert waits[0] == 0.0
    for i, (wait, now) in enumerate(reserved):
        assert wait <= 0.01 * i + 1e-6  # never later than its turn in the queue
        assert now + wait >= started + 0.01 * i - 1e-6  # and the i-th slot is i intervals after the first, or later
    assert limiter.try_acquire() is False
    assert limiter.acquired == 5


def test_acquire_async_keeps_the_rate_when_waiters_wake_late() -> None:
    rate = 200.0
    limiter = native.RateLimiter(rate, burst=1)

    async def main() -> tuple[float, int]:
        started = time.perf_counter()
        waiters = [asyncio.ensure_future(native.acquire_async(limiter)) for _ in range(100)]
        await asyncio.sleep(0)  # every waiter has run up to its sleep
        reserved = limiter.acquired
        time.sleep(0.1)  # the loop is late: waiters wake after their slots
        await asyncio.gather(*waiters)
        return time.perf_counter() - started, reserved

    elapsed, reserved_up_front = asyncio.run(main())
    # each waiter reserved its slot before sleeping, so one that wakes late does not push the others' slots back
    assert reserved_up_front == 100
    assert elapsed >= 99 / rate * 0.98  # never faster than the rate


@pytest.mark.parametrize("rate", [1e-300, 1e-30])
def test_absurdly_low_rates_grant_the_burst_once(rate: float) -> None:
    limiter = native.RateLimiter(rate, burst=1)
    assert [limiter.try_acquire() for _ in range(5)] == [True, False, False, False, False]
    assert limiter.acquired == 1
    with pytest.raises(ValueError, match="beyond the clock's range"):
        limiter.reserve()


def test_low_rate_reservations_fall_due_in_order() -> None:
    limiter = native.RateLimiter(1e-10)  # one per 1e10 s
    waits = [limiter.reserve() for _ in range(4)]
    assert waits[0] == 0.0
    for i, wait in enumerate(waits[1:], start=1):
        assert wait == pytest.approx(1e10 * i, rel=1e-6)
