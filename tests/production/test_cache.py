"""TieredCache: DSPy's cache semantics, the native memory tier, Redis (real redis-server, killed mid-run), disk,
safe decoding, single flight, and the ``dspyo3 cache`` commands."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
import time
from typing import Any

import dspy
import pydantic
import pytest
import redis
from click.testing import CliRunner

import dspyo3_production as prod
from dspyo3_core.cli import build_cli
from dspyo3_core.lm import HookedLM
from dspyo3_core.plugins import PluginManager
from dspyo3_core.testing.server import LMServer, Reply, field_responder
from dspyo3_core.testing.services import RedisProcess
from dspyo3_production.cache import TieredCache
from dspyo3_production.codec import Codec, UnsafeValueError
from dspyo3_production.metrics import Metrics

from .conftest import answer_for

REQUEST = {"model": "openai/x", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0}


class Response:
    """A provider response object, as DSPy's compatibility path caches them (has ``usage``)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.usage = {"prompt_tokens": 3, "completion_tokens": 2}


class Schema(pydantic.BaseModel):
    answer: str


def counts(metrics: Metrics, tier: str) -> dict[str, float]:
    return {result: metrics.cache_requests_total(tier, result) for result in ("hit", "miss", "error")}


def test_is_dspy_cache_and_accepts_its_arguments(tmp_path: Any, metrics: Metrics) -> None:
    cache = TieredCache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(tmp_path),
                        disk_size_limit_bytes=10**7, memory_max_entries=100, restrict_pickle=True, safe_types=[Schema],
                        metrics=metrics)
    assert isinstance(cache, dspy.clients.Cache)
    previous = prod.install_cache(cache)
    try:
        assert dspy.cache is cache
    finally:
        prod.install_cache(previous)
    with pytest.raises(ValueError, match="memory_max_entries"):
        TieredCache(memory_max_entries=0)
    TieredCache(enable_memory_cache=False, memory_max_entries=0)  # as DSPy: no memory tier, no limit to check
    with pytest.raises(ValueError, match="redis_ttl"):
        TieredCache(redis_url="redis://127.0.0.1:1/0", redis_ttl=0)


@pytest.mark.parametrize("request_", [
    REQUEST,
    {**REQUEST, "api_key": "sk-ignored"},
    {"schema": Schema, "fn": len, "nested": {"model": Schema(answer="x")}},
    {"tuple": (1, 2), "float": 1.5, "none": None, "unicode": "é"},
])
def test_keys_are_dspys(request_: dict[str, Any], metrics: Metrics) -> None:
    ours, theirs = TieredCache(metrics=metrics), dspy.clients.Cache(False, True, None)
    ignored = ["api_key"]
    assert ours.cache_key(request_, ignored) == theirs.cache_key(request_, ignored)


@pytest.mark.parametrize("value", [
    {"outputs": ["a"], "usage": {"prompt_tokens": 1}, "nested": [{"x": 1.5}]},
    Response("hello"),
    ["a", ("tuple", 1)],
])
def test_hits_behave_like_dspys(value: Any, metrics: Metrics) -> None:
    ours, theirs = TieredCache(metrics=metrics), dspy.clients.Cache(False, True, None)
    for cache in (ours, theirs):
        assert cache.get(REQUEST) is None
        cache.put(REQUEST, value)
    for _ in range(3):  # the first hit and later ones (plain data is kept as JSON after the first)
        mine, dspys = ours.get(REQUEST), theirs.get(REQUEST)
        assert type(mine) is type(dspys)
        if isinstance(value, Response):
            assert (mine.text, mine.usage, mine.cache_hit) == (dspys.text, dspys.usage, dspys.cache_hit) == (
                "hello", {}, True)
            mine.text = "mutated"
        else:
            assert mine == dspys == value
            mine.append("mutated") if isinstance(mine, list) else mine["outputs"].append("mutated")
    assert ours.get(REQUEST) is not value  # a copy every time: mutating a hit never changes the cache
    assert counts(metrics, "memory")["hit"] == 4 and counts(metrics, "memory")["miss"] == 1


