"""The Arize Phoenix fixture (dspyo3_core.testing.phoenix): a real OTLP collector on loopback whose stored spans
tests read back. Spans here come from the plain OpenTelemetry SDK, so these tests check the fixture, not dspyo3's
tracer."""

from __future__ import annotations

import os
import stat
import sys
import uuid
from pathlib import Path

import pytest

from dspyo3_core.testing.phoenix import PHOENIX_ENV, PhoenixProcess, find_phoenix
from dspyo3_core.testing.services import ServiceUnavailable


def _export(exporter: object, project: str) -> dict[str, str]:
    """root (SERVER) -> ok child with an event, and a child that raises; returns their hex ids."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind

    provider = TracerProvider(resource=Resource.create({"service.name": "fixture-test",
                                                         "openinference.project.name": project}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[arg-type]
    tracer = provider.get_tracer("dspyo3.tests")
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER) as root:
        root.set_attribute("dspyo3.test.str", "hello")
        root.set_attribute("dspyo3.test.int", 42)
        root.set_attribute("dspyo3.test.list", ["a", "b"])
        with tracer.start_as_current_span("child-ok") as ok:
            ok.add_event("cache.miss", {"key": "k1"})
        with pytest.raises(ValueError), tracer.start_as_current_span("child-err") as err:
            raise ValueError("boom")
    provider.shutdown()  # flushes
    return {
        "trace": format(root.get_span_context().trace_id, "032x"),
        "root": format(root.get_span_context().span_id, "016x"),
        "child-ok": format(ok.get_span_context().span_id, "016x"),
        "child-err": format(err.get_span_context().span_id, "016x"),
    }


def _check(spans: list[dict], ids: dict[str, str]) -> None:
    by_name = {span["name"]: span for span in spans}
    assert set(by_name) == {"root", "child-ok", "child-err"}
    assert {span["context"]["trace_id"] for span in spans} == {ids["trace"]}
    for name in ("root", "child-ok", "child-err"):
        assert by_name[name]["context"]["span_id"] == ids[name]
    assert by_name["root"]["parent_id"] is None
    assert by_name["child-ok"]["parent_id"] == by_name["child-err"]["parent_id"] == ids["root"]
    assert by_name["root"]["attributes"]["dspyo3.test.str"] == "hello"
    assert by_name["root"]["attributes"]["dspyo3.test.int"] == 42
    assert list(by_name["root"]["attributes"]["dspyo3.test.list"]) == ["a", "b"]
    assert [event["name"] for event in by_name["child-ok"]["events"]] == ["cache.miss"]
    assert by_name["child-err"]["status_code"] == "ERROR"
    assert by_name["child-ok"]["status_code"] != "ERROR"


def test_span_over_otlp_http_reads_back(phoenix: PhoenixProcess) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    project = f"fixture-http-{uuid.uuid4().hex[:8]}"
    ids = _export(OTLPSpanExporter(endpoint=phoenix.otlp_http, timeout=10), project)
    _check(phoenix.spans(project, want=3), ids)
    assert phoenix.all_spans(f"no-such-project-{uuid.uuid4().hex[:6]}") == []


def test_span_over_otlp_grpc_reads_back(phoenix: PhoenixProcess) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    project = f"fixture-grpc-{uuid.uuid4().hex[:8]}"
    ids = _export(OTLPSpanExporter(endpoint=phoenix.otlp_grpc, insecure=True, timeout=10), project)
    _check(phoenix.spans(project, want=3), ids)


def test_phoenix_listens_on_loopback_only(phoenix: PhoenixProcess) -> None:
    import psutil

    assert phoenix.process is not None
    processes = [psutil.Process(phoenix.process.pid)]
    processes += processes[0].children(recursive=True)
    listening = [conn for proc in processes for conn in proc.net_connections(kind="inet")
                 if conn.status == psutil.CONN_LISTEN]
    ports = {conn.laddr.port for conn in listening}
    assert {phoenix.http_port, phoenix.grpc_port} <= ports
    for conn in listening:
        assert conn.laddr.ip in {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, conn
    assert phoenix.database.is_file() and str(phoenix.database).startswith(str(phoenix.workdir))


def test_spans_times_out_naming_the_count(phoenix: PhoenixProcess) -> None:
    with pytest.raises(TimeoutError, match="0 of 1 spans"):
        phoenix.spans(f"empty-{uuid.uuid4().hex[:8]}", want=1, timeout=0.5)


def test_phoenix_override_must_be_an_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PHOENIX_ENV, str(tmp_path / "missing" / "phoenix"))
    with pytest.raises(ValueError, match=PHOENIX_ENV):
        find_phoenix()
    lonely = tmp_path / "bin" / "phoenix"  # an executable with no python beside it: not a virtual environment
    lonely.parent.mkdir()
    lonely.write_text("#!/bin/sh\n")
    lonely.chmod(lonely.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(PHOENIX_ENV, str(lonely))
    with pytest.raises(ValueError, match="no python interpreter beside it"):
        find_phoenix()
    python = lonely.parent / "python"
    python.symlink_to(os.path.realpath(sys.executable))
    assert find_phoenix() == str(python)


def test_missing_phoenix_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.delenv(PHOENIX_ENV, raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("phoenix") else real(name, *a))
    with pytest.raises(ServiceUnavailable, match="pip install arize-phoenix"):
        find_phoenix()
