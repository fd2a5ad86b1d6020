"""The ``dspyo3 serve`` Python client: SSE decoding, error mapping, and the sync/async clients against real servers
on 127.0.0.1 (a small Starlette app speaking the HTTP contract, and the app ``create_app`` builds)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from dspyo3_production.serve.client import (
    AsyncClient,
    Client,
    Prediction,
    ProgramInfo,
    ServeClientError,
    SSEDecoder,
    StreamChunk,
    StreamStatus,
)
from tests.production.serve.conftest import uvicorn_server

KEY = "sk-serve-test-0123456789abcdef"


# ---------------------------------------------------------------------------------------------------------------
# a real server in a background thread


def running(app: Any) -> AbstractContextManager[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    return uvicorn_server(app)


# ---------------------------------------------------------------------------------------------------------------
# a small app speaking the HTTP contract of `dspyo3 serve` (answers "answer to <question>")


def _body(question: str, request_id: str = "req-1") -> dict[str, Any]:
    return {"outputs": {"answer": f"answer to {question}"}, "program": "qa", "version": "1.2.0", "arm": "a",
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}, "cost": 0.00012,
            "cache_hit": False, "request_id": request_id}


def _error(status: int, type_: str, message: str, fields: list[dict[str, Any]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message, "fields": fields}, "request_id": "req-err"},
                        status_code=status, headers={"x-request-id": "req-err", **(headers or {})})


def _check(inputs: Any) -> JSONResponse | None:
    if not isinstance(inputs, dict) or "question" not in inputs:
        return _error(422, "validation_error", "bad inputs",
                      [{"field": "question", "problem": "missing", "expected": "string"}])
    if not isinstance(inputs["question"], str):
        return _error(422, "validation_error", "bad inputs",
                      [{"field": "question", "problem": "wrong type", "expected": "string"}])
    return None


def contract_app(*, keys: frozenset[str] = frozenset()) -> Starlette:
    seen_auth: list[str | None] = []

    def authorized(request: Request) -> bool:
        seen_auth.append(request.headers.get("authorization"))
        return not keys or request.headers.get("authorization", "").removeprefix("Bearer ") in keys

    async def predict(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "unauthorized", "missing or invalid API key")
        name = request.path_params["name"]
        if name == "proxy":
            return PlainTextResponse("<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway"
                                     "</h1><hr>nginx</body></html>", status_code=502,
                                     headers={"content-type": "text/html"})
        if name == "busy":
            return _error(429, "rate_limited", "tenant over its rate limit", headers={"retry-after": "3"})
        if name != "qa":
            return _error(404, "not_found", f"no program {name!r}; served: qa")
        inputs = await request.json()
        problem = _check(inputs)
        if problem is not None:
            return problem
        return JSONResponse(_body(inputs["question"]),
                            headers={"x-request-id": "req-1", "x-dspyo3-program-version": "1.2.0",
                                     "x-dspyo3-arm": "a"})

    async def stream(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "unauthorized", "missing or invalid API key")
        inputs = await request.json()
        problem = _check(inputs)
        if problem is not None:
            return problem
        question = inputs["question"]

        async def events() -> AsyncIterator[bytes]:
            # the framing varies on purpose: CRLF, comments, multi-line data, events split across writes
            yield b": keep-alive\r\n\r\n"
            yield b"event: status\r\ndata: {\"message\": \"calling the LM\"}\r\n\r\n"
            for piece in ("answer ", "to ", question):
                data = json.dumps({"field": "answer", "text": piece, "predictor": "self"})
                frame = f"event: chunk\ndata: {data}\n\n".encode()
                yield frame[:7]
                await asyncio.sleep(0)
                yield frame[7:]
            if question == "fail":
                error = {"error": {"type": "timeout", "message": "the LM did not answer in time", "fields": None},
                         "request_id": "req-s"}
                yield f"event: error\ndata: {json.dumps(error)}\n\n".encode()
                return
            body = json.dumps(_body(question, "req-s"), indent=1)  # pretty-printed: several data lines
            yield ("event: prediction\n" + "".join(f"data: {line}\n" for line in body.splitlines()) + "\n").encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def batch(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "unauthorized", "missing or invalid API key")
        payload = await request.json()
        results = []
        for item in payload["items"]:
            problem = _check(item)
            if problem is None:
                results.append({"ok": True, **_body(item["question"], "req-b")})
            else:
                results.append({"ok": False, "error": json.loads(bytes(problem.body))["error"]})
        return JSONResponse({"results": results, "program": "qa", "version": "1.2.0", "request_id": "req-b"})

    async def programs(request: Request) -> Response:
        return JSONResponse({"programs": [{
            "name": "qa", "version": "1.2.0", "stage": "prod", "versions": {"a": "1.2.0", "b": None},
            "input_schema": {"type": "object", "properties": {"question": {"type": "string"}}},
            "output_schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
            "status": "ready"}]})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        return JSONResponse({"ready": False, "reasons": ["qa: loading"]}, status_code=503,
                            headers={"retry-after": "1"})

    app = Starlette(routes=[
        Route("/v1/programs", programs, methods=["GET"]),
        Route("/v1/programs/{name}", predict, methods=["POST"]),
        Route("/v1/programs/{name}/stream", stream, methods=["POST"]),
        Route("/v1/programs/{name}/batch", batch, methods=["POST"]),
        Route("/healthz", healthz), Route("/readyz", readyz),
    ])
    app.state.seen_auth = seen_auth
    return app


@pytest.fixture(scope="module")
def contract_url() -> Iterator[str]:
    with running(contract_app()) as url:
        yield url


# ---------------------------------------------------------------------------------------------------------------
# SSE decoding


def _decode(*chunks: bytes) -> list[tuple[str, str]]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_sse_joins_data_lines_and_skips_comments() -> None:
    stream = b": ping\n\nevent: chunk\ndata: one\ndata:two\ndata:  three\n\n: keep-alive\n\ndata: plain\n\n"
    assert _decode(stream) == [("chunk", "one\ntwo\n three"), ("message", "plain")]


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
def test_sse_line_endings(newline: bytes) -> None:
    stream = newline.join([b"event: status", b"data: a", b"data: b", b"", b"data: c", b"", b""])
    assert _decode(stream) == [("status", "a\nb"), ("message", "c")]


def test_sse_byte_by_byte_with_crlf_and_multibyte_text_split() -> None:
    stream = "\ufeffevent: chunk\r\ndata: caf\u00e9 \u2028 \U0001f600\r\n\r\nevent: x\r\n\r\ndata: y\r\n\r\n".encode()
    assert _decode(*(stream[i:i + 1] for i in range(len(stream)))) == [
        ("chunk", "caf\u00e9 \u2028 \U0001f600"), ("message", "y")]


def test_sse_event_without_data_is_dropped_and_unterminated_event_discarded() -> None:
    assert _decode(b"event: chunk\n\nid: 4\nretry: 10\ndata: kept\n\ndata: never ended\n") == [("message", "kept")]


def test_sse_field_without_colon_and_event_name_reset() -> None:
    assert _decode(b"event: a\ndata\n\ndata: b\n\n") == [("a", ""), ("message", "b")]


# ---------------------------------------------------------------------------------------------------------------
# against the contract app


def test_predict(contract_url: str) -> None:
    with Client(contract_url) as client:
        prediction = client.predict("qa", question="What is DSPy?")
    assert prediction["answer"] == "answer to What is DSPy?"
    assert prediction.outputs == {"answer": "answer to What is DSPy?"}
    assert "answer" in prediction and prediction.get("missing") is None
    assert (prediction.version, prediction.arm, prediction.request_id) == ("1.2.0", "a", "req-1")
    assert prediction.usage == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    assert prediction.cost == pytest.approx(0.00012) and prediction.cache_hit is False
    with pytest.raises(KeyError):
        prediction["missing"]


def test_predict_422_names_the_field(contract_url: str) -> None:
    with Client(contract_url) as client, pytest.raises(ServeClientError) as caught:
        client.predict("qa", question=3)
    error = caught.value
    assert (error.status, error.type, error.request_id) == (422, "validation_error", "req-err")
    assert error.fields == [{"field": "question", "problem": "wrong type", "expected": "string"}]
    assert "question: wrong type, expected string" in str(error)


def test_not_found_and_retry_after(contract_url: str) -> None:
    with Client(contract_url) as client:
        with pytest.raises(ServeClientError) as missing:
            client.predict("nope", question="q")
        with pytest.raises(ServeClientError) as busy:
            client.predict("busy", question="q")
    assert missing.value.status == 404 and "served: qa" in missing.value.message
    assert (busy.value.status, busy.value.type, busy.value.retry_after) == (429, "rate_limited", 3.0)


def test_html_502_from_a_proxy_is_a_clear_error(contract_url: str) -> None:
    with Client(contract_url) as client, pytest.raises(ServeClientError) as caught:
        client.predict("proxy", question="q")
    error = caught.value
    assert (error.status, error.type) == (502, "http_error")
    assert "502 Bad Gateway" in str(error) and "text/html" in str(error)
    assert error.__context__ is None and error.__cause__ is None  # no JSONDecodeError behind it


def test_non_json_success_body_is_a_clear_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(
        200, text="<html><body>captive portal</body></html>", headers={"content-type": "text/html"}))
    with Client("http://service", transport=transport) as client, pytest.raises(ServeClientError) as caught:
        client.predict("qa", question="q")
    assert caught.value.type == "http_error" and "captive portal" in caught.value.message
    assert not isinstance(caught.value.__context__, json.JSONDecodeError)


def test_stream_chunks_then_prediction(contract_url: str) -> None:
    with Client(contract_url) as client:
        events = list(client.stream("qa", question="life"))
    assert events[0] == StreamStatus("calling the LM")
    chunks = [e for e in events if isinstance(e, StreamChunk)]
    assert "".join(c.text for c in chunks) == "answer to life"
    assert {(c.field, c.predictor) for c in chunks} == {("answer", "self")}
    assert isinstance(events[-1], Prediction) and events[-1]["answer"] == "answer to life"
    assert events[-1].request_id == "req-s" and len(events) == 5


def test_leaving_a_stream_early_closes_it_and_the_client_goes_on(contract_url: str) -> None:
    with Client(contract_url) as client:
        events = client.stream("qa", question="early")
        assert next(events) == StreamStatus("calling the LM")
        events.close()  # what a `break` out of the for loop does once the generator is collected
        assert client.predict("qa", question="after")["answer"] == "answer to after"


def test_stream_error_event_raises(contract_url: str) -> None:
    seen: list[object] = []
    with Client(contract_url) as client, pytest.raises(ServeClientError) as caught:
        for event in client.stream("qa", question="fail"):
            seen.append(event)
    assert (caught.value.status, caught.value.type, caught.value.request_id) == (504, "timeout", "req-s")
    assert len([e for e in seen if isinstance(e, StreamChunk)]) == 3


def test_stream_refused_before_it_starts(contract_url: str) -> None:
    with Client(contract_url) as client, pytest.raises(ServeClientError) as caught:
        list(client.stream("qa", answer="no question"))
    assert caught.value.status == 422 and caught.value.fields and caught.value.fields[0]["field"] == "question"


def test_batch_with_a_bad_item(contract_url: str) -> None:
    with Client(contract_url) as client:
        results = client.batch("qa", [{"question": "a"}, {"question": 5}, {"question": "c"}])
    assert [type(r).__name__ for r in results] == ["Prediction", "ServeClientError", "Prediction"]
    first, bad, last = results
    assert isinstance(first, Prediction) and first["answer"] == "answer to a" and first.version == "1.2.0"
    assert isinstance(last, Prediction) and last["answer"] == "answer to c"
    assert isinstance(bad, ServeClientError) and (bad.status, bad.type) == (422, "validation_error")
    assert bad.fields == [{"field": "question", "problem": "wrong type", "expected": "string"}]


def test_programs_health_ready(contract_url: str) -> None:
    with Client(contract_url) as client:
        programs = client.programs()
        assert client.health() is True
        assert client.ready() == {"ready": False, "reasons": ["qa: loading"]}
    assert programs == [ProgramInfo(
        name="qa", version="1.2.0", stage="prod", versions={"a": "1.2.0", "b": None},
        input_schema={"type": "object", "properties": {"question": {"type": "string"}}},
        output_schema={"type": "object", "properties": {"answer": {"type": "string"}}}, status="ready")]


def test_unreachable_service() -> None:
    with Client("http://127.0.0.1:9", timeout=5) as client:
        assert client.health() is False
        with pytest.raises(ServeClientError) as caught:
            client.predict("qa", question="q")
    assert (caught.value.status, caught.value.type) == (0, "connection_error")


def test_api_key_sent_and_never_shown() -> None:
    app = contract_app(keys=frozenset({KEY}))
    with running(app) as url:
        with Client(url, api_key=KEY) as client:
            assert client.predict("qa", question="q")["answer"] == "answer to q"
            assert KEY not in repr(client)
        assert app.state.seen_auth[-1] == f"Bearer {KEY}"
        with Client(url, api_key=KEY + "-wrong") as client, pytest.raises(ServeClientError) as caught:
            client.predict("qa", question="q")
    error = caught.value
    assert error.status == 401
    assert KEY not in str(error) and KEY not in repr(error) and KEY not in repr(client)
    with pytest.raises(ValueError) as bad_key:
        Client(url, api_key=KEY + "\n")
    assert KEY not in str(bad_key.value)


def test_error_text_masks_the_key_a_proxy_echoes() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(
        502, text=f"upstream said: {request.headers['authorization']}"))
    with Client("http://service", api_key=KEY, transport=transport) as client, \
            pytest.raises(ServeClientError) as caught:
        client.predict("qa", question="q")
    assert KEY not in str(caught.value) and KEY not in repr(caught.value) and "***" in str(caught.value)


def test_async_client(contract_url: str) -> None:
    async def main() -> tuple[Prediction, list[Any], list[Prediction | ServeClientError], bool]:
        async with AsyncClient(contract_url) as client:
            prediction = await client.predict("qa", question="x")
            events = [event async for event in client.stream("qa", question="y")]
            results = await client.batch("qa", [{"question": "z"}, {}])
            with pytest.raises(ServeClientError) as caught:
                await client.predict("qa")
            assert caught.value.fields == [{"field": "question", "problem": "missing", "expected": "string"}]
            return prediction, events, results, await client.health()

    prediction, events, results, healthy = asyncio.run(main())
    assert prediction["answer"] == "answer to x" and healthy
    assert "".join(e.text for e in events if isinstance(e, StreamChunk)) == "answer to y"
    assert isinstance(events[-1], Prediction) and events[-1]["answer"] == "answer to y"
    assert isinstance(results[0], Prediction) and isinstance(results[1], ServeClientError)
    assert results[1].status == 422


# ---------------------------------------------------------------------------------------------------------------
# against the app `create_app` builds (the QA program on the loopback LM server)


@pytest.fixture
def served_url(serve_app: Starlette) -> Iterator[str]:
    with running(serve_app) as url:
        yield url


def test_real_app_predict_stream_batch(served_url: str) -> None:
    with Client(served_url) as client:
        prediction = client.predict("qa", question="What is DSPy?")
        events = list(client.stream("qa", question="streamed"))
        results = client.batch("qa", [{"question": "one"}, {"question": 2}, {"question": "three"}])
        programs = client.programs()
        assert client.health() is True
        ready = client.ready()
    assert prediction["answer"] == "answer to What is DSPy?"
    assert prediction.version == "1.0.0" and prediction.arm == "a" and prediction.request_id
    assert prediction.usage["total_tokens"] > 0
    chunks = [e for e in events if isinstance(e, StreamChunk)]
    assert chunks and "".join(c.text for c in chunks if c.field == "answer") == "answer to streamed"
    assert isinstance(events[-1], Prediction) and events[-1]["answer"] == "answer to streamed"
    assert not any(isinstance(e, Prediction) for e in events[:-1])
    ok_one, bad, ok_three = results
    assert isinstance(ok_one, Prediction) and ok_one["answer"] == "answer to one"
    assert isinstance(ok_three, Prediction) and ok_three["answer"] == "answer to three"
    assert isinstance(bad, ServeClientError) and (bad.status, bad.type) == (422, "validation_error")
    assert bad.fields and bad.fields[0]["field"] == "question" and bad.fields[0]["expected"] == "string"
    assert [p.name for p in programs] == ["qa"] and programs[0].version == "1.0.0"
    assert programs[0].input_schema["properties"]["question"]["type"] == "string"
    assert ready["status"] == "ready"


def test_real_app_errors(served_url: str) -> None:
    with Client(served_url) as client:
        with pytest.raises(ServeClientError) as wrong:
            client.predict("qa", question=["not", "a", "string"])
        with pytest.raises(ServeClientError) as missing:
            client.predict("nope", question="q")
        with pytest.raises(ServeClientError) as streamed:
            list(client.stream("qa"))
    assert (wrong.value.status, wrong.value.type) == (422, "validation_error")
    assert wrong.value.fields and wrong.value.fields[0]["field"] == "question" and wrong.value.request_id
    assert missing.value.status == 404 and "qa" in missing.value.message
    assert streamed.value.status == 422 and streamed.value.fields
    assert streamed.value.fields[0]["field"] == "question"


def test_real_app_async_client(served_url: str) -> None:
    async def main() -> tuple[Prediction, list[Any]]:
        async with AsyncClient(served_url) as client:
            return (await client.predict("qa", question="async"),
                    [event async for event in client.stream("qa", question="async stream")])

    prediction, events = asyncio.run(main())
    assert prediction["answer"] == "answer to async"
    assert isinstance(events[-1], Prediction) and events[-1]["answer"] == "answer to async stream"


def test_real_app_with_tenants_needs_the_key(make_app: Any, qa_source: Any) -> None:
    tenants_module = pytest.importorskip("dspyo3_production.serve.tenants")
    from dspyo3_production.serve.config import ServeConfig, TenantConfig

    config = ServeConfig(tenants=(TenantConfig(name="acme", key_sha256=(hashlib.sha256(KEY.encode()).hexdigest(),)),))
    gate = tenants_module.TenantGate.from_config(config)
    app = make_app({"qa": qa_source}, tenants=gate)
    with running(app) as url:
        with Client(url, api_key=KEY) as client:
            assert client.predict("qa", question="tenant")["answer"] == "answer to tenant"
        with Client(url, api_key="sk-someone-else-0123456789") as client, pytest.raises(ServeClientError) as bad:
            client.predict("qa", question="q")
        with Client(url) as client, pytest.raises(ServeClientError) as none:
            client.predict("qa", question="q")
    assert bad.value.status == 401 and none.value.status == 401
    assert KEY not in str(bad.value) and "someone" not in str(bad.value)
