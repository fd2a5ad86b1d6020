"""The Redis tier against entries this cache did not write: values of the wrong shape for the call that reads
them, payloads that decode to far more than they weigh, oversized entries and keys of another Redis type. Each is
a miss counted as ``result="rejected"``: never served, never a failed call, and never handed to the unpickler
before its structure was checked."""

from __future__ import annotations

import pickle
import struct
import tracemalloc
from collections.abc import Iterator
from typing import Any

import dspy
import pytest
import redis

import dspyo3_production as prod
from dspyo3_core.native_lm import NativeLM
from dspyo3_core.testing.server import LMServer
from dspyo3_production import codec as codec_module
from dspyo3_production.cache import TieredCache
from dspyo3_production.codec import Codec, UnsafeValueError, check_entry, check_pickle
from dspyo3_production.metrics import Metrics

from .conftest import answer_for

REQUEST = {"model": "openai/x", "messages": [{"role": "user", "content": "hi"}]}
WRONG_SHAPES = [[1, 2, 3], "hello", {"bogus": 1}, {"_dspy_format": "dspy-lm15-result-v1", "responses": "x"},
                {"choices": []}, {"choices": [{}]}]  # dspy.LM stores response objects or records, never these dicts


def unanswered(legit: Any) -> list[Any]:
    """The entry DSPy stored for a call, rewritten to hold no answer, or answers without text or tool calls:
    decodes fine and has the right type, but DSPy's adapters cannot parse it."""
    from litellm import ModelResponse

    if isinstance(legit, dict):  # a DSPy result record (native engine)
        nameless_call = {"text": None, "tool_calls": [{"function": {"arguments": "{}"}}]}
        return [{**legit, "outputs": []}, {**legit, "outputs": [None]}, {**legit, "outputs": [""]},
                {**legit, "outputs": [{"text": None}]}, {**legit, "outputs": ["ok", {"text": None, "tool_calls": []}]},
                {**legit, "outputs": [nameless_call]}]
    assert isinstance(legit, ModelResponse)  # what the LiteLLM path stores
    ok = {"message": {"role": "assistant", "content": "[[ ## answer ## ]]\nanswer to q1\n\n[[ ## completed ## ]]"}}
    return [ModelResponse(model=legit.model, choices=[]),
            ModelResponse(model=legit.model, choices=[{"message": {"role": "assistant", "content": None}}]),
            ModelResponse(model=legit.model, choices=[{"message": {"role": "assistant", "content": ""}}]),
            ModelResponse(model=legit.model, choices=[ok, {"message": {"role": "assistant", "content": None}}])]


