"""Acceptance of tracing against a real collector: spans exported over OTLP to Arize Phoenix (the session
``phoenix`` fixture, started once) and read back through Phoenix's REST API.

* a served RAG call continues an incoming ``traceparent``, the LM server receives the same trace id, and the same
  call again hits the cache (no attempt span, no new LM request);
* faults carry ERROR status: 429s retried (one span per attempt), breaker open, budget refusal, a tool timeout in
  a ReAct agent run;
* no secret (API key, collector header, a key echoed in an error) is in any stored span nor in Phoenix's database;
* the gRPC exporter;
* openinference-instrumentation-dspy and dspyo3 together give one trace, nested, with no duplicate module spans.

Each test exports to a project of its own (resource attribute ``openinference.project.name``). Phoenix keeps
neither span kind nor ``service.name``, so kinds are not asserted here (tests/production/test_tracing.py does).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import dspy
import httpx
import pytest

from dspyo3_core import spans
from dspyo3_core.offline import OfflineLM
from dspyo3_core.testing.phoenix import PhoenixProcess
from dspyo3_core.testing.server import LMServer, Reply, chat_reply, field_responder

tracing = pytest.importorskip("dspyo3_production.tracing", reason="the production tracer is not there yet")

import dspyo3_production as prod  # noqa: E402
from dspyo3_production.breaker import CircuitBreaker, CircuitOpenError  # noqa: E402
from dspyo3_production.cache import TieredCache  # noqa: E402
from dspyo3_production.cost import Budget, BudgetExceededError  # noqa: E402

Span = dict[str, Any]


_STACKS: list[prod.Production] = []


@pytest.fixture(autouse=True)
def no_tracer() -> Iterator[None]:
    yield
    spans.install(None)
    while _STACKS:  # flush and stop each recorder while Phoenix is still there
        _STACKS.pop().close()


@pytest.fixture
def project(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def rag_server() -> Iterator[LMServer]:
    """Answers every question with ``answer to <question>``."""
    with LMServer(field_responder(lambda fields: {"answer": f"answer to {fields['question'][:20]}"})) as server:
        yield server


def config(phoenix: PhoenixProcess, project: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "enabled": True, "endpoint": phoenix.otlp_http, "protocol": "http/protobuf", "sample_ratio": 1.0,
        "service_name": "dspyo3-acceptance", "resource": {"openinference.project.name": project},
    }
    values.update(overrides)
    return tracing.TracingConfig(**values)


def production(phoenix: PhoenixProcess, project: str, tracing_overrides: dict[str, Any] | None = None,
               **kwargs: Any) -> prod.Production:
    kwargs.setdefault("metrics", False)
    kwargs.setdefault("log_events", False)
    kwargs.setdefault("module_callbacks", False)
    stack = prod.Production(tracing=config(phoenix, project, **(tracing_overrides or {})), **kwargs)
    _STACKS.append(stack)
    return stack.install()


def flushed(stack: prod.Production) -> None:
    assert stack.tracer is not None
    assert stack.tracer.force_flush(15)


def native_lm(server: LMServer, **kwargs: Any) -> Any:
    from dspyo3_core.native_lm import NativeLM

    kwargs.setdefault("api_key", "sk-test-abcdefghijklmnop")
    kwargs.setdefault("num_retries", 0)
    return NativeLM("openai/gpt-4o-mini", api_base=server.api_base, **kwargs)


def named(found: list[Span], prefix: str) -> list[Span]:
    return [s for s in found if s["name"].startswith(prefix)]


def attrs(span: Span) -> dict[str, Any]:
    return dict(span.get("attributes") or {})


def ancestors(span: Span, found: list[Span]) -> list[Span]:
    by_id = {s["context"]["span_id"]: s for s in found}
    chain, parent = [], span.get("parent_id")
    while parent and parent in by_id:
        chain.append(by_id[parent])
        parent = by_id[parent].get("parent_id")
    return chain


def children(span: Span, found: list[Span]) -> list[Span]:
    return [s for s in found if s.get("parent_id") == span["context"]["span_id"]]


def settle(phoenix: PhoenixProcess, project: str, ready: Callable[[list[Span]], bool], timeout: float = 30) -> list[
        Span]:
    """The project's spans once ``ready(spans)`` holds (Phoenix ingests asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        found = phoenix.all_spans(project)
        if found and ready(found):
            time.sleep(0.3)  # anything still in flight from the same export
            return phoenix.all_spans(project)
        if time.monotonic() > deadline:
            names = sorted(s["name"] for s in found)
            raise AssertionError(f"phoenix project {project!r} has {names}")
        time.sleep(0.2)


