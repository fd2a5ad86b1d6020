"""``dspyo3 serve`` app edge cases at the ASGI level: a client gone mid-stream or mid-body, overload refusals and
hostile HTTP methods (what a real server hands the app, driven here without a socket)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import dspy
import httpx
import pytest
from dspy.utils import DummyLM
from prometheus_client import CollectorRegistry

from dspyo3_production.metrics import Metrics, exposition
from dspyo3_production.serve.app import create_app
from dspyo3_production.serve.config import ServeConfig
from tests.production.serve.conftest import StaticSource, asgi_client


class RecordingGate:
    """A tenant gate that lets everyone in as ``acme`` and records admissions and settlements."""

    def __init__(self) -> None:
        self.admitted: list[int] = []
        self.settled: list[int] = []

    def authenticate(self, headers: Any) -> Any:
        class Tenant:
            name = "acme"

        return Tenant()

    async def admit(self, tenant: Any, estimated_tokens: int) -> None:
        self.admitted.append(estimated_tokens)

    def settle(self, tenant: Any, tokens: int, cost_usd: float, *, estimated_tokens: int | None = None) -> None:
        self.settled.append(tokens)


def _program() -> dspy.Module:
    program = dspy.Predict("question -> answer")
    program.set_lm(DummyLM([{"answer": "hello world"}] * 10))
    return program


def _scope(path: str, body: bytes, method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(b"content-type", b"application/json"),
                                         (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}


def test_stream_whose_client_is_gone_at_send_settles_the_tenant_in_the_request(caplog: Any) -> None:
    """The server's send fails (the client went away) between two events: the events are closed right there, so
    the slot place is freed and the tenant settled before the app returns, without context-variable errors."""
    gate = RecordingGate()
    app = create_app(ServeConfig(), sources={"qa": StaticSource("qa", {"1": _program()})}, tenants=gate,
                     metrics=Metrics(CollectorRegistry()))
    slot = app.state.slots["qa"]
    body = b'{"question": "hi"}'

    async def main() -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        never = asyncio.Event()

        async def receive() -> Any:
            if messages:
                return messages.pop(0)
            await never.wait()

        async def send(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                raise OSError("the client went away")

        await asyncio.wait_for(app(_scope("/v1/programs/qa/stream", body), receive, send), 20)
        assert slot.running == 0
        assert gate.settled == [0], "the request was not settled when its stream ended"

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    assert "different Context" not in caplog.text and "GeneratorExit" not in caplog.text


def test_stream_refused_as_overloaded_does_not_charge_the_tenant() -> None:
    gate = RecordingGate()
    app = create_app(ServeConfig(max_in_flight=1, max_queue=0), sources={"qa": StaticSource("qa", {"1": _program()})},
                     tenants=gate, metrics=Metrics(CollectorRegistry()))
    slot = app.state.slots["qa"]
    slot.running = 1  # one request holds the only place; none may wait

    async def main() -> httpx.Response:
        async with asgi_client(app) as client:
            return await client.post("/v1/programs/qa/stream", json={"question": "hi"})

    response = asyncio.run(main())
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    assert len(gate.admitted) == len(gate.settled), "the tenant was charged for a refused request"


def test_client_gone_mid_body_is_a_4xx_not_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(ServeConfig(), sources={"qa": StaticSource("qa", {"1": _program()})},
                     metrics=Metrics(CollectorRegistry()))
    sent: list[Any] = []

    async def main() -> None:
        messages = [{"type": "http.request", "body": b'{"quest', "more_body": True}, {"type": "http.disconnect"}]

        async def receive() -> Any:
            return messages.pop(0)

        async def send(message: Any) -> None:
            sent.append(message)

        await app(_scope("/v1/programs/qa", b'{"question": "hi"}'), receive, send)

    with caplog.at_level(logging.ERROR, logger="dspyo3.serve"):
        asyncio.run(main())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_http_metrics_do_not_grow_a_label_per_hostile_method() -> None:
    metrics = Metrics(CollectorRegistry())
    app = create_app(ServeConfig(), sources={"qa": StaticSource("qa", {"1": _program()})}, metrics=metrics)

    async def main() -> list[int]:
        async with asgi_client(app) as client:
            return [(await client.request(f"X{i}HOSTILE", "/v1/programs/qa")).status_code for i in range(20)]

    statuses = asyncio.run(main())
    assert set(statuses) == {405}
    text = exposition(metrics).decode()
    assert "HOSTILE" not in text
    assert 'method="other"' in text
