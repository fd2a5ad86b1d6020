"""Prometheus metrics (parsed with prometheus_client's exposition parser), the scrape endpoints, multi-process
mode, the Grafana dashboard, and structured JSON logs with trace ids and redaction."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import dspy
import pytest
from prometheus_client.parser import text_string_to_metric_families

import dspyo3_production as prod
from dspyo3_core.lm import HookedLM
from dspyo3_core.testing.server import LMServer, Reply
from dspyo3_core.testing.services import free_port
from dspyo3_production.cache import TieredCache
from dspyo3_production.metrics import Metrics

from .conftest import answer_for


def scrape(text: str) -> dict[str, Any]:
    """Parse an exposition with prometheus_client's parser: {family name: family}."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict[str, Any], family: str, name: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {name}{labels} in {family}")


class Search(dspy.Retrieve):
    """A retriever DSPy calls like any ``dspy.Retrieve``."""

    def forward(self, query: str, k: int | None = None, **kwargs: Any) -> Any:
        return dspy.Prediction(passages=[f"passage about {query}", "another"])


def test_scrape_output_parses_and_counts_everything(qa_lm: HookedLM, qa_server: LMServer, metrics: Metrics) -> None:
    prod.enable(prod.Production(cache=TieredCache(metrics=metrics), metrics=metrics, log_events=False))

    def lookup(term: str) -> str:
        """Look a term up."""
        return term.upper()

    tool = dspy.Tool(lookup)
    qa = dspy.Predict("question -> answer")
    with dspy.context(lm=qa_lm):
        qa(question="a")
        qa(question="a")
        qa(question="b")
        tool(term="x")
        Search(k=2)("dspy")
    families = scrape(prod.exposition(metrics).decode())
    model = "openai/gpt-4o-mini"
    assert sample(families, "dspyo3_lm_requests", "dspyo3_lm_requests_total", model=model, status="ok") == 2
    assert sample(families, "dspyo3_lm_requests", "dspyo3_lm_requests_total", model=model, status="cache_hit") == 1
    assert sample(families, "dspyo3_lm_request_duration_seconds", "dspyo3_lm_request_duration_seconds_count",
                  model=model) == 3
    assert sample(families, "dspyo3_lm_request_duration_seconds", "dspyo3_lm_request_duration_seconds_bucket",
                  model=model, le="+Inf") == 3
    prompt = sum(entry["usage"].get("prompt_tokens", 0) for entry in qa_lm.history)
    assert sample(families, "dspyo3_lm_tokens", "dspyo3_lm_tokens_total", model=model, kind="prompt") == prompt > 0
    assert sample(families, "dspyo3_lm_cost_usd", "dspyo3_lm_cost_usd_total", model=model) > 0
    assert sample(families, "dspyo3_cache_requests", "dspyo3_cache_requests_total", tier="memory",
                  result="hit") == 1
    assert sample(families, "dspyo3_module_calls", "dspyo3_module_calls_total", module="Predict", status="ok") == 3
    assert sample(families, "dspyo3_tool_calls", "dspyo3_tool_calls_total", tool="lookup", status="ok") == 1
    assert sample(families, "dspyo3_retrieval_requests", "dspyo3_retrieval_requests_total", retriever="Search",
                  status="ok") == 1
    assert sample(families, "dspyo3_retrieval_passages", "dspyo3_retrieval_passages_total", retriever="Search") == 2


def test_errors_are_counted_by_class(qa_server: LMServer, manager: Any, metrics: Metrics) -> None:
    qa_server.script(Reply.server_error(503))
    lm = HookedLM("openai/gpt-4o-mini", api_base=qa_server.api_base, api_key="sk-x", num_retries=0, cache=False,
                  plugin_manager=manager)
    prod.enable(prod.Production(metrics=metrics, log_events=False))
    with pytest.raises(dspy.utils.exceptions.LMServerError):
        lm("hello")
    assert metrics.lm_requests_total("openai/gpt-4o-mini", "LMServerError") == 1


def test_asgi_app_serves_the_exposition(metrics: Metrics) -> None:
    from starlette.testclient import TestClient

    metrics.observe_lm("m", "ok", 0.1, {"prompt_tokens": 3, "completion_tokens": 1}, 0.5)
    response = TestClient(prod.make_asgi_app(metrics)).get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = scrape(response.text)
    assert sample(families, "dspyo3_lm_cost_usd", "dspyo3_lm_cost_usd_total", model="m") == 0.5


