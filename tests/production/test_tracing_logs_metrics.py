"""Logs and metrics join traces (with a recording fake tracer installed through ``dspyo3_core.spans``): JSON log
lines carry the current span's ``trace_id`` and ``span_id`` (Python formatter and native ``EventSink`` paths), LM
latency exemplars appear in the OpenMetrics exposition and never in the 0.0.4 text or in multi-process mode."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import dspyo3_production as prod
from dspyo3_core import spans
from dspyo3_core.testing import RecordingTracer
from dspyo3_production import logs
from dspyo3_production.metrics import Metrics, current_exemplar, exposition, exposition_content_type

OPENMETRICS = "application/openmetrics-text; version=1.0.0"

@pytest.fixture
def tracer() -> Iterator[RecordingTracer]:
    with RecordingTracer().installed() as recording:
        yield recording


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- logs --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("native", [False, True])
def test_log_lines_carry_the_current_span_ids(native: bool, tracer: RecordingTracer, tmp_path: Path) -> None:
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


def test_the_span_trace_id_wins_over_an_open_log_trace_and_open_trace_takes_it(tracer: RecordingTracer) -> None:
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


def test_current_exemplar_needs_a_sampled_local_span(tracer: RecordingTracer) -> None:
    assert current_exemplar() is None
    with tracer.start("sampled") as span:
        assert current_exemplar() == {"trace_id": span.trace_hex, "span_id": span.span_hex}
    with tracer.start("unsampled", parent=spans.SpanRef(5, 6, False)):
        assert current_exemplar() is None
    with spans.remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"):
        assert current_exemplar() is None, "a remote parent is not a span of this process's metrics"


def test_no_exemplars_in_multiprocess_mode(tracer: RecordingTracer, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))
    metrics = Metrics(CollectorRegistry())
    assert metrics.multiprocess
    metrics.record_lm("openai/m", "ok", 0.2, 1, 1, None, exemplar=("a" * 32, "b" * 16))  # accepted, dropped
    assert "trace_id" not in exposition(metrics, OPENMETRICS).decode()
    with tracer.start("sampled"):
        assert current_exemplar() is None


def test_under_a_remote_parent_alone_lines_carry_its_trace_id_but_no_span_id(tracer: RecordingTracer) -> None:
    stream = io.StringIO()
    prod.configure_logging(stream, native=False)
    with spans.remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"):
        logs.event("remote")
    (line,) = lines(stream.getvalue())
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and "span_id" not in line
