"""One circuit-breaker state machine (``dspyo3_core.breaker.Circuit``) under production's per-model breakers and
agents' per-tool breakers: the same calls, outcomes and clock give the same states in both."""

from __future__ import annotations

import pytest
from dspy.utils.exceptions import LMServerError

import dspyo3_production as prod
from dspyo3_agents import ToolBreaker, ToolCircuitOpenError
from dspyo3_agents.tools import policy as policy_module
from dspyo3_core import breaker as core_breaker
from dspyo3_core.breaker import CLOSED, HALF_OPEN, OPEN, Circuit
from dspyo3_production import breaker as breaker_module

MODEL = "openai/gpt-4o-mini"


class Clock:
    """A monotonic clock moved by hand, shared by both breakers."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(breaker_module, "time", fake)
    monkeypatch.setattr(policy_module, "time", fake)
    return fake


def test_both_packages_run_the_core_circuit() -> None:
    assert breaker_module.Circuit is core_breaker.Circuit
    assert policy_module.Circuit is core_breaker.Circuit


# (step, seconds to advance first): "call" asks to be let through, then "ok" / "fail" / "neutral" report its outcome
SCRIPT = [("call", 0), ("fail", 0), ("call", 0), ("ok", 0), ("call", 0), ("fail", 0), ("call", 0), ("fail", 0),
          ("call", 0), ("call", 0.1), ("call", 0.15), ("call", 0), ("neutral", 0), ("call", 0), ("fail", 0),
          ("call", 0), ("call", 0.3), ("call", 0.1), ("call", 0.2), ("ok", 0), ("call", 0), ("ok", 0)]


def run_production(clock: Clock) -> list[str]:
    breaker = prod.CircuitBreaker(failure_threshold=2, reset_timeout=0.2)
    seen = []
    for step, advance in SCRIPT:
        clock.now += advance
        if step == "call":
            try:
                breaker.before(MODEL)
                seen.append("let through")
            except prod.CircuitOpenError:
                seen.append("refused")
        elif step == "ok":
            breaker.success(MODEL)
        elif step == "fail":
            breaker.failure(MODEL, LMServerError("down", model=MODEL))
        else:
            breaker.release(MODEL)
        seen.append(breaker.state(MODEL))
    return seen


def run_agents(clock: Clock) -> list[str]:
    breaker = ToolBreaker(failure_threshold=2, reset_timeout=0.2)
    seen = []
    for step, advance in SCRIPT:
        clock.now += advance
        if step == "call":
            try:
                breaker.before_call("t")
                seen.append("let through")
            except ToolCircuitOpenError:
                seen.append("refused")
        elif step == "ok":
            breaker.success()
        elif step == "fail":
            breaker.failure()
        else:
            breaker.neutral()
        seen.append(breaker.state.replace("-", "_"))
    return seen


def test_agents_and_production_breakers_agree(clock: Clock) -> None:
    production = run_production(clock)
    clock.now = 1000.0
    assert run_agents(clock) == production
    assert production.count("refused") >= 4 and {"open", "half_open", "closed"} <= set(production)


def test_circuit_state_machine() -> None:
    circuit = Circuit()
    assert circuit.admit(0.0, 10.0) is None and not circuit.fail(0.0, 2)
    assert circuit.fail(1.0, 2) and circuit.state == OPEN
    assert circuit.admit(5.0, 10.0) == pytest.approx(6.0)  # refused: open for 6 s more
    assert circuit.current(11.0, 10.0) == HALF_OPEN and circuit.state == OPEN  # current() changes nothing
    assert circuit.admit(11.0, 10.0, max_trials=2) is None and circuit.state == HALF_OPEN
    assert circuit.admit(12.0, 10.0, max_trials=2) is None
    assert circuit.admit(13.0, 10.0, max_trials=2) == pytest.approx(8.0)  # both trial slots are out
    circuit.release()
    assert circuit.admit(13.0, 10.0, max_trials=2) is None  # the released slot is taken again
    assert circuit.admit(21.0, 10.0, max_trials=2) is None  # the round of trials never reported back: expired
    assert circuit.fail(21.0, 2) and circuit.state == OPEN and circuit.opened_at == 21.0  # a failed trial re-opens
    assert circuit.admit(31.0, 10.0) is None
    assert circuit.succeed() and circuit.state == CLOSED and circuit.failures == 0
    assert not circuit.succeed()


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="failure_threshold must be >= 1"):
        ToolBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="half_open_max_calls must be >= 1"):
        prod.CircuitBreaker(half_open_max_calls=0)