# -- 1. a served RAG call --------------------------------------------------------------------------------------------


class RAG(dspy.Module):
    def __init__(self, lm: dspy.BaseLM) -> None:
        super().__init__()
        from dspyo3_rag.dspy_rm import RetrieverRM
        from dspyo3_rag.retrieve import BM25Retriever

        retriever = BM25Retriever()
        retriever.add(["d1", "d2", "d3"], ["Paris is the capital of France.", "Berlin is in Germany.",
                                            "The Seine flows through Paris."])
        self.rm = RetrieverRM(retriever)
        self.retrieve = dspy.Retrieve(k=2)
        self.answer = dspy.Predict("question -> answer")  # serve takes its input fields from the predictors
        self.answer.set_lm(lm)

    def forward(self, question: str) -> dspy.Prediction:
        with dspy.context(rm=self.rm):
            passages = self.retrieve(question).passages
        return self.answer(question=f"{question} (context: {' '.join(passages)})")

    async def aforward(self, question: str) -> dspy.Prediction:
        with dspy.context(rm=self.rm):
            passages = self.retrieve(question).passages
        return await self.answer.acall(question=f"{question} (context: {' '.join(passages)})")


class Source:
    def __init__(self, module: dspy.Module) -> None:
        self.name, self.reference, self.stage, self.module = "rag", "memory:rag", None, module

    def current(self) -> str:
        return "1.0.0"

    def load(self, version: str) -> dspy.Module:
        return self.module


def uvicorn_server(app: Any) -> Any:
    import contextlib

    import uvicorn

    @contextlib.contextmanager
    def run() -> Iterator[str]:
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        finally:
            server.should_exit = True
            thread.join(20)

    return run()


def test_served_rag_trace_continues_traceparent_and_hits_the_cache(phoenix: PhoenixProcess, project: str,
                                                                   rag_server: LMServer) -> None:
    pytest.importorskip("dspyo3_rag")
    from dspyo3_production.serve.app import create_app
    from dspyo3_production.serve.config import ServeConfig

    stack = production(phoenix, project, cache=TieredCache())
    app = create_app(ServeConfig(), sources={"rag": Source(RAG(native_lm(rag_server, cache=True)))})
    incoming_trace, incoming_parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    with uvicorn_server(app) as base:
        first = httpx.post(f"{base}/v1/programs/rag", json={"question": "capital of France?"}, timeout=30,
                           headers={"traceparent": f"00-{incoming_trace}-{incoming_parent}-01"})
        second = httpx.post(f"{base}/v1/programs/rag", json={"question": "capital of France?"}, timeout=30)
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert first.json()["outputs"] == second.json()["outputs"]
    assert first.json()["cache_hit"] is False and second.json()["cache_hit"] is True
    flushed(stack)
    assert len(rag_server.requests) == 1  # the second call was answered from the cache

    found = settle(phoenix, project, lambda f: len(named(f, "chat ")) >= 2 and len(named(f, "POST /v1")) >= 2)
    servers = sorted(named(found, "POST /v1/programs"), key=lambda s: s["start_time"])
    assert len(servers) == 2
    one = [s for s in found if s["context"]["trace_id"] == incoming_trace]
    two = [s for s in found if s["context"]["trace_id"] == servers[1]["context"]["trace_id"]]
    assert servers[0]["context"]["trace_id"] == incoming_trace and servers[0]["parent_id"] == incoming_parent
    assert servers[1]["context"]["trace_id"] != incoming_trace
    assert attrs(servers[0])["http.response.status_code"] == 200

    # trace 1: SERVER -> program -> [inferred modules] -> retrieve, LM(miss) -> cache lookup + HTTP attempt
    (program,) = named(one, "dspyo3.program")
    assert servers[0] in ancestors(program, one)
    (retrieve,) = named(one, "retrieve")
    (lm,) = named(one, "chat ")
    assert program in ancestors(retrieve, one) and program in ancestors(lm, one)
    r = attrs(retrieve)
    assert r["dspyo3.retrieval.k"] == 2 and list(r["dspyo3.retrieval.ids"])
    a = attrs(lm)
    assert a["gen_ai.request.model"] == "gpt-4o-mini" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert "dspyo3.cost_usd" in a and a["dspyo3.cache.hit"] is False
    lookups = [s for s in children(lm, one) if s["name"] == "dspyo3.cache.lookup"]
    assert lookups and attrs(lookups[0])["dspyo3.cache.hit"] is False
    (attempt,) = [s for s in children(lm, one) if s["name"] == "POST"]
    assert attrs(attempt)["http.response.status_code"] == 200

    # the LM server saw the same trace, with the attempt span as the parent
    sent = rag_server.requests[0]["_headers"]["traceparent"]
    assert sent.split("-")[1] == incoming_trace and sent.split("-")[2] == attempt["context"]["span_id"]

    # trace 2: a memory-tier hit, no HTTP attempt
    (lm2,) = named(two, "chat ")
    b = attrs(lm2)
    assert b["dspyo3.cache.hit"] is True and b["dspyo3.cache.tier"] == "memory"
    assert not [s for s in children(lm2, two) if s["name"] == "POST"]


