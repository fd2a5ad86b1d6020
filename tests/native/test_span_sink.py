"""``dspyo3_native.SpanSink``: spans pushed from Python, batched on a native thread and POSTed as OTLP/HTTP protobuf.

A loopback collector (``http.server`` in a thread) decodes every body with the OpenTelemetry protobuf classes, so
each field is checked as a real collector reads it; one test exports to a real Arize Phoenix.
"""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dspyo3_native import SpanSink

trace_service_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

TRACE = 0x0AF7651916CD43DD8448EB211C80319C
SPAN = 0xB7AD6B7169203331
PARENT = 0x00F067AA0BA902B7
START = 1_700_000_000_123_456_789
END = START + 1_500_000


class Collector:
    """A loopback OTLP/HTTP receiver: keeps each decoded request and its headers; answers ``status`` (a list of
    codes to answer in turn, the last one repeated)."""

    def __init__(self, statuses: list[int] | None = None, retry_after: str | None = None) -> None:
        self.requests: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.statuses = list(statuses or [200])
        self.retry_after = retry_after
        self.lock = threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector.lock:
                    status = collector.statuses.pop(0) if len(collector.statuses) > 1 else collector.statuses[0]
                    collector.requests.append(request)
                    collector.headers.append({k.lower(): v for k, v in self.headers.items()})
                    collector.paths.append(self.path)
                self.send_response(status)
                if collector.retry_after and status != 200:
                    self.send_header("Retry-After", collector.retry_after)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[Any]:
        with self.lock:
            return [s for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def dead_endpoint() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/traces"


def push(sink: SpanSink, name: str = "op", **overrides: Any) -> None:
    args: dict[str, Any] = {
        "name": name, "kind": 0, "trace_id": TRACE, "span_id": SPAN, "parent_id": 0, "parent_remote": False,
        "start_ns": START, "end_ns": END, "attrs": {}, "events": None, "status": None,
    }
    args.update(overrides)
    sink.push(**args)


def value(any_value: Any) -> Any:
    """An OTLP AnyValue as Python."""
    which = any_value.WhichOneof("value")
    if which == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, which)


def attrs(key_values: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in key_values}


def test_every_field_round_trips(collector: Collector) -> None:
    sink = SpanSink(
        collector.endpoint, resource={"service.name": "svc", "deployment.n": 3, "tags": ["a", "b"]},
        scope_name="dspyo3.test", scope_version="1.2.3", delay_ms=60_000,
    )
    attributes = {
        "s": "text ✓", "b": True, "f": False, "i": -42, "big": 2**63 - 1, "x": 0.25, "e": "",
        "ls": ["a", "b"], "li": [1, -2], "lf": [0.5, 1.5], "lb": [True, False], "tup": ("t",), "empty": [],
    }
    events = [("exception", START + 10, {"exception.type": "ValueError", "n": 1}), ("note", START + 20, {})]
    push(sink, "child", kind=2, parent_id=PARENT, parent_remote=True, attrs=attributes, events=events,
         status="it broke")
    push(sink, "root", kind=1, span_id=SPAN + 1, attrs={})
    push(sink, "internal", kind=0, span_id=SPAN + 2, parent_id=SPAN, parent_remote=False, attrs={}, events=[])
    assert sink.flush(10)
    (request,) = collector.requests
    assert collector.paths == ["/v1/traces"]
    assert collector.headers[0]["content-type"] == "application/x-protobuf"
    (resource_spans,) = request.resource_spans
    assert attrs(resource_spans.resource.attributes) == {"service.name": "svc", "deployment.n": 3, "tags": ["a", "b"]}
    (scope_spans,) = resource_spans.scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("dspyo3.test", "1.2.3")
    child, root, internal = scope_spans.spans
    assert child.trace_id == TRACE.to_bytes(16, "big")
    assert child.span_id == SPAN.to_bytes(8, "big")
    assert child.parent_span_id == PARENT.to_bytes(8, "big")
    assert child.name == "child"
    assert child.kind == 3  # SPAN_KIND_CLIENT
    assert (child.start_time_unix_nano, child.end_time_unix_nano) == (START, END)
    got = attrs(child.attributes)
    assert got == {**attributes, "tup": ["t"]}
    assert type(got["b"]) is bool and type(got["i"]) is int and type(got["x"]) is float
    assert [(e.name, e.time_unix_nano, attrs(e.attributes)) for e in child.events] == [
        ("exception", START + 10, {"exception.type": "ValueError", "n": 1}), ("note", START + 20, {}),
    ]
    assert child.status.code == 2 and child.status.message == "it broke"  # STATUS_CODE_ERROR
    assert child.flags == 0x300  # has-is-remote + is-remote
    assert root.kind == 2 and root.parent_span_id == b"" and root.status.code == 0 and root.flags == 0x100
    assert internal.kind == 1 and internal.parent_span_id == SPAN.to_bytes(8, "big") and internal.flags == 0x100
    assert sink.stats() == {"queued": 3, "exported": 3, "dropped": 0, "failed_batches": 0}
    sink.shutdown()


