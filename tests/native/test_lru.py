"""dspyo3_native.LRUCache: LRU semantics against a model, TTL, byte accounting, counters, thread safety."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dspyo3_native as native

ops = st.lists(
    st.tuples(st.sampled_from(["get", "put", "pop"]), st.sampled_from("abcdefgh"), st.integers(0, 9)),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 5), ops=ops)
def test_behaves_like_a_reference_lru(capacity: int, ops: list[tuple[str, str, int]]) -> None:
    cache = native.LRUCache(capacity)
    model: OrderedDict[str, int] = OrderedDict()
    hits = misses = evictions = 0
    for op, key, value in ops:
        if op == "get":
            got = cache.get(key, -1)
            if key in model:
                model.move_to_end(key)
                hits += 1
                assert got == model[key]
            else:
                misses += 1
                assert got == -1
        elif op == "put":
            cache.put(key, value)
            model[key] = value
            model.move_to_end(key)
            if len(model) > capacity:
                model.popitem(last=False)
                evictions += 1
        else:
            assert cache.pop(key, -1) == model.pop(key, -1)
    assert cache.keys() == list(reversed(model))
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["evictions"], stats["entries"]) == (
        hits, misses, evictions, len(model))


def test_byte_limit_ttl_and_mapping_protocol() -> None:
    cache = native.LRUCache(100, max_bytes=10)
    assert cache.put("a", "x", size=4) and cache.put("b", "y", size=4)
    assert cache.put("c", "z", size=4)
    assert cache.keys() == ["c", "b"] and cache.stats()["bytes"] == 8
    assert cache.put("huge", "h", size=11) is False
    assert cache.stats()["rejected"] == 1
    cache["k"] = [1, 2]
    assert cache["k"] == [1, 2] and "k" in cache
    del cache["k"]
    with pytest.raises(KeyError):
        cache["k"]
    ttl = native.LRUCache(10, ttl=0.05)
    ttl.put("short", 1)
    ttl.put("long", 2, ttl=10)
    time.sleep(0.08)
    assert ttl.get("short") is None and ttl.get("long") == 2
    assert ttl.stats()["expirations"] == 1
    with pytest.raises(ValueError, match="max_entries must be at least 1"):
        native.LRUCache(0)
    with pytest.raises(ValueError, match="ttl must be a positive number"):
        native.LRUCache(3, ttl=-1)


def test_values_are_the_same_objects_and_are_released() -> None:
    import gc
    import weakref

    class Box:
        pass

    cache = native.LRUCache(1)
    box = Box()
    ref = weakref.ref(box)
    cache.put("a", box)
    assert cache.get("a") is box
    del box
    cache.put("b", 1)  # evicts "a"
    gc.collect()
    assert ref() is None


def test_many_threads_hammering_one_cache() -> None:
    cache = native.LRUCache(64, max_bytes=64 * 10)
    gets_per_thread = 5000
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(gets_per_thread):
                key = f"k{(i * 7 + seed) % 128}"
                if cache.get(key) is None:
                    cache.put(key, (seed, i), size=10)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats()
    assert errors == []
    assert stats["hits"] + stats["misses"] == 8 * gets_per_thread
    assert stats["entries"] <= 64 and stats["bytes"] <= 640
    assert stats["entries"] == len(cache) == len(cache.keys())


def test_batch_get_and_put() -> None:
    cache = native.LRUCache(3)
    cache.put_many([("a", 1), ("b", 2), ("c", 3), ("d", 4)])
    assert cache.get_many(["a", "b", "d", "zz"], default=0) == [0, 2, 4, 0]
    assert cache.keys() == ["d", "b", "c"]
    assert cache.stats()["hits"] == 2 and cache.stats()["misses"] == 2


def test_pickle_keeps_entries_order_sizes_and_ttl() -> None:
    import pickle

    cache = native.LRUCache(3, max_bytes=100, ttl=60)
    cache.put("a", {"x": 1}, size=10)
    cache.put("b", [2], size=20, ttl=0.05)
    cache.put("c", "three", size=30)
    cache.get("a")  # recency: a, c, b
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.keys() == ["a", "c", "b"]
    assert clone.get("a") == {"x": 1} and clone.stats()["bytes"] == 60
    time.sleep(0.08)
    assert clone.get("b") is None  # its remaining TTL came along
    clone.put("d", 4)
    clone.put("e", 5)
    assert len(clone) == 3  # and so did the limits


def test_serves_as_the_memory_tier_of_dspy_cache(tmp_path: Any, lm_server: Any, plugin_manager: Any) -> None:
    import dspy
    from dspy.clients.cache import Cache

    from dspyo3_core import HookedLM
    from dspyo3_core.testing import chat_reply

    cache = Cache(enable_disk_cache=False, enable_memory_cache=True, disk_cache_dir=str(tmp_path),
                  memory_max_entries=100)
    cache.memory_cache = native.LRUCache(100)
    lm_server.script(chat_reply(answer="cached answer"))
    lm = HookedLM("openai/tier-test", api_base=lm_server.api_base, api_key="sk-test", cache=True, num_retries=0,
                  engine="litellm", plugin_manager=plugin_manager)
    previous = dspy.cache
    dspy.cache = cache
    try:
        with dspy.context(lm=lm):
            first = dspy.Predict("question -> answer")(question="same question")
            second = dspy.Predict("question -> answer")(question="same question")
        assert first.answer == second.answer == "cached answer"
        assert len(lm_server.requests) == 1  # the second call came from our LRU
        assert cache.memory_cache.stats()["hits"] >= 1
        path = tmp_path / "memory.pkl"
        cache.save_memory_cache(str(path))
        cache.reset_memory_cache()
        assert len(cache.memory_cache) == 0
        cache.load_memory_cache(str(path), allow_pickle=True)
        assert isinstance(cache.memory_cache, native.LRUCache) and len(cache.memory_cache) == 1
    finally:
        dspy.cache = previous