def rejected(metrics: Metrics) -> float:
    return metrics.cache_requests_total("redis", "rejected")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def unpickled(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every payload body handed to the restricted unpickler."""
    seen: list[bytes] = []
    real = codec_module._Unpickler.__init__

    def spy(self: Any, file: Any, allowed: Any) -> None:
        seen.append(file.getvalue())
        real(self, file, allowed)

    monkeypatch.setattr(codec_module._Unpickler, "__init__", spy)
    return seen


def only_key(client: redis.Redis, namespace: str) -> tuple[bytes, str]:
    (stored,) = client.keys(f"{namespace}:cache:*")
    return stored, stored.decode().rsplit(":", 1)[1]


@pytest.mark.parametrize("engine", ["litellm", "native"])
def test_dspy_lm_calls_never_get_a_value_of_the_wrong_shape(engine: str, redis_url: str, client: redis.Redis,
                                                            qa_server: LMServer, metrics: Metrics) -> None:
    namespace = f"t-shape-{engine}"
    cache = TieredCache(redis_url=redis_url, namespace=namespace, metrics=metrics)
    prod.install_cache(cache)  # the conftest puts DSPy's own back afterwards
    lm = dspy.LM("openai/gpt-4o-mini", api_base=qa_server.api_base, api_key="sk-test-abcdefghijklmnop",
                 cache=True, num_retries=0, **({"engine": "litellm"} if engine == "litellm" else {}))
    qa = dspy.Predict("question -> answer")
    with dspy.context(lm=lm):
        assert qa(question="q1").answer == answer_for("q1")
    assert cache.flush(5)
    stored, key = only_key(client, namespace)
    legit = client.get(stored)
    assert legit is not None
    codec = Codec()
    bad_values = [*WRONG_SHAPES, *unanswered(codec.decode(key, legit))]
    for bad in bad_values:  # right key, right tag, decodes fine: but not what dspy.LM reads
        client.set(stored, codec.encode(key, bad))
        cache.reset_memory_cache()
        with dspy.context(lm=lm):  # asked the provider again: no AttributeError, no AdapterParseError
            assert qa(question="q1").answer == answer_for("q1"), bad
        assert cache.flush(5)
    assert rejected(metrics) == len(bad_values)
    assert len(qa_server.requests) == 1 + len(bad_values)
    client.set(stored, legit)  # what DSPy wrote is still served from Redis
    cache.reset_memory_cache()
    with dspy.context(lm=lm):
        assert qa(question="q1").answer == answer_for("q1")
    assert len(qa_server.requests) == 1 + len(bad_values)
    assert metrics.cache_requests_total("redis", "hit") == 1
    cache.close()


def test_native_lm_records_are_checked_too(redis_url: str, client: redis.Redis, qa_server: LMServer,
                                           metrics: Metrics) -> None:
    cache = TieredCache(redis_url=redis_url, namespace="t-shape-native-lm", metrics=metrics)
    prod.install_cache(cache)
    lm = NativeLM("openai/gpt-4o-mini", api_base=qa_server.api_base, api_key="sk-test-abcdefghijklmnop",
                  num_retries=0)
    messages = [{"role": "user", "content": "[[ ## question ## ]]\nq2"}]
    first = lm(messages=messages)
    assert cache.flush(5)
    stored, key = only_key(client, "t-shape-native-lm")
    legit = client.get(stored)
    usage = {"prompt_tokens": 1, "completion_tokens": 1}
    bad_records = [*WRONG_SHAPES, {"choices": [{"content": "x"}], "usage": {}, "model": "m"},
                   {"choices": [{"content": "x"}], "usage": usage}]  # no "model": NativeLM reads record["model"]
    for choices in ([], [{"content": 3}], [{"content": None}], [{"content": ""}],
                    [{"content": None, "tool_calls": [{"id": "c"}]}], [{"content": "x"}, {"content": None}]):
        bad_records.append({"choices": choices, "usage": usage, "model": "m"})
    for bad in bad_records:
        client.set(stored, Codec().encode(key, bad))
        cache.reset_memory_cache()
        assert lm(messages=messages) == first
        assert cache.flush(5)
    assert rejected(metrics) == len(bad_records)
    assert len(qa_server.requests) == 1 + len(bad_records)
    client.set(stored, legit)  # the record NativeLM wrote is still served
    cache.reset_memory_cache()
    assert lm(messages=messages) == first
    assert len(qa_server.requests) == 1 + len(bad_records)
    cache.close()


def test_check_entry_knows_what_each_caller_reads() -> None:
    from litellm import ModelResponse, TextCompletionResponse
    from litellm.types.llms.openai import ResponsesAPIResponse

    response = ModelResponse(model="m", choices=[{"message": {"role": "assistant", "content": "hi"}}])
    chat = {"_fn_identifier": "dspy.clients.lm.litellm_completion", "model": "m"}
    check_entry(chat, response)
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    check_entry(chat, ModelResponse(model="m", choices=[{"message": {"role": "assistant", "content": None,
                                                                     "tool_calls": [call]}}]))  # a tool call only
    for bad in (*WRONG_SHAPES, *unanswered(response), 3, None, ModelResponse,
                {"choices": [{"message": {"content": "hi"}}]}):  # a plain dict: lm.forward() callers read .choices
        with pytest.raises(UnsafeValueError, match="litellm_completion"):
            check_entry(chat, bad)
    with pytest.raises(UnsafeValueError, match="neither text nor tool calls"):
        check_entry(chat, ModelResponse(model="m", choices=[{"message": {"role": "assistant", "content": None}}]))
    with pytest.raises(UnsafeValueError, match="output"):  # the Responses API reads `output`, not `choices`
        check_entry({"_fn_identifier": "dspy.clients.lm.litellm_responses_completion"}, response)
    text = {"_fn_identifier": "dspy.clients.lm.litellm_text_completion"}
    check_entry(text, TextCompletionResponse(choices=[{"text": "hi", "index": 0, "finish_reason": "stop"}]))
    for bad in (TextCompletionResponse(choices=[]), TextCompletionResponse(choices=[{"text": "", "index": 0}])):
        with pytest.raises(UnsafeValueError, match="litellm_text_completion"):
            check_entry(text, bad)
    responses = {"_fn_identifier": "dspy.clients.lm.alitellm_responses_completion"}
    message = {"type": "message", "id": "m", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": "hi", "annotations": []}]}
    for output, ok in (([message], True), ([{"type": "reasoning", "id": "r", "summary": []}], False), ([], False)):
        answer = ResponsesAPIResponse(id="r", created_at=0, output=output, parallel_tool_calls=False,
                                      tool_choice="auto", tools=[])
        if ok:
            check_entry(responses, answer)
        else:
            with pytest.raises(UnsafeValueError, match="alitellm_responses_completion"):
                check_entry(responses, answer)
    with pytest.raises(UnsafeValueError, match="DSPy result record"):
        check_entry({"_fn_identifier": "dspy.clients.lm15.complete"}, response)
    for free in ({"model": "m"}, {"_fn_identifier": "my.module.function"}, "not a dict"):
        check_entry(free, [1, 2, 3])  # request_cache on your own function: any value is yours


def gadget_bytes(n: int) -> bytes:
    """A 31-byte pickle that asks ``bytes(n)`` for n zero bytes."""
    return b"\x80\x04\x8c\x08builtins\x8c\x05bytes\x93J" + struct.pack("<i", n) + b"\x85R."


def gadget_shared(depth: int) -> bytes:
    """Lists of two references to the list below: ``depth`` levels, 2**depth leaves once expanded."""
    level: list[Any] = []
    for _ in range(depth):
        level = [level, level]
    return pickle.dumps(level, protocol=5)


def gadget_hash(depth: int) -> bytes:
    """A dict keyed by a tuple of two references to the tuple below: hashing it visits 2**depth tuples."""
    body = bytearray(b"\x80\x04}\x94)\x940")
    for i in range(depth):
        body += b"h" + bytes([i + 1]) + b"h" + bytes([i + 1]) + b"\x86\x940"
    return bytes(body + b"h" + bytes([depth + 1]) + b"Ns.")


def gadget_memo(index: int) -> bytes:
    """The int 1, stored in the memo at ``index``: the unpickler sizes its memo array to twice that."""
    return b"\x80\x04K\x01r" + struct.pack("<I", index) + b"."


@pytest.mark.parametrize(("name", "body"), [
    ("bytes(n)", gadget_bytes(300_000_000)),
    ("shared references", gadget_shared(22)),
    ("hashing a shared tuple", gadget_hash(24)),
    ("sparse memo", gadget_memo(2**25)),
    ("protocol 0", pickle.dumps({"outputs": ["old"]}, protocol=0)),
    ("cycle", pickle.dumps((lambda x: (x.append(x), x)[1])([]), protocol=5)),
])
def test_small_pickles_that_build_huge_values_are_refused_unrun(name: str, body: bytes, redis_url: str,
                                                                 client: redis.Redis, metrics: Metrics,
                                                                 unpickled: list[bytes]) -> None:
    cache = TieredCache(enable_memory_cache=False, redis_url=redis_url, namespace="t-bomb", metrics=metrics,
                        redis_max_decoded_bytes=1_000_000)
    key = cache.cache_key(REQUEST)
    assert len(body) < 1000
    client.set(cache.redis.prefix + key, b"d3p1" + key.encode() + b"\n" + body)  # type: ignore[union-attr]
    assert cache.get(REQUEST) is None
    assert rejected(metrics) == 1
    assert unpickled == []  # refused by the structure check: the unpickler never saw it
    cache.close()


def test_json_nesting_and_entry_size_are_bounded(redis_url: str, client: redis.Redis, metrics: Metrics) -> None:
    cache = TieredCache(enable_memory_cache=False, redis_url=redis_url, namespace="t-size", metrics=metrics,
                        redis_max_entry_bytes=4096)
    key = cache.cache_key(REQUEST)
    redis_key = cache.redis.prefix + key  # type: ignore[union-attr]
    client.set(redis_key, b"d3j1" + key.encode() + b"\n" + b"[" * 600 + b"]" * 600)  # a copy would recurse 1200x
    assert cache.get(REQUEST) is None
    client.set(redis_key, Codec().encode(key, {"outputs": ["x" * 10_000]}))
    assert cache.get(REQUEST) is None
    assert rejected(metrics) == 2
    cache.put(REQUEST, {"outputs": ["y" * 10_000]})  # over the limit: not shared, since readers would refuse it
    cache.put({**REQUEST, "n": 2}, {"outputs": ["small"]})
    assert cache.flush(5)
    assert client.get(redis_key) is None and client.get(cache.redis.prefix + cache.cache_key({**REQUEST, "n": 2}))
    cache.close()


def test_a_key_of_another_redis_type_is_a_rejected_entry_not_an_outage(redis_url: str, client: redis.Redis,
                                                                        metrics: Metrics) -> None:
    cache = TieredCache(enable_memory_cache=False, redis_url=redis_url, namespace="t-type", metrics=metrics)
    redis_key = cache.redis.prefix + cache.cache_key(REQUEST)  # type: ignore[union-attr]
    client.rpush(redis_key, b"not", b"a", b"string")
    assert cache.get(REQUEST) is None
    assert cache.redis is not None and cache.redis.available  # no back-off: Redis itself is fine
    assert rejected(metrics) == 1 and metrics.cache_requests_total("redis", "error") == 0
    cache.put(REQUEST, {"outputs": ["ok"]})
    assert cache.flush(5)
    assert cache.get(REQUEST) == {"outputs": ["ok"]}
    assert cache.stats()["redis"]["rejected"] == 1
    cache.close()


def test_rejections_are_exposed_as_a_metric(redis_url: str, client: redis.Redis, metrics: Metrics) -> None:
    from prometheus_client import generate_latest

    cache = TieredCache(enable_memory_cache=False, redis_url=redis_url, namespace="t-metric", metrics=metrics)
    assert b'dspyo3_cache_requests_total{result="rejected",tier="redis"} 0.0' in generate_latest(metrics.registry)
    key = cache.cache_key(REQUEST)
    client.set(cache.redis.prefix + key, b"d3p1" + key.encode() + b"\n" + gadget_bytes(10**9))  # type: ignore[union-attr]
    assert cache.get(REQUEST) is None
    assert b'dspyo3_cache_requests_total{result="rejected",tier="redis"} 1.0' in generate_latest(metrics.registry)
    cache.close()


def test_what_the_codec_writes_passes_the_structure_check() -> None:
    import datetime
    import decimal

    from litellm import ModelResponse

    shared = [1, 2]
    values = [
        ModelResponse(model="m", choices=[{"message": {"role": "assistant", "content": "hi", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
            usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
        {"a": [1, 2.5, None, True, b"x", (1, 2), {3, 4}, frozenset({5}), 10**40, -7]},
        [datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc), datetime.timedelta(3), decimal.Decimal("1.5")],
        [shared, shared],
    ]
    codec = Codec()
    for value in values:
        check_pickle(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        back = codec.decode("k", codec.encode("k", value))
        assert back == value or type(back) is ModelResponse


def test_json_that_decodes_to_far_more_than_it_weighs_is_refused_undecoded(redis_url: str, client: redis.Redis,
                                                                         metrics: Metrics) -> None:
    cache = TieredCache(enable_memory_cache=False, redis_url=redis_url, namespace="t-json-size", metrics=metrics)
    key = cache.cache_key(REQUEST)
    redis_key = cache.redis.prefix + key  # type: ignore[union-attr]
    header = b"d3j1" + key.encode() + b"\n"
    count = (cache.codec.max_payload_bytes - len(header) - 2) // 3
    payload = header + b"[" + b"{}," * count + b"{}]"  # within redis_max_entry_bytes: ~5.6 million dicts, ~600 MB
    assert len(payload) <= cache.codec.max_payload_bytes
    client.set(redis_key, payload)
    del payload
    tracemalloc.start()
    try:
        assert cache.get(REQUEST) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rejected(metrics) == 1 and client.get(redis_key) is None  # counted and dropped
    assert peak < 4 * cache.codec.max_payload_bytes  # the entry read, never decoded (that would be ~600 MB)
    served = {"outputs": ["x" * 100_000], "items": [{"n": i} for i in range(1000)]}
    cache.put(REQUEST, served)
    assert cache.flush(5)
    assert cache.get(REQUEST) == served  # ordinary JSON entries are still served
    assert rejected(metrics) == 1 and metrics.cache_requests_total("redis", "hit") == 1
    cache.close()


@pytest.mark.parametrize(("name", "body"), [
    ("1.5 million empty dicts, no memo", b"\x80\x04](" + b"}" * 1_500_000 + b"e."),
    ("20,000 default ModelResponses", b"\x80\x04\x8c\x13litellm.types.utils\x94\x8c\rModelResponse\x94\x93\x94)\x9400]("
     + b"h\x02h\x03R" * 20_000 + b"e."),
])
def test_pickles_are_bounded_in_bytes_built_not_objects(name: str, body: bytes, redis_url: str, client: redis.Redis,
                                                        metrics: Metrics, unpickled: list[bytes]) -> None:
    """One opcode byte builds a 64-byte dict; five build a 3.5 KB ModelResponse through its __init__: the
    estimate is in bytes of what gets built, so neither gets past the default 128 MiB."""
    cache = TieredCache(enable_memory_cache=False, redis_url=redis_url, namespace="t-pickle-bytes", metrics=metrics)
    key = cache.cache_key(REQUEST)
    assert len(body) < cache.codec.max_decoded_bytes // 64
    client.set(cache.redis.prefix + key, b"d3p1" + key.encode() + b"\n" + body)  # type: ignore[union-attr]
    assert cache.get(REQUEST) is None
    assert rejected(metrics) == 1
    assert unpickled == []
    cache.close()


def test_json_size_bound_is_an_upper_bound() -> None:
    import orjson

    from dspyo3_production.codec import json_size_bound

    bodies = [b"[" + b",".join([unit] * 20_000) + b"]" for unit in (
        b"{}", b"[]", b"[[[]]]", b'{"a":1}', b'{"":{}}', b"1000", b"1e5", b'"a"', b'""', b"[1.5]",
        b'{"a":0,"b":0,"c":0,"d":0,"e":0,"f":0,"g":0,"h":0,"i":0,"j":0,"k":0}')]
    bodies += [b'["\xf0\x9f\x98\x80' + b"a" * 100_000 + b'"]',  # one astral character: every character 4 bytes wide
               b"{" + b",".join(b'"%d":{}' % i for i in range(20_000)) + b"}"]
    for body in bodies:
        tracemalloc.start()
        try:
            value = orjson.loads(body)
            built = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert built <= json_size_bound(body), body[:40]
        del value