def test_batches_by_size_and_by_time(collector: Collector) -> None:
    sink = SpanSink(collector.endpoint, max_batch=4, delay_ms=100)
    for i in range(10):
        push(sink, f"s{i}", span_id=i + 1)
    deadline = time.monotonic() + 10
    while len(collector.spans()) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(s.name for s in collector.spans()) == sorted(f"s{i}" for i in range(10))
    assert all(len(r.resource_spans[0].scope_spans[0].spans) <= 4 for r in collector.requests)
    sink.shutdown()


def test_secrets_are_replaced_everywhere(collector: Collector) -> None:
    sink = SpanSink(collector.endpoint, delay_ms=60_000)
    sink.set_secrets([("sk-secret", "[key]"), ("sk-secret-long", "[long]"), ("", "never")])
    push(sink, "call sk-secret", attrs={"a": "x sk-secret-long y sk-secret", "l": ["sk-secret", "ok"], "n": 1},
         events=[("ev sk-secret", START, {"e": "pre sk-secret"})], status="failed with sk-secret-long")
    assert sink.flush(10)
    (span,) = collector.spans()
    assert span.name == "call [key]"
    assert attrs(span.attributes) == {"a": "x [long] y [key]", "l": ["[key]", "ok"], "n": 1}
    assert span.events[0].name == "ev [key]" and attrs(span.events[0].attributes) == {"e": "pre [key]"}
    assert span.status.message == "failed with [long]"
    assert b"sk-secret" not in collector.requests[0].SerializeToString()


def test_lone_surrogates_become_replacement_characters(collector: Collector) -> None:
    sink = SpanSink(collector.endpoint, delay_ms=60_000)
    push(sink, "op\udcff", attrs={"k\ud800": "v\udcff", "l": ["\ud800"]}, status="bad \udcff")
    assert sink.flush(10)
    (span,) = collector.spans()
    assert span.name.startswith("op\ufffd")
    got = attrs(span.attributes)
    assert set(got["l"][0]) == {"\ufffd"} and got[next(k for k in got if k.startswith("k"))].startswith("v\ufffd")
    assert span.status.message.startswith("bad \ufffd")


def test_headers_are_sent_and_never_shown(collector: Collector) -> None:
    sink = SpanSink(collector.endpoint, headers=[("Authorization", "Bearer hdr-secret"), ("x-tenant", "t1")])
    push(sink)
    assert sink.flush(10)
    assert collector.headers[0]["authorization"] == "Bearer hdr-secret"
    assert collector.headers[0]["x-tenant"] == "t1"
    assert "hdr-secret" not in repr(sink)
    with pytest.raises(ValueError, match=r"(?i)authorization") as info:
        SpanSink(collector.endpoint, headers=[("Authorization", "bad\nsecret-value")])
    assert "secret-value" not in str(info.value)


