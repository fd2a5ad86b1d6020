"""The Rust client as DSPy's engine (``dspyo3_core.native_engine``), against the loopback LM server: what only the
engine does. The shared LM contract (answers, usage, streaming, errors, retries, request bodies equal to dspy.LM's)
runs for it in ``test_lm_transport_contract.py``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import dspy
import pytest
from dspy.lm15 import FunctionTool, Message, Request

from dspyo3_core.lm import HookedLM
from dspyo3_core.native_engine import AsyncNativeEngine, NativeEngine, native_engines, native_lm
from dspyo3_core.testing.server import LMServer, Reply, chat_reply

KEY = "sk-engine-SECRET-0042"


class QA(dspy.Signature):
    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


@pytest.fixture
def server() -> Iterator[LMServer]:
    with LMServer(api_key=KEY) as running:
        yield running


def _ask(lm: Any, question: str = "2 + 2?", adapter: Any = None) -> Any:
    with dspy.context(lm=lm, adapter=adapter):
        return dspy.Predict(QA)(question=question)


def test_a_plain_dspy_lm_keeps_cache_history_and_usage(server: LMServer) -> None:
    server.script(chat_reply(answer="4"))
    lm = native_lm("openai/m", api_base=server.api_base, api_key=KEY, cache=True, temperature=0.1)
    assert type(lm) is dspy.LM and isinstance(lm.engine, NativeEngine)
    question = f"engine cache {id(lm)}"
    with dspy.track_usage() as usage:
        assert _ask(lm, question).answer == "4"
        assert _ask(lm, question).answer == "4"
    assert len(server.requests) == 1, "the second call was DSPy's cache hit"
    assert usage.get_total_tokens()["openai/m"]["total_tokens"] == lm.history[0]["usage"]["total_tokens"] > 0
    sent = server.requests[0]
    assert sent["model"] == "m" and sent["temperature"] == 0.1
    assert sent["_headers"]["authorization"] == f"Bearer {KEY}"


def test_hooked_lm_with_the_engine_and_both_engines_share_one_pool(server: LMServer) -> None:
    server.script(chat_reply(answer="sync"), chat_reply(answer="async"))
    lm = native_lm("openai/m", lm_class=HookedLM, api_base=server.api_base, api_key=KEY, cache=False)
    assert isinstance(lm, HookedLM)
    assert _ask(lm).answer == "sync"

    async def ask() -> Any:
        with dspy.context(lm=lm):
            return await dspy.Predict(QA).acall(question="q")

    assert asyncio.run(ask()).answer == "async"
    engine, async_engine = native_engines("openai/m", api_base=server.api_base, api_key=KEY)
    assert isinstance(async_engine, AsyncNativeEngine) and engine.url == f"{server.api_base}/chat/completions"


def test_json_adapter_structured_output_matches_dspy_lm(server: LMServer) -> None:
    bodies = []
    for lm in (dspy.LM("openai/gpt-4o-mini", api_base=server.api_base, api_key=KEY, cache=False, num_retries=0),
               native_lm("openai/gpt-4o-mini", api_base=server.api_base, api_key=KEY, cache=False, num_retries=0)):
        server.script(json.dumps({"answer": "4"}))
        assert _ask(lm, adapter=dspy.JSONAdapter()).answer == "4"
        bodies.append({k: v for k, v in server.requests[-1].items() if not k.startswith("_")})
    assert bodies[1] == bodies[0] and "response_format" in bodies[1]


def test_a_request_the_native_path_cannot_carry_goes_through_dspys_engine_visibly(
        server: LMServer, caplog: pytest.LogCaptureFixture) -> None:
    tool = FunctionTool(name="lookup", description="Look a word up.",
                parameters={"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]})
    lm = native_lm("openai/m", api_base=server.api_base, api_key=KEY, cache=False, num_retries=0)
    server.script("it is 4", "again 4")
    with caplog.at_level(logging.WARNING, logger="dspyo3.native_engine"):
        for _ in range(2):
            response = lm(Request(model="openai/m", messages=(Message.user("2 + 2?"),), tools=(tool,)))
            assert "4" in response.text
    assert lm.engine.fallbacks == 2
    assert [r.getMessage() for r in caplog.records].count(
        "native engine: tools not carried by the Rust transport; requests using it go through DSPy's lm15 engine") == 1
    assert server.requests[-1]["tools"][0]["function"]["name"] == "lookup", "the tool reached the server"
    assert server.requests[-1]["_headers"]["authorization"] == f"Bearer {KEY}", "same key, same endpoint"


def _tool_request() -> Any:
    """A request with a tool: the native path does not carry tools, so it takes DSPy's lm15 engine."""
    tool = FunctionTool(name="lookup", description="Look a word up.",
                        parameters={"type": "object", "properties": {"word": {"type": "string"}}})
    return Request(model="openai/m", messages=(Message.user("2 + 2?"),), tools=(tool,))


