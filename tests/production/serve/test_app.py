"""The ``dspyo3 serve`` app: every route and every error class of the HTTP contract, in process (ASGI) and on a
real uvicorn server where the transport matters (chunked bodies, client disconnects)."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import dspy
import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

import dspyo3_production as prod
from dspyo3_core.lm import HookedLM
from dspyo3_core.plugins import PluginManager
from dspyo3_core.testing.server import LMServer, Reply, chat_reply
from dspyo3_production.metrics import Metrics
from dspyo3_production.serve.app import app_from_environment, config_from_env, config_to_env, create_app
from dspyo3_production.serve.config import ABSplit, ProgramConfig, ServeConfig, TenantConfig
from dspyo3_production.serve.slots import ProgramSlot, arm_share
from dspyo3_production.serve.tenants import TenantGate, hash_key
from tests.production.serve.conftest import StaticSource, asgi_client, qa_program, uvicorn_server

MakeApp = Callable[..., Starlette]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def post(app: Starlette, path: str, **kwargs: Any) -> httpx.Response:
    async with asgi_client(app) as client:
        return await client.post(path, **kwargs)


async def get(app: Starlette, path: str, **kwargs: Any) -> httpx.Response:
    async with asgi_client(app) as client:
        return await client.get(path, **kwargs)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    return dict(body["error"])


class SilentLM:
    """A loopback 'LM provider' that reads one request and never answers, recording when the client closes the
    connection (what a cancelled LM call looks like from the provider's side)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.received = threading.Event()
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.received.set()
            while connection.recv(65536):
                pass
            self.closed.set()

    def close(self) -> None:
        self.listener.close()


# -- predict -------------------------------------------------------------------------------------------------------
def test_predict_answers_outputs_usage_cost_and_headers(serve_app: Starlette, qa_server: LMServer) -> None:
    response = run(post(serve_app, "/v1/programs/qa", json={"question": "what is 2+2?"}))
    assert response.status_code == 200
    body = response.json()
    assert body["outputs"] == {"answer": "answer to what is 2+2?"}
    assert body["program"] == "qa" and body["version"] == "1.0.0" and body["arm"] == "a"
    assert response.headers["x-dspyo3-program-version"] == "1.0.0"
    assert response.headers["x-dspyo3-arm"] == "a"
    assert body["request_id"] == response.headers["x-request-id"]
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["cost"] is not None and body["cost"] > 0  # gpt-4o-mini has a price in PRICING
    assert body["cache_hit"] is False
    assert len(qa_server.requests) == 1


def test_second_identical_request_is_a_cache_hit_with_no_usage(serve_app: Starlette) -> None:
    async def main() -> tuple[httpx.Response, httpx.Response]:
        async with asgi_client(serve_app) as client:
            first = await client.post("/v1/programs/qa", json={"question": "same"})
            second = await client.post("/v1/programs/qa", json={"question": "same"})
            return first, second

    first, second = run(main())
    assert first.json()["cache_hit"] is False
    assert second.json()["cache_hit"] is True
    assert second.json()["usage"]["total_tokens"] == 0
    assert second.json()["cost"] == 0


def test_usage_is_per_request_under_concurrency(make_app: MakeApp, qa_lm: HookedLM) -> None:
    app = make_app({"qa": StaticSource("qa", {"1": qa_program(qa_lm)})})

    async def main() -> list[httpx.Response]:
        async with asgi_client(app) as client:
            return list(await asyncio.gather(*(client.post("/v1/programs/qa", json={"question": f"q{i}"})
                                               for i in range(6))))

    responses = run(main())
    single = [r.json()["usage"]["total_tokens"] for r in responses]
    # each request counts its own one LM call, not the others' running at the same time
    assert all(0 < tokens < 2 * min(single) for tokens in single)


def test_request_id_is_kept_when_sane_else_replaced(serve_app: Starlette) -> None:
    kept = run(get(serve_app, "/healthz", headers={"x-request-id": "abc-123.x:y"}))
    assert kept.headers["x-request-id"] == "abc-123.x:y"
    replaced = run(get(serve_app, "/healthz", headers={"x-request-id": "bad id\twith spaces"}))
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"
    assert len(replaced.headers["x-request-id"]) == 32


# -- errors --------------------------------------------------------------------------------------------------------
def test_422_names_the_field_and_the_expected_type(make_app: MakeApp, qa_lm: HookedLM) -> None:
    program = dspy.Predict("question: str, k: int -> answer")
    program.set_lm(qa_lm)
    app = make_app({"typed": StaticSource("typed", {"1": program})})
    wrong = run(post(app, "/v1/programs/typed", json={"question": "q", "k": "many"}))
    assert wrong.status_code == 422
    error = error_of(wrong)
    assert error["type"] == "validation_error"
    assert error["fields"] == [{"field": "k", "problem": error["fields"][0]["problem"], "expected": "integer"}]
    missing = error_of(run(post(app, "/v1/programs/typed", json={"k": 3})))
    assert {"field": "question", "problem": "missing", "expected": "string"} in missing["fields"]
    extra = error_of(run(post(app, "/v1/programs/typed", json={"question": "q", "k": 1, "nope": 1})))
    assert [f["field"] for f in extra["fields"]] == ["nope"]
    not_object = run(post(app, "/v1/programs/typed", json=["q"]))
    assert not_object.status_code == 422 and error_of(not_object)["fields"][0]["expected"] == "object"


def test_400_for_malformed_or_empty_json(serve_app: Starlette) -> None:
    malformed = run(post(serve_app, "/v1/programs/qa", content=b'{"question": '))
    assert malformed.status_code == 400 and error_of(malformed)["type"] == "bad_request"
    empty = run(post(serve_app, "/v1/programs/qa", content=b""))
    assert empty.status_code == 400


def test_404_for_unknown_program_lists_served_names_and_unknown_routes_are_json(serve_app: Starlette) -> None:
    response = run(post(serve_app, "/v1/programs/nope", json={"question": "q"}))
    assert response.status_code == 404
    error = error_of(response)
    assert error["type"] == "not_found" and "qa" in error["message"]
    route = run(get(serve_app, "/no/such/route"))
    assert route.status_code == 404 and error_of(route)["type"] == "not_found"
    method = run(get(serve_app, "/v1/programs/qa"))
    assert method.status_code == 405 and error_of(method)["type"] == "method_not_allowed"


def test_413_over_max_body_bytes_with_content_length(make_app: MakeApp, qa_source: StaticSource,
                                                     qa_server: LMServer) -> None:
    app = make_app({"qa": qa_source}, max_body_bytes=64)
    response = run(post(app, "/v1/programs/qa", json={"question": "x" * 100}))
    assert response.status_code == 413 and error_of(response)["type"] == "payload_too_large"
    assert qa_server.requests == []


def test_413_for_a_chunked_body_without_content_length(make_app: MakeApp, qa_source: StaticSource,
                                                        qa_server: LMServer) -> None:
    app = make_app({"qa": qa_source}, max_body_bytes=64)

    async def chunks(total: int) -> AsyncIterator[bytes]:
        body = orjson.dumps({"question": "y" * total})
        for i in range(0, len(body), 16):
            yield body[i:i + 16]

    async def main(url: str) -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            big = await client.post("/v1/programs/qa", content=chunks(500))
            small = await client.post("/v1/programs/qa", content=chunks(5))
            return big, small

    with uvicorn_server(app) as url:
        big, small = run(main(url))
    assert "content-length" not in big.request.headers
    assert big.request.headers["transfer-encoding"] == "chunked"
    assert big.status_code == 413 and error_of(big)["type"] == "payload_too_large"
    assert small.status_code == 200 and small.json()["outputs"]["answer"] == "answer to yyyyy"


def test_504_after_request_timeout_and_the_call_is_cancelled(make_app: MakeApp, qa_source: StaticSource,
                                                              qa_server: LMServer) -> None:
    qa_server.script(Reply.hang_up(30))
    app = make_app({"qa": qa_source}, request_timeout=0.5)
    response = run(post(app, "/v1/programs/qa", json={"question": "slow"}))
    assert response.status_code == 504 and error_of(response)["type"] == "timeout"
    slot: ProgramSlot = app.state.slots["qa"]
    assert slot.running == 0 and slot.waiting == 0  # the request's task was cancelled, its place given back


def test_503_with_retry_after_when_the_queue_is_full(make_app: MakeApp, qa_source: StaticSource,
                                                      qa_server: LMServer) -> None:
    qa_server.responder = lambda request: Reply(chat_reply(answer="slow"), latency=1.0)
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
    assert first.status_code == 200 and second.status_code == 200
    assert third.status_code == 503
    assert error_of(third)["type"] == "overloaded"
    assert int(third.headers["retry-after"]) >= 1
    assert slot.refused == 1


def test_500_is_generic_and_carries_the_request_id(make_app: MakeApp, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.predict = dspy.Predict("question -> answer")

        async def aforward(self, question: str) -> Any:
            raise RuntimeError("internal detail sk-secret-do-not-show")

    app = make_app({"broken": StaticSource("broken", {"1": Broken()})})
    response = run(post(app, "/v1/programs/broken", json={"question": "q"}, headers={"x-request-id": "rid-1"}))
    assert response.status_code == 500
    error = error_of(response)
    assert error["type"] == "internal_error" and "rid-1" in error["message"]
    assert "sk-secret" not in response.text and "RuntimeError" not in response.text
    assert "internal detail" in caplog.text  # the detail goes to the server log only


def test_tenants_401_without_a_key_200_with_it_and_429_when_rate_limited(make_app: MakeApp,
                                                                         qa_source: StaticSource) -> None:
    key = "sk-tenant-abcdefghijklmnop"
    config = ServeConfig(tenants=(TenantConfig("acme", (hash_key(key),), requests_per_second=0.001),))
    gate = TenantGate.from_config(config)
    app = create_app(config, sources={"qa": qa_source}, tenants=gate)

    async def main() -> list[httpx.Response]:
        async with asgi_client(app) as client:
            return [await client.post("/v1/programs/qa", json={"question": "q"}),
                    await client.post("/v1/programs/qa", json={"question": "q"},
                                      headers={"authorization": "Bearer sk-wrong-key-123456"}),
                    await client.post("/v1/programs/qa", json={"question": "q"},
                                      headers={"authorization": f"Bearer {key}"}),
                    await client.post("/v1/programs/qa", json={"question": "q"}, headers={"x-api-key": key})]

    missing, wrong, ok, limited = run(main())
    assert missing.status_code == 401 and wrong.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert error_of(missing)["type"] == error_of(wrong)["type"] == "unauthorized"
    assert key not in wrong.text and "acme" not in wrong.text
    assert ok.status_code == 200
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1

    async def scrape() -> str:
        async with asgi_client(app) as client:
            return (await client.get("/metrics")).text

    text = run(scrape())
    assert 'status="200",tenant="acme"} 1.0' in text and 'status="429",tenant="acme"} 1.0' in text
    assert 'route="/v1/programs/{name}",status="401",tenant=""} 2.0' in text  # counted under its route


def test_a_failed_request_still_counts_its_lm_calls_against_the_tenant_budget(qa_lm: HookedLM) -> None:
    class CallsThenFails(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.predict = dspy.Predict("question -> answer")
            self.predict.set_lm(qa_lm)

        async def aforward(self, question: str) -> Any:
            await self.predict.acall(question=question)  # billed by the provider
            raise RuntimeError("fails after its LM call")

    key = "sk-tenant-abcdefghijklmnop"
    config = ServeConfig(tenants=(TenantConfig("acme", (hash_key(key),), usd_per_day=1e-9),))
    app = create_app(config, sources={"qa": StaticSource("qa", {"1": CallsThenFails()})})

    async def main() -> list[httpx.Response]:
        async with asgi_client(app) as client:
            return [await client.post("/v1/programs/qa", json={"question": f"q{i}"}, headers={"x-api-key": key})
                    for i in range(2)]

    failed, refused = run(main())
    assert failed.status_code == 500
    assert refused.status_code == 429 and error_of(refused)["type"] == "over_budget"


# -- stream --------------------------------------------------------------------------------------------------------
def parse_sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], orjson.loads(lines["data"])))
    return events


