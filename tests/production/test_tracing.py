"""OpenTelemetry traces from the production stack: LM, cache, breaker and budget spans, inferred and callback
module spans, sampling, configuration, status, masking and the "off" path (SDK ``InMemorySpanExporter``)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import dspyo3_production as prod
from dspyo3_core import spans
from dspyo3_core.config import ConfigError
from dspyo3_core.lm import HookedLM
from dspyo3_core.offline import OfflineLM
from dspyo3_core.plugins import PluginManager
from dspyo3_core.testing.server import LMServer, Reply
from dspyo3_production import logs
from dspyo3_production.breaker import CircuitBreaker, CircuitOpenError
from dspyo3_production.cache import TieredCache
from dspyo3_production.cost import Budget, BudgetExceededError
from dspyo3_production.metrics import Metrics
from dspyo3_production.tracing import Recorder, TracingConfig

from .conftest import answer_for


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


_BUILT: list[prod.Production] = []


@pytest.fixture(autouse=True)
def no_tracer() -> Iterator[None]:
    yield
    spans.install(None)
    while _BUILT:  # stop each test's export thread
        _BUILT.pop().close()


def stack(exporter: InMemorySpanExporter, **kwargs: Any) -> prod.Production:
    tracing = TracingConfig(exporter=exporter, **kwargs.pop("tracing", {}))
    kwargs.setdefault("metrics", False)
    kwargs.setdefault("log_events", False)
    kwargs.setdefault("module_callbacks", False)
    production = prod.Production(tracing=tracing, **kwargs).install()
    _BUILT.append(production)
    return production


def finished(production: prod.Production, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert production.tracer is not None
    assert production.tracer.force_flush(10)
    return list(exporter.get_finished_spans())


def named(found: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in found if s.name.startswith(prefix)]


def all_text(found: list[ReadableSpan]) -> str:
    """Every string a span carries: name, attributes, events and status."""
    parts = []
    for s in found:
        parts += [s.name, json.dumps(dict(s.attributes or {}), default=str), s.status.description or ""]
        parts += [json.dumps(dict(e.attributes or {}), default=str) for e in s.events]
    return "\n".join(parts)


def test_hooked_lm_span_and_cache_lookups(exporter: InMemorySpanExporter, qa_lm: HookedLM,
                                          metrics: Metrics) -> None:
    production = stack(exporter, cache=TieredCache(metrics=metrics))
    qa_lm.kwargs["temperature"] = 0.5
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=qa_lm):
        assert predict(question="q1").answer == answer_for("q1")
        assert predict(question="q1").answer == answer_for("q1")  # a memory-tier hit
    found = finished(production, exporter)
    lm_spans = named(found, "chat gpt-4o-mini")
    assert len(lm_spans) == 2
    miss, hit = sorted(lm_spans, key=lambda s: s.start_time or 0)
    a = dict(miss.attributes or {})
    assert miss.kind is SpanKind.CLIENT and miss.status.status_code is StatusCode.UNSET
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.system"] == a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini" and a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert a["gen_ai.response.finish_reasons"] == ("stop",) and a["gen_ai.response.model"]
    assert a["server.address"] == "127.0.0.1" and isinstance(a["server.port"], int)
    assert a["dspyo3.cache.hit"] is False and a["dspyo3.lm.class"] == "HookedLM" and "dspyo3.cost_usd" in a
    assert "gen_ai.input.messages" not in a  # content capture is off by default
    h = dict(hit.attributes or {})
    assert h["dspyo3.cache.hit"] is True and h["dspyo3.cache.tier"] == "memory"
    lookups = named(found, "dspyo3.cache.lookup")
    assert lookups and all(s.parent is not None for s in lookups)
    parents = {s.parent.span_id for s in lookups if s.parent is not None}
    assert parents <= {miss.context.span_id, hit.context.span_id}
    hits = [s for s in lookups if (s.attributes or {}).get("dspyo3.cache.hit")]
    assert hits and hits[0].parent is not None and hits[0].parent.span_id == hit.context.span_id
    assert dict(hits[0].attributes or {})["dspyo3.cache.tier"] == "memory"
    # no root: each LM call is its own trace
    assert miss.parent is None and miss.context.trace_id != hit.context.trace_id


def test_offline_lm_and_the_inferred_predictor_chain(exporter: InMemorySpanExporter) -> None:
    production = stack(exporter)
    program = dspy.ChainOfThought("question -> answer")
    with dspy.context(lm=OfflineLM()), prod.span("answer", question_id="7"):
        program(question="what is two and two?")
    found = finished(production, exporter)
    root = named(found, "answer")[0]
    cot = named(found, "dspyo3.module ChainOfThought")[0]
    predictor = named(found, "dspyo3.module Predict")[0]
    lm_span = named(found, "chat extractive")[0]
    assert root.parent is None and dict(root.attributes or {})["question_id"] == "7"
    assert cot.parent is not None and cot.parent.span_id == root.context.span_id
    assert predictor.parent is not None and predictor.parent.span_id == cot.context.span_id
    assert lm_span.parent is not None and lm_span.parent.span_id == predictor.context.span_id
    assert {s.context.trace_id for s in found} == {root.context.trace_id}
    p = dict(predictor.attributes or {})
    assert p["dspyo3.span.inferred"] is True and p["dspyo3.module.path"] == "predict"
    assert (cot.start_time or 0) <= (lm_span.start_time or 0) and (lm_span.end_time or 0) <= (cot.end_time or 0)
    assert dict(lm_span.attributes or {})["dspyo3.lm.class"] == "OfflineLM"


def test_native_lm_span(exporter: InMemorySpanExporter, qa_server: LMServer) -> None:
    from dspyo3_core.native_lm import NativeLM

    production = stack(exporter)
    lm = NativeLM("openai/gpt-4o-mini", api_base=qa_server.api_base, api_key="sk-test-abcdefghijklmnop",
                  num_retries=0, cache=False)
    with dspy.context(lm=lm):
        assert dspy.Predict("question -> answer")(question="n1").answer == answer_for("n1")
    found = finished(production, exporter)
    (lm_span,) = named(found, "chat gpt-4o-mini")
    a = dict(lm_span.attributes or {})
    assert a["dspyo3.lm.class"] == "NativeLM" and a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.usage.input_tokens"] > 0 and a["server.address"] == "127.0.0.1"


def test_dspy_lm_on_the_native_engine_sends_the_trace(exporter: InMemorySpanExporter, qa_server: LMServer,
                                                       manager: PluginManager) -> None:
    """A ``dspy.LM`` (here HookedLM) whose engine is the Rust client: the LM server joins the trace (its request
    carries a ``traceparent`` of the LM span's trace), the HTTP attempt is a CLIENT span under the LM span, and the
    LM span names the server."""
    from dspyo3_core.native_engine import native_lm

    production = stack(exporter)
    lm = native_lm("openai/gpt-4o-mini", lm_class=HookedLM, api_base=qa_server.api_base,
                   api_key="sk-test-abcdefghijklmnop", num_retries=0, cache=False, plugin_manager=manager)
    with prod.span("request"), dspy.context(lm=lm):
        assert dspy.Predict("question -> answer")(question="e1").answer == answer_for("e1")
    found = finished(production, exporter)
    (lm_span,) = named(found, "chat gpt-4o-mini")
    (attempt,) = named(found, "POST")
    sent = qa_server.requests[-1]["_headers"]["traceparent"]
    _, trace_hex, span_hex, _ = sent.split("-")
    assert int(trace_hex, 16) == lm_span.context.trace_id == attempt.context.trace_id
    assert int(span_hex, 16) == attempt.context.span_id and attempt.parent.span_id == lm_span.context.span_id
    a = dict(lm_span.attributes or {})
    assert a["dspyo3.lm.class"] == "HookedLM" and a["server.address"] == "127.0.0.1"
    assert a["gen_ai.usage.input_tokens"] > 0


def test_async_deferred_call_keeps_its_span_current(exporter: InMemorySpanExporter, qa_lm: HookedLM) -> None:
    production = stack(exporter)
    seen: list[Any] = []

    def emit(name: str, *args: Any, **kwargs: Any) -> None:
        seen.append((name, spans.current_ids()))

    production.log_events = True

    async def main() -> str:
        with prod.span("async root"):
            out = await dspy.Predict("question -> answer").acall(question="a1")
        return str(out.answer)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(logs, "emit", emit)
        mp.setattr(logs.EVENTS, "isEnabledFor", lambda level: True)
        with dspy.context(lm=qa_lm):
            assert asyncio.run(main()) == answer_for("a1")
    found = finished(production, exporter)
    (lm_span,) = named(found, "chat ")
    (root,) = named(found, "async root")
    assert lm_span.context.trace_id == root.context.trace_id
    # the lm_call event was written while the LM span was current: it names the span
    assert ("lm_call", (f"{lm_span.context.trace_id:032x}", f"{lm_span.context.span_id:016x}")) in seen
    assert spans.CURRENT.get() is None


def test_callbacks_mode_gives_exact_module_and_adapter_spans(exporter: InMemorySpanExporter,
                                                             qa_lm: HookedLM) -> None:
    production = stack(exporter, tracing={"modules": "callbacks"})
    assert production.callback is not None and production.callback.spans
    with dspy.context(lm=qa_lm):
        dspy.Predict("question -> answer")(question="c1")
    found = finished(production, exporter)
    (module,) = named(found, "dspyo3.module Predict")
    (fmt,) = named(found, "dspyo3.adapter.format")
    (parse,) = named(found, "dspyo3.adapter.parse")
    (lm_span,) = named(found, "chat ")
    assert module.parent is None and "dspyo3.span.inferred" not in (module.attributes or {})
    for child in (fmt, parse, lm_span):
        assert child.parent is not None and child.parent.span_id == module.context.span_id
    assert dict(fmt.attributes or {})["dspyo3.adapter"] == "ChatAdapter"


def test_module_histograms_carry_the_module_spans_exemplar(exporter: InMemorySpanExporter,
                                                            qa_lm: HookedLM) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

    from dspyo3_production.metrics import Metrics

    registry = CollectorRegistry()
    production = stack(exporter, tracing={"modules": "callbacks"}, metrics=Metrics(registry),
                       module_callbacks=True)
    with dspy.context(lm=qa_lm):
        dspy.Predict("question -> answer")(question="exemplar")
    (module,) = named(finished(production, exporter), "dspyo3.module Predict")
    text = openmetrics(registry).decode()
    lines = [line for line in text.splitlines() if "module_duration" in line and "# {" in line]
    assert lines, text
    assert f'trace_id="{module.context.trace_id:032x}"' in lines[0]
    assert f'span_id="{module.context.span_id:016x}"' in lines[0]
    assert "# {" not in generate_latest(registry).decode()  # the 0.0.4 text format has no exemplars


def test_breaker_open_fails_the_lm_span(exporter: InMemorySpanExporter, qa_server: LMServer,
                                        manager: PluginManager) -> None:
    lm = HookedLM("openai/gpt-4o-mini", api_base=qa_server.api_base, api_key="sk-test-abcdefghijklmnop",
                  num_retries=0, cache=False, engine="litellm", plugin_manager=manager)
    production = stack(exporter, breaker=CircuitBreaker(failure_threshold=1, reset_timeout=60))
    qa_server.script(Reply.server_error())
    with pytest.raises(Exception):
        lm("x")
    with pytest.raises(CircuitOpenError):
        lm("y")
    found = finished(production, exporter)
    failed, refused = sorted(named(found, "chat "), key=lambda s: s.start_time or 0)
    assert failed.status.status_code is StatusCode.ERROR
    assert refused.status.status_code is StatusCode.ERROR
    assert dict(refused.attributes or {})["error.type"] == "CircuitOpenError"
    (check,) = named(found, "dspyo3.breaker.check")
    assert check.status.status_code is StatusCode.ERROR and check.parent is not None
    assert check.parent.span_id == refused.context.span_id
    assert dict(check.attributes or {})["dspyo3.breaker.state"] == "open"
    assert any(e.name == "exception" for e in refused.events)


def test_budget_refusal(exporter: InMemorySpanExporter, qa_lm: HookedLM) -> None:
    production = stack(exporter, budgets=[Budget(1e-9)])
    with pytest.raises(BudgetExceededError):
        qa_lm("expensive")
    found = finished(production, exporter)
    (lm_span,) = named(found, "chat ")
    (refused,) = named(found, "dspyo3.budget.refused")
    assert lm_span.status.status_code is StatusCode.ERROR
    assert dict(lm_span.attributes or {})["error.type"] == "BudgetExceededError"
    assert refused.status.status_code is StatusCode.ERROR and refused.parent is not None
    assert refused.parent.span_id == lm_span.context.span_id
    assert dict(refused.attributes or {})["dspyo3.budget.estimate_usd"] > 0


def test_parallel_keeps_the_parent(exporter: InMemorySpanExporter) -> None:
    production = stack(exporter)
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=OfflineLM()), prod.span("fan out"):
        dspy.Parallel(num_threads=3)([(predict, {"question": f"q{i}"}) for i in range(4)])
    found = finished(production, exporter)
    (root,) = named(found, "fan out")
    lm_spans = named(found, "chat ")
    assert len(lm_spans) == 4
    assert {s.context.trace_id for s in lm_spans} == {root.context.trace_id}
    predictors = named(found, "dspyo3.module Predict")
    assert predictors and all(p.parent is not None and p.parent.span_id == root.context.span_id
                              for p in predictors)


def test_sampling_zero_records_nothing_but_propagates(exporter: InMemorySpanExporter) -> None:
    production = stack(exporter, tracing={"sample_ratio": 0.0})
    tracer = production.tracer
    assert tracer is not None
    with prod.span("unsampled") as root:
        parent = tracer.traceparent()
        assert parent is not None and parent.endswith("-00") and root.ref.sampled is False
        with dspy.context(lm=OfflineLM()):
            dspy.Predict("question -> answer")(question="s")
    assert finished(production, exporter) == []
    # a sampled parent wins (parent-based)
    with spans.remote_parent(f"00-{'a' * 32}-{'b' * 16}-01"), prod.span("continued"):
        pass
    (continued,) = finished(production, exporter)
    assert continued.context.trace_id == int("a" * 32, 16) and continued.parent is not None
    assert continued.parent.is_remote


def test_masking_of_keys_headers_and_content(exporter: InMemorySpanExporter, qa_server: LMServer,
                                             manager: PluginManager) -> None:
    key = "sk-test-masking-0123456789abcdef"
    header_secret = "collector-secret-0123456789"
    lm = HookedLM("openai/gpt-4o-mini", api_base=qa_server.api_base, api_key=key, num_retries=0, cache=False,
                  engine="litellm", plugin_manager=manager)
    production = stack(exporter, tracing={"capture_content": True, "headers": {"Authorization": header_secret}})
    qa_server.script(Reply.server_error(message=f"bad key {key} and {header_secret}"))
    with pytest.raises(Exception):
        lm(f"my key is {key}")
    with dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question=f"echo {header_secret}")
    tracer = production.tracer
    assert tracer is not None
    with prod.span("manual") as opened:
        opened.set("note", f"token {header_secret}")
        opened.fail(RuntimeError(f"failed with {key}"))
    found = finished(production, exporter)
    text = all_text(found)
    assert key not in text and header_secret not in text
    assert "gen_ai.input.messages" in text and "gen_ai.output.messages" in text
    assert TracingConfig(headers={"Authorization": header_secret}).status()["header_names"] == ["authorization"]


def test_config_precedence_table_then_env_then_off(tmp_path: Path) -> None:
    assert TracingConfig.from_env({}) is None
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SERVICE_NAME": "svc",
           "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=abc%3D123456789,team=ml", "OTEL_TRACES_SAMPLER": "traceidratio",
           "OTEL_TRACES_SAMPLER_ARG": "0.25", "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}
    config = TracingConfig.from_env(env)
    assert config is not None and config.source == "env"
    assert config.endpoint == "http://collector:4318/v1/traces" and config.service_name == "svc"
    assert config.headers == {"x-api-key": "abc=123456789", "team": "ml"}
    assert config.sample_ratio == 0.25 and config.capture_content is True
    assert TracingConfig.from_env({**env, "OTEL_SDK_DISABLED": "true"}) is None
    assert TracingConfig.from_env({**env, "OTEL_TRACES_EXPORTER": "none"}) is None
    grpc = TracingConfig.from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317",
                                   "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"})
    assert grpc is not None and grpc.protocol == "grpc" and grpc.endpoint == "http://c:4317"
    table = TracingConfig.from_table({"endpoint": "http://table/v1/traces", "sample_ratio": 1.0}, env)
    assert table is not None and table.source == "dspyo3.toml"
    assert table.endpoint == "http://table/v1/traces" and table.sample_ratio == 1.0 and table.service_name == "svc"
    assert TracingConfig.from_table({"enabled": False}, env) is None
    assert TracingConfig.from_table({}, {"OTEL_SDK_DISABLED": "true"}) is None
    with pytest.raises(ConfigError, match="sample_rate"):
        TracingConfig.from_table({"sample_rate": 1.0}, {})
    with pytest.raises(ConfigError, match="protocol"):
        TracingConfig.from_table({"protocol": "thrift"}, {})
    for endpoint in ("not a url", "ftp://collector/v1/traces", "http:///v1/traces", "http://host:99999/v1"):
        with pytest.raises(ConfigError, match=r"endpoint = .* is not an http\(s\) URL with a host"):
            TracingConfig.from_table({"endpoint": endpoint}, {})


def test_config_table_and_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manager: PluginManager) -> None:
    from click.testing import CliRunner

    from dspyo3_core.cli import build_cli
    from dspyo3_production.settings import from_settings

    for name in [k for k in __import__("os").environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "dspyo3.toml"
    path.write_text('[production]\nlog_events = false\n[production.tracing]\nexporter = "none"\n'
                    'service_name = "qa"\nheaders = {authorization = "Bearer status-secret-123456"}\n'
                    'modules = "callbacks"\n')
    monkeypatch.setenv("DSPYO3_CONFIG", str(path))
    production = from_settings(apply_pricing=False)
    assert production is not None and isinstance(production.tracer, Recorder)
    assert production.tracer.modules == "callbacks" and production.callback is not None
    production.close()
    result = CliRunner().invoke(build_cli(manager), ["production", "status", "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)["tracing"]
    assert status["enabled"] and status["source"] == "dspyo3.toml" and status["service_name"] == "qa"
    assert status["header_names"] == ["authorization"] and "status-secret" not in result.output
    text = CliRunner().invoke(build_cli(manager), ["production", "status"])
    assert "tracing" in text.output and "status-secret" not in text.output
    path.write_text("[production]\nlog_events = false\n[production.tracing]\nenabled = false\n")
    off = from_settings(apply_pricing=False)
    assert off is not None and off.tracer is None
    path.write_text("[production]\n[production.tracing]\nendpiont = \"x\"\n")
    with pytest.raises(ConfigError, match="endpoint"):
        from_settings(apply_pricing=False)


def test_off_imports_no_opentelemetry_and_installs_no_tracer() -> None:
    code = ("import sys, os\n"
            "for k in [k for k in os.environ if k.startswith('OTEL_')]: del os.environ[k]\n"
            "import dspyo3_production as prod, dspyo3_production.stack\n"
            "from dspyo3_core import spans\n"
            "p = prod.Production(metrics=False, log_events=False).install()\n"
            "from dspyo3_core.offline import OfflineLM\n"
            "OfflineLM()(messages=[{'role': 'user', 'content': 'hi'}])\n"
            "print(p.tracer is None, spans.TRACER is None,"
            " any(m.startswith('opentelemetry') for m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "False"]


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_sdk(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("opentelemetry.sdk"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sdk)
    with pytest.raises(ConfigError, match=r"dspyo3-production\[tracing\]"):
        Recorder(TracingConfig(exporter="none"))


def test_close_flushes_and_uninstall_clears_the_tracer(exporter: InMemorySpanExporter) -> None:
    production = stack(exporter)
    assert spans.TRACER is production.tracer
    with prod.span("last"):
        pass
    production.uninstall()
    assert spans.TRACER is None
    production.close()
    assert [s.name for s in exporter.get_finished_spans()] == ["last"]
    with prod.span("after close") as nothing:  # tracing off again: the helper yields None
        assert nothing is None


_INTEROP = """
import dspy
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from openinference.instrumentation.dspy import DSPyInstrumentor

import dspyo3_production as prod
from dspyo3_core.lm import HookedLM
from dspyo3_core.plugins import core_only_manager
from dspyo3_core.testing.server import LMServer, field_responder
from dspyo3_production import plugin
from dspyo3_production.tracing import TracingConfig

theirs, ours_exporter = InMemorySpanExporter(), InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(theirs))
DSPyInstrumentor().instrument(tracer_provider=provider)
pm = core_only_manager()
pm.register(plugin, name="production", distribution="dspyo3-production")
production = prod.Production(metrics=False, log_events=False, module_callbacks=False,
                             tracing=TracingConfig(exporter=ours_exporter)).install()