def test_lm_calls_hit_without_double_counting(qa_lm: HookedLM, qa_server: LMServer, metrics: Metrics) -> None:
    prod.enable(prod.Production(cache=TieredCache(metrics=metrics), metrics=metrics, log_events=False))
    qa = dspy.Predict("question -> answer")
    with dspy.context(lm=qa_lm), dspy.track_usage() as usage:
        first = qa(question="q1")
        second = qa(question="q1")
    assert first.answer == second.answer == answer_for("q1")
    assert len(qa_server.requests) == 1
    billed = usage.get_total_tokens()["openai/gpt-4o-mini"]
    first_usage, second_usage = qa_lm.history[-2]["usage"], qa_lm.history[-1]["usage"]
    assert billed["prompt_tokens"] == first_usage["prompt_tokens"] > 0  # the provider call, billed once
    assert billed["completion_tokens"] == first_usage["completion_tokens"]
    assert second_usage == {}  # the hit adds nothing
    assert metrics.lm_requests_total("openai/gpt-4o-mini", "ok") == 1
    assert metrics.lm_requests_total("openai/gpt-4o-mini", "cache_hit") == 1


def test_redis_tier_shares_answers_between_caches(redis_url: str, metrics: Metrics) -> None:
    writer = TieredCache(redis_url=redis_url, namespace="t-share", metrics=metrics)
    writer.put(REQUEST, {"outputs": ["shared"]})
    writer.put({**REQUEST, "model": "obj"}, Response("object"))
    assert writer.flush(5)
    reader = TieredCache(redis_url=redis_url, namespace="t-share", safe_types=[Response], metrics=metrics)
    assert reader.get(REQUEST) == {"outputs": ["shared"]}
    hit = reader.get({**REQUEST, "model": "obj"})
    assert (hit.text, hit.usage, hit.cache_hit) == ("object", {}, True)
    assert counts(metrics, "redis")["hit"] == 2
    reader.get(REQUEST)  # now from its memory tier
    assert counts(metrics, "redis")["hit"] == 2
    other = TieredCache(redis_url=redis_url, namespace="t-other", metrics=metrics)
    assert other.get(REQUEST) is None  # namespaces keep apps apart
    for cache in (writer, reader, other):
        cache.close()


def test_redis_entries_expire(redis_url: str, metrics: Metrics) -> None:
    cache = TieredCache(redis_url=redis_url, namespace="t-ttl", redis_ttl=30, metrics=metrics)
    cache.put(REQUEST, {"outputs": ["x"]})
    assert cache.flush(5)
    client = redis.Redis.from_url(redis_url)
    ttl = client.pttl(cache.redis.prefix + cache.cache_key(REQUEST))  # type: ignore[union-attr]
    assert 0 < ttl <= 30_000
    cache.close()


def test_foreign_or_malicious_redis_values_are_refused(redis_url: str, metrics: Metrics, tmp_path: Any) -> None:
    cache = TieredCache(enable_memory_cache=False, redis_url=redis_url, namespace="t-evil", metrics=metrics)
    key = cache.cache_key(REQUEST)
    client = redis.Redis.from_url(redis_url)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> Any:
            return (subprocess.call, (["touch", str(marker)],))

    codec = Codec()
    planted = [
        b"d3p1" + key.encode() + b"\n" + pickle.dumps(Exploit()),  # a pickle that would run a command
        codec.encode("another-key", {"outputs": ["wrong"]}),  # a valid payload written under another key
        b"not a payload at all",
    ]
    for payload in planted:
        client.set(cache.redis.prefix + key, payload)  # type: ignore[union-attr]
        assert cache.get(REQUEST) is None
        assert client.get(cache.redis.prefix + key) is None  # dropped  # type: ignore[union-attr]
    assert not marker.exists()
    assert metrics.cache_requests_total("redis", "rejected") == 3  # entries refused, not a Redis outage
    assert counts(metrics, "redis")["error"] == 0
    with pytest.raises(UnsafeValueError, match="subprocess"):
        codec.decode(key, planted[0])
    cache.close()