# -- 2. faults -------------------------------------------------------------------------------------------------------


def test_rate_limited_attempts_are_spans_with_errors(phoenix: PhoenixProcess, project: str,
                                                     rag_server: LMServer) -> None:
    stack = production(phoenix, project)
    rag_server.script(Reply.rate_limited(retry_after=0.01), Reply.rate_limited(retry_after=0.01),
                      Reply.text(chat_reply(answer="late")))
    with dspy.context(lm=native_lm(rag_server, num_retries=2, cache=False)), prod.span("retry root"):
        assert dspy.Predict("question -> answer")(question="q").answer == "late"
    flushed(stack)
    found = settle(phoenix, project, lambda f: len([s for s in f if s["name"] == "POST"]) >= 3)
    (lm,) = named(found, "chat ")
    attempts = sorted((s for s in children(lm, found) if s["name"] == "POST"), key=lambda s: s["start_time"])
    statuses = [s["status_code"] for s in attempts]
    assert statuses[:2] == ["ERROR", "ERROR"] and statuses[2] != "ERROR" and len(statuses) == 3
    assert [attrs(s)["http.response.status_code"] for s in attempts] == [429, 429, 200]
    sent = [request["_headers"]["traceparent"].split("-") for request in rag_server.requests]
    assert {parts[1] for parts in sent} == {lm["context"]["trace_id"]}
    assert [parts[2] for parts in sent] == [s["context"]["span_id"] for s in attempts]


def test_breaker_open_and_budget_refusal_are_errors(phoenix: PhoenixProcess, project: str,
                                                   rag_server: LMServer) -> None:
    stack = production(phoenix, project, breaker=CircuitBreaker(failure_threshold=1))
    rag_server.script(Reply.server_error())
    lm = native_lm(rag_server, cache=False)
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=lm), prod.span("breaker root"):
        with pytest.raises(Exception):
            predict(question="b1")
        with pytest.raises(CircuitOpenError):
            predict(question="b2")
    stack.uninstall()
    flushed(stack)
    budget_project = f"{project}-budget"
    budget_stack = production(phoenix, budget_project, budgets=[Budget(1e-9)])
    with dspy.context(lm=lm), prod.span("budget root"), pytest.raises(BudgetExceededError):
        predict(question="b3")
    flushed(budget_stack)

    found = settle(phoenix, project, lambda f: len(named(f, "chat ")) >= 2)
    lm_spans = sorted(named(found, "chat "), key=lambda s: s["start_time"])
    assert [s["status_code"] for s in lm_spans] == ["ERROR", "ERROR"]
    assert attrs(lm_spans[1])["error.type"] == "CircuitOpenError"
    checks = named(found, "dspyo3.breaker")
    assert checks and any(s["status_code"] == "ERROR" for s in checks)

    found = settle(phoenix, budget_project, lambda f: bool(named(f, "dspyo3.budget.refused")))
    (refused,) = named(found, "dspyo3.budget.refused")
    assert refused["status_code"] == "ERROR"
    (lm_span,) = named(found, "chat ")
    assert lm_span["status_code"] == "ERROR" and attrs(lm_span)["error.type"] == "BudgetExceededError"


def test_tool_timeout_in_an_agent_run_is_an_error_span(phoenix: PhoenixProcess, project: str) -> None:
    pytest.importorskip("dspyo3_agents")
    from dspy.utils import DummyLM

    from dspyo3_agents import ReActAgent
    from dspyo3_agents.tools.registry import ToolRegistry

    registry = ToolRegistry()

    def slow(seconds: float) -> str:
        """Sleep, then answer.

        Args:
            seconds: how long to sleep.
        """
        time.sleep(seconds)
        return "done"

    registry.register(slow, timeout=0.05)
    lm = DummyLM([{"next_thought": "try it", "next_tool_name": "slow", "next_tool_args": {"seconds": 1.0}},
                  {"next_thought": "give up", "next_tool_name": "finish", "next_tool_args": {}},
                  {"reasoning": "the tool timed out", "answer": "late"}])
    stack = production(phoenix, project)
    with dspy.context(lm=lm):
        assert ReActAgent("question -> answer", registry, name="sleepy")(question="wait?").answer == "late"
    flushed(stack)
    found = settle(phoenix, project, lambda f: bool(named(f, "execute_tool")) and bool(named(f, "invoke_agent")))
    (run,) = named(found, "invoke_agent sleepy")
    (tool,) = named(found, "execute_tool slow")
    assert tool["status_code"] == "ERROR" and attrs(tool)["error.type"] == "ToolTimeoutError"
    assert attrs(tool)["gen_ai.tool.name"] == "slow" and run in ancestors(tool, found)


