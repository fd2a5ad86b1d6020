"""Circuit breakers (fed by DSPy's typed errors, shared through Redis, with fallback), cost and budgets (checked
before the call, persisted in Redis), A/B routing, and the ``[production]`` config."""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dspy
import orjson
import pytest
from dspy.utils.exceptions import LMAuthError, LMInvalidRequestError, LMServerError

import dspyo3_production as prod
from dspyo3_core.config import ConfigError, load_settings
from dspyo3_core.lm import HookedLM
from dspyo3_core.native_lm import PRICING
from dspyo3_core.plugins import PluginManager
from dspyo3_core.testing.server import LMServer, Reply
from dspyo3_production import stack as stack_module
from dspyo3_production.cost import Budget, BudgetExceededError, CostTracker
from dspyo3_production.metrics import Metrics
from dspyo3_production.settings import from_settings

from .conftest import answer_for

MODEL = "openai/gpt-4o-mini"


def failing_lm(server: LMServer, manager: PluginManager, model: str = MODEL) -> HookedLM:
    return HookedLM(model, api_base=server.api_base, api_key="sk-x", num_retries=0, cache=False,
                    plugin_manager=manager)


class Clock:
    """The breaker's monotonic clock, moved by hand: its reset timeouts pass exactly when the test says, however
    long the machine takes between two steps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    from dspyo3_production import breaker as breaker_module

    fake = Clock()
    monkeypatch.setattr(breaker_module, "time", fake)
    return fake


def test_breaker_state_machine(clock: Clock) -> None:
    changes: list[tuple[str, str]] = []
    breaker = prod.CircuitBreaker(failure_threshold=2, reset_timeout=0.2, on_change=lambda k, s: changes.append((k, s)))
    error = LMServerError("down", model=MODEL)
    breaker.before("m")
    breaker.failure("m", error)
    breaker.success("m")  # a success resets the count
    breaker.failure("m", error)
    assert breaker.state("m") == "closed"
    breaker.failure("m", error)
    assert breaker.state("m") == "open"
    with pytest.raises(prod.CircuitOpenError, match="circuit open for m") as info:
        breaker.before("m")
    assert info.value.retry_after == pytest.approx(0.2)  # the whole reset timeout: no time passed on its clock
    clock.advance(0.25)
    assert breaker.state("m") == "half_open"
    breaker.before("m")  # the one trial call
    with pytest.raises(prod.CircuitOpenError):
        breaker.before("m")  # no second trial while the first is out
    breaker.failure("m", error)  # the trial failed: open again
    assert breaker.state("m") == "open"
    clock.advance(0.25)
    breaker.before("m")
    breaker.success("m")
    assert breaker.state("m") == "closed"
    assert [s for _, s in changes] == ["open", "half_open", "open", "half_open", "closed"]
    breaker.failure("m", LMInvalidRequestError("bad", model=MODEL))  # the caller's fault: not counted
    breaker.failure("m", LMAuthError("key", model=MODEL))
    assert breaker.state("m") == "closed"
    with pytest.raises(ValueError, match="failure_threshold"):
        prod.CircuitBreaker(failure_threshold=0)


def test_open_circuit_stops_calls_before_the_provider(manager: PluginManager, metrics: Metrics) -> None:
    with LMServer() as server:
        server.script(*[Reply.server_error(503) for _ in range(3)])
        lm = failing_lm(server, manager)
        prod.enable(prod.Production(metrics=metrics, log_events=False,
                                    breaker=prod.CircuitBreaker(failure_threshold=3, reset_timeout=60)))
        for _ in range(3):
            with pytest.raises(LMServerError):
                lm("hi")
        with pytest.raises(prod.CircuitOpenError):
            lm("hi")
        assert len(server.requests) == 3  # the refused call never reached the server
        assert metrics.lm_requests_total(MODEL, "circuit_open") == 1
        assert metrics.circuit_state.labels(MODEL)._value.get() == 2


def test_fallback_answers_while_the_circuit_is_open(manager: PluginManager, qa_server: LMServer,
                                                    metrics: Metrics) -> None:
    with LMServer() as broken:
        broken.script(Reply.server_error(500), Reply.server_error(500))
        primary = failing_lm(broken, manager)
        backup = HookedLM("openai/backup-model", api_base=qa_server.api_base, api_key="sk-y", num_retries=0,
                          cache=False, plugin_manager=manager)
        prod.enable(prod.Production(metrics=metrics, log_events=False, fallback=backup,
                                    breaker=prod.CircuitBreaker(failure_threshold=2, reset_timeout=60)))
        qa = dspy.Predict("question -> answer")
        with dspy.context(lm=primary, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
            for _ in range(2):
                with pytest.raises(LMServerError):
                    qa(question="x")
            assert qa(question="x").answer == answer_for("x")  # served by the backup profile
        assert len(broken.requests) == 2 and len(qa_server.requests) == 1
        assert metrics.fallbacks.labels(MODEL, "openai/backup-model")._value.get() == 1
        assert metrics.lm_requests_total("openai/backup-model", "ok") == 1


def test_breaker_state_is_shared_through_redis(redis_url: str) -> None:
    one = prod.CircuitBreaker(failure_threshold=2, reset_timeout=60, redis_url=redis_url, namespace="t-brk")
    two = prod.CircuitBreaker(failure_threshold=2, reset_timeout=60, redis_url=redis_url, namespace="t-brk")
    one.reset("m")
    error = LMServerError("down", model=MODEL)
    one.failure("m", error)
    two.failure("m", error)  # two processes' failures add up
    assert one.state("m") == two.state("m") == "open"
    with pytest.raises(prod.CircuitOpenError):
        two.before("m")
    one._redis.pexpire("t-brk:breaker:m:open", 1)  # the reset timeout runs out (cut short, not waited for)
    time.sleep(0.01)
    assert two.state("m") == "half_open"
    one.before("m")  # one trial for everyone
    with pytest.raises(prod.CircuitOpenError):
        two.before("m")
    one.success("m")
    assert two.state("m") == "closed"
    two.before("m")


def test_cost_is_priced_and_totalled_per_dimension(qa_lm: HookedLM, metrics: Metrics) -> None:
    PRICING.set(MODEL, input_per_mtok=1000.0, output_per_mtok=2000.0)  # easy numbers
    try:
        tracker = CostTracker()
        prod.enable(prod.Production(metrics=metrics, log_events=False, costs=tracker))
        qa = dspy.Predict("question -> answer")
        with dspy.context(lm=qa_lm):
            with prod.attribute(user="alice", run="r1"):
                qa(question="a")
            with prod.attribute(user="bob"):
                qa(question="b")
                qa(question="b")  # DSPy's cache: free
        usage = [entry["usage"] for entry in qa_lm.history if entry["usage"]]
        costs = [(u["prompt_tokens"] * 1000 + u["completion_tokens"] * 2000) / 1e6 for u in usage]
        assert len(costs) == 2
        assert tracker.totals("user") == pytest.approx({"alice": costs[0], "bob": costs[1]})
        assert tracker.totals("run") == pytest.approx({"r1": costs[0]})
        assert tracker.totals("model") == pytest.approx({MODEL: sum(costs)})
        assert list(tracker.totals("day").values()) == pytest.approx([sum(costs)])
        assert tracker.totals("total") == pytest.approx({"total": sum(costs)})
        families = prod.exposition(metrics).decode()
        assert "dspyo3_lm_cost_usd_total" in families
    finally:
        PRICING._overrides.pop(MODEL, None)
        PRICING._memo.clear()


def test_budget_refuses_a_call_before_it_is_made(qa_lm: HookedLM, qa_server: LMServer, metrics: Metrics) -> None:
    PRICING.set(MODEL, input_per_mtok=1.0, output_per_mtok=1.0)
    try:
        # max_tokens 1000 at $1/Mtok: each call's worst case is over $0.001, its real cost about a tenth of that
        tracker = CostTracker([Budget(0.0015, per="user")])
        prod.enable(prod.Production(metrics=metrics, log_events=False, costs=tracker))
        lm = qa_lm.copy(max_tokens=1000, cache=False)
        qa = dspy.Predict("question -> answer")
        with dspy.context(lm=lm), prod.attribute(user="carol"), pytest.raises(BudgetExceededError,
                                                                              match="user=carol") as info:
            for i in range(20):
                before = len(qa_server.requests)
                qa(question=f"q{i}")
        assert len(qa_server.requests) == before >= 1  # the refused call sent nothing
        spent = tracker.totals("user")["carol"]
        assert spent <= 0.0015 < spent + info.value.estimate_usd
        assert info.value.budget.per == "user" and info.value.estimate_usd > 0.001
        with dspy.context(lm=lm), prod.attribute(user="dave"):  # another user has their own budget
            dspy.Predict("question -> answer")(question="x")
        assert len(qa_server.requests) == before + 1
        assert metrics.budget_rejections.labels("user:0.0015")._value.get() >= 1
    finally:
        PRICING._overrides.pop(MODEL, None)
        PRICING._memo.clear()


def test_breaker_reset_without_a_key_closes_every_shared_circuit(redis_url: str) -> None:
    namespace = "t-brk-[all]*"  # glob characters in the namespace match only themselves
    opener = prod.CircuitBreaker(failure_threshold=1, reset_timeout=60, redis_url=redis_url, namespace=namespace)
    other = prod.CircuitBreaker(failure_threshold=1, reset_timeout=60, redis_url=redis_url, namespace="t-brk-other")
    error = LMServerError("down", model=MODEL)
    for key in ("m1", "m2"):
        opener.failure(key, error)
    other.failure("m1", error)
    fresh = prod.CircuitBreaker(failure_threshold=1, reset_timeout=60, redis_url=redis_url, namespace=namespace)
    assert fresh.state("m1") == fresh.state("m2") == "open"
    fresh.reset()  # this process never saw either circuit: they are closed for everyone all the same
    assert opener.state("m1") == opener.state("m2") == fresh.state("m2") == "closed"
    opener.before("m1")
    assert other.state("m1") == "open"  # another namespace is left alone
    other.reset("m1")


def test_budgets_hold_across_processes_through_redis(redis_url: str) -> None:
    PRICING.set("openai/priced", input_per_mtok=1.0, output_per_mtok=1.0)
    try:
        first = CostTracker([Budget(0.01)], redis_url=redis_url, namespace="t-budget")
        first.reset()
        second = CostTracker([Budget(0.01)], redis_url=redis_url, namespace="t-budget")
        from dspyo3_core.lm import LMCall

        call = LMCall(lm=dspy.LM("openai/priced", max_tokens=1000), messages=[{"role": "user", "content": "x"}])
        granted, refused = [], []

        def spend(tracker: CostTracker) -> None:
            for _ in range(10):
                try:
                    reservation = tracker.reserve(call)
                except BudgetExceededError:
                    refused.append(1)
                    continue
                granted.append(1)
                tracker.settle(reservation, 0.001)

        threads = [threading.Thread(target=spend, args=(t,)) for t in (first, second, first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        total = CostTracker(redis_url=redis_url, namespace="t-budget").totals("total")["total"]
        assert total <= 0.01 + 1e-9 and len(granted) >= 8 and refused  # never over, across "processes"
        assert total == pytest.approx(0.001 * len(granted))
    finally:
        PRICING._overrides.pop("openai/priced", None)
        PRICING._memo.clear()


def test_budget_validation() -> None:
    with pytest.raises(ValueError, match="per='week'"):
        Budget(1.0, per="week")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit_usd"):
        Budget(-1.0)


def test_ab_assignment_is_deterministic_and_weighted(metrics: Metrics) -> None:
    a, b, c = (dspy.Predict("question -> answer") for _ in range(3))
    router = prod.ABRouter("exp", {"control": (a, 0.8), "candidate": (b, 0.2), "off": (c, 0.0)}, metrics=metrics)
    again = prod.ABRouter("exp", {"control": (a, 8), "candidate": (b, 2), "off": (c, 0)}, metrics=metrics)
    arms = collections.Counter(router.assign(f"user-{i}") for i in range(20_000))
    assert set(arms) == {"control", "candidate"}
    assert arms["candidate"] / 20_000 == pytest.approx(0.2, abs=0.015)
    assert all(router.assign(f"user-{i}") == again.assign(f"user-{i}") for i in range(500))
    other = prod.ABRouter("other-exp", {"control": (a, 0.8), "candidate": (b, 0.2)}, metrics=metrics)
    assert any(router.assign(f"user-{i}") != other.assign(f"user-{i}") for i in range(200))
    with pytest.raises(ValueError, match="all 0"):
        prod.ABRouter("x", {"a": (a, 0)})
    with pytest.raises(TypeError, match="program, weight"):
        prod.ABRouter("x", {"a": a})  # type: ignore[dict-item]


def test_ab_routes_calls_and_counts_by_arm(qa_lm: HookedLM, metrics: Metrics) -> None:
    import io
    import json

    stream = io.StringIO()
    prod.configure_logging(stream)
    prod.enable(prod.Production(metrics=metrics))
    control, candidate = dspy.Predict("question -> answer"), dspy.Predict("question -> answer")
    router = prod.ABRouter("qa", {"control": (control, 1), "candidate": (candidate, 1)}, metrics=metrics)
    with dspy.context(lm=qa_lm):
        for i in range(10):
            assert router(key=f"k{i}", question=f"q{i}").answer == answer_for(f"q{i}")
    assigned = collections.Counter(router.assign(f"k{i}") for i in range(10))
    for arm, n in assigned.items():
        assert metrics.ab_requests.labels("qa", arm, "ok")._value.get() == n
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    arms_logged = collections.Counter(e["arm"] for e in events if e["event"] == "lm_call")
    assert arms_logged == assigned and all(e["experiment"] == "qa" for e in events if e["event"] == "lm_call")
    assert router.record_score("k0", 1.0) == router.assign("k0")


def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    path = tmp_path / "dspyo3.toml"
    path.write_text(text)
    monkeypatch.setenv("DSPYO3_CONFIG", str(path))


def test_config_turns_the_stack_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str,
                                   qa_lm: HookedLM) -> None:
    write_config(tmp_path, monkeypatch, f"""