def test_restricted_pickle_round_trips_litellm_responses() -> None:
    from litellm import ModelResponse

    codec = Codec()
    response = ModelResponse(model="gpt-4o-mini", choices=[{"message": {"role": "assistant", "content": "hi"}}])
    back = codec.decode("k", codec.encode("k", response))
    assert back.choices[0].message.content == "hi" and type(back) is ModelResponse
    with pytest.raises(UnsafeValueError, match="Response"):  # our test class is not a trusted type
        codec.decode("k", codec.encode("k", Response("x")))
    assert Codec(safe_types=[Response]).decode("k", codec.encode("k", Response("x"))).text == "x"


def test_disk_tier_answers_after_memory_is_gone(tmp_path: Any, metrics: Metrics) -> None:
    cache = TieredCache(enable_disk_cache=True, disk_cache_dir=str(tmp_path / "disk"), metrics=metrics)
    cache.put(REQUEST, {"outputs": ["on disk"]})
    cache.reset_memory_cache()
    assert cache.get(REQUEST) == {"outputs": ["on disk"]}
    assert counts(metrics, "disk")["hit"] == 1
    assert cache.get(REQUEST) == {"outputs": ["on disk"]}  # promoted to memory
    assert counts(metrics, "disk")["hit"] == 1 and counts(metrics, "memory")["hit"] == 1


def test_calls_survive_redis_dying_mid_run_and_the_tier_recovers(qa_lm: HookedLM, qa_server: LMServer,
                                                                 metrics: Metrics, redis_binary: str) -> None:
    with RedisProcess() as server:
        cache = TieredCache(redis_url=server.url, namespace="t-kill", redis_timeout=0.2, redis_max_backoff=0.5,
                            metrics=metrics)
        prod.enable(prod.Production(cache=cache, metrics=metrics, log_events=False))
        qa = dspy.Predict("question -> answer")
        questions = [f"q{i % 15}" for i in range(90)]  # repeats: hits from memory and from Redis
        with dspy.context(lm=qa_lm):
            for i, question in enumerate(questions):
                if i == 20:  # Redis holds every answer so far: from now on repeats come from Redis
                    assert cache.flush(5)
                    cache.reset_memory_cache()
                if i == 30:
                    assert counts(metrics, "redis")["hit"] >= 5
                    server.kill()
                if i == 45:
                    cache.reset_memory_cache()  # only the provider (or a recovered Redis) can answer now
                if i == 60:
                    server.start()  # same port, empty: the tier must find it again by itself
                    time.sleep(0.6)  # longer than the longest back-off
                assert qa(question=question).answer == answer_for(question)  # never fails, never a wrong value
            assert counts(metrics, "redis")["error"] >= 1
            deadline = time.monotonic() + 10
            client = redis.Redis.from_url(server.url)
            while not client.keys("t-kill:cache:*") and time.monotonic() < deadline:
                qa(question=f"after-{time.monotonic()}")  # new answers are written to the restarted Redis
                cache.flush(2)
            assert client.keys("t-kill:cache:*"), "the Redis tier did not reconnect"
            assert cache.redis is not None and cache.redis.available
            fresh = TieredCache(redis_url=server.url, namespace="t-kill", metrics=metrics)
            stored = client.keys("t-kill:cache:*")
            assert stored and all(fresh.redis.get(k.decode().split(":")[-1]) for k in stored)  # type: ignore[union-attr]
            client.close()
        cache.close()


def test_concurrent_misses_make_one_provider_request(manager: PluginManager, metrics: Metrics) -> None:
    with LMServer(lambda request: Reply(content=field_responder(
            lambda fields: {"answer": answer_for(fields["question"])})(request), latency=0.4)) as server:
        lm = HookedLM("openai/gpt-4o-mini", api_base=server.api_base, api_key="sk-x", num_retries=0, cache=True,
                      plugin_manager=manager)
        prod.enable(prod.Production(cache=TieredCache(metrics=metrics), metrics=metrics, log_events=False))
        qa = dspy.Predict("question -> answer")
        answers: list[str] = []

        def ask() -> None:
            with dspy.context(lm=lm):
                answers.append(qa(question="same").answer)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert answers == [answer_for("same")] * 8
        assert len(server.requests) == 1
        assert metrics.lm_requests_total("openai/gpt-4o-mini", "cache_hit") == 7