def test_stream_sends_chunks_then_the_prediction(serve_app: Starlette) -> None:
    response = run(post(serve_app, "/v1/programs/qa/stream", json={"question": "stream me"}))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-dspyo3-program-version"] == "1.0.0"
    events = parse_sse(response.text)
    chunks = [data for kind, data in events if kind == "chunk"]
    assert chunks and {c["field"] for c in chunks} == {"answer"}
    assert "".join(c["text"] for c in chunks) == "answer to stream me"
    kind, final = events[-1]
    assert kind == "prediction"
    assert final["outputs"] == {"answer": "answer to stream me"} and final["usage"]["total_tokens"] > 0


def test_stream_reports_a_failure_as_an_error_event(serve_app: Starlette, qa_server: LMServer) -> None:
    qa_server.script(Reply.server_error(400, "bad request (scripted)"))
    response = run(post(serve_app, "/v1/programs/qa/stream", json={"question": "fail"}))
    kind, data = parse_sse(response.text)[-1]
    assert kind == "error" and data["error"]["type"] == "internal_error"
    assert data["request_id"] == response.headers["x-request-id"]


def test_stream_validation_errors_are_http_errors(serve_app: Starlette) -> None:
    response = run(post(serve_app, "/v1/programs/qa/stream", json={"q": 1}))
    assert response.status_code == 422