[redis]
url = "{redis_url}"

[lm.profiles.backup]
provider = "openai-compatible"
model = "backup"
api_base = "http://127.0.0.1:9/v1"

[production]
log_events = false

[production.cache]
redis = true
namespace = "t-config"
redis_ttl = 60

[production.breaker]
failure_threshold = 3
fallback = "backup"

[[production.budgets]]
per = "day"
limit_usd = 5.0

[production.costs]
reservation_ttl = 120
default_price = {{input_per_mtok = 2.0, output_per_mtok = 8.0}}

[production.pricing."openai/configured"]
input_per_mtok = 0.5
output_per_mtok = 1.5
""")
    try:
        stack = from_settings(load_settings())
        assert stack is not None and stack.cache is not None and stack.cache.redis is not None
        assert stack.breaker is not None and stack.breaker.failure_threshold == 3
        assert stack.costs is not None and stack.costs.budgets == [Budget(5.0, per="day")]
        assert stack.costs.default_price == (2.0, 8.0) and stack.costs.reservation_ttl == 120.0
        assert PRICING.price("openai/configured") == (0.5, 1.5)
        stack.cache.close()
        stack_module._loaded_from_settings = False  # as in a fresh process: the first LM call reads the config
        with dspy.context(lm=qa_lm):
            assert dspy.Predict("question -> answer")(question="cfg").answer == answer_for("cfg")
        active = stack_module.active()
        assert active is not None and dspy.cache is active.cache
    finally:
        PRICING._overrides.pop("openai/configured", None)
        PRICING._memo.clear()


@pytest.mark.parametrize(("text", "message"), [
    ("[production]\nmetric = 1\n", "unknown key 'metric' (did you mean 'metrics'"),
    ("[production.cache]\nredis = true\n", "no Redis URL is configured"),
    ("[production.breaker]\nfallback = \"nope\"\n", "fallback = 'nope' is not an LM profile"),
    ("[[production.budgets]]\nper = \"day\"\n", "needs limit_usd"),
    ("[[production.budgets]]\nlimit_usd = 1\nper = \"week\"\n", "per='week'"),
    ("[production.pricing.\"m\"]\ninput_per_mtok = 1\n", "needs input_per_mtok and output_per_mtok"),
    ("[production.costs]\ndefault_price = 3\n", "default_price needs input_per_mtok and output_per_mtok"),
    ("[production.costs]\nreservation_ttl = 0\n", "reservation_ttl must be > 0"),
])
def test_bad_config_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                     message: str) -> None:
    write_config(tmp_path, monkeypatch, text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_settings(load_settings())


def test_no_config_means_no_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, qa_lm: HookedLM) -> None:
    write_config(tmp_path, monkeypatch, "[lm]\n")
    assert from_settings(load_settings()) is None
    stack_module._loaded_from_settings = False
    with dspy.context(lm=qa_lm):
        dspy.Predict("question -> answer")(question="plain")
    assert stack_module.active() is None


def test_metrics_false_means_no_metrics_and_no_cost_tracker(metrics: Metrics) -> None:
    stack = prod.Production(metrics=False, log_events=False)
    assert stack.metrics is None and stack.costs is None
    assert isinstance(prod.Production(metrics=metrics).costs, CostTracker)
    assert prod.enable(stack) is stack_module.active()
    prod.disable()
    assert stack_module.active() is None


def test_production_status_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manager: PluginManager) -> None:
    import json

    from click.testing import CliRunner

    from dspyo3_core.cli import build_cli

    runner = CliRunner()
    result = runner.invoke(build_cli(manager), ["production", "status", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["configured"] is False
    write_config(tmp_path, monkeypatch, "[production]\nlog_events = false\n[production.cache]\n"
                 "memory_max_entries = 10\n[[production.budgets]]\nper = \"user\"\nlimit_usd = 2\n")
    result = runner.invoke(build_cli(manager), ["production", "status", "--json"])
    status = json.loads(result.output)
    assert status["cache"]["memory"] and status["budgets"] == ["user:2"] and status["log_events"] is False


def test_half_open_trial_slot_comes_back_after_a_non_provider_outcome(clock: Clock) -> None:
    breaker = prod.CircuitBreaker(failure_threshold=1, reset_timeout=0.1)
    breaker.failure("m", LMServerError("down", model=MODEL))
    clock.advance(0.15)
    breaker.before("m")  # the trial ...
    breaker.failure("m", LMInvalidRequestError("bad input", model=MODEL))  # ... ended with the caller's error
    breaker.before("m")  # the slot is free again: not stuck half-open
    breaker.release("m")  # e.g. a budget refused the call after the breaker let it through
    breaker.before("m")
    breaker.success("m")
    assert breaker.state("m") == "closed"
    # a trial that never reports back (its caller died) expires after reset_timeout
    breaker.failure("m", LMServerError("down", model=MODEL))
    clock.advance(0.15)
    breaker.before("m")
    with pytest.raises(prod.CircuitOpenError):
        breaker.before("m")
    clock.advance(0.15)
    breaker.before("m")


def test_costs_are_tracked_with_history_disabled(qa_lm: HookedLM, metrics: Metrics) -> None:
    tracker = CostTracker()
    prod.enable(prod.Production(metrics=metrics, log_events=False, costs=tracker))
    with dspy.context(lm=qa_lm, disable_history=True), dspy.track_usage() as usage:
        dspy.Predict("question -> answer")(question="no history")
    assert not qa_lm.history
    billed = usage.get_total_tokens()[MODEL]  # the user's own tracker still sees the call
    assert billed["prompt_tokens"] > 0
    expected = PRICING.cost(MODEL, billed["prompt_tokens"], billed["completion_tokens"])
    assert tracker.totals("total")["total"] == pytest.approx(expected) and expected > 0


def test_shared_totals_without_budgets(redis_url: str) -> None:
    from dspyo3_core.lm import LMCall

    writer = CostTracker(redis_url=redis_url, namespace="t-nobudget")
    writer.reset()
    call = LMCall(lm=dspy.LM(MODEL), messages=[{"role": "user", "content": "x"}])
    writer.settle(writer.reserve(call), 0.25)
    assert CostTracker(redis_url=redis_url, namespace="t-nobudget").totals("model") == {MODEL: 0.25}


def test_a_bad_config_keeps_failing_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, qa_lm: HookedLM) -> None:
    write_config(tmp_path, monkeypatch, "[production]\ncolour = 1\n")
    stack_module._loaded_from_settings = False
    for _ in range(2):  # not only the first call: production must not silently switch off
        with dspy.context(lm=qa_lm), pytest.raises(ConfigError, match="colour"):
            qa_lm("hi")


_SPENDER = """
import sys
from dspyo3_core.lm import LMCall
from dspyo3_core.native_lm import PRICING
from dspyo3_production.cost import Budget, BudgetExceededError, CostTracker
import dspy