def _engines_and_lm(server: LMServer) -> tuple[NativeEngine, AsyncNativeEngine, Any]:
    engine, async_engine = native_engines("openai/m", api_base=server.api_base, api_key=KEY)
    return engine, async_engine, dspy.LM("openai/m", engine=engine, async_engine=async_engine, cache=False,
                                         num_retries=0)


def test_the_fallback_refuses_what_it_cannot_send_alike_and_keeps_a_pool_per_event_loop(server: LMServer) -> None:
    request = _tool_request()
    gated = native_lm("openai/m", api_base=server.api_base, api_key=KEY, cache=False, num_retries=0,
                      headers={"X-Gateway-Token": "gw-0123456789"})
    with pytest.raises(dspy.utils.exceptions.LMUnsupportedFeatureError, match="headers"):
        gated(request)  # lm15 would send it without the gateway's header: refused, not sent differently
    assert not server.requests
    lm = native_lm("openai/m", api_base=server.api_base, api_key=KEY, cache=False, num_retries=0)
    server.script("one", "two")
    for expected in ("one", "two"):  # two event loops: the second gets a pool of its own
        assert asyncio.run(lm.acall(request)).text == expected
    assert lm.engine.fallbacks == 2


def test_closing_the_engines_closes_the_fallback_engines_they_built(server: LMServer) -> None:
    request = _tool_request()
    engine, async_engine, lm = _engines_and_lm(server)
    server.script("one", "two", "three")
    assert lm(request).text == "one"
    closed: list[str] = []

    async def on_one_loop() -> str:
        first = (await lm.acall(request)).text
        fallback = next(iter(async_engine._endpoint._async_fallbacks.values()))
        real = fallback.aclose

        async def spy() -> None:
            closed.append("async")
            await real()

        fallback.aclose = spy
        await async_engine.aclose()
        return first

    assert asyncio.run(on_one_loop()) == "two"
    fallback = next(iter(engine._endpoint._fallback.values()))
    real_close = fallback.close
    fallback.close = lambda: (closed.append("sync"), real_close())
    engine.close()
    assert closed == ["async", "sync"]
    assert lm(request).text == "three", "a later request builds a new fallback engine"


def test_fallback_engines_of_closed_event_loops_are_let_go(server: LMServer) -> None:
    request = _tool_request()
    _, async_engine, lm = _engines_and_lm(server)
    server.script(*[f"answer {i}" for i in range(4)])
    for i in range(4):  # four event loops, each closed when asyncio.run returns
        assert asyncio.run(lm.acall(request)).text == f"answer {i}"
    assert len(async_engine._endpoint._async_fallbacks) == 1, "only the last loop's engine is still held"


