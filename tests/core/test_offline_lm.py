"""The offline LM (``DSPYO3_LM=offline/extractive``): type-correct answers from the prompt, through the hook."""

from __future__ import annotations

from typing import Any, Literal

import dspy
import pydantic
import pytest

from dspyo3_core import LMCall, PluginManager, hookimpl
from dspyo3_core.config import ConfigError, build_lm, load_settings
from dspyo3_core.offline import OFFLINE_LABEL, OfflineLM, offline_answer, offline_responder
from dspyo3_core.testing import LMServer


class Owner(pydantic.BaseModel):
    name: str
    age: int


class Typed(dspy.Signature):
    """Answer from the context."""

    context: list[str] = dspy.InputField()
    question: str = dspy.InputField()
    answer: str = dspy.OutputField()
    count: int = dspy.OutputField()
    ratio: float = dspy.OutputField()
    ok: bool = dspy.OutputField()
    cited: list[str] = dspy.OutputField()
    kind: Literal["planet", "moon"] = dspy.OutputField()
    owner: Owner = dspy.OutputField()


CONTEXT = ["[venus] Venus. Venus is the hottest planet because its thick carbon dioxide air traps heat.",
           "[mars] Mars. Mars is red because of iron oxide dust."]


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), dspy.JSONAdapter()], ids=["chat", "json"])
def test_every_field_type_correct_and_extractive(monkeypatch: pytest.MonkeyPatch, adapter: Any) -> None:
    monkeypatch.setenv("DSPYO3_LM", "offline/extractive")
    lm = build_lm(load_settings().profile())
    assert isinstance(lm, OfflineLM)
    with dspy.context(lm=lm, adapter=adapter):
        result = dspy.ChainOfThought(Typed)(context=CONTEXT, question="Why is Mars red, in 3 words?")
    assert result.reasoning == OFFLINE_LABEL  # labelled: not a model
    assert result.answer == "Mars is red because of iron oxide dust."
    assert result.count == 3 and result.ratio == 3.0 and result.ok is True
    assert result.cited == ["mars"]  # the id of the passage the sentence came from
    assert result.kind == "planet"
    assert isinstance(result.owner, Owner) and result.owner.age == 3
    assert lm.history[-1]["cost"] == 0.0 and lm.history[-1]["usage"]["total_tokens"] > 0


def test_calls_go_through_the_lm_call_hook(plugin_manager: PluginManager) -> None:
    seen: list[str] = []

    class Watch:
        @hookimpl(wrapper=True)
        def dspyo3_lm_call(self, call: LMCall) -> Any:
            seen.append(call.model)
            return (yield)

    plugin_manager.register(Watch(), name="offline-watch")
    with dspy.context(lm=OfflineLM(plugin_manager=plugin_manager)):
        dspy.Predict("question -> answer")(question="What is 2 + 2?")
    assert seen == ["offline/extractive"]


def test_react_calls_a_tool_with_arguments_then_finishes() -> None:
    calls: list[str] = []

    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        calls.append(expression)
        return "391"

    with dspy.context(lm=OfflineLM()):
        result = dspy.ReAct("question -> answer", tools=[calculator], max_iters=5)(question="What is 17 * 23?")
    assert calls == ["17 * 23"]
    assert result.answer == "391"
    assert result.trajectory["tool_name_1"] == "finish"


def test_unknown_offline_model_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPYO3_LM", "offline/gpt-5")
    with pytest.raises(ConfigError, match="offline model 'gpt-5' is unknown; use extractive"):
        build_lm(load_settings().profile())


def test_prompt_without_fields_gets_an_answer() -> None:
    assert offline_answer([{"role": "user", "content": "hello there"}]) == (
        "[[ ## answer ## ]]\nhello there\n\n[[ ## completed ## ]]")


def test_http_server_serves_the_same_answers() -> None:
    with LMServer(responder=offline_responder()) as server:
        lm = dspy.LM("openai/offline", api_base=server.api_base, api_key="offline", cache=False)
        with dspy.context(lm=lm):
            result = dspy.Predict("context: list[str], question: str -> answer: str, n: int")(
                context=CONTEXT, question="Which planet is the hottest?")
    assert result.answer.startswith("Venus is the hottest planet") and result.n == 0


def test_react_never_answers_with_a_tool_error() -> None:
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        raise ZeroDivisionError("division by zero")

    with dspy.context(lm=OfflineLM()):
        result = dspy.ReAct("question -> answer", tools=[calculator], max_iters=5)(question="What is 17 / 0?")
    assert "ZeroDivisionError" in result.trajectory["observation_0"]  # the call failed ...
    assert result.trajectory["tool_name_1"] == "finish"
    assert result.answer == "What is 17 / 0?"  # ... and nothing but the question is left to copy from