def test_metrics_serve_command(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from dspyo3_core.cli import main; main()", "metrics", "serve",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, body = time.monotonic() + 30, ""
        while time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        families = scrape(body)
        assert "dspyo3_cache_requests" in families and "dspyo3_lm_requests" in families
    finally:
        proc.terminate()
        proc.wait(10)


def test_multiprocess_mode_sums_every_process(tmp_path: Path) -> None:
    folder = tmp_path / "prom"
    folder.mkdir()
    worker = textwrap.dedent("""
        from dspyo3_production.metrics import Metrics
        m = Metrics()
        assert m.multiprocess
        for _ in range(3):
            m.observe_lm("openai/gpt-4o-mini", "ok", 0.2, {"prompt_tokens": 10, "completion_tokens": 2}, 0.001)
    """)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", worker], env=env, check=True, timeout=60)
    shown = subprocess.run([sys.executable, "-c", "from dspyo3_core.cli import main; main()", "metrics", "show",
                            "--multiprocess-dir", str(folder)], capture_output=True, text=True, timeout=60,
                           env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})
    assert shown.returncode == 0, shown.stderr
    families = scrape(shown.stdout)
    assert sample(families, "dspyo3_lm_requests", "dspyo3_lm_requests_total", model="openai/gpt-4o-mini",
                  status="ok") == 6
    assert sample(families, "dspyo3_lm_tokens", "dspyo3_lm_tokens_total", kind="prompt") == 60


def test_grafana_dashboard_covers_the_metrics() -> None:
    dashboard = json.loads(prod.dashboard_json())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for name in ("dspyo3_lm_requests_total", "dspyo3_lm_request_duration_seconds_bucket", "dspyo3_lm_tokens_total",
                 "dspyo3_lm_cost_usd_total", "dspyo3_cache_requests_total", "dspyo3_module_calls_total",
                 "dspyo3_tool_calls_total", "dspyo3_retrieval_requests_total", "dspyo3_circuit_state",
                 "dspyo3_ab_requests_total"):
        assert name in exprs, name
    assert {p["id"] for p in dashboard["panels"]} == set(range(1, len(dashboard["panels"]) + 1))