def test_errors_never_show_the_key_and_a_saved_lm_never_chooses_the_endpoint(server: LMServer,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    server.script(Reply.server_error(503, "upstream overloaded"))
    lm = native_lm("openai/m", api_base=server.api_base, api_key=KEY, cache=False, num_retries=0,
                   headers={"X-Team": "search", "Authorization": f"Bearer {KEY}"})
    with pytest.raises(dspy.utils.exceptions.LMServerError) as info:
        _ask(lm)
    assert info.value.status == 503
    assert KEY not in repr(lm.engine) and KEY not in repr(lm)
    with pytest.raises(TypeError, match="own api_base"):  # refused when saving, not when loading the file
        lm.dump_state()
    # an LM on the provider's default endpoint comes back on it, with the key from the environment
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    default = native_lm("openai/gpt-4o-mini", timeout=30.0)
    saved = json.dumps(default.dump_state())
    assert "api.openai.com" not in saved and KEY not in saved, "no endpoint or key is saved"
    with pytest.raises(ValueError, match="custom"):  # DSPy's gate: custom engines load only from trusted files
        dspy.LM.load_state(json.loads(saved))
    restored = dspy.LM.load_state(json.loads(saved), allow_custom_lm_class=True)
    assert isinstance(restored.engine, NativeEngine)
    assert restored.engine.url == "https://api.openai.com/v1/chat/completions"
    assert restored.engine.dump_state() == default.engine.dump_state()
    assert KEY not in json.dumps(restored.dump_state())
    # loaded one after the other (as DSPy loads an LM's pair), the two engines share one endpoint and its pool
    state = default.engine.dump_state()
    sync_engine = NativeEngine.load_state(state)
    async_engine = AsyncNativeEngine.load_state(state)
    assert async_engine._endpoint is sync_engine._endpoint


def test_bad_configuration_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="api_base"):
        NativeEngine("hosted_vllm/some-model")
    with pytest.raises(ValueError, match="wire"):
        NativeEngine("openai/m", api_base="http://127.0.0.1:9/v1", wire="grpc")
    with pytest.raises(ValueError, match="must look like"):
        NativeEngine("openai/m", api_base="ftp://127.0.0.1/v1")
    with pytest.raises(ValueError, match="engine"):  # DSPy's own rule: a custom engine owns the connection
        dspy.LM("openai/m", engine=NativeEngine("openai/m", api_base="http://127.0.0.1:9/v1"), api_key="sk-other")


def test_cancelling_an_async_call_drops_the_request(server: LMServer) -> None:
    server.script(Reply.hang_up(120), chat_reply(answer="after"))
    lm = native_lm("openai/m", api_base=server.api_base, api_key=KEY, cache=False, num_retries=0)

    async def main() -> Any:
        with dspy.context(lm=lm):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(dspy.Predict(QA).acall(question="hang"), 0.3)
            answer = await dspy.Predict(QA).acall(question="next")
        assert server.hanging == 1, "answered while the cancelled request was still held: nothing waited for it"
        return answer

    assert asyncio.run(main()).answer == "after"


def test_an_oversized_answer_is_a_collection_limit_error_not_retried() -> None:
    from dspy.utils.exceptions import LMCollectionLimitError, is_retryable_lm_error

    from dspyo3_core.testing.rawhttp import RawServer

    from .test_native_lm_limits import MiB, chunked_body, endless_data_line

    server = RawServer(chunked_body(2 * MiB))
    try:
        lm = native_lm("openai/m", api_base=server.api_base, api_key="k", cache=False, num_retries=3,
                       max_response_bytes=MiB)
        with pytest.raises(LMCollectionLimitError, match=r"max_response_bytes limit of 1048576 bytes") as caught:
            _ask(lm)
        assert not is_retryable_lm_error(caught.value)
        assert server.requests == 1, "a too-large answer is not asked for again"
    finally:
        server.close()
    server = RawServer(endless_data_line(4 * MiB))
    try:
        lm = native_lm("openai/m", api_base=server.api_base, api_key="k", cache=False, max_event_bytes=MiB)
        program = dspy.streamify(dspy.Predict(QA), stream_listeners=[dspy.streaming.StreamListener("answer")])

        async def collect() -> list[Any]:
            with dspy.context(lm=lm):
                return [item async for item in program(question="q")]

        with pytest.raises(LMCollectionLimitError, match="max_event_bytes"):
            asyncio.run(collect())
    finally:
        server.close()