with LMServer(field_responder(lambda fields: {"answer": "ok"})) as server:
    lm = HookedLM("openai/gpt-4o-mini", api_base=server.api_base, api_key="sk-test-abcdefghijklmnop",
                  num_retries=0, cache=False, engine="litellm", plugin_manager=pm)
    with dspy.context(lm=lm), prod.span("interop root"):
        dspy.Predict("question -> answer")(question="i1")
production.tracer.force_flush()
ours, foreign = list(ours_exporter.get_finished_spans()), list(theirs.get_finished_spans())
(root,) = [s for s in ours if s.name == "interop root"]
(lm_span,) = [s for s in ours if s.name.startswith("chat ")]
assert foreign and {s.context.trace_id for s in foreign + ours} == {root.context.trace_id}
assert not [s for s in ours if s.name.startswith("dspyo3.module")]  # openinference has them ("auto")
ids = {s.context.span_id for s in foreign + ours}
assert all(s.parent is None or s.parent.span_id in ids for s in foreign + ours if s is not root)
assert lm_span.parent.span_id in {s.context.span_id for s in foreign}  # ours nest under theirs
assert any(s.parent is not None and s.parent.span_id == root.context.span_id for s in foreign)  # theirs under ours
print("ok")
"""


def test_openinference_interop_one_trace_without_duplicate_module_spans() -> None:
    # in a process of its own: openinference's uninstrument() leaves Module.__call__ wrapped
    pytest.importorskip("openinference.instrumentation.dspy")
    out = subprocess.run([sys.executable, "-c", _INTEROP], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == "ok"
