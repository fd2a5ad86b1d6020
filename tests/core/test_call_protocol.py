"""What happens inside one LM call reaches the :class:`~dspyo3_core.call.LMCall` through its public methods:
usage and a cost priced once from :data:`~dspyo3_core.pricing.PRICING`, and which cache tier answered."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dspy
import pytest

from dspyo3_core.call import LMCall, current_call, note_result
from dspyo3_core.lm import HookedLM
from dspyo3_core.plugins import PluginManager, core_only_manager
from dspyo3_core.pricing import PRICING
from dspyo3_core.testing.server import LMServer, field_responder

MODEL = "openai/dspyo3-call-protocol-test"


@pytest.fixture
def priced() -> Iterator[None]:
    PRICING.set(MODEL, input_per_mtok=1_000_000.0, output_per_mtok=2_000_000.0)  # $1 / $2 per token
    yield
    PRICING._overrides.pop(MODEL, None)
    PRICING._memo.clear()


def _call() -> LMCall:
    return LMCall(lm=dspy.LM(MODEL))


def test_record_prices_usage_once_from_the_pricing_table(priced: None) -> None:
    call = _call()
    call.record({"usage": {"prompt_tokens": 3, "completion_tokens": 2}, "cost": 99.0})
    assert call.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert call.cost == pytest.approx(3 * 1.0 + 2 * 2.0)  # the table wins over the reported figure
    assert call.cost_source == "pricing"


def test_record_falls_back_to_the_reported_cost_for_an_unpriced_model() -> None:
    call = LMCall(lm=dspy.LM("openai/no-such-model-anywhere"))
    call.record({"usage": {"prompt_tokens": 3, "completion_tokens": 2}, "cost": 0.25})
    assert (call.cost, call.cost_source) == (0.25, "reported")
    call.record({"usage": {"prompt_tokens": 3, "completion_tokens": 2}, "cost": True})  # not a number
    assert (call.cost, call.cost_source) == (None, None)


def test_a_cache_hit_has_empty_usage_and_no_cost(priced: None) -> None:
    call = _call()
    call.note_cache_hit("memory")
    call.record({"usage": {}, "cost": 0.5})  # DSPy's cache keeps the first call's cost on the cached record
    assert (call.cache_hit, call.cache_tier, call.usage, call.cost, call.cost_source) == (True, "memory", {}, None,
                                                                                          None)


def test_note_result_reaches_only_the_call_running_for_that_lm() -> None:
    lm, other = dspy.LM("openai/a"), dspy.LM("openai/b")
    call = LMCall(lm=lm)
    from dspyo3_core.call import CURRENT_CALL

    token = CURRENT_CALL.set(call)
    try:
        assert current_call() is call
        note_result(other, {"prompt_tokens": 1}, 1.0, True)
        assert (call.usage, call.cache_hit) == (None, False)
        note_result(lm, {"prompt_tokens": 1}, 1.0, True, "lm")
        assert (call.usage, call.cost, call.cost_source, call.cache_hit) == ({"prompt_tokens": 1}, 1.0, "lm", True)
    finally:
        CURRENT_CALL.reset(token)
    assert current_call() is None


class _Seen:
    """A ``dspyo3_lm_call`` wrapper keeping every call it saw, after it finished."""

    def __init__(self) -> None:
        self.calls: list[LMCall] = []

    from dspyo3_core.hookspecs import hookimpl

    @hookimpl(wrapper=True)
    def dspyo3_lm_call(self, call: LMCall) -> Iterator[Any]:
        outputs = yield
        self.calls.append(call)
        return outputs


@pytest.mark.parametrize("history", [True, False])
def test_a_real_call_reports_usage_and_its_priced_cost_to_wrappers(priced: None, history: bool) -> None:
    seen = _Seen()
    manager: PluginManager = core_only_manager()
    manager.register(seen, name="seen")
    with LMServer(field_responder(lambda fields: {"answer": "4"})) as server:
        lm = HookedLM(MODEL, api_base=server.api_base, api_key="sk-test-abcdefghijklmnop", num_retries=0,
                      cache=False, engine="litellm", plugin_manager=manager)
        with dspy.context(lm=lm, disable_history=not history):
            assert dspy.Predict("question -> answer")(question="2 + 2?").answer == "4"
    (call,) = seen.calls
    assert call.usage and call.usage["prompt_tokens"] > 0 and call.usage["completion_tokens"] > 0
    expected = call.usage["prompt_tokens"] * 1.0 + call.usage["completion_tokens"] * 2.0
    assert call.cost == pytest.approx(expected)
    assert call.cost_source == "pricing"
    assert call.latency_s is not None and call.error is None