def test_full_queue_drops_and_counts() -> None:
    sink = SpanSink(dead_endpoint(), max_queue=5, max_batch=100, delay_ms=60_000, timeout_s=1.0)
    for i in range(8):
        push(sink, span_id=i + 1)
    stats = sink.stats()
    assert stats["queued"] == 5 and stats["dropped"] == 3
    sink.shutdown(5)


def test_flush_reports_a_dead_endpoint_and_counts_the_failed_batch() -> None:
    sink = SpanSink(dead_endpoint(), delay_ms=60_000, timeout_s=1.0)
    push(sink)
    assert sink.flush(5) is False
    assert sink.stats() == {"queued": 1, "exported": 0, "dropped": 0, "failed_batches": 1}
    assert sink.flush(5) is True  # nothing left to send
    sink.shutdown(5)


def test_5xx_and_429_are_retried_until_timeout_s() -> None:
    flaky = Collector(statuses=[503, 503, 200], retry_after="0.1")
    try:
        sink = SpanSink(flaky.endpoint, delay_ms=60_000)
        push(sink)
        assert sink.flush(10)
        assert len(flaky.requests) == 3 and sink.stats()["exported"] == 1
    finally:
        flaky.close()
    limited = Collector(statuses=[429])
    try:
        sink = SpanSink(limited.endpoint, delay_ms=60_000, timeout_s=1.0)
        push(sink)
        assert sink.flush(10) is False
        # retried after 0.1, 0.2 and 0.4 s; the next one would start after timeout_s: the batch is dropped
        assert 2 <= len(limited.requests) <= 5
        assert sink.stats()["failed_batches"] == 1
    finally:
        limited.close()


def test_a_retry_after_beyond_timeout_s_drops_the_batch_without_waiting() -> None:
    limited = Collector(statuses=[429, 200], retry_after="3600")
    try:
        sink = SpanSink(limited.endpoint, delay_ms=60_000, timeout_s=0.5)
        push(sink)
        assert sink.flush(30) is False  # not an hour later
        assert len(limited.requests) == 1
        assert sink.stats()["failed_batches"] == 1
    finally:
        limited.close()