# -- 3. no secrets ---------------------------------------------------------------------------------------------------


def test_no_secret_reaches_phoenix(phoenix: PhoenixProcess, project: str) -> None:
    api_key = f"sk-test-{uuid.uuid4().hex}"
    header_secret = f"collector-{uuid.uuid4().hex}"
    with LMServer(field_responder(lambda fields: {"answer": "fine"}), api_key="sk-test-the-right-key",
                  echo_key=True) as server:
        stack = production(phoenix, project, tracing_overrides={
            "capture_content": True, "headers": {"x-collector-token": header_secret}})
        lm = native_lm(server, api_key=api_key, cache=False)
        with dspy.context(lm=lm), prod.span("secret root"), pytest.raises(Exception) as raised:
            dspy.Predict("question -> answer")(question="what is the key?")
        assert api_key in str(raised.value)  # the error the LM span fails with does carry the key
        flushed(stack)
    found = settle(phoenix, project, lambda f: bool(named(f, "chat ")))
    assert named(found, "chat ")[0]["status_code"] == "ERROR"
    text = json.dumps(found)
    assert api_key not in text and header_secret not in text
    assert api_key[8:] not in text  # not even the part after the prefix
    time.sleep(1.0)  # Phoenix writes its database behind the API
    stored = b"".join(path.read_bytes() for path in phoenix.workdir.rglob("*") if path.is_file())
    assert api_key.encode() not in stored and header_secret.encode() not in stored


# -- 4. gRPC ---------------------------------------------------------------------------------------------------------


def test_grpc_exporter_round_trip(phoenix: PhoenixProcess, project: str) -> None:
    stack = production(phoenix, project, tracing_overrides={"protocol": "grpc",
                                                            "endpoint": f"http://{phoenix.otlp_grpc}"})
    with dspy.context(lm=OfflineLM()), prod.span("grpc root", case="grpc"):
        dspy.Predict("question -> answer")(question="over grpc?")
    flushed(stack)
    found = settle(phoenix, project, lambda f: bool(named(f, "chat ")) and bool(named(f, "grpc root")))
    (root,) = named(found, "grpc root")
    assert attrs(root)["case"] == "grpc" and root["parent_id"] is None
    assert {s["context"]["trace_id"] for s in found} == {root["context"]["trace_id"]}


# -- 5. openinference interop ----------------------------------------------------------------------------------------


def test_openinference_and_dspyo3_spans_nest_in_one_trace(phoenix: PhoenixProcess, project: str,
                                                          rag_server: LMServer) -> None:
    pytest.importorskip("openinference.instrumentation.dspy")
    from openinference.instrumentation.dspy import DSPyInstrumentor
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"openinference.project.name": project}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=phoenix.otlp_http)))
    instrumentor = DSPyInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        stack = production(phoenix, project, tracing_overrides={"openinference": "auto"})
        with dspy.context(lm=native_lm(rag_server, cache=False)):
            program = dspy.Predict("question -> answer")
            asyncio.run(program.acall(question="nested?"))
            program(question="nested sync?")
        flushed(stack)
        provider.force_flush()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    found = settle(phoenix, project, lambda f: len(named(f, "chat ")) >= 2 and len(f) >= 6)
    ours = named(found, "chat ")
    # openinference's spans are named after the classes they wrap (Phoenix keeps their kind in span_kind)
    theirs = [s for s in found if not s["name"].startswith(("chat ", "dspyo3.", "POST"))]
    assert theirs, sorted(s["name"] for s in found)
    assert not named(found, "dspyo3.module")  # openinference has the module spans: no duplicates of ours
    for lm_span in ours:
        trace = [s for s in found if s["context"]["trace_id"] == lm_span["context"]["trace_id"]]
        chain = ancestors(lm_span, trace)
        if not chain and lm_span.get("parent_id") is None:
            pytest.xfail("the tracer does not parent its spans on the OpenTelemetry context yet (plan 1.3, interop)")
        assert any(s in theirs for s in chain), [s["name"] for s in chain]  # ours nests under theirs
    assert len({s["context"]["trace_id"] for s in found}) == 2  # one trace per program call
