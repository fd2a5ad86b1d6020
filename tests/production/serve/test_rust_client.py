"""The Rust client example (``crates/dspyo3/examples/serve_client.rs``) against the app ``create_app`` builds,
served by uvicorn on 127.0.0.1: a typed JSON call, a streamed call and a 422 for a wrong input type; an unknown
program exits 1 with the service's message."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette

from dspyo3_core.lm import HookedLM
from dspyo3_core.plugins import PluginManager
from dspyo3_core.testing.server import LMServer
from tests.production.serve.conftest import StaticSource, qa_program, uvicorn_server

ROOT = Path(__file__).resolve().parents[3]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo (rustup) on PATH"),
]


@pytest.fixture
def served_url(qa_server: LMServer, manager: PluginManager, make_app: Callable[..., Starlette]) -> Iterator[str]:
    # no LM cache: the streamed call repeats the question of the JSON call and must still stream its chunks
    lm = HookedLM("openai/gpt-4o-mini", api_base=qa_server.api_base, api_key="sk-test-abcdefghijklmnop",
                  num_retries=0, cache=False, engine="litellm", plugin_manager=manager)
    app = make_app({"qa": StaticSource("qa", {"1.0.0": qa_program(lm)})})
    with uvicorn_server(app) as url:
        yield url


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    command = ["cargo", "run", "-q", "--manifest-path", str(ROOT / "crates" / "Cargo.toml"), "-p", "dspyo3",
               "--example", "serve_client", "--", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=540, cwd=ROOT)


def test_rust_client_predicts_streams_and_reads_errors(served_url: str) -> None:
    result = run_example("--url", served_url, "qa", "What is DSPy?")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    predict = next(line for line in lines if line.startswith("predict: "))
    assert predict.startswith('predict: "answer to What is DSPy?" (version 1.0.0, arm a, ')
    stream = next(line for line in lines if line.startswith("stream: "))
    assert '"answer to What is DSPy?", then "answer to What is DSPy?" (version 1.0.0)' in stream
    assert not stream.startswith("stream: 0 chunks")
    invalid = next(line for line in lines if line.startswith("invalid input: "))
    assert "422 validation_error" in invalid and "[question: " in invalid and "expected string" in invalid

    missing = run_example("--url", served_url, "nope")
    assert missing.returncode == 1
    assert missing.stderr.startswith("Error: 404 not_found: ") and "qa" in missing.stderr
