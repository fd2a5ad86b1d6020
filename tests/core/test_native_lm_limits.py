"""NativeLM's size limits: an oversized stream event or answer body is refused with a typed error that names the
limit and the setting raising it, and is not retried. The server is a raw socket on loopback, so it can send what
no well-behaved server would (a ``data:`` line that never ends, a chunked body of unknown length)."""

from __future__ import annotations

import asyncio
import pickle
import socket
from collections.abc import Callable, Iterator
from typing import Any

import dspy
import pytest
from dspy.utils.exceptions import LMCollectionLimitError, is_retryable_lm_error

from dspyo3_core.native_lm import MAX_EVENT_BYTES, NativeLM
from dspyo3_core.testing.rawhttp import Answer, RawServer

MiB = 1 << 20


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], RawServer]]:
    servers: list[RawServer] = []

    def start(answer: Answer) -> RawServer:
        servers.append(RawServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def endless_data_line(total: int) -> Answer:
    """A stream whose first event is one ``data:`` line of ``total`` bytes with no newline, sent in 8 KiB writes."""

    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                     b'data: {"choices":[{"delta":{"content":"')
        chunk = b"x" * 8192
        for _ in range(total // len(chunk)):
            conn.sendall(chunk)

    return answer


def chunked_body(size: int) -> Answer:
    """A 200 JSON answer of ``size`` bytes, chunked (no Content-Length to refuse it by)."""

    def answer(conn: socket.socket) -> None:
        content = "y" * size
        body = ('{"id":"c1","model":"m","choices":[{"message":{"role":"assistant","content":"' + content
                + '"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}')
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n")
        data = body.encode()
        for start in range(0, len(data), 65536):
            piece = data[start:start + 65536]
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.sendall(b"0\r\n\r\n")

    return answer


def _stream(lm: NativeLM) -> Any:
    import anyio

    async def main() -> Any:
        send, _receive = anyio.create_memory_object_stream[Any](10_000)
        with dspy.context(send_stream=send):
            return await lm.acall(messages=[{"role": "user", "content": "hi"}])

    return asyncio.run(main())


def test_an_endless_stream_event_is_refused_at_max_event_bytes(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(endless_data_line(8 * MiB))
    lm = NativeLM("openai/m", api_base=server.api_base, api_key="k", cache=False, num_retries=3,
                  max_event_bytes=MiB)
    with pytest.raises(LMCollectionLimitError) as caught:
        _stream(lm)
    error = caught.value
    assert error.code == "response_too_large"
    assert "max_event_bytes" in str(error) and "1048576 bytes" in str(error), str(error)
    assert not is_retryable_lm_error(error)
    assert server.requests == 1, "a too-large answer is not asked for again"


def test_the_default_event_limit_is_16_mib(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(endless_data_line(20 * MiB))
    lm = NativeLM("openai/m", api_base=server.api_base, api_key="k", cache=False)
    assert lm.max_event_bytes == MAX_EVENT_BYTES == 16 * MiB
    with pytest.raises(LMCollectionLimitError, match=r"max_event_bytes limit of 16777216 bytes"):
        _stream(lm)


def test_an_oversized_answer_is_refused_at_max_response_bytes(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(chunked_body(2 * MiB))
    lm = NativeLM("openai/m", api_base=server.api_base, api_key="k", cache=False, num_retries=3,
                  max_response_bytes=MiB)
    with pytest.raises(LMCollectionLimitError, match=r"max_response_bytes limit of 1048576 bytes") as caught:
        lm(messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "response_too_large"
    assert server.requests == 1, "a too-large answer is not asked for again"
    with pytest.raises(LMCollectionLimitError, match="max_response_bytes"):
        asyncio.run(lm.acall(messages=[{"role": "user", "content": "hi"}]))
    # the same answer passes under a limit that fits it, and the limit survives copies and pickles
    roomy = lm.copy(max_response_bytes=4 * MiB)
    assert len(roomy(messages=[{"role": "user", "content": "hi"}])[0]) == 2 * MiB
    assert pickle.loads(pickle.dumps(roomy)).max_response_bytes == 4 * MiB
    assert roomy.dump_state()["max_response_bytes"] == 4 * MiB


@pytest.mark.parametrize("bad", [0, -1, 1.5, "big", True])
def test_limits_must_be_positive_ints(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_event_bytes"):
        NativeLM("openai/m", api_base="http://127.0.0.1:9/v1", api_key="k", max_event_bytes=bad)
    with pytest.raises(ValueError, match="max_response_bytes"):
        NativeLM("openai/m", api_base="http://127.0.0.1:9/v1", api_key="k", max_response_bytes=bad)


def test_limits_are_per_lm_not_per_call() -> None:
    lm = NativeLM("openai/m", api_base="http://127.0.0.1:9/v1", api_key="k")
    with pytest.raises(TypeError, match="max_event_bytes"):
        lm(messages=[{"role": "user", "content": "hi"}], max_event_bytes=10)
