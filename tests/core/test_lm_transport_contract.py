"""One LM contract, three LMs: ``dspy.LM`` (LiteLLM / lm15), the native Rust transport on the OpenAI wire format,
and the native transport on Anthropic's messages format, all against the loopback LM server (real HTTP)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import dspy
import pytest
from dspy.utils.exceptions import (
    LMAuthError,
    LMError,
    LMProviderError,
    LMRateLimitError,
    LMServerError,
    LMTimeoutError,
    LMTransportError,
    is_retryable_lm_error,
)

from dspyo3_core.native_engine import native_lm
from dspyo3_core.native_lm import PRICING, NativeLM
from dspyo3_core.testing.server import LMServer, Reply, chat_reply, digest_responder, usage_of

KINDS = ("litellm", "native", "native-anthropic", "engine", "engine-anthropic")
KEY = "sk-contract-SECRET-0001"


class QA(dspy.Signature):
    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


@pytest.fixture
def server() -> Iterator[LMServer]:
    with LMServer(api_key=KEY) as running:
        yield running


MakeLM = Callable[..., Any]


@pytest.fixture(params=KINDS)
def make_lm(request: pytest.FixtureRequest, server: LMServer) -> MakeLM:
    kind = request.param

    def make(*, api_key: str = KEY, num_retries: int = 0, timeout: float = 10.0, cache: bool = False) -> Any:
        if kind == "litellm":
            return dspy.LM("openai/dspyo3-test", api_base=server.api_base, api_key=api_key, cache=cache,
                           num_retries=num_retries, timeout=timeout)
        model = "anthropic/claude-test" if kind.endswith("-anthropic") else "openai/dspyo3-test"
        if kind.startswith("engine"):  # a plain dspy.LM whose engines are the Rust client
            return native_lm(model, api_base=server.api_base, api_key=api_key, cache=cache, num_retries=num_retries,
                             timeout=timeout)
        return NativeLM(model, api_base=server.api_base, api_key=api_key, cache=cache, num_retries=num_retries,
                        timeout=timeout)

    make.kind = kind  # type: ignore[attr-defined]
    return make


def _ask(lm: Any, question: str = "What is 2 + 2?") -> Any:
    with dspy.context(lm=lm):
        return dspy.Predict(QA)(question=question)


def test_answers_sync_and_async(make_lm: MakeLM, server: LMServer) -> None:
    server.script(chat_reply(answer="4"), chat_reply(answer="four"))
    lm = make_lm()
    assert _ask(lm).answer == "4"

    async def ask_async() -> Any:
        with dspy.context(lm=lm):
            return await dspy.Predict(QA).acall(question="2 + 2 in words?")

    assert asyncio.run(ask_async()).answer == "four"
    assert len(server.requests) == 2
    if make_lm.kind.endswith("-anthropic"):  # type: ignore[attr-defined]
        assert server.requests[0]["_path"] == "/v1/messages"
        assert server.requests[0]["messages"][0]["role"] == "system", "the system prompt went to `system`"
        assert server.requests[0]["_headers"]["x-api-key"] == KEY
    else:
        assert server.requests[0]["_headers"]["authorization"] == f"Bearer {KEY}"


def test_identical_predictions_across_transports(server: LMServer) -> None:
    server.responder = digest_responder()
    answers = []
    for lm in (dspy.LM("openai/m", api_base=server.api_base, api_key=KEY, cache=False, num_retries=0),
               NativeLM("openai/m", api_base=server.api_base, api_key=KEY, cache=False, num_retries=0)):
        answers.append([_ask(lm, f"question {i}").answer for i in range(5)])
    assert answers[0] == answers[1] and len(set(answers[0])) == 5


def test_usage_is_reported_once(make_lm: MakeLM, server: LMServer) -> None:
    server.script(chat_reply(answer="4"))
    lm = make_lm()
    with dspy.track_usage() as tracker:
        _ask(lm)
    usage = tracker.get_total_tokens()[lm.model]
    expected = usage_of(server.requests[0], chat_reply(answer="4"))  # what the server reported
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert usage[key] == expected[key], key
    assert lm.history[-1]["usage"]["total_tokens"] == expected["total_tokens"]


def test_streaming_through_streamify(make_lm: MakeLM, server: LMServer) -> None:
    answer = "The quick brown fox jumps over the lazy dog"
    server.script(Reply(content=chat_reply(answer=answer), chunk_size=5))
    lm = make_lm()
    program = dspy.streamify(dspy.Predict(QA), stream_listeners=[dspy.streaming.StreamListener("answer")])

    async def collect() -> list[Any]:
        with dspy.context(lm=lm):
            return [item async for item in program(question="fox?")]

    items = asyncio.run(collect())
    chunks = [i for i in items if isinstance(i, dspy.streaming.StreamResponse)]
    assert len(chunks) > 3, items
    assert "".join(c.chunk for c in chunks).strip() == answer
    assert isinstance(items[-1], dspy.Prediction) and items[-1].answer == answer
    assert server.requests[0]["stream"] is True


def test_rate_limit_carries_retry_after(make_lm: MakeLM, server: LMServer) -> None:
    server.script(Reply.rate_limited(retry_after=0.25))
    with pytest.raises(LMRateLimitError) as info:
        make_lm()(messages=[{"role": "user", "content": "hi"}])
    assert info.value.retry_after == pytest.approx(0.25) and is_retryable_lm_error(info.value)


def test_rate_limit_is_retried_after_the_wait(make_lm: MakeLM, server: LMServer) -> None:
    server.script(Reply.rate_limited(retry_after=0.8), chat_reply(answer="4"))  # longer than any first backoff
    started = time.perf_counter()
    assert _ask(make_lm(num_retries=2)).answer == "4"
    assert time.perf_counter() - started >= 0.8, "Retry-After was honoured"
    assert len(server.requests) == 2


def test_server_errors(make_lm: MakeLM, server: LMServer) -> None:
    server.script(Reply.server_error(503, "overloaded (scripted)"))
    with pytest.raises(LMServerError) as info:
        make_lm()(messages=[{"role": "user", "content": "hi"}])
    assert info.value.status == 503 and "overloaded" in str(info.value) and is_retryable_lm_error(info.value)
    server.script(Reply.server_error(500), chat_reply(answer="ok"))
    assert _ask(make_lm(num_retries=1)).answer == "ok"


def test_timeouts(make_lm: MakeLM, server: LMServer) -> None:
    server.script(Reply.hang_up(120))
    with pytest.raises((LMTimeoutError, LMTransportError)) as info:
        make_lm(timeout=0.5)(messages=[{"role": "user", "content": "hi"}])
    assert server.hanging == 1  # the client gave up on its own timeout; the server had not hung up yet
    assert is_retryable_lm_error(info.value)


def test_malformed_bodies(make_lm: MakeLM, server: LMServer) -> None:
    server.script(Reply.malformed())
    with pytest.raises(LMProviderError) as info:
        make_lm()(messages=[{"role": "user", "content": "hi"}])
    assert not is_retryable_lm_error(info.value)


def test_auth_failures(make_lm: MakeLM, server: LMServer) -> None:
    with pytest.raises(LMAuthError) as info:
        make_lm(api_key="sk-wrong", num_retries=2)(messages=[{"role": "user", "content": "hi"}])
    assert info.value.status == 401 and not is_retryable_lm_error(info.value)
    assert server.rejected == 1, "an auth failure is not retried"


def test_cache_hits_are_not_billed_twice(make_lm: MakeLM, server: LMServer) -> None:
    server.script(chat_reply(answer="cached"))
    lm = make_lm(cache=True)
    question = f"cache probe {time.time_ns()} {make_lm.kind}"  # type: ignore[attr-defined]
    with dspy.track_usage() as tracker:
        first, second = _ask(lm, question), _ask(lm, question)
    assert first.answer == second.answer == "cached"
    assert len(server.requests) == 1
    once = tracker.get_total_tokens()[lm.model]["total_tokens"]
    server.script(chat_reply(answer="cached"))
    with dspy.track_usage() as fresh:
        _ask(make_lm(cache=False), question)
    assert once == fresh.get_total_tokens()[lm.model]["total_tokens"], "the hit added no usage"


# -- the same request body as dspy.LM, model family by model family ------------------------------------------------

SYSTEM_AND_USER = [{"role": "system", "content": "Answer tersely."}, {"role": "user", "content": "2 + 2?"}]


def _bodies(server: LMServer, model: str, settings: dict[str, Any], per_call: dict[str, Any],
            other: Callable[..., Any] = NativeLM) -> list[Any]:
    """The JSON body dspy.LM sends and the one ``other`` (NativeLM) sends for ``model`` built with ``settings`` and
    called with ``per_call``."""
    bodies = []
    for make in (dspy.LM, other):
        server.script(chat_reply(answer="4"))
        lm = make(model, api_base=server.api_base, api_key=KEY, cache=False, num_retries=0, **settings)
        lm(messages=SYSTEM_AND_USER, **per_call)
        bodies.append({k: v for k, v in server.requests[-1].items() if not k.startswith("_")})
    return bodies


BODY_CASES = [
    ("openai/gpt-4o-mini", {}, {}),
    ("openai/gpt-4o-mini", {"temperature": 0.3, "max_tokens": 100}, {}),
    ("openai/gpt-4o-mini", {"max_tokens": 100}, {"max_tokens": 50, "temperature": 0.9}),
    ("openai/gpt-4o-mini", {"use_developer_role": True}, {}),
    ("openai/o1", {}, {}),
    ("openai/o1", {"temperature": 1.0, "max_tokens": 16000}, {}),
    ("openai/o3-mini", {"max_tokens": 20000}, {}),
    ("openai/o3-mini", {"temperature": 0}, {}),
    ("openai/gpt-5", {"temperature": 1.0, "max_tokens": 20000}, {}),
    ("openai/gpt-5", {}, {"max_tokens": 32000}),
    ("openai/gpt-5-mini", {"use_developer_role": True, "max_tokens": 16000}, {}),
    ("openai/gpt-5-chat-latest", {"temperature": 0.5, "max_tokens": 100}, {}),
    ("hosted_vllm/qwen", {"temperature": 0.2, "max_tokens": 10}, {}),
    ("hosted_vllm/o3", {"max_tokens": 16000}, {}),
    ("ollama_chat/gpt-5", {"max_tokens": 16000}, {}),
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("model", "settings", "per_call"), BODY_CASES)
def test_native_sends_what_dspy_lm_sends(server: LMServer, model: str, settings: dict[str, Any],
                                         per_call: dict[str, Any]) -> None:
    sent_by_dspy, sent_by_native = _bodies(server, model, settings, per_call)
    assert sent_by_native == sent_by_dspy
    assert "use_developer_role" not in sent_by_native, "a DSPy setting is never sent to the provider"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("model", "settings", "per_call"), BODY_CASES)
def test_native_engine_sends_what_dspy_lm_sends(server: LMServer, model: str, settings: dict[str, Any],
                                                per_call: dict[str, Any]) -> None:
    sent_by_dspy, sent_by_engine = _bodies(server, model, settings, per_call, other=native_lm)
    assert sent_by_engine == sent_by_dspy


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("other", [NativeLM, native_lm], ids=["native", "engine"])
@pytest.mark.parametrize(("model", "settings"), [
    ("anthropic/claude-test", {}),                                   # max_tokens: lm15's default for the class
    ("anthropic/claude-3-haiku-20240307", {}),
    ("anthropic/claude-3-5-sonnet-latest", {"temperature": 0.3}),
    ("anthropic/claude-test", {"temperature": 1.5, "max_tokens": 100}),  # clamped to the wire's ceiling of 1
])
def test_native_sends_what_dspy_lm_sends_to_anthropic(server: LMServer, model: str, settings: dict[str, Any],
                                                      other: Any) -> None:
    sent_by_dspy, sent_by_engine = _bodies(server, model, settings, {}, other=other)
    assert sent_by_engine == sent_by_dspy
    assert sent_by_engine["max_tokens"] > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("settings", [
    {"thinking": {"type": "enabled", "budget_tokens": 20000}},  # max_tokens must exceed the budget
    {"thinking": {"type": "enabled", "budget_tokens": 2000}},
    {"max_tokens": 1000.0},
])
def test_native_lm_sends_what_dspy_lm_sends_to_anthropic_with_thinking(server: LMServer,
                                                                      settings: dict[str, Any]) -> None:
    sent_by_dspy, sent_by_native = _bodies(server, "anthropic/claude-sonnet-4-5", settings, {})
    if "thinking" in settings:  # DSPy sends these through LiteLLM, whose body differs in form (system blocks)
        assert (sent_by_native["max_tokens"], sent_by_native["thinking"]) == \
            (sent_by_dspy["max_tokens"], sent_by_dspy["thinking"])
        assert sent_by_native["max_tokens"] > settings["thinking"]["budget_tokens"]
    else:
        assert sent_by_native == sent_by_dspy


@pytest.mark.parametrize("other", [NativeLM, native_lm], ids=["native", "engine"])
@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "openai/gpt-5"])
def test_native_streams_what_dspy_lm_streams(server: LMServer, model: str, other: Any) -> None:
    program = dspy.streamify(dspy.Predict(QA), stream_listeners=[dspy.streaming.StreamListener("answer")])
    bodies = []
    for make in (dspy.LM, other):
        server.script(chat_reply(answer="4"))
        lm = make(model, api_base=server.api_base, api_key=KEY, cache=False, num_retries=0, max_tokens=20000)

        async def collect(lm: Any = lm) -> list[Any]:
            with dspy.context(lm=lm):
                return [item async for item in program(question="2 + 2?")]

        asyncio.run(collect())
        bodies.append({k: v for k, v in server.requests[-1].items() if not k.startswith("_")})
    assert bodies[1] == bodies[0]
    assert bodies[1]["stream"] is True and bodies[1]["max_completion_tokens"] == 20000


@pytest.mark.parametrize("model", ["openai/o1", "openai/o3-mini", "openai/gpt-5", "openai/gpt-5-mini", "o3"])
@pytest.mark.parametrize("settings", [{"temperature": 0.7}, {"max_tokens": 1000},
                                      {"temperature": 0.5, "max_tokens": 20000}])
def test_reasoning_models_refuse_settings_like_dspy_lm(model: str, settings: dict[str, Any]) -> None:
    from dspy.utils.exceptions import LMConfigurationError

    with pytest.raises(LMConfigurationError) as by_dspy:
        dspy.LM(model, api_key=KEY, **settings)
    with pytest.raises(LMConfigurationError) as by_native:
        NativeLM(model, api_base="http://127.0.0.1:9/v1", api_key=KEY, **settings)
    assert "temperature=1.0 or None and max_tokens >= 16000" in str(by_native.value)
    assert by_native.value.model == by_dspy.value.model == model
    # the non-reasoning variant of the family takes any setting
    NativeLM("openai/gpt-5-chat-latest", api_key=KEY, **settings)


def test_reasoning_settings_survive_state_and_copies(server: LMServer) -> None:
    from dspy.utils.exceptions import LMConfigurationError

    lm = NativeLM("openai/gpt-5", api_base=server.api_base, api_key=KEY, max_tokens=16000, use_developer_role=True)
    reference = dspy.LM("openai/gpt-5", api_base=server.api_base, api_key=KEY, max_tokens=16000,
                        use_developer_role=True)
    assert lm.kwargs["max_completion_tokens"] == reference.kwargs["max_completion_tokens"] == 16000
    state = lm.dump_state()
    assert (state["max_tokens"], state["use_developer_role"]) == (16000, True)
    assert "max_completion_tokens" not in state
    restored = dspy.BaseLM.load_state(state, allow_custom_lm_class=True)
    assert restored.kwargs["max_completion_tokens"] == 16000 and restored.use_developer_role
    # a copy with a new cap sends it (not the old max_completion_tokens); a copy breaking the rules is refused
    server.script(chat_reply(answer="4"))
    lm.copy(max_tokens=32000, cache=False)(messages=SYSTEM_AND_USER)
    assert server.requests[-1]["max_completion_tokens"] == 32000 and "max_tokens" not in server.requests[-1]
    with pytest.raises(LMConfigurationError):
        lm.copy(temperature=0.2)
    with pytest.raises(TypeError, match="not both"):
        NativeLM("openai/o1", api_key=KEY, max_tokens=16000, max_completion_tokens=20000)


def test_rollout_id_at_temperature_zero_warns_like_dspy_lm() -> None:
    for make in (dspy.LM, NativeLM):
        with pytest.warns(UserWarning, match="rollout_id has no effect when temperature=0"):
            make("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", api_key=KEY, temperature=0, rollout_id=1)


# -- native-only behaviour ---------------------------------------------------------------------------------------


def test_native_never_exposes_the_key(server: LMServer) -> None:
    import pickle

    server.script(chat_reply(answer="4"))
    lm = NativeLM("openai/m", api_base=server.api_base, api_key=KEY, cache=False,
                  headers={"X-Team": "search", "Authorization": f"Bearer {KEY}"})
    _ask(lm)
    shown = [repr(lm), json.dumps(lm.dump_state(), default=str), repr(lm.history[-1]), repr(lm.kwargs),
             repr(pickle.dumps(lm))]
    assert not any(KEY in text for text in shown)
    restored = dspy.BaseLM.load_state(lm.dump_state(), allow_custom_lm_class=True)
    assert isinstance(restored, NativeLM) and restored.api_base == server.api_base
    assert restored.headers == [("X-Team", "search")], "public headers are saved, secret ones are not"


def test_native_copies_keep_the_key_and_follow_new_settings(server: LMServer) -> None:
    import copy

    lm = NativeLM("openai/m", api_base="http://127.0.0.1:9/v1", api_key=KEY, cache=False)
    server.script(chat_reply(answer="a"), chat_reply(answer="b"), chat_reply(answer="c"))
    moved = lm.copy(api_base=server.api_base, rollout_id=1)  # a new endpoint gets a new client, same key
    assert _ask(moved).answer == "a" and moved.api_base == server.api_base
    assert _ask(copy.deepcopy(moved)).answer == "b"
    assert _ask(moved.copy(temperature=0.5)).answer == "c"
    assert [r["_headers"]["authorization"] for r in server.requests] == [f"Bearer {KEY}"] * 3
    assert moved.copy(temperature=0.5)._transport is moved._transport, "unchanged connection settings share the pool"
    with pytest.raises(TypeError, match="copy"):
        moved(messages=[{"role": "user", "content": "x"}], api_base="http://elsewhere/v1")
    with pytest.raises(TypeError, match="new NativeLM"):
        moved.copy(model="openai/other")
    aliased = NativeLM("openai/m", base_url=server.api_base, extra_headers={"X-Team": "a"}, api_key=KEY)
    assert aliased.api_base == server.api_base and aliased.headers == [("X-Team", "a")]
    assert "base_url" not in aliased.kwargs and "extra_headers" not in aliased.kwargs


def test_native_cost_from_the_pricing_table(server: LMServer) -> None:
    server.script(chat_reply(answer="4"), chat_reply(answer="4"))
    PRICING.set("openai/priced-model", input_per_mtok=1.0, output_per_mtok=2.0)
    lm = NativeLM("openai/priced-model", api_base=server.api_base, api_key=KEY, cache=False)
    _ask(lm)
    usage = lm.history[-1]["usage"]
    assert lm.history[-1]["cost"] == pytest.approx((usage["prompt_tokens"] + 2 * usage["completion_tokens"]) / 1e6)
    mine = NativeLM("openai/priced-model", api_base=server.api_base, api_key=KEY, cache=False,
                    pricing={"input_per_mtok": 0.0, "output_per_mtok": 0.0})
    _ask(mine)
    assert mine.history[-1]["cost"] == 0.0
    assert PRICING.price("openai/gpt-4o-mini") is not None, "LiteLLM's bundled price map is read"


def test_native_calls_go_through_lm_call_wrappers(server: LMServer, plugin_manager: Any) -> None:
    from dspyo3_core.hookspecs import hookimpl

    seen: list[tuple[str, bool]] = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def dspyo3_lm_call(self, call: Any) -> Any:
            seen.append((call.model, call.is_async))
            return (yield)

    manager = plugin_manager
    manager.register(Wrapper(), name="test-wrapper")
    server.script(chat_reply(answer="a"), chat_reply(answer="b"))
    lm = NativeLM("openai/m", api_base=server.api_base, api_key=KEY, cache=False, plugin_manager=manager)
    assert _ask(lm).answer == "a"

    async def ask_async() -> Any:
        with dspy.context(lm=lm):
            return await dspy.Predict(QA).acall(question="q")

    assert asyncio.run(ask_async()).answer == "b"
    assert seen == [("openai/m", False), ("openai/m", True)]


def test_native_cancellation_drops_the_request(server: LMServer) -> None:
    import psutil

    server.script(Reply.hang_up(120), chat_reply(answer="after"))
    lm = NativeLM("openai/m", api_base=server.api_base, api_key=KEY, cache=False)
    port = int(server.api_base.rsplit(":", 1)[1].split("/")[0])

    def open_to_server() -> int:
        return sum(1 for c in psutil.Process().net_connections(kind="tcp")
                   if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)

    async def main() -> Any:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(lm.acall(messages=[{"role": "user", "content": "hang"}]), 0.3)
        await asyncio.sleep(0.2)
        assert open_to_server() == 0, "the cancelled request's connection was closed"
        with dspy.context(lm=lm):
            answer = await dspy.Predict(QA).acall(question="next")
        assert server.hanging == 1  # answered while the cancelled request was still held: nothing waited for it
        return answer

    assert asyncio.run(main()).answer == "after"


def test_native_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="api_base"):
        NativeLM("hosted_vllm/some-model")
    with pytest.raises(ValueError, match="chat"):
        NativeLM("openai/m", api_base="http://127.0.0.1:9/v1", model_type="text")
    with pytest.raises(ValueError, match="must look like"):
        NativeLM("openai/m", api_base="ftp://127.0.0.1/v1")
    with pytest.raises(TypeError, match="engine"):
        NativeLM("openai/m", api_base="http://127.0.0.1:9/v1", engine=object())


def test_profiles_select_the_transport(server: LMServer) -> None:
    from dspyo3_core.config import ConfigError, LMProfile, build_lm
    from dspyo3_core.lm import HookedLM

    def profile(provider: str, **params: Any) -> LMProfile:
        return LMProfile("p", provider, "m", api_base=server.api_base, params={"cache": False, **params},
                         api_key_in_file=KEY)

    from dspyo3_core.native_engine import NativeEngine

    native = build_lm(profile("openai-compatible", transport="native"))
    assert isinstance(native, HookedLM) and isinstance(native.engine, NativeEngine), "a dspy.LM on the Rust engine"
    server.script(chat_reply(answer="native"))
    assert _ask(native).answer == "native"
    assert server.requests[-1]["_headers"]["authorization"] == f"Bearer {KEY}"
    plain = build_lm(profile("openai-compatible"))
    assert isinstance(plain, HookedLM) and plain.engine == "auto"
    anthropic = build_lm(profile("native-anthropic"))
    assert isinstance(anthropic.engine, NativeEngine) and anthropic.engine.url.endswith("/messages")
    with pytest.raises(ConfigError, match="chat"):
        build_lm(profile("openai-compatible", transport="native", model_type="responses"))
    # options DSPy's request model cannot carry (vLLM's sampling extras, a price of its own): NativeLM sends them
    extras = build_lm(profile("openai-compatible", transport="native", repetition_penalty=1.1,
                              extra_body={"chat_template_kwargs": {"enable_thinking": False}},
                              pricing={"input_per_mtok": 1.0, "output_per_mtok": 2.0}))
    assert isinstance(extras, NativeLM)
    server.script(chat_reply(answer="extras"))
    assert _ask(extras).answer == "extras"
    assert server.requests[-1]["repetition_penalty"] == 1.1
    with pytest.raises(ConfigError, match="transport"):
        build_lm(profile("openai-compatible", transport="grpc"))
    with pytest.raises(ConfigError, match="native"):
        build_lm(profile("cohere", transport="native"))


def test_errors_are_dspy_errors(make_lm: MakeLM, server: LMServer) -> None:
    server.script(Reply(status=400, error_message="This model's maximum context length is 8192 tokens"))
    with pytest.raises(LMError) as info:
        make_lm()(messages=[{"role": "user", "content": "long"}])
    if make_lm.kind != "litellm":  # type: ignore[attr-defined]
        assert isinstance(info.value, dspy.ContextWindowExceededError)


def test_native_over_tls_with_a_private_ca(tmp_path: Any) -> None:
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-addext", "basicConstraints=critical,CA:FALSE",  # a leaf, not a CA (rustls refuses CA leaves)
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with LMServer(api_key=KEY, ssl_context=context) as server:
        assert server.api_base.startswith("https://")
        server.script(chat_reply(answer="secure"))
        lm = NativeLM("openai/m", api_base=server.api_base, api_key=KEY, cache=False, ca_cert=cert)
        assert _ask(lm).answer == "secure"
        untrusted = NativeLM("openai/m", api_base=server.api_base, api_key=KEY, cache=False)
        with pytest.raises(LMTransportError, match=r"(?i)certificate"):
            untrusted(messages=[{"role": "user", "content": "hi"}])
        assert len(server.requests) == 1, "nothing was sent to a server whose certificate was refused"


@pytest.mark.parametrize("model", ["openai/m", "anthropic/claude-test"])
def test_native_stream_cancelled_mid_answer_lets_go_at_once(server: LMServer, model: str) -> None:
    import anyio

    # the first four events at once (Anthropic's first text comes after three framing events), then one every
    # 120 s: a cancellation that waited for the next chunk would see it sent first
    server.script(Reply(content=chat_reply(answer="word " * 50), chunk_size=4, chunk_delay=120, delay_from=4))
    lm = NativeLM(model, api_base=server.api_base, api_key=KEY, cache=False)

    async def main() -> tuple[int, int]:
        send, receive = anyio.create_memory_object_stream[Any](100)
        with dspy.context(send_stream=send):
            task = asyncio.ensure_future(lm.acall(messages=[{"role": "user", "content": "long answer"}]))
        first = await receive.receive()
        assert first.choices[0].delta.content, "a chunk arrived"
        while server.chunks_sent < 4:  # the events sent at once are all out
            await asyncio.sleep(0.01)
        sent = server.chunks_sent
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return sent, server.chunks_sent

    before, after = asyncio.run(main())
    assert after == before, "cancelling let go at once: it did not wait for the next chunk"


def test_the_real_call_reports_cost_source_latency_and_error(server: LMServer, plugin_manager: Any) -> None:
    from dspyo3_core.hookspecs import hookimpl

    seen: list[Any] = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def dspyo3_lm_call(self, call: Any) -> Any:
            seen.append(call)
            return (yield)

    plugin_manager.register(Wrapper(), name="test-wrapper")
    PRICING.set("openai/priced-model", input_per_mtok=1.0, output_per_mtok=2.0)
    server.script(chat_reply(answer="4"), chat_reply(answer="4"), Reply.server_error(500))
    table = NativeLM("openai/priced-model", api_base=server.api_base, api_key=KEY, cache=False, num_retries=0,
                     plugin_manager=plugin_manager)
    own = NativeLM("openai/priced-model", api_base=server.api_base, api_key=KEY, cache=False,
                   plugin_manager=plugin_manager, pricing={"input_per_mtok": 3.0, "output_per_mtok": 4.0})
    _ask(table)
    _ask(own)
    with pytest.raises(LMServerError) as failed:
        table(messages=[{"role": "user", "content": "and now?"}])
    first, second, third = seen
    assert (first.cost, first.cost_source) == (table.history[-1]["cost"], "pricing")
    assert (second.cost, second.cost_source) == (own.history[-1]["cost"], "lm")
    assert first.error is None and first.latency_s is not None and first.latency_s >= 0
    assert third.error is failed.value and third.latency_s is not None
    assert (third.cost, third.cost_source) == (None, None)
