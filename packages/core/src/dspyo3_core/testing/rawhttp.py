"""A raw-socket HTTP server on loopback, for tests and benchmarks that must send what no well-behaved server would:
a ``data:`` line that never ends, a body far over a limit, a chunked answer of unknown length, a connection cut
half-way. :class:`~dspyo3_core.testing.server.LMServer` speaks correct HTTP; this one hands the socket to you.

    def endless(sock):
        sock.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: text/event-stream\\r\\n\\r\\ndata: ")
        while True:
            sock.sendall(b"x" * 65536)

    with RawServer(endless) as server:
        ...  # point the client at server.api_base
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["Answer", "RawServer", "read_request"]

Answer = Callable[[socket.socket], None]
"""Writes the whole response to the connected socket (the server closes it afterwards)."""


def read_request(conn: socket.socket) -> tuple[bytes, bytes] | None:
    """Read one HTTP/1.1 request from ``conn``: its head (request line and headers) and its ``Content-Length``
    body; None when the client hangs up first."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return None
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        piece = conn.recv(65536)
        if not piece:
            return None
        body += piece
    return head, body


class RawServer:
    """Answers every HTTP request on 127.0.0.1 with ``answer(sock)``, one connection at a time, then closes it.

    Attributes:
        api_base: ``http://127.0.0.1:PORT/v1``, for an OpenAI-compatible client.
        requests: how many requests were read in full.
        answer: what the next connection gets (replace it between requests to change the behaviour).
    """

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.api_base = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self._serve, name="dspyo3-raw-http", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            with conn:
                if read_request(conn) is None:
                    continue
                self.requests += 1
                try:
                    self.answer(conn)
                except OSError:  # the client hung up (as a client should once a limit is passed)
                    pass

    def close(self) -> None:
        """Stop accepting and wait for the serving thread (a connection being answered is abandoned)."""
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.listener.close()
        self.thread.join(5)

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