def test_pushes_from_many_threads_all_arrive(collector: Collector) -> None:
    sink = SpanSink(collector.endpoint, max_batch=64, delay_ms=50)

    def pusher(t: int) -> None:
        for i in range(300):
            push(sink, f"t{t}", span_id=t * 1000 + i + 1, attrs={"i": i})

    threads = [threading.Thread(target=pusher, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sink.flush(30)
    assert sorted(int.from_bytes(s.span_id, "big") for s in collector.spans()) == sorted(
        t * 1000 + i + 1 for t in range(4) for i in range(300))
    assert sink.stats() == {"queued": 1200, "exported": 1200, "dropped": 0, "failed_batches": 0}
    sink.shutdown()


def test_a_4xx_is_not_retried() -> None:
    refusing = Collector(statuses=[400])
    try:
        sink = SpanSink(refusing.endpoint, delay_ms=60_000)
        push(sink)
        assert sink.flush(10) is False
        assert len(refusing.requests) == 1
    finally:
        refusing.close()


def test_shutdown_then_push_is_a_no_op(collector: Collector) -> None:
    sink = SpanSink(collector.endpoint, delay_ms=60_000)
    push(sink, "before")
    sink.shutdown(10)
    assert [s.name for s in collector.spans()] == ["before"]  # shutdown flushed
    push(sink, "after")
    sink.shutdown(1)
    assert sink.flush(1) is True
    assert [s.name for s in collector.spans()] == ["before"]
    assert sink.stats()["queued"] == 1


@pytest.mark.parametrize(
    ("override", "error", "names"),
    [
        ({"name": 3}, TypeError, "name"),
        ({"kind": 3}, ValueError, "kind"),
        ({"kind": -1}, ValueError, "kind"),
        ({"kind": "client"}, TypeError, "kind"),
        ({"trace_id": 2**128}, ValueError, "trace_id"),
        ({"trace_id": -1}, ValueError, "trace_id"),
        ({"trace_id": 0}, ValueError, "trace_id"),
        ({"trace_id": "abc"}, TypeError, "trace_id"),
        ({"span_id": 2**64}, ValueError, "span_id"),
        ({"span_id": True}, TypeError, "span_id"),
        ({"parent_id": -5}, ValueError, "parent_id"),
        ({"parent_remote": 1}, TypeError, "parent_remote"),
        ({"start_ns": 1.5}, TypeError, "start_ns"),
        ({"end_ns": 2**64}, ValueError, "end_ns"),
        ({"attrs": [("a", 1)]}, TypeError, "attrs"),
        ({"attrs": {1: "a"}}, TypeError, "attrs"),
        ({"attrs": {"a": None}}, TypeError, "attrs"),
        ({"attrs": {"a": {"b": 1}}}, TypeError, "attrs"),
        ({"attrs": {"a": [[1]]}}, TypeError, "attrs"),
        ({"attrs": {"a": 2**64}}, ValueError, "attrs"),
        ({"attrs": {"a": object()}}, TypeError, "attrs"),
        ({"events": "ev"}, TypeError, "events"),
        ({"events": [("ev", START)]}, ValueError, "events"),
        ({"events": [("ev", -1, {})]}, ValueError, "events"),
        ({"events": [(1, START, {})]}, TypeError, "events"),
        ({"events": [("ev", START, {"k": b"bytes"})]}, TypeError, "events"),
        ({"status": 500}, TypeError, "status"),
    ],
)
def test_hostile_input_raises_naming_the_argument(override: dict[str, Any], error: type[Exception],
                                                  names: str) -> None:
    sink = SpanSink(dead_endpoint(), delay_ms=60_000, timeout_s=1.0)
    with pytest.raises(error, match=names):
        push(sink, **override)
    assert sink.stats()["queued"] == 0
    sink.shutdown(0)


@pytest.mark.parametrize(
    "kwargs",
    [{"endpoint": "not a url"}, {"endpoint": "ftp://127.0.0.1/x"}, {"max_queue": 0}, {"max_batch": -1},
     {"delay_ms": 0}, {"delay_ms": -5}, {"timeout_s": 0.0}, {"timeout_s": float("nan")}, {"resource": {"a": None}},
     {"resource": [("a", "b")]}, {"headers": [("bad name", "v")]}],
)
def test_bad_options_raise_naming_the_option(kwargs: dict[str, Any]) -> None:
    args = {"endpoint": "http://127.0.0.1:4318/v1/traces", **kwargs}
    (option,) = kwargs
    with pytest.raises((TypeError, ValueError)) as info:
        SpanSink(**args)
    assert option in str(info.value) or (option == "headers" and "bad name" in str(info.value))


def test_bad_wait_times_raise(collector: Collector) -> None:
    sink = SpanSink(collector.endpoint)
    with pytest.raises(ValueError, match="timeout_s"):
        sink.flush(-1)
    with pytest.raises(ValueError, match="timeout_s"):
        sink.flush(float("nan"))
    sink.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_exports_on_its_own_thread(collector: Collector) -> None:
    sink = SpanSink(collector.endpoint, delay_ms=60_000)
    push(sink, "parent")
    assert sink.flush(10)
    pid = os.fork()
    if pid == 0:  # the child: must not deadlock, and exports with a thread of its own
        code = 1
        try:
            push(sink, "child", span_id=SPAN + 7)
            code = 0 if sink.flush(10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(s.name for s in collector.spans()) == ["child", "parent"]
    push(sink, "parent again", span_id=SPAN + 8)
    assert sink.flush(10)
    sink.shutdown()


def test_phoenix_stores_the_exported_spans(phoenix: Any) -> None:
    project = f"span-sink-{uuid.uuid4().hex[:8]}"
    sink = SpanSink(phoenix.otlp_http, resource={"openinference.project.name": project, "service.name": "sink"},
                    delay_ms=60_000)
    sink.set_secrets([("sk-phoenix-secret", "[redacted]")])
    trace_id = uuid.uuid4().int
    push(sink, "root", trace_id=trace_id, span_id=1, kind=1, attrs={"input.value": "q sk-phoenix-secret"})
    push(sink, "child", trace_id=trace_id, span_id=2, parent_id=1, kind=2,
         attrs={"llm.token_count.prompt": 12, "tags": ["x", "y"]},
         events=[("exception", START + 5, {"exception.message": "bad"})], status="failed")
    assert sink.flush(30)
    found = {s["name"]: s for s in phoenix.spans(project, want=2, timeout=60)}
    root, child = found["root"], found["child"]
    assert root["context"]["trace_id"] == f"{trace_id:032x}" == child["context"]["trace_id"]
    assert child["parent_id"] == root["context"]["span_id"] == f"{1:016x}"
    assert child["status_code"] == "ERROR" and child["status_message"] == "failed"
    assert root["attributes"]["input.value"] == "q [redacted]"
    assert child["attributes"]["llm.token_count.prompt"] == 12
    assert child["events"] and child["events"][0]["name"] == "exception"
    sink.shutdown()


def test_production_recorder_masks_secrets_that_appear_after_it_started(collector: Collector,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorder tells the sink about a secret registered mid-trace (checked on every span) and about one set in
    the environment later (checked when a trace's root ends, before the batch leaves)."""
    pytest.importorskip("opentelemetry.sdk")
    from dspyo3_core import secrets
    from dspyo3_production.tracing import Recorder, TracingConfig

    recorder = Recorder(TracingConfig(enabled=True, endpoint=collector.endpoint, schedule_delay_ms=60_000))
    registered = f"sk-registered-{uuid.uuid4().hex}"
    in_environ = f"sk-environ-{uuid.uuid4().hex}"
    try:
        with recorder.start("root one"):
            secrets.register_secret(registered)
            recorder.record("child one", START, END, {"value": registered})
        monkeypatch.setenv("DSPYO3_SINK_TEST_API_KEY", in_environ)
        with recorder.start("root two", attrs={"value": in_environ}):
            recorder.record("child two", START, END, {"value": f"x {in_environ}"})
        assert recorder.force_flush(10)
    finally:
        recorder.shutdown()
    found = collector.spans()
    assert sorted(s.name for s in found) == ["child one", "child two", "root one", "root two"]
    sent = b"".join(r.SerializeToString() for r in collector.requests)
    assert registered.encode() not in sent and in_environ.encode() not in sent
    child = attrs(next(s for s in found if s.name == "child two").attributes)
    assert child["value"] == f"x {secrets.mask_secret(in_environ)}"


def test_production_recorder_exports_every_span_of_open_and_closed_traces(collector: Collector) -> None:
    """Children recorded from other threads, and those of a trace still open when ``force_flush`` is called, all
    arrive, once."""
    pytest.importorskip("opentelemetry.sdk")
    from dspyo3_production.tracing import Recorder, TracingConfig

    recorder = Recorder(TracingConfig(enabled=True, endpoint=collector.endpoint, schedule_delay_ms=60_000))
    try:
        with recorder.start("closed root") as root:
            workers = [threading.Thread(target=recorder.record, args=(f"child {i}", START, END),
                                        kwargs={"parent": root.ref}) for i in range(8)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        still_open = recorder.start("open root")
        for i in range(300):
            recorder.record(f"open child {i}", START, END)
        assert recorder.force_flush(10)
        names = [s.name for s in collector.spans()]
        assert sorted(names) == sorted(["closed root", *(f"child {i}" for i in range(8)),
                                        *(f"open child {i}" for i in range(300))])
        still_open.end()
        assert recorder.force_flush(10)
    finally:
        recorder.shutdown()
    assert len(collector.spans()) == 310 and "open root" in {s.name for s in collector.spans()}
