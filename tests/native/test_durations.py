"""Seconds arguments at the edge of the clock's range: ValueError or "never", never a Rust panic.

A Rust panic reaches Python as ``pyo3_runtime.PanicException``, a ``BaseException``: ``pytest.raises(ValueError)``
and a plain call both let it through, so each of these tests fails on a panic.
"""

from __future__ import annotations

import math
import pickle
import tempfile

import pytest

import dspyo3_native as native


@pytest.mark.parametrize("per", [1e300, 1e20, math.inf])
def test_rate_limiter_period_beyond_the_clock_is_a_value_error(per: float) -> None:
    with pytest.raises(ValueError, match="per must be a positive number of seconds"):
        native.RateLimiter(1, per=per)


@pytest.mark.parametrize("per", [0.0, -1.0, math.nan])
def test_rate_limiter_period_must_be_positive(per: float) -> None:
    with pytest.raises(ValueError, match="per must be"):
        native.RateLimiter(1, per=per)


@pytest.mark.parametrize("timeout", [1e19, 1e300, math.inf])
def test_acquire_with_a_huge_timeout_waits_without_a_deadline(timeout: float) -> None:
    limiter = native.RateLimiter(1000)
    assert limiter.acquire(timeout=timeout) is True  # available now
    assert limiter.acquire(timeout=timeout) is True  # due a millisecond later: waited for
    assert limiter.acquired == 2


def test_acquire_timeout_still_rejects_nonsense() -> None:
    limiter = native.RateLimiter(1000)
    for timeout in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
            limiter.acquire(timeout=timeout)


@pytest.mark.parametrize("ttl", [1e19, 1e300, math.inf])
def test_lru_default_ttl_beyond_the_clock_never_expires(ttl: float) -> None:
    cache = native.LRUCache(10, ttl=ttl)
    cache.put("a", 1)
    cache["b"] = 2
    cache.put_many([("c", 3)])
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, 2, 3)
    assert cache.stats()["expirations"] == 0


@pytest.mark.parametrize("ttl", [1e19, 1e300, math.inf])
def test_lru_put_ttl_beyond_the_clock_never_expires(ttl: float) -> None:
    cache = native.LRUCache(10, ttl=60)
    assert cache.put("a", 1, ttl=ttl) is True
    assert "a" in cache and cache.get("a") == 1
    # written as "never" (inf), not as "no TTL" (which would come back with the 60 s default)
    _, args, entries = cache.__reduce__()
    assert args == (10, None, 60.0)
    assert entries == [("a", 1, 0, math.inf)]


@pytest.mark.parametrize("ttl", [1e19, 1e300, math.inf])
def test_lru_setstate_reads_huge_ttls_as_never(ttl: float) -> None:
    cache = native.LRUCache(10)
    cache.__setstate__([("a", 1, 0, ttl), ("b", 2, 0, None), ("gone", 3, 0, 0.0)])
    assert cache.keys() == ["b", "a"]
    restored = pickle.loads(pickle.dumps(cache))
    assert restored.keys() == ["b", "a"] and restored.get("a") == 1


def test_lru_pickle_with_a_huge_default_ttl_round_trips() -> None:
    cache = native.LRUCache(10, ttl=1e300)
    cache.put("a", 1, ttl=1e19)
    restored = pickle.loads(pickle.dumps(cache))
    assert restored.get("a") == 1


def test_lru_ttl_still_rejects_nonsense() -> None:
    for ttl in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="ttl must be a positive number of seconds"):
            native.LRUCache(10, ttl=ttl)
        with pytest.raises(ValueError, match="ttl must be a positive number of seconds"):
            native.LRUCache(10).put("a", 1, ttl=ttl)


@pytest.mark.parametrize("timeout", [math.inf, 1e300, 1e19])
def test_event_sink_flush_with_a_huge_timeout_waits(timeout: float) -> None:
    with tempfile.TemporaryFile() as out:
        sink = native.EventSink(out.fileno())
        sink.emit("INFO", "test", "event", {"i": 1})
        assert sink.flush(timeout) is True
        assert sink.written == 1


def test_event_sink_flush_timeout_edges() -> None:
    with tempfile.TemporaryFile() as out:
        sink = native.EventSink(out.fileno())
        assert isinstance(sink.flush(-math.inf), bool)
        with pytest.raises(ValueError, match="timeout"):
            sink.flush(math.nan)
