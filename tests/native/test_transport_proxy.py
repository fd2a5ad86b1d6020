"""``LMTransport`` honours ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY`` (and the lowercase forms). The proxy is a
forwarding proxy on loopback that resolves every host to 127.0.0.1, so a request for ``http://llm.test:PORT``
only succeeds if it went through it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from dspyo3_core.testing import LMServer
from dspyo3_native import LMTransport, LMTransportError

PROXY_VARS = ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
              "no_proxy", "NO_PROXY", "REQUEST_METHOD"]


def pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while piece := source.recv(65536):
            sink.sendall(piece)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class ForwardingProxy:
    """Takes absolute-form requests and passes each connection on to ``127.0.0.1:<port of the URL>``; keeps the
    request lines it saw."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        data = b""
        while b"\r\n" not in data:
            piece = client.recv(65536)
            if not piece:
                client.close()
                return
            data += piece
        line = data.split(b"\r\n", 1)[0].decode()
        self.lines.append(line)
        authority = line.split()[1].removeprefix("http://").split("/", 1)[0]
        upstream = socket.create_connection(("127.0.0.1", int(authority.rsplit(":", 1)[1])))
        upstream.sendall(data)
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardingProxy]:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    forwarding = ForwardingProxy()
    yield forwarding
    forwarding.close()


@pytest.fixture
def server() -> Iterator[LMServer]:
    with LMServer() as lm_server:
        yield lm_server


def named(server: LMServer, host: str = "llm.test") -> str:
    """The server's api_base with its host replaced by ``host`` (which only the proxy resolves)."""
    return server.api_base.replace("127.0.0.1", host)


MESSAGES = [{"role": "user", "content": "Capital of France?"}]


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_requests_go_through_the_proxy_from_the_environment(
    proxy: ForwardingProxy, server: LMServer, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, proxy.url)
    server.script("Paris")
    transport = LMTransport(named(server), max_retries=0, timeout=30)
    assert transport.proxy == proxy.url + "/"
    _, _, choices, _ = transport.complete("tiny", MESSAGES)
    assert choices[0][0] == "Paris"
    assert proxy.lines == [f"POST {named(server)}/chat/completions HTTP/1.1"]


def test_the_lowercase_variable_wins(proxy: ForwardingProxy, server: LMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    server.script("Paris")
    assert LMTransport(named(server), max_retries=0).complete("tiny", MESSAGES)[2][0][0] == "Paris"
    assert len(proxy.lines) == 1


@pytest.mark.parametrize("no_proxy", ["llm.test", ".test", "*", "other.example, llm.test"])
def test_no_proxy_bypasses_the_proxy(
    proxy: ForwardingProxy, server: LMServer, monkeypatch: pytest.MonkeyPatch, no_proxy: str
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    transport = LMTransport(named(server), max_retries=0, timeout=30, connect_timeout=5)
    assert transport.proxy is None
    # a direct connection cannot resolve llm.test
    with pytest.raises(LMTransportError) as raised:
        transport.complete("tiny", MESSAGES)
    assert raised.value.args[1] == "connect"
    assert proxy.lines == []


def test_loopback_endpoints_are_never_proxied(
    proxy: ForwardingProxy, server: LMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    server.script("Paris", "Paris")
    for host in ("127.0.0.1", "localhost"):
        transport = LMTransport(named(server, host), max_retries=0, timeout=30)
        assert transport.proxy is None
        assert transport.complete("tiny", MESSAGES)[2][0][0] == "Paris"
    assert proxy.lines == []


def test_an_unsupported_proxy_is_a_configuration_error(proxy: ForwardingProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://user:hunter2@proxy.corp:1080")
    with pytest.raises(ValueError, match="http:// proxy") as raised:
        LMTransport("https://api.openai.com/v1")
    assert "hunter2" not in str(raised.value)
