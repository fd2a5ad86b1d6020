"""dspyo3_native.RateLimiter: GCRA semantics, errors, many threads, and the asyncio wait helper."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import dspyo3_native as native


def test_burst_then_paced() -> None:
    limiter = native.RateLimiter(10, per=1.0, burst=3)
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
    wait = limiter.time_to_ready()
    assert 0.05 < wait <= 0.1
    assert limiter.try_acquire_or_wait() == pytest.approx(wait, abs=0.01)
    assert limiter.acquired == 3
    assert (limiter.rate, limiter.per, limiter.burst) == (10, 1.0, 3)


def test_weighted_costs_like_tokens_per_minute() -> None:
    limiter = native.RateLimiter(6000, per=60, burst=1000)  # 6000 tokens per minute, 1000 at once
    assert limiter.try_acquire(800)
    assert not limiter.try_acquire(300)
    assert limiter.try_acquire(200)
    assert limiter.time_to_ready(100) == pytest.approx(1.0, abs=0.05)


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
    rate, run = 400.0, 0.5
    limiter = native.RateLimiter(rate, burst=1)
    counts = [0] * 4
    started = time.perf_counter()

    def hammer(i: int) -> None:
        while time.perf_counter() - started < run:
            if limiter.try_acquire():
                counts[i] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    assert sum(counts) == limiter.acquired
    assert sum(counts) <= rate * elapsed + 2
    assert sum(counts) >= 0.8 * rate * run


def test_acquire_async_waits_without_blocking_the_loop() -> None:
    limiter = native.RateLimiter(50, burst=1)

    async def main() -> tuple[float, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        tick_task = asyncio.create_task(ticker())
        started = time.perf_counter()
        results = await asyncio.gather(*(native.acquire_async(limiter) for _ in range(10)))
        elapsed = time.perf_counter() - started
        tick_task.cancel()
        assert all(results)
        return elapsed, ticks

    elapsed, ticks = asyncio.run(main())
    assert elapsed >= 9 / 50 * 0.9  # 10 permits at 50/s: the last one after ~0.18 s
    assert ticks >= 10  # the loop kept running meanwhile


def test_acquire_async_timeout() -> None:
    limiter = native.RateLimiter(1, per=10)
    assert limiter.try_acquire()
    assert asyncio.run(native.acquire_async(limiter, timeout=0.05)) is False


def test_reservations_queue_and_never_exceed_the_rate() -> None:
    limiter = native.RateLimiter(100, burst=1)
    waits = [limiter.reserve() for _ in range(5)]
    assert waits[0] == 0.0
    assert waits[1:] == pytest.approx([0.01, 0.02, 0.03, 0.04], abs=0.002)
    assert limiter.try_acquire() is False
    assert limiter.acquired == 5


def test_acquire_async_keeps_the_rate_when_waiters_wake_late() -> None:
    rate = 200.0
    limiter = native.RateLimiter(rate, burst=1)

    async def main() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(native.acquire_async(limiter) for _ in range(100)))
        return time.perf_counter() - started

    elapsed = asyncio.run(main())
    assert elapsed >= 99 / rate * 0.98  # never faster than the rate
    assert elapsed < 99 / rate + 0.25  # and not much slower