def test_client_disconnect_cancels_the_lm_call(make_app: MakeApp, manager: PluginManager) -> None:
    provider = SilentLM()
    lm = HookedLM("openai/gpt-4o-mini", api_base=provider.api_base, api_key="sk-test-abcdefghijklmnop",
                  num_retries=0, cache=False, engine="litellm", plugin_manager=manager, timeout=60)
    app = make_app({"qa": StaticSource("qa", {"1": qa_program(lm)})})
    slot: ProgramSlot = app.state.slots["qa"]

    async def main(url: str) -> int:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client, \
                client.stream("POST", "/v1/programs/qa/stream", json={"question": "hang"}) as response:
            status = response.status_code
            assert await asyncio.to_thread(provider.received.wait, 20), "the LM call never went out"
        # leaving the block closed the connection before any event arrived
        return status

    try:
        with uvicorn_server(app) as url:
            assert run(main(url)) == 200
            assert provider.closed.wait(20), "the LM call was not cancelled when the client went away"
            deadline = time.monotonic() + 20
            while slot.running and time.monotonic() < deadline:
                time.sleep(0.02)
            assert slot.running == 0
    finally:
        provider.close()


# -- batch ---------------------------------------------------------------------------------------------------------
def test_batch_answers_each_item_and_reports_bad_items(make_app: MakeApp, qa_source: StaticSource) -> None:
    app = make_app({"qa": qa_source}, batch_concurrency=2, batch_max_items=5)
    response = run(post(app, "/v1/programs/qa/batch",
                        json={"items": [{"question": "a"}, {"question": 5}, {"question": "c"}]}))
    assert response.status_code == 200
    body = response.json()
    assert body["program"] == "qa" and body["version"] == "1.0.0" and body["request_id"]
    first, second, third = body["results"]
    assert first["ok"] and first["outputs"] == {"answer": "answer to a"}
    assert not second["ok"] and second["error"]["type"] == "validation_error"
    assert third["ok"] and third["outputs"] == {"answer": "answer to c"}
    too_many = run(post(app, "/v1/programs/qa/batch", json={"items": [{"question": "x"}] * 6}))
    assert too_many.status_code == 422
    not_a_batch = run(post(app, "/v1/programs/qa/batch", json={"question": "x"}))
    assert not_a_batch.status_code == 422 and error_of(not_a_batch)["fields"][0]["field"] == "items"


