"""The dspyo3_lm_call hook: wrappers see every call a real dspy program makes, through LiteLLM over HTTP."""

from __future__ import annotations

import asyncio
import copy
import threading
from typing import Any

import dspy
import pytest

from dspyo3_core import HookedLM, LMCall, PluginManager, hookimpl
from dspyo3_core.testing import LMServer, chat_reply, field_responder


class Recorder:
    """A wrapper that records what it sees before and after the real call."""

    def __init__(self, tag: str = "recorder", log: list[str] | None = None) -> None:
        self.tag = tag
        self.log = log if log is not None else []
        self.calls: list[tuple[LMCall, Any]] = []
        self.lock = threading.Lock()

    @hookimpl(wrapper=True)
    def dspyo3_lm_call(self, call: LMCall) -> Any:
        self.log.append(f"{self.tag}:before")
        outputs = yield
        self.log.append(f"{self.tag}:after")
        with self.lock:
            self.calls.append((call, outputs))
        return outputs


def user_text(call: LMCall) -> str:
    return " ".join(str(m.get("content")) for m in call.messages or [] if m.get("role") == "user")


def test_wrapper_sees_every_call_of_a_real_predict(
    lm_server: LMServer, loopback_lm: HookedLM, plugin_manager: PluginManager
) -> None:
    recorder = Recorder()
    plugin_manager.register(recorder, name="recorder")
    lm_server.responder = field_responder(lambda inputs: {"answer": inputs["question"].upper()})
    predict = dspy.Predict("question -> answer")
    questions = ["first question", "second question", "third question"]
    with dspy.context(lm=loopback_lm):
        answers = [predict(question=q).answer for q in questions]
    assert answers == [q.upper() for q in questions]
    assert len(recorder.calls) == 3 == len(lm_server.requests)
    for question, (call, outputs) in zip(questions, recorder.calls, strict=True):
        assert question in user_text(call)
        assert call.model == "openai/dspyo3-test"
        assert call.is_async is False
        text = outputs[0]["text"] if isinstance(outputs[0], dict) else outputs[0]
        assert question.upper() in text


def test_wrappers_nest_in_registration_order(
    lm_server: LMServer, loopback_lm: HookedLM, plugin_manager: PluginManager
) -> None:
    log: list[str] = []
    plugin_manager.register(Recorder("outer", log), name="outer-first-registered")
    plugin_manager.register(Recorder("inner", log), name="inner-second-registered")
    lm_server.script(chat_reply(answer="x"))
    with dspy.context(lm=loopback_lm):
        dspy.Predict("question -> answer")(question="q")
    # pluggy calls later-registered impls first, so the last registered wrapper is outermost
    assert log == ["inner:before", "outer:before", "outer:after", "inner:after"]


def test_a_tryfirst_impl_can_answer_without_calling_the_lm(
    lm_server: LMServer, loopback_lm: HookedLM, plugin_manager: PluginManager
) -> None:
    class CannedAnswer:
        @hookimpl(tryfirst=True)
        def dspyo3_lm_call(self, call: LMCall) -> Any:
            return [chat_reply(answer="from the cache")]

    plugin_manager.register(CannedAnswer(), name="canned")
    with dspy.context(lm=loopback_lm):
        prediction = dspy.Predict("question -> answer")(question="q")
    assert prediction.answer == "from the cache"
    assert lm_server.requests == []


def test_a_wrapper_can_rewrite_the_request(
    lm_server: LMServer, loopback_lm: HookedLM, plugin_manager: PluginManager
) -> None:
    class ForceTemperature:
        @hookimpl(wrapper=True)
        def dspyo3_lm_call(self, call: LMCall) -> Any:
            call.kwargs["temperature"] = 0.25
            return (yield)

    plugin_manager.register(ForceTemperature(), name="force-temperature")
    lm_server.script(chat_reply(answer="ok"))
    with dspy.context(lm=loopback_lm):
        dspy.Predict("question -> answer")(question="q")
    assert lm_server.requests[0]["temperature"] == 0.25