def test_waiters_call_themselves_when_the_leader_fails(manager: PluginManager, metrics: Metrics) -> None:
    replies = iter([Reply(status=500, error_message="boom", latency=0.3)])

    def respond(request: dict[str, Any]) -> Any:
        scripted = next(replies, None)
        return scripted or field_responder(lambda fields: {"answer": answer_for(fields["question"])})(request)

    with LMServer(respond) as server:
        lm = HookedLM("openai/gpt-4o-mini", api_base=server.api_base, api_key="sk-x", num_retries=0, cache=True,
                      plugin_manager=manager)
        prod.enable(prod.Production(cache=TieredCache(metrics=metrics), metrics=metrics, log_events=False))
        results: list[Any] = []

        def ask() -> None:
            try:
                results.append(lm("same")[0])
            except Exception as exc:  # the leader's failure is its own
                results.append(type(exc).__name__)

        leader = threading.Thread(target=ask)
        leader.start()
        time.sleep(0.1)
        followers = [threading.Thread(target=ask) for _ in range(3)]
        for thread in followers:
            thread.start()
        for thread in [leader, *followers]:
            thread.join(30)
        assert results.count("LMServerError") == 1
        assert len([r for r in results if r != "LMServerError"]) == 3
        assert 2 <= len(server.requests) <= 4  # the waiters went to the provider after the leader failed


def test_clear_and_stats(redis_url: str, metrics: Metrics) -> None:
    cache = TieredCache(redis_url=redis_url, namespace="t-clear", metrics=metrics)
    for i in range(5):
        cache.put({"i": i}, {"outputs": [str(i)]})
    assert cache.flush(5)
    stats = cache.stats()
    assert stats["memory"]["entries"] == 5 and stats["redis"]["enabled"] and stats["redis"]["available"]
    key = cache.cache_key({"i": 0})
    removed = cache.clear(prefix=key[:10])
    assert removed["memory"] == 1 and removed["redis"] == 1
    assert cache.clear()["redis"] == 4
    with pytest.raises(ValueError, match="unknown cache tier"):
        cache.clear(tiers=["ram"])
    cache.close()


def test_cache_cli_stats_and_clear(redis_url: str, metrics: Metrics, manager: PluginManager) -> None:
    cli_main = build_cli(manager)
    cache = TieredCache(redis_url=redis_url, namespace="t-cli", metrics=metrics)
    for i in range(3):
        cache.put({"i": i}, {"outputs": [str(i)]})
    assert cache.flush(5)
    runner = CliRunner()
    result = runner.invoke(cli_main, ["cache", "stats", "--redis-url", redis_url, "--namespace", "t-cli", "--json"])
    assert result.exit_code == 0, result.output
    assert '"entries": 3' in result.output
    result = runner.invoke(cli_main, ["cache", "clear", "--redis-url", redis_url, "--namespace", "t-cli", "--yes"])
    assert result.exit_code == 0 and "deleted 3 cache entries" in result.output
    result = runner.invoke(cli_main, ["cache", "stats", "--redis-url", "redis://127.0.0.1:1/0"])
    assert result.exit_code != 0 and "cannot reach Redis" in result.output
    result = runner.invoke(cli_main, ["cache", "stats"])
    assert result.exit_code != 0 and "no Redis configured" in result.output
    cache.close()


