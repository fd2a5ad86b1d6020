"""The standalone loopback LM server (``python -m dspyo3_core.testing``): asyncio serving, digest answers."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request

import dspy
import pytest

from dspyo3_core.testing import LMServer, Reply
from dspyo3_core.testing.server import digest_responder, output_field_names, stream_events


@pytest.fixture
def cli_server():
    proc = subprocess.Popen([sys.executable, "-m", "dspyo3_core.testing", "--latency", "0.01"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    api_base = proc.stdout.readline().strip()
    assert api_base.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else ""
    yield api_base
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0  # a server that ignored SIGTERM would hang here until pytest-timeout


def _lm(api_base: str) -> dspy.LM:
    return dspy.LM("openai/dspyo3-test", api_base=api_base, api_key="test", cache=False, num_retries=0)


def test_cli_server_answers_every_output_field_with_a_prompt_digest(cli_server: str) -> None:
    program = dspy.ChainOfThought("question -> answer, confidence")
    with dspy.context(lm=_lm(cli_server)):
        first = program(question="What is 2 + 2?")
        again = program(question="What is 2 + 2?")
        other = program(question="What is 3 + 3?")
    assert first.answer.startswith("answer-") and first.reasoning.startswith("reasoning-")
    assert first.confidence.startswith("confidence-")
    assert first.answer == again.answer, "deterministic"
    assert first.answer != other.answer, "sensitive to the prompt"


def test_cli_server_async_and_streaming(cli_server: str) -> None:
    program = dspy.Predict("question -> answer")

    async def run() -> tuple[str, list[str]]:
        with dspy.context(lm=_lm(cli_server)):
            result = await program.acall(question="hi")
            stream = dspy.streamify(program, stream_listeners=[dspy.streaming.StreamListener("answer")])
            chunks = [item.chunk async for item in stream(question="hi") if hasattr(item, "chunk")]
        return result.answer, chunks

    answer, chunks = asyncio.run(run())
    assert len(chunks) >= 2
    assert "".join(chunks).strip() == answer


def test_cli_server_routes_and_errors(cli_server: str) -> None:
    with urllib.request.urlopen(cli_server + "/models") as response:
        assert json.load(response)["data"][0]["id"] == "dspyo3-test"
    request = urllib.request.Request(cli_server + "/chat/completions", data=b"not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request)
    assert info.value.code == 400
    assert "not JSON" in info.value.read().decode()


def test_cli_rejects_negative_latency() -> None:
    proc = subprocess.run([sys.executable, "-m", "dspyo3_core.testing", "--latency", "-1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--latency must be >= 0" in proc.stderr


def test_output_field_names_reads_the_chat_adapter_prompt() -> None:
    with LMServer(responder=digest_responder()) as server:
        lm = _lm(server.api_base)
        with dspy.context(lm=lm):
            dspy.Predict("question, context -> answer, score")(question="q", context="c")
        assert output_field_names(server.requests[0]) == ["answer", "score"]


def test_stream_events_end_with_done_and_carry_usage_when_asked() -> None:
    events = stream_events({"model": "m", "stream_options": {"include_usage": True}}, Reply(content="abcdefghij",
                                                                                           chunk_size=4))
    text = b"".join(events).decode()
    assert text.endswith("data: [DONE]\n\n")
    assert text.count('"content"') == 4  # role event + 3 content chunks
    assert '"usage"' in text


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n", b"400"),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b"400"),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]", b"400"),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n\xff\xfe", b"400"),
        (b'POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 10\r\n\r\n{"n": "x"}', b"400"),
        (b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", b"411"),
        (b"GET /nowhere HTTP/1.1\r\n\r\n", b"404"),
    ],
)
def test_cli_server_answers_malformed_requests_with_4xx(cli_server: str, raw: bytes, status: bytes) -> None:
    import socket
    from urllib.parse import urlparse

    url = urlparse(cli_server)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(raw)
        first = sock.recv(4096).split(b"\r\n", 1)[0]
    assert first.startswith(b"HTTP/1.1 " + status), first


def test_cli_server_rejects_non_loopback_hosts() -> None:
    proc = subprocess.run([sys.executable, "-m", "dspyo3_core.testing", "--host", "0.0.0.0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "loopback" in proc.stderr and "Traceback" not in proc.stderr