def test_errors_propagate_through_wrappers(
    lm_server: LMServer, loopback_lm: HookedLM, plugin_manager: PluginManager
) -> None:
    seen: list[BaseException] = []

    class ErrorWatcher:
        @hookimpl(wrapper=True)
        def dspyo3_lm_call(self, call: LMCall) -> Any:
            try:
                return (yield)
            except Exception as exc:
                seen.append(exc)
                raise

    plugin_manager.register(ErrorWatcher(), name="watcher")
    from dspyo3_core.testing import Reply

    lm_server.script(Reply.server_error(503, "overloaded"))
    with dspy.context(lm=loopback_lm), pytest.raises(Exception, match="overloaded"):
        loopback_lm("hello")
    assert len(seen) == 1


def test_async_calls_go_through_the_hook(
    lm_server: LMServer, loopback_lm: HookedLM, plugin_manager: PluginManager
) -> None:
    recorder = Recorder()
    plugin_manager.register(recorder, name="recorder")
    lm_server.responder = field_responder(lambda inputs: {"answer": "async " + inputs["question"]})
    predict = dspy.Predict("question -> answer")

    async def main() -> list[str]:
        with dspy.context(lm=loopback_lm):
            results = await asyncio.gather(*(predict.acall(question=f"q{i}") for i in range(4)))
        return sorted(r.answer for r in results)

    assert asyncio.run(main()) == [f"async q{i}" for i in range(4)]
    assert len(recorder.calls) == 4
    assert all(call.is_async for call, _ in recorder.calls)


def test_streaming_through_the_hook(lm_server: LMServer, loopback_lm: HookedLM, plugin_manager: PluginManager) -> None:
    recorder = Recorder()
    plugin_manager.register(recorder, name="recorder")
    lm_server.script(chat_reply(answer="a streamed answer of several words"))
    predict = dspy.Predict("question -> answer")
    stream_program = dspy.streamify(
        predict, stream_listeners=[dspy.streaming.StreamListener(signature_field_name="answer")]
    )

    async def main() -> tuple[list[str], Any]:
        chunks: list[str] = []
        final = None
        with dspy.context(lm=loopback_lm):
            async for item in stream_program(question="stream please"):
                if isinstance(item, dspy.streaming.StreamResponse):
                    chunks.append(item.chunk)
                elif isinstance(item, dspy.Prediction):
                    final = item
        return chunks, final

    chunks, final = asyncio.run(main())
    assert final is not None and final.answer == "a streamed answer of several words"
    assert "".join(chunks).strip() == "a streamed answer of several words"
    assert len(chunks) > 1
    assert lm_server.requests[0]["stream"] is True
    assert len(recorder.calls) == 1


def test_copies_keep_the_plugin_manager(loopback_lm: HookedLM, plugin_manager: PluginManager) -> None:
    clone = loopback_lm.copy(temperature=0.5)
    assert isinstance(clone, HookedLM)
    assert clone.plugin_manager is plugin_manager
    assert copy.deepcopy(loopback_lm).plugin_manager is plugin_manager


def test_native_engine_path_also_goes_through_the_hook(lm_server: LMServer, plugin_manager: PluginManager) -> None:
    recorder = Recorder()
    plugin_manager.register(recorder, name="recorder")
    lm = HookedLM("openai/dspyo3-test", api_base=lm_server.api_base, api_key="sk-test", cache=False,
                  num_retries=0, plugin_manager=plugin_manager)  # engine="auto": DSPy picks its native engine
    lm_server.script(chat_reply(answer="auto engine"))
    with dspy.context(lm=lm):
        assert dspy.Predict("question -> answer")(question="q").answer == "auto engine"
    assert len(recorder.calls) == 1 == len(lm_server.requests)


def test_call_repr_masks_secrets(loopback_lm: HookedLM) -> None:
    call = LMCall(lm=loopback_lm, prompt="hi", kwargs={"api_key": "sk-very-secret-value-9876", "temperature": 0.1})
    text = repr(call)
    assert "sk-very-secret-value" not in text
    assert "****9876" in text
    assert "temperature': 0.1" in text
