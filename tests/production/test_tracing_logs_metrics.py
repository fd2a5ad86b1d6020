"""Logs and metrics join traces (with a recording fake tracer installed through ``dspyo3_core.spans``): JSON log
lines carry the current span's ``trace_id`` and ``span_id`` (Python formatter and native ``EventSink`` paths), LM
latency exemplars appear in the OpenMetrics exposition and never in the 0.0.4 text or in multi-process mode."""

from __future__ import annotations

import io
import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import dspyo3_production as prod
from dspyo3_core import spans
from dspyo3_production import logs
from dspyo3_production.metrics import Metrics, current_exemplar, exposition, exposition_content_type

OPENMETRICS = "application/openmetrics-text; version=1.0.0"

# -- a recording tracer (the spans.Tracer protocol, spans kept in a list) --------------------------------------------
class FakeSpan:
    def __init__(self, tracer: FakeTracer, name: str, kind: int, attrs: dict[str, Any] | None,
                 parent: spans.SpanRef | None, current: bool, start_ns: int | None = None,
                 span_id: int | None = None) -> None:
        self.tracer, self.name, self.kind = tracer, name, kind
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.parent = parent
        trace_id = parent.trace_id if parent is not None else random.getrandbits(128) or 1
        sampled = parent.sampled if parent is not None else True
        self.ref = spans.SpanRef(trace_id, span_id or random.getrandbits(64) or 1, sampled)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.error: BaseException | str | None = None
        self.start_ns = start_ns or time.time_ns()
        self.end_ns: int | None = None
        self.thread = threading.get_ident()
        self._token = spans.CURRENT.set(self.ref) if current else None

    def set(self, key: str, value: Any) -> None:
        self.attrs[key] = value

    def event(self, name: str, attrs: Any = None) -> None:
        self.events.append((name, dict(attrs or {})))

    def fail(self, error: BaseException | str) -> None:
        self.error = error
        self.attrs["error.type"] = type(error).__name__ if isinstance(error, BaseException) else str(error)

    def end(self, end_ns: int | None = None) -> None:
        if self.end_ns is not None:
            return
        self.end_ns = end_ns or time.time_ns()
        if self._token is not None:
            try:
                spans.CURRENT.reset(self._token)
            except ValueError:
                pass
        self.tracer.spans.append(self)

    def __enter__(self) -> FakeSpan:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.fail(exc)
        self.end()

    @property
    def trace_hex(self) -> str:
        return f"{self.ref.trace_id:032x}"

    @property
    def span_hex(self) -> str:
        return f"{self.ref.span_id:016x}"

    @property
    def parent_id(self) -> int | None:
        return None if self.parent is None else self.parent.span_id


class FakeTracer:
    def __init__(self, capture_content: bool = False, trust_incoming: bool = True) -> None:
        self.capture_content = capture_content
        self.propagate = True
        self.trust_incoming = trust_incoming
        self.spans: list[FakeSpan] = []

    def start(self, name: str, kind: int = spans.INTERNAL, attrs: dict[str, Any] | None = None, *,
              current: bool = True, start_ns: int | None = None, span_id: int | None = None,
              parent: spans.SpanRef | None = None) -> FakeSpan:
        return FakeSpan(self, name, kind, attrs, parent or spans.CURRENT.get(), current, start_ns, span_id)

    def record(self, name: str, start_ns: int, end_ns: int, attrs: dict[str, Any] | None = None, *,
               kind: int = spans.INTERNAL, error: BaseException | str | None = None, span_id: int | None = None,
               parent: spans.SpanRef | None = None) -> None:
        span = FakeSpan(self, name, kind, attrs, parent or spans.CURRENT.get(), False, start_ns, span_id)
        if error is not None:
            span.fail(error)
        span.end(end_ns)

    def traceparent(self, span_id: int | None = None) -> str | None:
        ref = spans.CURRENT.get()
        return None if ref is None else spans.format_traceparent(ref, span_id)

    def named(self, prefix: str) -> list[FakeSpan]:
        return [s for s in self.spans if s.name.startswith(prefix)]

    def one(self, prefix: str) -> FakeSpan:
        found = self.named(prefix)
        assert len(found) == 1, [s.name for s in self.spans]
        return found[0]


