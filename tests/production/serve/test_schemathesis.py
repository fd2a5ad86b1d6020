"""Property-based API tests of ``dspyo3 serve`` with schemathesis, driven by the app's own ``/openapi.json`` (the
app on uvicorn in a thread of this process): for generated requests (valid and invalid bodies, headers) no response
is a 5xx, and every response conforms to the document (status codes, content types, headers, bodies)."""

from __future__ import annotations

from collections.abc import Iterator

import dspy
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dspyo3_core.lm import HookedLM
from dspyo3_core.plugins import PluginManager
from dspyo3_core.testing.server import LMServer, digest_responder
from dspyo3_production.metrics import Metrics
from dspyo3_production.serve.app import create_app
from dspyo3_production.serve.config import ServeConfig
from tests.production.serve.conftest import StaticSource, uvicorn_server

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture
def api_schema(manager: PluginManager, metrics: Metrics) -> Iterator[schemathesis.BaseSchema]:
    """The schema of an app serving a string-only program and a typed one, on a loopback LM that answers every
    requested output field (whatever the inputs)."""
    with LMServer(digest_responder()) as server:
        lm = HookedLM("openai/gpt-4o-mini", api_base=server.api_base, api_key="sk-test-abcdefghijklmnop",
                      num_retries=0, cache=True, engine="litellm", plugin_manager=manager)
        qa = dspy.Predict("question -> answer")
        qa.set_lm(lm)
        typed = dspy.Predict("question: str, k: int, tags: list[str] -> answer, note")
        typed.set_lm(lm)
        app = create_app(ServeConfig(batch_max_items=3, batch_concurrency=2, max_body_bytes=4096),
                         sources={"qa": StaticSource("qa", {"1.0.0": qa}),
                                  "typed": StaticSource("typed", {"2.0.0": typed})}, metrics=metrics)
        with uvicorn_server(app) as url:  # one event loop for every request, as in production
            yield schemathesis.openapi.from_url(f"{url}/openapi.json")


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_api_conforms_to_its_openapi_document(api_schema: schemathesis.BaseSchema,
                                              mode: schemathesis.GenerationMode) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {f"POST /v1/programs/{name}{suffix}" for name in ("qa", "typed") for suffix in ("", "/stream", "/batch")} \
        | {"GET /v1/programs", "GET /healthz", "GET /readyz", "GET /metrics"} <= labels, labels
    for operation in operations:
        post = operation.method.upper() == "POST"
        if mode == schemathesis.GenerationMode.NEGATIVE and not post:
            continue  # a GET without parameters has nothing to make invalid
        examples = 30 if post else 3

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS)

        check()
