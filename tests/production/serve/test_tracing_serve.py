"""Tracing in ``dspyo3 serve`` (with a recording fake tracer installed through ``dspyo3_core.spans``): the SERVER
span continues an incoming W3C ``traceparent`` (a malformed one is ignored), program spans per request, stream and
batch item, JSON logs that share the span's trace id, slot-queue waits and tenant refusals, and HTTP exemplars in
the OpenMetrics ``/metrics``."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import dspy
import httpx
import pytest
from starlette.applications import Starlette

import dspyo3_production as prod
from dspyo3_core import spans
from dspyo3_core.testing import RecordedSpan, RecordingTracer
from dspyo3_core.testing.server import LMServer, Reply, chat_reply
from dspyo3_production.serve.app import create_app
from dspyo3_production.serve.config import ServeConfig, TenantConfig
from dspyo3_production.serve.slots import ProgramSlot
from dspyo3_production.serve.tenants import TenantGate, hash_key
from tests.production.serve.conftest import StaticSource, asgi_client

MakeApp = Callable[..., Starlette]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
INCOMING = f"00-{TRACE}-{PARENT}-01"

@pytest.fixture
def tracer() -> Iterator[RecordingTracer]:
    with RecordingTracer().installed() as recording:
        yield recording


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def post(app: Starlette, path: str, **kwargs: Any) -> httpx.Response:
    async with asgi_client(app, timeout=30) as client:
        return await client.post(path, **kwargs)


def server_span(tracer: RecordingTracer) -> RecordedSpan:
    (span,) = [s for s in tracer.spans if s.kind == spans.SERVER]
    return span


def test_an_incoming_traceparent_is_continued_and_logs_share_its_trace_id(tracer: RecordingTracer,
                                                                          serve_app: Starlette) -> None:
    stream = io.StringIO()
    prod.configure_logging(stream, native=False)
    response = run(post(serve_app, "/v1/programs/qa", json={"question": "hi"},
                        headers={"traceparent": INCOMING, "tracestate": "vendor=1", "x-request-id": "rid-7"}))
    assert response.status_code == 200
    server = server_span(tracer)
    assert server.name == "POST /v1/programs/{name}"
    assert server.trace_hex == TRACE and server.parent_id == int(PARENT, 16) and server.parent.remote
    assert server.attrs["http.request.method"] == "POST"
    assert server.attrs["http.route"] == "/v1/programs/{name}"
    assert server.attrs["http.response.status_code"] == 200
    assert server.attrs["dspyo3.request_id"] == "rid-7" and server.error is None
    program = tracer.one("dspyo3.program qa")
    assert program.parent_id == server.ref.span_id and program.trace_hex == TRACE
    assert program.attrs["dspyo3.program.name"] == "qa" and program.attrs["dspyo3.program.version"] == "1.0.0"
    assert program.attrs["dspyo3.ab.arm"] == "a" and "dspyo3.tenant" not in program.attrs
    events = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    lm_calls = [e for e in events if e["event"] == "lm_call"]
    assert lm_calls, [e["event"] for e in events]
    assert all(e["trace_id"] == TRACE and e["request_id"] == "rid-7" for e in lm_calls)
    assert all(e["span_id"] in {s.span_hex for s in tracer.spans} for e in lm_calls)
    assert spans.CURRENT.get() is None


@pytest.mark.parametrize("header", [
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    "garbage", "00-" + "a" * 600, "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
])
def test_a_bad_traceparent_is_ignored(tracer: RecordingTracer, serve_app: Starlette, header: str) -> None:
    response = run(post(serve_app, "/v1/programs/qa", json={"question": "hi"}, headers={"traceparent": header}))
    assert response.status_code == 200
    server = server_span(tracer)
    assert server.parent is None and server.trace_hex != TRACE
    assert tracer.one("dspyo3.program qa").trace_hex == server.trace_hex


def test_an_untrusted_incoming_traceparent_starts_a_new_trace(serve_app: Starlette) -> None:
    fake = RecordingTracer(trust_incoming=False)
    spans.install(fake)
    try:
        assert run(post(serve_app, "/v1/programs/qa", json={"question": "hi"},
                        headers={"traceparent": INCOMING})).status_code == 200
    finally:
        spans.install(None)
    server = server_span(fake)
    assert server.parent is None and server.trace_hex != TRACE


def test_only_5xx_fails_the_server_span_and_probes_are_not_traced(tracer: RecordingTracer, make_app: MakeApp) -> None:
    class BrokenModule(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.predict = dspy.Predict("question -> answer")

        async def aforward(self, question: str) -> Any:
            raise RuntimeError("boom")

    app = make_app({"broken": StaticSource("broken", {"1": BrokenModule()})})

    async def main() -> list[httpx.Response]:
        async with asgi_client(app) as client:
            return [await client.post("/v1/programs/broken", json={"question": "q"}),
                    await client.post("/v1/programs/nope", json={"question": "q"}),
                    await client.get("/healthz"), await client.get("/readyz"), await client.get("/metrics")]

    failed, missing, *probes = run(main())
    assert failed.status_code == 500 and missing.status_code == 404
    assert all(p.status_code in (200, 503) for p in probes)
    servers = [s for s in tracer.spans if s.kind == spans.SERVER]
    assert len(servers) == 2, [s.name for s in servers]
    by_status = {s.attrs["http.response.status_code"]: s for s in servers}
    assert by_status[500].error is not None and by_status[500].attrs["error.type"] == "500"
    assert by_status[404].error is None
    program = tracer.one("dspyo3.program broken")
    assert isinstance(program.error, RuntimeError) and program.parent_id == by_status[500].ref.span_id


def test_batch_items_and_streams_get_program_spans(tracer: RecordingTracer, serve_app: Starlette) -> None:
    async def main() -> list[httpx.Response]:
        async with asgi_client(serve_app, timeout=30) as client:
            batch = await client.post("/v1/programs/qa/batch",
                                      json={"items": [{"question": "a"}, {"question": "b"}, {"question": "c"}]},
                                      headers={"traceparent": INCOMING})
            stream = await client.post("/v1/programs/qa/stream", json={"question": "s"})
            return [batch, stream]

    batch, stream = run(main())
    assert batch.status_code == 200 and all(r["ok"] for r in batch.json()["results"])
    assert stream.status_code == 200 and "event: prediction" in stream.text
    servers = {s.name: s for s in tracer.spans if s.kind == spans.SERVER}
    batch_span = servers["POST /v1/programs/{name}/batch"]
    stream_span = servers["POST /v1/programs/{name}/stream"]
    programs = tracer.named("dspyo3.program qa")
    items = [p for p in programs if p.parent_id == batch_span.ref.span_id]
    assert len(items) == 3 and {p.trace_hex for p in items} == {TRACE}
    assert sorted(p.attrs["dspyo3.request_id"] for p in items) == sorted(
        f"{batch_span.attrs['dspyo3.request_id']}.{i}" for i in range(3))
    (streamed,) = [p for p in programs if p.parent_id == stream_span.ref.span_id]
    assert streamed.error is None and streamed.end_ns is not None


def test_a_queued_request_records_its_wait_and_a_refused_one_fails(tracer: RecordingTracer, make_app: MakeApp,
                                                                   qa_source: StaticSource,
                                                                   qa_server: LMServer) -> None:
    qa_server.responder = lambda request: Reply(chat_reply(answer="slow"), latency=0.5)
    app = make_app({"qa": qa_source}, max_in_flight=1, max_queue=1)
    slot: ProgramSlot = app.state.slots["qa"]

    async def main() -> list[httpx.Response]:
        async with asgi_client(app, timeout=30) as client:
            first = asyncio.ensure_future(client.post("/v1/programs/qa", json={"question": "a"}))
            while slot.running < 1:
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(client.post("/v1/programs/qa", json={"question": "b"}))
            while slot.waiting < 1:
                await asyncio.sleep(0.01)
            third = await client.post("/v1/programs/qa", json={"question": "c"})
            return [await first, await second, third]

    first, second, third = run(main())
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 503)
    waits = tracer.named("dspyo3.queue.wait")
    assert len(waits) == 2, "the queued request and the refused one; the first went straight in"
    waited = [w for w in waits if w.error is None]
    refused = [w for w in waits if w.error is not None]
    assert len(waited) == 1 and waited[0].attrs["dspyo3.queue.waited_s"] > 0
    assert len(refused) == 1 and refused[0].attrs["error.type"] == "ServeError"
    programs = {p.ref.span_id for p in tracer.named("dspyo3.program qa")}
    assert {w.parent_id for w in waits} <= programs


def test_tenant_refusals_are_recorded_admissions_are_not(tracer: RecordingTracer, qa_source: StaticSource,
                                                         metrics: Any) -> None:
    key = "sk-tenant-abcdefghijklmnop"
    config = ServeConfig(tenants=(TenantConfig("acme", (hash_key(key),), requests_per_second=0.001),))
    app = create_app(config, sources={"qa": qa_source}, tenants=TenantGate.from_config(config), metrics=metrics)

    async def main() -> list[httpx.Response]:
        async with asgi_client(app, timeout=30) as client:
            headers = {"authorization": f"Bearer {key}"}
            return [await client.post("/v1/programs/qa", json={"question": "q"}, headers=headers),
                    await client.post("/v1/programs/qa", json={"question": "q"}, headers=headers)]

    ok, limited = run(main())
    assert ok.status_code == 200 and limited.status_code == 429
    (refusal,) = tracer.named("dspyo3.tenant.admit")
    assert refusal.attrs["dspyo3.tenant"] == "acme"
    assert refusal.attrs["dspyo3.tenant.limit"] == "requests_per_second"
    assert refusal.attrs["dspyo3.tenant.outcome"] == "rate_limited" and refusal.error is not None
    assert key not in json.dumps(refusal.attrs) and key not in str(refusal.error)
    servers = sorted((s for s in tracer.spans if s.kind == spans.SERVER),
                     key=lambda s: s.attrs["http.response.status_code"])
    assert [s.attrs["http.response.status_code"] for s in servers] == [200, 429]
    assert all(s.attrs["dspyo3.tenant"] == "acme" for s in servers) and servers[1].error is None
    assert refusal.parent_id == servers[1].ref.span_id
    assert tracer.one("dspyo3.program qa").attrs["dspyo3.tenant"] == "acme"


def test_metrics_negotiate_openmetrics_with_http_exemplars(tracer: RecordingTracer, serve_app: Starlette) -> None:
    async def main() -> list[httpx.Response]:
        async with asgi_client(serve_app, timeout=30) as client:
            await client.post("/v1/programs/qa", json={"question": "hi"}, headers={"traceparent": INCOMING})
            return [await client.get("/metrics"),
                    await client.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})]

    classic, openmetrics = run(main())
    assert classic.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert TRACE not in classic.text
    server = server_span(tracer)
    lines = [line for line in openmetrics.text.splitlines()
             if line.startswith("dspyo3_http_request_seconds_bucket") and " # {" in line]
    assert len(lines) == 1
    assert f'trace_id="{TRACE}"' in lines[0] and f'span_id="{server.span_hex}"' in lines[0]
    assert 'route="/v1/programs/{name}"' in lines[0]


def test_tracing_off_serves_as_before(serve_app: Starlette) -> None:
    assert spans.TRACER is None
    response = run(post(serve_app, "/v1/programs/qa", json={"question": "hi"}, headers={"traceparent": INCOMING}))
    assert response.status_code == 200 and response.headers["x-request-id"]


# -- with the production recorder (spans exported through the OpenTelemetry SDK) -------------------------------------
@pytest.mark.parametrize("trust", [True, False])
def test_the_production_recorder_joins_serve_program_lm_and_logs(trust: bool, make_app: MakeApp,
                                                                 qa_source: StaticSource, metrics: Any) -> None:
    in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    from dspyo3_production.tracing import TracingConfig

    exporter = in_memory.InMemorySpanExporter()
    production = prod.enable(prod.Production(tracing=TracingConfig(exporter=exporter, trust_incoming=trust),
                                             metrics=metrics, module_callbacks=False))
    stream = io.StringIO()
    prod.configure_logging(stream, native=False)
    app = make_app({"qa": qa_source})
    response = run(post(app, "/v1/programs/qa", json={"question": "joined"}, headers={"traceparent": INCOMING}))
    assert response.status_code == 200
    assert production.tracer is not None and production.tracer.force_flush(10)
    found = list(exporter.get_finished_spans())
    (server,) = [s for s in found if s.name == "POST /v1/programs/{name}"]
    (program,) = [s for s in found if s.name == "dspyo3.program qa"]
    assert (f"{server.context.trace_id:032x}" == TRACE) is trust
    assert program.parent is not None and program.parent.span_id == server.context.span_id
    assert program.context.trace_id == server.context.trace_id
    lm_spans = [s for s in found if s.name.startswith("chat ")]
    assert lm_spans and all(s.context.trace_id == server.context.trace_id for s in lm_spans)
    events = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    (lm_call,) = [e for e in events if e["event"] == "lm_call"]
    assert lm_call["trace_id"] == f"{server.context.trace_id:032x}"
    assert lm_call["span_id"] == f"{lm_spans[0].context.span_id:016x}"