@pytest.fixture
def tracer() -> Iterator[FakeTracer]:
    fake = FakeTracer()
    spans.install(fake)
    try:
        yield fake
    finally:
        spans.install(None)


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- logs --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("native", [False, True])
def test_log_lines_carry_the_current_span_ids(native: bool, tracer: FakeTracer, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    stream = path.open("w")
    handler = prod.configure_logging(stream, native=native)
    assert (getattr(handler, "sink", None) is not None) is native
    with tracer.start("program") as program:
        logs.event("custom", note="inside")  # write_event (native) / render (Python)
        with tracer.start("chat gpt") as lm:
            logs.emit("lm_call", logging.INFO, {"model": "m", "status": "ok", "duration_ms": 1.5},
                      scalars=True)  # the lm_call fast path
        logging.getLogger("dspyo3.other").warning("a plain record")  # JsonFormatter
    logs.event("outside")
    handler.flush()
    stream.close()
    by_event = {e["event"]: e for e in lines(path.read_text())}
    assert by_event["custom"]["trace_id"] == program.trace_hex and by_event["custom"]["span_id"] == program.span_hex
    assert by_event["lm_call"]["trace_id"] == lm.trace_hex and by_event["lm_call"]["span_id"] == lm.span_hex
    assert by_event["lm_call"]["model"] == "m"
    assert by_event["a plain record"]["span_id"] == program.span_hex
    assert "span_id" not in by_event["outside"] and "trace_id" not in by_event["outside"]


def test_the_span_trace_id_wins_over_an_open_log_trace_and_open_trace_takes_it(tracer: FakeTracer) -> None:
    stream = io.StringIO()
    prod.configure_logging(stream, native=False)
    with logs.trace(request_id="r-1") as log_trace, tracer.start("request") as request:
        assert log_trace != request.trace_hex
        logs.event("inside")
    token = None
    with tracer.start("root") as root:
        token = logs.open_trace()
        assert logs.trace_id() == root.trace_hex
    logs.close_trace(token)
    (line,) = lines(stream.getvalue())
    assert line["trace_id"] == request.trace_hex and line["span_id"] == request.span_hex
    assert line["request_id"] == "r-1"


def test_without_a_tracer_lines_keep_the_log_trace_and_no_span_id() -> None:
    assert spans.TRACER is None
    stream = io.StringIO()
    prod.configure_logging(stream, native=False)
    token = spans.CURRENT.set(spans.SpanRef(1, 2, True))  # a stray ref is ignored while tracing is off
    try:
        with logs.trace() as trace_id:
            logs.event("inside")
    finally:
        spans.CURRENT.reset(token)
    (line,) = lines(stream.getvalue())
    assert line["trace_id"] == trace_id and "span_id" not in line


def test_span_id_is_a_safe_field() -> None:
    assert "span_id" in logs._SAFE_FIELDS and "span_id" in logs._LM_CALL_FIELDS
    assert logs.Redactor(from_env=False).data({"span_id": "00f067aa0ba902b7"}) == {"span_id": "00f067aa0ba902b7"}


# -- metrics -----------------------------------------------------------------------------------------------------------
def test_lm_exemplars_show_in_openmetrics_only() -> None:
    metrics = Metrics(CollectorRegistry())
    trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    metrics.record_lm("openai/m", "ok", 0.2, 10, 2, 0.001, exemplar=(trace, span))
    metrics.record_lm("openai/m", "ok", 3.0, 10, 2, 0.001)  # no exemplar for this bucket
    open_text = exposition(metrics, OPENMETRICS).decode()
    exemplars = [line for line in open_text.splitlines() if " # {" in line]
    assert len(exemplars) == 1
    assert exemplars[0].startswith('dspyo3_lm_request_duration_seconds_bucket{le="0.25",model="openai/m"} 1.0 # {')
    assert f'trace_id="{trace}"' in exemplars[0] and f'span_id="{span}"' in exemplars[0]
    assert " 0.2 " in exemplars[0] + " "
    assert open_text.rstrip().endswith("# EOF")
    classic = exposition(metrics).decode()
    assert trace not in classic and "# EOF" not in classic
    assert 'dspyo3_lm_request_duration_seconds_bucket{le="0.25",model="openai/m"} 1.0' in classic
    assert exposition(metrics, "text/plain").decode() == classic


def test_content_types_follow_accept() -> None:
    assert exposition_content_type(None) == "text/plain; version=0.0.4; charset=utf-8"
    assert exposition_content_type("*/*") == "text/plain; version=0.0.4; charset=utf-8"
    assert exposition_content_type(OPENMETRICS).startswith("application/openmetrics-text; version=1.0.0")


def test_current_exemplar_needs_a_sampled_local_span(tracer: FakeTracer) -> None:
    assert current_exemplar() is None
    with tracer.start("sampled") as span:
        assert current_exemplar() == {"trace_id": span.trace_hex, "span_id": span.span_hex}
    with tracer.start("unsampled", parent=spans.SpanRef(5, 6, False)):
        assert current_exemplar() is None
    with spans.remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"):
        assert current_exemplar() is None, "a remote parent is not a span of this process's metrics"


def test_no_exemplars_in_multiprocess_mode(tracer: FakeTracer, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))
    metrics = Metrics(CollectorRegistry())
    assert metrics.multiprocess
    metrics.record_lm("openai/m", "ok", 0.2, 1, 1, None, exemplar=("a" * 32, "b" * 16))  # accepted, dropped
    assert "trace_id" not in exposition(metrics, OPENMETRICS).decode()
    with tracer.start("sampled"):
        assert current_exemplar() is None


def test_under_a_remote_parent_alone_lines_carry_its_trace_id_but_no_span_id(tracer: FakeTracer) -> None:
    stream = io.StringIO()
    prod.configure_logging(stream, native=False)
    with spans.remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"):
        logs.event("remote")
    (line,) = lines(stream.getvalue())
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and "span_id" not in line
