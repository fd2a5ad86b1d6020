"""W3C ``traceparent`` through the native LM transport: every HTTP attempt carries its own span id, the attempts come
back to Python, and ``NativeLM`` sends the current span's trace and records one span per attempt."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Mapping
from contextvars import Token
from typing import Any

import pytest

from dspyo3_core import spans
from dspyo3_core.native_lm import NativeLM, submit
from dspyo3_core.testing.server import LMServer, Reply
from dspyo3_native import LMTransport, LMTransportError

TRACE = 0x0AF7651916CD43DD8448EB211C80319C
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def server() -> Iterator[LMServer]:
    with LMServer(responder=lambda request: Reply.text("ok")) as running:
        yield running


def transport(server: LMServer, retries: int = 3) -> LMTransport:
    return LMTransport(server.api_base, api_key="sk-test", max_retries=retries, backoff_base=0.01)


def sent(server: LMServer) -> list[str | None]:
    """The ``traceparent`` each recorded request carried."""
    return [request["_headers"].get("traceparent") for request in server.requests]


def check_attempts(server: LMServer, attempts: list[tuple[Any, ...]], statuses: list[int]) -> None:
    """Each request carried the trace with the span id of the attempt that sent it."""
    assert [f"00-{TRACE:032x}-{a[0]}-01" for a in attempts] == sent(server)
    assert len({a[0] for a in attempts}) == len(attempts), "each attempt has its own span id"
    assert [a[3] for a in attempts] == statuses
    for span_hex, start_ns, end_ns, _, _ in attempts:
        assert len(span_hex) == 16 and int(span_hex, 16) != 0
        assert 0 < start_ns <= end_ns


def test_complete_sends_the_trace_and_returns_the_attempts(server: LMServer) -> None:
    answer = transport(server).complete("m", MESSAGES, traceparent=PARENT)
    assert len(answer) == 5 and answer[2][0][0] == "ok"
    check_attempts(server, answer[4], [200])
    assert answer[4][0][4] is None


def test_retried_attempts_each_have_a_span_id(server: LMServer) -> None:
    server.script(Reply.rate_limited(0.01), Reply.rate_limited(0.01))
    answer = transport(server).complete("m", MESSAGES, traceparent=PARENT)
    assert len(server.requests) == 3
    check_attempts(server, answer[4], [429, 429, 200])
    assert [a[4] for a in answer[4]] == ["rate_limit", "rate_limit", None]
    assert all(header is not None and header.split("-")[1] == f"{TRACE:032x}" for header in sent(server))


def test_a_failed_traced_request_carries_the_attempts_as_a_fifth_arg(server: LMServer) -> None:
    server.script(Reply.server_error(503), Reply.server_error(500))
    with pytest.raises(LMTransportError) as info:
        transport(server, retries=1).complete("m", MESSAGES, traceparent=PARENT)
    assert len(info.value.args) == 5 and info.value.args[1] == "server"
    check_attempts(server, info.value.args[4], [503, 500])
    assert [a[4] for a in info.value.args[4]] == ["server", "server"]


def test_acomplete_and_submit_carry_the_trace(server: LMServer) -> None:
    client = transport(server)

    async def both() -> tuple[Any, Any]:
        return (await client.acomplete("m", MESSAGES, traceparent=PARENT),
                await submit(client, "m", MESSAGES, {}, PARENT))

    first, second = asyncio.run(both())
    check_attempts(server, [first[4][0], second[4][0]], [200, 200])


def test_stream_and_astream_carry_the_trace(server: LMServer) -> None:
    client = transport(server)
    server.script(Reply.rate_limited(0.01))
    events = client.stream("m", MESSAGES, traceparent=PARENT)
    assert "".join(e[1] for e in events if e[0] == "text") == "ok"
    assert events.attempts is not None and [a[3] for a in events.attempts] == [429, 200]

    async def opened() -> Any:
        stream = await client.astream("m", MESSAGES, traceparent=PARENT)
        async for _ in stream:
            pass
        return stream

    later = asyncio.run(opened())
    check_attempts(server, [*events.attempts, *later.attempts], [429, 200, 200])


def test_no_traceparent_keeps_the_old_shapes(server: LMServer) -> None:
    client = transport(server, retries=0)
    assert len(client.complete("m", MESSAGES)) == 4

    async def both() -> tuple[Any, Any]:
        return await client.acomplete("m", MESSAGES), await submit(client, "m", MESSAGES, {})

    assert [len(answer) for answer in asyncio.run(both())] == [4, 4]
    events = client.stream("m", MESSAGES)
    list(events)
    assert events.attempts is None
    server.script(Reply.server_error(500))
    with pytest.raises(LMTransportError) as info:
        client.complete("m", MESSAGES)
    assert len(info.value.args) == 4
    assert sent(server) == [None] * 5


@pytest.mark.parametrize(("bad", "problem"), [
    ("", "4 dash-separated fields"),
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", "4 dash-separated fields"),
    ("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "only version 00"),
    ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", "trace id"),
    ("00-00000000000000000000000000000000-b7ad6b7169203331-01", "all zeros"),
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1", "flags"),
])
def test_a_malformed_traceparent_is_a_value_error_naming_the_problem(server: LMServer, bad: str,
                                                                      problem: str) -> None:
    client = transport(server)
    for call in (lambda: client.complete("m", MESSAGES, traceparent=bad),
                 lambda: client.stream("m", MESSAGES, traceparent=bad)):
        with pytest.raises(ValueError, match=problem):
            call()
    assert server.requests == []


# -- NativeLM with a recording tracer ------------------------------------------------------------------------------

class FakeSpan:
    """A started span that makes itself current until it ends."""

    def __init__(self, tracer: RecordingTracer, name: str, ref: spans.SpanRef) -> None:
        self.tracer, self.name, self.ref = tracer, name, ref
        self.token: Token[spans.SpanRef | None] | None = spans.CURRENT.set(ref)

    def set(self, key: str, value: spans.AttrValue) -> None:
        pass

    def event(self, name: str, attrs: Mapping[str, spans.AttrValue] | None = None) -> None:
        pass

    def fail(self, error: BaseException | str) -> None:
        pass

    def end(self, end_ns: int | None = None) -> None:
        if self.token is not None:
            spans.CURRENT.reset(self.token)
            self.token = None

    def __enter__(self) -> FakeSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()


class RecordingTracer:
    """The spans.Tracer protocol, keeping recorded spans in a list."""

    capture_content = False

    def __init__(self, propagate: bool = True) -> None:
        self.propagate = propagate
        self.records: list[dict[str, Any]] = []
        self.ids = iter(range(0x1000, 0x2000))

    def start(self, name: str, kind: int = spans.INTERNAL, attrs: dict[str, spans.AttrValue] | None = None, *,
              current: bool = True, start_ns: int | None = None, span_id: int | None = None,
              parent: spans.SpanRef | None = None) -> FakeSpan:
        parent = parent or spans.CURRENT.get()
        trace = parent.trace_id if parent is not None else TRACE
        return FakeSpan(self, name, spans.SpanRef(trace, span_id or next(self.ids), True))

    def record(self, name: str, start_ns: int, end_ns: int, attrs: dict[str, spans.AttrValue] | None = None, *,
               kind: int = spans.INTERNAL, error: BaseException | str | None = None, span_id: int | None = None,
               parent: spans.SpanRef | None = None) -> None:
        self.records.append({"name": name, "start": start_ns, "end": end_ns, "attrs": dict(attrs or {}),
                             "kind": kind, "error": error, "span_id": span_id,
                             "parent": parent or spans.CURRENT.get()})

    def traceparent(self, span_id: int | None = None) -> str | None:
        ref = spans.CURRENT.get()
        return None if ref is None else spans.format_traceparent(ref, span_id)


@pytest.fixture
def tracer() -> Iterator[RecordingTracer]:
    recording = RecordingTracer()
    spans.install(recording)
    try:
        yield recording
    finally:
        spans.install(None)


def native(server: LMServer, cache: bool = False) -> NativeLM:
    return NativeLM("openai/m", api_base=server.api_base, api_key="sk-test", cache=cache, num_retries=3)


def test_native_lm_sends_the_current_trace_and_records_each_attempt(server: LMServer,
                                                                    tracer: RecordingTracer) -> None:
    server.script(Reply.rate_limited(0.01), Reply.rate_limited(0.01))
    lm = native(server)
    with tracer.start("chat m", spans.CLIENT) as span:
        assert lm("hi") == ["ok"]
    headers = sent(server)
    assert len(headers) == 3
    assert all(h is not None and h.split("-")[1] == f"{span.ref.trace_id:032x}" for h in headers)
    assert [h.split("-")[2] for h in headers if h] == [f"{r['span_id']:016x}" for r in tracer.records]
    assert len({r["span_id"] for r in tracer.records}) == 3
    assert [r["name"] for r in tracer.records] == ["POST"] * 3
    assert all(r["kind"] == spans.CLIENT and r["parent"] == span.ref for r in tracer.records)
    first, second, last = (r["attrs"] for r in tracer.records)
    host, port = server.url.removeprefix("http://").split(":")
    assert first == {"http.request.method": "POST", "server.address": host, "server.port": int(port),
                     "url.path": "/v1/chat/completions", "http.response.status_code": 429,
                     "error.type": "rate_limit"}
    assert second["http.request.resend_count"] == 1 and last["http.request.resend_count"] == 2
    assert last["http.response.status_code"] == 200 and "error.type" not in last
    assert [r["error"] for r in tracer.records] == ["rate_limit", "rate_limit", None]


def test_native_lm_async_and_stream_paths_send_the_trace(server: LMServer, tracer: RecordingTracer) -> None:
    import dspy

    lm = native(server)

    async def run() -> None:
        import anyio.to_thread

        with tracer.start("chat m", spans.CLIENT):
            assert await lm.acall("async") == ["ok"]
        with tracer.start("chat m", spans.CLIENT), dspy.context(send_stream=_Sink()):
            await lm.acall("streamed async")
            await anyio.to_thread.run_sync(lambda: lm("streamed sync"))

    asyncio.run(run())
    assert [h is not None for h in sent(server)] == [True] * 3
    assert [f"{r['span_id']:016x}" for r in tracer.records] == [h.split("-")[2] for h in sent(server) if h]
    assert [bool(r.get("stream")) for r in server.requests] == [False, True, True]


class _Sink:
    """A stand-in for ``dspy.streamify``'s send stream: swallows chunks."""

    async def send(self, chunk: Any) -> None:
        pass


def test_native_lm_sends_nothing_outside_a_span_or_when_propagation_is_off(server: LMServer,
                                                                          tracer: RecordingTracer) -> None:
    lm = native(server)
    lm("no span")
    tracer.propagate = False
    with tracer.start("chat m", spans.CLIENT):
        lm("not propagated")
    spans.install(None)
    lm("off")
    assert sent(server) == [None, None, None]
    assert tracer.records == []


def test_a_cache_hit_sends_and_records_nothing(server: LMServer, tracer: RecordingTracer) -> None:
    lm = native(server, cache=True)
    prompt = f"cached {uuid.uuid4()}"  # never a hit left by an earlier run
    with tracer.start("chat m", spans.CLIENT):
        lm(prompt)
        lm(prompt)
    assert len(server.requests) == 1 and len(tracer.records) == 1


def test_traceparent_never_enters_params_or_history(server: LMServer, tracer: RecordingTracer) -> None:
    lm = native(server)
    with tracer.start("chat m", spans.CLIENT):
        lm("hi")
    request = server.requests[0]
    assert "traceparent" not in {k for k in request if not k.startswith("_")}
    assert "traceparent" not in str(lm.history[-1]["kwargs"])