def test_cache_cli_is_a_subcommand_of_dspyo3() -> None:
    result = subprocess.run([sys.executable, "-c", "from dspyo3_core.cli import main; main()", "cache", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "stats" in result.stdout and "clear" in result.stdout


def test_dotted_pickle_names_and_corrupt_pickles_are_refused(redis_url: str, metrics: Metrics,
                                                             tmp_path: Any) -> None:
    import pickletools  # noqa: F401  (the payloads below are hand-written protocol-4 opcodes)

    marker = tmp_path / "ran"
    # GLOBAL via STACK_GLOBAL on a dotted name under a trusted module: would resolve to builtins.eval
    code = f"open({str(marker)!r}, 'w').write('x')".encode()
    gadget = (b"\x80\x04\x8c\x20litellm.types.vector_store_files\x94\x8c\rbuiltins.eval\x94\x93\x94"
              + b"\x8c" + bytes([len(code)]) + code + b"\x94\x85\x94R\x94.")
    codec = Codec()
    with pytest.raises(UnsafeValueError, match="refusing"):
        codec.decode("k", b"d3p1k\n" + gadget)
    assert not marker.exists()
    cache = TieredCache(enable_memory_cache=False, redis_url=redis_url, namespace="t-corrupt", metrics=metrics)
    key = cache.cache_key(REQUEST)
    client = redis.Redis.from_url(redis_url)
    for payload in (b"d3p1" + key.encode() + b"\n" + gadget,
                    b"d3p1" + key.encode() + b"\n" + pickle.dumps(Response("x"))[:-7],  # truncated
                    b"d3p1" + key.encode() + b"\n\x80\x04garbage"):
        client.set(cache.redis.prefix + key, payload)  # type: ignore[union-attr]
        assert cache.get(REQUEST) is None  # a miss, not a failed call
    assert not marker.exists()
    cache.close()


def test_clear_with_the_disk_tier(tmp_path: Any, metrics: Metrics) -> None:
    cache = TieredCache(enable_disk_cache=True, disk_cache_dir=str(tmp_path / "disk"), metrics=metrics)
    for i in range(4):
        cache.put({"i": i}, {"outputs": [str(i)]})
    key = cache.cache_key({"i": 0})
    assert cache.clear(prefix=key) == {"memory": 1, "disk": 1}
    assert cache.clear() == {"memory": 3, "disk": 3}
    assert cache.get({"i": 1}) is None


def test_put_reuses_the_key_of_the_request_just_looked_up_and_only_that_one(metrics: Metrics) -> None:
    cache = TieredCache(metrics=metrics)
    ignored = ["api_key"]
    asked = {"model": "m", "messages": [{"role": "user", "content": "q"}], "api_key": "sk-a"}
    other = {"model": "m", "messages": [{"role": "user", "content": "other"}]}
    token = cache.open_scope()
    try:
        assert cache.get(asked, ignored) is None
        cache.put(dict(asked), {"answer": 1}, ignored)  # an equal, rebuilt request: stored under get()'s key
        cache.put(other, {"answer": 2}, ignored)  # a different request in the same scope: its own key
        cache.put({**asked, "temperature": 0.5}, {"answer": 3}, ignored)  # differs from the one looked up
    finally:
        cache.close_scope(token)
    assert cache.get(asked, ignored) == {"answer": 1}
    assert cache.get(other, ignored) == {"answer": 2}
    assert cache.get({**asked, "temperature": 0.5}, ignored) == {"answer": 3}
    assert cache.cache_key(asked, ignored) == dspy.clients.Cache.cache_key(cache, asked, ignored)
    assert cache.in_flight == 0


def test_scan_and_clear_take_glob_characters_literally(redis_url: str, metrics: Metrics) -> None:
    from dspyo3_production.cache import RedisTier

    tier = RedisTier(redis_url, namespace="t-glob[1]*", metrics=metrics)
    neighbour = RedisTier(redis_url, namespace="t-glob1-other", metrics=metrics)  # matched by an unescaped glob
    client = redis.Redis.from_url(redis_url)
    try:
        for key in ("a*b", "a[x]", "ab", "axb"):
            client.set(tier.prefix + key, b"v")
        client.set(neighbour.prefix + "a*b", b"v")
        assert sorted(k.decode()[len(tier.prefix):] for k in tier.scan("a*")) == ["a*b"]
        assert sorted(k.decode()[len(tier.prefix):] for k in tier.scan("a[")) == ["a[x]"]
        assert tier.clear("a*") == 1 and tier.clear("a[x") == 1
        assert sorted(k.decode()[len(tier.prefix):] for k in tier.scan()) == ["ab", "axb"]
        assert tier.clear() == 2
        assert client.get(neighbour.prefix + "a*b") == b"v"  # another namespace is left alone
    finally:
        client.delete(neighbour.prefix + "a*b")
        tier.close()
        neighbour.close()