def test_batch_runs_at_most_batch_concurrency_items_at_once(make_app: MakeApp, qa_lm: HookedLM) -> None:
    seen = {"now": 0, "max": 0}

    class Counting(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.predict = dspy.Predict("question -> answer")

        async def aforward(self, question: str) -> Any:
            seen["now"] += 1
            seen["max"] = max(seen["max"], seen["now"])
            await asyncio.sleep(0.02)
            seen["now"] -= 1
            return dspy.Prediction(answer=question.upper())

    app = make_app({"count": StaticSource("count", {"1": Counting()})}, batch_concurrency=3)
    response = run(post(app, "/v1/programs/count/batch", json={"items": [{"question": f"q{i}"} for i in range(12)]}))
    assert [r["outputs"]["answer"] for r in response.json()["results"]] == [f"Q{i}" for i in range(12)]
    assert seen["max"] == 3


# -- listing, schema, docs, health, metrics ------------------------------------------------------------------------
def test_programs_listing(serve_app: Starlette) -> None:
    response = run(get(serve_app, "/v1/programs"))
    [program] = response.json()["programs"]
    assert program["name"] == "qa" and program["version"] == "1.0.0"
    assert program["versions"] == {"a": "1.0.0", "b": None}
    assert program["input_schema"]["required"] == ["question"]
    assert "answer" in program["output_schema"]["properties"]
    assert program["status"]["ready"] is True


def test_openapi_has_one_request_and_response_schema_per_program(make_app: MakeApp, qa_lm: HookedLM) -> None:
    typed = dspy.ChainOfThought("question, k: int -> answer: float")
    typed.set_lm(qa_lm)
    app = make_app({"qa": StaticSource("qa", {"1": qa_program(qa_lm)}), "typed": StaticSource("typed", {"1": typed})})
    document = run(get(app, "/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    assert schemas["QaInput"]["properties"]["question"]["type"] == "string"
    assert schemas["TypedInput"]["properties"]["k"]["type"] == "integer"
    assert set(schemas["TypedOutput"]["properties"]) == {"reasoning", "answer"}  # last predictor's outputs
    assert "Error" in schemas
    predict = document["paths"]["/v1/programs/typed"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/TypedInput")
    assert {"200", "400", "413", "422", "503", "504"} <= set(predict["responses"])
    assert "/v1/programs/qa/stream" in document["paths"] and "/v1/programs/qa/batch" in document["paths"]


def test_docs_page_is_self_contained_with_a_form_per_program(serve_app: Starlette) -> None:
    response = run(get(serve_app, "/docs"))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert 'data-program="qa"' in response.text and 'name="question"' in response.text
    assert "https://" not in response.text and "http://" not in response.text  # nothing from a CDN


def test_healthz_and_readyz(make_app: MakeApp, serve_app: Starlette) -> None:
    assert run(get(serve_app, "/healthz")).json() == {"status": "ok"}
    ready = run(get(serve_app, "/readyz"))
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    no_lm = make_app({"bare": StaticSource("bare", {"1": dspy.Predict("question -> answer")})})
    with dspy.context(lm=None):
        not_ready = run(get(no_lm, "/readyz"))
    assert not_ready.status_code == 503
    assert any("no LM" in reason for reason in not_ready.json()["reasons"])
    assert int(not_ready.headers["retry-after"]) >= 1


def test_metrics_include_http_and_lm_metrics(serve_app: Starlette) -> None:
    async def main() -> str:
        async with asgi_client(serve_app) as client:
            await client.post("/v1/programs/qa", json={"question": "m"})
            await client.post("/v1/programs/qa", json={"nope": 1})
            return (await client.get("/metrics")).text

    text = run(main())
    assert 'dspyo3_http_requests_total{method="POST",route="/v1/programs/{name}",status="200",tenant=""} 1.0' in text
    assert 'dspyo3_http_requests_total{method="POST",route="/v1/programs/{name}",status="422",tenant=""} 1.0' in text
    assert 'dspyo3_http_request_seconds_count{route="/v1/programs/{name}"} 2.0' in text
    assert "dspyo3_lm_requests_total" in text


# -- versions: A/B, swap -------------------------------------------------------------------------------------------
def test_ab_split_is_sticky_per_caller_and_near_the_weight(make_app: MakeApp, qa_lm: HookedLM) -> None:
    app = create_app(ServeConfig(programs=(ProgramConfig("memory:qa", "qa", ab=ABSplit("memory:qa2", 0.25)),)),
                     sources={"qa": StaticSource("qa", {"1.0.0": qa_program(qa_lm)}),
                              "qa:b": StaticSource("qa", {"2.0.0": qa_program(qa_lm)})})
    slot: ProgramSlot = app.state.slots["qa"]
    callers = 4000
    share = sum(slot.pick(f"user-{i}").arm == "b" for i in range(callers)) / callers
    bound = 5 * math.sqrt(0.25 * 0.75 / callers)  # five standard deviations of a binomial share
    assert abs(share - 0.25) < bound
    b_user = next(f"user-{i}" for i in range(callers) if arm_share("qa", f"user-{i}") < 0.25)
    a_user = next(f"user-{i}" for i in range(callers) if arm_share("qa", f"user-{i}") >= 0.25)

    async def main() -> list[httpx.Response]:
        async with asgi_client(app) as client:
            return [await client.post("/v1/programs/qa", json={"question": f"q{n}"}, headers={"x-dspyo3-user": user})
                    for user in (b_user, a_user) for n in range(3)]

    responses = run(main())
    assert [r.headers["x-dspyo3-arm"] for r in responses] == ["b"] * 3 + ["a"] * 3
    assert [r.json()["version"] for r in responses] == ["2.0.0"] * 3 + ["1.0.0"] * 3
    listing = run(get(app, "/v1/programs")).json()["programs"][0]
    assert listing["versions"] == {"a": "1.0.0", "b": "2.0.0"}


def test_swap_lets_running_requests_finish_on_the_old_version(make_app: MakeApp, qa_server: LMServer,
                                                             qa_lm: HookedLM) -> None:
    qa_server.responder = lambda request: Reply(chat_reply(answer="done"), latency=0.5)
    app = make_app({"qa": StaticSource("qa", {"1.0.0": qa_program(qa_lm)})})
    slot: ProgramSlot = app.state.slots["qa"]

    async def main() -> tuple[httpx.Response, httpx.Response]:
        async with asgi_client(app) as client:
            running = asyncio.ensure_future(client.post("/v1/programs/qa", json={"question": "old"}))
            while slot.running < 1:
                await asyncio.sleep(0.01)
            slot.swap("2.0.0", qa_program(qa_lm))
            after = await client.post("/v1/programs/qa", json={"question": "new"})
            return await running, after

    before, after = run(main())
    assert before.json()["version"] == "1.0.0" and after.json()["version"] == "2.0.0"
    assert after.headers["x-dspyo3-program-version"] == "2.0.0"


def test_lifespan_runs_the_stage_watcher_and_switches_versions(make_app: MakeApp, qa_lm: HookedLM) -> None:
    source = StaticSource("qa", {"1.0.0": qa_program(qa_lm), "2.0.0": lambda: qa_program(qa_lm)}, stage="prod")
    app = make_app({"qa": source}, watch_interval=0.05)
    with TestClient(app) as client:
        assert client.get("/v1/programs").json()["programs"][0]["version"] == "1.0.0"
        source.current_version = "2.0.0"
        deadline = time.monotonic() + 20
        while client.get("/v1/programs").json()["programs"][0]["version"] != "2.0.0":
            assert time.monotonic() < deadline, "the watcher never switched to the new version"
            time.sleep(0.05)
        response = client.post("/v1/programs/qa", json={"question": "w"})
        assert response.headers["x-dspyo3-program-version"] == "2.0.0"


# -- configuration through the environment -------------------------------------------------------------------------
def test_config_round_trips_through_the_environment() -> None:
    config = ServeConfig(programs=(ProgramConfig("pkg.mod:qa", "qa", {"question": "ping"}, ABSplit("qa@2", 0.1)),),
                         max_in_flight=3, request_timeout=2.5, redis_url="redis://127.0.0.1:6379/0",
                         tenants=(TenantConfig("acme", ("a" * 64,), requests_per_second=2.0),))
    env = config_to_env(config, registry="/tmp/registry", trust_registry=True)
    assert list(env) == ["DSPYO3_SERVE_CONFIG"]
    assert config_from_env(env["DSPYO3_SERVE_CONFIG"]) == config


def test_app_from_environment_serves_the_configured_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ServeConfig(programs=(ProgramConfig("tests.production.serve.test_app:factory", "made"),))
    monkeypatch.setenv("DSPYO3_SERVE_CONFIG", config_to_env(config)["DSPYO3_SERVE_CONFIG"])
    with dspy.context(lm=dspy.utils.DummyLM([{"answer": "x"}])):
        app = app_from_environment()
        response = run(get(app, "/v1/programs"))
    assert [p["name"] for p in response.json()["programs"]] == ["made"]


def factory() -> dspy.Module:
    """A zero-argument program factory for the ``module:attr`` target above."""
    return dspy.Predict("question -> answer")


@pytest.mark.parametrize(("table", "wanted"), [("", False), ("[production]\nmetrics = true\n", False),
                                                 ("[production]\nmodule_callbacks = true\n", True)])
def test_the_stack_serve_enables_has_no_module_callback_unless_configured(
        table: str, wanted: bool, qa_source: StaticSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dspyo3_production.pipeline import installed

    path = tmp_path / "dspyo3.toml"
    path.write_text(table)
    monkeypatch.setenv("DSPYO3_CONFIG", str(path))
    create_app(ServeConfig(), sources={"qa": qa_source})
    production = installed()
    assert production is not None and (production.callback is not None) is wanted


def test_a_stack_the_caller_enabled_is_kept(qa_source: StaticSource, metrics: Metrics) -> None:
    stack = prod.enable(prod.Production(metrics=metrics, log_events=False))
    create_app(ServeConfig(), sources={"qa": qa_source})
    assert prod.stack.active() is stack and stack.callback is not None