def read_events(path: Path, handler: logging.Handler) -> list[dict[str, Any]]:
    handler.flush()
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("native", [True, False])
def test_one_json_event_per_call_with_trace_ids_and_secrets_masked(
        native: bool, qa_lm: HookedLM, metrics: Metrics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-0123456789-secret")
    path = tmp_path / "events.jsonl"
    stream = path.open("w")
    handler = prod.configure_logging(stream, secrets=["configured-secret-value"], native=native)
    assert (getattr(handler, "sink", None) is not None) is native
    prod.enable(prod.Production(metrics=metrics))
    qa = dspy.Predict("question -> answer")
    with dspy.context(lm=qa_lm), prod.trace(request_id="r-1") as trace_id:
        qa(question="q")
        prod.logs.event("custom", api_key="sk-live-abcdefghijklmnop", note="uses tok-0123456789-secret and "
                        "configured-secret-value")
    logging.getLogger("dspyo3.other").warning("header Authorization: tok-0123456789-secret")
    events = read_events(path, handler)
    stream.close()
    kinds = [e["event"] for e in events]
    assert kinds.count("lm_call") == 1 and kinds.count("module_call") == 1
    lm_call = next(e for e in events if e["event"] == "lm_call")
    module_call = next(e for e in events if e["event"] == "module_call")
    assert lm_call["trace_id"] == module_call["trace_id"] == trace_id
    assert lm_call["request_id"] == "r-1" and lm_call["model"] == "openai/gpt-4o-mini" and lm_call["status"] == "ok"
    assert lm_call["prompt_tokens"] > 0 and lm_call["duration_ms"] > 0
    text = path.read_text()
    for secret in ("sk-live-abcdefghijklmnop", "tok-0123456789-secret", "configured-secret-value",
                   "sk-test-abcdefghijklmnop"):
        assert secret not in text
    custom = next(e for e in events if e["event"] == "custom")
    assert custom["api_key"].startswith("****") and "****" in custom["note"]
    assert any(e["event"].startswith("header Authorization: ****") for e in events)


def test_module_calls_open_a_trace_per_top_level_call(qa_lm: HookedLM, metrics: Metrics) -> None:
    stream = io.StringIO()
    prod.configure_logging(stream)
    prod.enable(prod.Production(metrics=metrics))
    class Pipeline(dspy.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.step = dspy.Predict("question -> answer")

        def forward(self, question: str) -> Any:
            return self.step(question=question)

    qa = Pipeline()
    with dspy.context(lm=qa_lm):
        qa(question="one")
        qa(question="two")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    traces = {e["trace_id"] for e in events}
    assert len(traces) == 2  # each top-level call is one trace; nested modules and LM calls share it
    assert all("trace_id" in e for e in events)
    assert [e["module"] for e in events if e["event"] == "module_call"] == ["Predict", "Pipeline"] * 2


def test_errors_are_logged_as_warnings(qa_server: LMServer, manager: Any, metrics: Metrics) -> None:
    qa_server.script(Reply.server_error(500, "provider exploded with key sk-this-lm-key-1234"))
    lm = HookedLM("openai/gpt-4o-mini", api_base=qa_server.api_base, api_key="sk-this-lm-key-1234", num_retries=0,
                  cache=False, plugin_manager=manager)
    stream = io.StringIO()
    prod.configure_logging(stream)
    prod.enable(prod.Production(metrics=metrics))
    with pytest.raises(dspy.utils.exceptions.LMServerError):
        lm("hi")
    (event,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert event["level"] == "warning" and event["status"] == "LMServerError" and "provider exploded" in event["error"]
    assert "sk-this-lm-key-1234" not in stream.getvalue() and "****1234" in event["error"]  # the LM's own key


def test_answers_are_unchanged_by_the_stack(qa_lm: HookedLM, metrics: Metrics) -> None:
    prod.enable(prod.Production(cache=TieredCache(metrics=metrics), metrics=metrics))
    with dspy.context(lm=qa_lm):
        assert dspy.Predict("question -> answer")(question="z").answer == answer_for("z")


def test_secrets_with_json_escapes_are_masked_too(tmp_path: Path) -> None:
    for native in (True, False):
        path = tmp_path / f"escaped-{native}.jsonl"
        stream = path.open("w")
        secret = 'quo"te\\back-slash-ünïcode-secret'
        handler = prod.configure_logging(stream, secrets=[secret], native=native)
        prod.logs.event("leak", note=f"the value is {secret}")
        logging.getLogger("dspyo3.x").warning("also %s", secret)
        handler.flush()
        text = path.read_text()
        stream.close()
        assert "back-slash" not in text and "****" in text, text


def test_event_sink_works_in_a_forked_child(tmp_path: Path) -> None:
    path = tmp_path / "fork.jsonl"
    stream = path.open("w")
    handler = prod.configure_logging(stream)
    assert getattr(handler, "sink", None) is not None
    prod.logs.event("parent")
    pid = os.fork()
    if pid == 0:  # the child: its writer thread was not copied by fork; a new one must take over
        try:
            prod.logs.event("child")
            ok = handler.sink.flush(5.0)
            os._exit(0 if ok else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    handler.flush()
    stream.close()
    assert os.WEXITSTATUS(status) == 0
    assert sorted(json.loads(line)["event"] for line in path.read_text().splitlines()) == ["child", "parent"]


def test_event_sink_writes_pre_serialized_fields_and_masks_them(tmp_path: Path) -> None:
    import orjson

    from dspyo3_native import EventSink

    path = tmp_path / "events.jsonl"
    with path.open("w") as out:
        sink = EventSink(out.fileno(), ["sk-secret-0123456789"])
        sink.emit_json("INFO", "dspyo3.events", "lm_call", orjson.dumps({"model": "m", "n": 2, "x": None}))
        sink.emit_json("WARNING", "dspyo3.events", "lm_call", orjson.dumps({"error": "bad key sk-secret-0123456789"}))
        sink.emit_json("INFO", "dspyo3.events", "empty", b"{}")
        with pytest.raises(ValueError, match="JSON object"):
            sink.emit_json("INFO", "dspyo3.events", "lm_call", b"[1, 2]")
        with pytest.raises(ValueError, match="UTF-8"):
            sink.emit_json("INFO", "dspyo3.events", "lm_call", b'{"a": "\xff"}')
        assert sink.flush(5.0)
    first, second, third = (json.loads(line) for line in path.read_text().splitlines())
    assert first["level"] == "info" and first["event"] == "lm_call" and first["ts"]
    assert {k: first[k] for k in ("model", "n", "x")} == {"model": "m", "n": 2, "x": None}
    assert "sk-secret-0123456789" not in second["error"] and second["error"].endswith("6789")
    assert set(third) == {"ts", "level", "logger", "event"}