PRICING.set("openai/priced", input_per_mtok=1.0, output_per_mtok=1.0)
tracker = CostTracker([Budget(0.01)], redis_url=sys.argv[1], namespace=sys.argv[2])
call = LMCall(lm=dspy.LM("openai/priced", max_tokens=1000), messages=[{"role": "user", "content": "x"}])
mode = sys.argv[3]
if mode == "crash":  # reserve, then die before settling
    tracker.reserve(call)
    print("reserved", flush=True)
    import os
    os._exit(0)
granted = refused = 0
for _ in range(10):
    try:
        reservation = tracker.reserve(call)
    except BudgetExceededError:
        refused += 1
        continue
    granted += 1
    tracker.settle(reservation, 0.001)
print(granted, refused, flush=True)
"""


def _spender(redis_url: str, namespace: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _SPENDER, redis_url, namespace, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_budgets_hold_across_real_processes(redis_url: str) -> None:
    CostTracker(redis_url=redis_url, namespace="t-procs").reset()
    procs = [_spender(redis_url, "t-procs", "spend") for _ in range(3)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(tuple(int(x) for x in out.split()))
    granted = sum(g for g, _ in results)
    total = CostTracker(redis_url=redis_url, namespace="t-procs").totals("total")["total"]
    # each call reserves ~$0.001 worst case and costs $0.001: three processes x 10 calls cannot all fit in $0.01
    assert total <= 0.01 + 1e-9 and sum(r for _, r in results) > 0 and granted >= 5
    assert total == pytest.approx(0.001 * granted)


def test_a_crashed_process_reservation_is_given_back_after_its_ttl(redis_url: str) -> None:
    from dspyo3_core.lm import LMCall

    PRICING.set("openai/priced", input_per_mtok=1.0, output_per_mtok=1.0)
    try:
        tracker = CostTracker([Budget(0.0015)], redis_url=redis_url, namespace="t-crash", reservation_ttl=1.0)
        tracker.reset()
        # the crashing process holds its worst case (~$0.001) with the default 600 s TTL
        proc = _spender(redis_url, "t-crash", "crash")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "reserved" in out, err
        client = tracker._redis
        (hold,) = client.zrange("t-crash:cost:holds", 0, -1)
        call = LMCall(lm=dspy.LM("openai/priced", max_tokens=1000), messages=[{"role": "user", "content": "x"}])
        with pytest.raises(BudgetExceededError):  # the dead process's hold still counts while its TTL runs
            tracker.reserve(call)
        client.zadd("t-crash:cost:holds", {hold: 0})  # its TTL has run out (set by hand rather than waited for)
        reservation = tracker.reserve(call)  # swept: the budget is whole again
        assert reservation.hold is not None
        reserved = {k.decode(): float(v) for k, v in client.hgetall("t-crash:cost:reserved").items()}
        assert reserved["total"] == pytest.approx(reservation.estimate)
        # a settle that comes after its own hold was swept adds its cost but gives nothing back twice
        late = CostTracker([Budget(1.0)], redis_url=redis_url, namespace="t-crash", reservation_ttl=0.2)
        stale = late.reserve(call)
        time.sleep(0.4)
        tracker.settle(reservation, 0.0005)
        with pytest.raises(BudgetExceededError):
            tracker.reserve(call)  # sweeps the stale hold, then: $0.0005 spent + ~$0.001 worst case > $0.0015
        reserved = {k.decode(): float(v) for k, v in client.hgetall("t-crash:cost:reserved").items()}
        assert abs(reserved["total"]) < 1e-9
        late.settle(stale, 0.0)  # its hold is gone: nothing is given back a second time
        reserved = {k.decode(): float(v) for k, v in client.hgetall("t-crash:cost:reserved").items()}
        assert abs(reserved["total"]) < 1e-9
        assert tracker.totals("total")["total"] == pytest.approx(0.0005)
    finally:
        PRICING._overrides.pop("openai/priced", None)
        PRICING._memo.clear()


def test_the_tracker_prices_a_native_lm_at_its_own_price() -> None:
    from dspyo3_core.lm import LMCall
    from dspyo3_core.native_lm import NativeLM

    lm = NativeLM("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", api_key="sk-test-0000",
                  pricing={"input_per_mtok": 100.0, "output_per_mtok": 200.0})
    tracker = CostTracker()
    assert tracker.price("openai/gpt-4o-mini", lm) == (100.0, 200.0)
    assert tracker.cost("openai/gpt-4o-mini", {"prompt_tokens": 1000, "completion_tokens": 500}, lm=lm) == \
        pytest.approx(0.2)
    call = LMCall(lm=lm, messages=[{"role": "user", "content": "x" * 30}], kwargs={"max_tokens": 10})
    prompt_tokens = len(orjson.dumps(call.messages)) // 3 + 1
    assert tracker.estimate(call) == pytest.approx((prompt_tokens * 100.0 + 10 * 200.0) / 1e6)
    assert tracker.price("openai/gpt-4o-mini") != (100.0, 200.0)  # the table's price for other LMs
    # what the stack runs after each call: settle_call prices at the LM's own price too
    cost = tracker.settle_call(tracker.reserve(call), "openai/gpt-4o-mini",
                               {"prompt_tokens": 1000, "completion_tokens": 500}, None, lm)
    assert cost == pytest.approx(0.2) and tracker.totals("total") == {"total": pytest.approx(0.2)}


def test_disable_close_releases_redis_connections(redis_url: str) -> None:
    stack = prod.Production(cache=prod.TieredCache(redis_url=redis_url, namespace="t-close"), metrics=False,
                            log_events=False, breaker=prod.CircuitBreaker(redis_url=redis_url, namespace="t-close"),
                            costs=CostTracker(redis_url=redis_url, namespace="t-close"))
    prod.enable(stack)
    assert stack.cache is not None and stack.cache.redis is not None
    stack.cache.redis.put("probe", b"x")  # starts the background writer
    assert stack.cache.flush()
    prod.disable(close=True)
    assert stack.breaker is not None and not stack.breaker._use_redis()
    assert stack.costs is not None and stack.costs._redis is None
    assert stack.cache is not None and stack.cache.redis is not None and not stack.cache.redis._writer.is_alive()
    stack.breaker.before(MODEL)  # both keep working on local state
    stack.costs.settle(stack.costs.reserve(_plain_call()), 0.1)
    assert stack.costs.totals("total") == {"total": pytest.approx(0.1)}


def _plain_call() -> Any:
    from dspyo3_core.lm import LMCall

    return LMCall(lm=dspy.LM(MODEL), messages=[{"role": "user", "content": "x"}])


def test_models_priced_nowhere_are_warned_about_or_priced_at_the_default(caplog: pytest.LogCaptureFixture) -> None:
    from dspyo3_core.lm import LMCall

    call = LMCall(lm=dspy.LM("openai/nowhere-priced", max_tokens=100), messages=[{"role": "user", "content": "x"}])
    usage = {"prompt_tokens": 1000, "completion_tokens": 100}
    plain = CostTracker([Budget(1.0)])
    with caplog.at_level("WARNING", logger="dspyo3.production.cost"):
        assert plain.estimate(call) == 0.0 and plain.estimate(call) == 0.0
    warned = [r for r in caplog.records if "openai/nowhere-priced" in r.getMessage()]
    assert len(warned) == 1 and "default_price" in warned[0].getMessage()  # once per model, with the fix
    assert plain.cost("openai/nowhere-priced", usage, reported=0.5) == 0.5  # the LM's own figure
    assert plain.cost("openai/nowhere-priced", usage) == 0.0

    priced = CostTracker([Budget(1.0)], default_price=(2.0, 10.0))
    prompt_tokens = len(orjson.dumps(call.messages)) // 3 + 1
    assert priced.estimate(call) == pytest.approx((prompt_tokens * 2.0 + 100 * 10.0) / 1e6)
    assert priced.cost("openai/nowhere-priced", usage) == pytest.approx((1000 * 2.0 + 100 * 10.0) / 1e6)
    assert priced.cost("openai/nowhere-priced", usage, reported=0.5) == 0.5  # a reported cost still wins
    cost = priced.settle_call(priced.reserve(call), "openai/nowhere-priced", usage, None, call.lm)
    assert cost == pytest.approx(0.003) and priced.totals("total") == {"total": pytest.approx(0.003)}
    with pytest.raises(ValueError, match="default_price"):
        CostTracker(default_price=(-1.0, 1.0))


def test_each_budget_counts_only_its_own_refusals_and_tells_its_observer() -> None:
    call = _budget_call()
    seen: list[BudgetExceededError] = []
    per_run = Budget(1.0, per="run", name="run-budget", on_refuse=seen.append)
    per_user = Budget(0.0, per="user", name="user-budget")
    tracker = CostTracker([per_run, per_user], default_price=(1.0, 1.0))
    with prod.attribute(user="alice"):  # refused by the user budget only
        for _ in range(3):
            with pytest.raises(BudgetExceededError) as refused:
                tracker.reserve(call)
            assert refused.value.budget is per_user
    assert (per_user.refusals, per_run.refusals, seen) == (3, 0, [])
    tiny = Budget(0.0, per="run", on_refuse=seen.append)
    threaded = CostTracker([tiny], default_price=(1.0, 1.0))

    def refuse_many() -> None:
        with prod.attribute(run="r1"):
            for _ in range(50):
                with pytest.raises(BudgetExceededError):
                    threaded.reserve(call)

    workers = [threading.Thread(target=refuse_many) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert tiny.refusals == 400 and len(seen) == 400 and all(e.budget is tiny and e.scope == "run=r1" for e in seen)
    assert per_run.refusals == 0 and Budget(1.0) == Budget(1.0)  # the counter is not part of a budget's identity


def test_a_failing_refusal_observer_does_not_replace_the_refusal() -> None:
    def broken(error: BudgetExceededError) -> None:
        raise RuntimeError("observer bug")

    budget = Budget(0.0, on_refuse=broken)
    with pytest.raises(BudgetExceededError):
        CostTracker([budget], default_price=(1.0, 1.0)).reserve(_budget_call())
    assert budget.refusals == 1


def _budget_call() -> Any:
    from dspyo3_core.lm import LMCall

    return LMCall(lm=dspy.LM("openai/nowhere-priced-budgets", max_tokens=10),
                  messages=[{"role": "user", "content": "x"}])


def test_the_tracker_takes_the_lm_layers_cost_when_priced_from_the_same_place() -> None:
    from dspyo3_core.pricing import PricingTable

    PRICING.set("openai/once-priced", input_per_mtok=1.0, output_per_mtok=1.0)
    try:
        usage = {"prompt_tokens": 1000, "completion_tokens": 1000}
        table_price = 0.002
        tracker = CostTracker()
        lm = dspy.utils.DummyLM([])
        # the LM layer's figure, priced from the same table (or the LM's own price), is the one figure
        assert tracker.settle_call(None, "openai/once-priced", usage, 0.5, lm, "pricing") == 0.5
        assert tracker.settle_call(None, "openai/once-priced", usage, 0.25, lm, "lm") == 0.25
        # a figure from elsewhere (LiteLLM's report) gives way to the table, as before
        assert tracker.settle_call(None, "openai/once-priced", usage, 0.5, lm, "reported") == \
            pytest.approx(table_price)
        assert tracker.settle_call(None, "openai/once-priced", usage, 0.5, lm) == pytest.approx(table_price)
        # a tracker with its own table prices from it
        other = PricingTable()
        other.set("openai/once-priced", input_per_mtok=10.0, output_per_mtok=10.0)
        assert CostTracker(pricing=other).settle_call(None, "openai/once-priced", usage, 0.5, lm, "pricing") == \
            pytest.approx(0.02)
        assert tracker.totals("total") == {"total": pytest.approx(0.75 + 2 * table_price)}
    finally:
        PRICING._overrides.pop("openai/once-priced", None)
        PRICING._memo.clear()
