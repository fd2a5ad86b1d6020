"""Shared fixtures for ``dspyo3 serve`` tests: a program source held in memory, a served ``dspy.Predict`` QA
program on the loopback LM server (through the production wrapper), its app, and an in-process ASGI client.

    def test_x(serve_app):
        async def main():
            async with asgi_client(serve_app) as client:
                response = await client.post("/v1/programs/qa", json={"question": "hi"})
        asyncio.run(main())
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dspy
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from dspyo3_core.lm import HookedLM
from dspyo3_production.metrics import Metrics
from dspyo3_production.serve.app import create_app
from dspyo3_production.serve.config import ServeConfig


class StaticSource:
    """A ProgramSource over modules in memory: ``versions`` maps a version to a module (or a zero-arg factory);
    ``current_version`` is what :meth:`current` answers (tests change it to simulate a stage moving)."""

    def __init__(self, name: str, versions: dict[str, Any], current: str | None = None,
                 stage: str | None = None) -> None:
        self.name = name
        self.reference = f"memory:{name}"
        self.stage = stage
        self.versions = versions
        self.current_version = current or next(iter(versions))
        self.loads: list[str] = []

    def current(self) -> str:
        return self.current_version

    def load(self, version: str) -> Any:
        self.loads.append(version)
        module = self.versions[version]
        return module() if callable(module) and not isinstance(module, dspy.Module) else module


def qa_program(lm: dspy.BaseLM) -> dspy.Module:
    """``dspy.Predict("question -> answer")`` bound to ``lm``."""
    program = dspy.Predict("question -> answer")
    program.set_lm(lm)
    return program


@pytest.fixture
def qa_source(qa_lm: HookedLM) -> StaticSource:
    """The QA program (version 1.0.0) on the loopback server."""
    return StaticSource("qa", {"1.0.0": qa_program(qa_lm)})


@pytest.fixture
def make_app(metrics: Metrics) -> Callable[..., Starlette]:
    """``make_app(sources, **config)``: :func:`create_app` with a :class:`ServeConfig` of ``config`` and the
    test's own metrics registry."""

    def make(sources: dict[str, Any], *, tenants: Any = None, **config: Any) -> Starlette:
        return create_app(ServeConfig(**config), sources=sources, tenants=tenants, metrics=metrics)

    return make


@pytest.fixture
def serve_app(make_app: Callable[..., Starlette], qa_source: StaticSource) -> Starlette:
    """An app serving the QA program as ``qa`` with default limits."""
    return make_app({"qa": qa_source})


def asgi_client(app: Starlette, **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` calling ``app`` in process (no lifespan: use ``TestClient`` for that)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve.test", **kwargs)


@contextlib.contextmanager
def uvicorn_server(app: Starlette) -> Iterator[str]:
    """``app`` on a real uvicorn (httptools) server on 127.0.0.1, port 0, in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", http="httptools",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
